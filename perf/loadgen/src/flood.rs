//! `loadgen flood`: hostile connections that never complete a WebSocket upgrade, kept at a
//! target count (each one the server drops is opened again, at most --reopen-rate per second):
//! `silent` sends nothing (slowloris), `halfhead` sends half a request head and stalls,
//! `garbage` sends bytes that are not HTTP. Reports what the server answered (status lines),
//! how long it kept each connection, and how many were open. Run it beside a measured
//! scenario (e.g. `loadgen fanout`) in another process; stops at --duration or SIGTERM/SIGINT.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::backoff::Rng;
use crate::engine::{connect_socket_with, now_ns};
use crate::fleet::io_kind;
use crate::hist::Hist;
use crate::{Args, Report};

pub const HELP: &str =
    "  flood   --kind silent|halfhead|garbage --connections N (15000) [--duration S (0 = until
          SIGTERM/SIGINT)] [--reopen-rate R (5000)] [--garbage-bytes B (512)]
          [--source-base A.B.C.D (127.0.1.1)] [--sources K (16)] [--ready-file PATH]
          keep N hostile connections open that never upgrade: silent (connect, send nothing),
          halfhead (half a request head, then nothing), garbage (B random bytes, not HTTP).
          Each one the server ends is opened again (at most R per second). --ready-file is
          written once all N have been opened once. Reports the server's answers by status
          line, how long it held a connection before ending it (p50/p99), open connections
          (min/max after the ramp, at the end), connect failures by kind.
";

const KNOWN: &[&str] = &[
    "url",
    "server-pid",
    "kind",
    "connections",
    "duration",
    "reopen-rate",
    "garbage-bytes",
    "source-base",
    "sources",
    "ready-file",
    "handshake-inflight",
    "label",
];

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Silent,
    HalfHead,
    Garbage,
}

