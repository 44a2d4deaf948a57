//! The subscriber side of the home protocol: a room's home answers one of this shard's
//! connections ([`Reply`]): a ready frame (ack, presence list, history page) or a subscription's
//! answer, which joins the room here and queues `subscribed` and the replay. Envelope
//! subscriptions in flight are tracked per (connection, room) in [`PendingSub`], so that an
//! `unsubscribe` sent before the answer cancels it. Every reply counts toward the connection's
//! high-water mark ([`ShardCore::queue_reply`]).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::ShardCore;
use crate::ids::{ConnId, Tick};
use crate::protocol::close::CloseCode;
use crate::protocol::envelope::{Data, Format, ServerOp};
use crate::protocol::session::SessionError;
use crate::room::requests::{ConnRef, HomeMsg, Reply, SubAnswer};
use crate::wire::envelope_frame;

/// Answers still to come from a room's home for one connection's subscriptions to that room.
/// The home answers in order, so the cancelled ones arrive first.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PendingSub {
    /// A subscription the client still wants is in flight.
    pub(crate) live: bool,
    /// Answers to subscriptions the client cancelled (unsubscribed) before they came.
    pub(crate) cancelled: u32,
}

impl ShardCore {
    /// Handle a home's answer to one of this shard's connections.
    pub(crate) fn handle_reply(&mut self, r: Reply, now: Instant) {
        match r {
            Reply::Frame { conn, frame } => {
                if self.conns.get(conn.id.0).is_some_and(|c| c.uid == conn.uid) {
                    self.queue_reply(conn.id, [frame], now);
                }
            }
            Reply::Subscribed(a) => self.subscribed(a, now),
            Reply::Full { conn, room, id } => self.room_full(conn, room, id, now),
        }
    }

    /// The room's home refused a join (`max_subscribers`): an envelope subscribe gets
    /// `room_full`; a raw client, which joined here at its upgrade, leaves and is closed with
    /// 1013 (what it was sent from the room meanwhile and not yet written is discarded).
    fn room_full(&mut self, conn: ConnRef, room: Arc<str>, id: Option<Data>, now: Instant) {
        let Some(c) = self.conns.get(conn.id.0).filter(|c| c.uid == conn.uid) else {
            return;
        };
        if c.wire.is_raw() {
            self.leave_all(conn.id);
            let deadline = Tick::at(now + self.cfg.close_timeout);
            if let Some(c) = self.conns.get_mut(conn.id.0) {
                c.start_close(CloseCode::TRY_AGAIN_LATER, "room full", deadline, true);
                self.stats
                    .shard(self.id.0)
                    .count_close(CloseCode::TRY_AGAIN_LATER.0);
            }
            self.kick(conn.id);
            return;
        }
        let (cancelled, _) = self.settle_pending(&(conn.uid, room));
        if !cancelled {
            self.send_error(conn.id, &SessionError::RoomFull, id.as_ref(), now);
        }
    }

    /// Settle the pending entry of `key` for an arriving answer: `(cancelled, wanted_again)`.
    /// `cancelled`: the client unsubscribed while the answer was on its way (treated like a
    /// closed connection); `wanted_again`: a later subscribe to the room is in flight, so the
    /// presence this answer registered stays.
    fn settle_pending(&mut self, key: &(u64, Arc<str>)) -> (bool, bool) {
        let verdict = match self.subs.get_mut(key) {
            Some(p) if p.cancelled > 0 => {
                p.cancelled -= 1;
                (true, p.live)
            }
            Some(p) => {
                p.live = false;
                (false, false)
            }
            None => (false, false),
        };
        if self
            .subs
            .get(key)
            .is_some_and(|p| !p.live && p.cancelled == 0)
        {
            self.subs.remove(key);
        }
        verdict
    }

    /// A subscription's answer: join the room here, then queue `subscribed` and the replay.
    fn subscribed(&mut self, a: SubAnswer, now: Instant) {
        let conn = a.conn;
        let (cancelled, wanted_again) = self.settle_pending(&(conn.uid, a.room.clone()));
        let alive = !cancelled
            && self
                .conns
                .get(conn.id.0)
                .is_some_and(|c| c.uid == conn.uid && !c.sealed);
        // Subscribe requests are refused while one is in flight or the connection is a member,
        // so a live answer always finds it not yet in the room.
        let joined = alive && {
            if let Some(rid) = self.rooms.find(&a.room) {
                // What was broadcast before the subscription (seq <= `seq`) goes to the members
                // it was meant for, not to this one.
                self.flush_room(rid, now);
            }
            self.join_local(conn.id, &a.room, a.presence).is_some()
        };
        if !joined {
            // Undo what the home counted for this request, presence included.
            let leave = HomeMsg::Leave {
                room: a.room,
                shard: self.id,
                wire: a.wire,
                uid: (!wanted_again).then_some(conn.uid),
            };
            self.send_home(leave, now);
            if alive {
                self.send_error(conn.id, &SessionError::TooManyRooms, a.id.as_ref(), now);
            }
            return;
        }
        let Some(format) = a.wire.format() else {
            return;
        };
        let mut frames: Vec<Bytes> = Vec::with_capacity(1 + a.replay.len());
        let head = ServerOp::Subscribed {
            room: &a.room,
            seq: a.seq,
            epoch: a.epoch,
            recovered: a.recovered,
            id: a.id.as_ref(),
        };
        frames.push(envelope_frame(&head, format));
        for b in &a.replay {
            if let Some(f) = self.wire_frame(b, a.wire) {
                frames.push(f);
            }
        }
        if !self.queue_reply(conn.id, frames.iter().cloned(), now) {
            // Dropped (`slow_consumer = "drop"`): a member that never got `subscribed` and its
            // replay would miss messages silently; it leaves instead (the home is told).
            if let Some(rid) = self.member_room(conn.id, &a.room) {
                self.leave_room(conn.id, rid);
            }
        }
    }

    /// Queue an `unsubscribed` frame for an envelope connection.
    pub(crate) fn send_unsubscribed(
        &mut self,
        id: ConnId,
        room: &str,
        (format, req_id): (Format, Option<&Data>),
        now: Instant,
    ) {
        let frame = envelope_frame(
            &ServerOp::Unsubscribed {
                room,
                reason: None,
                id: req_id,
            },
            format,
        );
        self.queue_reply(id, [frame], now);
    }

    /// Queue an `error` frame for an envelope connection (echoing the request's `id`).
    pub(crate) fn send_error(
        &mut self,
        id: ConnId,
        err: &SessionError,
        req: Option<&Data>,
        now: Instant,
    ) {
        let Some(format) = self.conns.get(id.0).and_then(|c| c.wire.format()) else {
            return;
        };
        let reason = err.to_string();
        let op = ServerOp::Error {
            code: err.code(),
            reason: &reason,
            id: req,
        };
        let frame = envelope_frame(&op, format);
        self.queue_reply(id, [frame], now);
    }
}
