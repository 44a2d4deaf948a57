//! Fan-out: one message to every member of a room, on this shard and on the others, encoded once
//! per wire format. Recipients share each encoding (`Bytes`) by refcount; nothing is copied or
//! allocated per recipient beyond a queue slot.
//!
//! Wire formats ([`Wire`]): raw frames (`/ws/{room}`), envelope JSON and envelope CBOR (`/ws`),
//! each plain or permessage-deflate compressed (shared mode). A room tracks how many local members
//! take each format (its census), and only the formats someone takes are produced.
//!
//! Two paths:
//! - **raw**: a raw client's message is delivered to raw members directly, as before envelope
//!   rooms existed: locally at once, and through each other shard's inbox
//!   ([`ShardMsg::Raw`]). The message also goes to the room's home shard (see [`crate::home`]),
//!   which numbers it, keeps it in the room's history and sends it on to envelope members.
//! - **sequenced**: envelope publishes, API publishes and presence events are numbered (or
//!   produced) by the room's home shard, which sends one [`Bcast`] to every shard with members
//!   ([`ShardMsg::Event`]). Because each shard-to-shard channel is FIFO, every shard sees the
//!   room's sequenced messages in seq order.
//!
//! Coalescing: frames broadcast to a room during one turn of the shard's loop are appended to the
//! room's [`Outbox`] (one buffer per wire format) and handed to the members once, by the flush
//! task ([`run_flusher`]). A subscriber then gets everything of that turn in one buffer segment:
//! the kernel's send op, not the syscall, is the unit of cost.
//!
//! Cross-shard sends never block a shard's loop: a full peer inbox spills into an ordered
//! per-peer overflow queue drained by a task ([`ShardCore::send_to`]); readers stop reading while
//! it is long (back-pressure on publishers only).

use std::future::poll_fn;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::home::{ApiAnswer, ApiReq, HomeMsg, Reply};
use crate::metrics::ShardStats;
use crate::protocol::decoder::Message;
use crate::protocol::deflate::{Compressor, DeflateMode};
use crate::protocol::envelope::{self, Data, Format, ServerOp};
use crate::protocol::frame::{encode_server_frame, OpCode};
use crate::room::{ConnId, RoomId};
use crate::shard::{Direct, Push, ShardCore, ShardId, ShardRef, ShutdownMode, Tick};

/// Frames larger than this are never copied into an outbox; they go out as they are.
const COALESCE_FRAME_MAX: usize = 4096;
/// An outbox is flushed early once it holds this much.
const OUTBOX_MAX: usize = 64 * 1024;

/// The wire formats a room message can be sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Wire {
    /// Raw client, plain frames.
    Raw = 0,
    /// Raw client with permessage-deflate (shared mode).
    RawZ = 1,
    /// Envelope JSON, plain.
    Json = 2,
    /// Envelope JSON, compressed.
    JsonZ = 3,
    /// Envelope CBOR, plain.
    Cbor = 4,
    /// Envelope CBOR, compressed.
    CborZ = 5,
}

/// Number of wire formats.
pub const WIRES: usize = 6;

impl Wire {
    /// All formats, by index.
    pub const ALL: [Wire; WIRES] = [
        Wire::Raw,
        Wire::RawZ,
        Wire::Json,
        Wire::JsonZ,
        Wire::Cbor,
        Wire::CborZ,
    ];

    /// The wire of a connection: raw or an envelope format, compressed or not.
    pub fn of(format: Option<Format>, compressed: bool) -> Wire {
        match (format, compressed) {
            (None, false) => Wire::Raw,
            (None, true) => Wire::RawZ,
            (Some(Format::Json), false) => Wire::Json,
            (Some(Format::Json), true) => Wire::JsonZ,
            (Some(Format::Cbor), false) => Wire::Cbor,
            (Some(Format::Cbor), true) => Wire::CborZ,
        }
    }

    /// Raw frames (`/ws/{room}`)?
    pub fn is_raw(self) -> bool {
        matches!(self, Wire::Raw | Wire::RawZ)
    }

