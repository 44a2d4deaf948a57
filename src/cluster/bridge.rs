//! The Redis bridge: one OS thread running a tokio current_thread runtime with the `redis`
//! crate (no maintained monoio-native client exists; docs/../STACK notes). It owns two
//! connections: a multiplexed command connection (the publish and fetch scripts, the canary)
//! and a subscriber connection (room channels and this node's canary channel). It only moves
//! bytes: what a received seq means is decided by the room's home ([`super::track`]).
//!
//! Publishes waiting in the command channel go out as one pipeline of `EVALSHA`s (one script
//! run per publish, one round trip per batch), so a node's publishes keep their order.
//! After any Redis error, or when the canary is late (deaf), both connections are dropped and
//! made again with backoff, every room is subscribed again and every shard is told to catch up
//! ([`Event::Resync`]); `/readyz` says 503 until the canary is heard on the new connection and
//! every shard has reported its catch-ups done ([`Command::Synced`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Value};

use super::canary::Canary;
use super::connect::{self, Connector, Seen};
use super::presence;
use super::replay::Leaves;
use super::rooms::Counts;
use super::{decode, Command, Event, Fetched, Incoming, Link, Unavailable};
use crate::config::Cluster;
use crate::health::Health;
use crate::metrics::ClusterStats;
use sharded::Sharded;

mod sharded;

/// Publishes sent in one pipeline at most.
const MAX_BATCH: usize = 256;
/// Stream entries read by one fetch at most.
const MAX_FETCH: usize = 10_000;

/// Numbers, keeps and publishes one message (module doc). KEYS: seq, epoch, stream and, for a
/// publish with an id to deduplicate, its dedup key; ARGV: a new epoch (µs), stream length (0:
/// no stream), the message tail, the room channel, how long the dedup key is kept (ms).
/// Returns the seq, or minus the seq the id got before (a duplicate: nothing published).
const PUBLISH_LUA: &str = r"
if KEYS[4] then
  local prev = redis.call('GET', KEYS[4])
  if prev then return -tonumber(prev) end
end
redis.call('SETNX', KEYS[2], ARGV[1])
local epoch = redis.call('GET', KEYS[2])
local seq = redis.call('INCR', KEYS[1])
local msg = seq .. ':' .. epoch .. ':' .. ARGV[3]
if tonumber(ARGV[2]) > 0 then
  local added = redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'm', msg)
  if type(added) == 'table' and added.err and string.find(added.err, 'equal or smaller') then
    -- The stream is ahead of the counter (the seq key was lost: evicted, deleted): its
    -- entries belong to an older numbering. A new epoch, with a stream of its own.
    redis.call('DEL', KEYS[3])
    redis.call('SET', KEYS[2], ARGV[1])
    epoch = ARGV[1]
    msg = seq .. ':' .. epoch .. ':' .. ARGV[3]
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'm', msg)
  elseif type(added) == 'table' and added.err then
    return redis.error_reply(added.err)
  end
end
redis.call('PUBLISH', ARGV[4], msg)
if KEYS[4] then
  redis.call('SET', KEYS[4], seq, 'PX', ARGV[5])
end
return seq
";

/// Reads a room's seq and epoch (creating the epoch) and the stream after a seq, atomically.
/// KEYS: seq, epoch, stream; ARGV: a new epoch (µs), after ('' for none), count.
const FETCH_LUA: &str = r"
redis.call('SETNX', KEYS[2], ARGV[1])
local epoch = redis.call('GET', KEYS[2])
local seq = redis.call('GET', KEYS[1])
if not seq then seq = '0' end
local entries = {}
if ARGV[2] ~= '' then
  entries = redis.call('XRANGE', KEYS[3], (tonumber(ARGV[2]) + 1) .. '-0', '+', 'COUNT', ARGV[3])
end
return {seq, epoch, entries}
";

/// What the shards get from [`start`].
pub struct Started {
    /// The shards' end of the command channel.
    pub link: Link,
    /// One event channel per shard.
    pub events: Vec<flume::Receiver<Event>>,
}

/// Start the bridge thread for `shards` shards; channels hold `capacity` messages.
pub fn start(
    cfg: Cluster,
    shards: usize,
    capacity: usize,
    health: Arc<Health>,
    stats: Arc<ClusterStats>,
) -> std::io::Result<Started> {
    let sharded = Sharded::new(&cfg.redis_cluster);
    let connector = Connector::new(&cfg)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let publish_lua = match sharded {
        Some(_) => sharded::publish_lua(PUBLISH_LUA),
        None => PUBLISH_LUA.to_string(),
    };
    let (tx, rx) = flume::bounded(capacity);
    let (outs, events): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::bounded(capacity)).unzip();
    let node: Arc<str> = Arc::from(cfg.node_id.as_str());
    let cfg_leaves = cfg.presence_replay_max;
    health.set_cluster_ready(false);
    stats.deaf.store(1, Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let b = Bridge {
        prefix: cfg.channel_prefix.clone(),
        cfg,
        connector,
        seen: Seen::new(),
        wait_short: None,
        out: outs,
        rooms: HashMap::new(),
        health,
        stats,
        publish: redis::Script::new(&publish_lua),
        fetch: redis::Script::new(FETCH_LUA),
        canary: Canary::default(),
        generation: 0,
        synced: vec![false; shards],
        heard: false,
        ready: false,
        lagging: vec![false; shards],
        gone: Arc::default(),
        leaves: Leaves::new(cfg_leaves),
        counts: Counts::default(),
        sharded,
    };
    std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || rt.block_on(b.run(rx)))?;
    Ok(Started {
        link: Link { tx, node },
        events,
    })
}

