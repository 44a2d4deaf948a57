//! Validation: the file's sections ([`super::file`]) into a typed [`Config`], one function per
//! section, each error naming its dotted key.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use super::file::*;
use super::{available_cores, invalid, parse_listen, Config, ConfigError, IoDriver, SlowConsumer};
use super::{Auth, Cluster, RawReadonly, RoomClass};
use crate::admission::{Rate, UserLimit};
use crate::auth::origin::OriginPattern;
use crate::auth::pattern::Pattern;
use crate::auth::token::{KeySource, Verifier};
use crate::auth::ClassRights;
use crate::protocol::deflate::DeflateMode;
use crate::tls::{TlsConfig, TlsFiles};
use ipnet::IpNet;

impl FileConfig {
    /// Parse TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Validate into a typed [`Config`].
    pub fn validate(mut self) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let origins = self.server.allowed_origins.take();
        c.origins.require = self.server.require_origin.take().unwrap_or(false);
        server(&mut c, self.server)?;
        limits(&mut c, self.limits)?;
        compression(&mut c, self.compression)?;
        history(&mut c, self.history)?;
        envelope(&mut c, self.envelope)?;
        api(&mut c, self.api)?;
        log(&mut c, self.log)?;
        if let Some(list) = origins {
            let parsed: Result<Vec<_>, _> = list.iter().map(|o| OriginPattern::parse(o)).collect();
            c.origins.allowed =
                Some(parsed.map_err(|e| invalid("server.allowed_origins", e.to_string()))?);
        }
        auth(&mut c, self.auth)?;
        admission(&mut c, self.admission)?;
        admin(&mut c, self.admin)?;
        if let Some(t) = self.tls.take() {
            c.tls = Some(tls(t)?);
        }
        if let Some(k) = self.cluster.take() {
            c.cluster = Some(cluster(k)?);
        }
        if let Some(classes) = self.rooms.class.take() {
            c.room_classes = classes
                .into_iter()
                .map(room_class)
                .collect::<Result<Vec<_>, _>>()?
                .into();
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
        Ok(c)
    }
}

