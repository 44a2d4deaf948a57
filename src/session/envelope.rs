//! Envelope sessions (`/ws` with `shardcast.v1.json` or `shardcast.v1.cbor`): each frame is a
//! request ([`ClientOp`]) about one room. Publishes, presence and history queries go to the
//! room's home shard; a subscribe goes there too and is tracked until its answer joins the room
//! here (`shard::replies`). Refusals are `error` frames ([`SessionError`]); `max_bad_frames`
//! undecodable frames in a row close the connection with 1008.

use std::sync::Arc;
use std::time::Instant;

use super::{SessionError, Verdict};
use crate::auth::{self, Action, Identity};
use crate::ids::{ConnId, RoomId};
use crate::metrics::ShardStats;
use crate::protocol::close::CloseCode;
use crate::protocol::decoder::Message;
use crate::protocol::envelope::ServerOp;
use crate::protocol::envelope::{self, ClientOp, Data, Format, Rejected};
use crate::room::requests::{ConnRef, HomeMsg, Query, SubReq};
use crate::shard::ShardCore;
use crate::wire::envelope_frame;

/// One envelope connection's session state.
pub(crate) struct EnvelopeSession {
    format: Format,
    /// Shown in presence lists and `join` events.
    info: Arc<Data>,
    /// The verified token (`[auth] mode = "jwt"`), replaced by each successful `refresh`.
    identity: Option<Arc<Identity>>,
    /// Undecodable frames in a row.
    pub(super) bad: u32,
    /// Its message rate's GCRA state (`[limits] messages_per_second`).
    pub(super) rate_tat: u64,
    /// The current refresh window: when it began, and the refreshes handled in it.
    last_refresh: Option<(Instant, u8)>,
}

impl EnvelopeSession {
    pub(crate) fn new(
        format: Format,
        info: Arc<Data>,
        identity: Option<Arc<Identity>>,
    ) -> EnvelopeSession {
        EnvelopeSession {
            format,
            info,
            identity,
            bad: 0,
            rate_tat: 0,
            last_refresh: None,
        }
    }

    /// Answer a message refused by the rate limit: `rate_limited` with the wait in ms, echoing
    /// the request's `id` when the frame has one.
    pub(super) fn send_rate_limited(
        &self,
        s: &mut ShardCore,
        id: ConnId,
        m: &Message,
        wait_ns: u64,
        now: Instant,
    ) {
        let req = match envelope::decode_request(m.payload(), self.format) {
            Ok((_, req)) => req,
            Err(Rejected { id, .. }) => id,
        };
        let op = ServerOp::RateLimited {
            retry_after_ms: wait_ns.div_ceil(1_000_000),
            id: req.as_ref(),
        };
        let frame = envelope_frame(&op, self.format);
        s.queue_reply(id, [frame], now);
    }

    /// May this connection do `action` in `room`? Counted when not.
    fn check(&self, s: &ShardCore, action: Action, room: &str) -> Result<(), SessionError> {
        let class = s.cfg.class_rights(room);
        if auth::may(self.identity.as_deref(), &class, action, room) {
            return Ok(());
        }
        ShardStats::add(&s.my_stats().forbidden, 1);
        if action == Action::Publish {
            ShardStats::add(&s.my_stats().refused_publishes, 1);
        }
        Err(SessionError::Forbidden(action.as_str()))
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
        if let Err(e) = self.request(s, me, op, req_id.as_ref(), now) {
            s.send_error(id, &e, req_id.as_ref(), now);
        }
        Verdict::Continue
    }

    /// Carry out one decoded request.
    fn request(
        &mut self,
        s: &mut ShardCore,
        me: ConnRef,
        op: ClientOp,
        req_id: Option<&Data>,
        now: Instant,
    ) -> Result<(), SessionError> {
        let format = self.format;
        if let Some(room) = op.room() {
            let action = match &op {
                ClientOp::Publish { .. } => Some(Action::Publish),
                ClientOp::Presence { .. } => Some(Action::Presence),
                ClientOp::History { .. } => Some(Action::History),
                ClientOp::Subscribe { .. } => Some(Action::Subscribe),
                _ => None,
            };
            if let Some(action) = action {
                self.check(s, action, room)?;
            }
        }
        let msg = match op {
            ClientOp::Subscribe {
                room,
                since,
                epoch,
                presence,
            } => {
                // Presence events need the presence right as well (refused quietly: the
                // subscription itself is allowed).
                let class = s.cfg.class_rights(&room);
                let presence = presence
                    && auth::may(self.identity.as_deref(), &class, Action::Presence, &room);
                let sub = SubReq {
                    since,
                    epoch,
                    presence,
                    info: self.info.clone(),
                    user: self.identity.as_ref().map(|i| i.sub.clone()),
                    id: req_id.cloned(),
                };
                return subscribe(s, me, Arc::from(room), sub, now);
            }
            ClientOp::Unsubscribe { room } => {
                return unsubscribe(s, me, &room, (format, req_id), now)
            }
            ClientOp::Refresh { token } => return self.refresh(s, me, &token, req_id, now),
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
            ClientOp::Presence { room, by_user } => HomeMsg::Query {
                room: Arc::from(room),
                conn: me,
                format,
                query: Query::Presence { by_user },
                id: req_id.cloned(),
            },
            ClientOp::History { room, since, limit } => HomeMsg::Query {
                room: Arc::from(room),
                conn: me,
                format,
                query: Query::History { since, limit },
                id: req_id.cloned(),
            },
        };
        s.send_home(msg, now);
        Ok(())
    }

