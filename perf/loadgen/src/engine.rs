//! The single-threaded event loop: non-blocking sockets on one mio (epoll) poller, one shared read
//! buffer, pre-built client frames, one write per connection per loop iteration.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flate2::Decompress;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::deflate::{self, Mode};
use crate::envelope::{self, Envelope, PubTemplate, Wire};
use crate::hist::Hist;
use crate::payload::{self, Kind};
use crate::sse;

/// Nanoseconds since a process-local monotonic epoch (the timestamps carried in payloads).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

const READ_BUF: usize = 256 * 1024;
const HANDSHAKE_TIMEOUT_NS: u64 = 10_000_000_000;
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
/// RFC 6455 §1.3's sample key and its accept value.
pub(crate) const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub(crate) const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    NotStarted,
    Connecting,
    Handshake,
    /// Envelope protocol: upgraded, waiting for `welcome`, then (subscribe sent) for
    /// `subscribed`. Still counted as connecting.
    Subscribing,
    Open,
    /// We sent a close frame and wait for the server's.
    Closing,
    /// Close handshake done; waiting for the server's FIN.
    CloseAcked,
    Closed,
}

/// What one connection is for.
pub struct Spec {
    pub room: String,
    /// Publisher ids this connection expects messages from: pub_base .. pub_base + n_pubs.
    pub pub_base: u32,
    pub n_pubs: u32,
    /// Read and discard everything (the fan-out publisher's own echoes).
    pub ignore: bool,
}

struct Conn {
    stream: Option<TcpStream>,
    state: State,
    out: Vec<u8>,
    out_off: usize,
    /// Bytes kept between reads: the handshake response, or a partial frame.
    inbuf: Vec<u8>,
    blocked: bool,
    dirty: bool,
    started: u64,
    room: String,
    pub_base: u32,
    expected: Box<[u64]>,
    ignore: bool,
    /// Saw a gap in some publisher's sequence.
    lossy: bool,
    /// permessage-deflate as negotiated.
    deflate: Mode,
    /// Mode::Takeover: this connection's inflater (created on its first compressed message).
    inflater: Option<Box<Decompress>>,
    /// Index of this connection's publish template (one per room in envelope mode).
    tmpl: u32,
    /// Envelope: 0 = waiting for `welcome`, 1 = `subscribe` sent, waiting for `subscribed`.
    env_phase: u8,
    /// Envelope: the room seq expected next (`subscribed.seq + 1`, then +1 per message).
    env_next: u64,
    /// `wss://`: this connection's TLS session (created when the TCP connect completes).
    tls: Option<Box<rustls::ClientConnection>>,
    /// A Server-Sent Events subscriber (`GET /sse?rooms=R`) rather than a WebSocket.
    sse: bool,
    /// Reached State::Open at some point (counted in `expected_total` even if closed since).
    was_open: bool,
}

pub enum Traffic {
    None,
    /// Publishers conns 0..pubs (ids 0..pubs) at a fixed total rate: message k is sent by
    /// publisher k % pubs.
    FanoutRate {
        t0: u64,
        period_ns: f64,
        k: u64,
        pubs: u64,
    },
    /// Publishers conns 0..pubs, each keeping at most `window` of its publishes not yet
    /// received by every subscriber.
    FanoutMax {
        window: u64,
        pubs: u64,
    },
    /// Every connection publishes; the global schedule sends message j at t0 + j*period from
    /// connection j % n (so each connection sends every n*period, offsets evenly spread).
    Rooms {
        t0: u64,
        period_ns: f64,
        j: u64,
    },
    /// Each connection keeps one message in flight to itself.
    Echo,
}

#[derive(Default, Clone, Copy)]
pub struct Counters {
    pub delivered: u64,
    pub sent: u64,
    /// Data frames received on counting (non-ignored) connections: frame bytes on the wire
    /// (headers included), message bytes after inflating, and how many were compressed.
    pub wire_bytes: u64,
    pub inflated_bytes: u64,
    pub data_frames: u64,
    pub compressed_msgs: u64,
}

pub struct Engine {
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    rbuf: Vec<u8>,
    dirty: Vec<usize>,
    /// Publish frames: one in raw mode (the room is in the URL), one per room in envelope mode.
    tmpls: Vec<PubTemplate>,
    tmpl_of_room: HashMap<String, u32>,
    /// The raw payload (all header fields zero) the templates are built around.
    payload: Vec<u8>,
    size: usize,
    kind: Kind,
    env: Envelope,
    /// How the payload sits in a publish template (raw, base64, escaped JSON text).
    wire: Wire,
    /// JSON payload: offsets (from the template's payload offset) of the x/y digits rewritten
    /// in every message, and of the timestamp / seq / publisher-id fields.
    vary_at: Vec<usize>,
    json_at: [usize; 3],
    rng: u64,
    /// Offer permessage-deflate in the handshake.
    pub offer_deflate: bool,
    /// `wss://`: the TLS client configuration (None: plain `ws://`).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Scratch plaintext of TLS reads.
    plain: Vec<u8>,
    /// Bearer tokens: connection k (in the order handshakes start, over the engine's whole
    /// life, churn cycles included) sends `tokens[k % len]`. Empty: no Authorization header.
    pub tokens: Vec<String>,
    next_token: usize,
    /// `--transport sse`: counting (non-ignored) connections open `GET /sse?rooms=R` event
    /// streams instead of WebSockets (JSON envelope only); ignored ones (publishers) stay WS.
    pub sse_subscribers: bool,
    /// Scratch for the joined data of a multi-line SSE event.
    sse_scratch: Vec<u8>,
    /// SSE: comment lines received (`: ping`, the heartbeat).
    pub sse_comments: u64,
    /// Inflater shared by every Mode::Reset connection (reset after each message, memo of
    /// identical frames unless `set_inflate_memo(false)`). None only while in use.
    shared_inflater: Option<Box<deflate::SharedInflater>>,
    /// Scratch output of inflating.
    zbuf: Vec<u8>,
    pub deflate_negotiated: u64,
    pub deflate_no_context_takeover: u64,
    pub inflate_errors: u64,
    next_seq: Vec<u64>,
    path_prefix: String,
    sources: u32,
    pub handshake_inflight: usize,
    pub traffic: Traffic,
    pub sending: bool,
    pub measuring: bool,
    pub hist: Hist,
    pub c: Counters,
    pub gaps: u64,
    /// Connections that saw at least one gap.
    pub lossy_conns: u64,
    pub out_of_order: u64,
    pub foreign: u64,
    pub short_msgs: u64,
    pub pings: u64,
    /// Close frames initiated by the server, by close code.
    pub server_closes: BTreeMap<u16, u64>,
    /// Close handshakes we started that completed.
    pub clean_closes: u64,
    /// Connections whose close handshake or FIN did not arrive in time (dropped).
    pub close_timeouts: u64,
    pub eof_errors: u64,
    pub io_errors: u64,
    pub connect_errors: u64,
    pub handshake_failures: BTreeMap<String, u64>,
    pub protocol_errors: u64,
    /// Envelope: room seq numbers skipped (a subscriber got seq n+k after n, k > 1: k-1 lost).
    pub seq_gaps: u64,
    /// Envelope: a message whose room seq was not above the previous one's.
    pub seq_out_of_order: u64,
    /// Envelope: `error` frames from the server.
    pub env_errors: u64,
    /// Envelope: frames that are not a map of the connection's encoding, or a `message`
    /// without an integer `seq`.
    pub env_bad_frames: u64,
    /// Envelope: other ops received and ignored (`join`, `leave`, `ack`, ...).
    pub env_other: u64,
    pub open_count: usize,
    connecting: usize,
    // FanoutMax bookkeeping, per publisher p: remaining[p][i] = subscribers still missing
    // seq oldest[p] + i.
    remaining: Vec<VecDeque<u32>>,
    oldest: Vec<u64>,
    alive_subs: u32,
    /// Servers: (address, Host header); connection i goes to nodes[node_for[i]] (node 0 when
    /// node_for is shorter).
    nodes: Vec<(SocketAddrV4, String)>,
    pub node_for: Vec<u16>,
}

