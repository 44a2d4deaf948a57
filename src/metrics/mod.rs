//! Counters. Each shard writes only its own `ShardStats` (relaxed atomics, no contention); readers
//! (status page, tests, later Prometheus) sum them. Their exported names are in [`names`].

pub mod export;
pub mod names;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters of one shard. Cache-line aligned so shards never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardStats {
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    /// WebSocket upgrades completed.
    pub upgrades: AtomicU64,
    /// HTTP requests refused (400, 404, 431, 503...).
    pub http_rejected: AtomicU64,
    /// Data messages received from clients.
    pub messages_in: AtomicU64,
    /// Frames queued to clients by broadcasts.
    pub deliveries: AtomicU64,
    /// Broadcast frames dropped for slow consumers (`slow_consumer = "drop"`).
    pub dropped_frames: AtomicU64,
    /// Replies (pongs, acks, errors, presence, history, subscribe answers) dropped because the
    /// client was over its high-water mark (`slow_consumer = "drop"`; pongs under any policy).
    pub dropped_replies: AtomicU64,
    /// Connections closed with 1008 for exceeding `max_buffered_bytes`.
    pub slow_consumer_closes: AtomicU64,
    /// Connections dropped for heartbeat silence.
    pub heartbeat_timeouts: AtomicU64,
    /// Publishes refused by permissions (raw read-only clients, envelope `forbidden`).
    pub refused_publishes: AtomicU64,
    /// Requests refused as `forbidden` (subscribe, presence, history, publish).
    pub forbidden: AtomicU64,
    /// Connections closed with 4001 at their token's expiry.
    pub token_expiries: AtomicU64,
    /// Joins refused because the room was at its class's `max_subscribers`.
    pub room_full: AtomicU64,
    /// Bytes received from WebSocket clients (frames as sent, compressed or not).
    pub bytes_in: AtomicU64,
    /// Bytes of broadcast frames handed to connections (per recipient, its wire format).
    pub broadcast_bytes_out: AtomicU64,
    /// Subscribes with `since`/`epoch` answered `recovered: true`.
    pub resumes_recovered: AtomicU64,
    /// Subscribes with `since`/`epoch` answered `recovered: false`.
    pub resumes_lost: AtomicU64,
    /// Messages sent to other shards.
    pub cross_shard_messages: AtomicU64,
    /// Of those, the ones that found the peer's inbox full and waited in order (overflow).
    pub cross_shard_overflow: AtomicU64,
    /// Close frames the server started, by code (index: [`CLOSE_CODES`]; last: any other).
    pub closes_sent: [AtomicU64; CLOSE_CODES.len() + 1],
    /// Connections by queued bytes at the last sweep (index: [`QUEUE_BUCKETS`]; last: above).
    pub queue_depth: [AtomicU64; QUEUE_BUCKETS.len() + 1],
    /// Sum of queued bytes at the last sweep.
    pub queued_bytes: AtomicU64,
    /// Upgrades refused for a missing or invalid token.
    pub auth_failures: AtomicU64,
    /// The same, per reason (index: [`AUTH_REASONS`]).
    pub auth_failures_by_reason: [AtomicU64; AUTH_REASONS.len()],
    /// Messages refused by `[limits] messages_per_second`.
    pub rate_limited: AtomicU64,
    /// Upgrades refused by admission control.
    pub admission_refusals: AtomicU64,
    /// The same, per reason (index: [`crate::admission::REFUSAL_REASONS`]).
    pub admission_refusals_by_reason: [AtomicU64; 5],
    /// Connections dropped for not finishing the HTTP handshake in time.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: AtomicU64,
    /// `writev` calls made.
    pub write_calls: AtomicU64,
    /// Rooms with members on this shard.
    pub rooms: AtomicU64,
    /// Broadcasts compressed (permessage-deflate, shared mode: once per broadcast).
    pub compressions: AtomicU64,
    /// Compressed client messages inflated.
    pub inflations: AtomicU64,
    /// Envelope frames (JSON or CBOR) serialized for room messages and presence events: once
    /// per message per format, however many subscribers.
    pub envelope_encodings: AtomicU64,
    /// Slow-consumer policies acting (index: [`SLOW_CONSUMER_POLICIES`]): a connection closed
    /// (`close`) or a frame dropped (`drop`, `drop_oldest`, `conflate`).
    pub slow_consumer_actions: [AtomicU64; SLOW_CONSUMER_POLICIES.len()],
    /// Payload bytes given to the compressor (shared and per-connection permessage-deflate).
    pub deflate_in_bytes: AtomicU64,
    /// Bytes the compressor made of them.
    pub deflate_out_bytes: AtomicU64,
    /// Frames compressed per connection (dedicated contexts: the CPU-costly kind, once per
    /// recipient).
    pub dedicated_compressions: AtomicU64,
    /// Messages kept for resume and history in the rooms this shard is home for (gauge, set
    /// by the sweep once a second).
    pub history_messages: AtomicU64,
    /// Payload bytes of those messages (gauge, set by the sweep).
    pub history_bytes: AtomicU64,
    /// Kept messages dropped before their time: over a room's `size` or `max_room_bytes`, or
    /// expired by `ttl`.
    pub history_evictions: AtomicU64,
    /// Presence entries (envelope subscriptions) in the rooms this shard is home for (gauge,
    /// set by the sweep).
    pub presence_members: AtomicU64,
    /// Broadcasts made into Server-Sent Events (once per message, however many SSE streams).
    pub sse_encodings: AtomicU64,
    /// SSE streams opened (`GET /sse`).
    pub sse_streams: AtomicU64,
    /// Client operations posted to streams (`POST /sse/{stream}`) and carried out.
    pub sse_posts: AtomicU64,
    /// Publishes not delivered again: a session's repeat of a publish id (dedup).
    pub duplicate_publishes: AtomicU64,
    /// Open connections by wire format at the last sweep (index: `wire::Wire` as usize, labels
    /// [`WIRE_LABELS`]).
    pub connections_by_wire: [AtomicU64; WIRE_LABELS.len()],
}

