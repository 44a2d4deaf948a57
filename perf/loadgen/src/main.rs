//! loadgen: a single-threaded WebSocket load generator for shardcast's performance suite.
//! See `loadgen --help`.

mod auth;
mod backoff;
mod deflate;
mod engine;
mod envelope;
mod fleet;
mod flood;
mod hist;
mod payload;
mod probe;
mod procstat;
mod redisstat;
mod sse;
mod stalled;
mod storm;
mod tls;

use std::collections::BTreeMap;
use std::net::{SocketAddrV4, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use engine::{now_ns, Counters, Engine, Spec, Traffic};
use envelope::Envelope;
use payload::Kind;
use procstat::{cpu_s, rss_kib, share, CpuSnap};

const HELP_HEAD: &str = "\
loadgen: single-threaded epoll WebSocket load generator (one connection per room path /ws/{room},
or per envelope subscription on /ws with --envelope)

USAGE: loadgen SCENARIO [FLAGS]

SCENARIOS
  fanout  --subscribers N (1000) [--rate R | --max [--window W (16)]] [--transport ws|sse (ws)]
          [--publishers P (1)]
          N subscribers + P publishers in one room. --rate: R publishes/s in total on a fixed
          schedule (round-robin over the publishers); --max: each publisher keeps at most W of
          its publishes not yet received by every subscriber.
          --transport sse (needs --envelope json, no --deflate): the subscribers open
          Server-Sent Events streams GET /sse?rooms=fanout instead of WebSockets (welcome and
          subscribed awaited as on /ws, the same seq and latency accounting); the publisher
          stays a WebSocket. Reports sse_comments (heartbeat pings) too.
  rooms   --clients N (2000) --room-size K (10) --rate r (5)
          N clients in N/K rooms of K; every client publishes r msgs/s (evenly spread offsets);
          every client receives all messages of its room (its own echo included).
  echo    --connections N (100)
          N connections, each alone in its room, one message in flight each.
  idle    --connections N (19000) --hold SECS (5) [--room-size K (0 = all in one room)]
          [--broadcast-once]
          open N connections, hold them, report handshakes/s and server RSS per connection.
          --broadcast-once: then the first connection of each room publishes one message
          (JSON, 1024 bytes unless --payload/--size say otherwise), wait until every connection
          has it, hold 1 s and report server RSS per connection again.
  churn   --connections N (1000) --cycles C (10)
          C times: open N connections (each in its own room), close them cleanly; reports
          handshakes/s and handshakes per server CPU-second (server CPU while opening).
";

const HELP_TAIL: &str = "
COMMON FLAGS
  --url ws://HOST:PORT[/prefix]   server (default ws://127.0.0.1:9300); wss://HOST:PORT: TLS
                                  A comma-separated list (or --urls a,b,c): several nodes of a
                                  cluster; connection i goes to node i % nodes (publishers
                                  first, then subscribers: both spread round-robin)
                                  (rustls, TLS 1.3 or 1.2, ALPN http/1.1, no resumption: every
                                  handshake is a full one), trusting only --ca
  --ca FILE                       PEM CA certificate(s) for wss:// (required with wss://)
  --server-pid PID[,PID...]       read the server's CPU time and RSS from /proc/PID (a list:
                                  the sum over the nodes)
  --redis-pid PID                 Redis CPU over the measured phase, reported apart (redis_cpu)
                                  and in deliveries_per_server_redis_cpu_s
  --redis-addr HOST:PORT          INFO commandstats before/after the measured phase: Redis
                                  calls per broadcast (redis_cmds_per_broadcast, redis_cmds)
  --duration SECS (5)             measured phase (message scenarios)
  --warmup SECS (1)               unmeasured phase before it
  --drain SECS (3)                after the measured phase: stop sending, wait for in-flight messages
  --payload binary|json (binary)  binary: timestamp, seq, publisher id (LE) + zero padding;
                                  json: a TEXT message, compressible JSON (cursor objects) with
                                  the three numbers as fixed-width fields at its start
  --size BYTES (64; json: 1024)   message size (binary >= 20, json >= 73)
  --deflate                       offer permessage-deflate (client_max_window_bits); inflate
                                  received RSV1 frames (loadgen itself sends uncompressed frames)
  --envelope raw|json|cbor (raw)  fanout, rooms, echo: json/cbor connect to /ws with subprotocol
                                  shardcast.v1.json/.cbor, wait for welcome, subscribe to the
                                  room, wait for subscribed, then publish {\"op\":\"publish\",
                                  \"room\":R,\"data\":PAYLOAD} (binary payload: JSON base64 +
                                  \"enc\":\"base64\", CBOR a byte string; json payload: a text
                                  string); checks the room seq (seq_gaps, seq_out_of_order)
  --no-inflate-memo               with server_no_context_takeover, inflate every compressed
                                  frame (default: identical frames, i.e. one shared broadcast
                                  received by many connections, are inflated once, exactly)
  --sources N (8)                 spread connections over source addresses 127.0.0.1..127.0.0.N
  --handshake-inflight N (256)    handshakes in flight at once while connecting
  --settle SECS (0.2)             pause between 'all connected' and the first message
  --token TOKEN                   send 'Authorization: Bearer TOKEN' in every upgrade request
  --token-file FILE               one token per line (blank lines skipped), used round-robin,
                                  one per connection in the order connections are opened
                                  (continuing across churn cycles); a 401/403 answer is a
                                  handshake failure of kind 'HTTP 401' / 'HTTP 403'
  --json                          also print one JSON line with every number
  --label NAME                    carried into the JSON
