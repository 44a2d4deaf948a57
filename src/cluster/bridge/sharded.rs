//! Redis Cluster mode (`cluster.redis_cluster`, docs/cluster.md "Redis Cluster"): the bridge's
//! connections through the `redis` crate's async cluster client (one for commands, one for
//! subscriptions with RESP3 pushes: [`Conns`]) with sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`
//! from the publish script).
//!
//! - **Slots**: every key and the channel of a room carry the hash tag `{room}`
//!   (`{prefix}:seq:{room}`, `:epoch:`, `:hist:`, `:presence:`, `:room:`), so the publish script
//!   (one `EVALSHA` per publish) runs on the room's master and `SPUBLISH`es there. The liveness
//!   keys share the prefix's slot (`{prefix}:alive:{node}`, `{prefix}:nodes`).
//! - **Canary per master**: one canary channel per master, `{prefix}:canary:{cN}:{node_id}` with
//!   a tag `cN` chosen so that it hashes to a slot the master owns ([`canary_tags`], from
//!   `CLUSTER SLOTS`, looked at every canary tick). The node is deaf when any is late.
//! - **Slot moves**: the crate follows `MOVED`/`ASK` for commands; a master that loses a slot
//!   sends `sunsubscribe` for its channels: the bridge subscribes again (the crate finds the new
//!   owner) and the room's home catches up from the stream ([`Event::Resync`]).
//! - **Rooms watched after a move**: a subscription made right after a failover can land on the
//!   demoted master (the crate's slot map is stale, and a replica takes `SSUBSCRIBE`), which
//!   hears nothing until the new master counts it in its shard. For [`WATCH_VERDICTS`] rounds
//!   the bridge reads such a room's seq in Redis; a seq still unheard `canary_timeout` later
//!   ([`behind`]) has the room's home catch up from the stream, and a third time the node
//!   reconnects.
//! - **Publishes** are not pipelined here (a cluster pipeline is retried whole on a redirect,
//!   which could number a message twice): each `EVALSHA` is its own command, one room's in order,
//!   rooms concurrently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{PushInfo, PushKind, Value};

use super::super::canary::Canary;
use super::super::{Command, Event};
use super::{now_us, Bridge, ClusterStats, Lost};

/// Slots in a Redis Cluster.
const SLOTS: u16 = 16384;
/// Tags tried at most when looking for one in a master's slots.
const MAX_TAG_TRIES: u32 = 1 << 20;
/// Verdicts a room gets in one watch after its slot moved (again after each time it was found
/// behind); a verdict comes `canary_timeout` after a read of Redis.
pub(super) const WATCH_VERDICTS: u8 = 4;
/// Ticks a watch lasts at most (reads never answered: a stalled master).
const WATCH_MAX_TICKS: u16 = 120;
/// Times a watched room is found behind in one watch before the node reconnects (a fresh slot
/// map, every room subscribed again). A catch-up makes the next verdict look fine, so these
/// are not required in a row.
const STRIKES: u8 = 3;

/// A read of a room's (seq, epoch) in Redis, answered in the background.
type SeqRead = tokio::task::JoinHandle<redis::RedisResult<(Option<u64>, Option<u64>)>>;

/// (epoch, seq).
type Numbered = (u64, u64);

/// A read in flight: when it was sent and what the node had seen then.
#[derive(Debug)]
struct Read {
    handle: SeqRead,
    at: Instant,
    seen: Option<Numbered>,
}

/// A room watched after a slot move (or a master's connection lost).
#[derive(Debug)]
struct Watch {
    /// Verdicts left.
    verdicts: u8,
    /// Ticks so far.
    ticks: u16,
    /// What Redis answered, when it was asked and what the node had seen then: judged
    /// `canary_timeout` after the asking.
    expect: Option<(Numbered, Instant, Option<Numbered>)>,
    /// Found behind this many times since the watch began or the node reconnected.
    strikes: u8,
    read: Option<Read>,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            verdicts: WATCH_VERDICTS,
            ticks: 0,
            expect: None,
            strikes: 0,
            read: None,
        }
    }

    /// The read's answer if it came (kept as `expect`, with what the node had seen when it was
    /// sent); a read older than `timeout` is dropped.
    async fn collect(
        &mut self,
        now: Instant,
        timeout: Duration,
    ) -> Option<(Numbered, Option<Numbered>)> {
        let r = self.read.take()?;
        if !r.handle.is_finished() {
            if now.duration_since(r.at) >= timeout {
                r.handle.abort();
            } else {
                self.read = Some(r);
            }
            return None;
        }
        let Ok(Ok((seq, epoch))) = r.handle.await else {
            return None;
        };
        let got = (epoch.unwrap_or(0), seq.unwrap_or(0));
        self.expect = Some((got, r.at, r.seen));
        Some((got, r.seen))
    }

    fn forget_reads(&mut self) {
        if let Some(r) = self.read.take() {
            r.handle.abort();
        }
        self.expect = None;
    }
}

