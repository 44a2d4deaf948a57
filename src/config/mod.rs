//! Configuration: the TOML file ([`file`]: `FileConfig`), validated ([`validate`]) into a typed
//! [`Config`]. Shards hold it as an `Rc<Config>` that is replaced whole on a `Reconfigure`
//! message (`ShardCore::reconfigure`), so a reload needs no locks on the hot path.
//!
//! Every limit the daemon enforces is a key here with a documented default; `config.example.toml`
//! mirrors this file. Unknown keys are rejected so a typo never silently falls back to a default.

pub mod file;
mod validate;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::{AdmissionLimits, Rate};
use crate::auth::origin::Origins;
use crate::auth::pattern::Pattern;
use crate::auth::{ClassRights, Verifier};

/// Errors found while loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
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

use crate::protocol::deflate::DeflateMode;
pub use file::FileConfig;

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
    /// Discard the oldest queued broadcast frames of the same room to make room for the new one
    /// (room classes only).
    DropOldest,
    /// Keep only the latest queued frame of the room: the new one replaces the room's queued
    /// frames (room classes only: cursor positions, tickers).
    Conflate,
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
    /// `[server] demo_pages`: serve the demo pages (`/`, `/cursor`, `/chat`).
    pub demo_pages: bool,
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
    /// Messages per second (and burst) one connection may send; `None`: unlimited.
    pub message_rate: Option<Rate>,
    /// Cap on the kernel's unsent data per connection (`TCP_NOTSENT_LOWAT`), so what the
    /// kernel holds for a stalled client is bounded too.
    pub socket_unsent_bytes: usize,
    /// `[admission]`.
    pub admission: AdmissionLimits,
    /// `[admin]`.
    pub admin: AdminListener,
    /// `[log] format = "json"`.
    pub log_json: bool,
    /// `[log] access_log`: one line per upgrade or refusal.
    pub access_log: bool,
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
    /// `[envelope] publish_dedup_window`: how long a room remembers the publish ids of
    /// connections with a session.
    pub publish_dedup_window: Duration,
    /// `[envelope] publish_dedup_max`: publish ids a room remembers at most (oldest forgotten).
    pub publish_dedup_max: usize,
    /// HTTP API bearer key (API disabled when `None`).
    pub api_key: Option<String>,
    /// `[auth]`.
    pub auth: Auth,
    /// `[server] allowed_origins`, `require_origin`.
    pub origins: Origins,
    /// `[[rooms.class]]`, in order (first match wins).
    pub room_classes: Arc<[RoomClass]>,
    /// `[tls]`: the listener serves `wss://` and HTTPS (`None`: plain).
    pub tls: Option<crate::tls::TlsConfig>,
    /// `[cluster]`: rooms shared with other nodes through Redis (`None`: a single node).
    pub cluster: Option<Cluster>,
}

/// `[cluster]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The Redis URL (`redis://`, with a password if any); empty with `redis_cluster`.
    pub redis: String,
    /// Redis Cluster seed nodes (`redis://host:port` each; empty: one Redis at `redis`).
    pub redis_cluster: Vec<String>,
    /// This node's id.
    pub node_id: String,
    /// Prefix of every key and channel.
    pub channel_prefix: String,
    /// Canary period.
    pub canary_interval: Duration,
    /// How long the canary may take to come back.
    pub canary_timeout: Duration,
    /// TTL of this node's presence entries.
    pub presence_ttl: Duration,
    /// Presence leaves kept while Redis cannot take them, written after the next connect.
    pub presence_replay_max: usize,
    /// CA file for `rediss://` (`None`: the system roots).
    pub tls_ca: Option<std::path::PathBuf>,
    /// Replicas `WAIT`ed for after each publish batch (0: none).
    pub wait_replicas: u32,
    /// The `WAIT` timeout.
    pub wait_timeout: Duration,
    /// Find the master through Redis Sentinel (then `redis` is empty).
    pub sentinel: Option<Sentinel>,
}

/// `[cluster.sentinel]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinel {
    /// The monitored master's name.
    pub master: String,
    /// Sentinels (`host:port`), asked in order.
    pub nodes: Vec<String>,
    /// The master's password.
    pub password: Option<String>,
    /// The sentinels' password.
    pub sentinel_password: Option<String>,
    /// Database number on the master.
    pub db: i64,
    /// TLS to the master.
    pub tls: bool,
    /// TLS to the sentinels.
    pub sentinel_tls: bool,
}