    /// `refresh`: a new token for the same user extends the connection's life and replaces its
    /// permissions; rooms it no longer allows are left with `unsubscribed` (reason `forbidden`).
    fn refresh(
        &mut self,
        s: &mut ShardCore,
        me: ConnRef,
        token: &str,
        req_id: Option<&Data>,
        now: Instant,
    ) -> Result<(), SessionError> {
        let Some(verifier) = s.cfg.auth.verifier.clone() else {
            return Err(SessionError::BadRefresh("auth is off".into()));
        };
        // Each refresh is a signature check on the shard's thread: at most REFRESH_BURST per
        // REFRESH_WINDOW per connection.
        match self.last_refresh {
            Some((start, n)) if now.saturating_duration_since(start) < REFRESH_WINDOW => {
                if n >= REFRESH_BURST {
                    return Err(SessionError::BadRefresh("too frequent".into()));
                }
                self.last_refresh = Some((start, n + 1));
            }
            _ => self.last_refresh = Some((now, 1)),
        }
        let new = verifier
            .verify(token)
            .map_err(|e| SessionError::BadRefresh(e.to_string()))?;
        if self.identity.as_ref().is_some_and(|old| old.sub != new.sub) {
            return Err(SessionError::BadRefresh("token is for another user".into()));
        }
        let exp = new.exp;
        self.identity = Some(Arc::new(new));
        if let Some(c) = s.conns.get_mut(me.id.0) {
            c.expires = expiry(exp, verifier.leeway());
        }
        let rooms: Vec<(RoomId, Arc<str>)> = match s.conns.get(me.id.0) {
            Some(c) => c
                .rooms
                .iter()
                .filter_map(|m| Some((m.room, s.rooms.get(m.room)?.name.clone())))
                .collect(),
            None => Vec::new(),
        };
        self.revoke_pending(s, me, now);
        for (rid, name) in rooms {
            let class = s.cfg.class_rights(&name);
            let id = self.identity.as_deref();
            if auth::may(id, &class, Action::Subscribe, &name) {
                if !auth::may(id, &class, Action::Presence, &name) {
                    s.set_presence(me.id, rid, false);
                }
            } else {
                s.leave_room(me.id, rid);
                let op = ServerOp::Unsubscribed {
                    room: &name,
                    reason: Some("forbidden"),
                    id: None,
                };
                s.queue_reply(me.id, [envelope_frame(&op, self.format)], now);
            }
        }
        let op = ServerOp::Refreshed { exp, id: req_id };
        s.queue_reply(me.id, [envelope_frame(&op, self.format)], now);
        Ok(())
    }
}

impl EnvelopeSession {
    /// After a refresh: subscriptions still waiting for their answer that the new token no
    /// longer allows are cancelled (the answer is undone when it comes).
    fn revoke_pending(&self, s: &mut ShardCore, me: ConnRef, now: Instant) {
        let id = self.identity.as_deref();
        let cfg = s.cfg.clone();
        let mut revoked: Vec<Arc<str>> = Vec::new();
        for ((uid, room), p) in s.subs.iter_mut() {
            if *uid != me.uid || !p.live {
                continue;
            }
            if !auth::may(id, &cfg.class_rights(room), Action::Subscribe, room) {
                p.live = false;
                p.cancelled += 1;
                revoked.push(room.clone());
            }
        }
        for room in revoked {
            let op = ServerOp::Unsubscribed {
                room: &room,
                reason: Some("forbidden"),
                id: None,
            };
            s.queue_reply(me.id, [envelope_frame(&op, self.format)], now);
        }
    }
}

/// Refreshes one connection may send per window (each costs a signature check).
const REFRESH_BURST: u8 = 5;
/// The window of [`REFRESH_BURST`].
const REFRESH_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// A token's expiry as a connection keeps it: `exp` plus the leeway, in Unix seconds (saturating
/// at the 32-bit range; 0 would mean never, so an `exp` of 0 is already over).
pub(crate) fn expiry(exp: u64, leeway: std::time::Duration) -> u32 {
    u32::try_from(exp.saturating_add(leeway.as_secs()))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// `subscribe`: refused when already a member or in flight, or over the room limit; otherwise
/// tracked as pending and sent to the room's home.
fn subscribe(
    s: &mut ShardCore,
    me: ConnRef,
    room: Arc<str>,
    sub: SubReq,
    now: Instant,
) -> Result<(), SessionError> {
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
        conn: me,
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
    (format, req_id): (Format, Option<&Data>),
    now: Instant,
) -> Result<(), SessionError> {
    if let Some(rid) = s.member_room(me.id, room) {
        s.leave_room(me.id, rid);
        s.send_unsubscribed(me.id, room, (format, req_id), now);
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
    s.send_unsubscribed(me.id, room, (format, req_id), now);
    Ok(())
}
