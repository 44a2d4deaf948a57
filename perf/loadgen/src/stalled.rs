//! `loadgen stalled`: what clients that never read cost the server, end to end. S stalled
//! clients (a tiny SO_RCVBUF, never read after the upgrade) join the fan-out room, then the
//! usual fan-out (one publisher at --rate, N fast subscribers) runs; the server's memory is read
//! before the traffic and once the stalled clients' queues have filled: its RSS, the machine's
//! TCP memory (/proc/net/sockstat) and the server side of its sockets (`ss -tmn`: send-queue
//! bytes and buffer memory). The fast subscribers are measured as in `fanout` (latency, loss).

use std::time::{Duration, Instant};

use crate::engine::{now_ns, Spec, Traffic};
use crate::fleet::{Fleet, FleetCfg};
use crate::probe::{page_size, server_sockets, sockstat, SockSum};
use crate::procstat::rss_kib;
use crate::{Args, Report};

pub const HELP: &str =
    "  stalled --stalled S (5000) --subscribers N (100) --rate R (100) [--rcvbuf B (4096)]
          [--bound-bytes X] [--fill-timeout SECS (60)]
          S clients that never read (SO_RCVBUF B) join the fan-out room; then fanout --rate R
          with N fast subscribers. Before the traffic and once the stalled queues are full (the
          room has sent 1.25 X bytes, then the server's send queues and RSS stop growing for
          1 s; X = max_buffered_bytes + socket_unsent_bytes, the bound), reads the server's RSS,
          /proc/net/sockstat TCP memory and its sockets' send queues (ss), and reports the
          cost per stalled client; the fast subscribers' latency and loss as in fanout. Use a
          server config that keeps stalled clients open (a room class for \"fanout\" with
          slow_consumer = \"drop\") and a heartbeat longer than the run.
";

const EXTRA: &[&str] = &[
    "stalled",
    "subscribers",
    "rate",
    "rcvbuf",
    "fill-timeout",
    "bound-bytes",
];

/// Server memory at one moment.
#[derive(Clone, Copy, Default)]
struct Mem {
    rss_kib: Option<u64>,
    tcp_pages: Option<u64>,
    socks: Option<SockSum>,
}

fn mem(pid: Option<&str>, port: u16) -> Mem {
    Mem {
        rss_kib: pid.and_then(rss_kib),
        tcp_pages: sockstat().map(|s| s.mem_pages),
        socks: server_sockets(port),
    }
}

fn put(r: &mut Report, what: &str, m: &Mem) {
    r.oi(&format!("server_rss_{what}_kib"), m.rss_kib);
    r.oi(&format!("tcp_mem_pages_{what}"), m.tcp_pages);
    r.oi(&format!("server_sockets_{what}"), m.socks.map(|s| s.count));
    r.oi(
        &format!("server_send_q_bytes_{what}"),
        m.socks.map(|s| s.send_q),
    );
    r.oi(
        &format!("server_wmem_queued_bytes_{what}"),
        m.socks.map(|s| s.wmem_queued),
    );
}

/// Per stalled client: (b - a) / s for an optional pair.
fn per(a: Option<u64>, b: Option<u64>, scale: u64, s: usize) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if s > 0 => Some((b as f64 - a as f64) * scale as f64 / s as f64),
        _ => None,
    }
}