/// What a flood connection sends once connected.
fn opening(kind: Kind, garbage: usize, rng: &mut Rng) -> Vec<u8> {
    match kind {
        Kind::Silent => Vec::new(),
        // A plausible upgrade request cut in the middle of a header line.
        Kind::HalfHead => {
            b"GET /ws/flood HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConn".to_vec()
        }
        // Bytes that cannot start an HTTP request (no method token: the first byte is not a
        // letter).
        Kind::Garbage => {
            let mut v: Vec<u8> = (0..garbage.max(1)).map(|_| rng.next_u64() as u8).collect();
            v[0] = 0x16; // what a TLS ClientHello starts with, on a plain-text port
            v
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum St {
    Idle,
    Connecting,
    Open,
}

struct Conn {
    stream: Option<TcpStream>,
    st: St,
    since: u64,
    out: Vec<u8>,
    /// The first bytes the server sent (its status line), if any.
    head: Vec<u8>,
}

struct Flood {
    poll: Poll,
    conns: Vec<Conn>,
    dst: SocketAddrV4,
    base: Ipv4Addr,
    sources: u32,
    kind: Kind,
    garbage: usize,
    rng: Rng,
    open: usize,
    connecting: usize,
    inflight: usize,
    /// Connections waiting to be (re)opened.
    idle: Vec<usize>,
    /// Token bucket for re-opens.
    tokens: f64,
    rate: f64,
    last_refill: u64,
    opened: u64,
    answers: BTreeMap<String, u64>,
    ends: BTreeMap<String, u64>,
    connect_failures: BTreeMap<String, u64>,
    held: Hist,
}

impl Flood {
    fn src(&self, i: usize) -> Ipv4Addr {
        let b = u32::from(self.base);
        Ipv4Addr::from(b + (i as u32 % self.sources.max(1)))
    }

    fn start(&mut self, i: usize) {
        match connect_socket_with(Some(self.src(i)), self.dst, None) {
            Ok(mut s) => {
                if let Err(e) = self.poll.registry().register(
                    &mut s,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    *self
                        .connect_failures
                        .entry(format!("register: {e}"))
                        .or_default() += 1;
                    self.idle.push(i);
                    return;
                }
                let c = &mut self.conns[i];
                c.stream = Some(s);
                c.st = St::Connecting;
                c.since = now_ns();
                self.connecting += 1;
            }
            Err(e) => {
                *self.connect_failures.entry(io_kind(&e)).or_default() += 1;
                self.idle.push(i);
            }
        }
    }

    fn connected(&mut self, i: usize) {
        let Some(s) = self.conns[i].stream.as_ref() else {
            return;
        };
        let err = match s.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match s.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Some(e),
            },
        };
        self.connecting -= 1;
        if let Some(e) = err {
            *self.connect_failures.entry(io_kind(&e)).or_default() += 1;
            self.conns[i].st = St::Open; // so that end() unwinds it
            self.open += 1;
            return self.end(i, None);
        }
        self.opened += 1;
        self.open += 1;
        let out = opening(self.kind, self.garbage, &mut self.rng);
        let c = &mut self.conns[i];
        c.st = St::Open;
        c.since = now_ns();
        c.out = out;
        self.flush(i);
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(s) = c.stream.as_mut() else {
            return;
        };
        while !c.out.is_empty() {
            match s.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.end(i, Some(io_kind(&e))),
            }
        }
    }

    fn readable(&mut self, i: usize, buf: &mut [u8]) {
        loop {
            let Some(s) = self.conns[i].stream.as_mut() else {
                return;
            };
            match s.read(buf) {
                Ok(0) => return self.end(i, Some("eof".into())),
                Ok(n) => {
                    let h = &mut self.conns[i].head;
                    let want = 64usize.saturating_sub(h.len());
                    h.extend_from_slice(&buf[..n.min(want)]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.end(i, Some(io_kind(&e))),
            }
        }
    }

    /// The server ended connection `i` (or it failed): count how, queue it to be opened again.
    fn end(&mut self, i: usize, how: Option<String>) {
        let now = now_ns();
        let c = &mut self.conns[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if c.st == St::Open {
            self.open -= 1;
            if let Some(how) = how {
                let line = String::from_utf8_lossy(&c.head);
                let status = match line.split_whitespace().nth(1) {
                    Some(code) if line.starts_with("HTTP/") => format!("HTTP {code}"),
                    _ if c.head.is_empty() => "no answer".to_string(),
                    _ => "other bytes".to_string(),
                };
                *self.answers.entry(status).or_default() += 1;
                *self.ends.entry(how).or_default() += 1;
                self.held.record(now.saturating_sub(c.since));
            }
        } else if c.st == St::Connecting {
            self.connecting -= 1;
        }
        c.st = St::Idle;
        c.head.clear();
        c.out = Vec::new();
        self.idle.push(i);
    }

    /// Re-open idle connections as the bucket allows (and at most `inflight` connecting).
    fn refill(&mut self, ramping: bool) {
        let now = now_ns();
        let dt = (now - self.last_refill) as f64 / 1e9;
        self.last_refill = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0));
        while self.connecting < self.inflight {
            if !ramping && self.tokens < 1.0 {
                break;
            }
            let Some(i) = self.idle.pop() else {
                break;
            };
            if !ramping {
                self.tokens -= 1.0;
            }
            self.start(i);
        }
    }
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    match s {
        "silent" => Ok(Kind::Silent),
        "halfhead" => Ok(Kind::HalfHead),
        "garbage" => Ok(Kind::Garbage),
        _ => Err(format!("--kind: {s:?} is not silent, halfhead or garbage")),
    }
}

pub fn main(a: &Args) -> Result<u8, String> {
    a.take_known(KNOWN)?;
    let c = crate::common(a, crate::payload::Kind::Binary)?;
    if c.tls.is_some() {
        return Err("flood: ws:// only (its clients speak plain TCP)".into());
    }
    let kind_name: String = a.get("kind", "silent".to_string())?;
    let kind = parse_kind(&kind_name)?;
    let n: usize = a.get("connections", 15_000)?;
    let duration: f64 = a.get("duration", 0.0)?;
    let base: Ipv4Addr = a.get("source-base", Ipv4Addr::new(127, 0, 1, 1))?;
    let sources: u32 = a.get("sources", 16)?;
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let mut f = Flood {
        poll: Poll::new().map_err(|e| format!("poll: {e}"))?,
        conns: (0..n)
            .map(|_| Conn {
                stream: None,
                st: St::Idle,
                since: 0,
                out: Vec::new(),
                head: Vec::new(),
            })
            .collect(),
        dst: c.dst,
        base,
        sources,
        kind,
        garbage: a.get("garbage-bytes", 512)?,
        rng: Rng::new(0xf100d),
        open: 0,
        connecting: 0,
        inflight: c.inflight,
        idle: (0..n).rev().collect(),
        tokens: 0.0,
        rate: a.get("reopen-rate", 5000.0)?,
        last_refill: now_ns(),
        opened: 0,
        answers: BTreeMap::new(),
        ends: BTreeMap::new(),
        connect_failures: BTreeMap::new(),
        held: Hist::new(),
    };
    let mut events = Events::with_capacity(8192);
    let mut buf = vec![0u8; 16 * 1024];
    let t0 = now_ns();
    let end = (duration > 0.0).then(|| t0 + (duration * 1e9) as u64);
    // Ramp: the first N opens go as fast as `inflight` allows; then re-opens are paced.
    let mut ramp_s = None;
    let (mut open_min, mut open_max) = (usize::MAX, 0usize);
    let ready_file = a.flags.get("ready-file").cloned();
    while !STOP.load(Ordering::Relaxed) && end.is_none_or(|e| now_ns() < e) {
        let ramping = ramp_s.is_none();
        f.refill(ramping);
        if ramping && f.opened as usize >= n {
            ramp_s = Some((now_ns() - t0) as f64 / 1e9);
            if let Some(p) = &ready_file {
                std::fs::write(p, format!("{}\n", f.open)).map_err(|e| format!("{p}: {e}"))?;
            }
        } else if ramp_s.is_some() {
            open_min = open_min.min(f.open);
            open_max = open_max.max(f.open);
        }
        match f.poll.poll(&mut events, Some(Duration::from_millis(10))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        for ev in events.iter() {
            let i = ev.token().0;
            match f.conns[i].st {
                St::Connecting => f.connected(i),
                St::Open => {
                    if ev.is_writable() {
                        f.flush(i);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        f.readable(i, &mut buf);
                    }
                }
                St::Idle => {}
            }
        }
    }
    let secs = (now_ns() - t0) as f64 / 1e9;
    let mut r = Report::default();
    r.s("scenario", "flood");
    r.s("label", &c.label);
    r.s("url", &c.url);
    r.s("kind", &kind_name);
    r.i("connections", n);
    r.f("reopen_rate", f.rate);
    r.f("elapsed_s", secs);
    r.of("ramp_s", ramp_s);
    r.i("opened", f.opened);
    r.f("opened_per_s", f.opened as f64 / secs.max(1e-9));
    r.i("open_at_end", f.open);
    r.oi(
        "open_min_after_ramp",
        (open_min != usize::MAX).then_some(open_min as u64),
    );
    r.i("open_max_after_ramp", open_max);
    let ended: u64 = f.ends.values().sum();
    r.i("ended_by_server", ended);
    r.obj("ended_by_kind", obj(&f.ends));
    r.obj("server_answers", obj(&f.answers));
    r.f("held_p50_ms", f.held.quantile(0.5) as f64 / 1e6);
    r.f("held_p99_ms", f.held.quantile(0.99) as f64 / 1e6);
    r.f("held_max_ms", f.held.max as f64 / 1e6);
    r.obj("connect_failures_by_kind", obj(&f.connect_failures));
    r.oi(
        "server_fds_at_end",
        c.server_pid.as_deref().and_then(crate::probe::fds),
    );
    crate::finish(&r, "flood", &c);
    Ok(0)
}

fn obj(m: &BTreeMap<String, u64>) -> Vec<(String, i64)> {
    m.iter().map(|(k, v)| (k.clone(), *v as i64)).collect()
}
