//! One client connection: HTTP handshake, then a reader (frames in → events → fan-out) and a
//! writer (queued frames out in one `writev` per batch). Both are monoio tasks using native
//! owned-buffer I/O; they share the connection's state through the shard's slab.
//!
//! An idle connection holds no read buffer: the reader waits for readiness first and only then
//! takes a buffer from the shard's pool, and gives it back as soon as no partial frame remains.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use monoio::buf::{IoBufMut, IoVecBuf, SliceMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use crate::fanout::{envelope_frame, publish_raw, Wire};
use crate::home::{ConnRef, HomeMsg, Query, SubReq};
use crate::http::{route, serve_api, text, Route};
use crate::metrics::ShardStats;
use crate::protocol::close::CloseCode;
use crate::protocol::decoder::{Decoder, Event, Message, Progress};
use crate::protocol::deflate::{
    negotiate, Compressor, DeflateMode, DeflateParams, InflateError, Inflater,
};
use crate::protocol::envelope::{self, ClientOp, Data, Format, Rejected, ServerOp};
use crate::protocol::frame::{decode_header, HeaderRules};
use crate::protocol::frame::{encode_close, encode_server_frame, OpCode};
use crate::protocol::handshake::{parse_request, switching_protocols};
use crate::protocol::ProtocolError;
use crate::room::{ConnId, RoomId};
use crate::shard::{Phase, ShardRef, Tick, READ_BUF_SIZE};

/// Most iovecs handed to one `writev`.
const MAX_IOV: usize = 256;

/// Serve one accepted socket: the handshake runs in this (short-lived) task; after the upgrade
/// the connection lives on as two lean tasks, a reader and a writer, so an idle connection carries
/// none of the handshake's state.
pub(crate) async fn serve(shard: ShardRef, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let id = shard.borrow_mut().add_conn(fd, Instant::now());
    let mut admitted = false;
    match handshake(&shard, id, &mut stream, &mut admitted).await {
        Some(up) => {
            let (rh, wh) = stream.into_split();
            let dedicated = dedicated_compressor(&shard, up.deflate);
            // No writer task yet: one is spawned when something is queued (ShardCore::kick).
            {
                let mut s = shard.borrow_mut();
                if let Some(c) = s.conns.get_mut(id.0) {
                    c.wh = Some(wh);
                    c.dedicated = dedicated;
                }
                // Anything queued during the upgrade (the envelope `welcome`) goes out now.
                s.kick(id);
            }
            monoio::spawn(reader_task(shard, id, rh, up));
        }
        None => {
            // The stream (and its fd) goes first, then the connection is forgotten.
            drop(stream);
            shard.borrow_mut().remove_conn(id, admitted);
        }
    }
}

