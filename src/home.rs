//! Home shards: every room has one (a hash of its name), which numbers the room's messages
//! (`seq`), owns its epoch, keeps its history ring and its presence list, and counts its members
//! on every shard per wire format (its census). Requests reach the home through the shards'
//! FIFO inboxes ([`HomeMsg`]); answers to one connection go back as [`Reply`].
//!
//! Why this gives resume without gap or duplicate: a `subscribe` reaches the home, which answers
//! with the room's current seq and the kept messages after `since`, and from then on sends the
//! room's messages to the subscriber's shard too. The answer and those messages travel the same
//! FIFO channel, so the subscriber's shard sees every message up to `seq` before the answer (they
//! are not delivered to the new member: it is not a member yet) and every later one after it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::fanout::{envelope_frame, Bcast, Body, Frames, Kind, ShardMsg, Wire, WIRES};
use crate::protocol::envelope::{Data, Format, ServerOp};
use crate::room::ConnId;
use crate::shard::{ShardCore, ShardId, Tick};

/// A connection somewhere on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnRef {
    pub(crate) shard: ShardId,
    pub(crate) id: ConnId,
    /// Node-unique id (also tells a reused slot apart).
    pub(crate) uid: u64,
}

/// An envelope subscription request.
#[derive(Debug)]
pub(crate) struct SubReq {
    pub(crate) conn: ConnRef,
    pub(crate) since: Option<u64>,
    pub(crate) epoch: Option<u64>,
    pub(crate) presence: bool,
    pub(crate) info: Arc<Data>,
}

/// A request to a room's home shard.
#[derive(Debug)]
pub(crate) enum HomeMsg {
    /// A member joined `room` on `shard` with `wire`; for an envelope subscription, also
    /// register its presence and answer with [`Reply::Subscribed`].
    Join {
        room: Arc<str>,
        shard: ShardId,
        wire: Wire,
        sub: Option<SubReq>,
    },
    /// A member left; `uid` for envelope members (presence).
    Leave {
        room: Arc<str>,
        shard: ShardId,
        wire: Wire,
        uid: Option<u64>,
    },
    /// An envelope publish; `ack` asks for an `ack` frame with the seq.
    Publish {
        room: Arc<str>,
        data: Data,
        from: ConnRef,
        ack: Option<(Format, Data)>,
    },
    /// `presence` or `history` for one connection.
    Query {
        room: Arc<str>,
        conn: ConnRef,
        format: Format,
        query: Query,
    },
}

impl HomeMsg {
    /// The room the request is about (its home handles it).
    pub(crate) fn room(&self) -> &Arc<str> {
        match self {
            HomeMsg::Join { room, .. }
            | HomeMsg::Leave { room, .. }
            | HomeMsg::Publish { room, .. }
            | HomeMsg::Query { room, .. } => room,
        }
    }
}

/// What a [`HomeMsg::Query`] asks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Query {
    Presence,
    History {
        since: Option<u64>,
        limit: Option<u32>,
    },
}

/// A home shard's answer to one connection.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The subscription is registered: join locally, send `subscribed`, then the replay.
    Subscribed {
        conn: ConnRef,
        room: Arc<str>,
        wire: Wire,
        presence: bool,
        seq: u64,
        epoch: u64,
        recovered: bool,
        replay: Vec<Arc<Bcast>>,
    },
    /// A ready frame (ack, presence, history).
    Frame { conn: ConnRef, frame: Bytes },
}

/// An HTTP API request, answered by the room's home (or, for `Rooms`, by every shard).
#[derive(Debug)]
pub(crate) enum ApiReq {
    Publish { room: Arc<str>, data: Data },
    Presence { room: Arc<str> },
    Rooms,
}

/// The answer to an [`ApiReq`].
#[derive(Debug)]
pub(crate) enum ApiAnswer {
    Seq(u64),
    Members(Vec<(u64, Arc<Data>)>),
    Rooms(Vec<(Arc<str>, u64)>),
}

