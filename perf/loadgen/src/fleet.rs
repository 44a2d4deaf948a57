//! A fleet of raw-room WebSocket clients that come back when they lose their connection, the
//! way well-behaved clients do: full-jitter exponential backoff (backoff.rs) floored by the
//! server's `Retry-After`. Each client is a small state machine on one mio poller; every
//! connection attempt and every loss is counted by kind. Used by `loadgen storm` (reconnect
//! storm after a server restart) and `loadgen fanout --stalled` (clients that never read).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::backoff::{self, Rng};
use crate::engine::{connect_socket_with, now_ns, WS_ACCEPT, WS_KEY};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum St {
    /// Waiting for its (re)connect time, or queued for the first connect.
    Wait,
    Connecting,
    Handshake,
    Open,
    /// Sent close 1000, waiting for the server's close and FIN.
    Closing,
    /// Finished for good (closed by us, or frozen: see `freeze`).
    Done,
}

pub struct Client {
    stream: Option<TcpStream>,
    pub st: St,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    room: String,
    /// When the current attempt started (ns).
    started: u64,
    /// When the last loss was seen (ns); 0: never lost.
    pub lost_at: u64,
    /// Failed attempts since the last loss (or since the start).
    attempt: u32,
    pub attempts_total: u32,
    /// Holds one of the `initial_inflight` slots (a first connect in progress).
    slot: bool,
    /// Data frames received while `counting` is set.
    pub got: u64,
}

/// Settings of a fleet.
pub struct FleetCfg {
    pub dst: SocketAddrV4,
    pub host: String,
    /// Connections are spread over 127.0.0.1 .. 127.0.0.N (0: the kernel picks).
    pub sources: u32,
    pub base: Duration,
    pub cap: Duration,
    pub handshake_timeout: Duration,
    /// Most first connects in flight at once (reconnects are not limited: each client acts
    /// on its own, as real ones do).
    pub initial_inflight: usize,
    /// SO_RCVBUF for every connection (None: the kernel's default and autotuning).
    pub rcvbuf: Option<i32>,
    pub seed: u64,
}

pub struct Fleet {
    cfg: FleetCfg,
    poll: Poll,
    events: Events,
    pub clients: Vec<Client>,
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    queued: VecDeque<usize>,
    initial_connecting: usize,
    rng: Rng,
    rbuf: Vec<u8>,
    last_sweep: u64,
    /// Reconnect when a connection is lost (false: a lost client is done).
    pub reconnect: bool,
    /// Count received data frames in `Client::got`.
    pub counting: bool,
    pub open: usize,
    /// Failed connection attempts by kind ("refused", "timeout", "HTTP 503", "reset", "eof" ...).
    pub failures: BTreeMap<String, u64>,
    /// While set (the cut command is running), failures go to `failures_during_cut` instead
    /// (and so do those of attempts begun before `cut_end`): attempts caught by the cut itself (a killed server's listener resets the connections
    /// still in its accept queue when it is finally released; `ss -K` kills handshakes it
    /// meets while it walks the sockets).
    pub cut_running: bool,
    /// When the cut command ended: an attempt begun before then still counts as caught by it.
    pub cut_end: Option<u64>,
    pub failures_during_cut: BTreeMap<String, u64>,
    /// Failures other than "refused" (nothing listening) and 429/503 with Retry-After.
    pub unexpected: u64,
    pub unexpected_during_cut: u64,
    /// Refusals (non-101 answers, outside the cut) that carried a `Retry-After` in seconds.
    pub refusals_with_retry_after: u64,
    /// Of those, 429 or 503: the refusals a well-behaved server gives in a storm.
    pub ok_refusals: u64,
    /// Losses of open connections by kind ("eof", "reset", "close 1001" ...).
    pub losses: BTreeMap<String, u64>,
    /// Per-client time from a loss to being open again (ns), for every reconnect.
    pub reconnect_ns: Vec<u64>,
    /// When each reconnect completed (ns since the process epoch).
    pub back_at: Vec<u64>,
    pub pings: u64,
    pub protocol_errors: u64,
}