";

fn help() -> ! {
    print!(
        "{HELP_HEAD}{}{}{}{HELP_TAIL}",
        storm::HELP,
        flood::HELP,
        stalled::HELP
    );
    std::process::exit(0)
}

struct Args {
    scenario: String,
    flags: BTreeMap<String, String>,
    switches: Vec<String>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut it = std::env::args().skip(1);
        let scenario = it.next().ok_or("missing scenario (try --help)")?;
        if scenario == "--help" || scenario == "-h" || scenario == "help" {
            help();
        }
        let mut flags = BTreeMap::new();
        let mut switches = Vec::new();
        let mut rest: Vec<String> = it.collect();
        rest.reverse();
        while let Some(a) = rest.pop() {
            let Some(name) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            if let Some((k, v)) = name.split_once('=') {
                flags.insert(k.to_string(), v.to_string());
                continue;
            }
            match name {
                "json" | "max" | "deflate" | "broadcast-once" | "no-inflate-memo" => {
                    switches.push(name.to_string())
                }
                "help" => help(),
                _ => {
                    let v = rest.pop().ok_or(format!("--{name} needs a value"))?;
                    flags.insert(name.to_string(), v);
                }
            }
        }
        Ok(Args {
            scenario,
            flags,
            switches,
        })
    }
    fn has(&self, s: &str) -> bool {
        self.switches.iter().any(|x| x == s)
    }
    fn get<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T, String> {
        match self.flags.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{k}: bad value {v:?}")),
        }
    }
    fn take_known(&self, known: &[&str]) -> Result<(), String> {
        for k in self.flags.keys() {
            if !known.contains(&k.as_str()) {
                return Err(format!("unknown flag --{k} for {}", self.scenario));
            }
        }
        Ok(())
    }
}

/// A value in the report.
enum V {
    I(i64),
    F(f64),
    S(String),
    Null,
    Obj(Vec<(String, i64)>),
}

#[derive(Default)]
struct Report {
    fields: Vec<(String, V)>,
}

impl Report {
    fn i(&mut self, k: &str, v: impl TryInto<i64>) {
        self.fields
            .push((k.into(), V::I(v.try_into().unwrap_or(i64::MAX))));
    }
    fn f(&mut self, k: &str, v: f64) {
        self.fields
            .push((k.into(), if v.is_finite() { V::F(v) } else { V::Null }));
    }
    fn of(&mut self, k: &str, v: Option<f64>) {
        match v {
            Some(v) => self.f(k, v),
            None => self.fields.push((k.into(), V::Null)),
        }
    }
    fn oi(&mut self, k: &str, v: Option<u64>) {
        match v {
            Some(v) => self.i(k, v),
            None => self.fields.push((k.into(), V::Null)),
        }
    }
    fn s(&mut self, k: &str, v: &str) {
        self.fields.push((k.into(), V::S(v.into())));
    }
    fn obj(&mut self, k: &str, v: Vec<(String, i64)>) {
        self.fields.push((k.into(), V::Obj(v)));
    }
    /// An integer already in the report.
    fn get_i(&self, k: &str) -> Option<i64> {
        self.fields.iter().find_map(|(name, v)| match v {
            V::I(x) if name == k => Some(*x),
            _ => None,
        })
    }

    fn json(&self) -> String {
        fn esc(s: &str) -> String {
            let mut o = String::with_capacity(s.len() + 2);
            o.push('"');
            for ch in s.chars() {
                match ch {
                    '"' => o.push_str("\\\""),
                    '\\' => o.push_str("\\\\"),
                    c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                    c => o.push(c),
                }
            }
            o.push('"');
            o
        }
        let mut parts = Vec::new();
        for (k, v) in &self.fields {
            let val = match v {
                V::I(x) => x.to_string(),
                V::F(x) => {
                    if x.abs() >= 1e15 || *x == x.trunc() && x.abs() < 1e15 {
                        format!("{x:.1}")
                    } else {
                        format!("{x:.6}")
                    }
                }
                V::S(s) => esc(s),
                V::Null => "null".into(),
                V::Obj(m) => {
                    let inner: Vec<String> =
                        m.iter().map(|(k, v)| format!("{}:{v}", esc(k))).collect();
                    format!("{{{}}}", inner.join(","))
                }
            };
            parts.push(format!("{}:{val}", esc(k)));
        }
        format!("{{{}}}", parts.join(","))
    }