    /// Compressed variant?
    pub fn is_compressed(self) -> bool {
        matches!(self, Wire::RawZ | Wire::JsonZ | Wire::CborZ)
    }

    /// The envelope format, if any.
    pub fn format(self) -> Option<Format> {
        match self {
            Wire::Raw | Wire::RawZ => None,
            Wire::Json | Wire::JsonZ => Some(Format::Json),
            Wire::Cbor | Wire::CborZ => Some(Format::Cbor),
        }
    }

    /// The uncompressed variant.
    fn plain(self) -> Wire {
        match self {
            Wire::RawZ => Wire::Raw,
            Wire::JsonZ => Wire::Json,
            Wire::CborZ => Wire::Cbor,
            w => w,
        }
    }
}

/// One room message (or event) encoded per wire format: `None` where nobody on this shard takes
/// that format (or it does not apply, e.g. presence events for raw clients).
#[derive(Debug, Clone, Default)]
pub struct Frames(pub [Option<Bytes>; WIRES]);

impl Frames {
    /// A raw message: plain frame, and the shared compressed frame when there is one.
    pub fn raw(plain: Bytes, deflate: Option<Bytes>) -> Frames {
        let z = deflate.unwrap_or_else(|| plain.clone());
        Frames([Some(plain), Some(z), None, None, None, None])
    }

    /// Plain frames only (raw and raw-deflate members get the same bytes).
    pub fn plain(plain: Bytes) -> Frames {
        Frames::raw(plain, None)
    }

    /// The largest encoding.
    fn max_len(&self) -> usize {
        self.0.iter().flatten().map(Bytes::len).max().unwrap_or(0)
    }
}

/// A once-set slot for one encoding, shared between shards without a lock: the first shard to
/// need an encoding makes it; if two race, one keeps its own and the other's is dropped.
#[derive(Debug, Default)]
struct RaceCell(AtomicPtr<Bytes>);

impl RaceCell {
    fn get(&self) -> Option<&Bytes> {
        // SAFETY: a non-null pointer was made by `Box::into_raw` in `set` and is freed only in
        // `drop`, which has `&mut self`.
        unsafe { self.0.load(Ordering::Acquire).as_ref() }
    }

    fn set(&self, b: Bytes) -> &Bytes {
        let new = Box::into_raw(Box::new(b));
        match self
            .0
            .compare_exchange(ptr::null_mut(), new, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: we just published `new`; it lives until `drop`.
            Ok(_) => unsafe { &*new },
            Err(current) => {
                // SAFETY: `new` was never shared; `current` is the published one (see `get`).
                unsafe {
                    drop(Box::from_raw(new));
                    &*current
                }
            }
        }
    }
}

impl Drop for RaceCell {
    fn drop(&mut self) {
        let p = *self.0.get_mut();
        if !p.is_null() {
            // SAFETY: made by `Box::into_raw` in `set`; nobody else can hold it any more.
            unsafe { drop(Box::from_raw(p)) }
        }
    }
}

/// What a room message carries.
#[derive(Debug)]
pub enum Body {
    /// A raw client's message, as the server frame it became.
    Raw {
        /// The unmasked server frame.
        frame: Bytes,
    },
    /// An envelope or API publish.
    Data(Data),
}

/// What a sequenced broadcast is.
#[derive(Debug)]
pub enum Kind {
    /// A room message.
    Message {
        /// Publishing envelope connection (`None`: raw client or HTTP API).
        from: Option<u64>,
        /// The content.
        body: Body,
    },
    /// A presence event: `conn` subscribed.
    Join {
        /// The connection.
        conn: u64,
        /// Its info.
        info: Arc<Data>,
    },
    /// A presence event: `conn` left.
    Leave {
        /// The connection.
        conn: u64,
        /// Its info.
        info: Arc<Data>,
    },
}