impl Fleet {
    pub fn new(cfg: FleetCfg) -> io::Result<Self> {
        let seed = cfg.seed;
        Ok(Fleet {
            cfg,
            poll: Poll::new()?,
            events: Events::with_capacity(8192),
            clients: Vec::new(),
            timers: BinaryHeap::new(),
            queued: VecDeque::new(),
            initial_connecting: 0,
            rng: Rng::new(seed),
            rbuf: vec![0u8; 64 * 1024],
            last_sweep: 0,
            reconnect: true,
            counting: false,
            open: 0,
            failures: BTreeMap::new(),
            cut_running: false,
            cut_end: None,
            failures_during_cut: BTreeMap::new(),
            unexpected: 0,
            unexpected_during_cut: 0,
            refusals_with_retry_after: 0,
            ok_refusals: 0,
            losses: BTreeMap::new(),
            reconnect_ns: Vec::new(),
            back_at: Vec::new(),
            pings: 0,
            protocol_errors: 0,
        })
    }

    /// Add clients for `rooms` and queue their first connects.
    pub fn add(&mut self, rooms: impl IntoIterator<Item = String>) {
        for room in rooms {
            self.queued.push_back(self.clients.len());
            self.clients.push(Client {
                stream: None,
                st: St::Wait,
                inbuf: Vec::new(),
                out: Vec::new(),
                room,
                started: 0,
                lost_at: 0,
                attempt: 0,
                attempts_total: 0,
                slot: false,
                got: 0,
            });
        }
    }

    /// Run until `done(self)` or `max` has passed; returns whether `done` held.
    pub fn run_until(&mut self, max: Duration, mut done: impl FnMut(&Fleet) -> bool) -> bool {
        let end = now_ns() + max.as_nanos() as u64;
        loop {
            if done(self) {
                return true;
            }
            let now = now_ns();
            if now >= end {
                return false;
            }
            self.step(Duration::from_nanos((end - now).min(50_000_000)));
        }
    }