pub struct OpenResult {
    pub opened: usize,
    pub failed: usize,
    pub secs: f64,
}

impl Engine {
    pub fn new(
        dst: SocketAddrV4,
        host_header: String,
        path_prefix: String,
        sources: u32,
        size: usize,
        kind: Kind,
        env: Envelope,
    ) -> io::Result<Self> {
        let size = size.max(kind.min_size());
        // Client frames have the mask bit set (RFC 6455 requires masked client frames) with
        // mask key 0,0,0,0: masking is the identity, so the payload is written as is.
        let (payload, mut vary_at) = match kind {
            Kind::Binary => (vec![0u8; size], Vec::new()),
            Kind::Json => payload::json_template(size),
        };
        let wire = envelope::wire(env, kind);
        let mut json_at = payload::JSON_FIELDS;
        if wire == Wire::EscJson {
            // The JSON text escaped into a JSON string: every offset moves.
            let map = envelope::escape(&payload).1;
            for o in vary_at.iter_mut().chain(json_at.iter_mut()) {
                *o = map[*o];
            }
        }
        let mut tmpls = Vec::new();
        if env == Envelope::Raw {
            tmpls.push(envelope::publish_template(env, kind, "", &payload));
        }
        Ok(Engine {
            poll: Poll::new()?,
            events: Events::with_capacity(8192),
            conns: Vec::new(),
            rbuf: vec![0u8; READ_BUF],
            dirty: Vec::new(),
            tmpls,
            tmpl_of_room: HashMap::new(),
            payload,
            size,
            kind,
            env,
            wire,
            vary_at,
            json_at,
            rng: 0x2545_f491_4f6c_dd1d,
            offer_deflate: false,
            tls: None,
            plain: Vec::with_capacity(READ_BUF),
            tokens: Vec::new(),
            next_token: 0,
            sse_subscribers: false,
            sse_scratch: Vec::new(),
            sse_comments: 0,
            shared_inflater: Some(Box::new(deflate::SharedInflater::new(true))),
            zbuf: Vec::with_capacity(64 * 1024),
            deflate_negotiated: 0,
            deflate_no_context_takeover: 0,
            inflate_errors: 0,
            next_seq: Vec::new(),
            path_prefix,
            sources,
            handshake_inflight: 256,
            traffic: Traffic::None,
            sending: false,
            measuring: false,
            hist: Hist::new(),
            c: Counters::default(),
            gaps: 0,
            lossy_conns: 0,
            out_of_order: 0,
            foreign: 0,
            short_msgs: 0,
            pings: 0,
            server_closes: BTreeMap::new(),
            clean_closes: 0,
            close_timeouts: 0,
            eof_errors: 0,
            io_errors: 0,
            connect_errors: 0,
            handshake_failures: BTreeMap::new(),
            protocol_errors: 0,
            seq_gaps: 0,
            seq_out_of_order: 0,
            env_errors: 0,
            env_bad_frames: 0,
            env_other: 0,
            open_count: 0,
            connecting: 0,
            remaining: Vec::new(),
            oldest: Vec::new(),
            alive_subs: 0,
            nodes: vec![(dst, host_header)],
            node_for: Vec::new(),
        })
    }

