//! Configuration: the TOML file (`FileConfig`), validated into a typed [`Config`].
//!
//! Every limit the daemon enforces is a key here with a documented default; `config.example.toml`
//! mirrors this file. Unknown keys are rejected so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Errors found while loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path that was read.
        path: String,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema (unknown key, wrong type).
    #[error("invalid config: {0}")]
    Parse(toml::de::Error),
    /// A key parsed but its value is not acceptable.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// Dotted key name, e.g. `limits.max_message_bytes`.
        key: &'static str,
        /// Why the value was refused.
        reason: String,
    },
}

impl From<toml::de::Error> for ConfigError {
    fn from(e: toml::de::Error) -> Self {
        ConfigError::Parse(e)
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

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
}

/// `[api]` section: the HTTP publish API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Bearer key; the API is off when unset or empty.
    pub key: Option<String>,
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
}

/// Which monoio driver a shard runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring when available, else epoll.
    Auto,
    /// io_uring only; start-up fails if unavailable.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl IoDriver {
    /// Config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IoDriver::Auto => "auto",
            IoDriver::IoUring => "io_uring",
            IoDriver::Epoll => "epoll",
        }
    }
}

/// What happens to a client whose queued bytes exceed `max_buffered_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Close it with 1008 and free its queue.
    Close,
    /// Discard new broadcast frames for it (counted).
    Drop,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Number of shards (threads, runtimes, listeners).
    pub shards: NonZeroUsize,
    /// Pin shard N to core N mod cores.
    pub pin_cores: bool,
    /// I/O driver.
    pub io_driver: IoDriver,
    /// Listen backlog.
    pub backlog: u32,
    /// Cross-shard inbox capacity per shard.
    pub inbox_capacity: usize,
    /// Daemon-wide connection limit (503 before upgrade when reached).
    pub max_connections: usize,
    /// Max reassembled message size (close 1009 beyond).
    pub max_message_bytes: usize,
    /// Max single frame payload (close 1009 beyond).
    pub max_frame_bytes: usize,
    /// Per-connection outbound high-water mark.
    pub max_buffered_bytes: usize,
    /// Slow consumer policy.
    pub slow_consumer: SlowConsumer,
    /// Handshake timeout.
    pub handshake_timeout: Duration,
    /// Max HTTP request head size (431 beyond).
    pub max_header_bytes: usize,
    /// Close handshake timeout.
    pub close_timeout: Duration,
    /// Max rooms per connection.
    pub max_rooms_per_connection: usize,
    /// Ping interval.
    pub heartbeat_interval: Duration,
    /// Extra silence after `heartbeat_interval` before a connection is dropped.
    pub heartbeat_timeout: Duration,
    /// Echo messages back to their sender.
    pub echo_to_sender: bool,
    /// Graceful drain timeout.
    pub drain_timeout: Duration,
    /// Log filter.
    pub log_level: String,
    /// permessage-deflate.
    pub compression: Compression,
    /// Messages kept per room for resume and `history` (0: none).
    pub history_size: usize,
    /// How long a kept message stays.
    pub history_ttl: Duration,
    /// Most messages in one `history` answer.
    pub history_max_page: usize,
    /// Most payload bytes kept in one room's history.
    pub history_max_room_bytes: usize,
    /// Consecutive bad envelope frames before close 1008.
    pub max_bad_frames: u32,
    /// Largest per-connection `info`, in bytes of JSON.
    pub max_info_bytes: usize,
    /// HTTP API bearer key (API disabled when `None`).
    pub api_key: Option<String>,
}

/// permessage-deflate settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// Negotiate permessage-deflate at all.
    pub enabled: bool,
    /// zlib level for outbound messages.
    pub level: u32,
    /// Smaller messages go uncompressed.
    pub threshold_bytes: usize,
    /// Shared (compress once per broadcast) or dedicated (context per connection).
    pub mode: crate::protocol::deflate::DeflateMode,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            enabled: true,
            level: 1,
            threshold_bytes: 128,
            mode: crate::protocol::deflate::DeflateMode::Shared,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shards: available_cores(),
            pin_cores: false,
            io_driver: IoDriver::Auto,
            backlog: 4096,
            inbox_capacity: 8192,
            max_connections: 100_000,
            max_message_bytes: 1 << 20,
            max_frame_bytes: 1 << 20,
            max_buffered_bytes: 1 << 20,
            slow_consumer: SlowConsumer::Close,
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 8 * 1024,
            close_timeout: Duration::from_secs(5),
            max_rooms_per_connection: 64,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(10),
            echo_to_sender: true,
            drain_timeout: Duration::from_secs(10),
            log_level: "info".to_string(),
            compression: Compression::default(),
            history_size: 1000,
            history_ttl: Duration::from_secs(300),
            history_max_page: 1000,
            history_max_room_bytes: 16 << 20,
            max_bad_frames: 10,
            max_info_bytes: 1024,
            api_key: None,
        }
    }
}

fn available_cores() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