    fn human(&self) -> String {
        let w = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut o = String::new();
        for (k, v) in &self.fields {
            let val = match v {
                V::I(x) => group(*x),
                V::F(x) => {
                    if x.abs() >= 1000.0 {
                        group(x.round() as i64)
                    } else if x.abs() >= 10.0 {
                        format!("{x:.1}")
                    } else {
                        format!("{x:.3}")
                    }
                }
                V::S(s) => s.clone(),
                V::Null => "-".into(),
                V::Obj(m) if m.is_empty() => "none".into(),
                V::Obj(m) => m
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            o.push_str(&format!("  {k:<w$}  {val}\n"));
        }
        o
    }
}

fn group(x: i64) -> String {
    let s = x.unsigned_abs().to_string();
    let mut o = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            o.push('_');
        }
        o.push(ch);
    }
    if x < 0 {
        format!("-{o}")
    } else {
        o
    }
}

struct Common {
    /// More nodes (`--url a,b,c`): (address, Host header) of the 2nd, 3rd...
    extra_nodes: Vec<(SocketAddrV4, String)>,
    redis_pid: Option<String>,
    redis_addr: Option<String>,
    /// `wss://`: the TLS client configuration.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    dst: SocketAddrV4,
    host_header: String,
    prefix: String,
    url: String,
    server_pid: Option<String>,
    duration: f64,
    warmup: f64,
    drain: f64,
    size: usize,
    payload: Kind,
    envelope: Envelope,
    deflate: bool,
    inflate_memo: bool,
    sources: u32,
    inflight: usize,
    settle: f64,
    /// Bearer tokens (--token / --token-file), round-robin per connection; empty: none sent.
    tokens: Vec<String>,
    json: bool,
    label: String,
}

const COMMON: &[&str] = &[
    "url",
    "urls",
    "redis-pid",
    "redis-addr",
    "server-pid",
    "duration",
    "warmup",
    "drain",
    "size",
    "payload",
    "sources",
    "handshake-inflight",
    "settle",
    "label",
    "token",
    "token-file",
    "ca",
];

/// One `--url`: (wss?, HOST:PORT, path prefix, address).
fn parse_url(url: &str) -> Result<(bool, String, String, SocketAddrV4), String> {
    let (rest, wss) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(r), _) => (r, false),
        (None, Some(r)) => (r, true),
        _ => return Err("--url must start with ws:// or wss://".into()),
    };
    let (hostport, prefix) = match rest.find('/') {
        Some(p) => (&rest[..p], rest[p..].trim_end_matches('/').to_string()),
        None => (rest, String::new()),
    };
    let dst = hostport
        .to_socket_addrs()
        .map_err(|e| format!("--url {hostport}: {e}"))?
        .find_map(|a| match a {
            std::net::SocketAddr::V4(v) => Some(v),
            _ => None,
        })
        .ok_or("--url: no IPv4 address")?;
    Ok((wss, hostport.to_string(), prefix, dst))
}

fn common(a: &Args, default_payload: Kind) -> Result<Common, String> {
    let url: String = match a.flags.get("urls") {
        Some(u) if a.flags.contains_key("url") => {
            return Err(format!("give --url or --urls, not both (--urls {u})"))
        }
        Some(u) => u.clone(),
        None => a.get("url", "ws://127.0.0.1:9300".to_string())?,
    };
    let mut urls = url.split(',').map(str::trim).filter(|u| !u.is_empty());
    let (wss, hostport, prefix, dst) = parse_url(urls.next().ok_or("--url: empty")?)?;
    let mut extra_nodes = Vec::new();
    for u in urls {
        let (w, hp, pf, d) = parse_url(u)?;
        if w != wss || pf != prefix {
            return Err(format!(
                "--url {u}: every node needs the same scheme and path"
            ));
        }
        extra_nodes.push((d, hp));
    }
    let tls = if wss {
        let ca = a.flags.get("ca").ok_or("wss:// needs --ca FILE")?;
        Some(tls::client_config(ca)?)
    } else {
        None
    };
    let hostport = hostport.as_str();
    let payload = match a.flags.get("payload").map(String::as_str) {
        None => default_payload,
        Some("binary") => Kind::Binary,
        Some("json") => Kind::Json,
        Some(v) => return Err(format!("--payload: {v:?} is neither binary nor json")),
    };
    let envelope = match a.flags.get("envelope").map(String::as_str) {
        None | Some("raw") => Envelope::Raw,
        Some("json") => Envelope::Json,
        Some("cbor") => Envelope::Cbor,
        Some(v) => return Err(format!("--envelope: {v:?} is not raw, json or cbor")),
    };
    let size: usize = a.get("size", payload.default_size())?;
    if size < payload.min_size() {
        return Err(format!(
            "--size must be at least {} for --payload {}",
            payload.min_size(),
            payload.name()
        ));
    }
    let tokens = match (a.flags.get("token"), a.flags.get("token-file")) {
        (Some(_), Some(_)) => return Err("give --token or --token-file, not both".into()),
        (Some(t), None) => auth::single(t)?,
        (None, Some(path)) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("--token-file {path}: {e}"))?;
            auth::parse_file(&text).map_err(|e| format!("--token-file {path}: {e}"))?
        }
        (None, None) => Vec::new(),
    };
    Ok(Common {
        extra_nodes,
        redis_pid: a.flags.get("redis-pid").cloned(),
        redis_addr: a.flags.get("redis-addr").cloned(),
        tls,
        tokens,
        dst,
        host_header: hostport.to_string(),
        prefix,
        url: url.clone(),
        server_pid: a.flags.get("server-pid").cloned(),
        duration: a.get("duration", 5.0)?,
        warmup: a.get("warmup", 1.0)?,
        drain: a.get("drain", 3.0)?,
        size,
        payload,
        envelope,
        deflate: a.has("deflate"),
        inflate_memo: !a.has("no-inflate-memo"),
        sources: a.get("sources", 8u32)?.min(254),
        inflight: a.get("handshake-inflight", 256usize)?.max(1),
        settle: a.get("settle", 0.2)?,
        json: a.has("json"),
        label: a.flags.get("label").cloned().unwrap_or_default(),
    })
}

