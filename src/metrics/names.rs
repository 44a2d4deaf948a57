//! The names counters are shown and exported under, one constant per counter, so the status
//! page, the tests and (next) the Prometheus exposition cannot drift apart. Prometheus names
//! carry the `shardcast_` prefix and their unit; labels (`shard`, `reason`) are added there.

/// Prefix of every exported metric.
pub const PREFIX: &str = "shardcast_";

/// Open WebSocket connections (gauge).
pub const CONNECTIONS: &str = "connections";
/// WebSocket upgrades completed.
pub const UPGRADES: &str = "upgrades_total";
/// HTTP requests refused by the gate (400, 404, 405, 426, 431, 503).
pub const HTTP_REJECTED: &str = "http_rejected_total";
/// Data messages received from clients.
pub const MESSAGES_IN: &str = "messages_in_total";
/// Frames handed to clients by broadcasts.
pub const DELIVERIES: &str = "deliveries_total";
/// Send ops (send/writev) made.
pub const WRITE_CALLS: &str = "send_ops_total";
/// Broadcast frames dropped for slow consumers.
pub const DROPPED_FRAMES: &str = "dropped_frames_total";
/// Replies dropped for clients over their high-water mark.
pub const DROPPED_REPLIES: &str = "dropped_replies_total";
/// Connections closed with 1008 for exceeding `max_buffered_bytes`.
pub const SLOW_CONSUMER_CLOSES: &str = "slow_consumer_closes_total";
/// Connections dropped for heartbeat silence.
pub const HEARTBEAT_TIMEOUTS: &str = "heartbeat_timeouts_total";
/// Connections dropped for not finishing the HTTP handshake in time.
pub const HANDSHAKE_TIMEOUTS: &str = "handshake_timeouts_total";
/// Connections closed for a protocol violation.
pub const PROTOCOL_ERRORS: &str = "protocol_errors_total";
/// Rooms with members (gauge, per shard).
pub const ROOMS: &str = "rooms";
/// Broadcasts compressed (shared permessage-deflate: once per broadcast).
pub const COMPRESSIONS: &str = "compressions_total";
/// Compressed client messages inflated.
pub const INFLATIONS: &str = "inflations_total";
/// Envelope frames serialized for room messages and events (once per message per format).
pub const ENVELOPE_ENCODINGS: &str = "envelope_encodings_total";
/// Joins refused because the room was at its class's `max_subscribers`.
pub const ROOM_FULL: &str = "room_full_total";
/// Upgrades refused by admission control (label `reason`).
pub const ADMISSION_REFUSALS: &str = "admission_refusals_total";
/// Messages refused by `[limits] messages_per_second`.
pub const RATE_LIMITED: &str = "rate_limited_total";
/// Publishes refused by permissions.
pub const REFUSED_PUBLISHES: &str = "refused_publishes_total";
/// Requests refused as `forbidden`.
pub const FORBIDDEN: &str = "forbidden_total";
/// Connections closed with 4001 at their token's expiry.
pub const TOKEN_EXPIRIES: &str = "token_expiries_total";
/// Upgrades refused for a missing or invalid token (label `reason`).
pub const AUTH_FAILURES: &str = "auth_failures_total";
/// Resident set size of the process (gauge).
pub const PROCESS_RSS_BYTES: &str = "process_resident_memory_bytes";
/// Open file descriptors of the process (gauge).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The I/O driver in use (info gauge, label `driver`).
pub const IO_DRIVER: &str = "io_driver";
/// The running build (info gauge, label `version`).
pub const BUILD_INFO: &str = "build_info";
/// Bytes received from WebSocket clients.
pub const RECEIVED_BYTES: &str = "received_bytes_total";
/// Bytes of broadcast frames handed to connections.
pub const BROADCAST_SENT_BYTES: &str = "broadcast_sent_bytes_total";
/// Messages sent to other shards.
pub const CROSS_SHARD_MESSAGES: &str = "cross_shard_messages_total";
/// Cross-shard messages that found the peer's inbox full (ordered overflow).
pub const CROSS_SHARD_OVERFLOW: &str = "cross_shard_overflow_total";
/// Resumes (`subscribe` with `since`/`epoch`), label `recovered`.
pub const RESUMES: &str = "resumes_total";
/// Close frames the server started, label `code`.
pub const CLOSES_SENT: &str = "closes_sent_total";
/// Per-connection queued bytes, sampled by the sweep (histogram).
pub const QUEUED_BYTES: &str = "connection_queued_bytes";
/// Slow-consumer policies acting, label `policy`: connections closed (`close`) or frames
/// dropped (`drop`, `drop_oldest`, `conflate`).
pub const SLOW_CONSUMER_ACTIONS: &str = "slow_consumer_actions_total";
/// Payload bytes given to permessage-deflate (the ratio is `deflate_output / deflate_input`).
pub const DEFLATE_INPUT_BYTES: &str = "deflate_input_bytes_total";
/// Bytes permessage-deflate made of them.
pub const DEFLATE_OUTPUT_BYTES: &str = "deflate_output_bytes_total";
/// Frames compressed once per recipient (dedicated contexts: the CPU-costly kind).
pub const DEDICATED_COMPRESSIONS: &str = "dedicated_compressions_total";
/// Messages kept for resume and history (gauge, per home shard).
pub const HISTORY_MESSAGES: &str = "history_messages";
/// Payload bytes of the kept messages (gauge, per home shard).
pub const HISTORY_BYTES: &str = "history_bytes";
/// Kept messages dropped by a room's size, byte cap or ttl.
pub const HISTORY_EVICTIONS: &str = "history_evictions_total";
/// Presence entries (envelope subscriptions) of the rooms (gauge, per home shard).
pub const PRESENCE_MEMBERS: &str = "presence_members";
/// Broadcasts made into Server-Sent Events (once per message, however many streams).
pub const SSE_ENCODINGS: &str = "sse_encodings_total";
/// Server-Sent Events streams opened.
pub const SSE_STREAMS: &str = "sse_streams_total";
/// Client operations posted to streams and carried out.
pub const SSE_POSTS: &str = "sse_posts_total";
/// Open connections by `transport` (websocket, sse) and `wire` format, sampled by the sweep.
pub const CONNECTIONS_BY_WIRE: &str = "connections_by_wire";
/// Publishes not delivered again (a session repeating a publish id within the dedup window).
pub const DUPLICATE_PUBLISHES: &str = "duplicate_publishes_total";

