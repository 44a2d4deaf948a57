//! The configuration file's schema, as the user writes it: every key optional (defaults come
//! from `Config::default`), unknown keys rejected so a typo never silently falls back to a
//! default. `config.example.toml` documents each key.

use serde::Deserialize;

/// The file as written by the user. Every field is optional; defaults come from [`Config::default`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[server]`
    #[serde(default)]
    pub server: ServerSection,
    /// `[limits]`
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[heartbeat]`
    #[serde(default)]
    pub heartbeat: HeartbeatSection,
    /// `[rooms]`
    #[serde(default)]
    pub rooms: RoomsSection,
    /// `[shutdown]`
    #[serde(default)]
    pub shutdown: ShutdownSection,
    /// `[log]`
    #[serde(default)]
    pub log: LogSection,
    /// `[compression]`
    #[serde(default)]
    pub compression: CompressionSection,
    /// `[history]`
    #[serde(default)]
    pub history: HistorySection,
    /// `[envelope]`
    #[serde(default)]
    pub envelope: EnvelopeSection,
    /// `[api]`
    #[serde(default)]
    pub api: ApiSection,
    /// `[auth]`
    #[serde(default)]
    pub auth: AuthSection,
    /// `[admission]`
    #[serde(default)]
    pub admission: AdmissionSection,
    /// `[admin]`
    #[serde(default)]
    pub admin: AdminSection,
    /// `[tls]` (absent: plain `ws://` and HTTP)
    pub tls: Option<TlsSection>,
    /// `[cluster]` (absent: a single node, no Redis)
    pub cluster: Option<ClusterSection>,
}

/// `[cluster]` section: rooms shared with other nodes through Redis.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `redis://[user:password@]host:port/db` (required).
    pub redis: Option<String>,
    /// Redis Cluster seed nodes, `redis://host:port` each (exclusive with `redis`).
    pub redis_cluster: Option<Vec<String>>,
    /// This node's id in channel names and presence (default: random).
    pub node_id: Option<String>,
    /// Prefix of every Redis key and channel (default "shardcast").
    pub channel_prefix: Option<String>,
    /// How often the deafness canary is published (default "1s").
    pub canary_interval: Option<String>,
    /// How long the canary may take to come back before the node is deaf (default "3s").
    pub canary_timeout: Option<String>,
    /// TTL of this node's presence entries (default "10s").
    pub presence_ttl: Option<String>,
    /// Presence leaves kept for replay while Redis is unreachable (default 100000).
    pub presence_replay_max: Option<usize>,
    /// PEM file of the CA that signs Redis's certificate for `rediss://` (default: system roots).
    pub tls_ca: Option<String>,
    /// Replicas that must confirm each publish batch (`WAIT`; default 0: no wait).
    pub wait_replicas: Option<i64>,
    /// How long a `WAIT` may block (default "100ms"; below `canary_timeout`).
    pub wait_timeout: Option<String>,
    /// `[cluster.sentinel]`: find the Redis master through Redis Sentinel (instead of `redis`).
    pub sentinel: Option<SentinelSection>,
}

/// `[cluster.sentinel]` section: the master is asked of these sentinels on every connect.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSection {
    /// The monitored master's name (required).
    pub master: Option<String>,
    /// Sentinels as `host:port`, asked in order (required, at least one).
    pub nodes: Option<Vec<String>>,
    /// The master's password (default: none).
    pub password: Option<String>,
    /// The sentinels' own password (default: none).
    pub sentinel_password: Option<String>,
    /// Redis database number on the master (default 0).
    pub db: Option<i64>,
    /// Connect to the master with TLS (`rediss://`, checked against `cluster.tls_ca`; default false).
    pub tls: Option<bool>,
    /// Ask the sentinels over TLS (checked against `cluster.tls_ca`; default false).
    pub sentinel_tls: Option<bool>,
}

/// `[tls]` section: serve `wss://` and HTTPS on the listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<String>,
    /// PEM private key of the leaf certificate.
    pub key_file: Option<String>,
}