/// How connections authenticate.
#[derive(Debug, Clone)]
pub struct Auth {
    /// `None` in `mode = "none"`; the token verifier in `mode = "jwt"`.
    pub verifier: Option<Arc<Verifier>>,
    /// Query parameter carrying the token.
    pub token_query: String,
    /// Cookie carrying the token.
    pub token_cookie: Option<String>,
    /// Raw clients that may subscribe but not publish.
    pub raw_readonly: RawReadonly,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            verifier: None,
            token_query: "token".to_string(),
            token_cookie: None,
            raw_readonly: RawReadonly::Close,
        }
    }
}

/// What happens to a raw client's message in a room it may not publish to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawReadonly {
    /// Close with 1008 "publish not allowed".
    Close,
    /// Discard it (counted).
    Drop,
}

/// `[admin]`: the operator's listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminListener {
    /// Where it listens; `None`: off.
    pub listen: Option<SocketAddr>,
    /// `listen` was set in the file (a default address in use is only warned about).
    pub explicit: bool,
    /// Bearer key required for everything but `/healthz` and `/readyz`.
    pub key: Option<String>,
}

impl Default for AdminListener {
    fn default() -> Self {
        AdminListener {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            explicit: false,
            key: None,
        }
    }
}

/// One `[[rooms.class]]`.
#[derive(Debug, Clone)]
pub struct RoomClass {
    /// Which rooms.
    pub pattern: Pattern,
    /// Anonymous rights and presence.
    pub rights: ClassRights,
    /// Overrides `[rooms] echo_to_sender`.
    pub echo_to_sender: Option<bool>,
    /// Overrides `[history] size`.
    pub history_size: Option<usize>,
    /// Overrides `[history] ttl`.
    pub history_ttl: Option<Duration>,
    /// Overrides `[limits] slow_consumer` for broadcasts in these rooms.
    pub slow_consumer: Option<SlowConsumer>,
    /// Members a room may have (all shards, raw and envelope); `None`: no cap.
    pub max_subscribers: Option<u64>,
}

impl Config {
    /// The rights of `room`'s class (the defaults when no class matches).
    pub fn class_rights(&self, room: &str) -> ClassRights {
        self.class_of(room).map(|c| c.rights).unwrap_or_default()
    }

    /// Does `room` echo messages to their sender?
    pub fn echo_in(&self, room: &str) -> bool {
        self.class_of(room)
            .and_then(|c| c.echo_to_sender)
            .unwrap_or(self.echo_to_sender)
    }

    /// `room`'s history: messages kept and for how long.
    pub fn history_in(&self, room: &str) -> (usize, Duration) {
        let c = self.class_of(room);
        (
            c.and_then(|c| c.history_size).unwrap_or(self.history_size),
            c.and_then(|c| c.history_ttl).unwrap_or(self.history_ttl),
        )
    }

    /// The slow-consumer policy for broadcasts in `room`.
    pub fn slow_consumer_in(&self, room: &str) -> SlowConsumer {
        self.class_of(room)
            .and_then(|c| c.slow_consumer)
            .unwrap_or(self.slow_consumer)
    }

    /// Carry over from `running` the keys that cannot change without a restart (listen,
    /// shards, pin_cores, io_driver, backlog, inbox_capacity, admin listen) and name those the
    /// new file tried to change.
    pub fn keep_fixed(&mut self, running: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! keep {
            ($($field:ident).+, $key:literal) => {
                if self.$($field).+ != running.$($field).+ {
                    changed.push($key);
                    self.$($field).+ = running.$($field).+.clone();
                }
            };
        }
        keep!(listen, "server.listen");
        keep!(shards, "server.shards");
        keep!(pin_cores, "server.pin_cores");
        keep!(io_driver, "server.io_driver");
        keep!(backlog, "server.backlog");
        keep!(inbox_capacity, "server.inbox_capacity");
        keep!(admin.listen, "admin.listen");
        self.admin.explicit = running.admin.explicit;
        // The Redis bridge is started once; a random node id must not look like a change.
        let differs = |a: &Option<Cluster>, b: &Option<Cluster>| match (a, b) {
            (Some(a), Some(b)) => {
                a.redis != b.redis
                    || a.redis_cluster != b.redis_cluster
                    || a.channel_prefix != b.channel_prefix
                    || a.sentinel != b.sentinel
                    || a.tls_ca != b.tls_ca
            }
            (a, b) => a.is_some() != b.is_some(),
        };
        if differs(&self.cluster, &running.cluster) {
            changed.push("cluster");
        }
        self.cluster = running.cluster.clone();
        changed
    }

