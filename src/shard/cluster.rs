//! Cluster mode on the room's home shard: publishes go to the Redis bridge (numbered there),
//! the room's channel is subscribed while the room has members on this node, what arrives on
//! it is judged by the room's [`Track`] (deliver, hold and catch up, report a gap) and fanned
//! out as on one node; subscribes with `since`/`epoch` are answered from the history stream and
//! the local ring. Nothing here runs without `[cluster]`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::ShardCore;
use crate::cluster::presence::Remote;
use crate::cluster::track::{plan_resume, Phase, Resume, Steps, Track};
use crate::cluster::{encode_tail, Command, Event, Fetched, Incoming, Link, Unavailable};
use crate::ids::{ConnId, ShardId, Tick};
use crate::metrics::{ClusterStats, ShardStats};
use crate::protocol::envelope::{Data, Format, ServerOp};
use crate::room::requests::{ApiAnswer, ConnRef, Reply, SubAnswer, SubReq};
use crate::wire::{envelope_frame, Bcast, Body, Kind, Wire};

/// A publish waiting for its seq from Redis.
#[derive(Debug)]
enum PendingPublish {
    /// An envelope publish: ack (or `unavailable`) to the connection; remember its dedup key.
    Conn {
        room: Arc<str>,
        from: ConnRef,
        ack: Option<(Format, Data)>,
        dedup: Option<Box<[u8]>>,
    },
    /// An HTTP API publish.
    Api(flume::Sender<ApiAnswer>),
}

/// An envelope subscription waiting for the room's numbering or a history read.
#[derive(Debug)]
struct WaitingSub {
    conn: ConnRef,
    wire: Wire,
    sub: SubReq,
}

/// What a fetch was for.
#[derive(Debug)]
enum PendingFetch {
    /// A catch-up after a seq jump, or after reconnect `generation`.
    CatchUp(Option<u64>),
    /// A subscription to answer.
    Sub(WaitingSub),
    /// The room's first read for raw members (no subscription to answer): numbers the room.
    Number,
    /// A `history` request to answer from the stream.
    History(HistoryReq),
}

/// A `history` request waiting for the room's stream.
#[derive(Debug)]
struct HistoryReq {
    conn: ConnRef,
    format: Format,
    id: Option<Data>,
    since: Option<u64>,
    limit: Option<u32>,
}

/// The cluster side of one shard.
#[derive(Debug)]
pub(crate) struct ClusterHome {
    pub(crate) link: Link,
    tracks: HashMap<Arc<str>, Track>,
    next_token: u64,
    publishes: HashMap<u64, PendingPublish>,
    fetches: HashMap<u64, PendingFetch>,
    /// The resync in progress: its generation and the catch-ups not answered yet.
    resync: Option<(u64, usize)>,
    /// Fresh subscriptions waiting for the room's first read (one read numbers the room for
    /// all of them).
    wait_live: HashMap<Arc<str>, Vec<WaitingSub>>,
    /// Subscriptions from clients ahead of this node (`since` > last): answered once the room
    /// has been delivered up to their `since`.
    ahead: HashMap<Arc<str>, Vec<WaitingSub>>,
    /// Subscribed rooms: the other nodes' members ([`super::presence`]).
    pub(crate) remote: HashMap<Arc<str>, Remote>,
    /// `presence` requests for rooms not subscribed here, waiting for the room's hash.
    pub(crate) queries: HashMap<u64, super::presence::PresenceQuery>,
}

impl ClusterHome {
    pub(crate) fn new(link: Link) -> ClusterHome {
        ClusterHome {
            link,
            tracks: HashMap::new(),
            next_token: 0,
            publishes: HashMap::new(),
            fetches: HashMap::new(),
            resync: None,
            wait_live: HashMap::new(),
            ahead: HashMap::new(),
            remote: HashMap::new(),
            queries: HashMap::new(),
        }
    }

    pub(crate) fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }
}

/// The CBOR bytes of a payload (what crosses Redis).
fn to_cbor(data: &Data) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing a Value into a Vec cannot fail.
    let _ = ciborium::into_writer(data, &mut out);
    out
}