fn raise_nofile() -> u64 {
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
            return r.rlim_cur;
        }
    }
    0
}

fn engine(c: &Common) -> Engine {
    let mut e = Engine::new(
        c.dst,
        c.host_header.clone(),
        c.prefix.clone(),
        c.sources,
        c.size,
        c.payload,
        c.envelope,
    )
    .unwrap_or_else(|e| {
        eprintln!("loadgen: {e}");
        std::process::exit(1)
    });
    e.handshake_inflight = c.inflight;
    e.offer_deflate = c.deflate;
    e.tls = c.tls.clone();
    e.set_inflate_memo(c.inflate_memo);
    e.tokens = c.tokens.clone();
    for (d, h) in &c.extra_nodes {
        e.add_node(*d, h.clone());
    }
    e
}

fn head(r: &mut Report, scenario: &str, c: &Common) {
    r.s("scenario", scenario);
    r.s("label", &c.label);
    r.s("url", &c.url);
    r.oi(
        "server_pid",
        c.server_pid.as_deref().and_then(|p| p.parse().ok()),
    );
    r.s("server_pids", c.server_pid.as_deref().unwrap_or(""));
    r.i("nodes", 1 + c.extra_nodes.len());
    r.s("payload", c.payload.name());
    r.s("envelope", c.envelope.name());
    r.i("deflate_offered", c.deflate as u8);
    r.i("tls", c.tls.is_some() as u8);
    r.i("inflate_memo", c.inflate_memo as u8);
    // Bearer tokens sent round-robin, one per connection (0: no Authorization header).
    r.i("tokens", c.tokens.len());
}

fn errors(r: &mut Report, e: &Engine) -> u64 {
    let closes: Vec<(String, i64)> = e
        .server_closes
        .iter()
        .map(|(k, v)| (k.to_string(), *v as i64))
        .collect();
    let closes_total: u64 = e.server_closes.values().sum();
    let hs: Vec<(String, i64)> = e
        .handshake_failures
        .iter()
        .map(|(k, v)| (k.clone(), *v as i64))
        .collect();
    let hs_total: u64 = e.handshake_failures.values().sum();
    r.i("server_closes", closes_total);
    r.obj("server_closes_by_code", closes);
    r.i("connect_errors", e.connect_errors);
    r.i("handshake_failures", hs_total);
    r.obj("handshake_failures_by_kind", hs);
    r.i("eof_errors", e.eof_errors);
    r.i("io_errors", e.io_errors);
    r.i(
        "protocol_errors",
        e.protocol_errors + e.foreign + e.short_msgs + e.env_bad_frames,
    );
    r.i("envelope_errors", e.env_errors);
    r.i("inflate_errors", e.inflate_errors);
    r.i("inflate_memo_hits", e.inflate_memo_hits());
    r.i("close_timeouts", e.close_timeouts);
    r.i("pings_answered", e.pings);
    r.i("sse_comments", e.sse_comments);
    let total = closes_total
        + e.connect_errors
        + hs_total
        + e.eof_errors
        + e.io_errors
        + e.close_timeouts
        + e.protocol_errors
        + e.inflate_errors
        + e.foreign
        + e.short_msgs
        + e.env_bad_frames
        + e.env_errors;
    r.i("errors_total", total);
    total
}

