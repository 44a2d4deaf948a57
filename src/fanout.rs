//! Fan-out: one encoded frame (`Bytes`) to every member of a room, on this shard and on the
//! others. Recipients share the frame by refcount; nothing is copied or allocated per recipient
//! beyond a queue slot.
//!
//! Coalescing: frames broadcast to a room during one turn of the shard's loop are appended to the
//! room's [`Outbox`] and handed to the members once, as one shared `Bytes`, by the flush task
//! ([`run_flusher`]), which runs after the tasks already ready in this turn. A subscriber then
//! gets everything of that turn in one buffer segment: the kernel's send op, not the syscall, is
//! the unit of cost, and fewer, larger segments per send is what pays.
//!
//! Cross-shard delivery goes through each shard's bounded inbox (flume), drained in batches by
//! [`run_inbox`]. A publisher whose peers' inboxes are full waits (back-pressure on the sender
//! only; no other connection is slowed).

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::metrics::ShardStats;
use crate::protocol::decoder::Message;
use crate::protocol::deflate::{Compressor, DeflateMode};
use crate::room::{ConnId, RoomId};
use crate::shard::{Push, ShardCore, ShardRef, ShutdownMode};

/// Frames larger than this are never copied into an outbox; they go out as they are.
const COALESCE_FRAME_MAX: usize = 4096;
/// An outbox is flushed early once it holds this much.
const OUTBOX_MAX: usize = 64 * 1024;

/// A message between shards.
#[derive(Debug)]
pub enum ShardMsg {
    /// Deliver `frame` to the local members of `room`.
    Broadcast {
        /// Interned room name.
        room: Arc<str>,
        /// The encoded server frames, shared.
        frames: Frames,
    },
    /// Begin shutting down.
    Shutdown(ShutdownMode),
}

/// One broadcast, encoded once per wire format: the plain frame, and (when compression applies)
/// the permessage-deflate frame with RSV1, compressed once for every deflate client on every shard.
#[derive(Debug, Clone)]
pub struct Frames {
    /// Uncompressed server frame(s).
    pub plain: Bytes,
    /// Compressed server frame(s), if any message in here was compressed.
    pub deflate: Option<Bytes>,
}

impl Frames {
    /// Plain frames only.
    pub fn plain(plain: Bytes) -> Frames {
        Frames {
            plain,
            deflate: None,
        }
    }

    /// What a member gets: deflate clients the compressed variant when there is one (an
    /// uncompressed message is always valid under permessage-deflate), others the plain one.
    #[inline]
    pub fn for_member(&self, compressed: bool) -> &Bytes {
        match (&self.deflate, compressed) {
            (Some(d), true) => d,
            _ => &self.plain,
        }
    }
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
        /// Plain frames.
        plain: BytesMut,
        /// Deflate-client variant, present once any message in here was compressed.
        deflate: Option<BytesMut>,
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
            Outbox::Many { plain, deflate, n } => Some((
                Frames {
                    plain: plain.freeze(),
                    deflate: deflate.map(BytesMut::freeze),
                },
                n,
            )),
        }
    }

    /// Append `f` to a `Many` outbox.
    fn append(plain: &mut BytesMut, deflate: &mut Option<BytesMut>, f: &Frames) {
        match (deflate.as_mut(), &f.deflate) {
            (Some(d), _) => d.extend_from_slice(f.for_member(true)),
            (None, Some(fd)) => {
                // First compressed message: the deflate variant starts as a copy of the plain
                // frames so far (uncompressed frames are valid for deflate clients).
                let mut d = BytesMut::with_capacity(plain.capacity());
                d.extend_from_slice(plain);
                d.extend_from_slice(fd);
                *deflate = Some(d);
            }
            (None, None) => {}
        }
        plain.extend_from_slice(&f.plain);
    }
}