/// `[server]`.
fn server(c: &mut Config, s: ServerSection) -> Result<(), ConfigError> {
    if let Some(listen) = s.listen {
        c.listen = parse_listen(&listen)?;
    }
    if let Some(shards) = s.shards {
        c.shards = match shards {
            Shards::Named(AutoKeyword::Auto) => available_cores(),
            Shards::Count(n) => shard_count(n)?,
        };
    }
    if let Some(p) = s.pin_cores {
        c.pin_cores = p;
    }
    if let Some(d) = s.io_driver {
        c.io_driver = parse_io_driver(&d)?;
    }
    if let Some(d) = s.demo_pages {
        c.demo_pages = d;
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
    Ok(())
}

/// `[limits]`.
fn limits(c: &mut Config, l: LimitsSection) -> Result<(), ConfigError> {
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
    c.message_rate = rate(
        ("limits.messages_per_second", l.messages_per_second),
        ("limits.message_burst", l.message_burst),
    )?;
    if let Some(v) = &l.socket_unsent_bytes {
        c.socket_unsent_bytes = byte_size("limits.socket_unsent_bytes", v)?;
        if c.socket_unsent_bytes < 4096 {
            return Err(invalid(
                "limits.socket_unsent_bytes",
                "must be at least 4KiB",
            ));
        }
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
    Ok(())
}

/// A rate and its burst (the burst defaults to one second's worth, at least 1).
fn rate(
    (rate_key, per_second): (&'static str, Option<f64>),
    (burst_key, burst): (&'static str, Option<i64>),
) -> Result<Option<Rate>, ConfigError> {
    let Some(per_second) = per_second else {
        if burst.is_some() {
            return Err(invalid(burst_key, format!("needs {rate_key}")));
        }
        return Ok(None);
    };
    if !(per_second.is_finite() && per_second > 0.0) {
        return Err(invalid(rate_key, "must be a positive number"));
    }
    let burst = match burst {
        Some(b) => {
            u32::try_from(positive(burst_key, b)?).map_err(|_| invalid(burst_key, "too large"))?
        }
        None => per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
    };
    Ok(Some(Rate { per_second, burst }))
}

/// `[admin]`.
fn admin(c: &mut Config, a: AdminSection) -> Result<(), ConfigError> {
    if let Some(l) = a.listen {
        c.admin.listen = if l.is_empty() {
            None
        } else {
            Some(
                parse_listen(&l)
                    .map_err(|_| invalid("admin.listen", format!("`{l}` is not host:port")))?,
            )
        };
        c.admin.explicit = true;
    }
    let key = match (a.key, a.key_file) {
        (Some(_), Some(_)) => return Err(invalid("admin.key", "set key or key_file, not both")),
        (Some(k), None) => Some(secret("admin.key", &k)?),
        (None, Some(f)) => Some(read_file("admin.key_file", &f)?.trim_end().to_string()),
        (None, None) => None,
    };
    c.admin.key = key.filter(|k| !k.is_empty());
    Ok(())
}

/// `[admission]`.
fn admission(c: &mut Config, a: AdmissionSection) -> Result<(), ConfigError> {
    let l = &mut c.admission;
    let count = |key: &'static str, n: i64| {
        u32::try_from(positive(key, n)?).map_err(|_| invalid(key, "too large"))
    };
    if let Some(n) = a.max_connections_per_ip {
        l.max_connections_per_ip = Some(count("admission.max_connections_per_ip", n)?);
    }
    if let Some(n) = a.max_connections_per_user {
        l.max_connections_per_user = Some(count("admission.max_connections_per_user", n)?);
    }
    if let Some(n) = a.max_pending_handshakes {
        l.max_pending_handshakes = positive("admission.max_pending_handshakes", n)?;
    }
    l.handshakes = rate(
        ("admission.handshakes_per_second", a.handshakes_per_second),
        ("admission.handshake_burst", a.handshake_burst),
    )?;
    l.handshakes_per_ip = rate(
        (
            "admission.handshakes_per_ip_per_second",
            a.handshakes_per_ip_per_second,
        ),
        ("admission.handshake_ip_burst", a.handshake_ip_burst),
    )?;
    if let Some(list) = a.trusted_proxies {
        let nets: Result<Vec<IpNet>, _> = list
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "admission.trusted_proxies",
                            format!("`{s}` is not an IP address or CIDR"),
                        )
                    })
            })
            .collect();
        l.trusted_proxies = nets?.into();
    }
    if let Some(p) = a.on_user_limit {
        l.user_limit = match p.as_str() {
            "refuse_new" => UserLimit::RefuseNew,
            "close_oldest" => UserLimit::CloseOldest,
            other => {
                return Err(invalid(
                    "admission.on_user_limit",
                    format!("`{other}` is not one of \"refuse_new\", \"close_oldest\""),
                ))
            }
        };
    }
    Ok(())
}

/// `[compression]`.
fn compression(c: &mut Config, z: CompressionSection) -> Result<(), ConfigError> {
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
            "shared" => DeflateMode::Shared,
            "dedicated" => DeflateMode::Dedicated,
            other => {
                return Err(invalid(
                    "compression.mode",
                    format!("`{other}` is not one of \"shared\", \"dedicated\""),
                ))
            }
        };
    }
    Ok(())
}

/// `[log]`.
fn log(c: &mut Config, g: LogSection) -> Result<(), ConfigError> {
    if let Some(f) = &g.format {
        c.log_json = match f.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("`{other}` is not one of \"text\", \"json\""),
                ))
            }
        };
    }
    if let Some(a) = g.access_log {
        c.access_log = a;
    }
    if let Some(level) = g.level {
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(invalid(
                "log.level",
                format!("`{level}` is not a tracing filter"),
            ));
        }
        c.log_level = level;
    }
    Ok(())
}

