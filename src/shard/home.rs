//! The home side of the home protocol, applied: this shard is the home of some rooms
//! ([`crate::room::home`] holds their state and rules) and here it numbers their messages, sends
//! them to every shard with members, answers subscribes, presence and history queries and the
//! HTTP API, and announces joins and leaves.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::bus::ShardMsg;
use super::presence::{presence_frame, PresenceQuery};
use super::ShardCore;
use crate::ids::{ShardId, Tick};
use crate::metrics::ShardStats;
use crate::protocol::envelope::{Data, Format, ServerOp};
use crate::room::home::{home_index, Member};
use crate::room::requests::{ApiAnswer, ApiReq, ConnRef, HomeMsg, Query, Reply, SubAnswer, SubReq};
use crate::wire::{envelope_frame, Bcast, Body, Frames, Kind, Wire};

impl ShardCore {
    /// The home shard of `room`.
    pub(crate) fn home_of(&self, room: &str) -> ShardId {
        ShardId(home_index(room, self.shards()))
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
    pub(crate) fn reply(&mut self, shard: ShardId, r: Reply, now: Instant) {
        if shard == self.id {
            self.handle_reply(r, now);
        } else {
            self.send_to(shard, ShardMsg::Reply(r));
        }
    }

    /// Send a sequenced message or event to every shard with members that take it.
    pub(crate) fn home_fanout(&mut self, b: Arc<Bcast>, now: Instant) {
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
        // Cluster mode: raw messages are numbered by Redis instead (`publish_raw_cluster`).
        if self.cluster.is_some() {
            return;
        }
        let shards = self.shards();
        let ((size, ttl), max_bytes) =
            (self.cfg.history_in(&room), self.cfg.history_max_room_bytes);
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
        let evicted = r.keep(b.clone(), size, max_bytes);
        if evicted > 0 {
            ShardStats::add(&self.stats.shard(self.id.0).history_evictions, evicted);
        }
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
        let shards = self.shards();
        let ((size, _), max_bytes) = (self.cfg.history_in(&room), self.cfg.history_max_room_bytes);
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
        let evicted = r.keep(b.clone(), size, max_bytes);
        if evicted > 0 {
            ShardStats::add(&self.stats.shard(self.id.0).history_evictions, evicted);
        }
        self.home_fanout(b, now);
        seq
    }

    /// Handle a request as the room's home.
    pub(crate) fn home_handle(&mut self, msg: HomeMsg, now: Instant) {
        match msg {
            HomeMsg::Join {
                room,
                conn,
                wire,
                sub,
            } => self.home_join(room, conn, wire, sub, now),
            HomeMsg::Leave {
                room,
                shard,
                wire,
                uid,
            } => self.home_leave(room, shard, wire, uid, now),
            HomeMsg::Publish {
                room,
                data,
                from,
                ack,
                dedup,
            } => {
                let (tick, window) = (Tick::at(now), self.cfg.publish_dedup_window);
                let shards = self.shards();
                let first = dedup.as_deref().and_then(|k| {
                    let r = self.home.get_or_create(&room, shards);
                    r.recent.seen(k, tick, window)
                });
                let (seq, duplicate) = match first {
                    Some(seq) => {
                        ShardStats::add(&self.my_stats().duplicate_publishes, 1);
                        (seq, true)
                    }
                    None if self.cluster.is_some() => {
                        self.cluster_publish(room, data, Some(from), ack, dedup, None, now);
                        return;
                    }
                    None => {
                        let seq = self.home_publish(room.clone(), data, Some(from), now);
                        if let Some(k) = dedup.as_deref() {
                            let max = self.cfg.publish_dedup_max;
                            let r = self.home.get_or_create(&room, shards);
                            r.recent.remember(k, seq, tick, max);
                        }
                        (seq, false)
                    }
                };
                if let Some((format, id)) = ack {
                    let op = ServerOp::Ack {
                        id: &id,
                        seq,
                        duplicate,
                    };
                    let frame = envelope_frame(&op, format);
                    self.reply(from.shard, Reply::Frame { conn: from, frame }, now);
                }
            }
            HomeMsg::Query {
                room,
                conn,
                format,
                query,
                id,
            } => self.home_request(room, conn, (format, id), query, now),
        }
    }

    /// A `presence` or `history` request: answered here, or from Redis in cluster mode.
    fn home_request(
        &mut self,
        room: Arc<str>,
        conn: ConnRef,
        (format, id): (Format, Option<Data>),
        query: Query,
        now: Instant,
    ) {
        match query {
            Query::History { since, limit } if self.cluster.is_some() => {
                self.cluster_history(room, conn, (format, id), (since, limit), now);
            }
            Query::Presence { by_user } if !self.presence_cached(&room) => {
                let q = PresenceQuery::Conn {
                    conn,
                    format,
                    id,
                    by_user,
                };
                self.presence_query(room, q, now);
            }
            query => {
                let frame = self.home_query(&room, (format, id.as_ref()), query, now);
                self.reply(conn.shard, Reply::Frame { conn, frame }, now);
            }
        }
    }

    /// A member joined `room` on `shard`; an envelope subscription is also answered (seq,
    /// epoch, replay) and announced to presence subscribers.
    fn home_join(
        &mut self,
        room: Arc<str>,
        conn: ConnRef,
        wire: Wire,
        sub: Option<SubReq>,
        now: Instant,
    ) {
        let (shards, tick, ttl) = (self.shards(), Tick::at(now), self.cfg.history_in(&room).1);
        let max = self.cfg.max_subscribers_in(&room);
        let r = self.home.get_or_create(&room, shards);
        if !r.admit(max, conn.uid, wire) {
            ShardStats::add(&self.my_stats().room_full, 1);
            let id = sub.and_then(|s| s.id);
            self.reply(conn.shard, Reply::Full { conn, room, id }, now);
            return;
        }
        r.count(conn.shard, wire, true);
        if self.cluster.is_some() {
            let members = r.members();
            self.cluster_count(&room, members);
            self.cluster_join(room, conn, wire, sub, now);
            return;
        }
        let Some(sub) = sub else { return };
        let r = self.home.get_or_create(&room, shards);
        r.expire(tick, ttl);
        let (recovered, replay) = r.resume(sub.since, sub.epoch);
        let (seq, epoch) = (r.seq, r.epoch);
        let answer = SubAnswer {
            conn,
            room,
            wire,
            presence: sub.presence,
            seq,
            epoch,
            recovered,
            replay,
            id: sub.id.clone(),
        };
        self.home_subscribed(answer, sub, now);
    }

    /// Register an answered subscription's presence, send the answer, count the resume and
    /// announce the join.
    pub(crate) fn home_subscribed(&mut self, answer: SubAnswer, sub: SubReq, now: Instant) {
        let (shards, tick) = (self.shards(), Tick::at(now));
        let (room, conn, recovered) = (answer.room.clone(), answer.conn, answer.recovered);
        let asked = sub.since.is_some() || sub.epoch.is_some();
        let member = Member {
            user: sub.user.clone(),
            info: sub.info.clone(),
        };
        let r = self.home.get_or_create(&room, shards);
        let fresh = r.presence.insert(conn.uid, member.clone()).is_none();
        if sub.presence {
            r.watching.insert(conn.uid);
        }
        let watched = r.watched();
        if fresh {
            self.presence_out(&room, conn.uid, Some(&member));
        }
        self.reply(conn.shard, Reply::Subscribed(answer), now);
        if asked {
            let st = self.my_stats();
            ShardStats::add(
                if recovered {
                    &st.resumes_recovered
                } else {
                    &st.resumes_lost
                },
                1,
            );
        }
        if fresh && watched && self.cfg.class_rights(&room).presence {
            let ev = Kind::Join {
                conn: conn.uid,
                user: sub.user,
                info: sub.info,
            };
            self.home_fanout(Arc::new(Bcast::new(room, 0, tick, ev, None)), now);
        }
    }

    /// A member left `room` on `shard`; an envelope member's leave is announced.
    fn home_leave(
        &mut self,
        room: Arc<str>,
        shard: ShardId,
        wire: Wire,
        uid: Option<u64>,
        now: Instant,
    ) {
        let tick = Tick::at(now);
        let Some(r) = self.home.rooms.get_mut(&room) else {
            return;
        };
        r.leaves(shard, wire, uid);
        if !wire.is_raw() {
            r.envelope_seen = Some(tick);
        }
        if self.cluster.is_some() {
            let members = r.members();
            self.cluster_count(&room, members);
            if members == 0 {
                self.cluster_unsubscribe(&room);
            }
        }
        let Some(r) = self.home.rooms.get_mut(&room) else {
            return;
        };
        let left = uid.and_then(|u| r.presence.remove(&u).map(|m| (u, m)));
        if let Some(u) = uid {
            r.watching.remove(&u);
        }
        let watched = r.watched();
        if let Some((u, _)) = &left {
            self.presence_out(&room, *u, None);
        }
        let told = watched && self.cfg.class_rights(&room).presence;
        if let Some((conn, m)) = left.filter(|_| told) {
            let ev = Kind::Leave {
                conn,
                user: m.user,
                info: m.info,
            };
            self.home_fanout(Arc::new(Bcast::new(room, 0, tick, ev, None)), now);
        }
    }

    /// Answer `presence` or `history` in `format`.
    fn home_query(
        &mut self,
        room: &Arc<str>,
        (format, id): (Format, Option<&Data>),
        q: Query,
        now: Instant,
    ) -> Bytes {
        let shards = self.shards();
        let ttl = self.cfg.history_in(room).1;
        let max_page = self.cfg.history_max_page;
        let presence = match q {
            Query::Presence { .. } => self.all_presence(room),
            Query::History { .. } => Default::default(),
        };
        let r = self.home.get_or_create(room, shards);
        match q {
            Query::Presence { by_user } => presence_frame(room, &presence, by_user, format, id),
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
                        id,
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
                self.all_presence(&room)
                    .into_iter()
                    .map(|(c, m)| (c, m.user, m.info))
                    .collect(),
            ),
            ApiReq::Rooms => ApiAnswer::Rooms(
                self.home
                    .rooms
                    .iter()
                    .filter(|(_, r)| r.members() > 0)
                    .map(|(n, r)| (n.clone(), r.members()))
                    .collect(),
            ),
            ApiReq::SsePost { stream, user, body } => {
                ApiAnswer::Posted(self.post_sse(stream, user.as_deref(), body))
            }
            ApiReq::RoomStats => ApiAnswer::RoomStats(
                self.home
                    .rooms
                    .iter()
                    .filter(|(_, r)| r.members() > 0)
                    .map(|(n, r)| (n.clone(), r.members(), r.seq))
                    .collect(),
            ),
        }
    }
}
