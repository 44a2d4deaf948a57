//! Envelope sessions (`/ws` with `shardcast.v1.json` or `shardcast.v1.cbor`): each frame is a
//! request ([`ClientOp`]) about one room. Publishes, presence and history queries go to the
//! room's home shard; a subscribe goes there too and is tracked until its answer joins the room
//! here (`shard::replies`). Refusals are `error` frames ([`SessionError`]); `max_bad_frames`
//! undecodable frames in a row close the connection with 1008.

use std::sync::Arc;
use std::time::Instant;

use super::{SessionError, Verdict};
use crate::ids::ConnId;
use crate::protocol::close::CloseCode;
use crate::protocol::decoder::Message;
use crate::protocol::envelope::{self, ClientOp, Data, Format, Rejected};
use crate::room::requests::{ConnRef, HomeMsg, Query, SubReq};
use crate::shard::ShardCore;

/// One envelope connection's session state.
pub(crate) struct EnvelopeSession {
    format: Format,
    /// Shown in presence lists and `join` events.
    info: Arc<Data>,
    /// Undecodable frames in a row.
    bad: u32,
}

impl EnvelopeSession {
    pub(crate) fn new(format: Format, info: Arc<Data>) -> EnvelopeSession {
        EnvelopeSession {
            format,
            info,
            bad: 0,
        }
    }

    /// Handle one envelope frame.
    pub(crate) fn on_message(
        &mut self,
        s: &mut ShardCore,
        id: ConnId,
        m: &Message,
        now: Instant,
    ) -> Verdict {
        let (op, req_id) = match envelope::decode_request(m.payload(), self.format) {
            Ok(x) => x,
            Err(Rejected { error, id: req }) => {
                self.bad += 1;
                if self.bad >= s.cfg.max_bad_frames {
                    s.fail_conn(id, CloseCode::POLICY, "too many bad frames", now);
                    return Verdict::Discard;
                }
                s.send_error(id, &SessionError::Invalid(error), req.as_ref(), now);
                return Verdict::Continue;
            }
        };
        self.bad = 0;
        let Some(uid) = s.conns.get(id.0).map(|c| c.uid) else {
            return Verdict::Continue;
        };
        let me = ConnRef {
            shard: s.id,
            id,
            uid,
        };
        match self.request(s, me, op, now) {
            Ok(()) => {}
            Err(e) => s.send_error(id, &e, req_id.as_ref(), now),
        }
        Verdict::Continue
    }

    /// Carry out one decoded request.
    fn request(
        &self,
        s: &mut ShardCore,
        me: ConnRef,
        op: ClientOp,
        now: Instant,
    ) -> Result<(), SessionError> {
        let format = self.format;
        let msg = match op {
            ClientOp::Subscribe {
                room,
                since,
                epoch,
                presence,
            } => {
                let sub = SubReq {
                    conn: me,
                    since,
                    epoch,
                    presence,
                    info: self.info.clone(),
                };
                return subscribe(s, Arc::from(room), sub, now);
            }
            ClientOp::Unsubscribe { room } => return unsubscribe(s, me, &room, format, now),
            ClientOp::Publish {
                room,
                data,
                id: req,
            } => HomeMsg::Publish {
                room: Arc::from(room),
                data,
                from: me,
                ack: req.map(|r| (format, r)),
            },
            ClientOp::Presence { room } => HomeMsg::Query {
                room: Arc::from(room),
                conn: me,
                format,
                query: Query::Presence,
            },
            ClientOp::History { room, since, limit } => HomeMsg::Query {
                room: Arc::from(room),
                conn: me,
                format,
                query: Query::History { since, limit },
            },
        };
        s.send_home(msg, now);
        Ok(())
    }
}

/// `subscribe`: refused when already a member or in flight, or over the room limit; otherwise
/// tracked as pending and sent to the room's home.
fn subscribe(
    s: &mut ShardCore,
    room: Arc<str>,
    sub: SubReq,
    now: Instant,
) -> Result<(), SessionError> {
    let me = sub.conn;
    let key = (me.uid, room.clone());
    let pending = s.subs.get(&key).is_some_and(|p| p.live);
    if s.member_room(me.id, &room).is_some() || pending {
        return Err(SessionError::AlreadySubscribed);
    }
    let (joined, wire) = match s.conns.get(me.id.0) {
        Some(c) => (c.rooms.len(), c.wire),
        None => return Ok(()),
    };
    if joined >= s.cfg.max_rooms_per_connection {
        return Err(SessionError::TooManyRooms);
    }
    s.subs.entry(key).or_default().live = true;
    let msg = HomeMsg::Join {
        room,
        shard: s.id,
        wire,
        sub: Some(sub),
    };
    s.send_home(msg, now);
    Ok(())
}

/// `unsubscribe`: leave the room, or cancel a subscription whose answer is still on its way (the
/// answer is undone when it comes).
fn unsubscribe(
    s: &mut ShardCore,
    me: ConnRef,
    room: &str,
    format: Format,
    now: Instant,
) -> Result<(), SessionError> {
    if let Some(rid) = s.member_room(me.id, room) {
        s.leave_room(me.id, rid);
        s.send_unsubscribed(me.id, room, format, now);
        return Ok(());
    }
    let cancelled = s.subs.get_mut(&(me.uid, Arc::from(room))).is_some_and(|p| {
        let live = std::mem::take(&mut p.live);
        p.cancelled += u32::from(live);
        live
    });
    if !cancelled {
        return Err(SessionError::NotSubscribed);
    }
    s.send_unsubscribed(me.id, room, format, now);
    Ok(())
}