struct Bridge {
    cfg: Cluster,
    prefix: String,
    connector: Connector,
    /// Per subscribed room: the epoch and highest seq seen (the failover guard's input).
    seen: Seen,
    /// When a `WAIT` last reached fewer than `cluster.wait_replicas` replicas.
    wait_short: Option<Instant>,
    out: Vec<flume::Sender<Event>>,
    /// Subscribed rooms and their home shards.
    rooms: HashMap<Arc<str>, usize>,
    health: Arc<Health>,
    stats: Arc<ClusterStats>,
    publish: redis::Script,
    fetch: redis::Script,
    canary: Canary,
    /// Connections made so far ([`Event::Resync`] and [`Command::Synced`] carry it).
    generation: u64,
    /// Per shard: caught up since the last connect.
    synced: Vec<bool>,
    /// The canary came back on the current subscriber connection.
    heard: bool,
    /// `/readyz` was told ready for the current connection.
    ready: bool,
    /// Per shard: a room message was refused by its full channel (catch up at the next tick).
    lagging: Vec<bool>,
    /// Nodes reported gone (their liveness key expired) and since when.
    gone: Arc<std::sync::Mutex<HashMap<String, Instant>>>,
    /// Presence leaves Redis could not take, written after the next connect.
    leaves: Leaves,
    /// This node's room member counts ([`super::rooms`]).
    counts: Counts,
    /// Redis Cluster mode (`cluster.redis_cluster`): its connection state; `None`: one Redis.
    sharded: Option<Sharded>,
}

struct Conns {
    cmd: MultiplexedConnection,
    sink: PubSubSink,
    stream: PubSubStream,
}

/// Why a connection was given up.
#[derive(Debug)]
enum Lost {
    /// A command failed.
    Error(redis::RedisError),
    /// The canary did not come back in time.
    Deaf,
    /// Redis Cluster: a room stayed behind Redis after a slot move (`sharded::check_watched`).
    Behind,
    /// The subscriber connection ended.
    Closed,
    /// Every shard is gone: stop.
    Stop,
}