/// Whether a room is behind (pure): Redis held `redis` (epoch, seq) when asked, the node had
/// seen `then` at that moment and has seen `now` since (by subscription or catch-up), a
/// `canary_timeout` later. Behind: less of that epoch seen than Redis had numbered, or Redis
/// in another epoch with messages in it. Not judged when the node itself moved to another
/// epoch since the asking (it followed a renumbering meanwhile).
pub(super) fn behind(redis: Numbered, then: Option<Numbered>, now: Option<Numbered>) -> bool {
    if let (Some(t), Some(n)) = (then, now) {
        if t.0 != n.0 {
            return false;
        }
    }
    match now {
        Some((e, s)) if e == redis.0 => s < redis.1,
        _ => redis.1 > 0,
    }
}

/// The Redis Cluster side of the bridge.
#[derive(Debug)]
pub(super) struct Sharded {
    seeds: Vec<String>,
    /// Canary channel -> its canary and whether it was heard since the last connect.
    canaries: HashMap<String, (Canary, bool)>,
    /// Ticks at which every shard still catches up (a node's connection dropped: the crate
    /// reconnects and resubscribes it).
    resyncs: u8,
    /// A slot moved: subscribe every room again at the next tick (module doc of [`Conns`]: a
    /// subscription confirmed by another channel's push may not have been made).
    resubscribe: bool,
    /// Rooms whose slot moved lately, read against Redis's seq every tick.
    watch: HashMap<Arc<str>, Watch>,
}

impl Sharded {
    /// `None` for one Redis (no seeds).
    pub(super) fn new(seeds: &[String]) -> Option<Sharded> {
        (!seeds.is_empty()).then(|| Sharded {
            seeds: seeds.to_vec(),
            canaries: HashMap::new(),
            resyncs: 0,
            resubscribe: false,
            watch: HashMap::new(),
        })
    }

    /// Some canary is late.
    fn deaf(&self, now: Instant, timeout: Duration) -> bool {
        self.canaries.values().any(|(c, _)| c.deaf(now, timeout))
    }

    /// Every master's canary was heard since the last connect.
    fn heard(&self) -> bool {
        !self.canaries.is_empty() && self.canaries.values().all(|(_, h)| *h)
    }
}

/// The connections of cluster mode: commands (RESP2) and subscriptions (RESP3, pushes) apart,
/// because the crate takes a `sunsubscribe` push the server sends on its own (a slot moved) for
/// the reply of the oldest command in flight on that connection: on a connection that also
/// carried publishes every later reply would be off by one.
pub(super) struct Conns {
    cmd: ClusterConnection,
    sub: ClusterConnection,
    pushes: tokio::sync::mpsc::UnboundedReceiver<PushInfo>,
}

/// `{s}`: a Redis Cluster hash tag (room names and prefixes hold no braces: validated).
pub(super) fn hash_tag(s: &str) -> String {
    format!("{{{s}}}")
}

/// The publish script of cluster mode: the same, with `SPUBLISH` (sharded pub/sub).
pub(super) fn publish_lua(single: &str) -> String {
    single.replace("'PUBLISH'", "'SPUBLISH'")
}

/// CRC16 (XMODEM), as Redis Cluster hashes keys (the crate the `redis` client hashes with).
fn crc16(data: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(data)
}

/// The slot of a key or shard channel (Redis Cluster spec: the first `{...}` if non-empty).
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