/// A new epoch: microseconds since the Unix epoch at creation (below 2^53, so JavaScript
/// numbers hold it exactly), strictly increasing within the process. A restarted daemon or a
/// forgotten and recreated room gets a different one.
fn new_epoch() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// The state a home shard keeps for one room.
#[derive(Debug)]
pub(crate) struct HomeRoom {
    pub(crate) seq: u64,
    pub(crate) epoch: u64,
    history: VecDeque<Arc<Bcast>>,
    /// Payload bytes of the kept messages.
    history_bytes: usize,
    /// Envelope subscribers: conn id → info (sorted, so `presence` lists are stable).
    presence: BTreeMap<u64, Arc<Data>>,
    /// Members per shard and wire format.
    per_shard: Vec<[u32; WIRES]>,
    /// Members per wire format, all shards.
    total: [u32; WIRES],
    /// Last time the room had an envelope member (raw messages are kept only around then).
    envelope_seen: Option<Tick>,
}

impl HomeRoom {
    fn new(shards: usize) -> HomeRoom {
        HomeRoom {
            seq: 0,
            epoch: new_epoch(),
            history: VecDeque::new(),
            history_bytes: 0,
            presence: BTreeMap::new(),
            per_shard: vec![[0; WIRES]; shards],
            total: [0; WIRES],
            envelope_seen: None,
        }
    }

    fn count(&mut self, shard: ShardId, wire: Wire, add: bool) {
        let (Some(c), t) = (
            self.per_shard
                .get_mut(shard.0)
                .map(|s| &mut s[wire as usize]),
            &mut self.total[wire as usize],
        ) else {
            return;
        };
        if add {
            *c += 1;
            *t += 1;
        } else {
            *c = c.saturating_sub(1);
            *t = t.saturating_sub(1);
        }
    }

    /// Envelope members on any shard?
    fn has_envelope_members(&self) -> bool {
        Wire::ALL
            .iter()
            .any(|w| !w.is_raw() && self.total[*w as usize] > 0)
    }

    /// Members on all shards, every format.
    pub(crate) fn members(&self) -> u64 {
        self.total.iter().map(|&n| u64::from(n)).sum()
    }

    /// Drop kept messages older than `ttl`.
    fn expire(&mut self, now: Tick, ttl: Duration) {
        while let Some(b) = self.history.front() {
            if now.since(b.at) >= ttl {
                self.drop_oldest();
            } else {
                break;
            }
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(b) = self.history.pop_front() {
            self.history_bytes = self.history_bytes.saturating_sub(b.weight());
        }
    }

    /// Keep `b`, dropping the oldest messages beyond `size` messages or `max_bytes` of payload.
    fn keep(&mut self, b: Arc<Bcast>, size: usize, max_bytes: usize) {
        let w = b.weight();
        if size == 0 || w > max_bytes {
            return;
        }
        while self.history.len() >= size || self.history_bytes + w > max_bytes {
            self.drop_oldest();
        }
        self.history_bytes += w;
        self.history.push_back(b);
    }

    /// Can every message after `since` still be given (none expired or evicted)?
    fn covers(&self, since: u64) -> bool {
        if since >= self.seq {
            return true;
        }
        self.history.front().is_some_and(|b| b.seq <= since + 1)
    }

    /// The answer to a resume request: `(recovered, messages to replay)`.
    fn resume(&self, since: Option<u64>, epoch: Option<u64>) -> (bool, Vec<Arc<Bcast>>) {
        let (Some(since), Some(epoch)) = (since, epoch) else {
            return (false, Vec::new());
        };
        if epoch != self.epoch || since > self.seq || !self.covers(since) {
            return (false, Vec::new());
        }
        let replay = self
            .history
            .iter()
            .filter(|b| b.seq > since)
            .cloned()
            .collect();
        (true, replay)
    }

    /// Kept messages after `since`, oldest first, at most `limit`; and whether none is missing.
    fn page(&self, since: Option<u64>, limit: usize) -> (Vec<Arc<Bcast>>, bool) {
        let since = since.unwrap_or(0);
        let msgs = self
            .history
            .iter()
            .filter(|b| b.seq > since)
            .take(limit)
            .cloned()
            .collect();
        (msgs, self.covers(since))
    }

    fn idle(&self) -> bool {
        self.history.is_empty() && self.presence.is_empty() && self.members() == 0
    }
}

/// Every room this shard is home for.
#[derive(Debug, Default)]
pub(crate) struct HomeRooms {
    rooms: HashMap<Arc<str>, HomeRoom>,
    last_sweep: Option<Instant>,
}

impl HomeRooms {
    fn get_or_create(&mut self, room: &Arc<str>, shards: usize) -> &mut HomeRoom {
        if !self.rooms.contains_key(room) {
            self.rooms.insert(room.clone(), HomeRoom::new(shards));
        }
        // Just inserted if it was missing.
        self.rooms
            .get_mut(room)
            .unwrap_or_else(|| unreachable!("room inserted above"))
    }