/// The reader for an upgraded connection; when it ends, it closes the connection down.
async fn reader_task(shard: ShardRef, id: ConnId, mut rh: OwnedReadHalf<TcpStream>, up: Upgraded) {
    read_loop(&shard, id, &mut rh, up).await;
    {
        let mut s = shard.borrow_mut();
        s.leave_all(id);
        let deadline = Tick::at(Instant::now() + s.cfg.close_timeout);
        if let Some(c) = s.conns.get_mut(id.0) {
            c.finishing = true;
            c.sealed = true;
            if !matches!(c.phase, Phase::Closing { .. }) {
                c.phase = Phase::Closing { deadline };
            }
        }
        s.kick(id);
    }
    // The writer (if any) flushes what is queued (a close reply, say) and exits; then the
    // socket goes.
    poll_fn(|cx| {
        let mut s = shard.borrow_mut();
        match s.conns.get_mut(id.0) {
            Some(c) if c.writer_alive => {
                c.reader_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    })
    .await;
    drop(rh);
    shard.borrow_mut().remove_conn(id, true);
}

/// What a connection speaks after the upgrade.
enum Mode {
    /// A raw room (`/ws/{room}`): every message is broadcast to it.
    Raw(RoomId),
    /// The envelope protocol (`/ws`).
    Envelope {
        format: Format,
        info: Arc<Data>,
        /// Bad frames in a row.
        bad: u32,
    },
}

/// What a successful upgrade leaves behind.
struct Upgraded {
    mode: Mode,
    /// Bytes the client sent after its request (already WebSocket frames).
    rbuf: BytesMut,
    /// permessage-deflate, if negotiated.
    deflate: Option<DeflateParams>,
}

/// Read and answer the HTTP request. On a successful upgrade, returns the joined room, any
/// early frames, and the negotiated extension. Everything allocated for the handshake is freed
/// when this returns: an idle connection keeps none of it.
async fn handshake(
    shard: &ShardRef,
    id: ConnId,
    stream: &mut TcpStream,
    admitted: &mut bool,
) -> Option<Upgraded> {
    let max_header = shard.borrow().cfg.max_header_bytes;
    // 1. Read the request head.
    let mut buf = BytesMut::with_capacity(1024.min(max_header));
    let (req, used) = loop {
        let room_left = max_header.saturating_sub(buf.len()).clamp(1, 4096);
        buf.reserve(room_left);
        let (res, b) = read_append(stream, buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        match parse_request(&buf, max_header) {
            Ok(None) => continue,
            Ok(Some(parsed)) => break parsed,
            Err(e) => {
                reject(shard, stream, crate::http::handshake_error(&e)).await;
                return None;
            }
        }
    };

    // 2. Route it.
    let (stats, max_info) = {
        let s = shard.borrow();
        (s.stats.clone(), s.cfg.max_info_bytes)
    };
    let (target, accept) = match route(&req, &stats, max_info) {
        Route::Respond(resp) => {
            if !resp.starts_with(b"HTTP/1.1 200") {
                ShardStats::add(&shard.borrow().my_stats().http_rejected, 1);
            }
            let _ = stream.write_all(resp).await;
            return None;
        }
        Route::Api => {
            serve_api(shard, stream, &req, &buf[used..]).await;
            return None;
        }
        Route::Room { name, accept } => (Target::Room(name), accept),
        Route::Envelope {
            format,
            info,
            accept,
        } => (Target::Envelope(format, info), accept),
    };
    let refused = {
        let s = shard.borrow();
        s.shutdown.is_some() || !s.admit()
    };
    if refused {
        reject(shard, stream, text(503, "server at capacity\n")).await;
        return None;
    }
    *admitted = true;

    // 3. Upgrade, with permessage-deflate if offered and enabled.
    let z = shard.borrow().cfg.compression;
    let deflate = if z.enabled {
        negotiate(&req.extensions, z.mode)
    } else {
        None
    };
    let mut extra = match &deflate {
        Some((_, resp)) => format!("Sec-WebSocket-Extensions: {resp}\r\n"),
        None => String::new(),
    };
    if let Target::Envelope(format, _) = &target {
        extra.push_str(&format!("Sec-WebSocket-Protocol: {}\r\n", format.name()));
    }
    let deflate = deflate.map(|(p, _)| p);
    let (res, _) = stream.write_all(switching_protocols(&accept, &extra)).await;
    res.ok()?;
    let mode = {
        let mut s = shard.borrow_mut();
        let now = Tick::at(Instant::now());
        let c = s.conns.get_mut(id.0)?;
        // Shared mode: one compressed variant per broadcast, made with a 15-bit window; a client
        // that asked for a smaller server window gets uncompressed frames (always valid).
        let compressed = deflate.is_some_and(|p| p.server_max_window_bits == 15)
            && z.mode == DeflateMode::Shared;
        c.phase = Phase::Open;
        c.last_seen = now;
        c.last_ping = now;
        match target {
            Target::Room(name) => {
                c.wire = Wire::of(None, compressed);
                Mode::Raw(s.join_raw(id, &name)?)
            }
            Target::Envelope(format, info) => {
                c.wire = Wire::of(Some(format), compressed);
                let welcome = envelope_frame(&ServerOp::Welcome { conn: c.uid }, format);
                // Written as soon as the write half is in place (see `serve`).
                c.push_control(welcome);
                Mode::Envelope {
                    format,
                    info,
                    bad: 0,
                }
            }
        }
    };
    // Keep only the bytes after the request head, in a buffer of their own size.
    let leftover = if buf.len() > used {
        BytesMut::from(&buf[used..])
    } else {
        BytesMut::new()
    };
    Some(Upgraded {
        mode,
        rbuf: leftover,
        deflate,
    })
}

/// Where an upgrade leads.
enum Target {
    Room(String),
    Envelope(Format, Arc<Data>),
}

async fn reject(shard: &ShardRef, stream: &mut TcpStream, resp: Vec<u8>) {
    ShardStats::add(&shard.borrow().my_stats().http_rejected, 1);
    let _ = stream.write_all(resp).await;
    // Half-close so the client reads the whole response before the socket goes away.
    let _ = stream.shutdown().await;
}

/// What the synchronous decode step asks the reader to do next.
enum Step {
    /// Read more; at least this many bytes are needed in the buffer.
    Read(usize),
    /// Too many messages wait for peer shards' inboxes: pause reading a little.
    Backlog,
    /// The connection is done reading (close handshake completed or answered).
    Done,
    /// A protocol error: a close frame is queued; discard whatever the client still sends until
    /// it closes (or the close deadline passes), so the close frame is not lost to a TCP reset.
    Discard,
}

/// Decode and handle everything buffered. Synchronous, so none of its locals live in the
/// connection's task between reads.
fn process(
    shard: &ShardRef,
    id: ConnId,
    mode: &mut Mode,
    dec: &mut Decoder,
    rbuf: &mut BytesMut,
    inflate: &mut Option<Box<Inbound>>,
) -> Step {
    loop {
        let ev = match dec.next(rbuf) {
            Ok(Progress::Event(Event::Message(m))) if m.rsv1 => {
                inflate_message(shard, inflate, m).map(|m| Progress::Event(Event::Message(m)))
            }
            other => other,
        };
        match ev {
            Ok(Progress::NeedMore(n)) => return Step::Read(n),
            Ok(Progress::Event(Event::Message(m))) => {
                let sealed = {
                    let s = shard.borrow();
                    ShardStats::add(&s.my_stats().messages_in, 1);
                    s.conns.get(id.0).is_none_or(|c| c.sealed)
                };
                if !sealed {
                    match mode {
                        Mode::Raw(room) => publish_raw(shard, id, *room, m),
                        Mode::Envelope { format, info, bad } => {
                            if let Some(step) = envelope_in(shard, id, *format, info, bad, &m) {
                                return step;
                            }
                        }
                    }
                    let s = shard.borrow();
                    if s.backlog() > s.cfg.inbox_capacity {
                        return Step::Backlog;
                    }
                }
            }
            Ok(Progress::Event(Event::Ping(payload))) => {
                let pong = encode_server_frame(OpCode::Pong, false, &payload);
                let mut s = shard.borrow_mut();
                if let Some(c) = s.conns.get_mut(id.0) {
                    c.push_control(pong);
                }
                s.kick(id);
            }
            Ok(Progress::Event(Event::Pong)) => {}
            Ok(Progress::Event(Event::Close(code))) => {
                // Answer with the same code unless we already sent our close; what this client
                // published before closing is handed out first.
                let mut s = shard.borrow_mut();
                s.flush_conn_rooms(id, Instant::now());
                if let Some(c) = s.conns.get_mut(id.0) {
                    if !c.sealed {
                        c.push_control(encode_close(code.unwrap_or(CloseCode::NORMAL), ""));
                        c.sealed = true;
                    }
                }
                s.kick(id);
                return Step::Done;
            }
            Err(e) => {
                // Messages that arrived before the bad frame still go out first (their echo to
                // this client included), then the close frame.
                shard
                    .borrow_mut()
                    .fail_conn(id, e.close_code(), e.as_str(), Instant::now());
                return Step::Discard;
            }
        }
    }
}

async fn read_loop(shard: &ShardRef, id: ConnId, rh: &mut OwnedReadHalf<TcpStream>, up: Upgraded) {
    let Upgraded {
        mut mode,
        mut rbuf,
        deflate,
    } = up;
    let mut dec = {
        let s = shard.borrow();
        Decoder::new(
            s.cfg.max_frame_bytes,
            s.cfg.max_message_bytes,
            deflate.is_some(),
        )
    };
    let mut inflate = deflate.map(|params| Box::new(Inbound { params, own: None }));
    // SAFETY: a shared reference to the stream only to read its fd (see `readable` below).
    let fd = std::os::fd::AsRawFd::as_raw_fd(unsafe { &*rh.0.get() });
    let mut discard = false;
    let mut more_ready = !rbuf.is_empty();
    'conn: loop {
        if discard {
            rbuf.clear();
        }
        let need = match if discard {
            Step::Read(0)
        } else {
            process(shard, id, &mut mode, &mut dec, &mut rbuf, &mut inflate)
        } {
            Step::Read(n) => n,
            Step::Discard => {
                discard = true;
                rbuf.clear();
                0
            }
            Step::Backlog => {
                // Rare: boxed so the common path keeps every connection's task small.
                Box::pin(monoio::time::sleep(std::time::Duration::from_millis(1))).await;
                continue;
            }
            Step::Done => break 'conn,
        };
        // Make room for the rest of a partial frame (bounded by the frame limit, which the
        // decoder has already checked against the header).
        if !rbuf.is_empty() && (rbuf.capacity() - rbuf.len() < 1024 || need > rbuf.capacity()) {
            let want = need
                .saturating_sub(rbuf.len())
                .max(4096)
                .min(READ_BUF_SIZE.max(need));
            rbuf.reserve(want);
        }
        // Read on readiness: wait for the socket to be readable holding no buffer (an idle
        // connection keeps none), then take what is there with one non-blocking recv into the
        // pooled buffer (or the partial frame's own). One ring round trip per read, not two.
        loop {
            if !more_ready {
                if rbuf.is_empty() {
                    give_back(shard, std::mem::take(&mut rbuf));
                }
                // SAFETY: `readable` takes `&self` and only submits a poll for readiness; the
                // write half never moves or mutates the stream while it is shared (monoio's own
                // split works the same way).
                let stream: &TcpStream = unsafe { &*rh.0.get() };
                if stream.readable(false).await.is_err() {
                    break 'conn;
                }
            }
            if rbuf.capacity() == 0 {
                rbuf = shard.borrow_mut().take_read_buf();
            }
            match recv_nonblocking(fd, &mut rbuf) {
                Ok(0) => break 'conn,
                Ok(_) => {
                    // A full buffer means more may be waiting: read again before polling.
                    more_ready = rbuf.len() == rbuf.capacity();
                    if let Some(c) = shard.borrow_mut().conns.get_mut(id.0) {
                        c.last_seen = Tick::at(Instant::now());
                    }
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => more_ready = false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break 'conn,
            }
        }
    }
    give_back(shard, rbuf);
}

/// Handle one envelope frame. Returns a step when the connection must stop reading normally.
fn envelope_in(
    shard: &ShardRef,
    id: ConnId,
    format: Format,
    info: &Arc<Data>,
    bad: &mut u32,
    m: &Message,
) -> Option<Step> {
    let mut s = shard.borrow_mut();
    let now = Instant::now();
    let (op, req_id) = match envelope::decode_request(m.payload(), format) {
        Ok(x) => x,
        Err(Rejected { error, id: req }) => {
            *bad += 1;
            if *bad >= s.cfg.max_bad_frames {
                s.fail_conn(id, CloseCode::POLICY, "too many bad frames", now);
                return Some(Step::Discard);
            }
            s.send_error(id, error.code(), &error.to_string(), req.as_ref());
            return None;
        }
    };
    *bad = 0;
    let c = s.conns.get(id.0)?;
    let me = ConnRef {
        shard: s.id,
        id,
        uid: c.uid,
    };
    let (wire, joined) = (c.wire, c.rooms.len());
    match op {
        ClientOp::Subscribe {
            room,
            since,
            epoch,
            presence,
        } => {
            let room: Arc<str> = Arc::from(room);
            let pending = s
                .pending_subs
                .get(&(me.uid, room.clone()))
                .is_some_and(|p| p.live);
            if s.member_room(id, &room).is_some() || pending {
                s.send_error(
                    id,
                    "already_subscribed",
                    "already subscribed to this room",
                    req_id.as_ref(),
                );
            } else if joined >= s.cfg.max_rooms_per_connection {
                s.send_error(
                    id,
                    "too_many_rooms",
                    "too many rooms on this connection",
                    req_id.as_ref(),
                );
            } else {
                s.pending_subs
                    .entry((me.uid, room.clone()))
                    .or_default()
                    .live = true;
                let sub = SubReq {
                    conn: me,
                    since,
                    epoch,
                    presence,
                    info: info.clone(),
                };
                let msg = HomeMsg::Join {
                    room,
                    shard: s.id,
                    wire,
                    sub: Some(sub),
                };
                s.send_home(msg, now);
            }
        }
        ClientOp::Unsubscribe { room } => match s.member_room(id, &room) {
            Some(rid) => {
                s.leave_room(id, rid);
                s.send_unsubscribed(id, &room, format);
            }
            // Subscribed, but the home's answer is still on its way: cancel it (the answer is
            // undone when it comes).
            None if s
                .pending_subs
                .get_mut(&(me.uid, Arc::from(room.as_str())))
                .is_some_and(|p| {
                    let live = std::mem::take(&mut p.live);
                    p.cancelled += u32::from(live);
                    live
                }) =>
            {
                s.send_unsubscribed(id, &room, format);
            }
            None => s.send_error(
                id,
                "not_subscribed",
                "not subscribed to this room",
                req_id.as_ref(),
            ),
        },
        ClientOp::Publish {
            room,
            data,
            id: req,
        } => {
            let msg = HomeMsg::Publish {
                room: Arc::from(room),
                data,
                from: me,
                ack: req.map(|r| (format, r)),
            };
            s.send_home(msg, now);
        }
        ClientOp::Presence { room } => {
            let msg = HomeMsg::Query {
                room: Arc::from(room),
                conn: me,
                format,
                query: Query::Presence,
            };
            s.send_home(msg, now);
        }
        ClientOp::History { room, since, limit } => {
            let msg = HomeMsg::Query {
                room: Arc::from(room),
                conn: me,
                format,
                query: Query::History { since, limit },
            };
            s.send_home(msg, now);
        }
    }
    None
}

/// Inbound permessage-deflate state of one connection.
struct Inbound {
    params: DeflateParams,
    /// Its own inflater, only when the client keeps its compression context between messages
    /// (created on its first compressed message; idle connections never have one).
    own: Option<Box<Inflater>>,
}

/// Inflate a compressed message (RSV1) into a plain one, bounded by `max_message_bytes` while
/// inflating, so a deflate bomb cannot grow memory.
fn inflate_message(
    shard: &ShardRef,
    inbound: &mut Option<Box<Inbound>>,
    m: Message,
) -> Result<Message, ProtocolError> {
    let Some(inb) = inbound.as_mut() else {
        return Err(ProtocolError::ReservedBits);
    };
    let max = shard.borrow().cfg.max_message_bytes;
    let mut out = BytesMut::new();
    let res = if inb.params.client_no_context_takeover {
        let mut inf = shard.borrow_mut().take_inflater();
        let r = inf.inflate(m.payload(), max, true, &mut out);
        shard.borrow_mut().return_inflater(inf);
        r
    } else {
        inb.own
            .get_or_insert_with(|| Box::new(Inflater::new(15)))
            .inflate(m.payload(), max, false, &mut out)
    };
    ShardStats::add(&shard.borrow().my_stats().inflations, 1);
    match res {
        Ok(()) => {}
        Err(InflateError::TooBig) => return Err(ProtocolError::MessageTooLarge),
        Err(InflateError::Corrupt) => return Err(ProtocolError::InvalidCompressedData),
    }
    if m.opcode == OpCode::Text && simdutf8::basic::from_utf8(&out).is_err() {
        return Err(ProtocolError::InvalidUtf8);
    }
    Ok(Message::from_payload(m.opcode, &out))
}

/// One `recv(MSG_DONTWAIT)` into the spare capacity of `buf` (after the bytes it holds).
fn recv_nonblocking(fd: std::os::fd::RawFd, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() == buf.len() {
        buf.reserve(4096);
    }
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv writes at most `spare.len()` bytes into memory we own and do not read until
    // `set_len`, which covers exactly the bytes the kernel reported written.
    let n = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised `n` bytes after the current length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// The spare capacity of `buf` (after the bytes it already holds) as a read target: monoio's
/// plain `read` would write from the start of the buffer.
fn spare(mut buf: BytesMut) -> SliceMut<BytesMut> {
    if buf.capacity() == buf.len() {
        buf.reserve(4096);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    buf.slice_mut(len..cap)
}

/// Read into the spare capacity of `buf`.
async fn read_append<R: AsyncReadRent>(
    r: &mut R,
    buf: BytesMut,
) -> (std::io::Result<usize>, BytesMut) {
    let (res, slice) = r.read(spare(buf)).await;
    (res, slice.into_inner())
}

/// Return a read buffer to the pool if it is an empty pool-sized buffer; otherwise drop it.
fn give_back(shard: &ShardRef, buf: BytesMut) {
    if buf.is_empty() && buf.capacity() >= READ_BUF_SIZE {
        shard.borrow_mut().return_read_buf(buf);
    }
}

/// Frames handed to one `writev`: owned `Bytes` (refcounted, shared with other recipients) and
/// the iovec array pointing into them.
#[derive(Default)]
struct WriteBatch {
    bufs: Vec<Bytes>,
    iov: Vec<libc::iovec>,
}

// SAFETY: `iov` points into `bufs`, whose heap data never moves while the batch is owned by the
// runtime (Bytes data is immutable and refcounted; we rebuild `iov` before each submission).
unsafe impl IoVecBuf for WriteBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.iov.len()
    }
}

impl WriteBatch {
    fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    fn fill_iov(&mut self) {
        self.iov.clear();
        self.iov.extend(self.bufs.iter().map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        }));
    }

    /// Drop `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        let mut done = 0;
        for b in self.bufs.iter_mut() {
            if n >= b.len() {
                n -= b.len();
                done += 1;
            } else {
                b.advance(n);
                break;
            }
        }
        self.bufs.drain(..done);
    }

    /// Keep an idle connection's footprint small after a burst.
    fn trim(&mut self) {
        if self.bufs.capacity() > 8 {
            self.bufs = Vec::new();
            self.iov = Vec::new();
        }
    }
}