    /// One poll (at most `max`), the events, due timers, the handshake-timeout sweep.
    pub fn step(&mut self, max: Duration) {
        let now = now_ns();
        let mut wait = max;
        if let Some(Reverse((due, _))) = self.timers.peek() {
            wait = wait.min(Duration::from_nanos(due.saturating_sub(now)));
        }
        self.start_queued();
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
            if e.kind() != io::ErrorKind::Interrupted {
                eprintln!("loadgen: poll: {e}");
            }
        }
        for ev in events.iter() {
            let i = ev.token().0;
            if i >= self.clients.len() {
                continue;
            }
            match self.clients[i].st {
                St::Connecting => self.on_connected(i),
                St::Handshake | St::Open | St::Closing => {
                    if ev.is_writable() {
                        self.flush(i);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.on_readable(i);
                    }
                }
                St::Wait | St::Done => {}
            }
        }
        self.events = events;
        let now = now_ns();
        while let Some(&Reverse((due, i))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            if self.clients[i].st == St::Wait {
                self.connect(i);
            }
        }
        let now = now_ns();
        if now - self.last_sweep > 100_000_000 {
            self.last_sweep = now;
            self.sweep(now);
        }
    }

    fn start_queued(&mut self) {
        while self.initial_connecting < self.cfg.initial_inflight {
            let Some(i) = self.queued.pop_front() else {
                break;
            };
            self.initial_connecting += 1;
            self.clients[i].slot = true;
            self.connect(i);
        }
    }

    /// Attempts that outlived the handshake timeout fail as "timeout".
    fn sweep(&mut self, now: u64) {
        let limit = self.cfg.handshake_timeout.as_nanos() as u64;
        for i in 0..self.clients.len() {
            let c = &self.clients[i];
            if matches!(c.st, St::Connecting | St::Handshake)
                && now.saturating_sub(c.started) > limit
            {
                self.fail(i, "timeout".into(), None);
            }
        }
    }

    fn src(&self, i: usize) -> Option<Ipv4Addr> {
        (self.cfg.sources > 0 && self.cfg.dst.ip().is_loopback())
            .then(|| Ipv4Addr::new(127, 0, 0, 1 + (i as u32 % self.cfg.sources) as u8))
    }

    fn connect(&mut self, i: usize) {
        let now = now_ns();
        self.clients[i].attempts_total += 1;
        self.clients[i].started = now;
        match connect_socket_with(self.src(i), self.cfg.dst, self.cfg.rcvbuf) {
            Ok(mut s) => {
                let r = self.poll.registry().register(
                    &mut s,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                );
                let c = &mut self.clients[i];
                c.stream = Some(s);
                c.st = St::Connecting;
                if let Err(e) = r {
                    self.fail(i, format!("register: {e}"), None);
                }
            }
            Err(e) => {
                self.clients[i].st = St::Connecting;
                self.fail(i, io_kind(&e), None);
            }
        }
    }

    fn on_connected(&mut self, i: usize) {
        let Some(s) = self.clients[i].stream.as_ref() else {
            return;
        };
        match s.take_error() {
            Ok(Some(e)) | Err(e) => return self.fail(i, io_kind(&e), None),
            Ok(None) => {}
        }
        match s.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
            Err(e) => return self.fail(i, io_kind(&e), None),
        }
        let c = &mut self.clients[i];
        let req = format!(
            "GET /ws/{} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            c.room, self.cfg.host
        );
        c.out.extend_from_slice(req.as_bytes());
        c.st = St::Handshake;
        self.flush(i);
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
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
                Err(e) => return self.broken(i, io_kind(&e)),
            }
        }
    }

    fn on_readable(&mut self, i: usize) {
        let mut buf = std::mem::take(&mut self.rbuf);
        while let Some(s) = self.clients[i].stream.as_mut() {
            match s.read(&mut buf) {
                Ok(0) => {
                    self.broken(i, "eof".into());
                    break;
                }
                Ok(n) => {
                    self.clients[i].inbuf.extend_from_slice(&buf[..n]);
                    self.ingest(i);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken(i, io_kind(&e));
                    break;
                }
            }
        }
        self.rbuf = buf;
    }

    fn ingest(&mut self, i: usize) {
        if self.clients[i].st == St::Handshake {
            let c = &mut self.clients[i];
            let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if c.inbuf.len() > 16384 {
                    self.fail(i, "oversized response".into(), None);
                }
                return;
            };
            let head = String::from_utf8_lossy(&c.inbuf[..end]).into_owned();
            c.inbuf.drain(..end + 4);
            match judge_response(&head) {
                Answer::Upgraded => self.opened(i),
                Answer::BadAccept => return self.fail(i, "bad accept".into(), None),
                Answer::Refused {
                    status,
                    retry_after,
                } => {
                    let ok = retry_after.is_some() && (status == "429" || status == "503");
                    if !self.during_cut(i) {
                        self.refusals_with_retry_after += retry_after.is_some() as u64;
                        self.ok_refusals += ok as u64;
                    }
                    let kind = format!("HTTP {status}");
                    return self.fail_as(i, kind, retry_after, ok);
                }
            }
        }
        self.frames(i);
    }

    fn opened(&mut self, i: usize) {
        let now = now_ns();
        self.release_slot(i);
        let c = &mut self.clients[i];
        c.st = St::Open;
        self.open += 1;
        if c.lost_at != 0 {
            self.reconnect_ns.push(now - c.lost_at);
            self.back_at.push(now);
        }
        c.attempt = 0;
    }

    /// Whole server frames in the client's buffer: pings are answered, a close is answered and
    /// ends the connection (a loss), data frames are counted.
    fn frames(&mut self, i: usize) {
        loop {
            let c = &mut self.clients[i];
            let Some((b0, h, len, masked)) = frame_header(&c.inbuf) else {
                return;
            };
            if c.inbuf.len() < h + len {
                return;
            }
            let payload: Vec<u8> = c.inbuf[h..h + len].to_vec();
            c.inbuf.drain(..h + len);
            if masked {
                self.protocol_errors += 1;
            }
            match b0 & 0x0f {
                0x8 => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    if self.clients[i].st == St::Closing {
                        continue; // our close answered; the FIN follows
                    }
                    let c = &mut self.clients[i];
                    c.out.extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0]);
                    c.out.extend_from_slice(&code.to_be_bytes());
                    self.flush(i);
                    return self.broken(i, format!("close {code}"));
                }
                0x9 => {
                    self.pings += 1;
                    let n = payload.len().min(125);
                    let c = &mut self.clients[i];
                    c.out.extend_from_slice(&[0x8a, 0x80 | n as u8, 0, 0, 0, 0]);
                    c.out.extend_from_slice(&payload[..n]);
                    self.flush(i);
                }
                0xa | 0x0 => {}
                0x1 | 0x2 => {
                    if self.counting {
                        self.clients[i].got += 1;
                    }
                }
                _ => self.protocol_errors += 1,
            }
            if !matches!(self.clients[i].st, St::Open | St::Closing) {
                return;
            }
        }
    }

    fn release_slot(&mut self, i: usize) {
        if std::mem::take(&mut self.clients[i].slot) {
            self.initial_connecting -= 1;
        }
    }

    fn drop_stream(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.inbuf = Vec::new();
        c.out = Vec::new();
    }

    /// The connection broke: a failed attempt before the upgrade, a loss after it.
    fn broken(&mut self, i: usize, kind: String) {
        match self.clients[i].st {
            St::Connecting | St::Handshake => self.fail(i, kind, None),
            St::Open => self.lost(i, kind),
            St::Closing => {
                self.drop_stream(i);
                self.clients[i].st = St::Done;
                self.open -= 1;
            }
            St::Wait | St::Done => {}
        }
    }

    /// Whether client `i`'s current attempt may have been caught by the cut.
    fn during_cut(&self, i: usize) -> bool {
        self.cut_running
            || self
                .cut_end
                .is_some_and(|end| self.clients[i].started < end)
    }

    /// A failed attempt: count it and wait the backoff (or the server's Retry-After).
    fn fail(&mut self, i: usize, kind: String, retry_after: Option<u64>) {
        // A refused TCP connect: nothing listens (a restart's gap).
        let expected = kind == "refused";
        self.fail_as(i, kind, retry_after, expected)
    }

    /// `expected`: a failure a well-behaved server causes in a storm (nothing listening, or a
    /// 429/503 with Retry-After); anything else counts in `unexpected`.
    fn fail_as(&mut self, i: usize, kind: String, retry_after: Option<u64>, expected: bool) {
        let during = self.during_cut(i);
        if !expected {
            if during {
                self.unexpected_during_cut += 1;
            } else {
                self.unexpected += 1;
            }
        }
        if std::env::var_os("LOADGEN_DEBUG").is_some() && kind != "refused" {
            let c = &self.clients[i];
            eprintln!(
                "loadgen: client {i}: {kind} in {:?} after {:.1} ms ({} bytes received)",
                c.st,
                now_ns().saturating_sub(c.started) as f64 / 1e6,
                c.inbuf.len()
            );
        }
        let m = if during {
            &mut self.failures_during_cut
        } else {
            &mut self.failures
        };
        *m.entry(kind).or_default() += 1;
        self.drop_stream(i);
        self.release_slot(i);
        let c = &mut self.clients[i];
        c.attempt += 1;
        c.st = St::Wait;
        let d = backoff::delay(
            c.attempt,
            self.cfg.base,
            self.cfg.cap,
            retry_after,
            self.rng.unit(),
        );
        self.timers
            .push(Reverse((now_ns() + d.as_nanos() as u64, i)));
    }

    /// An open connection was lost: the first retry waits uniform [0, base).
    fn lost(&mut self, i: usize, kind: String) {
        *self.losses.entry(kind).or_default() += 1;
        self.drop_stream(i);
        self.open -= 1;
        let now = now_ns();
        let c = &mut self.clients[i];
        c.lost_at = now;
        c.attempt = 0;
        if !self.reconnect {
            c.st = St::Done;
            return;
        }
        c.st = St::Wait;
        let d = backoff::delay(0, self.cfg.base, self.cfg.cap, None, self.rng.unit());
        self.timers.push(Reverse((now + d.as_nanos() as u64, i)));
    }

    /// Send one masked text frame (mask key 0: payload as is) on client `i`.
    pub fn send_text(&mut self, i: usize, text: &[u8]) {
        let n = text.len().min(125);
        let c = &mut self.clients[i];
        c.out.extend_from_slice(&[0x81, 0x80 | n as u8, 0, 0, 0, 0]);
        c.out.extend_from_slice(&text[..n]);
        self.flush(i);
    }

    /// Send close 1000 on every open connection and wait (at most `max`) for the servers'
    /// closes and FINs; returns how many did not finish.
    pub fn close_all(&mut self, max: Duration) -> usize {
        self.reconnect = false;
        for i in 0..self.clients.len() {
            if self.clients[i].st == St::Open {
                let c = &mut self.clients[i];
                c.out
                    .extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
                c.st = St::Closing;
                self.flush(i);
            }
        }
        self.run_until(max, |f| f.open == 0);
        let left = self.open;
        for i in 0..self.clients.len() {
            if matches!(self.clients[i].st, St::Open | St::Closing) {
                self.drop_stream(i);
                self.clients[i].st = St::Done;
            }
        }
        self.open = 0;
        left
    }

    /// Take every open connection out of the poller and keep its socket as it is: it is never
    /// read again (a stalled client). The sockets stay open until the fleet is dropped.
    pub fn freeze(&mut self) -> Vec<TcpStream> {
        let mut out = Vec::new();
        for c in &mut self.clients {
            if c.st == St::Open {
                if let Some(mut s) = c.stream.take() {
                    let _ = self.poll.registry().deregister(&mut s);
                    out.push(s);
                }
                c.st = St::Done;
            }
        }
        self.open = 0;
        out
    }
}