/// Cluster mode: 1 while the node is deaf or disconnected from Redis.
pub const CLUSTER_DEAF: &str = "cluster_deaf";
/// Cluster mode: times the deafness canary was late.
pub const CLUSTER_DEAF_EPISODES: &str = "cluster_deaf_episodes_total";
/// Cluster mode: reconnections to Redis.
pub const CLUSTER_RECONNECTS: &str = "cluster_reconnects_total";
/// Cluster mode: publishes numbered by Redis.
pub const CLUSTER_PUBLISHES: &str = "cluster_publishes_total";
/// Cluster mode: publishes refused as `unavailable`.
pub const CLUSTER_UNAVAILABLE: &str = "cluster_unavailable_total";
/// Cluster mode: room messages received from Redis.
pub const CLUSTER_MESSAGES_IN: &str = "cluster_messages_in_total";
/// Cluster mode: room messages that could not be decoded.
pub const CLUSTER_BAD_MESSAGES: &str = "cluster_bad_messages_total";
/// Cluster mode: bridge events refused by a full shard channel.
pub const CLUSTER_REFUSED: &str = "cluster_refused_total";
/// Cluster mode: catch-ups from a room's history stream.
pub const CLUSTER_CATCH_UPS: &str = "cluster_catch_ups_total";
/// Cluster mode: messages delivered marked `"gap": true`.
pub const CLUSTER_GAPS: &str = "cluster_gaps_total";
/// Redis Cluster mode: rooms found behind Redis's seq after a slot move (caught up).
pub const CLUSTER_ROOMS_BEHIND: &str = "cluster_rooms_behind_total";