/// `[history]`.
fn history(c: &mut Config, h: HistorySection) -> Result<(), ConfigError> {
    if let Some(n) = h.size {
        if n < 0 {
            return Err(invalid("history.size", "must not be negative"));
        }
        c.history_size = usize::try_from(n).map_err(|_| invalid("history.size", "too large"))?;
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
    Ok(())
}

/// `[cluster]`: a Redis URL is required; ids and prefixes are what Redis channel names can
/// hold without quoting; the canary must be able to come back before it is judged late.
fn cluster(mut k: ClusterSection) -> Result<Cluster, ConfigError> {
    let Target {
        redis,
        redis_cluster,
        sentinel,
        tls_ca,
    } = target(&mut k)?;
    let word = |key: &'static str, v: String| {
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if ok {
            Ok(v)
        } else {
            Err(invalid(key, "1 to 64 characters among A-Z a-z 0-9 - _ ."))
        }
    };
    let node_id = match k.node_id {
        Some(v) => word("cluster.node_id", v)?,
        None => random_node_id(),
    };
    // No `{`/`}` (as in node ids): Redis Cluster mode puts room names in hash tags after it.
    let channel_prefix = word(
        "cluster.channel_prefix",
        k.channel_prefix.unwrap_or_else(|| "shardcast".into()),
    )?;
    let dur = |key, v: Option<String>, default| match v {
        Some(t) => duration(key, &t),
        None => Ok(Duration::from_secs(default)),
    };
    let canary_interval = dur("cluster.canary_interval", k.canary_interval, 1)?;
    let canary_timeout = dur("cluster.canary_timeout", k.canary_timeout, 3)?;
    let presence_ttl = dur("cluster.presence_ttl", k.presence_ttl, 10)?;
    if canary_interval.is_zero() {
        return Err(invalid("cluster.canary_interval", "must be positive"));
    }
    if canary_timeout <= canary_interval {
        return Err(invalid(
            "cluster.canary_timeout",
            "must be longer than cluster.canary_interval",
        ));
    }
    if presence_ttl <= canary_interval {
        // The liveness key is refreshed every canary_interval: a shorter TTL would expire it.
        return Err(invalid(
            "cluster.presence_ttl",
            "must be longer than cluster.canary_interval",
        ));
    }
    let presence_replay_max = k.presence_replay_max.unwrap_or(100_000);
    if presence_replay_max == 0 {
        return Err(invalid("cluster.presence_replay_max", "must be positive"));
    }
    let (wait_replicas, wait_timeout) = waits(k.wait_replicas, k.wait_timeout, canary_timeout)?;
    Ok(Cluster {
        redis,
        redis_cluster,
        node_id,
        channel_prefix,
        canary_interval,
        canary_timeout,
        presence_ttl,
        presence_replay_max,
        tls_ca,
        wait_replicas,
        wait_timeout,
        sentinel,
    })
}

/// `cluster.wait_replicas` and `wait_timeout` (shorter than `canary_timeout`).
fn waits(
    replicas: Option<i64>,
    timeout: Option<String>,
    canary_timeout: Duration,
) -> Result<(u32, Duration), ConfigError> {
    let wait_replicas = u32::try_from(replicas.unwrap_or(0))
        .map_err(|_| invalid("cluster.wait_replicas", "0 or a positive count"))?;
    let wait_timeout = match timeout {
        Some(t) => duration("cluster.wait_timeout", &t)?,
        None => Duration::from_millis(100),
    };
    if wait_timeout >= canary_timeout {
        // A WAIT blocks the command connection the canary also uses.
        return Err(invalid(
            "cluster.wait_timeout",
            "must be shorter than cluster.canary_timeout",
        ));
    }
    Ok((wait_replicas, wait_timeout))
}

/// Where Redis is: one of `cluster.redis`, `cluster.redis_cluster` and `[cluster.sentinel]`,
/// and the CA for TLS to it.
struct Target {
    redis: String,
    redis_cluster: Vec<String>,
    sentinel: Option<super::Sentinel>,
    tls_ca: Option<std::path::PathBuf>,
}

fn target(k: &mut ClusterSection) -> Result<Target, ConfigError> {
    let redis_cluster = seeds(k)?;
    let sentinel = match k.sentinel.take() {
        Some(_) if k.redis.is_some() || !redis_cluster.is_empty() => {
            return Err(invalid(
                "cluster.sentinel",
                "give one of cluster.redis, cluster.redis_cluster or [cluster.sentinel]",
            ))
        }
        Some(s) => Some(sentinel(s)?),
        None => None,
    };
    let (redis, tls_ca) = if redis_cluster.is_empty() {
        cluster_redis(k.redis.take(), k.tls_ca.take(), &sentinel)?
    } else if k.tls_ca.is_some() {
        return Err(invalid(
            "cluster.tls_ca",
            "only with rediss:// (or cluster.sentinel.tls = true)",
        ));
    } else {
        (String::new(), None)
    };
    Ok(Target {
        redis,
        redis_cluster,
        sentinel,
        tls_ca,
    })
}