fn duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("`{text}` is not a duration like \"30s\" or \"250ms\": {e}"),
        )
    })?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn byte_size(key: &'static str, value: &ByteSize) -> Result<usize, ConfigError> {
    let n: u64 = match value {
        ByteSize::Bytes(n) => {
            u64::try_from(*n).map_err(|_| invalid(key, "must not be negative"))?
        }
        ByteSize::Text(s) => parse_size(s).ok_or_else(|| {
            invalid(
                key,
                format!("`{s}` is not a size like 65536, \"64KiB\" or \"16MiB\""),
            )
        })?,
    };
    if n == 0 {
        return Err(invalid(key, "must be greater than zero"));
    }
    usize::try_from(n).map_err(|_| invalid(key, "too large"))
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn positive(key: &'static str, n: i64) -> Result<usize, ConfigError> {
    if n <= 0 {
        return Err(invalid(key, format!("must be a positive integer, got {n}")));
    }
    usize::try_from(n).map_err(|_| invalid(key, "too large"))
}

impl FileConfig {
    /// Parse TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Validate into a typed [`Config`].
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let s = self.server;
        if let Some(listen) = s.listen {
            c.listen = parse_listen(&listen)?;
        }
        if let Some(shards) = s.shards {
            c.shards = match shards {
                Shards::Named(AutoKeyword::Auto) => available_cores(),
                Shards::Count(n) => NonZeroUsize::new(positive("server.shards", n)?)
                    .ok_or_else(|| invalid("server.shards", "must be positive"))?,
            };
            if c.shards.get() > 1024 {
                return Err(invalid("server.shards", "at most 1024 shards"));
            }
        }
        if let Some(p) = s.pin_cores {
            c.pin_cores = p;
        }
        if let Some(d) = s.io_driver {
            c.io_driver = match d.as_str() {
                "auto" => IoDriver::Auto,
                "io_uring" => IoDriver::IoUring,
                "epoll" => IoDriver::Epoll,
                other => {
                    return Err(invalid(
                        "server.io_driver",
                        format!("`{other}` is not one of \"auto\", \"io_uring\", \"epoll\""),
                    ))
                }
            };
        }
        if let Some(b) = s.backlog {
            if b == 0 {
                return Err(invalid("server.backlog", "must be greater than zero"));
            }
            c.backlog = b;
        }
        if let Some(n) = s.inbox_capacity {
            if n == 0 {
                return Err(invalid(
                    "server.inbox_capacity",
                    "must be greater than zero",
                ));
            }
            c.inbox_capacity = n;
        }

        let l = self.limits;
        if let Some(n) = l.max_connections {
            c.max_connections = positive("limits.max_connections", n)?;
        }
        if let Some(v) = &l.max_message_bytes {
            c.max_message_bytes = byte_size("limits.max_message_bytes", v)?;
        }
        if let Some(v) = &l.max_frame_bytes {
            c.max_frame_bytes = byte_size("limits.max_frame_bytes", v)?;
        }
        if let Some(v) = &l.max_buffered_bytes {
            c.max_buffered_bytes = byte_size("limits.max_buffered_bytes", v)?;
        }
        if let Some(p) = l.slow_consumer {
            c.slow_consumer = match p.as_str() {
                "close" => SlowConsumer::Close,
                "drop" => SlowConsumer::Drop,
                other => {
                    return Err(invalid(
                        "limits.slow_consumer",
                        format!("`{other}` is not one of \"close\", \"drop\""),
                    ))
                }
            };
        }
        if let Some(t) = l.handshake_timeout {
            c.handshake_timeout = duration("limits.handshake_timeout", &t)?;
        }
        if let Some(v) = &l.max_header_bytes {
            c.max_header_bytes = byte_size("limits.max_header_bytes", v)?;
            if c.max_header_bytes < 256 {
                return Err(invalid("limits.max_header_bytes", "must be at least 256"));
            }
        }
        if let Some(t) = l.close_timeout {
            c.close_timeout = duration("limits.close_timeout", &t)?;
        }
        if let Some(n) = l.max_rooms_per_connection {
            c.max_rooms_per_connection = positive("limits.max_rooms_per_connection", n)?;
        }
        if c.max_frame_bytes > c.max_message_bytes {
            // A frame can never carry more than a message; clamp silently would hide a mistake.
            return Err(invalid(
                "limits.max_frame_bytes",
                format!(
                    "{} is larger than limits.max_message_bytes ({})",
                    c.max_frame_bytes, c.max_message_bytes
                ),
            ));
        }

        if let Some(t) = self.heartbeat.interval {
            c.heartbeat_interval = duration("heartbeat.interval", &t)?;
        }
        if let Some(t) = self.heartbeat.timeout {
            c.heartbeat_timeout = duration("heartbeat.timeout", &t)?;
        }
        if let Some(e) = self.rooms.echo_to_sender {
            c.echo_to_sender = e;
        }
        if let Some(t) = self.shutdown.drain_timeout {
            c.drain_timeout = duration("shutdown.drain_timeout", &t)?;
        }
        let z = self.compression;
        if let Some(e) = z.enabled {
            c.compression.enabled = e;
        }
        if let Some(l) = z.level {
            if !(0..=9).contains(&l) {
                return Err(invalid(
                    "compression.level",
                    format!("{l} is not a zlib level 0-9"),
                ));
            }
            c.compression.level = l as u32;
        }
        if let Some(t) = &z.threshold_bytes {
            c.compression.threshold_bytes = match t {
                ByteSize::Bytes(0) => 0,
                other => byte_size("compression.threshold_bytes", other)?,
            };
        }
        if let Some(m) = z.mode {
            c.compression.mode = match m.as_str() {
                "shared" => crate::protocol::deflate::DeflateMode::Shared,
                "dedicated" => crate::protocol::deflate::DeflateMode::Dedicated,
                other => {
                    return Err(invalid(
                        "compression.mode",
                        format!("`{other}` is not one of \"shared\", \"dedicated\""),
                    ))
                }
            };
        }
        if let Some(level) = self.log.level {
            if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
                return Err(invalid(
                    "log.level",
                    format!("`{level}` is not a tracing filter"),
                ));
            }
            c.log_level = level;
        }
        let h = self.history;
        if let Some(n) = h.size {
            if n < 0 {
                return Err(invalid("history.size", "must not be negative"));
            }
            c.history_size =
                usize::try_from(n).map_err(|_| invalid("history.size", "too large"))?;
        }
        if let Some(t) = h.ttl {
            c.history_ttl = duration("history.ttl", &t)?;
        }
        if let Some(n) = h.max_page {
            c.history_max_page = positive("history.max_page", n)?;
        }
        if let Some(v) = &h.max_room_bytes {
            c.history_max_room_bytes = byte_size("history.max_room_bytes", v)?;
        }
        if let Some(n) = self.envelope.max_bad_frames {
            c.max_bad_frames = u32::try_from(positive("envelope.max_bad_frames", n)?)
                .map_err(|_| invalid("envelope.max_bad_frames", "too large"))?;
        }
        if let Some(v) = &self.envelope.max_info_bytes {
            c.max_info_bytes = byte_size("envelope.max_info_bytes", v)?;
        }
        if let Some(k) = self.api.key {
            if k.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                return Err(invalid(
                    "api.key",
                    "must not contain spaces or control characters",
                ));
            }
            c.api_key = (!k.is_empty()).then_some(k);
        }
        Ok(c)
    }
}