    /// The cap on `room`'s members, if its class sets one.
    pub fn max_subscribers_in(&self, room: &str) -> Option<u64> {
        self.class_of(room).and_then(|c| c.max_subscribers)
    }

    fn class_of(&self, room: &str) -> Option<&RoomClass> {
        if self.room_classes.is_empty() {
            return None;
        }
        self.room_classes.iter().find(|c| c.pattern.matches(room))
    }
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
    pub mode: DeflateMode,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            enabled: true,
            level: 1,
            threshold_bytes: 128,
            mode: DeflateMode::Shared,
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
            demo_pages: true,
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
            message_rate: None,
            socket_unsent_bytes: 256 * 1024,
            admission: AdmissionLimits::default(),
            admin: AdminListener::default(),
            log_json: false,
            access_log: false,
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
            publish_dedup_window: Duration::from_secs(60),
            publish_dedup_max: 1024,
            api_key: None,
            auth: Auth::default(),
            origins: Origins::default(),
            room_classes: Arc::from(Vec::new()),
            tls: None,
            cluster: None,
        }
    }
}

fn available_cores() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
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

/// Parse `--shards`: `"auto"` or 1 to 1024.
pub fn parse_shards(text: &str) -> Result<NonZeroUsize, ConfigError> {
    match text.trim() {
        "auto" => Ok(available_cores()),
        t => {
            let n: i64 = t.parse().map_err(|_| {
                invalid(
                    "server.shards",
                    format!("`{t}` is not \"auto\" or a number"),
                )
            })?;
            validate::shard_count(n)
        }
    }
}