/// Dedicated-mode compression state of one connection (its own context, kept between messages
/// unless the client asked for `server_no_context_takeover`).
#[derive(Debug)]
pub(crate) struct Dedicated {
    /// Created on the first message that is compressed: an idle connection holds no zlib state.
    comp: Option<Compressor>,
    level: u32,
    window_bits: u8,
    reset: bool,
    threshold: usize,
}

fn dedicated_compressor(shard: &ShardRef, params: Option<DeflateParams>) -> Option<Box<Dedicated>> {
    let z = shard.borrow().cfg.compression;
    let p = params?;
    (z.mode == DeflateMode::Dedicated).then(|| {
        Box::new(Dedicated {
            comp: None,
            level: z.level,
            window_bits: p.compress_window_bits(),
            reset: p.server_no_context_takeover,
            threshold: z.threshold_bytes,
        })
    })
}

impl Dedicated {
    /// Replace the batch's frames by their compressed form (data frames over the threshold),
    /// as one contiguous buffer. Returns (bytes before, bytes after).
    fn transform(&mut self, batch: &mut WriteBatch) -> (usize, usize) {
        let rules = HeaderRules {
            allow_rsv1: true,
            require_mask: false,
            max_frame_bytes: u64::MAX,
        };
        let before: usize = batch.bufs.iter().map(Bytes::len).sum();
        let mut out = BytesMut::with_capacity(before);
        for chunk in batch.bufs.drain(..) {
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                // Our own frames: always complete and well-formed.
                let Ok(Some(h)) = decode_header(rest, &rules) else {
                    out.extend_from_slice(rest);
                    break;
                };
                let end = h.header_len + h.payload_len as usize;
                let Some(frame) = rest.get(..end) else {
                    out.extend_from_slice(rest);
                    break;
                };
                let payload = &frame[h.header_len..];
                if matches!(h.opcode, OpCode::Text | OpCode::Binary)
                    && !h.rsv1
                    && payload.len() >= self.threshold
                {
                    let (level, bits) = (self.level, self.window_bits);
                    let comp = self
                        .comp
                        .get_or_insert_with(|| Compressor::new(level, bits));
                    out.extend_from_slice(&comp.compress_frame(h.opcode, payload, self.reset));
                } else {
                    out.extend_from_slice(frame);
                }
                rest = &rest[end..];
            }
        }
        let after = out.len();
        batch.bufs.push(out.freeze());
        (before, after)
    }
}