/// A sequenced room message or presence event, shared by every shard (and kept in the room's
/// history), with each wire encoding made at most once.
#[derive(Debug)]
pub struct Bcast {
    /// Room name.
    pub room: Arc<str>,
    /// Seq in the room (0 for presence events).
    pub seq: u64,
    /// When it was sequenced (history ttl).
    pub(crate) at: Tick,
    /// Message or event.
    pub kind: Kind,
    /// The publishing connection (shard, slot), for `echo_to_sender = false`.
    pub origin: Option<(ShardId, ConnId)>,
    /// Raw members already got it on the direct path: only envelope formats go out.
    pub raw_done: bool,
    cells: [RaceCell; WIRES],
}

impl Bcast {
    pub(crate) fn new(
        room: Arc<str>,
        seq: u64,
        at: Tick,
        kind: Kind,
        origin: Option<(ShardId, ConnId)>,
    ) -> Bcast {
        Bcast {
            room,
            seq,
            at,
            kind,
            origin,
            raw_done: false,
            cells: Default::default(),
        }
    }

    /// A raw message sequenced after its direct delivery (raw members have it already).
    pub(crate) fn raw_sequenced(room: Arc<str>, seq: u64, at: Tick, frames: &Frames) -> Bcast {
        let plain = frames.0[Wire::Raw as usize].clone().unwrap_or_default();
        Bcast {
            room,
            seq,
            at,
            kind: Kind::Message {
                from: None,
                body: Body::Raw {
                    frame: plain.clone(),
                },
            },
            origin: None,
            raw_done: true,
            cells: Default::default(),
        }
    }

    /// Approximate payload bytes, for the history's byte cap.
    pub fn weight(&self) -> usize {
        fn data(d: &Data) -> usize {
            match d {
                Data::Bytes(b) => b.len(),
                Data::Text(t) => t.len(),
                Data::Array(a) => 8 + a.iter().map(data).sum::<usize>(),
                Data::Map(m) => 8 + m.iter().map(|(k, v)| data(k) + data(v)).sum::<usize>(),
                Data::Tag(_, v) => 8 + data(v),
                _ => 8,
            }
        }
        64 + match &self.kind {
            Kind::Message {
                body: Body::Raw { frame },
                ..
            } => frame.len(),
            Kind::Message {
                body: Body::Data(d),
                ..
            } => data(d),
            Kind::Join { info, .. } | Kind::Leave { info, .. } => data(info),
        }
    }

    /// Presence events only go to members that asked for them.
    pub fn is_event(&self) -> bool {
        !matches!(self.kind, Kind::Message { .. })
    }

    /// The message's data as envelope clients see it.
    pub fn data(&self) -> Option<std::borrow::Cow<'_, Data>> {
        match &self.kind {
            Kind::Message {
                body: Body::Data(d),
                ..
            } => Some(std::borrow::Cow::Borrowed(d)),
            Kind::Message {
                body: Body::Raw { frame },
                ..
            } => {
                let (op, payload) = split_frame(frame);
                Some(std::borrow::Cow::Owned(envelope::raw_frame_data(
                    op == OpCode::Text,
                    payload,
                )))
            }
            _ => None,
        }
    }

    /// `from` of a message.
    pub fn from(&self) -> Option<u64> {
        match &self.kind {
            Kind::Message { from, .. } => *from,
            _ => None,
        }
    }
}

/// Opcode and payload of one of our own (complete, unmasked, single) server frames.
pub(crate) fn split_frame(frame: &[u8]) -> (OpCode, &[u8]) {
    let op = match frame.first().map(|b| b & 0x0f) {
        Some(1) => OpCode::Text,
        _ => OpCode::Binary,
    };
    let hl = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    (op, frame.get(hl..).unwrap_or(&[]))
}