/// `(transport, wire)` labels of [`ShardStats::connections_by_wire`], in `wire::Wire` order.
pub const WIRE_LABELS: [(&str, &str); 7] = [
    ("websocket", "raw"),
    ("websocket", "raw_deflate"),
    ("websocket", "json"),
    ("websocket", "json_deflate"),
    ("websocket", "cbor"),
    ("websocket", "cbor_deflate"),
    ("sse", "json"),
];

/// The labels of [`ShardStats::slow_consumer_actions`], in index order.
pub const SLOW_CONSUMER_POLICIES: [&str; 4] = ["close", "drop", "drop_oldest", "conflate"];

/// The close codes counted one by one in [`ShardStats::closes_sent`].
pub const CLOSE_CODES: [u16; 11] = [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013, 4001,
];

/// Upper bounds (bytes) of the queue-depth histogram buckets.
pub const QUEUE_BUCKETS: [u64; 7] = [0, 1024, 16 * 1024, 64 * 1024, 256 * 1024, 1 << 20, 4 << 20];

/// The labels of [`ShardStats::auth_failures_by_reason`], in index order.
pub const AUTH_REASONS: [&str; 11] = [
    "token_missing",
    "token_malformed",
    "token_expired",
    "token_not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "unknown_kid",
    "algorithm_not_allowed",
    "bad_signature",
    "missing_claim",
    "info_too_large",
];

impl ShardStats {
    /// Count one refused token.
    pub fn count_auth_failure(&self, label: &str) {
        Self::add(&self.auth_failures, 1);
        if let Some(i) = AUTH_REASONS.iter().position(|r| *r == label) {
            Self::add(&self.auth_failures_by_reason[i], 1);
        }
    }

    /// Count a close frame the server started.
    pub fn count_close(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(CLOSE_CODES.len());
        Self::add(&self.closes_sent[i], 1);
    }

    /// Record one sweep's count of open connections per wire format (`wire::Wire` index).
    pub fn record_wires(&self, wires: impl Iterator<Item = usize>) {
        let mut counts = [0u64; WIRE_LABELS.len()];
        for w in wires {
            if let Some(c) = counts.get_mut(w) {
                *c += 1;
            }
        }
        for (slot, n) in self.connections_by_wire.iter().zip(counts) {
            slot.store(n, Ordering::Relaxed);
        }
    }

    /// Record one sweep's sample of per-connection queued bytes.
    pub fn record_queue_depths(&self, depths: impl Iterator<Item = usize>) {
        let mut counts = [0u64; QUEUE_BUCKETS.len() + 1];
        let mut sum = 0u64;
        for d in depths {
            let d = d as u64;
            sum += d;
            let i = QUEUE_BUCKETS
                .iter()
                .position(|&b| d <= b)
                .unwrap_or(QUEUE_BUCKETS.len());
            counts[i] += 1;
        }
        for (slot, n) in self.queue_depth.iter().zip(counts) {
            slot.store(n, Ordering::Relaxed);
        }
        self.queued_bytes.store(sum, Ordering::Relaxed);
    }

    /// Count one admission refusal (`reason`: index into the reasons).
    pub fn count_admission_refusal(&self, reason: usize) {
        Self::add(&self.admission_refusals, 1);
        if let Some(c) = self.admission_refusals_by_reason.get(reason) {
            Self::add(c, 1);
        }
    }

    /// Add to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Set a gauge.
    #[inline]
    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    /// Count `n` actions of the slow-consumer policy `policy`.
    pub fn count_slow_consumer(&self, policy: crate::config::SlowConsumer, n: u64) {
        use crate::config::SlowConsumer as P;
        let i = match policy {
            P::Close => 0,
            P::Drop => 1,
            P::DropOldest => 2,
            P::Conflate => 3,
        };
        Self::add(&self.slow_consumer_actions[i], n);
    }
}

/// All shards' counters.
#[derive(Debug, Clone)]
pub struct Stats {
    shards: Arc<[ShardStats]>,
    /// The Redis bridge's (cluster mode; zeros on a single node).
    pub cluster: Arc<ClusterStats>,
}