impl ShardCore {
    /// Queue `frames` (holding `messages` messages) for every local member of `room` except
    /// `skip`, each member getting its wire format.
    pub(crate) fn deliver_local(
        &mut self,
        room: RoomId,
        frames: &Frames,
        messages: u64,
        skip: Option<ConnId>,
        now: Instant,
    ) {
        let limit = self.cfg.max_buffered_bytes;
        let policy = self.cfg.slow_consumer;
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        let mut over = std::mem::take(&mut self.over_limit);
        let mut spawn = std::mem::take(&mut self.spawn_list);
        for &m in &r.members {
            if Some(m) == skip {
                continue;
            }
            let Some(conn) = self.conns.get_mut(m.0) else {
                continue;
            };
            match conn.push_broadcast(frames.for_member(conn.compressed), limit, policy) {
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
    }

    /// Broadcast `frames` to the local members of `room`, coalescing them with the other
    /// broadcasts of this loop turn.
    pub(crate) fn enqueue_room(&mut self, room: RoomId, frames: Frames, now: Instant) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if frames.plain.len() > COALESCE_FRAME_MAX {
            // Keep order: what is pending goes first, then the big frame as it is.
            self.flush_room(room, now);
            self.deliver_local(room, &frames, 1, None, now);
            return;
        }
        match &mut r.outbox {
            Outbox::Empty => {
                r.outbox = Outbox::One(frames);
                self.mark_dirty(room);
            }
            Outbox::One(prev) => {
                let mut plain =
                    BytesMut::with_capacity((prev.plain.len() + frames.plain.len()).max(2048));
                plain.extend_from_slice(&prev.plain);
                let mut deflate = prev.deflate.as_ref().map(|d| {
                    let mut b = BytesMut::with_capacity(plain.capacity());
                    b.extend_from_slice(d);
                    b
                });
                Outbox::append(&mut plain, &mut deflate, &frames);
                r.outbox = Outbox::Many {
                    plain,
                    deflate,
                    n: 2,
                };
            }
            Outbox::Many { plain, deflate, n } => {
                if plain.len() + frames.plain.len() > OUTBOX_MAX {
                    self.flush_room(room, now);
                    if let Some(r) = self.rooms.get_mut(room) {
                        r.outbox = Outbox::One(frames);
                    }
                } else {
                    Outbox::append(plain, deflate, &frames);
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
        if let Some((frames, n)) = r.outbox.take() {
            self.deliver_local(room, &frames, n, None, now);
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

    /// Handle one inbox message.
    pub(crate) fn handle_msg(&mut self, msg: ShardMsg, now: Instant) {
        match msg {
            ShardMsg::Broadcast { room, frames } => {
                if let Some(id) = self.rooms.find(&room) {
                    self.enqueue_room(id, frames, now);
                }
            }
            ShardMsg::Shutdown(mode) => self.begin_shutdown(mode, now),
        }
    }
}

/// Publish a complete message from connection `from` to `room`: encode it once per wire format
/// (plain, and compressed once when deflate clients may receive it), deliver locally
/// (coalesced), then hand the same `Bytes` to every other shard. Returns the messages that could
/// not be handed over because a peer's inbox was full; the caller waits with [`send_blocked`].
pub(crate) fn publish(
    shard: &ShardRef,
    from: ConnId,
    room: RoomId,
    msg: Message,
) -> Option<Blocked> {
    let mut s = shard.borrow_mut();
    let now = Instant::now();
    let frames = s.encode_broadcast(room, &msg);
    if s.cfg.echo_to_sender {
        s.enqueue_room(room, frames.clone(), now);
    } else {
        // The sender must be skipped, so this frame cannot share a buffer with others.
        s.flush_room(room, now);
        s.deliver_local(room, &frames, 1, Some(from), now);
    }
    if s.peers.len() <= 1 {
        return None;
    }
    let name = s.rooms.get(room)?.name.clone();
    let mut blocked = None;
    for (i, tx) in s.peers.iter().enumerate() {
        if i == s.id.0 {
            continue;
        }
        let msg = ShardMsg::Broadcast {
            room: name.clone(),
            frames: frames.clone(),
        };
        if let Err(flume::TrySendError::Full(msg)) = tx.try_send(msg) {
            blocked.get_or_insert_with(Vec::new).push((tx.clone(), msg));
        }
    }
    blocked.map(Blocked)
}

impl ShardCore {
    /// The wire formats of one broadcast. The compressor runs at most once per broadcast, here,
    /// on the publishing shard; other shards receive the compressed `Bytes` as it is.
    fn encode_broadcast(&mut self, room: RoomId, msg: &Message) -> Frames {
        let z = self.cfg.compression;
        let may_need_deflate =
            self.rooms.get(room).is_some_and(|r| r.deflate_members > 0) || self.peers.len() > 1;
        let deflate = if z.enabled
            && z.mode == DeflateMode::Shared
            && msg.payload().len() >= z.threshold_bytes
            && may_need_deflate
        {
            let level = z.level;
            let c = self
                .compressor
                .get_or_insert_with(|| Box::new(Compressor::new(level, 15)));
            ShardStats::add(&self.stats.shard(self.id.0).compressions, 1);
            Some(c.compress_frame(msg.opcode, msg.payload(), true))
        } else {
            None
        };
        Frames {
            plain: msg.frame().clone(),
            deflate,
        }
    }
}

/// Cross-shard messages waiting for room in a full inbox.
#[derive(Debug)]
pub(crate) struct Blocked(Vec<(flume::Sender<ShardMsg>, ShardMsg)>);

/// Wait until every blocked message is in its peer's inbox (back-pressure on the publisher).
pub(crate) async fn send_blocked(blocked: Blocked) {
    for (tx, msg) in blocked.0 {
        let _ = tx.send_async(msg).await;
    }
}

/// Drain this shard's inbox in batches until every sender is gone.
pub(crate) async fn run_inbox(shard: ShardRef, rx: flume::Receiver<ShardMsg>) {
    while let Ok(first) = rx.recv_async().await {
        let now = Instant::now();
        let mut s = shard.borrow_mut();
        s.handle_msg(first, now);
        // Drain what else is already there in the same turn (bounded, to stay fair).
        for _ in 0..1024 {
            match rx.try_recv() {
                Ok(m) => s.handle_msg(m, now),
                Err(_) => break,
            }
        }
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
                room = core.join(id, "bench");
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
                None,
                self.now,
            );
        }

        /// Broadcast `frame` `n` times through the coalescing path, as `n` client messages in one
        /// loop turn are (`enqueue_room` each, then the end-of-turn `flush_all`).
        pub fn broadcast_coalesced(&mut self, frame: &Bytes, n: usize) {
            for _ in 0..n {
                self.core
                    .enqueue_room(self.room, super::Frames::plain(frame.clone()), self.now);
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