/// Frame an envelope payload: text messages for JSON, binary for CBOR.
pub(crate) fn envelope_frame(op: &ServerOp<'_>, format: Format) -> Bytes {
    let payload = envelope::encode_server(op, format);
    let opcode = if format.is_text() {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    encode_server_frame(opcode, false, &payload)
}

/// A message between shards. Every pair of shards talks through one FIFO channel, so messages
/// from one shard arrive at another in the order they were sent.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// A raw client's message for the local raw members of `room`; with `sequence`, this shard is
    /// the room's home and also numbers it.
    Raw {
        /// Interned room name.
        room: Arc<str>,
        /// The raw encodings.
        frames: Frames,
        /// Number it (this shard is the room's home).
        sequence: bool,
    },
    /// A sequenced message or presence event for the local members of its room.
    Event(Arc<Bcast>),
    /// A request to the room's home shard.
    Home(HomeMsg),
    /// A home shard's answer to one connection.
    Reply(Reply),
    /// An HTTP API request (answered on the channel).
    Api(ApiReq, flume::Sender<ApiAnswer>),
    /// Begin shutting down.
    Shutdown(ShutdownMode),
}

/// How a batch of frames is handed to a room's members.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct How {
    /// Leave this member out (`echo_to_sender = false`).
    pub(crate) skip: Option<ConnId>,
    /// Only members that asked for presence events.
    pub(crate) events_only: bool,
    /// Members with nothing queued get the frame written at once (see `Conn::send_direct`).
    pub(crate) direct: bool,
}

/// Frames waiting to be handed to a room's members at the end of the loop turn.
#[derive(Debug, Default)]
pub enum Outbox {
    /// Nothing pending.
    #[default]
    Empty,
    /// One broadcast: handed over as it is, no copy.
    One(Frames),
    /// Several broadcasts concatenated once per wire format, and how many.
    Many {
        /// One buffer per wire format.
        bufs: Box<[Option<BytesMut>; WIRES]>,
        /// Messages.
        n: u64,
    },
}

impl Outbox {
    /// Take the pending frames and the number of messages in them.
    fn take(&mut self) -> Option<(Frames, u64)> {
        match std::mem::take(self) {
            Outbox::Empty => None,
            Outbox::One(f) => Some((f, 1)),
            Outbox::Many { bufs, n } => {
                let mut f = Frames::default();
                for (slot, b) in f.0.iter_mut().zip(*bufs) {
                    *slot = b.map(BytesMut::freeze);
                }
                Some((f, n))
            }
        }
    }

    fn append(bufs: &mut [Option<BytesMut>; WIRES], f: &Frames) {
        for (b, x) in bufs.iter_mut().zip(&f.0) {
            if let Some(x) = x {
                b.get_or_insert_with(|| BytesMut::with_capacity(2048))
                    .extend_from_slice(x);
            }
        }
    }

    fn len(bufs: &[Option<BytesMut>; WIRES]) -> usize {
        bufs.iter().flatten().map(BytesMut::len).max().unwrap_or(0)
    }
}

impl ShardCore {
    /// Queue `frames` (holding `messages` messages) for every local member of `room` except
    /// `skip`, each member getting its wire format (members whose format is `None` get nothing).
    /// With `events_only`, only members that asked for presence events.
    pub(crate) fn deliver_local(
        &mut self,
        room: RoomId,
        frames: &Frames,
        messages: u64,
        how: How,
        now: Instant,
    ) {
        let How {
            skip,
            events_only,
            direct,
        } = how;
        let limit = self.cfg.max_buffered_bytes;
        let policy = self.cfg.slow_consumer;
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        let mut writes = 0u64;
        let direct = direct && self.direct_send;
        let mut over = std::mem::take(&mut self.over_limit);
        let mut spawn = std::mem::take(&mut self.spawn_list);
        for &m in &r.members {
            if Some(m) == skip {
                continue;
            }
            let Some(conn) = self.conns.get_mut(m.0) else {
                continue;
            };
            let Some(frame) = &frames.0[conn.wire as usize] else {
                continue;
            };
            if events_only && !conn.rooms.iter().any(|x| x.room == room && x.presence) {
                continue;
            }
            if direct {
                match conn.send_direct(frame) {
                    Some(Direct::Sent) => {
                        delivered += 1;
                        writes += 1;
                        continue;
                    }
                    Some(Direct::Partial) => {
                        delivered += 1;
                        writes += 1;
                        if !conn.writer_alive {
                            spawn.push(m);
                        }
                        continue;
                    }
                    Some(Direct::Failed) => continue,
                    None => {}
                }
            }
            match conn.push_broadcast(frame, limit, policy) {
                Push::Queued => {
                    delivered += 1;
                    if !conn.writer_alive {
                        spawn.push(m);
                    }
                }
                Push::Dropped => dropped += 1,
                Push::OverLimit => over.push(m),
                Push::Sealed => {}
            }
        }
        for id in over.drain(..) {
            self.close_slow_consumer(id, now);
        }
        self.over_limit = over;
        for id in spawn.drain(..) {
            self.kick(id);
        }
        self.spawn_list = spawn;
        let st = self.my_stats();
        if delivered > 0 {
            ShardStats::add(&st.deliveries, delivered * messages);
        }
        if dropped > 0 {
            ShardStats::add(&st.dropped_frames, dropped * messages);
        }
        if writes > 0 {
            ShardStats::add(&st.write_calls, writes);
        }
    }