/// Log a room the failover guard gave a new epoch (its seq had gone backwards in Redis).
fn renumbered(room: &str) {
    tracing::warn!(
        room,
        "cluster: room's seq went backwards in redis (failover lost writes); new epoch"
    );
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

fn unavailable(e: &redis::RedisError) -> Unavailable {
    if e.is_timeout() {
        Unavailable::Timeout
    } else {
        Unavailable::Down
    }
}

impl Bridge {
    /// A room's name in its keys and channel: `{room}` (a Redis Cluster hash tag) in cluster
    /// mode, so that they all hash to one slot; as is with one Redis.
    fn tagged<'a>(&self, room: &'a str) -> std::borrow::Cow<'a, str> {
        match self.sharded {
            Some(_) => sharded::hash_tag(room).into(),
            None => room.into(),
        }
    }

    fn room_channel(&self, room: &str) -> String {
        format!("{}:room:{}", self.prefix, self.tagged(room))
    }

    /// The room named by a room channel.
    fn room_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let r = channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(":room:"))?;
        match self.sharded {
            Some(_) => r.strip_prefix('{').and_then(|r| r.strip_suffix('}')),
            None => Some(r),
        }
    }

    /// A publish id's dedup key (in the room's slot with Redis Cluster).
    fn dedup_key(&self, room: &str, key: &[u8]) -> Vec<u8> {
        let mut k = format!("{}:dedup:{}:", self.prefix, self.tagged(room)).into_bytes();
        k.extend_from_slice(key);
        k
    }

    fn node_channel(&self) -> String {
        format!("{}:node:{}", self.prefix, self.cfg.node_id)
    }

    fn keys(&self, room: &str) -> [String; 3] {
        let p = &self.prefix;
        let room = self.tagged(room);
        [
            format!("{p}:seq:{room}"),
            format!("{p}:epoch:{room}"),
            format!("{p}:hist:{room}"),
        ]
    }

    /// Hand a shard a room message without waiting: one a full channel refuses is counted and
    /// recovered by the home's catch-up when the next one shows the jump.
    fn emit(&mut self, shard: usize, ev: Event) {
        let Some(tx) = self.out.get(shard) else {
            return;
        };
        if tx.try_send(ev).is_err() {
            ClusterStats::add(&self.stats.refused, 1);
            // Even the room's last message must not be lost silently: the shard catches up
            // every room at the next canary tick.
            self.lagging[shard] = true;
        }
    }

    /// Hand a shard an answer (publish, fetch, resync): not lost to a momentarily full channel
    /// (the bridge waits up to a second; a shard never waits for the bridge).
    async fn answer(&self, shard: usize, ev: Event) -> bool {
        let Some(tx) = self.out.get(shard) else {
            return false;
        };
        let ev = match tx.try_send(ev) {
            Ok(()) => return true,
            Err(flume::TrySendError::Full(ev)) => ev,
            Err(flume::TrySendError::Disconnected(_)) => return false,
        };
        let sent = tokio::time::timeout(Duration::from_secs(1), tx.send_async(ev)).await;
        if !matches!(sent, Ok(Ok(()))) {
            ClusterStats::add(&self.stats.refused, 1);
            return false;
        }
        true
    }

    /// Turn ready when the canary was heard on this connection and every shard caught up.
    fn update_ready(&mut self) {
        let synced = self.synced.iter().all(|&s| s);
        if !self.ready && super::canary::ready(true, !self.heard, synced) {
            self.ready = true;
            self.stats.deaf.store(0, Ordering::Relaxed);
            self.health.set_cluster_ready(true);
            tracing::info!("cluster: canary heard and rooms caught up; ready");
        }
    }

    async fn run(mut self, rx: flume::Receiver<Command>) {
        // None: connect at once (after a lost connection); Some: wait after a failed connect.
        let mut backoff: Option<Duration> = None;
        loop {
            if let Some(wait) = backoff {
                // Refuse what comes meanwhile (publishes get `unavailable`), then try again.
                let until = tokio::time::Instant::now() + wait;
                while let Ok(Ok(cmd)) = tokio::time::timeout_at(until, rx.recv_async()).await {
                    self.refuse(cmd, Unavailable::Down).await;
                }
                if rx.is_disconnected() {
                    return;
                }
            }
            let conns = match self.connect_any().await {
                Ok(c) => c,
                Err(e) => {
                    let next = backoff.map_or(Duration::from_millis(100), |b| {
                        (b * 2).min(Duration::from_secs(5))
                    });
                    tracing::warn!(error = %e, retry_in = ?next, "cluster: cannot connect to redis");
                    backoff = Some(next);
                    continue;
                }
            };
            backoff = None;
            let lost = match conns {
                Any::Single(c) => self.serve(c, &rx).await,
                Any::Sharded(c) => self.serve_sharded(c, &rx).await,
            };
            self.health.set_cluster_ready(false);
            self.stats.deaf.store(1, Ordering::Relaxed);
            ClusterStats::add(&self.stats.reconnects, 1);
            match lost {
                Lost::Stop => return,
                Lost::Deaf => {
                    ClusterStats::add(&self.stats.deaf_episodes, 1);
                    tracing::warn!(
                        timeout = ?self.cfg.canary_timeout,
                        "cluster: deaf (canary not heard back); reconnecting"
                    );
                }
                Lost::Behind => tracing::warn!(
                    "cluster: a room stayed behind redis after a slot move; reconnecting (a fresh slot map)"
                ),
                Lost::Error(e) => {
                    tracing::warn!(error = %e, "cluster: redis error; reconnecting")
                }
                Lost::Closed => {
                    tracing::warn!("cluster: subscriber connection closed; reconnecting")
                }
            }
        }
    }

    /// Answer a command that cannot be carried out now (subscriptions are remembered).
    async fn refuse(&mut self, cmd: Command, why: Unavailable) {
        match cmd {
            Command::Publish { shard, token, .. } => self.refuse_publish(shard, token, why).await,
            Command::Fetch {
                room, shard, token, ..
            } => {
                let ev = Event::Fetched {
                    room,
                    token,
                    result: Err(why),
                };
                self.answer(shard, ev).await;
            }
            Command::Subscribe { room, shard } => {
                self.rooms.insert(room, shard);
            }
            Command::Unsubscribe { room } => {
                self.rooms.remove(&room);
            }
            Command::PresenceLoad { room, shard, token } => {
                let ev = Event::PresenceLoaded {
                    room,
                    token,
                    entries: Vec::new(),
                };
                self.answer(shard, ev).await;
            }
            Command::Presence { room, uid, member } => self.keep_leave(room, uid, member.is_none()),
            Command::Members { room, members } => self.counts.update(room, members),
            Command::Rooms { reply } => {
                let _ = reply.try_send(Err(why));
            }
            Command::Synced { .. } | Command::PresenceForget { .. } | Command::Guard { .. } => {}
        }
    }

    async fn connect_any(&mut self) -> redis::RedisResult<Any> {
        match self.sharded {
            Some(_) => self.connect_sharded().await.map(Any::Sharded),
            None => self.connect().await.map(Any::Single),
        }
    }

    async fn connect(&mut self) -> redis::RedisResult<Conns> {
        let t = self.cfg.canary_timeout;
        let acfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(t))
            .set_response_timeout(Some(t));
        let client = self.connector.client(t).await?;
        let mut cmd = client
            .get_multiplexed_async_connection_with_config(&acfg)
            .await?;
        let timeout =
            |_| redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        self.guard(&mut cmd).await?;
        let pubsub = tokio::time::timeout(t, client.get_async_pubsub())
            .await
            .map_err(timeout)??;
        self.publish.load_async(&mut cmd).await?;
        self.fetch.load_async(&mut cmd).await?;
        let (mut sink, stream) = pubsub.split();
        let mut channels = vec![self.node_channel()];
        channels.extend(self.rooms.keys().map(|r| self.room_channel(r)));
        for chunk in channels.chunks(512) {
            tokio::time::timeout(t, sink.subscribe(chunk))
                .await
                .map_err(timeout)??;
        }
        self.replay_leaves(&mut cmd).await?;
        self.counts.reconnected();
        self.canary.reset();
        self.connected().await;
        Ok(Conns { cmd, sink, stream })
    }

    /// A new subscriber connection: every room may have missed messages while the old one was
    /// away; tell every shard to catch up.
    async fn connected(&mut self) {
        for shard in 0..self.out.len() {
            let generation = self.generation + 1;
            // A shard that cannot be told has nothing to wait for.
            self.synced[shard] = !self.answer(shard, Event::Resync { generation }).await;
        }
        self.generation += 1;
        (self.heard, self.ready) = (false, false);
        tracing::info!(rooms = self.rooms.len(), node = %self.cfg.node_id, "cluster: connected to redis");
    }

    async fn serve(&mut self, mut c: Conns, rx: &flume::Receiver<Command>) -> Lost {
        let mut tick = tokio::time::interval(self.cfg.canary_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let node_channel = self.node_channel();
        loop {
            tokio::select! {
                cmd = rx.recv_async() => {
                    let Ok(cmd) = cmd else { return Lost::Stop };
                    if let Err(e) = self.handle(&mut c, cmd, rx).await {
                        return Lost::Error(e);
                    }
                }
                msg = c.stream.next() => {
                    let Some(msg) = msg else { return Lost::Closed };
                    let name = msg.get_channel_name();
                    if name == node_channel {
                        if let Some(n) = std::str::from_utf8(msg.get_payload_bytes()).ok().and_then(|s| s.parse().ok()) {
                            self.canary.heard(n);
                            self.heard = true;
                            self.update_ready();
                        }
                    } else {
                        self.route(name, msg.get_payload_bytes());
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if self.canary.deaf(now, self.cfg.canary_timeout) {
                        return Lost::Deaf;
                    }
                    if let Some(m) = self.connector.moved() {
                        tracing::warn!(master = %m, "cluster: sentinel names another master (failover)");
                        return Lost::Closed;
                    }
                    self.connector.poll(self.cfg.canary_timeout);
                    self.catch_up_lagging().await;
                    self.liveness(c.cmd.clone());
                    self.repeat_leaves(c.cmd.clone(), now);
                    self.write_counts(c.cmd.clone());
                    let n = self.canary.send(now);
                    let mut cmd = c.cmd.clone();
                    let ch = node_channel.clone();
                    // Not awaited here: a stalled Redis must not stall the verdict.
                    tokio::spawn(async move {
                        let _: redis::RedisResult<i64> =
                            redis::cmd("PUBLISH").arg(ch).arg(n).query_async(&mut cmd).await;
                    });
                }
            }
        }
    }

    /// Shards that had a room message refused catch up every room from the streams.
    async fn catch_up_lagging(&mut self) {
        for shard in 0..self.lagging.len() {
            if self.lagging[shard] {
                let ev = Event::Resync {
                    generation: self.generation,
                };
                self.lagging[shard] = !self.answer(shard, ev).await;
            }
        }
    }

    /// Before any publish on this connection: a room whose seq went backwards in the epoch
    /// this node saw (a failover lost writes) gets a new epoch ([`connect::GUARD_LUA`]).
    async fn guard(&mut self, cmd: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let rooms: Vec<_> = self
            .seen
            .iter()
            .filter(|(r, _)| self.rooms.contains_key(*r))
            .map(|(r, &(e, s))| {
                let [seq, epoch, _] = self.keys(r);
                (r.clone(), [seq, epoch], e, s)
            })
            .collect();
        for room in connect::guard(cmd, rooms, now_us()).await? {
            ClusterStats::add(&self.stats.gaps, 1);
            renumbered(&room);
        }
        Ok(())
    }

    /// A room channel message: to the room's home shard.
    fn route(&mut self, channel: &str, payload: &[u8]) {
        let Some(room) = self.room_of(channel) else {
            return;
        };
        let Some((room, &shard)) = self.rooms.get_key_value(room) else {
            return;
        };
        if presence::is_announce(payload) {
            match presence::decode(room.clone(), payload) {
                Some(a) => self.emit(shard, Event::Presence(a)),
                None => ClusterStats::add(&self.stats.bad_messages, 1),
            }
            return;
        }
        match decode(room.clone(), payload) {
            Ok(m) => {
                ClusterStats::add(&self.stats.messages_in, 1);
                connect::note(&mut self.seen, room, m.epoch, m.seq);
                self.emit(shard, Event::Message(m));
            }
            Err(e) => {
                ClusterStats::add(&self.stats.bad_messages, 1);
                tracing::warn!(error = %e, channel, "cluster: unreadable room message");
            }
        }
    }

    async fn handle<S: Side>(
        &mut self,
        c: &mut S,
        cmd: Command,
        rx: &flume::Receiver<Command>,
    ) -> redis::RedisResult<()> {
        match cmd {
            Command::Publish { .. } => {
                let (batch, rest) = take_batch(cmd, rx);
                c.publish(self, batch).await?;
                if let Some(other) = rest {
                    Box::pin(self.handle(c, other, rx)).await?;
                }
            }
            Command::Subscribe { room, shard } => {
                c.subscribe(self.room_channel(&room)).await?;
                self.rooms.insert(room, shard);
            }
            Command::Unsubscribe { room } => {
                self.seen.remove(&room);
                if self.rooms.remove(&room).is_some() {
                    c.unsubscribe(self.room_channel(&room)).await?;
                }
            }
            other => self.handle_common(c.cmd(), other).await?,
        }
        Ok(())
    }

    /// The commands both modes carry out alike (`con`: the command connection).
    async fn handle_common<C: ConnectionLike + Send>(
        &mut self,
        con: &mut C,
        cmd: Command,
    ) -> redis::RedisResult<()> {
        match cmd {
            Command::Synced { shard, generation } => {
                if generation == self.generation {
                    if let Some(s) = self.synced.get_mut(shard) {
                        *s = true;
                    }
                    self.update_ready();
                }
            }
            Command::Guard { room, epoch, seen } => {
                let [seq, ep, _] = self.keys(&room);
                let rooms = vec![(room.clone(), [seq, ep], epoch, seen)];
                for room in connect::guard(con, rooms, now_us()).await? {
                    renumbered(&room);
                }
            }
            Command::Presence { .. }
            | Command::PresenceLoad { .. }
            | Command::PresenceForget { .. } => self.presence_cmd(con, cmd).await?,
            Command::Members { room, members } => self.counts.update(room, members),
            Command::Rooms { reply } => {
                let r = self.all_rooms(con).await;
                let _ = reply.try_send(r.as_ref().map_err(unavailable).cloned());
                r?;
            }
            Command::Fetch {
                room,
                after,
                shard,
                token,
            } => {
                let r = self.fetch_room(con, &room, after).await;
                let result = r
                    .as_ref()
                    .map_err(unavailable)
                    .and_then(|v| parse_fetched(&room, v).ok_or(Unavailable::Protocol));
                if let (Ok(f), true) = (&result, self.rooms.contains_key(&room)) {
                    // What a catch-up accounted for (delivered, or told as a gap) counts as
                    // seen: the slot-move watch ([`sharded`]) compares it with Redis's seq.
                    let upto = match f.entries.last() {
                        Some(m) if f.entries.len() >= MAX_FETCH => m.seq,
                        _ => f.seq,
                    };
                    connect::note(&mut self.seen, &room, f.epoch, upto);
                }
                let ev = Event::Fetched {
                    room,
                    token,
                    result,
                };
                self.answer(shard, ev).await;
                r?;
            }
            // Publish, Subscribe, Unsubscribe: the mode's own handler.
            other => self.refuse(other, Unavailable::Protocol).await,
        }
        Ok(())
    }

    fn presence_key(&self, room: &str) -> String {
        format!("{}:presence:{}", self.prefix, self.tagged(room))
    }

    /// This node's presence writes and reads (module doc of [`presence`]).
    async fn presence_cmd<C: ConnectionLike + Send>(
        &mut self,
        con: &mut C,
        cmd: Command,
    ) -> redis::RedisResult<()> {
        let node = self.cfg.node_id.clone();
        match cmd {
            Command::Presence { room, uid, member } => {
                let leave = member.is_none();
                if !leave {
                    self.leaves.joined(&room, uid);
                }
                let (key, f) = (self.presence_key(&room), presence::field(&node, uid));
                let msg = presence::encode(&node, uid, member.as_deref());
                let mut pipe = redis::pipe();
                match member {
                    Some(m) => pipe.cmd("HSET").arg(key).arg(f).arg(m).ignore(),
                    None => pipe.cmd("HDEL").arg(key).arg(f).ignore(),
                };
                pipe.cmd(self.publish_verb())
                    .arg(self.room_channel(&room))
                    .arg(msg)
                    .ignore();
                if let Err(e) = pipe.query_async::<()>(con).await {
                    self.keep_leave(room, uid, leave);
                    return Err(e);
                }
            }
            Command::PresenceForget { room, node, uids } => {
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(self.presence_key(&room));
                for u in uids {
                    cmd.arg(presence::field(&node, u));
                }
                cmd.query_async::<()>(con).await?;
            }
            Command::PresenceLoad { room, shard, token } => {
                let r: redis::RedisResult<Vec<(String, Vec<u8>)>> = redis::cmd("HGETALL")
                    .arg(self.presence_key(&room))
                    .query_async(con)
                    .await;
                let entries = r
                    .as_ref()
                    .map(|v| {
                        v.iter()
                            .filter_map(|(f, m)| {
                                let (n, u) = presence::parse_field(f)?;
                                Some((n, u, bytes::Bytes::copy_from_slice(m)))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let ev = Event::PresenceLoaded {
                    room,
                    token,
                    entries,
                };
                self.answer(shard, ev).await;
                r?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A presence write was refused: a leave is kept for [`Bridge::replay_leaves`].
    fn keep_leave(&mut self, room: Arc<str>, uid: u64, leave: bool) {
        if !self.leaves.refused(room, uid, leave) {
            ClusterStats::add(&self.stats.refused, 1);
        }
    }

    /// Write the leaves Redis could not take before (HDEL + the announcement), one pipeline
    /// per leave (its keys and channel share the room's slot with Redis Cluster).
    async fn replay_leaves<C: ConnectionLike + Send>(
        &mut self,
        cmd: &mut C,
    ) -> redis::RedisResult<()> {
        if self.leaves.is_empty() {
            return Ok(());
        }
        let todo = self.leaves.pending();
        for (room, uid) in &todo {
            let f = presence::field(&self.cfg.node_id, *uid);
            let msg = presence::encode(&self.cfg.node_id, *uid, None);
            let mut pipe = redis::pipe();
            pipe.cmd("HDEL")
                .arg(self.presence_key(room))
                .arg(f)
                .ignore();
            pipe.cmd(self.publish_verb())
                .arg(self.room_channel(room))
                .arg(msg)
                .ignore();
            pipe.query_async::<()>(cmd).await?;
        }
        self.leaves
            .written(&todo, Instant::now() + self.cfg.presence_ttl);
        tracing::info!(
            leaves = todo.len(),
            "cluster: presence leaves refused earlier written"
        );
        Ok(())
    }

    /// Announce the leaves written after the reconnect again ([`Leaves`]; not awaited).
    fn repeat_leaves<C: ConnectionLike + Clone + Send + 'static>(
        &mut self,
        mut cmd: C,
        now: Instant,
    ) {
        let again = self.leaves.repeats(now);
        if again.is_empty() {
            return;
        }
        let verb = self.publish_verb();
        let msgs: Vec<(String, Vec<u8>)> = again
            .iter()
            .map(|(room, uid)| {
                let msg = presence::encode(&self.cfg.node_id, *uid, None);
                (self.room_channel(room), msg)
            })
            .collect();
        tokio::spawn(async move {
            for (channel, msg) in msgs {
                let _: redis::RedisResult<i64> = redis::cmd(verb)
                    .arg(channel)
                    .arg(msg)
                    .query_async(&mut cmd)
                    .await;
            }
        });
    }

    fn members_key(&self, node: &str) -> String {
        format!("{}:members:{}", self.node_keys_prefix(), node)
    }

    /// Write what changed in this node's room counts (not awaited; a failed write is written
    /// again in full after the reconnect it leads to).
    fn write_counts<C: ConnectionLike + Clone + Send + 'static>(&mut self, mut cmd: C) {
        let key = self.members_key(&self.cfg.node_id);
        let ttl = self.cfg.presence_ttl.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        if let Some(w) = self.counts.take() {
            if w.clear {
                pipe.cmd("DEL").arg(&key).ignore();
            }
            for chunk in w.set.chunks(512) {
                let mut hset = redis::cmd("HSET");
                hset.arg(&key);
                for (room, n) in chunk {
                    hset.arg(&**room).arg(*n);
                }
                pipe.add_command(hset).ignore();
            }
            for chunk in w.del.chunks(512) {
                let rooms: Vec<&str> = chunk.iter().map(|r| &**r).collect();
                pipe.cmd("HDEL").arg(&key).arg(rooms).ignore();
            }
        }
        // Refreshed every tick, like the liveness key: a dead node's counts expire with it.
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
        tokio::spawn(async move {
            let _: redis::RedisResult<()> = pipe.query_async(&mut cmd).await;
        });
    }

    /// Every node's room counts added up: this node's from memory, the others' hashes.
    async fn all_rooms<C: ConnectionLike + Send>(
        &mut self,
        con: &mut C,
    ) -> redis::RedisResult<Vec<(Arc<str>, u64)>> {
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:nodes", self.node_keys_prefix()))
            .query_async(con)
            .await?;
        let mut pipe = redis::pipe();
        let others: Vec<&String> = nodes.iter().filter(|n| **n != self.cfg.node_id).collect();
        for n in &others {
            pipe.cmd("HGETALL").arg(self.members_key(n));
        }
        let hashes: Vec<Vec<(String, String)>> = if others.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(con).await?
        };
        Ok(super::rooms::merge(self.counts.mine(), &hashes))
    }

    /// Refresh this node's liveness key and find the nodes whose key expired (not awaited: a
    /// stalled Redis must not stall the canary's verdict).
    /// The prefix of the per-node keys (liveness, the node set, room counts): in the prefix's
    /// slot with Redis Cluster (`{prefix}`), so one pipeline reads them all.
    fn node_keys_prefix(&self) -> String {
        match self.sharded {
            Some(_) => sharded::hash_tag(&self.prefix),
            None => self.prefix.clone(),
        }
    }

    fn liveness<C: ConnectionLike + Clone + Send + 'static>(&self, mut cmd: C) {
        // Cluster mode: every liveness key in the prefix's slot (`{prefix}:...`), one pipeline.
        let p = self.node_keys_prefix();
        let me = self.cfg.node_id.clone();
        let ttl = self.cfg.presence_ttl.as_millis().max(1) as u64;
        let (out, gone) = (self.out.clone(), self.gone.clone());
        tokio::spawn(async move {
            let nodes_key = format!("{p}:nodes");
            let known: redis::RedisResult<(Vec<String>,)> = redis::pipe()
                .cmd("SET")
                .arg(format!("{p}:alive:{me}"))
                .arg(1)
                .arg("PX")
                .arg(ttl)
                .ignore()
                .cmd("SADD")
                .arg(&nodes_key)
                .arg(&me)
                .ignore()
                .cmd("SMEMBERS")
                .arg(&nodes_key)
                .query_async(&mut cmd)
                .await;
            let Ok((known,)) = known else { return };
            let mut pipe = redis::pipe();
            for n in &known {
                pipe.cmd("EXISTS").arg(format!("{p}:alive:{n}"));
            }
            let Ok(alive) = pipe.query_async::<Vec<bool>>(&mut cmd).await else {
                return;
            };
            let (dead, forget) = {
                let Ok(mut g) = gone.lock() else { return };
                for (n, _) in known.iter().zip(&alive).filter(|(_, &a)| a) {
                    g.remove(n);
                }
                let reported: std::collections::HashSet<String> = g.keys().cloned().collect();
                let dead = presence::dead_nodes(&me, &known, &alive, &reported);
                let now = Instant::now();
                for n in &dead {
                    g.insert(n.clone(), now);
                }
                // Long gone: every node has noticed; forget it.
                let old: Vec<String> = g
                    .iter()
                    .filter(|(_, t)| now.duration_since(**t) > Duration::from_secs(60))
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in &old {
                    g.remove(n);
                }
                (dead, old)
            };
            for n in dead {
                tracing::info!(node = %n, "cluster: node gone (liveness key expired)");
                let node: Arc<str> = Arc::from(n.as_str());
                let told = out
                    .iter()
                    .filter(|tx| tx.try_send(Event::NodeGone { node: node.clone() }).is_ok())
                    .count();
                // A shard whose channel was full is told again at the next tick (idempotent).
                if told < out.len() {
                    if let Ok(mut g) = gone.lock() {
                        g.remove(&n);
                    }
                }
            }
            if !forget.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("SREM")
                    .arg(&nodes_key)
                    .arg(&forget)
                    .query_async(&mut cmd)
                    .await;
            }
        });
    }

    async fn fetch_room<C: ConnectionLike + Send>(
        &mut self,
        con: &mut C,
        room: &str,
        after: Option<u64>,
    ) -> redis::RedisResult<Value> {
        let [seq, epoch, hist] = self.keys(room);
        let mut inv = self.fetch.prepare_invoke();
        inv.key(seq)
            .key(epoch)
            .key(hist)
            .arg(now_us())
            .arg(after.map_or(String::new(), |a| a.to_string()))
            .arg(MAX_FETCH);
        inv.invoke_async(con).await
    }

    async fn publish_batch(
        &mut self,
        c: &mut Conns,
        batch: Vec<Command>,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        let mut answers = Vec::with_capacity(batch.len());
        let epoch = now_us();
        for cmd in batch {
            let mut evalsha = redis::cmd("EVALSHA");
            if let Some(a) = self.publish_cmd(&mut evalsha, cmd, epoch) {
                pipe.add_command(evalsha);
                answers.push(a);
            }
        }
        // `cluster.wait_replicas`: the acks wait until that many replicas have the batch (or
        // the timeout passed), shrinking what a failover can lose.
        // After a WAIT that timed out short (replicas down or lagging), batches go without one
        // for a second: a WAIT per batch would hold back the canary on this connection and
        // make the node deaf.
        let short = self
            .wait_short
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        let waits = self.cfg.wait_replicas > 0 && !short;
        if waits {
            let ms = self.cfg.wait_timeout.as_millis().max(1) as u64;
            pipe.cmd("WAIT").arg(self.cfg.wait_replicas).arg(ms);
        }
        let mut r: redis::RedisResult<Vec<i64>> = pipe.query_async(&mut c.cmd).await;
        if let Ok(seqs) = r.as_mut() {
            if waits && seqs.len() == answers.len() + 1 {
                let got = seqs.pop().unwrap_or(0);
                let enough = got >= i64::from(self.cfg.wait_replicas);
                self.wait_short = (!enough).then(Instant::now);
            }
        }
        self.publish_answers(answers, r).await
    }

    /// The `EVALSHA` arguments of one publish (`cmd` is `EVALSHA`); the shard and token to answer.
    fn publish_cmd(
        &self,
        cmd: &mut redis::Cmd,
        publish: Command,
        epoch: u64,
    ) -> Option<(usize, u64)> {
        let Command::Publish {
            room,
            tail,
            history,
            dedup,
            shard,
            token,
        } = publish
        else {
            return None;
        };
        let [seq, ep, hist] = self.keys(&room);
        cmd.arg(self.publish.get_hash())
            .arg(if dedup.is_some() { 4 } else { 3 })
            .arg(seq)
            .arg(ep)
            .arg(hist);
        if let Some((key, _)) = &dedup {
            cmd.arg(self.dedup_key(&room, key));
        }
        cmd.arg(epoch)
            .arg(history)
            .arg(tail)
            .arg(self.room_channel(&room))
            .arg(dedup.map_or(0, |(_, w)| w.as_millis().max(1) as u64));
        Some((shard, token))
    }

    /// Answer the publishes `answers` with the seqs Redis gave them (`r`, in order).
    async fn publish_answers(
        &mut self,
        answers: Vec<(usize, u64)>,
        r: redis::RedisResult<Vec<i64>>,
    ) -> redis::RedisResult<()> {
        match r {
            Ok(seqs) if seqs.len() == answers.len() => {
                ClusterStats::add(&self.stats.publishes, seqs.len() as u64);
                for ((shard, token), seq) in answers.into_iter().zip(seqs) {
                    let ev = Event::Published {
                        token,
                        result: Ok((seq.unsigned_abs(), seq < 0)),
                    };
                    self.answer(shard, ev).await;
                }
                Ok(())
            }
            Ok(_) => {
                for (shard, token) in answers {
                    self.refuse_publish(shard, token, Unavailable::Protocol)
                        .await;
                }
                Ok(())
            }
            Err(e) => {
                for (shard, token) in answers {
                    self.refuse_publish(shard, token, unavailable(&e)).await;
                }
                Err(e)
            }
        }
    }

    async fn refuse_publish(&mut self, shard: usize, token: u64, why: Unavailable) {
        ClusterStats::add(&self.stats.unavailable, 1);
        let ev = Event::Published {
            token,
            result: Err(why),
        };
        self.answer(shard, ev).await;
    }
}

/// `cmd`, a publish, and the publishes waiting behind it (at most [`MAX_BATCH`]); the first
/// other command found, if any.
fn take_batch(cmd: Command, rx: &flume::Receiver<Command>) -> (Vec<Command>, Option<Command>) {
    let mut batch = vec![cmd];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p @ Command::Publish { .. }) => batch.push(p),
            Ok(other) => return (batch, Some(other)),
            Err(_) => break,
        }
    }
    (batch, None)
}