impl ShardCore {
    fn cluster_stats(&self) -> &ClusterStats {
        &self.stats.cluster
    }

    /// Send a publish to Redis; its ack (or `unavailable`) follows [`Event::Published`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cluster_publish(
        &mut self,
        room: Arc<str>,
        data: Data,
        from: Option<ConnRef>,
        ack: Option<(Format, Data)>,
        dedup: Option<Box<[u8]>>,
        api: Option<flume::Sender<ApiAnswer>>,
        now: Instant,
    ) {
        let history = self.cfg.history_in(&room).0;
        let shard = self.id.0;
        // Redis remembers the id too, so a retry on another node is answered as a duplicate.
        let window = self.cfg.publish_dedup_window;
        let in_redis = dedup.clone().map(|k| (k, window));
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let token = c.token();
        let origin = from.map(|f| (f.shard.0 as u32, f.id.0 as u32, f.uid));
        let tail = encode_tail(&c.link.node, origin, &to_cbor(&data));
        let pending = match (api, from) {
            (Some(tx), _) => PendingPublish::Api(tx),
            (None, Some(from)) => PendingPublish::Conn {
                room: room.clone(),
                from,
                ack,
                dedup,
            },
            (None, None) => return,
        };
        let cmd = Command::Publish {
            room,
            tail,
            history,
            dedup: in_redis,
            shard,
            token,
        };
        match c.link.send(cmd) {
            Ok(()) => {
                c.publishes.insert(token, pending);
            }
            Err(why) => {
                ClusterStats::add(&self.cluster_stats().unavailable, 1);
                self.published(pending, Err(why), now);
            }
        }
    }

    /// A publish's answer: ack with the Redis seq, or `unavailable`.
    fn published(
        &mut self,
        p: PendingPublish,
        result: Result<(u64, bool), Unavailable>,
        now: Instant,
    ) {
        match p {
            PendingPublish::Api(tx) => {
                let _ = tx.try_send(match result {
                    Ok((seq, _)) => ApiAnswer::Seq(seq),
                    Err(_) => ApiAnswer::Unavailable,
                });
            }
            PendingPublish::Conn {
                room,
                from,
                ack,
                dedup,
            } => {
                if let Ok((_, true)) = result {
                    ShardStats::add(&self.my_stats().duplicate_publishes, 1);
                }
                if let (Ok((seq, _)), Some(k)) = (result, dedup.as_deref()) {
                    let (tick, max, shards) =
                        (Tick::at(now), self.cfg.publish_dedup_max, self.shards());
                    let r = self.home.get_or_create(&room, shards);
                    r.recent.remember(k, seq, tick, max);
                }
                let Some((format, id)) = ack else { return };
                let frame = match result {
                    Ok((seq, duplicate)) => envelope_frame(
                        &ServerOp::Ack {
                            id: &id,
                            seq,
                            duplicate,
                        },
                        format,
                    ),
                    Err(why) => envelope_frame(
                        &ServerOp::Error {
                            code: "unavailable",
                            reason: &format!("cluster: {why}"),
                            id: Some(&id),
                        },
                        format,
                    ),
                };
                self.reply(from.shard, Reply::Frame { conn: from, frame }, now);
            }
        }
    }

    /// A member joined `room` (counted already): subscribe the channel if it is the first on
    /// this node; answer an envelope subscription now or once the room is numbered.
    pub(crate) fn cluster_join(
        &mut self,
        room: Arc<str>,
        conn: ConnRef,
        wire: Wire,
        sub: Option<SubReq>,
        now: Instant,
    ) {
        let shard = self.id.0;
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let t = c.tracks.entry(room.clone()).or_default();
        if t.phase == Phase::Idle {
            t.subscribe();
            let _ = c.link.send(Command::Subscribe {
                room: room.clone(),
                shard,
            });
            self.presence_load(&room);
        }
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some(t) = c.tracks.get(&room) else { return };
        let Some(sub) = sub else {
            let syncing = t.phase == Phase::Syncing && !c.wait_live.contains_key(&room);
            if syncing {
                self.cluster_number(&room, now);
            }
            return;
        };
        let (live, last) = (t.phase == Phase::Live, t.last);
        let resume = sub.since.is_some() && sub.epoch.is_some();
        // The local ring holds everything after `since` (a resume onto the same node).
        let ring = self.home.rooms.get(&room).is_some_and(|r| {
            sub.since.is_some_and(|s| {
                s <= last && (s == last || r.history.front().is_some_and(|b| b.seq <= s + 1))
            })
        });
        let w = WaitingSub { conn, wire, sub };
        if live && (!resume || ring) {
            self.cluster_answer(&room, w, None, now);
            return;
        }
        if !live && !resume {
            if let Some(list) = c.wait_live.get_mut(&room) {
                // The room's first read is on its way already.
                list.push(w);
                return;
            }
            c.wait_live.insert(room.clone(), Vec::new());
        }
        let token = c.token();
        let cmd = Command::Fetch {
            room: room.clone(),
            after: w.sub.since.filter(|_| resume),
            shard,
            token,
        };
        match c.link.send(cmd) {
            Ok(()) => {
                c.fetches.insert(token, PendingFetch::Sub(w));
            }
            Err(_) => {
                c.wait_live.remove(&room);
                self.cluster_answer(&room, w, None, now);
            }
        }
    }

    /// A raw member joined a room that is not numbered yet: read its seq, so it turns live even
    /// if no envelope member ever subscribes (or its channel's messages would be held forever).
    fn cluster_number(&mut self, room: &Arc<str>, now: Instant) {
        let shard = self.id.0;
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let token = c.token();
        let cmd = Command::Fetch {
            room: room.clone(),
            after: None,
            shard,
            token,
        };
        if c.link.send(cmd).is_ok() {
            c.wait_live.insert(room.clone(), Vec::new());
            c.fetches.insert(token, PendingFetch::Number);
        } else if let Some(t) = c.tracks.get_mut(room) {
            // Numbering unknown: the first message that comes sets it.
            let steps = t.on_fetched(Err(()), false);
            self.apply_steps(room, steps, now);
        }
    }

    /// `history` in cluster mode: read from the room's stream (this node's ring holds only
    /// what it delivered while subscribed).
    pub(crate) fn cluster_history(
        &mut self,
        room: Arc<str>,
        conn: ConnRef,
        (format, id): (Format, Option<Data>),
        (since, limit): (Option<u64>, Option<u32>),
        now: Instant,
    ) {
        let shard = self.id.0;
        let h = HistoryReq {
            conn,
            format,
            id,
            since,
            limit,
        };
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let token = c.token();
        let cmd = Command::Fetch {
            room: room.clone(),
            after: Some(since.unwrap_or(0)),
            shard,
            token,
        };
        match c.link.send(cmd) {
            Ok(()) => {
                c.fetches.insert(token, PendingFetch::History(h));
            }
            Err(why) => self.history_answer(&room, h, Err(why), now),
        }
    }

    /// Answer `history` from what the stream holds (or `unavailable`).
    fn history_answer(
        &mut self,
        room: &Arc<str>,
        h: HistoryReq,
        result: Result<&Fetched, Unavailable>,
        now: Instant,
    ) {
        let frame = match result {
            Ok(f) => {
                let since = h.since.unwrap_or(0);
                let max = self.cfg.history_max_page;
                let limit = h.limit.map_or(max, |l| (l as usize).min(max));
                // Complete: nothing after `since` was trimmed away.
                let complete =
                    since >= f.seq || f.entries.first().is_some_and(|e| e.seq <= since + 1);
                let messages: Vec<(u64, Option<u64>, Data)> = f
                    .entries
                    .iter()
                    .filter(|e| e.seq > since)
                    .take(limit)
                    .filter_map(|e| {
                        let data: Data = ciborium::from_reader(&e.payload[..]).ok()?;
                        Some((e.seq, e.from.map(|x| x.2), data))
                    })
                    .collect();
                let op = ServerOp::History {
                    room,
                    epoch: f.epoch,
                    messages: &messages,
                    complete,
                    id: h.id.as_ref(),
                };
                envelope_frame(&op, h.format)
            }
            Err(why) => envelope_frame(
                &ServerOp::Error {
                    code: "unavailable",
                    reason: &format!("cluster: {why}"),
                    id: h.id.as_ref(),
                },
                h.format,
            ),
        };
        let conn = h.conn;
        self.reply(conn.shard, Reply::Frame { conn, frame }, now);
    }

    /// The room's member count on this node changed (for `GET /api/rooms` on every node; a
    /// count refused by a full bridge channel is counted, the next change corrects it).
    pub(crate) fn cluster_count(&mut self, room: &Arc<str>, members: u64) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let cmd = Command::Members {
            room: room.clone(),
            members,
        };
        if c.link.send(cmd).is_err() {
            ClusterStats::add(&self.stats.cluster.refused, 1);
        }
    }

    /// The room has no member left on this node: stop listening to its channel.
    pub(crate) fn cluster_unsubscribe(&mut self, room: &Arc<str>) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.tracks.remove(room).is_some() {
            let _ = c.link.send(Command::Unsubscribe { room: room.clone() });
        }
        c.ahead.remove(room);
        c.wait_live.remove(room);
        c.remote.remove(room);
        // What was kept stops at this point; a later subscription here would take it for the
        // room's recent past up to the new numbering (a resume replaying from it would stop
        // short of the newest, recovered: true). The stream has it all.
        if let Some(r) = self.home.rooms.get_mut(room) {
            r.history.clear();
            r.history_bytes = 0;
        }
    }

    /// Answer a subscription at the room's last delivered seq, replaying from the history
    /// stream (`fetched`) and the local ring what follows its `since`.
    fn cluster_answer(
        &mut self,
        room: &Arc<str>,
        w: WaitingSub,
        fetched: Option<&Fetched>,
        now: Instant,
    ) {
        let (last, epoch) = self
            .cluster
            .as_ref()
            .and_then(|c| c.tracks.get(room))
            .map_or((0, 0), |t| (t.last, t.epoch));
        let since = w.sub.since.unwrap_or(0);
        let shards = self.shards();
        let r = self.home.get_or_create(room, shards);
        // What follows `since` up to `last`: the ring first, the stream for what it lacks.
        let mut replay: Vec<Arc<Bcast>> = r
            .history
            .iter()
            .filter(|b| b.seq > since && b.seq <= last)
            .cloned()
            .collect();
        let ring_first = replay.first().map_or(last + 1, |b| b.seq);
        if let Some(f) = fetched.filter(|f| f.epoch == epoch) {
            let older: Vec<Arc<Bcast>> = f
                .entries
                .iter()
                .filter(|e| e.seq > since && e.seq < ring_first && e.seq <= last)
                .filter_map(|e| self.cluster_bcast(e).map(Arc::new))
                .collect();
            replay.splice(0..0, older);
        }
        let contiguous = replay
            .iter()
            .enumerate()
            .all(|(i, b)| b.seq == since + 1 + i as u64);
        let kept = replay.first().map(|b| b.seq).filter(|_| contiguous);
        let plan = plan_resume(w.sub.since, w.sub.epoch, epoch, last, kept);
        match plan {
            Resume::Wait => {
                if let Some(c) = self.cluster.as_mut() {
                    c.ahead.entry(room.clone()).or_default().push(w);
                }
                return;
            }
            Resume::Fresh => replay.clear(),
            Resume::Replay => {}
        }
        let recovered = plan == Resume::Replay;
        let answer = SubAnswer {
            conn: w.conn,
            room: room.clone(),
            wire: w.wire,
            presence: w.sub.presence,
            seq: last,
            epoch,
            recovered,
            replay,
            id: w.sub.id.clone(),
        };
        self.home_subscribed(answer, w.sub, now);
    }

    /// A message from Redis as a broadcast (`None`: an unreadable payload).
    fn cluster_bcast(&self, m: &Incoming) -> Option<Bcast> {
        let data: Data = ciborium::from_reader(&m.payload[..]).ok()?;
        let mine = self.cluster.as_ref().is_some_and(|c| c.link.node == m.node);
        let origin = m
            .from
            .filter(|_| mine)
            .map(|(s, c, _)| (ShardId(s as usize), ConnId(c as usize)));
        Some(Bcast::new(
            m.room.clone(),
            m.seq,
            Tick::at(Instant::now()),
            Kind::Message {
                from: m.from.map(|f| f.2),
                body: Body::Data(data),
            },
            origin,
        ))
    }

    /// Handle what the bridge reports.
    pub(crate) fn cluster_event(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Message(m) => {
                let room = m.room.clone();
                let Some(steps) = self.track_mut(&room).map(|t| t.on_message(m)) else {
                    return;
                };
                self.apply_steps(&room, steps, now);
            }
            Event::Published { token, result } => {
                let p = self
                    .cluster
                    .as_mut()
                    .and_then(|c| c.publishes.remove(&token));
                if let Some(p) = p {
                    self.published(p, result, now);
                }
            }
            Event::Fetched {
                room,
                token,
                result,
            } => self.fetched(room, token, result, now),
            Event::Presence(a) => self.presence_in(a, now),
            Event::PresenceLoaded {
                room,
                token,
                entries,
            } => self.presence_loaded(&room, token, entries, now),
            Event::NodeGone { node } => self.node_gone(&node, now),
            Event::Resync { generation } => {
                self.presence_reannounce();
                let Some(c) = self.cluster.as_mut() else {
                    return;
                };
                // A second Resync of the same connection (a lagging shard, a room behind)
                // while catch-ups of the first are on their way keeps counting them: `Synced`
                // goes once they are all answered, not at once.
                c.resync = match c.resync {
                    Some((g, n)) if g == generation => Some((g, n)),
                    _ => Some((generation, 0)),
                };
                let mut asks = Vec::new();
                for (room, t) in c.tracks.iter_mut() {
                    if let Some(after) = t.resync() {
                        asks.push((room.clone(), after));
                    }
                }
                for (room, after) in asks {
                    if !self.ask_catch_up(&room, after, Some(generation)) {
                        if let Some(t) = self.track_mut(&room) {
                            t.fetching = false;
                            t.gap = true;
                        }
                    }
                }
                self.resync_step(None);
            }
        }
    }

    /// Ask the bridge for `room`'s stream after `after` (a catch-up); false if refused.
    fn ask_catch_up(&mut self, room: &Arc<str>, after: u64, generation: Option<u64>) -> bool {
        let shard = self.id.0;
        let Some(c) = self.cluster.as_mut() else {
            return false;
        };
        let token = c.token();
        let cmd = Command::Fetch {
            room: room.clone(),
            after: Some(after),
            shard,
            token,
        };
        if c.link.send(cmd).is_err() {
            return false;
        }
        c.fetches.insert(token, PendingFetch::CatchUp(generation));
        if let Some((g, n)) = c.resync.as_mut().filter(|_| generation.is_some()) {
            if Some(*g) == generation {
                *n += 1;
            }
        }
        ClusterStats::add(&self.stats.cluster.catch_ups, 1);
        true
    }

    /// One catch-up of resync `done` was answered (`None`: none was asked); report the shard
    /// synced to the bridge once all are.
    fn resync_step(&mut self, done: Option<u64>) {
        let shard = self.id.0;
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some((g, n)) = c.resync.as_mut() else {
            return;
        };
        if done == Some(*g) {
            *n = n.saturating_sub(1);
        }
        if *n == 0 {
            let generation = *g;
            c.resync = None;
            let _ = c.link.send(Command::Synced { shard, generation });
        }
    }

    fn track_mut(&mut self, room: &Arc<str>) -> Option<&mut Track> {
        self.cluster.as_mut().and_then(|c| c.tracks.get_mut(room))
    }

    fn fetched(
        &mut self,
        room: Arc<str>,
        token: u64,
        result: Result<Fetched, Unavailable>,
        now: Instant,
    ) {
        let Some(p) = self.cluster.as_mut().and_then(|c| c.fetches.remove(&token)) else {
            return;
        };
        if let PendingFetch::History(h) = p {
            self.history_answer(&room, h, result.as_ref().map_err(|e| *e), now);
            return;
        }
        let catch_up = matches!(p, PendingFetch::CatchUp(_));
        if let PendingFetch::CatchUp(Some(g)) = p {
            self.resync_step(Some(g));
        }
        let steps = self
            .track_mut(&room)
            .map(|t| t.on_fetched(result.as_ref().map_err(|_| ()), catch_up));
        if let Some(steps) = steps {
            self.apply_steps(&room, steps, now);
        }
        if matches!(p, PendingFetch::Sub(_) | PendingFetch::Number) {
            if let PendingFetch::Sub(w) = p {
                self.cluster_answer(&room, w, result.as_ref().ok(), now);
            }
            let waiting = self
                .cluster
                .as_mut()
                .and_then(|c| c.wait_live.remove(&room));
            for w in waiting.into_iter().flatten() {
                self.cluster_answer(&room, w, None, now);
            }
        }
    }

    /// Carry out what the room's track decided: deliver in order (marking gaps), ask for a
    /// catch-up, drop stale history; then answer subscriptions that were ahead.
    fn apply_steps(&mut self, room: &Arc<str>, steps: Steps, now: Instant) {
        let shards = self.shards();
        let ((size, _), max_bytes) = (self.cfg.history_in(room), self.cfg.history_max_room_bytes);
        if let Some((epoch, seen)) = steps.bump {
            tracing::warn!(room = %room, seen, "cluster: redis seq went backwards (failover); asking a new epoch");
            if let Some(c) = self.cluster.as_ref() {
                let cmd = Command::Guard {
                    room: room.clone(),
                    epoch,
                    seen,
                };
                // Refused: the next reconnect's guard asks again (the bridge saw the same seqs).
                let _ = c.link.send(cmd);
            }
        }
        if steps.reset {
            let r = self.home.get_or_create(room, shards);
            r.history.clear();
            r.history_bytes = 0;
        }
        let epoch = self.track_mut(room).map_or(0, |t| t.epoch);
        for (m, gap) in steps.deliver {
            let Some(mut b) = self.cluster_bcast(&m) else {
                ClusterStats::add(&self.stats.cluster.bad_messages, 1);
                if let Some(t) = self.track_mut(room) {
                    t.gap = true;
                }
                continue;
            };
            if gap {
                ClusterStats::add(&self.stats.cluster.gaps, 1);
                b.gap = true;
            }
            let b = Arc::new(b);
            let r = self.home.get_or_create(room, shards);
            r.seq = m.seq;
            r.epoch = epoch;
            let evicted = r.keep(b.clone(), size, max_bytes);
            if evicted > 0 {
                ShardStats::add(&self.stats.shard(self.id.0).history_evictions, evicted);
            }
            self.home_fanout(b, now);
        }
        if let Some(after) = steps.fetch_after {
            if !self.ask_catch_up(room, after, None) {
                // Cannot ask: give up on the catch-up, what was held goes out with a gap.
                let s = self.track_mut(room).map(|t| t.on_fetched(Err(()), true));
                if let Some(s) = s {
                    self.apply_steps(room, s, now);
                }
            }
        }
        self.answer_ahead(room, now);
    }

    /// Answer the subscriptions whose `since` the room has now reached.
    fn answer_ahead(&mut self, room: &Arc<str>, now: Instant) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let last = c.tracks.get(room).map_or(0, |t| t.last);
        let Some(list) = c.ahead.get_mut(room) else {
            return;
        };
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(list)
            .into_iter()
            .partition(|w| w.sub.since.is_some_and(|s| s <= last));
        *list = rest;
        for w in ready {
            self.cluster_answer(room, w, None, now);
        }
    }
}