    /// Broadcast `frames` to the local members of `room`, coalescing them with the other
    /// broadcasts of this loop turn.
    pub(crate) fn enqueue_room(
        &mut self,
        room: RoomId,
        frames: Frames,
        skip: Option<ConnId>,
        events_only: bool,
        now: Instant,
    ) {
        if skip.is_some() || events_only || frames.max_len() > COALESCE_FRAME_MAX {
            // Keep order: what is pending goes first, then this one on its own.
            self.flush_room(room, now);
            let how = How {
                skip,
                events_only,
                direct: !self.in_inbox,
            };
            self.deliver_local(room, &frames, 1, how, now);
            return;
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.outbox_remote |= self.in_inbox;
        // Keep only the formats someone here takes: nothing else is copied into the outbox.
        let mut frames = frames;
        for (f, &n) in frames.0.iter_mut().zip(&r.census) {
            if n == 0 {
                *f = None;
            }
        }
        match &mut r.outbox {
            Outbox::Empty => {
                r.outbox = Outbox::One(frames);
                self.mark_dirty(room);
            }
            Outbox::One(prev) => {
                let mut bufs: Box<[Option<BytesMut>; WIRES]> = Box::default();
                Outbox::append(&mut bufs, prev);
                Outbox::append(&mut bufs, &frames);
                r.outbox = Outbox::Many { bufs, n: 2 };
            }
            Outbox::Many { bufs, n } => {
                if Outbox::len(bufs) + frames.max_len() > OUTBOX_MAX {
                    self.flush_room(room, now);
                    if let Some(r) = self.rooms.get_mut(room) {
                        r.outbox = Outbox::One(frames);
                    }
                } else {
                    Outbox::append(bufs, &frames);
                    *n += 1;
                }
            }
        }
    }

    fn mark_dirty(&mut self, room: RoomId) {
        self.dirty_rooms.push(room);
        if self.dirty_rooms.len() == 1 {
            if let Some(w) = self.flush_waker.take() {
                w.wake();
            }
        }
    }

    /// Hand a room's pending frames to its members now.
    pub(crate) fn flush_room(&mut self, room: RoomId, now: Instant) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        // Frames that came through the inbox go out through the writer tasks: while a write is
        // in flight the next batches merge behind it (more messages per send op), which matters
        // more there than the ring round trip a direct send saves (measured with two shards:
        // 12.8 messages per send direct, 14.9 through writers).
        let direct = !std::mem::take(&mut r.outbox_remote);
        if let Some((frames, n)) = r.outbox.take() {
            let how = How {
                direct,
                ..How::default()
            };
            self.deliver_local(room, &frames, n, how, now);
        }
    }