/// `cluster.redis` (or none with Sentinel) and `cluster.tls_ca` (TLS connections only).
fn cluster_redis(
    redis: Option<String>,
    tls_ca: Option<String>,
    sentinel: &Option<super::Sentinel>,
) -> Result<(String, Option<std::path::PathBuf>), ConfigError> {
    let redis = match (redis, sentinel) {
        (Some(r), _) => r,
        (None, Some(_)) => String::new(),
        (None, None) => {
            return Err(invalid(
                "cluster.redis",
                "required in [cluster] (or a [cluster.sentinel] section)",
            ))
        }
    };
    let tls = match redis.split_once("://") {
        _ if sentinel.is_some() => sentinel.as_ref().is_some_and(|s| s.tls),
        Some(("redis", rest)) if !rest.is_empty() => false,
        Some(("rediss", rest)) if !rest.is_empty() => true,
        _ => {
            return Err(invalid(
                "cluster.redis",
                "expected redis://host:port[/db] or rediss://host:port[/db]",
            ))
        }
    };
    let tls_ca = match tls_ca {
        Some(p) if p.is_empty() => return Err(invalid("cluster.tls_ca", "must not be empty")),
        Some(_) if !tls => {
            return Err(invalid(
                "cluster.tls_ca",
                "only with rediss:// (or cluster.sentinel.tls = true)",
            ))
        }
        Some(p) => Some(std::path::PathBuf::from(p)),
        None => None,
    };
    Ok((redis, tls_ca))
}

/// `[cluster.sentinel]`: a master name and at least one `host:port`.
fn sentinel(s: SentinelSection) -> Result<super::Sentinel, ConfigError> {
    let master = s
        .master
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("cluster.sentinel.master", "required (the master's name)"))?;
    let nodes = s.nodes.unwrap_or_default();
    if nodes.is_empty() {
        return Err(invalid("cluster.sentinel.nodes", "at least one host:port"));
    }
    for n in &nodes {
        let ok = n
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(invalid("cluster.sentinel.nodes", "expected host:port"));
        }
    }
    let db = s.db.unwrap_or(0);
    if db < 0 {
        return Err(invalid("cluster.sentinel.db", "must not be negative"));
    }
    Ok(super::Sentinel {
        master,
        nodes,
        password: s.password,
        sentinel_password: s.sentinel_password,
        db,
        tls: s.tls.unwrap_or(false),
        sentinel_tls: s.sentinel_tls.unwrap_or(false),
    })
}

/// `cluster.redis_cluster`: seed nodes of a Redis Cluster (docs/cluster.md), exclusive with
/// `cluster.redis`; `redis://[user:password@]host:port` each (a cluster has no databases).
fn seeds(k: &mut ClusterSection) -> Result<Vec<String>, ConfigError> {
    let Some(seeds) = k.redis_cluster.take() else {
        return Ok(Vec::new());
    };
    let key = "cluster.redis_cluster";
    if k.redis.is_some() {
        return Err(invalid(
            key,
            "set either cluster.redis or cluster.redis_cluster",
        ));
    }
    if seeds.is_empty() {
        return Err(invalid(key, "needs at least one seed node"));
    }
    for s in &seeds {
        match s.split_once("://") {
            Some(("redis", rest)) if !rest.is_empty() && !rest.contains('/') => {}
            _ => return Err(invalid(key, "expected redis://host:port (no /db)")),
        }
    }
    Ok(seeds)
}

/// A random node id: 16 hex digits from the clock, the pid and the std hasher's random keys.
fn random_node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// `[envelope]`.
fn envelope(c: &mut Config, e: EnvelopeSection) -> Result<(), ConfigError> {
    if let Some(n) = e.max_bad_frames {
        c.max_bad_frames = u32::try_from(positive("envelope.max_bad_frames", n)?)
            .map_err(|_| invalid("envelope.max_bad_frames", "too large"))?;
    }
    if let Some(v) = &e.max_info_bytes {
        c.max_info_bytes = byte_size("envelope.max_info_bytes", v)?;
    }
    if let Some(v) = &e.publish_dedup_window {
        c.publish_dedup_window = duration("envelope.publish_dedup_window", v)?;
    }
    if let Some(n) = e.publish_dedup_max {
        c.publish_dedup_max = positive("envelope.publish_dedup_max", n)?;
    }
    Ok(())
}

/// `[api]`.
fn api(c: &mut Config, a: ApiSection) -> Result<(), ConfigError> {
    let key = match (a.key, a.key_file) {
        (Some(_), Some(_)) => return Err(invalid("api.key", "set key or key_file, not both")),
        (Some(k), None) => Some(secret("api.key", &k)?),
        (None, Some(f)) => Some(read_file("api.key_file", &f)?.trim_end().to_string()),
        (None, None) => None,
    };
    if let Some(k) = key {
        if k.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(invalid(
                "api.key",
                "must not contain spaces or control characters",
            ));
        }
        c.api_key = (!k.is_empty()).then_some(k);
    }
    Ok(())
}