/// What an upgrade response says.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Upgraded,
    BadAccept,
    Refused {
        status: String,
        retry_after: Option<u64>,
    },
}

/// Judge an HTTP response head (without the final blank line) to our upgrade request.
pub fn judge_response(head: &str) -> Answer {
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
    if status != "101" {
        return Answer::Refused {
            retry_after: backoff::retry_after(head),
            status,
        };
    }
    let accept_ok = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == WS_ACCEPT
        })
    });
    if accept_ok {
        Answer::Upgraded
    } else {
        Answer::BadAccept
    }
}

/// (first byte, header length, payload length, masked) of the frame at the start of `b`.
fn frame_header(b: &[u8]) -> Option<(u8, usize, usize, bool)> {
    if b.len() < 2 {
        return None;
    }
    let masked = b[1] & 0x80 != 0;
    let (len, h) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => {
            let x: [u8; 8] = b.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(x) as usize, 10)
        }
        n => (n as usize, 2),
    };
    Some((b[0], h + if masked { 4 } else { 0 }, len, masked))
}

/// A short, stable name for an I/O error.
pub fn io_kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::ConnectionAborted => "aborted".into(),
        io::ErrorKind::TimedOut => "timeout".into(),
        io::ErrorKind::BrokenPipe => "broken pipe".into(),
        io::ErrorKind::AddrNotAvailable => "addr not available".into(),
        k => format!("{k:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_responses() {
        let ok = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {WS_ACCEPT}");
        assert_eq!(judge_response(&ok), Answer::Upgraded);
        assert_eq!(
            judge_response("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x"),
            Answer::BadAccept
        );
        assert_eq!(
            judge_response("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2"),
            Answer::Refused {
                status: "503".into(),
                retry_after: Some(2)
            }
        );
        assert_eq!(
            judge_response("HTTP/1.1 400 Bad Request"),
            Answer::Refused {
                status: "400".into(),
                retry_after: None
            }
        );
    }

    #[test]
    fn frame_headers() {
        assert_eq!(frame_header(&[0x81]), None);
        assert_eq!(frame_header(&[0x81, 5]), Some((0x81, 2, 5, false)));
        assert_eq!(frame_header(&[0x82, 126, 1]), None);
        assert_eq!(
            frame_header(&[0x82, 126, 1, 0]),
            Some((0x82, 4, 256, false))
        );
        assert_eq!(
            frame_header(&[0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0]),
            Some((0x82, 14, 65536, true))
        );
    }
}