    /// Flush every room touched in this turn.
    pub(crate) fn flush_all(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty_rooms);
        for room in dirty.drain(..) {
            // A stale id (room dropped, slot reused) finds an empty or legitimately filled
            // outbox of the room now in that slot: flushing it is correct either way.
            self.flush_room(room, now);
        }
        self.dirty_rooms = dirty;
    }

    /// The encoding of `b` for `wire` (made now if nobody made it yet); `None` when it does not
    /// apply (presence events to raw clients).
    pub(crate) fn wire_frame(&mut self, b: &Bcast, wire: Wire) -> Option<Bytes> {
        let cell = &b.cells[wire as usize];
        if let Some(f) = cell.get() {
            return Some(f.clone());
        }
        let frame = if wire.is_compressed() {
            let base = self.wire_frame(b, wire.plain())?;
            let (op, payload) = split_frame(&base);
            self.compress_shared(op, payload).unwrap_or(base)
        } else {
            match (wire.format(), &b.kind) {
                (None, Kind::Message { body, .. }) => match body {
                    Body::Raw { frame } => frame.clone(),
                    Body::Data(d) => {
                        let (text, payload) = envelope::data_to_raw(d);
                        let op = if text { OpCode::Text } else { OpCode::Binary };
                        encode_server_frame(op, false, &payload)
                    }
                },
                (None, _) => return None,
                (Some(format), kind) => {
                    ShardStats::add(&self.stats.shard(self.id.0).envelope_encodings, 1);
                    let room = &*b.room;
                    match kind {
                        Kind::Message { from, .. } => {
                            let data = b.data()?;
                            envelope_frame(
                                &ServerOp::Message {
                                    room,
                                    seq: b.seq,
                                    from: *from,
                                    data: &data,
                                },
                                format,
                            )
                        }
                        Kind::Join { conn, info } => envelope_frame(
                            &ServerOp::Join {
                                room,
                                conn: *conn,
                                info,
                            },
                            format,
                        ),
                        Kind::Leave { conn, info } => envelope_frame(
                            &ServerOp::Leave {
                                room,
                                conn: *conn,
                                info,
                            },
                            format,
                        ),
                    }
                }
            }
        };
        Some(cell.set(frame).clone())
    }

    /// The encodings of `b` that the local members of `room` take.
    pub(crate) fn frames_for(&mut self, room: RoomId, b: &Bcast) -> Frames {
        let census = self.rooms.get(room).map(|r| r.census).unwrap_or_default();
        let mut f = Frames::default();
        for w in Wire::ALL {
            if census[w as usize] > 0 && !(b.raw_done && w.is_raw()) {
                f.0[w as usize] = self.wire_frame(b, w);
            }
        }
        f
    }

    /// Deliver a sequenced message or event to the local members of its room.
    pub(crate) fn deliver_bcast(&mut self, b: &Bcast, now: Instant) {
        let Some(id) = self.rooms.find(&b.room) else {
            return;
        };
        let frames = self.frames_for(id, b);
        let skip = if self.cfg.echo_to_sender {
            None
        } else {
            b.origin.filter(|o| o.0 == self.id).map(|o| o.1)
        };
        self.enqueue_room(id, frames, skip, b.is_event(), now);
    }

    /// Handle one inbox message.
    pub(crate) fn handle_msg(&mut self, msg: ShardMsg, now: Instant) {
        match msg {
            ShardMsg::Raw {
                room,
                frames,
                sequence,
            } => {
                if let Some(id) = self.rooms.find(&room) {
                    self.enqueue_room(id, frames.clone(), None, false, now);
                }
                if sequence {
                    self.home_sequence_raw(room, &frames, now);
                }
            }
            ShardMsg::Event(b) => self.deliver_bcast(&b, now),
            ShardMsg::Home(m) => self.home_handle(m, now),
            ShardMsg::Reply(r) => self.handle_reply(r, now),
            ShardMsg::Api(req, tx) => {
                let answer = self.home_api(req, now);
                let _ = tx.try_send(answer);
            }
            ShardMsg::Shutdown(mode) => self.begin_shutdown(mode, now),
        }
    }

    /// Send `msg` to shard `peer` in order: straight into its inbox when it has room and nothing
    /// is waiting, otherwise behind what is waiting (drained by a task). Never blocks.
    pub(crate) fn send_to(&mut self, peer: ShardId, msg: ShardMsg) {
        let i = peer.0;
        if self.overflow[i].is_empty() {
            match self.peers[i].try_send(msg) {
                Ok(()) => return,
                Err(flume::TrySendError::Full(m)) => self.overflow[i].push_back(m),
                Err(flume::TrySendError::Disconnected(_)) => return,
            }
        } else {
            self.overflow[i].push_back(msg);
        }
        if !self.draining[i] {
            if let Some(me) = self.me.upgrade() {
                self.draining[i] = true;
                monoio::spawn(drain_overflow(me, i));
            }
        }
    }

    /// Messages waiting for room in peers' inboxes.
    pub(crate) fn backlog(&self) -> usize {
        self.overflow.iter().map(|q| q.len()).sum()
    }

    /// The encodings of a raw client's message: plain, and compressed once when deflate clients
    /// may receive it (here or on another shard).
    fn encode_raw(&mut self, room: RoomId, msg: &Message) -> Frames {
        let may_need_deflate = self
            .rooms
            .get(room)
            .is_some_and(|r| r.census[Wire::RawZ as usize] > 0)
            || self.peers.len() > 1;
        let deflate = if may_need_deflate {
            self.compress_shared(msg.opcode, msg.payload())
        } else {
            None
        };
        Frames::raw(msg.frame().clone(), deflate)
    }

    /// The shared-mode compressed frame of one message (15-bit window, no context kept), or
    /// `None` when shared compression is off or the message is under the threshold.
    fn compress_shared(&mut self, op: OpCode, payload: &[u8]) -> Option<Bytes> {
        let z = self.cfg.compression;
        if !(z.enabled && z.mode == DeflateMode::Shared && payload.len() >= z.threshold_bytes) {
            return None;
        }
        let level = z.level;
        let c = self
            .compressor
            .get_or_insert_with(|| Box::new(Compressor::new(level, 15)));
        ShardStats::add(&self.stats.shard(self.id.0).compressions, 1);
        Some(c.compress_frame(op, payload, true))
    }
}