/// `server.shards` (and `--shards`): 1 to 1024.
pub(super) fn shard_count(n: i64) -> Result<NonZeroUsize, ConfigError> {
    let n = NonZeroUsize::new(positive("server.shards", n)?)
        .ok_or_else(|| invalid("server.shards", "must be positive"))?;
    if n.get() > 1024 {
        return Err(invalid("server.shards", "at most 1024 shards"));
    }
    Ok(n)
}

/// `server.io_driver` (and `--io-driver`).
pub(super) fn parse_io_driver(text: &str) -> Result<IoDriver, ConfigError> {
    match text {
        "auto" => Ok(IoDriver::Auto),
        "io_uring" => Ok(IoDriver::IoUring),
        "epoll" => Ok(IoDriver::Epoll),
        other => Err(invalid(
            "server.io_driver",
            format!("`{other}` is not one of \"auto\", \"io_uring\", \"epoll\""),
        )),
    }
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

/// `[auth]`: in mode "jwt", read the keys and build the verifier (so `config check` catches a
/// bad key file).
fn auth(c: &mut Config, a: AuthSection) -> Result<(), ConfigError> {
    let mut out = Auth::default();
    if let Some(q) = a.token_query.clone() {
        if q.is_empty() {
            return Err(invalid("auth.token_query", "must not be empty"));
        }
        out.token_query = q;
    }
    out.token_cookie = a.token_cookie.clone().filter(|c| !c.is_empty());
    if out.token_cookie.is_some() && c.origins.allowed.is_none() {
        // Browsers send cookies with cross-site WebSocket upgrades: without an origin list any
        // website could connect as the user.
        return Err(invalid(
            "auth.token_cookie",
            "needs [server] allowed_origins (cross-site WebSocket hijacking)",
        ));
    }
    if let Some(r) = &a.raw_readonly {
        out.raw_readonly = match r.as_str() {
            "close" => RawReadonly::Close,
            "drop" => RawReadonly::Drop,
            other => {
                return Err(invalid(
                    "auth.raw_readonly",
                    format!("`{other}` is not one of \"close\", \"drop\""),
                ))
            }
        };
    }
    match a.mode.as_deref().unwrap_or("none") {
        "none" => {}
        "jwt" => out.verifier = Some(Arc::new(verifier(&a)?)),
        other => {
            return Err(invalid(
                "auth.mode",
                format!("`{other}` is not one of \"none\", \"jwt\""),
            ))
        }
    }
    c.auth = out;
    Ok(())
}

/// `[tls]`: both files are required; they are read and checked now, so `config check` catches
/// a missing file, bad PEM or a key that does not match the certificate.
fn tls(t: TlsSection) -> Result<TlsConfig, ConfigError> {
    let path = |key: &'static str, v: Option<String>| match v.filter(|p| !p.is_empty()) {
        Some(p) => Ok(std::path::PathBuf::from(p)),
        None => Err(invalid(key, "required when [tls] is present")),
    };
    let files = TlsFiles {
        cert_file: path("tls.cert_file", t.cert_file)?,
        key_file: path("tls.key_file", t.key_file)?,
    };
    let server = crate::tls::load(&files).map_err(|e| {
        let key = match e.key() {
            "cert_file" => "tls.cert_file",
            _ => "tls.key_file",
        };
        invalid(key, e.to_string())
    })?;
    Ok(TlsConfig { files, server })
}

/// Read a file named by `key`. `$CREDENTIALS_DIRECTORY` in the path is the directory systemd's
/// `LoadCredential=` puts the service's secrets in.
fn read_file(key: &'static str, path: &str) -> Result<String, ConfigError> {
    let path = expand_credentials(key, path)?;
    std::fs::read_to_string(&path).map_err(|e| invalid(key, format!("cannot read {path}: {e}")))
}

fn expand_credentials(key: &'static str, path: &str) -> Result<String, ConfigError> {
    for var in ["${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY"] {
        if path.contains(var) {
            let dir = std::env::var("CREDENTIALS_DIRECTORY").map_err(|_| {
                invalid(
                    key,
                    "names $CREDENTIALS_DIRECTORY, which is not set (systemd LoadCredential=)",
                )
            })?;
            return Ok(path.replace(var, &dir));
        }
    }
    Ok(path.to_string())
}

/// A secret given inline: the value itself, or `env:NAME` for the environment variable NAME.
fn secret(key: &'static str, value: &str) -> Result<String, ConfigError> {
    match value.strip_prefix("env:") {
        Some(name) => std::env::var(name).map_err(|_| {
            invalid(
                key,
                format!("names the environment variable {name}, which is not set"),
            )
        }),
        None => Ok(value.to_string()),
    }
}