fn host(r: &mut Report, sh: &procstat::CpuShare) {
    r.of("host_busy_cores", sh.host_busy);
    r.of("host_softirq_cores", sh.host_softirq);
    r.of("host_other_cores", sh.host_other);
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Warm-up, measured phase, drain; the common message-scenario metrics.
fn measure(e: &mut Engine, c: &Common, r: &mut Report) {
    let pid = c.server_pid.as_deref();
    let rpid = c.redis_pid.as_deref();
    let raddr = c.redis_addr.as_deref();
    e.run_for(Duration::from_secs_f64(c.warmup));
    let c0: Counters = e.c;
    let cmds0 = raddr.map(redisstat::commandstats);
    let r0 = rpid.and_then(cpu_s);
    let s0 = CpuSnap::take(pid);
    e.measuring = true;
    e.run_for(Duration::from_secs_f64(c.duration));
    e.measuring = false;
    let s1 = CpuSnap::take(pid);
    let r1 = rpid.and_then(cpu_s);
    let cmds1 = raddr.map(redisstat::commandstats);
    let c1: Counters = e.c;
    let rss = pid.and_then(rss_kib);
    let tail = e.drain(Duration::from_secs_f64(c.drain));
    let sh = share(&s0, &s1);
    accounting(e, r);
    let del = (c1.delivered - c0.delivered) as f64 / sh.wall;
    let sent = (c1.sent - c0.sent) as f64 / sh.wall;
    r.f("measured_s", sh.wall);
    r.i("deliveries", c1.delivered - c0.delivered);
    r.f("deliveries_per_s", del);
    r.i("sent", c1.sent - c0.sent);
    r.f("sent_per_s", sent);
    bytes_report(r, &c0, &c1);
    let h = &e.hist;
    r.i("lat_samples", h.n);
    r.f("lat_p50_us", us(h.quantile(0.50)));
    r.f("lat_p90_us", us(h.quantile(0.90)));
    r.f("lat_p99_us", us(h.quantile(0.99)));
    r.f("lat_p999_us", us(h.quantile(0.999)));
    r.f("lat_max_us", us(h.max));
    r.f("lat_mean_us", h.mean() / 1000.0);
    r.i("losses", e.gaps);
    r.i("conns_with_losses", e.lossy_conns);
    r.i("losses_tail", tail);
    r.i("out_of_order", e.out_of_order);
    // Envelope: the room seq as each subscriber saw it (null in raw mode: not numbered).
    let env = c.envelope != Envelope::Raw;
    r.oi("seq_gaps", env.then_some(e.seq_gaps));
    r.oi("seq_out_of_order", env.then_some(e.seq_out_of_order));
    r.oi("envelope_other_ops", env.then_some(e.env_other));
    r.of("server_cpu", sh.server);
    r.of("server_cpu_user", sh.server_user);
    r.of("server_cpu_sys", sh.server_sys);
    r.of("loadgen_cpu", sh.me);
    r.of(
        "deliveries_per_server_cpu_s",
        sh.server.map(|s| del / s.max(1e-9)),
    );
    // Redis (cluster runs): its CPU over the measured phase, apart and added to the server's.
    let redis_cpu = match (r0, r1) {
        (Some(a), Some(b)) => Some((b - a).max(0.0) / sh.wall),
        _ => None,
    };
    r.of("redis_cpu", redis_cpu);
    r.of(
        "deliveries_per_server_redis_cpu_s",
        sh.server
            .zip(redis_cpu)
            .map(|(s, rc)| del / (s + rc).max(1e-9)),
    );
    redis_cmds(r, cmds0, cmds1, c1.sent - c0.sent);
    // Everything from the first message to the end of the drain (for per-message counts taken
    // over the whole run, e.g. perf/profile.sh's syscalls per delivery).
    r.i("deliveries_total", e.c.delivered);
    r.i("sent_total", e.c.sent);
    host(r, &sh);
    // A load generator near a full core may itself be what limits the numbers.
    let saturated = sh.me.is_some_and(|m| m >= 0.9);
    r.i("loadgen_saturated", saturated as u8);
    if saturated {
        eprintln!(
            "loadgen: WARNING: loadgen used {:.2} of a core: it may be the bottleneck",
            sh.me.unwrap()
        );
    }
    r.oi("server_rss_kib", rss);
}

/// Every message counted: deliveries owed (each counting connection ever open x what its
/// publishers sent, from the first message to the end of the drain) against those received.
fn accounting(e: &Engine, r: &mut Report) {
    let expected = e.expected_total();
    let received = e.c.delivered;
    r.i("expected_deliveries", expected);
    r.i("received_deliveries", received);
    r.i("missing_deliveries", expected as i64 - received as i64);
    if expected != received {
        eprintln!("loadgen: WARNING: {received} deliveries received, {expected} expected");
    }
}

/// Redis commands run during the measured phase (INFO commandstats delta), in total, per
/// broadcast published, and per command.
fn redis_cmds(
    r: &mut Report,
    a: Option<Result<redisstat::Calls, String>>,
    b: Option<Result<redisstat::Calls, String>>,
    sent: u64,
) {
    let d = match (a, b) {
        (Some(Ok(a)), Some(Ok(b))) => {
            let mut d = redisstat::delta(&a, &b);
            d.remove("info"); // our own snapshot
            Some(d)
        }
        (Some(Err(e)), _) | (_, Some(Err(e))) => {
            eprintln!("loadgen: {e}");
            None
        }
        _ => None,
    };
    let total = d.as_ref().map(|d| d.values().sum::<u64>());
    r.oi("redis_cmds_total", total);
    r.of(
        "redis_cmds_per_broadcast",
        total.filter(|_| sent > 0).map(|t| t as f64 / sent as f64),
    );
    let per: Vec<(String, i64)> = d
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v as i64))
        .collect();
    r.obj("redis_cmds", per);
}

/// Received data-message bytes between two counter snapshots: on the wire (frame headers
/// included) and after inflating, per delivery, and their ratio.
fn bytes_report(r: &mut Report, c0: &Counters, c1: &Counters) {
    let wire = c1.wire_bytes - c0.wire_bytes;
    let infl = c1.inflated_bytes - c0.inflated_bytes;
    let frames = c1.data_frames - c0.data_frames;
    let per = |x: u64| (frames > 0).then(|| x as f64 / frames as f64);
    r.i("bytes_received_wire", wire);
    r.i("bytes_received_inflated", infl);
    r.of("wire_bytes_per_delivery", per(wire));
    r.of("inflated_bytes_per_delivery", per(infl));
    r.of(
        "compression_ratio",
        (wire > 0).then(|| infl as f64 / wire as f64),
    );
    r.i(
        "messages_compressed",
        c1.compressed_msgs - c0.compressed_msgs,
    );
}