/// Publish a raw client's message to `room`: encode it once per raw format, deliver it to the
/// local members (coalesced), hand the same `Bytes` to every other shard, and have the room's home
/// number it for envelope members and history.
pub(crate) fn publish_raw(shard: &ShardRef, from: ConnId, room: RoomId, msg: Message) {
    let mut s = shard.borrow_mut();
    let now = Instant::now();
    let frames = s.encode_raw(room, &msg);
    if s.cfg.echo_to_sender {
        s.enqueue_room(room, frames.clone(), None, false, now);
    } else {
        // The sender must be skipped, so this frame cannot share a buffer with others.
        s.enqueue_room(room, frames.clone(), Some(from), false, now);
    }
    let Some(name) = s.rooms.get(room).map(|r| r.name.clone()) else {
        return;
    };
    let home = s.home_of(&name);
    let me = s.id;
    for i in 0..s.peers.len() {
        if i == me.0 {
            continue;
        }
        s.send_to(
            ShardId(i),
            ShardMsg::Raw {
                room: name.clone(),
                frames: frames.clone(),
                sequence: home.0 == i,
            },
        );
    }
    if home == me {
        s.home_sequence_raw(name, &frames, now);
    }
}

/// Push what waits for shard `peer` into its inbox, in order, waiting while it is full.
async fn drain_overflow(shard: ShardRef, peer: usize) {
    loop {
        let next = {
            let mut s = shard.borrow_mut();
            match s.overflow[peer].pop_front() {
                Some(m) => Some((s.peers[peer].clone(), m)),
                None => {
                    s.draining[peer] = false;
                    None
                }
            }
        };
        let Some((tx, msg)) = next else { return };
        if tx.send_async(msg).await.is_err() {
            let mut s = shard.borrow_mut();
            s.overflow[peer].clear();
            s.draining[peer] = false;
            return;
        }
    }
}