/// Each master (`host:port`) with its slot ranges, from a `CLUSTER SLOTS` answer.
pub(super) fn masters(slots: &Value) -> Vec<(String, Vec<(u16, u16)>)> {
    let mut out: Vec<(String, Vec<(u16, u16)>)> = Vec::new();
    let Value::Array(ranges) = slots else {
        return out;
    };
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(n)) => u16::try_from(*n).ok(),
        _ => None,
    };
    for r in ranges {
        let Value::Array(r) = r else { continue };
        let (Some(lo), Some(hi), Some(Value::Array(m))) = (int(r.first()), int(r.get(1)), r.get(2))
        else {
            continue;
        };
        let host = match m.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => continue,
        };
        let Some(port) = int(m.get(1)) else { continue };
        let name = format!("{host}:{port}");
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push((lo, hi)),
            None => out.push((name, vec![(lo, hi)])),
        }
    }
    out.sort();
    out
}

/// One canary tag per master: the first `c{i}` whose slot the master owns.
pub(super) fn canary_tags(masters: &[(String, Vec<(u16, u16)>)]) -> Vec<String> {
    masters
        .iter()
        .filter_map(|(_, ranges)| {
            (0..MAX_TAG_TRIES).map(|i| format!("c{i}")).find(|t| {
                let s = key_slot(t.as_bytes());
                ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&s))
            })
        })
        .collect()
}

impl super::Side for Conns {
    type Cmd = ClusterConnection;
    fn cmd(&mut self) -> &mut ClusterConnection {
        &mut self.cmd
    }
    async fn publish(&mut self, b: &mut Bridge, batch: Vec<Command>) -> redis::RedisResult<()> {
        b.publish_sharded(self, batch).await
    }
    async fn subscribe(&mut self, channel: String) -> redis::RedisResult<()> {
        self.sub.ssubscribe(channel).await
    }
    async fn unsubscribe(&mut self, channel: String) -> redis::RedisResult<()> {
        self.sub.sunsubscribe(channel).await
    }
}

/// Run one publish; a master without the script (`NOSCRIPT`: it did not run; a replica promoted
/// since the connect) gets it loaded (`SCRIPT LOAD` goes to every master) and the publish is sent
/// once more.
async fn evalsha(
    con: &mut ClusterConnection,
    script: &redis::Script,
    cmd: &redis::Cmd,
) -> redis::RedisResult<i64> {
    match cmd.query_async::<i64>(con).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            tracing::info!("cluster: a master lacked the publish script; loading it");
            script.load_async(con).await?;
            cmd.query_async::<i64>(con).await
        }
        r => r,
    }
}

/// The failover guard for one room in Redis Cluster mode (docs/cluster.md "Failover"): its
/// seq in Redis is below what this node saw in the same epoch; give it a new epoch (in the
/// background; the room's home then sees the epoch change and marks a gap).
fn guard_room(
    mut con: ClusterConnection,
    stats: Arc<ClusterStats>,
    room: Arc<str>,
    keys: [String; 2],
    seen: (u64, u64),
) {
    tokio::spawn(async move {
        let rooms = vec![(room.clone(), keys, seen.0, seen.1)];
        match super::super::connect::guard(&mut con, rooms, now_us()).await {
            Ok(bumped) if !bumped.is_empty() => {
                ClusterStats::add(&stats.gaps, 1);
                super::renumbered(&room);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(room = %room, error = %e, "cluster: failover guard failed"),
        }
    });
}

/// One room's publishes in a batch: the room, (shard, token) to answer, the `EVALSHA`s.
type Group = (std::sync::Arc<str>, Vec<(usize, u64)>, Vec<redis::Cmd>);

fn timed_out<E>(_: E) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
}

/// A push's channel and payload (`smessage`, `ssubscribe`, `sunsubscribe`).
fn channel_of(p: &PushInfo) -> Option<&[u8]> {
    match p.data.first() {
        Some(Value::BulkString(c)) => Some(c),
        _ => None,
    }
}