/// What the connections of the two modes do differently for [`Bridge::handle`].
trait Side {
    /// The command connection.
    type Cmd: ConnectionLike + Send;
    fn cmd(&mut self) -> &mut Self::Cmd;
    /// Run a batch of publishes, answer them.
    async fn publish(&mut self, b: &mut Bridge, batch: Vec<Command>) -> redis::RedisResult<()>;
    async fn subscribe(&mut self, channel: String) -> redis::RedisResult<()>;
    async fn unsubscribe(&mut self, channel: String) -> redis::RedisResult<()>;
}

impl Side for Conns {
    type Cmd = MultiplexedConnection;
    fn cmd(&mut self) -> &mut MultiplexedConnection {
        &mut self.cmd
    }
    async fn publish(&mut self, b: &mut Bridge, batch: Vec<Command>) -> redis::RedisResult<()> {
        b.publish_batch(self, batch).await
    }
    async fn subscribe(&mut self, channel: String) -> redis::RedisResult<()> {
        self.sink.subscribe(channel).await
    }
    async fn unsubscribe(&mut self, channel: String) -> redis::RedisResult<()> {
        self.sink.unsubscribe(channel).await
    }
}

/// The connections of either mode.
enum Any {
    Single(Conns),
    Sharded(sharded::Conns),
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// The fetch script's answer: `{seq, epoch, {{id, {"m", msg}}, ...}}`.
fn parse_fetched(room: &Arc<str>, v: &Value) -> Option<Fetched> {
    let Value::Array(parts) = v else { return None };
    let [seq, epoch, entries] = parts.as_slice() else {
        return None;
    };
    let Value::Array(entries) = entries else {
        return None;
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(e) = e else { return None };
        let Some(Value::Array(fields)) = e.get(1) else {
            return None;
        };
        let Some(Value::BulkString(msg)) = fields.get(1) else {
            return None;
        };
        let m: Incoming = decode(room.clone(), msg).ok()?;
        out.push(m);
    }
    Some(Fetched {
        seq: as_u64(seq)?,
        epoch: as_u64(epoch)?,
        entries: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_answers_parse() {
        let room: Arc<str> = Arc::from("r");
        let mut msg = b"5:1700000000000000:".to_vec();
        msg.extend_from_slice(&super::super::encode_tail("n1", None, b"\xf6"));
        let entry = Value::Array(vec![
            Value::BulkString(b"5-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"m".to_vec()),
                Value::BulkString(msg),
            ]),
        ]);
        let v = Value::Array(vec![
            Value::BulkString(b"9".to_vec()),
            Value::BulkString(b"1700000000000000".to_vec()),
            Value::Array(vec![entry]),
        ]);
        let f = parse_fetched(&room, &v).unwrap();
        assert_eq!((f.seq, f.epoch), (9, 1_700_000_000_000_000));
        assert_eq!(f.entries.len(), 1);
        assert_eq!(f.entries[0].seq, 5);
        assert_eq!(&*f.entries[0].node, "n1");
        assert!(parse_fetched(&room, &Value::Nil).is_none());
        let short = Value::Array(vec![Value::Int(1)]);
        assert!(parse_fetched(&room, &short).is_none());
    }
}