fn open_or_die(e: &mut Engine, specs: Vec<Spec>, r: &mut Report) -> bool {
    let n = specs.len();
    if e.node_for.len() < n {
        let nodes = e.node_count();
        e.node_for = (0..n).map(|i| (i % nodes) as u16).collect();
    }
    let o = e.open_all(specs);
    r.i("connections", o.opened);
    r.f("connect_s", o.secs);
    r.f("handshakes_per_s", o.opened as f64 / o.secs.max(1e-9));
    r.i("deflate_negotiated", e.deflate_negotiated);
    r.i(
        "deflate_server_no_context_takeover",
        e.deflate_no_context_takeover,
    );
    if o.failed > 0 || o.opened < n {
        eprintln!(
            "loadgen: {} of {n} connections failed to open",
            n - o.opened
        );
    }
    o.opened > 0
}

fn settle(e: &mut Engine, c: &Common) {
    e.run_for(Duration::from_secs_f64(c.settle));
}

fn run() -> Result<u8, String> {
    let a = Args::parse()?;
    let nofile = raise_nofile();
    let _ = now_ns();
    let mut r = Report::default();
    let sc = a.scenario.clone();
    let c;
    let mut e;
    match sc.as_str() {
        "storm" => return storm::main(&a),
        "flood" => return flood::main(&a),
        "stalled" => return stalled::main(&a),
        "fanout" => {
            let mut known = COMMON.to_vec();
            known.extend([
                "subscribers",
                "rate",
                "window",
                "envelope",
                "transport",
                "publishers",
            ]);
            a.take_known(&known)?;
            c = common(&a, Kind::Binary)?;
            let sse = match a.flags.get("transport").map(String::as_str) {
                None | Some("ws") => false,
                Some("sse") if c.envelope != Envelope::Json => {
                    return Err("--transport sse needs --envelope json".into())
                }
                Some("sse") if c.deflate => {
                    return Err("--transport sse: event streams are never compressed".into())
                }
                Some("sse") => true,
                Some(v) => return Err(format!("--transport: {v:?} is neither ws nor sse")),
            };
            let n: usize = a.get("subscribers", 1000)?;
            let max = a.has("max");
            let rate: f64 = a.get("rate", 0.0)?;
            if max == (rate > 0.0) {
                return Err("fanout needs exactly one of --rate R or --max".into());
            }
            let window: u64 = a.get("window", 16)?;
            let pubs: u32 = a.get("publishers", 1u32)?;
            if pubs == 0 {
                return Err("--publishers must be at least 1".into());
            }
            head(&mut r, "fanout", &c);
            r.i("subscribers", n);
            r.i("publishers", pubs);
            r.s("mode", if max { "max" } else { "rate" });
            r.of("rate", (!max).then_some(rate));
            r.oi("window", max.then_some(window));
            r.i("size", c.size);
            r.s("transport", if sse { "sse" } else { "ws" });
            e = engine(&c);
            e.sse_subscribers = sse;
            // Publishers first (conns and ids 0..P), then the subscribers; with several nodes
            // both are spread round-robin (connection i on node i % nodes).
            let mut specs: Vec<Spec> = (0..pubs)
                .map(|_| Spec {
                    room: "fanout".into(),
                    pub_base: 0,
                    n_pubs: pubs,
                    ignore: true,
                })
                .collect();
            specs.extend((0..n).map(|_| Spec {
                room: "fanout".into(),
                pub_base: 0,
                n_pubs: pubs,
                ignore: false,
            }));
            if !open_or_die(&mut e, specs, &mut r) {
                return Err("no connection opened".into());
            }
            settle(&mut e, &c);
            let pubs = pubs as u64;
            if max {
                e.start(Traffic::FanoutMax { window, pubs });
            } else {
                e.start(Traffic::FanoutRate {
                    t0: now_ns(),
                    period_ns: 1e9 / rate,
                    k: 0,
                    pubs,
                });
            }
            measure(&mut e, &c, &mut r);
        }
        "rooms" => {
            let mut known = COMMON.to_vec();
            known.extend(["clients", "room-size", "rate", "envelope"]);
            a.take_known(&known)?;
            c = common(&a, Kind::Binary)?;
            let n: usize = a.get("clients", 2000)?;
            let k: usize = a.get("room-size", 10)?;
            let rate: f64 = a.get("rate", 5.0)?;
            if k == 0 || !n.is_multiple_of(k) || rate <= 0.0 {
                return Err(
                    "rooms: --clients must be a multiple of --room-size, --rate > 0".into(),
                );
            }
            head(&mut r, "rooms", &c);
            r.i("clients", n);
            r.i("room_size", k);
            r.f("rate", rate);
            r.i("size", c.size);
            e = engine(&c);
            let specs = (0..n)
                .map(|i| Spec {
                    room: format!("room{}", i / k),
                    pub_base: (i / k * k) as u32,
                    n_pubs: k as u32,
                    ignore: false,
                })
                .collect();
            if !open_or_die(&mut e, specs, &mut r) {
                return Err("no connection opened".into());
            }
            settle(&mut e, &c);
            e.start(Traffic::Rooms {
                t0: now_ns(),
                period_ns: 1e9 / (rate * n as f64),
                j: 0,
            });
            measure(&mut e, &c, &mut r);
        }
        "echo" => {
            let mut known = COMMON.to_vec();
            known.extend(["connections", "envelope"]);
            a.take_known(&known)?;
            c = common(&a, Kind::Binary)?;
            let n: usize = a.get("connections", 100)?;
            head(&mut r, "echo", &c);
            r.i("size", c.size);
            e = engine(&c);
            let specs = (0..n)
                .map(|i| Spec {
                    room: format!("echo{i}"),
                    pub_base: i as u32,
                    n_pubs: 1,
                    ignore: false,
                })
                .collect();
            if !open_or_die(&mut e, specs, &mut r) {
                return Err("no connection opened".into());
            }
            settle(&mut e, &c);
            e.start(Traffic::Echo);
            measure(&mut e, &c, &mut r);
            // In this scenario a delivery is a completed round trip and latency is the RTT.
            let rt = r.fields.iter().find_map(|(k, v)| match v {
                V::F(x) if k == "deliveries_per_s" => Some(*x),
                _ => None,
            });
            r.of("round_trips_per_s", rt);
        }
        "idle" => {
            let mut known = COMMON.to_vec();
            known.extend(["connections", "hold", "room-size"]);
            a.take_known(&known)?;
            let bcast = a.has("broadcast-once");
            c = common(&a, if bcast { Kind::Json } else { Kind::Binary })?;
            let n: usize = a.get("connections", 19000)?;
            let hold: f64 = a.get("hold", 5.0)?;
            let k: usize = a.get("room-size", 0)?;
            head(&mut r, "idle", &c);
            r.i("room_size", k);
            r.f("hold_s", hold);
            r.i("broadcast_once", bcast as u8);
            if bcast {
                r.i("size", c.size);
            }
            let pid = c.server_pid.as_deref();
            let before = pid.and_then(rss_kib);
            e = engine(&c);
            // The first connection of each room publishes (--broadcast-once).
            let first = |i: usize| i.checked_div(k).map_or(0, |r| r * k);
            let specs = (0..n)
                .map(|i| Spec {
                    room: match i.checked_div(k) {
                        None => "idle".into(), // --room-size 0: all in one room
                        Some(r) => format!("idle{r}"),
                    },
                    pub_base: first(i) as u32,
                    n_pubs: bcast as u32,
                    ignore: !bcast,
                })
                .collect();
            if !open_or_die(&mut e, specs, &mut r) {
                return Err("no connection opened".into());
            }
            let s0 = CpuSnap::take(pid);
            e.run_for(Duration::from_secs_f64(hold));
            let s1 = CpuSnap::take(pid);
            let after = pid.and_then(rss_kib);
            let sh = share(&s0, &s1);
            r.i("open_at_end", e.open_count);
            r.oi("server_rss_before_kib", before);
            r.oi("server_rss_after_kib", after);
            let per = match (before, after) {
                (Some(b), Some(a)) if e.open_count > 0 => {
                    Some((a as f64 - b as f64) / e.open_count as f64)
                }
                _ => None,
            };
            r.of("rss_per_conn_kib", per);
            r.of("server_cpu", sh.server);
            r.of("loadgen_cpu", sh.me);
            host(&mut r, &sh);
            if bcast {
                // One message from the first connection of each room to the room; wait until
                // every connection has it (at most 30 s), hold 1 s, measure RSS again.
                let pubs: Vec<usize> = (0..n).filter(|&i| first(i) == i).collect();
                let c0: Counters = e.c;
                let s0 = CpuSnap::take(pid);
                let t = Instant::now();
                e.publish_once(&pubs);
                let missing = e.drain(Duration::from_secs(30));
                let took = t.elapsed().as_secs_f64();
                e.run_for(Duration::from_secs(1));
                let s1 = CpuSnap::take(pid);
                let c1: Counters = e.c;
                let after_b = pid.and_then(rss_kib);
                let sh = share(&s0, &s1);
                r.i("broadcast_publishers", pubs.len());
                r.i("broadcast_received", c1.delivered - c0.delivered);
                r.i("broadcast_missing", missing);
                r.f("broadcast_s", took);
                bytes_report(&mut r, &c0, &c1);
                r.oi("server_rss_after_broadcast_kib", after_b);
                r.of(
                    "rss_per_conn_after_broadcast_kib",
                    match (before, after_b) {
                        (Some(b), Some(a)) if e.open_count > 0 => {
                            Some((a as f64 - b as f64) / e.open_count as f64)
                        }
                        _ => None,
                    },
                );
                r.of("broadcast_server_cpu_s", sh.server.map(|x| x * sh.wall));
                r.of("broadcast_loadgen_cpu_s", sh.me.map(|x| x * sh.wall));
                if missing > 0 {
                    eprintln!("loadgen: {missing} connections did not receive the broadcast");
                }
            }
        }
        "churn" => {
            let mut known = COMMON.to_vec();
            known.extend(["connections", "cycles"]);
            a.take_known(&known)?;
            c = common(&a, Kind::Binary)?;
            let n: usize = a.get("connections", 1000)?;
            let cycles: usize = a.get("cycles", 10)?;
            head(&mut r, "churn", &c);
            r.i("connections", n);
            r.i("cycles", cycles);
            let pid = c.server_pid.as_deref();
            let before = pid.and_then(rss_kib);
            e = engine(&c);
            let s0 = CpuSnap::take(pid);
            let t = Instant::now();
            let mut opened = 0usize;
            let mut hs_secs = 0.0;
            // CPU seconds of the server and of loadgen while connections were being opened
            // (accept, upgrade, token check: the handshake), apart from the close phases.
            let mut hs_server: Option<f64> = Some(0.0);
            let mut hs_me: Option<f64> = Some(0.0);
            let mut after_first = None;
            for cy in 0..cycles {
                let specs = (0..n)
                    .map(|i| Spec {
                        room: format!("churn{i}"),
                        pub_base: 0,
                        n_pubs: 0,
                        ignore: true,
                    })
                    .collect();
                let (srv0, me0) = (pid.and_then(cpu_s), cpu_s("self"));
                let o = e.open_all(specs);
                let (srv1, me1) = (pid.and_then(cpu_s), cpu_s("self"));
                let add = |acc: Option<f64>, a: Option<f64>, b: Option<f64>| match (acc, a, b) {
                    (Some(acc), Some(a), Some(b)) => Some(acc + (b - a).max(0.0)),
                    _ => None,
                };
                hs_server = add(hs_server, srv0, srv1);
                hs_me = add(hs_me, me0, me1);
                opened += o.opened;
                hs_secs += o.secs;
                e.close_all(Duration::from_secs(10));
                e.reset_conns();
                if cy == 0 {
                    after_first = pid.and_then(rss_kib);
                }
            }
            let secs = t.elapsed().as_secs_f64();
            let s1 = CpuSnap::take(pid);
            // Let the server finish tearing down before the leak check.
            std::thread::sleep(Duration::from_millis(500));
            let after = pid.and_then(rss_kib);
            let sh = share(&s0, &s1);
            r.f("elapsed_s", secs);
            r.i("opened", opened);
            r.i("clean_closes", e.clean_closes);
            r.f("cycles_per_s", cycles as f64 / secs);
            r.f("conns_per_s", opened as f64 / secs);
            r.f("handshakes_per_s", opened as f64 / hs_secs.max(1e-9));
            // Handshake cost: server CPU while opening (summed over the cycles' connect
            // phases) per handshake, and the whole loop's server CPU (closes included).
            let hs_server = hs_server.filter(|_| pid.is_some());
            r.f("handshake_phase_s", hs_secs);
            r.of("handshake_server_cpu_s", hs_server);
            r.of(
                "handshake_server_cpu",
                hs_server.map(|s| s / hs_secs.max(1e-9)),
            );
            r.of(
                "handshake_loadgen_cpu",
                hs_me.map(|s| s / hs_secs.max(1e-9)),
            );
            r.of(
                "handshakes_per_server_cpu_s",
                hs_server.map(|s| opened as f64 / s.max(1e-9)),
            );
            r.of(
                "server_cpu_us_per_handshake",
                hs_server
                    .filter(|_| opened > 0)
                    .map(|s| s * 1e6 / opened as f64),
            );
            r.of(
                "conns_per_server_cpu_s",
                sh.server.map(|s| opened as f64 / (s * sh.wall).max(1e-9)),
            );
            r.oi("server_rss_before_kib", before);
            r.oi("server_rss_after_first_cycle_kib", after_first);
            r.oi("server_rss_after_kib", after);
            r.of(
                "rss_growth_after_first_cycle_kib",
                match (after_first, after) {
                    (Some(f), Some(a)) => Some(a as f64 - f as f64),
                    _ => None,
                },
            );
            r.of("server_cpu", sh.server);
            r.of("loadgen_cpu", sh.me);
            host(&mut r, &sh);
            // While connecting, loadgen does as much per handshake as the server: near a full
            // core it may be what limits handshakes/s (handshakes per server CPU-s still holds).
            let hs_load = hs_me.map(|s| s / hs_secs.max(1e-9));
            let saturated = hs_load.is_some_and(|m| m >= 0.9);
            r.i("loadgen_saturated", saturated as u8);
            if saturated {
                eprintln!(
                    "loadgen: WARNING: loadgen used {:.2} of a core while connecting: it may \
                     be what limits handshakes/s",
                    hs_load.unwrap()
                );
            }
        }
        other => return Err(format!("unknown scenario {other:?} (try --help)")),
    }
    r.i("nofile_limit", nofile);
    let errs = errors(&mut r, &e);
    finish(&r, &sc, &c);
    Ok(if errs > 0 { 2 } else { 0 })
}

/// Print the report: the human table, and the JSON line with --json.
fn finish(r: &Report, scenario: &str, c: &Common) {
    println!(
        "loadgen {scenario}{}",
        if c.label.is_empty() {
            String::new()
        } else {
            format!(" [{}]", c.label)
        }
    );
    print!("{}", r.human());
    if c.json {
        println!("{}", r.json());
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(1)
        }
    }
}