/// How a writer's wait for work ended.
enum Next {
    /// Frames were moved into the batch.
    Write,
    /// The connection is finished or killed: drop the write half (FIN) and exit.
    Exit,
    /// Idle for a while: hand the write half back to the connection and exit.
    Retire,
}

/// The writer task of one connection: spawned by `ShardCore::kick` when something is queued,
/// it writes everything queued (one send or writev per batch), parks while the queue is empty,
/// and retires after a quiet spell.
pub(crate) async fn write_loop(
    shard: ShardRef,
    id: ConnId,
    mut wh: OwnedWriteHalf<TcpStream>,
    mut dedicated: Option<Box<Dedicated>>,
) {
    let mut batch = WriteBatch::default();
    loop {
        let next = poll_fn(|cx| {
            let mut s = shard.borrow_mut();
            let Some(c) = s.conns.get_mut(id.0) else {
                return Poll::Ready(Next::Exit);
            };
            if c.killed {
                return Poll::Ready(Next::Exit);
            }
            if c.queue.is_empty() {
                if c.finishing {
                    return Poll::Ready(Next::Exit);
                }
                if c.retire {
                    return Poll::Ready(Next::Retire);
                }
                if c.writer_waker.is_none() {
                    c.writer_parked = Tick::at(Instant::now());
                }
                match &c.writer_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => c.writer_waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            c.retire = false;
            let n = c.queue.len().min(MAX_IOV);
            batch.bufs.extend(c.queue.drain(..n));
            Poll::Ready(Next::Write)
        })
        .await;
        let more = match next {
            Next::Write => true,
            Next::Exit => false,
            Next::Retire => {
                let mut s = shard.borrow_mut();
                if let Some(c) = s.conns.get_mut(id.0) {
                    c.writer_alive = false;
                    c.writer_waker = None;
                    c.wh = Some(wh);
                    c.dedicated = dedicated;
                    if let Some(w) = c.reader_waker.take() {
                        w.wake();
                    }
                }
                return;
            }
        };
        if !more {
            break;
        }
        if let Some(d) = dedicated.as_mut() {
            let (before, after) = d.transform(&mut batch);
            if let Some(c) = shard.borrow_mut().conns.get_mut(id.0) {
                c.buffered = c.buffered.saturating_sub(before) + after;
            }
        }
        let mut calls = 0u64;
        while !batch.is_empty() {
            let res = match batch.bufs.pop() {
                // One segment (the common case with coalesced fan-out): a plain send op, so the
                // kernel has no iovec array to import.
                Some(one) if batch.bufs.is_empty() => {
                    let (res, mut one) = wh.write(one).await;
                    if let Ok(n) = res {
                        if n < one.len() {
                            one.advance(n);
                            batch.bufs.push(one);
                        }
                    }
                    res
                }
                Some(last) => {
                    batch.bufs.push(last);
                    batch.fill_iov();
                    let (res, b) = wh.writev(batch).await;
                    batch = b;
                    if let Ok(n) = res {
                        batch.advance(n);
                    }
                    res
                }
                None => break,
            };
            calls += 1;
            match res {
                Ok(n) if n > 0 => {
                    if let Some(c) = shard.borrow_mut().conns.get_mut(id.0) {
                        c.buffered = c.buffered.saturating_sub(n);
                    }
                }
                _ => {
                    // The peer is gone: stop both sides.
                    if let Some(c) = shard.borrow_mut().conns.get_mut(id.0) {
                        c.kill();
                    }
                    writer_exited(&shard, id);
                    return;
                }
            }
        }
        let fin = {
            let s = shard.borrow();
            ShardStats::add(&s.my_stats().write_calls, calls);
            s.conns
                .get(id.0)
                .is_some_and(|c| c.fin_after_flush && c.sealed && c.queue.is_empty())
        };
        if fin {
            let _ = wh.shutdown().await;
            if let Some(c) = shard.borrow_mut().conns.get_mut(id.0) {
                c.fin_after_flush = false;
            }
        }
        batch.trim();
    }
    writer_exited(&shard, id);
    // `wh` drops here: FIN to the peer.
}

/// The writer task is gone for good: let a reader waiting on it finish the teardown.
fn writer_exited(shard: &ShardRef, id: ConnId) {
    if let Some(c) = shard.borrow_mut().conns.get_mut(id.0) {
        c.writer_alive = false;
        c.writer_waker = None;
        if let Some(w) = c.reader_waker.take() {
            w.wake();
        }
    }
}