impl Bridge {
    /// `SPUBLISH` in cluster mode, `PUBLISH` with one Redis.
    pub(super) fn publish_verb(&self) -> &'static str {
        match self.sharded {
            Some(_) => "SPUBLISH",
            None => "PUBLISH",
        }
    }

    fn canary_channel(&self, tag: &str) -> String {
        let (p, n) = (&self.prefix, &self.cfg.node_id);
        format!("{p}:canary:{}:{n}", hash_tag(tag))
    }

    /// Connect to the cluster, load the scripts on every master, subscribe every room and a
    /// canary per master; tell the shards to catch up.
    pub(super) async fn connect_sharded(&mut self) -> redis::RedisResult<Conns> {
        let t = self.cfg.canary_timeout;
        let seeds = self
            .sharded
            .as_ref()
            .map(|s| s.seeds.clone())
            .unwrap_or_default();
        let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
        let builder = || {
            ClusterClientBuilder::new(seeds.clone())
                .connection_timeout(t)
                .response_timeout(t)
        };
        let subs = builder()
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .build()?;
        let cmds = builder().build()?;
        let mut cmd = tokio::time::timeout(t, cmds.get_async_connection())
            .await
            .map_err(timed_out)??;
        let sub = tokio::time::timeout(t, subs.get_async_connection())
            .await
            .map_err(timed_out)??;
        self.publish.load_async(&mut cmd).await?;
        self.fetch.load_async(&mut cmd).await?;
        if let Some(s) = self.sharded.as_mut() {
            (s.canaries, s.resubscribe) = (HashMap::new(), false);
            s.watch.values_mut().for_each(|w| {
                w.strikes = 0;
                w.forget_reads();
            });
        }
        self.replay_leaves(&mut cmd).await?;
        self.counts.reconnected();
        let mut c = Conns { cmd, sub, pushes };
        self.subscribe_all(&c).await?;
        tokio::time::timeout(t, self.follow_masters(&mut c))
            .await
            .map_err(timed_out)??;
        self.connected().await;
        Ok(c)
    }

    /// `SSUBSCRIBE` every room's channel: one command per channel (channels of other slots
    /// cannot share one), concurrently.
    async fn subscribe_all(&self, c: &Conns) -> redis::RedisResult<()> {
        let channels: Vec<String> = self.rooms.keys().map(|r| self.room_channel(r)).collect();
        let subs = channels.into_iter().map(|ch| {
            let mut con = c.sub.clone();
            tokio::spawn(async move { con.ssubscribe(ch).await })
        });
        let subs: Vec<_> = subs.collect();
        for s in subs {
            tokio::time::timeout(self.cfg.canary_timeout, s)
                .await
                .map_err(timed_out)?
                .map_err(|e| redis::RedisError::from(std::io::Error::other(e)))??;
        }
        Ok(())
    }

    /// Keep one canary channel per master (`CLUSTER SLOTS`): subscribe new ones, drop others.
    async fn follow_masters(&mut self, c: &mut Conns) -> redis::RedisResult<()> {
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let mut q = redis::cmd("CLUSTER");
        q.arg("SLOTS");
        let v = c.cmd.route_command(q, route).await?;
        let want: Vec<String> = canary_tags(&masters(&v))
            .iter()
            .map(|t| self.canary_channel(t))
            .collect();
        let Some(s) = self.sharded.as_mut() else {
            return Ok(());
        };
        let old: Vec<String> = s
            .canaries
            .keys()
            .filter(|k| !want.contains(k))
            .cloned()
            .collect();
        let new: Vec<String> = want
            .into_iter()
            .filter(|k| !s.canaries.contains_key(k))
            .collect();
        for ch in &old {
            s.canaries.remove(ch);
        }
        for ch in new {
            c.sub.ssubscribe(&ch).await?;
            if let Some(s) = self.sharded.as_mut() {
                s.canaries.insert(ch, (Canary::default(), false));
            }
        }
        for ch in old {
            c.sub.sunsubscribe(&ch).await?;
        }
        Ok(())
    }

    pub(super) async fn serve_sharded(
        &mut self,
        mut c: Conns,
        rx: &flume::Receiver<Command>,
    ) -> Lost {
        let mut tick = tokio::time::interval(self.cfg.canary_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let r = tokio::select! {
                cmd = rx.recv_async() => {
                    let Ok(cmd) = cmd else { return Lost::Stop };
                    self.handle(&mut c, cmd, rx).await
                }
                push = c.pushes.recv() => {
                    let Some(push) = push else { return Lost::Closed };
                    self.push(&mut c, push).await
                }
                _ = tick.tick() => {
                    let timeout = self.cfg.canary_timeout;
                    if self.sharded.as_ref().is_some_and(|s| s.deaf(Instant::now(), timeout)) {
                        return Lost::Deaf;
                    }
                    match self.tick_sharded(&mut c).await {
                        Ok(true) => return Lost::Behind,
                        r => r.map(|_| ()),
                    }
                }
            };
            if let Err(e) = r {
                return Lost::Error(e);
            }
        }
    }

    /// Every canary tick: catch-ups owed, liveness, the masters' canaries, the rooms watched
    /// after a slot move; `true`: a watched room stayed behind (reconnect).
    async fn tick_sharded(&mut self, c: &mut Conns) -> redis::RedisResult<bool> {
        if self.sharded.as_ref().is_some_and(|s| s.resubscribe) {
            self.subscribe_all(c).await?;
            if let Some(s) = self.sharded.as_mut() {
                (s.resubscribe, s.resyncs) = (false, s.resyncs.max(1));
            }
        }
        if let Some(s) = self.sharded.as_mut().filter(|s| s.resyncs > 0) {
            s.resyncs -= 1;
            self.lagging.iter_mut().for_each(|l| *l = true);
        }
        let deaf = self.check_watched(c).await;
        self.catch_up_lagging().await;
        self.liveness(c.cmd.clone());
        self.repeat_leaves(c.cmd.clone(), Instant::now());
        self.write_counts(c.cmd.clone());
        let t = self.cfg.canary_interval;
        match tokio::time::timeout(t, self.follow_masters(c)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cluster: CLUSTER SLOTS failed"),
            Err(_) => tracing::warn!("cluster: CLUSTER SLOTS timed out"),
        }
        let now = Instant::now();
        let Some(s) = self.sharded.as_mut() else {
            return Ok(deaf);
        };
        for (ch, (canary, _)) in s.canaries.iter_mut() {
            let n = canary.send(now);
            let (mut cmd, ch) = (c.cmd.clone(), ch.clone());
            // Not awaited here: a stalled master must not stall the verdict.
            tokio::spawn(async move {
                let _: redis::RedisResult<i64> = redis::cmd("SPUBLISH")
                    .arg(ch)
                    .arg(n)
                    .query_async(&mut cmd)
                    .await;
            });
        }
        Ok(deaf)
    }

    /// The rooms watched after a slot move: collect each room's read of Redis; a
    /// `canary_timeout` after a read, judge the room ([`behind`]: its home shard catches up
    /// from the stream, `cluster_rooms_behind_total`); guard one whose seq went backwards in
    /// Redis (a promoted replica lacked writes: new epoch); send the next read. Never waits on
    /// Redis (a read not answered within `canary_timeout` is dropped). `true`: a room was
    /// behind [`STRIKES`] times in one watch (a reconnect starts the count again).
    async fn check_watched(&mut self, c: &Conns) -> bool {
        let Some(s) = self.sharded.as_mut() else {
            return false;
        };
        let rooms = &self.rooms;
        s.watch.retain(|r, w| {
            let keep = w.verdicts > 0 && w.ticks < WATCH_MAX_TICKS && rooms.contains_key(r);
            if !keep {
                w.forget_reads();
            }
            keep
        });
        let watched: Vec<Arc<str>> = s.watch.keys().cloned().collect();
        let (timeout, now) = (self.cfg.canary_timeout, Instant::now());
        let mut reconnect = false;
        for room in watched {
            let [seq_key, epoch_key, _] = self.keys(&room);
            let seen = self.seen.get(&room).copied();
            let Some(w) = self.sharded.as_mut().and_then(|s| s.watch.get_mut(&room)) else {
                continue;
            };
            w.ticks += 1;
            if let Some((got, Some((se, ss)))) = w.collect(now, timeout).await {
                if super::super::regressed(se, ss, got.0, got.1) {
                    let (con, stats) = (c.cmd.clone(), self.stats.clone());
                    let keys = [seq_key.clone(), epoch_key.clone()];
                    guard_room(con, stats, room.clone(), keys, (se, ss));
                }
            }
            let mut late = false;
            if let Some((redis, at, then)) = w.expect {
                if now.duration_since(at) >= timeout {
                    late = behind(redis, then, seen);
                    w.expect = None;
                    w.verdicts = w.verdicts.saturating_sub(1);
                }
            }
            if w.read.is_none() && w.expect.is_none() {
                let mut con = c.cmd.clone();
                let handle = tokio::spawn(async move {
                    redis::cmd("MGET")
                        .arg(seq_key)
                        .arg(epoch_key)
                        .query_async(&mut con)
                        .await
                });
                w.read = Some(Read {
                    handle,
                    at: now,
                    seen,
                });
            }
            if !late {
                continue;
            }
            (w.strikes, w.verdicts) = (w.strikes + 1, WATCH_VERDICTS);
            let strikes = w.strikes;
            if strikes >= STRIKES {
                w.strikes = 0;
                reconnect = true;
            }
            ClusterStats::add(&self.stats.rooms_behind, 1);
            tracing::warn!(room = %room, ?seen, strikes, "cluster: room behind redis after a slot move; catching up from its stream");
            if let Some(&shard) = self.rooms.get(&room) {
                // Caught up by `catch_up_lagging`, right after (once per shard).
                self.lagging[shard] = true;
            }
        }
        reconnect
    }

    /// A push from a master: a room message, a canary, a subscription lost to a slot move.
    async fn push(&mut self, c: &mut Conns, p: PushInfo) -> redis::RedisResult<()> {
        if p.kind == PushKind::Disconnection {
            // The crate reconnects that master (or finds its promoted replica) and resubscribes;
            // catch up after it did, and watch every room (a promoted replica may lack writes:
            // the guard in `check_watched`).
            let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
            if let Some(s) = self.sharded.as_mut() {
                s.resyncs = 2;
                for room in rooms {
                    s.watch.entry(room).or_insert_with(Watch::new);
                }
            }
            return Ok(());
        }
        let Some(ch) = channel_of(&p).and_then(|c| std::str::from_utf8(c).ok()) else {
            return Ok(());
        };
        let ch = ch.to_string();
        match p.kind {
            PushKind::SMessage => {
                let Some(Value::BulkString(payload)) = p.data.get(1) else {
                    return Ok(());
                };
                let canary = self.sharded.as_mut().and_then(|s| s.canaries.get_mut(&ch));
                match canary {
                    Some((canary, heard)) => {
                        if let Some(n) = std::str::from_utf8(payload)
                            .ok()
                            .and_then(|s| s.parse().ok())
                        {
                            canary.heard(n);
                            *heard = true;
                        }
                        self.heard = self.sharded.as_ref().is_some_and(Sharded::heard);
                        self.update_ready();
                    }
                    None => self.route(&ch, payload),
                }
            }
            PushKind::SUnsubscribe => self.unsubscribed(c, &ch).await?,
            _ => {}
        }
        Ok(())
    }

    /// `sunsubscribe` for a channel still wanted: its slot moved. Subscribe again (the crate
    /// routes it to the slot's new owner) and have the room's home catch up from the stream.
    async fn unsubscribed(&mut self, c: &mut Conns, ch: &str) -> redis::RedisResult<()> {
        if let Some(s) = self.sharded.as_mut() {
            // A canary's slot moved: the next tick picks a tag on each master again.
            if s.canaries.remove(ch).is_some() {
                return Ok(());
            }
        }
        let home = self.room_of(ch).and_then(|r| self.rooms.get(r)).copied();
        let Some(shard) = home else {
            return Ok(()); // our own SUNSUBSCRIBE
        };
        tracing::info!(
            channel = ch,
            "cluster: slot moved; subscribing at its new owner"
        );
        c.sub.ssubscribe(ch).await?;
        let room = self.room_of(ch).and_then(|r| self.rooms.get_key_value(r));
        let room = room.map(|(r, _)| r.clone());
        if let Some(s) = self.sharded.as_mut() {
            s.resubscribe = true;
            if let Some(room) = room {
                let w = s.watch.entry(room).or_insert_with(Watch::new);
                (w.verdicts, w.ticks) = (WATCH_VERDICTS, 0);
            }
        }
        let generation = self.generation;
        self.lagging[shard] = !self.answer(shard, Event::Resync { generation }).await;
        Ok(())
    }

    /// Publish a batch: per room, one `EVALSHA` after the other (in order); rooms concurrently.
    async fn publish_sharded(
        &mut self,
        c: &mut Conns,
        batch: Vec<Command>,
    ) -> redis::RedisResult<()> {
        let epoch = now_us();
        let mut groups: Vec<Group> = Vec::new();
        for p in batch {
            let Command::Publish { room, .. } = &p else {
                continue;
            };
            let room = room.clone();
            let mut cmd = redis::cmd("EVALSHA");
            let Some(a) = self.publish_cmd(&mut cmd, p, epoch) else {
                continue;
            };
            match groups.iter_mut().find(|(r, _, _)| *r == room) {
                Some((_, answers, cmds)) => {
                    answers.push(a);
                    cmds.push(cmd);
                }
                None => groups.push((room, vec![a], vec![cmd])),
            }
        }
        let runs: Vec<_> = groups
            .into_iter()
            .map(|(_, answers, cmds)| {
                let (mut con, script) = (c.cmd.clone(), self.publish.clone());
                let run = tokio::spawn(async move {
                    let mut seqs = Vec::with_capacity(cmds.len());
                    for cmd in cmds {
                        seqs.push(evalsha(&mut con, &script, &cmd).await?);
                    }
                    Ok(seqs)
                });
                (answers, run)
            })
            .collect();
        let mut first_err = None;
        for (answers, run) in runs {
            let r = run
                .await
                .unwrap_or_else(|e| Err(redis::RedisError::from(std::io::Error::other(e))));
            if let Err(e) = self.publish_answers(answers, r).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_is_behind_when_redis_numbered_more_than_was_seen() {
        let (e, other) = (1_000, 2_000);
        // Nothing published, or everything heard (or more): fine.
        assert!(!behind((0, 0), None, None));
        assert!(!behind((e, 5), Some((e, 3)), Some((e, 5))));
        assert!(!behind((e, 5), Some((e, 3)), Some((e, 9))));
        // Redis numbered 5, the node saw 4 since (or nothing at all).
        assert!(behind((e, 5), Some((e, 3)), Some((e, 4))));
        assert!(behind((e, 5), None, None));
        // Redis in another epoch (older or newer: epochs come from several clocks) with
        // messages, the node still at its own.
        assert!(behind((other, 1), Some((e, 40)), Some((e, 40))));
        assert!(behind((e, 1), Some((other, 40)), Some((other, 40))));
        assert!(!behind((other, 0), Some((e, 40)), Some((e, 40))));
        // The node followed a renumbering since the asking: not judged.
        assert!(!behind((e, 40), Some((e, 40)), Some((other, 1))));
        // Its first message heard since the asking counts.
        assert!(!behind((e, 5), None, Some((e, 5))));
    }

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn a_rooms_keys_and_channel_share_one_slot() {
        // Room names are [A-Za-z0-9_.:-] (no braces); with braces they still share a slot as
        // long as the name does not start with `}` (`{}...}`: an empty tag hashes whole keys).
        for room in ["chat", "a.b:c-d_e", "x", "a{b", "a}b", "{", "a}}"] {
            let t = hash_tag(room);
            let names = [
                format!("shardcast:seq:{t}"),
                format!("shardcast:epoch:{t}"),
                format!("shardcast:hist:{t}"),
                format!("shardcast:presence:{t}"),
                format!("shardcast:room:{t}"),
            ];
            let slot = key_slot(names[0].as_bytes());
            for n in &names {
                assert_eq!(key_slot(n.as_bytes()), slot, "{room}: {n}");
            }
        }
        let live = hash_tag("shardcast");
        assert_eq!(
            key_slot(format!("{live}:alive:gw-1").as_bytes()),
            key_slot(format!("{live}:nodes").as_bytes())
        );
    }

    fn slots_answer() -> Value {
        let range = |lo: i64, hi: i64, port: i64| {
            Value::Array(vec![
                Value::Int(lo),
                Value::Int(hi),
                Value::Array(vec![
                    Value::BulkString(b"127.0.0.1".to_vec()),
                    Value::Int(port),
                    Value::BulkString(b"id".to_vec()),
                ]),
            ])
        };
        Value::Array(vec![
            range(0, 5460, 7000),
            range(5461, 10922, 7001),
            range(10923, 16383, 7002),
            range(100, 100, 7002),
        ])
    }

    #[test]
    fn one_canary_tag_per_master_in_its_slots() {
        let m = masters(&slots_answer());
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].1, vec![(10923, 16383), (100, 100)]);
        let tags = canary_tags(&m);
        assert_eq!(tags.len(), 3);
        for ((_, ranges), t) in m.iter().zip(&tags) {
            let s = key_slot(t.as_bytes());
            assert!(ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&s)), "{t}");
        }
        // A master owning one slot gets a tag too.
        let one = vec![("h:1".to_string(), vec![(4242, 4242)])];
        let t = canary_tags(&one);
        assert_eq!(key_slot(t[0].as_bytes()), 4242);
        assert!(masters(&Value::Nil).is_empty());
    }

    #[test]
    fn the_cluster_script_spublishes() {
        let s = publish_lua("redis.call('PUBLISH', ARGV[4], msg)");
        assert_eq!(s, "redis.call('SPUBLISH', ARGV[4], msg)");
    }
}