    /// Expire history and forget idle rooms (at most once a second).
    pub(crate) fn sweep(&mut self, now: Instant, ttl: Duration) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        let tick = Tick::at(now);
        self.rooms.retain(|_, r| {
            r.expire(tick, ttl);
            !r.idle()
        });
    }
}

/// The home shard of `room` among `shards` (FNV-1a of the name).
pub fn home_index(room: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

impl ShardCore {
    /// The home shard of `room`.
    pub(crate) fn home_of(&self, room: &str) -> ShardId {
        ShardId(home_index(room, self.peers.len()))
    }

    /// Send a request to its room's home (handled at once when that is this shard).
    pub(crate) fn send_home(&mut self, msg: HomeMsg, now: Instant) {
        let home = self.home_of(msg.room());
        if home == self.id {
            self.home_handle(msg, now);
        } else {
            self.send_to(home, ShardMsg::Home(msg));
        }
    }

    /// Send a reply to a connection's shard (handled at once when that is this shard).
    fn reply(&mut self, shard: ShardId, r: Reply, now: Instant) {
        if shard == self.id {
            self.handle_reply(r, now);
        } else {
            self.send_to(shard, ShardMsg::Reply(r));
        }
    }

    /// Send a sequenced message or event to every shard with members that take it.
    fn home_fanout(&mut self, b: Arc<Bcast>, now: Instant) {
        let Some(r) = self.home.rooms.get(&b.room) else {
            return;
        };
        let targets: Vec<ShardId> = r
            .per_shard
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.iter()
                    .zip(Wire::ALL)
                    .any(|(&n, w)| n > 0 && !(w.is_raw() && (b.raw_done || b.is_event())))
            })
            .map(|(i, _)| ShardId(i))
            .collect();
        // Encode once, here, what any member anywhere takes (other shards reuse it).
        let total = r.total;
        for w in Wire::ALL {
            if total[w as usize] > 0 && !(b.raw_done && w.is_raw()) {
                self.wire_frame(&b, w);
            }
        }
        for s in targets {
            if s == self.id {
                self.deliver_bcast(&b, now);
            } else {
                self.send_to(s, ShardMsg::Event(b.clone()));
            }
        }
    }

    /// Number a raw message (already delivered to raw members) and send it to envelope members.
    pub(crate) fn home_sequence_raw(&mut self, room: Arc<str>, frames: &Frames, now: Instant) {
        let shards = self.peers.len();
        let (size, max_bytes) = (self.cfg.history_size, self.cfg.history_max_room_bytes);
        let ttl = self.cfg.history_ttl;
        let r = self.home.get_or_create(&room, shards);
        r.seq += 1;
        let tick = Tick::at(now);
        let envelope_members = r.has_envelope_members();
        if envelope_members {
            r.envelope_seen = Some(tick);
        }
        // A room only raw clients use (now and for the last `ttl`) numbers its messages but does
        // not keep them: nobody can resume into it, and raw fan-out stays as cheap as it was. A
        // later resume across such a stretch finds the gap and answers `recovered: false`.
        let resumable = r.envelope_seen.is_some_and(|t| tick.since(t) < ttl);
        if size == 0 || !resumable {
            return;
        }
        let b = Arc::new(Bcast::raw_sequenced(room, r.seq, tick, frames));
        r.keep(b.clone(), size, max_bytes);
        if envelope_members {
            self.home_fanout(b, now);
        }
    }

    /// Number a message with a data payload (envelope or API publish) and send it to every
    /// member. Returns its seq.
    fn home_publish(
        &mut self,
        room: Arc<str>,
        data: Data,
        from: Option<ConnRef>,
        now: Instant,
    ) -> u64 {
        let shards = self.peers.len();
        let (size, max_bytes) = (self.cfg.history_size, self.cfg.history_max_room_bytes);
        let r = self.home.get_or_create(&room, shards);
        r.seq += 1;
        let seq = r.seq;
        let b = Arc::new(Bcast::new(
            room,
            seq,
            Tick::at(now),
            Kind::Message {
                from: from.map(|c| c.uid),
                body: Body::Data(data),
            },
            from.map(|c| (c.shard, c.id)),
        ));
        r.keep(b.clone(), size, max_bytes);
        self.home_fanout(b, now);
        seq
    }

    /// Handle a request as the room's home.
    pub(crate) fn home_handle(&mut self, msg: HomeMsg, now: Instant) {
        let shards = self.peers.len();
        let tick = Tick::at(now);
        let ttl = self.cfg.history_ttl;
        match msg {
            HomeMsg::Join {
                room,
                shard,
                wire,
                sub,
            } => {
                let r = self.home.get_or_create(&room, shards);
                r.count(shard, wire, true);
                let Some(sub) = sub else { return };
                r.expire(tick, ttl);
                let (recovered, replay) = r.resume(sub.since, sub.epoch);
                let (seq, epoch) = (r.seq, r.epoch);
                let fresh = r.presence.insert(sub.conn.uid, sub.info.clone()).is_none();
                self.reply(
                    sub.conn.shard,
                    Reply::Subscribed {
                        conn: sub.conn,
                        room: room.clone(),
                        wire,
                        presence: sub.presence,
                        seq,
                        epoch,
                        recovered,
                        replay,
                    },
                    now,
                );
                if fresh {
                    let ev = Kind::Join {
                        conn: sub.conn.uid,
                        info: sub.info,
                    };
                    self.home_fanout(Arc::new(Bcast::new(room, 0, tick, ev, None)), now);
                }
            }
            HomeMsg::Leave {
                room,
                shard,
                wire,
                uid,
            } => {
                let Some(r) = self.home.rooms.get_mut(&room) else {
                    return;
                };
                r.count(shard, wire, false);
                if !wire.is_raw() {
                    r.envelope_seen = Some(tick);
                }
                let left = uid.and_then(|u| r.presence.remove(&u).map(|info| (u, info)));
                if let Some((conn, info)) = left {
                    let ev = Kind::Leave { conn, info };
                    self.home_fanout(Arc::new(Bcast::new(room, 0, tick, ev, None)), now);
                }
            }
            HomeMsg::Publish {
                room,
                data,
                from,
                ack,
            } => {
                let seq = self.home_publish(room, data, Some(from), now);
                if let Some((format, id)) = ack {
                    let frame = envelope_frame(&ServerOp::Ack { id: &id, seq }, format);
                    self.reply(from.shard, Reply::Frame { conn: from, frame }, now);
                }
            }
            HomeMsg::Query {
                room,
                conn,
                format,
                query,
            } => {
                let frame = self.home_query(&room, format, query, now);
                self.reply(conn.shard, Reply::Frame { conn, frame }, now);
            }
        }
    }

    /// Answer `presence` or `history` in `format`.
    fn home_query(&mut self, room: &Arc<str>, format: Format, q: Query, now: Instant) -> Bytes {
        let shards = self.peers.len();
        let ttl = self.cfg.history_ttl;
        let max_page = self.cfg.history_max_page;
        let r = self.home.get_or_create(room, shards);
        match q {
            Query::Presence => {
                let members: Vec<(u64, Data)> = r
                    .presence
                    .iter()
                    .map(|(c, i)| (*c, Data::clone(i)))
                    .collect();
                envelope_frame(
                    &ServerOp::Presence {
                        room,
                        members: &members,
                    },
                    format,
                )
            }
            Query::History { since, limit } => {
                r.expire(Tick::at(now), ttl);
                let limit = limit.map_or(max_page, |l| (l as usize).min(max_page));
                let (msgs, complete) = r.page(since, limit);
                let epoch = r.epoch;
                let messages: Vec<(u64, Option<u64>, Data)> = msgs
                    .iter()
                    .filter_map(|b| Some((b.seq, b.from(), b.data()?.into_owned())))
                    .collect();
                envelope_frame(
                    &ServerOp::History {
                        room,
                        epoch,
                        messages: &messages,
                        complete,
                    },
                    format,
                )
            }
        }
    }

    /// Answer an HTTP API request.
    pub(crate) fn home_api(&mut self, req: ApiReq, now: Instant) -> ApiAnswer {
        match req {
            ApiReq::Publish { room, data } => {
                ApiAnswer::Seq(self.home_publish(room, data, None, now))
            }
            ApiReq::Presence { room } => ApiAnswer::Members(
                self.home
                    .rooms
                    .get(&room)
                    .map(|r| r.presence.iter().map(|(c, i)| (*c, i.clone())).collect())
                    .unwrap_or_default(),
            ),
            ApiReq::Rooms => ApiAnswer::Rooms(
                self.home
                    .rooms
                    .iter()
                    .filter(|(_, r)| r.members() > 0)
                    .map(|(n, r)| (n.clone(), r.members()))
                    .collect(),
            ),
        }
    }

    /// Handle a home's answer to one of this shard's connections.
    pub(crate) fn handle_reply(&mut self, r: Reply, now: Instant) {
        match r {
            Reply::Frame { conn, frame } => {
                if let Some(c) = self.conns.get_mut(conn.id.0) {
                    if c.uid == conn.uid {
                        c.push_control(frame);
                        self.kick(conn.id);
                    }
                }
            }
            Reply::Subscribed {
                conn,
                room,
                wire,
                presence,
                seq,
                epoch,
                recovered,
                replay,
            } => {
                // Unsubscribed while the answer was on its way: treated like a closed connection.
                let key = (conn.uid, room.clone());
                // `wanted_again`: a later subscribe to the room is in flight, so the presence
                // this answer registered stays.
                let (cancelled, wanted_again) = match self.pending_subs.get_mut(&key) {
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
                    .pending_subs
                    .get(&key)
                    .is_some_and(|p| !p.live && p.cancelled == 0)
                {
                    self.pending_subs.remove(&key);
                }
                let alive = !cancelled
                    && self
                        .conns
                        .get(conn.id.0)
                        .is_some_and(|c| c.uid == conn.uid && !c.sealed);
                // Subscribe requests are refused while one is in flight or the connection is a
                // member, so a live answer always finds it not yet in the room.
                let joined = alive && {
                    if let Some(rid) = self.rooms.find(&room) {
                        // What was broadcast before the subscription (seq <= `seq`) goes to the
                        // members it was meant for, not to this one.
                        self.flush_room(rid, now);
                    }
                    self.join_local(conn.id, &room, presence).is_some()
                };
                if !joined {
                    // Undo what the home counted for this request, presence included.
                    let leave = HomeMsg::Leave {
                        room,
                        shard: self.id,
                        wire,
                        uid: (!wanted_again).then_some(conn.uid),
                    };
                    self.send_home(leave, now);
                    if alive {
                        self.send_error(
                            conn.id,
                            "too_many_rooms",
                            "too many rooms on this connection",
                            None,
                        );
                    }
                    return;
                }
                let Some(format) = wire.format() else { return };
                let mut frames = Vec::with_capacity(1 + replay.len());
                frames.push(envelope_frame(
                    &ServerOp::Subscribed {
                        room: &room,
                        seq,
                        epoch,
                        recovered,
                    },
                    format,
                ));
                for b in &replay {
                    if let Some(f) = self.wire_frame(b, wire) {
                        frames.push(f);
                    }
                }
                if let Some(c) = self.conns.get_mut(conn.id.0) {
                    for f in frames {
                        c.push_control(f);
                    }
                }
                self.kick(conn.id);
            }
        }
    }

    /// Queue an `unsubscribed` frame for an envelope connection.
    pub(crate) fn send_unsubscribed(&mut self, id: ConnId, room: &str, format: Format) {
        let frame = envelope_frame(&ServerOp::Unsubscribed { room }, format);
        if let Some(c) = self.conns.get_mut(id.0) {
            c.push_control(frame);
        }
        self.kick(id);
    }

    /// Queue an `error` frame for an envelope connection.
    pub(crate) fn send_error(&mut self, id: ConnId, code: &str, reason: &str, req: Option<&Data>) {
        let Some(c) = self.conns.get_mut(id.0) else {
            return;
        };
        let Some(format) = c.wire.format() else {
            return;
        };
        let frame = envelope_frame(
            &ServerOp::Error {
                code,
                reason,
                id: req,
            },
            format,
        );
        c.push_control(frame);
        self.kick(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, at: Tick) -> Arc<Bcast> {
        Arc::new(Bcast::new(
            Arc::from("r"),
            seq,
            at,
            Kind::Message {
                from: None,
                body: Body::Data(Data::Null),
            },
            None,
        ))
    }

    fn room_with(n: u64, size: usize) -> HomeRoom {
        let mut r = HomeRoom::new(2);
        let t = Tick::at(Instant::now());
        for _ in 0..n {
            r.seq += 1;
            r.keep(msg(r.seq, t), size, usize::MAX);
        }
        r
    }

    fn seqs(v: &[Arc<Bcast>]) -> Vec<u64> {
        v.iter().map(|b| b.seq).collect()
    }

    #[test]
    fn resume_replays_exactly_what_follows_since() {
        let r = room_with(10, 100);
        let (ok, replay) = r.resume(Some(7), Some(r.epoch));
        assert!(ok);
        assert_eq!(seqs(&replay), vec![8, 9, 10]);
        let (ok, replay) = r.resume(Some(10), Some(r.epoch));
        assert!(ok && replay.is_empty());
        let (ok, replay) = r.resume(Some(0), Some(r.epoch));
        assert!(ok);
        assert_eq!(replay.len(), 10);
    }

    #[test]
    fn resume_refuses_lost_positions() {
        let r = room_with(10, 4); // keeps 7..=10
        assert!(r.resume(Some(6), Some(r.epoch)).0);
        assert!(!r.resume(Some(5), Some(r.epoch)).0, "seq 6 is gone");
        assert!(!r.resume(Some(8), Some(r.epoch + 1)).0, "other epoch");
        assert!(!r.resume(Some(8), None).0, "no epoch");
        assert!(!r.resume(None, Some(r.epoch)).0, "fresh subscription");
        assert!(!r.resume(Some(11), Some(r.epoch)).0, "from the future");
        let empty = room_with(3, 0);
        assert!(empty.resume(Some(3), Some(empty.epoch)).0, "nothing missed");
        assert!(!empty.resume(Some(2), Some(empty.epoch)).0);
    }

    #[test]
    fn byte_cap_drops_the_oldest() {
        let mut r = HomeRoom::new(1);
        let t = Tick::at(Instant::now());
        let big = |seq| {
            Arc::new(Bcast::new(
                Arc::from("r"),
                seq,
                t,
                Kind::Message {
                    from: None,
                    body: Body::Data(Data::Bytes(vec![0; 100])),
                },
                None,
            ))
        };
        for seq in 1..=10 {
            r.seq = seq;
            r.keep(big(seq), 1000, 500); // 164 bytes each: three fit
        }
        assert_eq!(seqs(&Vec::from(r.history.clone())), vec![8, 9, 10]);
        assert!(r.history_bytes <= 500);
        assert!(!r.resume(Some(6), Some(r.epoch)).0);
        assert!(r.resume(Some(7), Some(r.epoch)).0);
    }

    #[test]
    fn page_and_completeness() {
        let r = room_with(10, 4);
        let (m, complete) = r.page(None, 2);
        assert_eq!(seqs(&m), vec![7, 8]);
        assert!(!complete, "1..=6 are gone");
        let (m, complete) = r.page(Some(8), 100);
        assert_eq!(seqs(&m), vec![9, 10]);
        assert!(complete);
    }

    #[test]
    fn ttl_expires_and_idle_rooms_go() {
        let mut r = HomeRoom::new(1);
        let t0 = Tick::at(Instant::now());
        r.seq = 1;
        r.keep(msg(1, t0), 10, usize::MAX);
        r.expire(t0, Duration::from_secs(1));
        assert_eq!(r.history.len(), 1);
        let later = Tick::at(Instant::now() + Duration::from_secs(2));
        r.expire(later, Duration::from_secs(1));
        assert!(r.history.is_empty());
        assert!(r.idle());
        r.count(ShardId(0), Wire::Json, true);
        assert!(!r.idle());
        r.count(ShardId(0), Wire::Json, false);
        assert!(r.idle());
    }

    #[test]
    fn epochs_increase() {
        let a = new_epoch();
        let b = new_epoch();
        assert!(b > a);
        assert!(b < 1 << 53);
    }

    #[test]
    fn homes_spread() {
        let hits: Vec<usize> = (0..100)
            .map(|i| home_index(&format!("room-{i}"), 2))
            .collect();
        assert!(hits.contains(&0) && hits.contains(&1));
        assert_eq!(home_index("x", 1), 0);
    }
}