/// Parse a listen address (`host:port`); `localhost` is accepted as 127.0.0.1.
pub fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    let t = text.trim();
    let t2 = t
        .strip_prefix("localhost:")
        .map(|p| format!("127.0.0.1:{p}"));
    t2.as_deref().unwrap_or(t).parse().map_err(|_| {
        invalid(
            "server.listen",
            format!("`{text}` is not an address like \"127.0.0.1:8080\""),
        )
    })
}

impl Config {
    /// Load and validate a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        FileConfig::parse(&text)?.validate()
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        FileConfig::parse(text)?.validate()
    }

    /// Granularity of the per-shard timer sweep.
    pub fn sweep_period(&self) -> Duration {
        let shortest = self
            .heartbeat_interval
            .min(self.heartbeat_timeout)
            .min(self.handshake_timeout)
            .min(self.close_timeout);
        (shortest / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.max_buffered_bytes, 1 << 20);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.slow_consumer, SlowConsumer::Close);
    }

    #[test]
    fn parses_every_key() {
        let c = Config::from_toml(
            r#"
            [server]
            listen = "0.0.0.0:9000"
            shards = 3
            pin_cores = true
            io_driver = "epoll"
            [limits]
            max_connections = 10
            max_message_bytes = "16MiB"
            max_frame_bytes = 65536
            max_buffered_bytes = "64KiB"
            slow_consumer = "drop"
            handshake_timeout = "250ms"
            max_header_bytes = 4096
            [heartbeat]
            interval = "1s"
            timeout = "500ms"
            [rooms]
            echo_to_sender = false
            [shutdown]
            drain_timeout = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(c.shards.get(), 3);
        assert_eq!(c.io_driver, IoDriver::Epoll);
        assert_eq!(c.max_message_bytes, 16 << 20);
        assert_eq!(c.max_buffered_bytes, 64 << 10);
        assert_eq!(c.slow_consumer, SlowConsumer::Drop);
        assert_eq!(c.handshake_timeout, Duration::from_millis(250));
        assert!(!c.echo_to_sender);
    }

    #[test]
    fn auto_shards() {
        let c = Config::from_toml("[server]\nshards = \"auto\"").unwrap();
        assert_eq!(c.shards, available_cores());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[limits]\nmax_conections = 5").unwrap_err();
        assert!(e.to_string().contains("max_conections"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[server]\nshards = 0", "server.shards"),
            ("[server]\nio_driver = \"kqueue\"", "server.io_driver"),
            ("[server]\nlisten = \"nowhere\"", "server.listen"),
            ("[limits]\nslow_consumer = \"wait\"", "limits.slow_consumer"),
            ("[heartbeat]\ninterval = \"soon\"", "heartbeat.interval"),
            (
                "[limits]\nmax_message_bytes = -1",
                "limits.max_message_bytes",
            ),
            (
                "[limits]\nmax_frame_bytes = \"2MiB\"",
                "limits.max_frame_bytes",
            ),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