fn verifier(a: &AuthSection) -> Result<Verifier, ConfigError> {
    let mut src = KeySource {
        leeway: Duration::from_secs(5),
        ..KeySource::default()
    };
    if let Some(t) = &a.leeway {
        src.leeway = humantime::parse_duration(t.trim())
            .map_err(|e| invalid("auth.leeway", format!("`{t}` is not a duration: {e}")))?;
        if src.leeway.subsec_nanos() != 0 || src.leeway > Duration::from_secs(3600) {
            return Err(invalid(
                "auth.leeway",
                "whole seconds, at most 1h (JWT times are in seconds)",
            ));
        }
    }
    src.hs256_secret = match (&a.hs256_secret, &a.hs256_secret_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "auth.hs256_secret",
                "set hs256_secret or hs256_secret_file, not both",
            ))
        }
        (Some(s), None) if s.is_empty() => return Err(invalid("auth.hs256_secret", "empty")),
        (Some(s), None) => Some(secret("auth.hs256_secret", s)?.into_bytes()),
        (None, Some(path)) => {
            let text = read_file("auth.hs256_secret_file", path)?;
            let secret = text.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                return Err(invalid("auth.hs256_secret_file", "the file is empty"));
            }
            Some(secret.as_bytes().to_vec())
        }
        (None, None) => None,
    };
    for path in a.public_key_files.iter().flatten() {
        let pem = read_file("auth.public_key_files", path)?;
        src.public_keys.push((path.clone(), pem));
    }
    if let Some(path) = &a.jwks_file {
        src.jwks = Some((path.clone(), read_file("auth.jwks_file", path)?));
    }
    src.algorithms = a.algorithms.clone().unwrap_or_default();
    src.audience = a.audience.clone();
    src.issuer = a.issuer.clone();
    Verifier::new(&src).map_err(|e| {
        let key = match &e {
            crate::auth::token::KeyError::Pem { .. } => "auth.public_key_files",
            crate::auth::token::KeyError::Jwks { .. } => "auth.jwks_file",
            crate::auth::token::KeyError::Algorithms(_) => "auth.algorithms",
            crate::auth::token::KeyError::NoKey => "auth.mode",
        };
        invalid(key, e.to_string())
    })
}

/// One `[[rooms.class]]`.
fn room_class(r: RoomClassSection) -> Result<RoomClass, ConfigError> {
    if r.pattern.is_empty() {
        return Err(invalid("rooms.class.match", "must not be empty"));
    }
    let d = ClassRights::default();
    Ok(RoomClass {
        pattern: Pattern::new(&r.pattern),
        rights: ClassRights {
            anonymous_subscribe: r.anonymous_subscribe.unwrap_or(d.anonymous_subscribe),
            anonymous_publish: r.anonymous_publish.unwrap_or(d.anonymous_publish),
            presence: r.presence.unwrap_or(d.presence),
        },
        echo_to_sender: r.echo_to_sender,
        history_size: match r.history_size {
            Some(n) if n < 0 => {
                return Err(invalid("rooms.class.history_size", "must not be negative"))
            }
            Some(n) => Some(
                usize::try_from(n).map_err(|_| invalid("rooms.class.history_size", "too large"))?,
            ),
            None => None,
        },
        history_ttl: r
            .history_ttl
            .map(|t| duration("rooms.class.history_ttl", &t))
            .transpose()?,
        slow_consumer: r
            .slow_consumer
            .map(|p| slow_consumer("rooms.class.slow_consumer", &p))
            .transpose()?,
        max_subscribers: match r.max_subscribers {
            Some(n) if n < 1 => {
                return Err(invalid("rooms.class.max_subscribers", "must be at least 1"))
            }
            n => n.map(|n| n as u64),
        },
    })
}

/// A slow-consumer policy name.
fn slow_consumer(key: &'static str, p: &str) -> Result<SlowConsumer, ConfigError> {
    match p {
        "close" => Ok(SlowConsumer::Close),
        "drop" => Ok(SlowConsumer::Drop),
        "drop_oldest" => Ok(SlowConsumer::DropOldest),
        "conflate" => Ok(SlowConsumer::Conflate),
        other => Err(invalid(
            key,
            format!("`{other}` is not one of \"close\", \"drop\", \"drop_oldest\", \"conflate\""),
        )),
    }
}