/// `[admin]` section: the operator's listener (metrics, health, admin page, reload).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `host:port`; `""` disables the admin listener.
    pub listen: Option<String>,
    /// Bearer key for everything but `/healthz` and `/readyz`.
    pub key: Option<String>,
    /// File holding the key (trailing newline trimmed).
    pub key_file: Option<String>,
}

/// `[admission]` section: which new connections are taken.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionSection {
    /// Open connections per client IP (IPv6: per /64).
    pub max_connections_per_ip: Option<i64>,
    /// Upgrades per second, daemon-wide.
    pub handshakes_per_second: Option<f64>,
    /// Upgrades allowed back to back above that rate.
    pub handshake_burst: Option<i64>,
    /// Upgrades per second per client IP.
    pub handshakes_per_ip_per_second: Option<f64>,
    /// Upgrades back to back per client IP.
    pub handshake_ip_burst: Option<i64>,
    /// Connections accepted and not yet upgraded, daemon-wide.
    pub max_pending_handshakes: Option<i64>,
    /// CIDRs whose forwarding headers name the client.
    pub trusted_proxies: Option<Vec<String>>,
    /// Open connections per authenticated user.
    pub max_connections_per_user: Option<i64>,
    /// `"refuse_new"` or `"close_oldest"`.
    pub on_user_limit: Option<String>,
}

/// `[auth]` section: who may connect, and with what rights.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// `"none"` (anonymous) or `"jwt"`.
    pub mode: Option<String>,
    /// HMAC secret for HS256/384/512 tokens.
    pub hs256_secret: Option<String>,
    /// File holding the HMAC secret (trailing newline trimmed).
    pub hs256_secret_file: Option<String>,
    /// PEM public keys (RSA, EC P-256/P-384, Ed25519).
    pub public_key_files: Option<Vec<String>>,
    /// A local JWKS file (keys picked by `kid`).
    pub jwks_file: Option<String>,
    /// Allowed algorithms (default: what the configured keys verify).
    pub algorithms: Option<Vec<String>>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`.
    pub leeway: Option<String>,
    /// Query parameter carrying the token.
    pub token_query: Option<String>,
    /// Cookie carrying the token.
    pub token_cookie: Option<String>,
    /// Raw clients that may subscribe but not publish: `"close"` or `"drop"`.
    pub raw_readonly: Option<String>,
}

/// `[history]` section: the per-room history ring behind `since`/resume and `history`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySection {
    /// Messages kept per room (0 disables history).
    pub size: Option<i64>,
    /// How long a message is kept.
    pub ttl: Option<String>,
    /// Most messages in one `history` answer.
    pub max_page: Option<i64>,
    /// Most payload bytes kept per room.
    pub max_room_bytes: Option<ByteSize>,
}

/// `[envelope]` section: the `shardcast.v1` protocol on `/ws`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSection {
    /// Consecutive bad frames after which the connection is closed with 1008.
    pub max_bad_frames: Option<i64>,
    /// Largest `info` (JSON bytes) a connection may carry.
    pub max_info_bytes: Option<ByteSize>,
    /// How long a room remembers a session's publish ids (duplicates dropped).
    pub publish_dedup_window: Option<String>,
    /// Publish ids a room remembers at most.
    pub publish_dedup_max: Option<i64>,
}

/// `[api]` section: the HTTP publish API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Bearer key (or `env:NAME`); the API is off when unset or empty.
    pub key: Option<String>,
    /// File holding the key (trailing newline trimmed).
    pub key_file: Option<String>,
}

/// `[compression]` section (permessage-deflate, RFC 7692).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionSection {
    /// Negotiate permessage-deflate with clients that offer it.
    pub enabled: Option<bool>,
    /// zlib level 0-9 for outbound messages.
    pub level: Option<i64>,
    /// Messages smaller than this are sent uncompressed.
    pub threshold_bytes: Option<ByteSize>,
    /// `"shared"` (compress once per broadcast) or `"dedicated"` (a context per connection).
    pub mode: Option<String>,
}

/// `[server]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Listen address, `host:port`.
    pub listen: Option<String>,
    /// `"auto"` or a positive integer.
    pub shards: Option<Shards>,
    /// Pin shard N to core N.
    pub pin_cores: Option<bool>,
    /// `"auto" | "io_uring" | "epoll"`.
    pub io_driver: Option<String>,
    /// Accept backlog.
    pub backlog: Option<u32>,
    /// Capacity of each shard's cross-shard inbox (messages).
    pub inbox_capacity: Option<usize>,
    /// Browser origins allowed to upgrade (unset: any).
    pub allowed_origins: Option<Vec<String>>,
    /// Refuse upgrades without an `Origin` header.
    pub require_origin: Option<bool>,
    /// Serve the demo pages at `/`, `/cursor`, `/chat`.
    pub demo_pages: Option<bool>,
}