    /// Add a server: connections whose `node_for` entry is its index go there.
    pub fn add_node(&mut self, dst: SocketAddrV4, host_header: String) -> u16 {
        self.nodes.push((dst, host_header));
        (self.nodes.len() - 1) as u16
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The server connection `i` goes to: (address, Host header).
    fn node_of(&self, i: usize) -> &(SocketAddrV4, String) {
        let n = self.node_for.get(i).copied().unwrap_or(0) as usize;
        &self.nodes[n.min(self.nodes.len() - 1)]
    }

    /// Forget all (closed) connections, for the next churn cycle.
    pub fn reset_conns(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].state != State::Closed && self.conns[i].state != State::NotStarted {
                self.close(i);
            }
        }
        self.conns.clear();
        self.next_seq.clear();
        self.dirty.clear();
        self.open_count = 0;
        self.connecting = 0;
    }

    /// Open every connection in `specs`, at most `handshake_inflight` handshakes at a time.
    pub fn open_all(&mut self, specs: Vec<Spec>) -> OpenResult {
        let base = self.conns.len();
        for s in specs {
            let tmpl = self.template_for(&s.room);
            self.conns.push(Conn {
                stream: None,
                state: State::NotStarted,
                out: Vec::new(),
                out_off: 0,
                inbuf: Vec::new(),
                blocked: false,
                dirty: false,
                started: 0,
                room: s.room,
                pub_base: s.pub_base,
                expected: vec![0u64; s.n_pubs as usize].into_boxed_slice(),
                ignore: s.ignore,
                lossy: false,
                deflate: Mode::Off,
                inflater: None,
                tmpl,
                env_phase: 0,
                env_next: 0,
                tls: None,
                sse: self.sse_subscribers && !s.ignore,
                was_open: false,
            });
            self.next_seq.push(0);
        }
        let total = self.conns.len();
        let open_before = self.open_count;
        let failed_before = self.failures();
        let t = Instant::now();
        let mut next = base;
        let mut last_sweep = now_ns();
        loop {
            while self.connecting < self.handshake_inflight && next < total {
                self.start_connect(next);
                next += 1;
            }
            if self.connecting == 0 && next >= total {
                break;
            }
            self.poll_once(Some(Duration::from_millis(20)));
            let now = now_ns();
            if now - last_sweep > 500_000_000 {
                last_sweep = now;
                for i in base..total {
                    let c = &self.conns[i];
                    if matches!(
                        c.state,
                        State::Connecting | State::Handshake | State::Subscribing
                    ) && now - c.started > HANDSHAKE_TIMEOUT_NS
                    {
                        *self.handshake_failures.entry("timeout".into()).or_default() += 1;
                        self.close(i);
                    }
                }
            }
        }
        OpenResult {
            opened: self.open_count - open_before,
            failed: (self.failures() - failed_before) as usize,
            secs: t.elapsed().as_secs_f64(),
        }
    }

    /// The publish template for `room` (raw mode: the one template).
    fn template_for(&mut self, room: &str) -> u32 {
        if self.env == Envelope::Raw {
            return 0;
        }
        if let Some(&t) = self.tmpl_of_room.get(room) {
            return t;
        }
        let t = self.tmpls.len() as u32;
        self.tmpls.push(envelope::publish_template(
            self.env,
            self.kind,
            room,
            &self.payload,
        ));
        self.tmpl_of_room.insert(room.to_string(), t);
        t
    }

    fn failures(&self) -> u64 {
        self.connect_errors + self.handshake_failures.values().sum::<u64>()
    }

    fn start_connect(&mut self, i: usize) {
        let dst = self.node_of(i).0;
        let src = if self.sources > 0 && dst.ip().is_loopback() {
            Some(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i as u32 % self.sources) as u8,
            ))
        } else {
            None
        };
        match connect_socket(src, dst) {
            Ok(mut s) => {
                if let Err(e) = self.poll.registry().register(
                    &mut s,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    eprintln!("loadgen: register: {e}");
                    self.connect_errors += 1;
                    self.conns[i].state = State::Closed;
                    return;
                }
                let c = &mut self.conns[i];
                c.stream = Some(s);
                c.state = State::Connecting;
                c.started = now_ns();
                self.connecting += 1;
            }
            Err(e) => {
                if self.connect_errors < 5 {
                    eprintln!("loadgen: connect #{i}: {e}");
                }
                self.connect_errors += 1;
                self.conns[i].state = State::Closed;
            }
        }
    }

    /// One poll + handling of every event + traffic schedule + flush of dirty connections.
    pub fn poll_once(&mut self, timeout: Option<Duration>) {
        let timeout = match (timeout, self.next_due()) {
            (t, Some(due)) => {
                let now = now_ns();
                let d = Duration::from_nanos(due.saturating_sub(now));
                Some(t.map_or(d, |t| t.min(d)))
            }
            (t, None) => t,
        };
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        match self.poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("poll: {e}"),
        }
        for ev in events.iter() {
            // Per event, not per batch: a batch of thousands of events takes a while to handle
            // and latency is taken against this time.
            let now = now_ns();
            let i = ev.token().0;
            if i >= self.conns.len() {
                continue;
            }
            match self.conns[i].state {
                State::Closed | State::NotStarted => continue,
                State::Connecting => {
                    self.finish_connect(i);
                    continue;
                }
                _ => {}
            }
            let closed = ev.is_read_closed() || ev.is_error();
            if ev.is_readable() || closed {
                self.on_readable(i, now, closed);
            }
            if ev.is_writable() && i < self.conns.len() && self.conns[i].blocked {
                self.conns[i].blocked = false;
                self.flush(i);
            }
        }
        self.events = events;
        self.pump(now_ns());
        self.flush_dirty();
    }

    fn finish_connect(&mut self, i: usize) {
        let s = self.conns[i].stream.as_ref().unwrap();
        match s.take_error() {
            Ok(Some(e)) | Err(e) => {
                if self.connect_errors < 5 {
                    eprintln!("loadgen: connect #{i}: {e}");
                }
                self.connect_errors += 1;
                self.close(i);
                return;
            }
            Ok(None) => {}
        }
        match s.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
            Err(e) => {
                if self.connect_errors < 5 {
                    eprintln!("loadgen: connect #{i}: {e}");
                }
                self.connect_errors += 1;
                self.close(i);
                return;
            }
        }
        let req = self.open_request(i);
        if let Some(cfg) = &self.tls {
            let hh = &self.node_of(i).1;
            let host = hh.rsplit_once(':').map_or(&**hh, |h| h.0);
            match crate::tls::connect(cfg, host) {
                Ok(t) => self.conns[i].tls = Some(t),
                Err(e) => {
                    eprintln!("loadgen: TLS session for {host}: {e}");
                    self.connect_errors += 1;
                    self.close(i);
                    return;
                }
            }
        }
        let c = &mut self.conns[i];
        c.state = State::Handshake;
        c.out.extend_from_slice(req.as_bytes());
        self.flush(i);
    }

    /// The request that opens connection `i`: a WebSocket upgrade, or `GET /sse` for an SSE
    /// subscriber.
    fn open_request(&mut self, i: usize) -> String {
        let authz = match self.tokens.len() {
            0 => String::new(),
            n => {
                let h = crate::auth::header(&self.tokens[self.next_token % n]);
                self.next_token = (self.next_token + 1) % n;
                h
            }
        };
        if self.conns[i].sse {
            let c = &self.conns[i];
            let hh = &self.node_of(i).1;
            return sse::open_request(&self.path_prefix, &c.room, hh, &authz);
        }
        let ext = if self.offer_deflate {
            format!("Sec-WebSocket-Extensions: {}\r\n", deflate::OFFER)
        } else {
            String::new()
        };
        // Raw: one room per connection, in the path. Envelope: /ws and the subprotocol.
        let (path, proto) = match self.env.subprotocol() {
            None => (format!("/ws/{}", self.conns[i].room), String::new()),
            Some(p) => (
                "/ws".to_string(),
                format!("Sec-WebSocket-Protocol: {p}\r\n"),
            ),
        };
        format!(
            "GET {}{path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n{proto}{ext}{authz}\r\n",
            self.path_prefix,
            self.node_of(i).1
        )
    }

    /// Read until the socket is drained. A short read normally means it is (new data raises a
    /// new edge), but not when the peer's FIN is queued behind the data (`closed`): then read on
    /// until EOF, which would otherwise never be seen.
    fn on_readable(&mut self, i: usize, now: u64, closed: bool) {
        if self.conns[i].tls.is_some() {
            return self.on_readable_tls(i, now, closed);
        }
        let mut buf = std::mem::take(&mut self.rbuf);
        loop {
            let st = self.conns[i].state;
            if st == State::Closed {
                break;
            }
            let r = self.conns[i].stream.as_mut().unwrap().read(&mut buf);
            match r {
                Ok(0) => {
                    match st {
                        State::CloseAcked => {}
                        State::Handshake | State::Subscribing => {
                            *self.handshake_failures.entry("eof".into()).or_default() += 1
                        }
                        _ => self.eof_errors += 1,
                    }
                    self.close(i);
                    break;
                }
                Ok(n) => {
                    self.ingest(i, &buf[..n], now);
                    // A short read drained the socket: new data raises a new edge.
                    if n < buf.len() && !closed && self.conns[i].state != State::CloseAcked {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if matches!(st, State::Handshake | State::Subscribing) {
                        *self
                            .handshake_failures
                            .entry(format!("{:?}", e.kind()))
                            .or_default() += 1;
                    } else if st != State::CloseAcked {
                        self.io_errors += 1;
                    }
                    self.close(i);
                    break;
                }
            }
        }
        self.rbuf = buf;
    }

    /// `on_readable` for a TLS connection: ciphertext in, its plaintext to `ingest`; then send
    /// what the TLS session wants to (handshake messages).
    fn on_readable_tls(&mut self, i: usize, now: u64, closed: bool) {
        let mut buf = std::mem::take(&mut self.rbuf);
        let mut plain = std::mem::take(&mut self.plain);
        loop {
            let st = self.conns[i].state;
            if st == State::Closed {
                break;
            }
            let c = &mut self.conns[i];
            let r = c.stream.as_mut().unwrap().read(&mut buf);
            let n = match r {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                // EOF (or an error): the plain path's bookkeeping.
                match st {
                    State::CloseAcked => {}
                    State::Handshake | State::Subscribing => {
                        *self.handshake_failures.entry("eof".into()).or_default() += 1
                    }
                    _ => self.eof_errors += 1,
                }
                self.close(i);
                break;
            }
            plain.clear();
            let tls = c.tls.as_mut().unwrap();
            match crate::tls::decrypt(tls, &buf[..n], &mut plain) {
                Ok(_) => {}
                Err(e) => {
                    let key = if matches!(st, State::Handshake | State::Subscribing) {
                        format!("tls: {e}")
                    } else {
                        self.io_errors += 1;
                        String::new()
                    };
                    if !key.is_empty() {
                        *self.handshake_failures.entry(key).or_default() += 1;
                    }
                    self.close(i);
                    break;
                }
            }
            if !plain.is_empty() {
                self.ingest(i, &plain, now);
            }
            if self.conns[i].tls.as_ref().is_some_and(|t| t.wants_write()) {
                self.flush(i);
            }
            if n < buf.len() && !closed && self.conns[i].state != State::CloseAcked {
                break;
            }
        }
        self.rbuf = buf;
        self.plain = plain;
    }

    fn ingest(&mut self, i: usize, data: &[u8], now: u64) {
        if self.conns[i].sse {
            return self.ingest_sse(i, data, now);
        }
        if self.conns[i].state == State::Handshake {
            let c = &mut self.conns[i];
            c.inbuf.extend_from_slice(data);
            let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if c.inbuf.len() > 16384 {
                    *self
                        .handshake_failures
                        .entry("oversized response".into())
                        .or_default() += 1;
                    self.close(i);
                }
                return;
            };
            let head = String::from_utf8_lossy(&c.inbuf[..end]).into_owned();
            let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
            let accept_ok = head.lines().any(|l| {
                l.split_once(':').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == WS_ACCEPT
                })
            });
            if status != "101" || !accept_ok {
                let key = if status != "101" {
                    format!("HTTP {status}")
                } else {
                    "bad accept".into()
                };
                *self.handshake_failures.entry(key).or_default() += 1;
                self.close(i);
                return;
            }
            if let Some(want) = self.env.subprotocol() {
                let got = head.lines().find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-protocol"))
                        .map(|(_, v)| v.trim())
                });
                if got != Some(want) {
                    *self
                        .handshake_failures
                        .entry("subprotocol".into())
                        .or_default() += 1;
                    self.close(i);
                    return;
                }
            }
            let ext = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|(_, v)| v.trim())
                .collect::<Vec<_>>()
                .join(",");
            match deflate::negotiate(&ext, self.offer_deflate) {
                Ok(m) => {
                    c.deflate = m;
                    if m != Mode::Off {
                        self.deflate_negotiated += 1;
                    }
                    if m == Mode::Reset {
                        self.deflate_no_context_takeover += 1;
                    }
                }
                Err(kind) => {
                    *self.handshake_failures.entry(kind.into()).or_default() += 1;
                    self.close(i);
                    return;
                }
            }
            let c = &mut self.conns[i];
            c.inbuf.drain(..end + 4);
            if self.env == Envelope::Raw {
                c.state = State::Open;
                c.was_open = true;
                self.connecting -= 1;
                self.open_count += 1;
            } else {
                // Open once `subscribed` arrives (see on_setup).
                c.state = State::Subscribing;
                c.env_phase = 0;
            }
            if !self.conns[i].inbuf.is_empty() {
                let ib = std::mem::take(&mut self.conns[i].inbuf);
                let used = self.parse(i, &ib, now);
                if self.conns[i].state != State::Closed {
                    self.conns[i].inbuf = ib[used..].to_vec();
                }
            }
            return;
        }
        if self.conns[i].inbuf.is_empty() {
            let used = self.parse(i, data, now);
            if used < data.len() && self.conns[i].state != State::Closed {
                self.conns[i].inbuf.extend_from_slice(&data[used..]);
            }
        } else {
            let mut ib = std::mem::take(&mut self.conns[i].inbuf);
            ib.extend_from_slice(data);
            let used = self.parse(i, &ib, now);
            if self.conns[i].state != State::Closed {
                ib.drain(..used);
                self.conns[i].inbuf = ib;
            }
        }
    }

    /// `ingest` for an SSE subscriber: the response head, then events. A partial event stays in
    /// `inbuf` until the bytes that complete it arrive.
    fn ingest_sse(&mut self, i: usize, data: &[u8], now: u64) {
        let c = &mut self.conns[i];
        if c.state == State::Handshake {
            c.inbuf.extend_from_slice(data);
            let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if c.inbuf.len() > 16384 {
                    self.setup_failed(i, "oversized response");
                }
                return;
            };
            let head = String::from_utf8_lossy(&c.inbuf[..end]).into_owned();
            if let Err(kind) = sse::check_head(&head) {
                return self.setup_failed(i, &kind);
            }
            c.inbuf.drain(..end + 4);
            // Open once the welcome and the room's `subscribed` arrived (see on_setup).
            c.state = State::Subscribing;
            c.env_phase = 0;
            let ib = std::mem::take(&mut c.inbuf);
            return self.sse_keep(i, ib, now);
        }
        if c.inbuf.is_empty() {
            let used = self.parse_sse(i, data, now);
            if used < data.len() && self.conns[i].state != State::Closed {
                self.conns[i].inbuf.extend_from_slice(&data[used..]);
            }
        } else {
            let mut ib = std::mem::take(&mut c.inbuf);
            ib.extend_from_slice(data);
            self.sse_keep(i, ib, now);
        }
    }

    /// Parse the events of `ib` and keep what is left of it as `inbuf`.
    fn sse_keep(&mut self, i: usize, mut ib: Vec<u8>, now: u64) {
        let used = self.parse_sse(i, &ib, now);
        if self.conns[i].state != State::Closed {
            ib.drain(..used);
            self.conns[i].inbuf = ib;
        }
    }

    /// Handle the whole events of `data`; returns the bytes consumed. An event's data is the
    /// JSON frame a `shardcast.v1.json` WebSocket client gets as a text message.
    fn parse_sse(&mut self, i: usize, data: &[u8], now: u64) -> usize {
        let mut scratch = std::mem::take(&mut self.sse_scratch);
        let mut p = 0;
        while let sse::Next::Event(ev, used) = sse::next_event(&data[p..], &mut scratch) {
            p += used;
            self.sse_comments += u64::from(ev.comments);
            if let Some(d) = ev.data {
                let c = &self.conns[i];
                if c.state != State::Subscribing && !c.ignore {
                    self.c.wire_bytes += used as u64;
                    self.c.data_frames += 1;
                    self.c.inflated_bytes += d.len() as u64;
                }
                self.on_envelope(i, 0x1, d, now);
            }
            if self.conns[i].state == State::Closed {
                break;
            }
        }
        self.sse_scratch = scratch;
        p
    }

    /// Parse whole frames from `data`; returns the bytes consumed.
    fn parse(&mut self, i: usize, data: &[u8], now: u64) -> usize {
        let mut p = 0;
        while data.len() - p >= 2 {
            let rem = &data[p..];
            let b0 = rem[0];
            let b1 = rem[1];
            let mut len = (b1 & 0x7f) as usize;
            let mut h = 2;
            if len == 126 {
                if rem.len() < 4 {
                    break;
                }
                len = u16::from_be_bytes([rem[2], rem[3]]) as usize;
                h = 4;
            } else if len == 127 {
                if rem.len() < 10 {
                    break;
                }
                len = u64::from_be_bytes(rem[2..10].try_into().unwrap()) as usize;
                h = 10;
            }
            let masked = b1 & 0x80 != 0;
            if masked {
                h += 4;
            }
            if rem.len() < h + len {
                break;
            }
            p += h + len;
            if masked || b0 & 0x30 != 0 {
                // Servers must not mask (RFC 6455 §5.1); RSV2/RSV3 are never negotiated.
                self.protocol_errors += 1;
                continue;
            }
            self.on_frame(i, b0, &rem[h..h + len], h + len, now);
            if self.conns[i].state == State::Closed {
                break;
            }
        }
        p
    }

    fn on_frame(&mut self, i: usize, b0: u8, payload: &[u8], wire: usize, now: u64) {
        let opcode = b0 & 0x0f;
        let rsv1 = b0 & 0x40 != 0;
        if rsv1 && opcode >= 0x8 {
            // Control frames are never compressed (RFC 7692 §6.1).
            self.protocol_errors += 1;
            return;
        }
        match opcode {
            0x1 | 0x2 => self.on_data(i, opcode, rsv1, payload, wire, now),
            0x0 => {} // continuation: messages here are never fragmented by size, ignore
            0x8 => {
                let code = if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                };
                match self.conns[i].state {
                    State::Closing => {
                        self.clean_closes += 1;
                        self.conns[i].state = State::CloseAcked;
                    }
                    State::CloseAcked => {}
                    _ => {
                        // Server-initiated: an error for a load test. Answer and drop.
                        *self.server_closes.entry(code).or_default() += 1;
                        let mut f = vec![0x88, 0x82, 0, 0, 0, 0];
                        f.extend_from_slice(&code.to_be_bytes());
                        self.conns[i].out.extend_from_slice(&f);
                        self.flush(i);
                        if self.conns[i].state != State::Closed {
                            self.close(i);
                        }
                    }
                }
            }
            0x9 => {
                self.pings += 1;
                let c = &mut self.conns[i];
                c.out.push(0x8a);
                c.out.push(0x80 | payload.len().min(125) as u8);
                c.out.extend_from_slice(&[0, 0, 0, 0]);
                c.out.extend_from_slice(&payload[..payload.len().min(125)]);
                self.mark_dirty(i);
            }
            0xa => {}
            _ => self.protocol_errors += 1,
        }
    }

    /// A data frame (a whole message: nothing here is fragmented). Compressed ones (RSV1) are
    /// inflated first. Ignored connections (the fan-out publisher's echoes) skip all of it.
    #[inline]
    fn on_data(&mut self, i: usize, opcode: u8, rsv1: bool, p: &[u8], wire: usize, now: u64) {
        let c = &mut self.conns[i];
        // Envelope set-up frames (welcome, subscribed) are read on every connection and not
        // counted.
        let count = c.state != State::Subscribing;
        if c.ignore && count {
            return;
        }
        if count {
            self.c.wire_bytes += wire as u64;
            self.c.data_frames += 1;
        }
        if !rsv1 {
            if count {
                self.c.inflated_bytes += p.len() as u64;
            }
            self.on_message(i, opcode, p, now);
            return;
        }
        let ok = match c.deflate {
            Mode::Off => {
                self.protocol_errors += 1;
                return;
            }
            Mode::Reset => {
                let mut si = std::mem::take(&mut self.shared_inflater).expect("shared inflater");
                match si.inflate(p) {
                    Ok(out) => {
                        if count {
                            self.c.compressed_msgs += 1;
                            self.c.inflated_bytes += out.len() as u64;
                        }
                        self.on_message(i, opcode, out, now);
                    }
                    Err(()) => self.inflate_errors += 1,
                }
                self.shared_inflater = Some(si);
                return;
            }
            Mode::Takeover => {
                let d = c
                    .inflater
                    .get_or_insert_with(|| Box::new(deflate::inflater()));
                match deflate::inflate(d, p, &mut self.zbuf) {
                    Ok(ended) => {
                        if ended {
                            d.reset(false);
                        }
                        true
                    }
                    Err(()) => false,
                }
            }
        };
        if ok {
            let z = std::mem::take(&mut self.zbuf);
            if count {
                self.c.compressed_msgs += 1;
                self.c.inflated_bytes += z.len() as u64;
            }
            self.on_message(i, opcode, &z, now);
            self.zbuf = z;
        } else {
            self.inflate_errors += 1;
        }
    }

    #[inline]
    fn on_message(&mut self, i: usize, opcode: u8, p: &[u8], now: u64) {
        if self.env != Envelope::Raw {
            self.on_envelope(i, opcode, p, now);
            return;
        }
        let parsed = if opcode == 0x1 {
            payload::parse_json_header(p)
        } else {
            payload::parse_binary_header(p)
        };
        let Some(h) = parsed else {
            self.short_msgs += 1;
            return;
        };
        self.on_payload(i, h, now);
    }

    /// One envelope frame (JSON text or CBOR binary, already inflated).
    #[inline]
    fn on_envelope(&mut self, i: usize, opcode: u8, p: &[u8], now: u64) {
        let f = match (self.env, opcode) {
            (Envelope::Json, 0x1) => envelope::parse_json(p),
            (Envelope::Cbor, 0x2) => envelope::parse_cbor(p),
            _ => None,
        };
        let Some(f) = f else {
            self.env_bad_frames += 1;
            if self.conns[i].state == State::Subscribing {
                self.setup_failed(i, "bad envelope frame");
            }
            return;
        };
        if self.conns[i].state == State::Subscribing {
            self.on_setup(i, &f);
            return;
        }
        match f.op {
            b"message" => {
                let Some(seq) = f.seq else {
                    self.env_bad_frames += 1;
                    return;
                };
                // The room's seq: +1 per room message for every subscriber.
                let c = &mut self.conns[i];
                if seq == c.env_next {
                    c.env_next += 1;
                } else if seq > c.env_next {
                    self.seq_gaps += seq - c.env_next;
                    c.env_next = seq + 1;
                } else {
                    self.seq_out_of_order += 1;
                }
                match f.payload_header() {
                    Some(h) => self.on_payload(i, h, now),
                    None => self.short_msgs += 1,
                }
            }
            b"close" if self.conns[i].sse => {
                // The daemon ends the stream (the close code a WebSocket would get).
                *self.server_closes.entry(sse::close_code(p)).or_default() += 1;
                self.close(i);
            }
            b"error" => {
                self.env_errors += 1;
                if self.env_errors <= 5 {
                    eprintln!(
                        "loadgen: conn #{i}: server error frame: {}",
                        String::from_utf8_lossy(p)
                    );
                }
            }
            _ => self.env_other += 1,
        }
    }

    /// Envelope set-up: `welcome` → send `subscribe`; `subscribed` → open.
    fn on_setup(&mut self, i: usize, f: &envelope::Frame) {
        let c = &mut self.conns[i];
        match (c.env_phase, f.op) {
            (0, b"welcome") if c.sse => c.env_phase = 1, // rooms= subscribes: no frame to send
            (0, b"welcome") => {
                let sub = envelope::subscribe_frame(self.env, &c.room);
                c.out.extend_from_slice(&sub);
                c.env_phase = 1;
                self.mark_dirty(i);
            }
            (1, b"subscribed") => {
                let Some(seq) = f.seq.filter(|_| f.room == c.room.as_bytes()) else {
                    self.env_bad_frames += 1;
                    self.setup_failed(i, "bad subscribed");
                    return;
                };
                c.env_next = seq + 1;
                c.state = State::Open;
                c.was_open = true;
                self.connecting -= 1;
                self.open_count += 1;
            }
            (_, b"error") => {
                self.env_errors += 1;
                self.setup_failed(i, "subscribe refused");
            }
            (0, _) => self.setup_failed(i, "no welcome"),
            _ => self.env_other += 1,
        }
    }

    fn setup_failed(&mut self, i: usize, kind: &str) {
        *self.handshake_failures.entry(kind.into()).or_default() += 1;
        self.close(i);
    }

    /// A payload (ours, from any encoding): latency, per-publisher sequence, fan-out settling.
    #[inline]
    fn on_payload(&mut self, i: usize, (ts, seq, pid): (u64, u64, u32), now: u64) {
        let c = &mut self.conns[i];
        let li = pid.wrapping_sub(c.pub_base) as usize;
        if li >= c.expected.len() {
            self.foreign += 1;
            return;
        }
        self.c.delivered += 1;
        if self.measuring {
            self.hist.record(now.saturating_sub(ts));
        }
        let e = c.expected[li];
        if seq < e {
            self.out_of_order += 1;
            return;
        }
        if seq > e {
            self.gaps += seq - e;
            if !c.lossy {
                c.lossy = true;
                self.lossy_conns += 1;
            }
        }
        c.expected[li] = seq + 1;
        match self.traffic {
            Traffic::FanoutMax { .. } => self.settle(pid as usize, e, seq + 1),
            Traffic::Echo if self.sending && pid as usize == i && seq + 1 == self.next_seq[i] => {
                self.send_msg(i, now_ns());
            }
            _ => {}
        }
    }

    /// One subscriber now holds every seq of publisher `p` below `to`, having held those below
    /// `from`.
    fn settle(&mut self, p: usize, from: u64, to: u64) {
        let (Some(rem), Some(oldest)) = (self.remaining.get_mut(p), self.oldest.get_mut(p)) else {
            return;
        };
        let lo = from.max(*oldest);
        let hi = to.min(*oldest + rem.len() as u64);
        for s in lo..hi {
            let r = &mut rem[(s - *oldest) as usize];
            *r = r.saturating_sub(1);
        }
        while rem.front() == Some(&0) {
            rem.pop_front();
            *oldest += 1;
        }
    }

    fn mark_dirty(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(i);
        }
    }

    /// Queue one message from connection `i` (publisher id `i`), stamped `now`.
    fn send_msg(&mut self, i: usize, now: u64) {
        let seq = self.next_seq[i];
        self.next_seq[i] += 1;
        self.c.sent += 1;
        let c = &mut self.conns[i];
        let t = &self.tmpls[c.tmpl as usize];
        let start = c.out.len() + t.off;
        c.out.extend_from_slice(&t.frame);
        let p = &mut c.out[start..];
        match self.wire {
            Wire::Bin => {
                p[0..8].copy_from_slice(&now.to_le_bytes());
                p[8..16].copy_from_slice(&seq.to_le_bytes());
                p[16..20].copy_from_slice(&(i as u32).to_le_bytes());
            }
            Wire::B64 => envelope::write_b64_header(p, self.size, now, seq, i as u32),
            Wire::JsonText | Wire::EscJson => {
                payload::vary(p, &self.vary_at, &mut self.rng);
                payload::write_json_header_at(p, &self.json_at, now, seq, i as u32);
            }
        }
        self.mark_dirty(i);
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            self.conns[i].dirty = false;
            if !self.conns[i].blocked {
                self.flush(i);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn flush(&mut self, i: usize) {
        if self.conns[i].tls.is_some() {
            return self.flush_tls(i);
        }
        loop {
            let c = &mut self.conns[i];
            let Some(s) = c.stream.as_mut() else {
                c.out.clear();
                c.out_off = 0;
                return;
            };
            if c.out_off >= c.out.len() {
                c.out.clear();
                c.out_off = 0;
                return;
            }
            match s.write(&c.out[c.out_off..]) {
                Ok(n) => c.out_off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.blocked = true;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    match c.state {
                        State::Handshake | State::Subscribing => {
                            *self
                                .handshake_failures
                                .entry("write error".into())
                                .or_default() += 1
                        }
                        State::CloseAcked | State::Closing => {}
                        _ => self.io_errors += 1,
                    }
                    self.close(i);
                    return;
                }
            }
        }
    }

    /// `flush` for a TLS connection: the pending plaintext into the session, then its records
    /// to the socket (what the socket does not take stays in the session until writable).
    fn flush_tls(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let (Some(s), Some(tls)) = (c.stream.as_mut(), c.tls.as_mut()) else {
            c.out.clear();
            c.out_off = 0;
            return;
        };
        if c.out_off < c.out.len() {
            // No buffer limit (set at connect): the session takes all of it.
            let _ = tls.writer().write_all(&c.out[c.out_off..]);
        }
        c.out.clear();
        c.out_off = 0;
        while tls.wants_write() {
            match tls.write_tls(s) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.blocked = true;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    match c.state {
                        State::Handshake | State::Subscribing => {
                            *self
                                .handshake_failures
                                .entry("write error".into())
                                .or_default() += 1
                        }
                        State::CloseAcked | State::Closing => {}
                        _ => self.io_errors += 1,
                    }
                    self.close(i);
                    return;
                }
            }
        }
    }

    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let st = c.state;
        if st == State::Closed {
            return;
        }
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.state = State::Closed;
        c.out = Vec::new();
        c.out_off = 0;
        c.inbuf = Vec::new();
        c.inflater = None;
        c.tls = None;
        c.blocked = false;
        match st {
            State::Connecting | State::Handshake | State::Subscribing => self.connecting -= 1,
            State::Open | State::Closing | State::CloseAcked => {
                self.open_count -= 1;
                if !c.ignore && matches!(self.traffic, Traffic::FanoutMax { .. }) {
                    let (base, exp) = (c.pub_base as usize, c.expected.clone());
                    self.alive_subs = self.alive_subs.saturating_sub(1);
                    for (li, e) in exp.iter().enumerate() {
                        let p = base + li;
                        let end = match (self.oldest.get(p), self.remaining.get(p)) {
                            (Some(o), Some(r)) => o + r.len() as u64,
                            _ => continue,
                        };
                        self.settle(p, *e, end);
                    }
                }
            }
            _ => {}
        }
    }

    /// Deadline of the next scheduled send, if any.
    fn next_due(&self) -> Option<u64> {
        if !self.sending {
            return None;
        }
        match self.traffic {
            Traffic::FanoutRate {
                t0, period_ns, k, ..
            } => Some(t0 + (k as f64 * period_ns) as u64),
            Traffic::Rooms { t0, period_ns, j } => Some(t0 + (j as f64 * period_ns) as u64),
            _ => None,
        }
    }

    /// Send whatever the schedule says is due.
    fn pump(&mut self, now: u64) {
        if !self.sending {
            return;
        }
        match self.traffic {
            Traffic::FanoutRate {
                t0,
                period_ns,
                mut k,
                pubs,
            } => {
                let mut n = 0;
                while t0 + (k as f64 * period_ns) as u64 <= now && n < 4096 {
                    let p = (k % pubs.max(1)) as usize;
                    if self.conns[p].state == State::Open {
                        self.send_msg(p, now);
                    }
                    k += 1;
                    n += 1;
                }
                self.traffic = Traffic::FanoutRate {
                    t0,
                    period_ns,
                    k,
                    pubs,
                };
            }
            Traffic::FanoutMax { window, pubs } => {
                for p in 0..(pubs as usize).min(self.remaining.len()) {
                    while self.alive_subs > 0
                        && self.conns[p].state == State::Open
                        && self.next_seq[p] - self.oldest[p] < window
                    {
                        self.remaining[p].push_back(self.alive_subs);
                        self.send_msg(p, now);
                    }
                }
            }
            Traffic::Rooms {
                t0,
                period_ns,
                mut j,
            } => {
                let n = self.conns.len() as u64;
                let mut sent = 0;
                while t0 + (j as f64 * period_ns) as u64 <= now && sent < 65536 {
                    let i = (j % n) as usize;
                    if self.conns[i].state == State::Open {
                        self.send_msg(i, now);
                    }
                    j += 1;
                    sent += 1;
                }
                self.traffic = Traffic::Rooms { t0, period_ns, j };
            }
            Traffic::Echo | Traffic::None => {}
        }
    }

    /// Start sending with the given traffic pattern.
    pub fn start(&mut self, traffic: Traffic) {
        self.traffic = traffic;
        self.sending = true;
        if let Traffic::FanoutMax { pubs, .. } = self.traffic {
            self.alive_subs = self
                .conns
                .iter()
                .filter(|c| !c.ignore && c.state == State::Open)
                .count() as u32;
            let pubs = (pubs as usize).min(self.next_seq.len());
            self.oldest = self.next_seq[..pubs].to_vec();
            self.remaining = vec![VecDeque::new(); pubs];
        }
        if let Traffic::Echo = self.traffic {
            let now = now_ns();
            for i in 0..self.conns.len() {
                if self.conns[i].state == State::Open {
                    self.send_msg(i, now);
                }
            }
        }
        self.pump(now_ns());
        self.flush_dirty();
    }

    /// Memoize inflated server_no_context_takeover messages (default) or inflate every frame.
    pub fn set_inflate_memo(&mut self, on: bool) {
        self.shared_inflater = Some(Box::new(deflate::SharedInflater::new(on)));
    }

    /// Compressed frames served from the shared inflater's memo.
    pub fn inflate_memo_hits(&self) -> u64 {
        self.shared_inflater.as_ref().map_or(0, |s| s.hits)
    }

    /// Queue one message from each of `pubs` (if open) and flush (idle --broadcast-once).
    pub fn publish_once(&mut self, pubs: &[usize]) {
        let now = now_ns();
        for &i in pubs {
            if self.conns.get(i).is_some_and(|c| c.state == State::Open) {
                self.send_msg(i, now);
            }
        }
        self.flush_dirty();
    }

    /// Run the loop for `d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            self.poll_once(Some(end - now));
        }
    }

    /// Deliveries owed since the first message: for every counting connection that was ever
    /// open (closed ones included, so a lost connection shows as missing deliveries), every
    /// message its publishers sent.
    pub fn expected_total(&self) -> u64 {
        let mut n = 0;
        for c in self.conns.iter().filter(|c| !c.ignore && c.was_open) {
            for li in 0..c.expected.len() {
                n += self
                    .next_seq
                    .get(c.pub_base as usize + li)
                    .copied()
                    .unwrap_or(0);
            }
        }
        n
    }

    /// Messages sent to open connections but not received yet.
    pub fn outstanding(&self) -> u64 {
        let mut n = 0;
        for c in &self.conns {
            if c.ignore || !matches!(c.state, State::Open) {
                continue;
            }
            for (li, &e) in c.expected.iter().enumerate() {
                let p = c.pub_base as usize + li;
                n += self.next_seq[p].saturating_sub(e);
            }
        }
        n
    }

    /// Stop sending and wait (at most `max`) until everything sent has been received.
    /// Returns what is still missing.
    pub fn drain(&mut self, max: Duration) -> u64 {
        self.sending = false;
        let end = Instant::now() + max;
        loop {
            let left = self.outstanding();
            let now = Instant::now();
            if left == 0 || now >= end {
                return left;
            }
            self.poll_once(Some((end - now).min(Duration::from_millis(20))));
        }
    }

    /// Send a close frame (1000) on every open connection and wait for the close handshakes and
    /// the server's FIN (at most `max`); whatever is left is dropped.
    pub fn close_all(&mut self, max: Duration) {
        self.sending = false;
        for i in 0..self.conns.len() {
            if self.conns[i].state == State::Open && self.conns[i].sse {
                // An event stream has no close handshake: the client just hangs up.
                self.close(i);
            } else if self.conns[i].state == State::Open {
                let c = &mut self.conns[i];
                c.out
                    .extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
                c.state = State::Closing;
                self.mark_dirty(i);
            }
        }
        self.flush_dirty();
        let end = Instant::now() + max;
        while self.open_count > 0 {
            let now = Instant::now();
            if now >= end {
                break;
            }
            self.poll_once(Some((end - now).min(Duration::from_millis(20))));
        }
        let mut left: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..self.conns.len() {
            if self.conns[i].state != State::Closed && self.conns[i].state != State::NotStarted {
                *left
                    .entry(format!("{:?}", self.conns[i].state))
                    .or_default() += 1;
                self.close(i);
            }
        }
        if !left.is_empty() {
            self.close_timeouts += left.values().sum::<u64>();
            if std::env::var_os("LOADGEN_DEBUG").is_some() {
                eprintln!("loadgen: close timed out: {left:?}");
            }
        }
    }
}