/// Drain this shard's inbox in batches until every sender is gone.
pub(crate) async fn run_inbox(shard: ShardRef, rx: flume::Receiver<ShardMsg>) {
    while let Ok(first) = rx.recv_async().await {
        let now = Instant::now();
        let mut s = shard.borrow_mut();
        s.in_inbox = true;
        s.handle_msg(first, now);
        // Drain what else is already there in the same turn (bounded, to stay fair).
        for _ in 0..1024 {
            match rx.try_recv() {
                Ok(m) => s.handle_msg(m, now),
                Err(_) => break,
            }
        }
        s.in_inbox = false;
    }
}

/// The flush task: runs once per loop turn in which something was broadcast.
pub(crate) async fn run_flusher(shard: ShardRef) {
    loop {
        poll_fn(|cx| {
            let mut s = shard.borrow_mut();
            if s.dirty_rooms.is_empty() {
                s.flush_waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        shard.borrow_mut().flush_all(Instant::now());
    }
}

#[doc(hidden)]
pub mod bench {
    use std::rc::Rc;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;

    use crate::config::Config;
    use crate::metrics::Stats;
    use crate::room::RoomId;
    use crate::shard::{Phase, ShardCore, ShardId};

    /// One single-shard `ShardCore` holding one room whose members are open connections with no
    /// socket (`fd = -1`) and no writer task.
    pub struct LocalFanout {
        core: ShardCore,
        room: RoomId,
        now: Instant,
    }

    impl LocalFanout {
        /// A shard with one room of `members` open connections, each with a high-water mark of
        /// `max_buffered_bytes` (slow-consumer policy: the default, `close`).
        pub fn new(members: usize, max_buffered_bytes: usize) -> Self {
            assert!(members > 0, "a room needs at least one member");
            let cfg = Rc::new(Config {
                max_buffered_bytes,
                max_connections: members,
                ..Config::default()
            });
            // A one-shard daemon: the peer list holds only our own inbox, which local delivery
            // never uses.
            let (tx, _rx) = flume::bounded(1);
            let peers: Arc<[flume::Sender<super::ShardMsg>]> = Arc::from(vec![tx]);
            let mut core = ShardCore::new(
                ShardId(0),
                cfg,
                peers,
                Stats::new(1),
                Arc::new(AtomicUsize::new(0)),
            );
            let now = Instant::now();
            let mut room = None;
            for _ in 0..members {
                let id = core.add_conn(-1, now);
                core.conns[id.0].phase = Phase::Open;
                // Steady state of a busy room: every member has a writer task.
                core.conns[id.0].writer_alive = true;
                room = core.join_local(id, "bench", false);
            }
            let room = room.expect("join cannot fail below max_rooms_per_connection");
            LocalFanout { core, room, now }
        }

        /// Queue `frame` to every member at once through `deliver_local`, uncoalesced (the path
        /// of frames over the coalescing limit and of every inbox message before coalescing);
        /// nobody is skipped, as with `echo_to_sender = true`.
        pub fn broadcast(&mut self, frame: &Bytes) {
            self.core.deliver_local(
                self.room,
                &super::Frames::plain(frame.clone()),
                1,
                super::How::default(),
                self.now,
            );
        }

        /// Broadcast `frame` `n` times through the coalescing path, as `n` client messages in one
        /// loop turn are (`enqueue_room` each, then the end-of-turn `flush_all`).
        pub fn broadcast_coalesced(&mut self, frame: &Bytes, n: usize) {
            for _ in 0..n {
                self.core.enqueue_room(
                    self.room,
                    super::Frames::plain(frame.clone()),
                    None,
                    false,
                    self.now,
                );
            }
            self.core.flush_all(self.now);
        }

        /// Empty every member's queue, as the writers would after a successful `writev`
        /// (queue capacity is kept, as it is for a live connection).
        pub fn drain(&mut self) {
            for (_, conn) in self.core.conns.iter_mut() {
                conn.queue.clear();
                conn.buffered = 0;
            }
        }
    }
}