/// Counters of the Redis bridge (written by its thread, and by shards for their refusals).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// 1 while the node is deaf or disconnected from Redis (a gauge).
    pub deaf: AtomicU64,
    /// Times the canary was late.
    pub deaf_episodes: AtomicU64,
    /// Reconnections to Redis (after errors or deafness).
    pub reconnects: AtomicU64,
    /// Publishes numbered by Redis.
    pub publishes: AtomicU64,
    /// Publishes refused as `unavailable` (Redis down, timeout, bridge busy).
    pub unavailable: AtomicU64,
    /// Room messages received from Redis.
    pub messages_in: AtomicU64,
    /// Room messages that could not be decoded.
    pub bad_messages: AtomicU64,
    /// Events the bridge could not hand to a full shard channel (refused, counted).
    pub refused: AtomicU64,
    /// Catch-ups from a history stream after a seq jump or a reconnect.
    pub catch_ups: AtomicU64,
    /// Messages delivered marked `"gap": true` (what was missed could not be recovered).
    pub gaps: AtomicU64,
    /// Rooms found behind Redis's seq after a slot move (Redis Cluster; caught up).
    pub rooms_behind: AtomicU64,
}

impl ClusterStats {
    /// Relaxed add.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A summed view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// See [`ShardStats::connections`].
    pub connections: u64,
    /// See [`ShardStats::upgrades`].
    pub upgrades: u64,
    /// See [`ShardStats::http_rejected`].
    pub http_rejected: u64,
    /// See [`ShardStats::messages_in`].
    pub messages_in: u64,
    /// See [`ShardStats::deliveries`].
    pub deliveries: u64,
    /// See [`ShardStats::dropped_frames`].
    pub dropped_frames: u64,
    /// See [`ShardStats::dropped_replies`].
    pub dropped_replies: u64,
    /// See [`ShardStats::slow_consumer_closes`].
    pub slow_consumer_closes: u64,
    /// See [`ShardStats::heartbeat_timeouts`].
    pub heartbeat_timeouts: u64,
    /// See [`ShardStats::refused_publishes`].
    pub refused_publishes: u64,
    /// See [`ShardStats::forbidden`].
    pub forbidden: u64,
    /// See [`ShardStats::token_expiries`].
    pub token_expiries: u64,
    /// See [`ShardStats::room_full`].
    pub room_full: u64,
    /// See [`ShardStats::auth_failures`].
    pub auth_failures: u64,
    /// See [`ShardStats::rate_limited`].
    pub rate_limited: u64,
    /// See [`ShardStats::admission_refusals`].
    pub admission_refusals: u64,
    /// See [`ShardStats::handshake_timeouts`].
    pub handshake_timeouts: u64,
    /// See [`ShardStats::protocol_errors`].
    pub protocol_errors: u64,
    /// See [`ShardStats::write_calls`].
    pub write_calls: u64,
    /// See [`ShardStats::compressions`].
    pub compressions: u64,
    /// See [`ShardStats::inflations`].
    pub inflations: u64,
    /// See [`ShardStats::envelope_encodings`].
    pub envelope_encodings: u64,
}

impl Stats {
    /// Counters for `n` shards.
    pub fn new(n: usize) -> Stats {
        Stats {
            shards: (0..n).map(|_| ShardStats::default()).collect(),
            cluster: Arc::default(),
        }
    }

    /// One shard's counters.
    pub fn shard(&self, i: usize) -> &ShardStats {
        &self.shards[i]
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Open connections per shard.
    pub fn connections_per_shard(&self) -> Vec<u64> {
        self.shards
            .iter()
            .map(|s| s.connections.load(Ordering::Relaxed))
            .collect()
    }

    /// Sum over shards.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for sh in self.shards.iter() {
            let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
            s.connections += l(&sh.connections);
            s.upgrades += l(&sh.upgrades);
            s.http_rejected += l(&sh.http_rejected);
            s.messages_in += l(&sh.messages_in);
            s.deliveries += l(&sh.deliveries);
            s.dropped_frames += l(&sh.dropped_frames);
            s.dropped_replies += l(&sh.dropped_replies);
            s.slow_consumer_closes += l(&sh.slow_consumer_closes);
            s.heartbeat_timeouts += l(&sh.heartbeat_timeouts);
            s.refused_publishes += l(&sh.refused_publishes);
            s.forbidden += l(&sh.forbidden);
            s.token_expiries += l(&sh.token_expiries);
            s.room_full += l(&sh.room_full);
            s.auth_failures += l(&sh.auth_failures);
            s.rate_limited += l(&sh.rate_limited);
            s.admission_refusals += l(&sh.admission_refusals);
            s.handshake_timeouts += l(&sh.handshake_timeouts);
            s.protocol_errors += l(&sh.protocol_errors);
            s.write_calls += l(&sh.write_calls);
            s.compressions += l(&sh.compressions);
            s.inflations += l(&sh.inflations);
            s.envelope_encodings += l(&sh.envelope_encodings);
        }
        s
    }
}