fn connect_socket(src: Option<Ipv4Addr>, dst: SocketAddrV4) -> io::Result<TcpStream> {
    connect_socket_with(src, dst, None)
}

/// A non-blocking TCP connect from `src` (port picked at connect) to `dst`, with TCP_NODELAY;
/// `rcvbuf` sets SO_RCVBUF before the connect (so the window it advertises is small from the
/// SYN on: a client that never reads then holds at most about that much).
pub(crate) fn connect_socket_with(
    src: Option<Ipv4Addr>,
    dst: SocketAddrV4,
    rcvbuf: Option<i32>,
) -> io::Result<TcpStream> {
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = a.port().to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
        sa
    }
    fn setopt(fd: i32, level: i32, name: i32, v: i32) -> io::Result<()> {
        let r = unsafe {
            libc::setsockopt(fd, level, name, &v as *const i32 as *const libc::c_void, 4)
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Owns the fd from here on (closed on every error path).
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    setopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    if let Some(b) = rcvbuf {
        setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, b)?;
    }
    if let Some(src) = src {
        // Let connect() pick the port for the full 4-tuple instead of bind() reserving one per
        // source address: no ephemeral-port exhaustion below 28k connections per source.
        setopt(fd, libc::IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)?;
        let sa = sockaddr(SocketAddrV4::new(src, 0));
        let r = unsafe {
            libc::bind(
                fd,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let sa = sockaddr(dst);
    let r = unsafe {
        libc::connect(
            std_stream.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from_std(std_stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A server that upgrades requests bearing `Authorization: Bearer good`, answers 403 to
    /// `Bearer forbidden` and 401 to anything else. After `n` requests it sends the
    /// Authorization values it saw and keeps the sockets open until the test drops its sender.
    fn auth_server(n: usize) -> (SocketAddrV4, mpsc::Receiver<Vec<String>>, mpsc::Sender<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        let (seen_tx, seen_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut keep = Vec::new();
            for _ in 0..n {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s);
                let mut authz = String::new();
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Authorization: ") {
                        authz = v.trim_end().to_string();
                    }
                }
                let resp = match authz.as_str() {
                    "Bearer good" => format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
                    ),
                    "Bearer forbidden" => {
                        "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".into()
                    }
                    _ => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".into(),
                };
                let mut s = r.into_inner();
                s.write_all(resp.as_bytes()).unwrap();
                seen.push(authz);
                keep.push(s); // upgraded or not: leave closing to the client
            }
            seen_tx.send(seen).unwrap();
            let _ = done_rx.recv();
        });
        (addr, seen_rx, done_tx)
    }

    #[test]
    fn bearer_tokens_round_robin_and_auth_failures_by_status() {
        let (addr, seen, _done) = auth_server(6);
        let mut e = Engine::new(
            addr,
            addr.to_string(),
            String::new(),
            0,
            64,
            Kind::Binary,
            Envelope::Raw,
        )
        .unwrap();
        e.handshake_inflight = 1; // one at a time: the order of the tokens is the order sent
        e.tokens = ["good", "bad", "forbidden"].map(String::from).to_vec();
        let specs = (0..6)
            .map(|i| Spec {
                room: format!("r{i}"),
                pub_base: 0,
                n_pubs: 0,
                ignore: true,
            })
            .collect();
        let o = e.open_all(specs);
        assert_eq!((o.opened, o.failed), (2, 4), "{:?}", e.handshake_failures);
        assert_eq!(e.handshake_failures.get("HTTP 401"), Some(&2));
        assert_eq!(e.handshake_failures.get("HTTP 403"), Some(&2));
        let seen = seen.recv().unwrap();
        let want = ["good", "bad", "forbidden"].map(|t| format!("Bearer {t}"));
        assert_eq!(seen, [&want[..], &want[..]].concat());
    }

    #[test]
    fn no_token_no_header() {
        let (addr, seen, _done) = auth_server(1);
        let mut e = Engine::new(
            addr,
            addr.to_string(),
            String::new(),
            0,
            64,
            Kind::Binary,
            Envelope::Raw,
        )
        .unwrap();
        let specs = vec![Spec {
            room: "r".into(),
            pub_base: 0,
            n_pubs: 0,
            ignore: true,
        }];
        let o = e.open_all(specs);
        assert_eq!((o.opened, o.failed), (0, 1));
        assert_eq!(seen.recv().unwrap(), [""]);
    }
}