/// `shards = "auto"` or `shards = N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Shards {
    /// A fixed number of shards.
    Count(i64),
    /// `"auto"`: one per core.
    Named(AutoKeyword),
}

/// The literal `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoKeyword {
    /// `"auto"`
    Auto,
}

/// A byte size: an integer, or a string such as `"64KiB"`, `"16MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    /// Plain number of bytes.
    Bytes(i64),
    /// Human-readable size.
    Text(String),
}

/// `[limits]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Maximum open WebSocket connections for the whole daemon.
    pub max_connections: Option<i64>,
    /// Maximum size of a reassembled message.
    pub max_message_bytes: Option<ByteSize>,
    /// Maximum payload size of a single frame.
    pub max_frame_bytes: Option<ByteSize>,
    /// Per-connection high-water mark on queued outbound bytes.
    pub max_buffered_bytes: Option<ByteSize>,
    /// `"close"` or `"drop"`.
    pub slow_consumer: Option<String>,
    /// Time allowed for the HTTP upgrade request.
    pub handshake_timeout: Option<String>,
    /// Maximum size of the HTTP request head.
    pub max_header_bytes: Option<ByteSize>,
    /// Time allowed for the close handshake before the socket is dropped.
    pub close_timeout: Option<String>,
    /// Maximum rooms one connection may belong to.
    pub max_rooms_per_connection: Option<i64>,
    /// Messages per second one connection may send (sustained).
    pub messages_per_second: Option<f64>,
    /// Messages one connection may send back to back.
    pub message_burst: Option<i64>,
    /// Cap on the kernel's send queue per connection.
    pub socket_unsent_bytes: Option<ByteSize>,
}

/// `[heartbeat]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatSection {
    /// Ping period.
    pub interval: Option<String>,
    /// Extra silence tolerated after `interval` before the connection is dropped.
    pub timeout: Option<String>,
}

/// `[rooms]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsSection {
    /// Whether the sender receives its own messages.
    pub echo_to_sender: Option<bool>,
    /// `[[rooms.class]]`: per-pattern room options, first match wins.
    pub class: Option<Vec<RoomClassSection>>,
}

/// One `[[rooms.class]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomClassSection {
    /// Room-name glob (`*` matches any run of characters).
    #[serde(rename = "match")]
    pub pattern: String,
    /// Subscribe/presence/history without a `rooms` claim (default true).
    pub anonymous_subscribe: Option<bool>,
    /// Publish without a `rooms` claim (default true).
    pub anonymous_publish: Option<bool>,
    /// Presence in these rooms (default true).
    pub presence: Option<bool>,
    /// Overrides `[rooms] echo_to_sender`.
    pub echo_to_sender: Option<bool>,
    /// Overrides `[history] size`.
    pub history_size: Option<i64>,
    /// Overrides `[history] ttl`.
    pub history_ttl: Option<String>,
    /// Overrides `[limits] slow_consumer`: `"close"`, `"drop"`, `"drop_oldest"`, `"conflate"`.
    pub slow_consumer: Option<String>,
    /// Members a room of the class may have, all shards and formats (unset: no cap).
    pub max_subscribers: Option<i64>,
}

/// `[shutdown]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSection {
    /// Time allowed for a graceful drain on SIGTERM.
    pub drain_timeout: Option<String>,
}

/// `[log]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// A `tracing` filter such as `"info"` or `"shardcast=debug"`; `RUST_LOG` overrides it.
    pub level: Option<String>,
    /// `"text"` or `"json"`.
    pub format: Option<String>,
    /// One line per upgrade or refusal.
    pub access_log: Option<bool>,
}