/// Parse `--io-driver`: `"auto"`, `"io_uring"` or `"epoll"`.
pub fn parse_io_driver(text: &str) -> Result<IoDriver, ConfigError> {
    validate::parse_io_driver(text.trim())
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
    fn secrets_from_files_the_environment_and_systemd_credentials() {
        let dir = std::env::temp_dir().join(format!("sc-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("api"), "file-key\n").unwrap();
        std::env::set_var("SC_TEST_ADMIN_KEY_42", "env-key");
        std::env::set_var("CREDENTIALS_DIRECTORY", &dir);
        let c = Config::from_toml(
            "[api]\nkey_file = \"$CREDENTIALS_DIRECTORY/api\"\n[admin]\nkey = \"env:SC_TEST_ADMIN_KEY_42\"",
        )
        .unwrap();
        assert_eq!(c.api_key.as_deref(), Some("file-key"));
        assert_eq!(c.admin.key.as_deref(), Some("env-key"));
        let e = Config::from_toml("[api]\nkey = \"env:SC_TEST_UNSET_VAR_42\"").unwrap_err();
        assert!(
            e.to_string().contains("api.key") && e.to_string().contains("SC_TEST_UNSET_VAR_42"),
            "{e}"
        );
        let e = Config::from_toml("[api]\nkey = \"a\"\nkey_file = \"b\"").unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cluster_section_defaults_and_errors() {
        assert!(Config::from_toml("").unwrap().cluster.is_none());
        let c = Config::from_toml("[cluster]\nredis = \"redis://:pw@127.0.0.1:6379/0\"")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.channel_prefix, "shardcast");
        assert_eq!(c.canary_interval, Duration::from_secs(1));
        assert_eq!(c.canary_timeout, Duration::from_secs(3));
        assert_eq!(c.presence_ttl, Duration::from_secs(10));
        assert_eq!(c.presence_replay_max, 100_000);
        assert_eq!(
            (c.wait_replicas, c.wait_timeout),
            (0, Duration::from_millis(100))
        );
        assert_eq!(c.node_id.len(), 16);
        let key = |toml: &str| match Config::from_toml(toml).unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            e => panic!("{e}"),
        };
        assert_eq!(key("[cluster]\nnode_id = \"a\""), "cluster.redis");
        assert_eq!(key("[cluster]\nredis = \"http://x\""), "cluster.redis");
        assert!(Config::from_toml("[cluster]\nredis = \"rediss://x:1\"").is_ok());
        assert_eq!(
            key("[cluster]\nredis = \"rediss://x:1\"\ntls_ca = \"\""),
            "cluster.tls_ca"
        );
        assert_eq!(
            key("[cluster]\nredis = \"redis://x:1\"\ntls_ca = \"/ca.pem\""),
            "cluster.tls_ca"
        );
        let r1 = "[cluster]\nredis = \"redis://h:1\"\n";
        assert_eq!(
            key(&format!("{r1}wait_replicas = -1")),
            "cluster.wait_replicas"
        );
        assert_eq!(
            key(&format!("{r1}wait_replicas = 1\nwait_timeout = \"5s\"")),
            "cluster.wait_timeout"
        );
        let s = "[cluster.sentinel]\nmaster = \"m\"\nnodes = [\"127.0.0.1:26379\"]\n";
        let c = Config::from_toml(&format!("[cluster]\n{s}"))
            .unwrap()
            .cluster
            .unwrap();
        let sen = c.sentinel.unwrap();
        assert_eq!((sen.master.as_str(), sen.nodes.len(), sen.db), ("m", 1, 0));
        assert!(!sen.tls && !sen.sentinel_tls, "plain TCP unless asked");
        let tls = format!("[cluster]\n{s}tls = true\nsentinel_tls = true\n");
        let sen = Config::from_toml(&tls)
            .unwrap()
            .cluster
            .unwrap()
            .sentinel
            .unwrap();
        assert!(sen.tls && sen.sentinel_tls);
        assert_eq!(
            key(&format!("[cluster]\nredis = \"redis://h:1\"\n{s}")),
            "cluster.sentinel"
        );
        assert_eq!(
            key("[cluster.sentinel]\nmaster = \"m\"\nnodes = []"),
            "cluster.sentinel.nodes"
        );
        assert_eq!(
            key("[cluster.sentinel]\nnodes = [\"h:1\"]"),
            "cluster.sentinel.master"
        );
        assert_eq!(
            key("[cluster.sentinel]\nmaster = \"m\"\nnodes = [\"nohost\"]"),
            "cluster.sentinel.nodes"
        );
        let r = "[cluster]\nredis = \"redis://h:1\"\n";
        assert_eq!(key(&format!("{r}node_id = \"a b\"")), "cluster.node_id");
        assert_eq!(
            key(&format!("{r}channel_prefix = \"\"")),
            "cluster.channel_prefix"
        );
        assert_eq!(
            key(&format!("{r}canary_interval = \"0s\"")),
            "cluster.canary_interval"
        );
        assert_eq!(
            key(&format!(
                "{r}canary_interval = \"5s\"\ncanary_timeout = \"2s\""
            )),
            "cluster.canary_timeout"
        );
        assert_eq!(
            key(&format!("{r}presence_ttl = \"x\"")),
            "cluster.presence_ttl"
        );
        assert_eq!(
            key(&format!("{r}presence_ttl = \"1s\"")),
            "cluster.presence_ttl"
        );
        assert_eq!(
            key(&format!("{r}presence_replay_max = 0")),
            "cluster.presence_replay_max"
        );
        let n = Config::from_toml(&format!("{r}node_id = \"gw-1\"")).unwrap();
        assert_eq!(n.cluster.unwrap().node_id, "gw-1");
    }

    #[test]
    fn redis_cluster_seeds() {
        let c = Config::from_toml(
            "[cluster]\nredis_cluster = [\"redis://127.0.0.1:7000\", \"redis://:pw@h:7001\"]",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.redis_cluster.len(), 2);
        assert!(c.redis.is_empty());
        let key = |toml: &str| match Config::from_toml(toml).unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            e => panic!("{e}"),
        };
        let both = "[cluster]\nredis = \"redis://h:1\"\nredis_cluster = [\"redis://h:2\"]";
        assert_eq!(key(both), "cluster.redis_cluster");
        assert_eq!(
            key("[cluster]\nredis_cluster = []"),
            "cluster.redis_cluster"
        );
        let bad = "[cluster]\nredis_cluster = [\"redis://h:1/2\"]";
        assert_eq!(key(bad), "cluster.redis_cluster");
        assert_eq!(
            key("[cluster]\nredis_cluster = [\"http://h:1\"]"),
            "cluster.redis_cluster"
        );
    }

    #[test]
    fn reload_keeps_the_keys_that_need_a_restart() {
        let running =
            Config::from_toml("[server]\nlisten = \"127.0.0.1:8080\"\nshards = 2").unwrap();
        let mut new = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:9999\"\nshards = 2\n[limits]\nmax_buffered_bytes = \"64KiB\"\n[admin]\nlisten = \"\"",
        )
        .unwrap();
        assert_eq!(
            new.keep_fixed(&running),
            vec!["server.listen", "admin.listen"]
        );
        assert_eq!(new.listen, running.listen);
        assert_eq!(new.admin.listen, running.admin.listen);
        assert_eq!(new.max_buffered_bytes, 64 * 1024, "the rest takes effect");
        let mut same = running.clone();
        assert!(same.keep_fixed(&running).is_empty());
    }

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

    #[test]
    fn tls_section() {
        assert!(
            Config::from_toml("").unwrap().tls.is_none(),
            "plain by default"
        );
        for (text, key) in [
            ("[tls]", "tls.cert_file"),
            ("[tls]\ncert_file = \"c.pem\"", "tls.key_file"),
            (
                "[tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"k.pem\"",
                "tls.cert_file",
            ),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = Config::from_toml("[tls]\ncert = \"c.pem\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cert"), "unknown keys are refused: {e}");
        let (files, _) = crate::tls::tests::self_signed("config-tls");
        let text = format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}",
            files.cert_file, files.key_file
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.tls.map(|t| t.files), Some(files));
    }

    #[test]
    fn cli_values_are_checked_like_the_file() {
        assert_eq!(parse_shards("3").unwrap().get(), 3);
        assert_eq!(parse_shards("auto").unwrap(), available_cores());
        for bad in ["0", "-1", "2000", "two", ""] {
            let e = parse_shards(bad).unwrap_err().to_string();
            assert!(e.contains("server.shards"), "{bad}: {e}");
        }
        assert_eq!(parse_io_driver("epoll").unwrap(), IoDriver::Epoll);
        assert_eq!(parse_io_driver("io_uring").unwrap(), IoDriver::IoUring);
        let e = parse_io_driver("kqueue").unwrap_err().to_string();
        assert!(e.contains("server.io_driver"), "{e}");
    }

    #[test]
    fn room_classes() {
        let c = Config::from_toml(
            r#"
[history]
size = 100
[[rooms.class]]
match = "ticker:*"
history_size = 0
history_ttl = "1s"
slow_consumer = "drop"
echo_to_sender = false
anonymous_publish = false
presence = false
[[rooms.class]]
match = "*"
anonymous_subscribe = false
"#,
        )
        .unwrap();
        assert_eq!(c.history_in("ticker:btc"), (0, Duration::from_secs(1)));
        assert_eq!(c.history_in("chat:1"), (100, Duration::from_secs(300)));
        assert_eq!(c.slow_consumer_in("ticker:btc"), SlowConsumer::Drop);
        assert_eq!(c.slow_consumer_in("chat:1"), SlowConsumer::Close);
        assert!(!c.echo_in("ticker:btc") && c.echo_in("chat:1"));
        let t = c.class_rights("ticker:btc");
        assert!(t.anonymous_subscribe && !t.anonymous_publish && !t.presence);
        assert!(
            !c.class_rights("chat:1").anonymous_subscribe,
            "first match wins, then the catch-all"
        );
        let c = Config::from_toml("[[rooms.class]]\nmatch = \"x\"\nslow_consumer = \"conflate\"")
            .unwrap();
        assert_eq!(c.slow_consumer_in("x"), SlowConsumer::Conflate);
        let e = Config::from_toml("[[rooms.class]]\nmatch = \"x\"\nslow_consumer = \"lifo\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rooms.class.slow_consumer") && e.contains("drop_oldest"),
            "{e}"
        );
        let e = Config::from_toml("[auth]\nmode = \"jwt\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.mode") && e.contains("no key"), "{e}");
        let e = Config::from_toml(
            "[auth]\nmode = \"jwt\"\nhs256_secret = \"s\"\nalgorithms = [\"RS256\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("auth.algorithms"), "{e}");
        let e = Config::from_toml("[server]\nallowed_origins = [\"example.com\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.allowed_origins"), "{e}");
    }
}