pub fn main(a: &Args) -> Result<u8, String> {
    let mut known = crate::COMMON.to_vec();
    known.extend(EXTRA);
    a.take_known(&known)?;
    let c = crate::common(a, crate::payload::Kind::Binary)?;
    if c.tls.is_some() {
        return Err("stalled: ws:// only (its clients speak plain TCP)".into());
    }
    let s: usize = a.get("stalled", 5000)?;
    let n: usize = a.get("subscribers", 100)?;
    let rate: f64 = a.get("rate", 100.0)?;
    let rcvbuf: i32 = a.get("rcvbuf", 4096)?;
    let fill_timeout = Duration::from_secs_f64(a.get("fill-timeout", 60.0)?);
    let bound: Option<u64> = a
        .flags
        .get("bound-bytes")
        .map(|v| v.parse())
        .transpose()
        .map_err(|_| "--bound-bytes: not a number")?;
    if rate <= 0.0 {
        return Err("--rate must be > 0".into());
    }
    let pid = c.server_pid.clone();
    let port = c.dst.port();
    let mut r = Report::default();
    crate::head(&mut r, "stalled", &c);
    r.i("stalled", s);
    r.i("subscribers", n);
    r.f("rate", rate);
    r.i("size", c.size);
    r.i("stalled_rcvbuf", rcvbuf);

    // The stalled clients: upgraded into the room, then never read again.
    let mut fleet = Fleet::new(FleetCfg {
        dst: c.dst,
        host: c.host_header.clone(),
        sources: c.sources,
        base: Duration::from_millis(500),
        cap: Duration::from_secs(20),
        handshake_timeout: Duration::from_secs(10),
        initial_inflight: c.inflight,
        rcvbuf: Some(rcvbuf),
        seed: 0x57a11,
    })
    .map_err(|e| format!("poll: {e}"))?;
    fleet.reconnect = false;
    fleet.add((0..s).map(|_| "fanout".to_string()));
    if !fleet.run_until(Duration::from_secs(60), |f| f.open == s) {
        return Err(format!(
            "only {} of {s} stalled clients connected",
            fleet.open
        ));
    }
    let frozen = fleet.freeze();

    let mut e = crate::engine(&c);
    let mut specs = vec![Spec {
        room: "fanout".into(),
        pub_base: 0,
        n_pubs: 1,
        ignore: true,
    }];
    specs.extend((0..n).map(|_| Spec {
        room: "fanout".into(),
        pub_base: 0,
        n_pubs: 1,
        ignore: false,
    }));
    if !crate::open_or_die(&mut e, specs, &mut r) {
        return Err("no fast connection opened".into());
    }
    crate::settle(&mut e, &c);
    let before = mem(pid.as_deref(), port);
    put(&mut r, "before", &before);

    // Traffic until the stalled queues are full: at least as long as it takes the room to
    // send --bound-bytes (1.25x, + 1 s), then until the server's send-queue bytes (ss) and its
    // RSS each grow by under 1 % over a whole second (or --fill-timeout).
    e.start(Traffic::FanoutRate {
        t0: now_ns(),
        period_ns: 1e9 / rate,
        k: 0,
        pubs: 1,
    });
    let t = Instant::now();
    let min_fill = bound.map_or(0.0, |b| 1.25 * b as f64 / (rate * c.size as f64) + 1.0);
    let sample = || {
        (
            server_sockets(port).map_or(0, |x| x.send_q),
            pid.as_deref().and_then(rss_kib).unwrap_or(0),
        )
    };
    let grew = |a: u64, b: u64| b == 0 || b.saturating_sub(a) * 100 >= b;
    let mut last = sample();
    let mut filled = false;
    while t.elapsed() < fill_timeout {
        e.run_for(Duration::from_secs(1));
        let now = sample();
        if s == 0
            || (t.elapsed().as_secs_f64() >= min_fill
                && !grew(last.0, now.0)
                && !grew(last.1, now.1))
        {
            filled = true;
            break;
        }
        last = now;
    }
    r.f("fill_s", t.elapsed().as_secs_f64());
    r.i("filled", filled as u8);
    let full = mem(pid.as_deref(), port);
    put(&mut r, "filled", &full);
    let page = page_size();
    r.of(
        "rss_per_stalled_bytes",
        per(before.rss_kib, full.rss_kib, 1024, s),
    );
    r.of(
        "tcp_mem_per_stalled_bytes",
        per(before.tcp_pages, full.tcp_pages, page, s),
    );
    r.of(
        "server_send_q_per_stalled_bytes",
        per(
            before.socks.map(|x| x.send_q),
            full.socks.map(|x| x.send_q),
            1,
            s,
        ),
    );
    r.of(
        "server_wmem_per_stalled_bytes",
        per(
            before.socks.map(|x| x.wmem_queued),
            full.socks.map(|x| x.wmem_queued),
            1,
            s,
        ),
    );
    // The whole cost: what the server process grew by, plus what the kernel's TCP memory grew
    // by (both ends: the stalled clients' own small receive queues are in it too).
    let total = match (
        per(before.rss_kib, full.rss_kib, 1024, s),
        per(before.tcp_pages, full.tcp_pages, page, s),
    ) {
        (Some(a), Some(b)) => Some(a + b),
        _ => None,
    };
    r.of("cost_per_stalled_bytes", total);
    r.oi("bound_bytes", bound);
    r.oi(
        "within_bound",
        bound.zip(total).map(|(b, t)| (t <= b as f64) as u64),
    );
    r.oi("server_max_sndbuf_bytes", full.socks.map(|x| x.max_sndbuf));

    // The fast subscribers, measured while the stalled clients stay full.
    crate::measure(&mut e, &c, &mut r);
    put(&mut r, "end", &mem(pid.as_deref(), port));
    let errs = crate::errors(&mut r, &e);
    drop(frozen);
    crate::finish(&r, "stalled", &c);
    Ok(if errs > 0 { 2 } else { 0 })
}
