//! One shard: the state a single monoio runtime owns (connections, rooms, read-buffer pool) and
//! the operations on it. Everything here is single-threaded (`Rc<RefCell<_>>`), and no borrow is
//! ever held across an `.await`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::rc::Weak;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use slab::Slab;
use smallvec::SmallVec;

use monoio::io::OwnedWriteHalf;
use monoio::net::TcpStream;

use crate::config::{Config, SlowConsumer};
use crate::connection::Dedicated;
use crate::fanout::{ShardMsg, Wire};
use crate::home::{HomeMsg, HomeRooms};
use crate::metrics::{ShardStats, Stats};
use crate::protocol::close::CloseCode;
use crate::protocol::deflate::{Compressor, Inflater};
use crate::protocol::frame::encode_close;
use crate::room::{ConnId, Membership, RoomId, RoomRegistry};

/// Index of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardId(pub usize);

/// Size of one pooled read buffer.
pub(crate) const READ_BUF_SIZE: usize = 64 * 1024;
/// Pooled read buffers kept when idle.
const READ_POOL_KEEP: usize = 32;

/// A compact timestamp: milliseconds since the process started, wrapping every ~49 days
/// (comparisons use wrapping differences, valid for spans under ~24 days). Four bytes instead of
/// an `Instant`'s sixteen: it is stored several times per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tick(u32);

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Tick {
    /// The tick of `t`.
    pub(crate) fn at(t: Instant) -> Tick {
        Tick(t.saturating_duration_since(epoch()).as_millis() as u32)
    }

    /// Has `self` been reached at `now`?
    pub(crate) fn reached(self, now: Tick) -> bool {
        (now.0.wrapping_sub(self.0) as i32) >= 0
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub(crate) fn since(self, earlier: Tick) -> std::time::Duration {
        let d = self.0.wrapping_sub(earlier.0) as i32;
        std::time::Duration::from_millis(d.max(0) as u64)
    }
}

/// Lifecycle of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the HTTP request head; dropped if not done by the deadline.
    Handshake { deadline: Tick },
    /// Upgraded and open.
    Open,
    /// A close frame was queued; the socket is dropped at the deadline at the latest.
    Closing { deadline: Tick },
}

/// Per-connection state owned by the shard. Deliberately small: an idle connection holds no
/// read buffer and an empty write queue.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) fd: RawFd,
    pub(crate) phase: Phase,
    /// Frames waiting for the writer task.
    pub(crate) queue: VecDeque<Bytes>,
    /// Bytes queued or in flight, like the browser's `bufferedAmount`.
    pub(crate) buffered: usize,
    pub(crate) writer_waker: Option<Waker>,
    /// No more frames are accepted (a close frame is queued, or the socket is gone).
    pub(crate) sealed: bool,
    /// The reader is done: the writer exits once the queue is flushed.
    pub(crate) finishing: bool,
    /// The socket was shut down by the shard (timeout, kill): the writer exits at once.
    pub(crate) killed: bool,
    /// Send FIN once the queue (ending with a close frame) is flushed: used when failing a
    /// connection, so the client sees the close frame and then the end of the stream.
    pub(crate) fin_after_flush: bool,
    /// The wire format broadcasts reach it in (raw or envelope; shared-deflate or plain).
    pub(crate) wire: Wire,
    /// Node-unique connection id (`welcome`, `from`, presence): a per-shard counter shifted left
    /// by 10 bits, or'ed with the shard index.
    pub(crate) uid: u64,
    /// A writer task is running for this connection. Writers are spawned when something is
    /// queued and retire after a quiet spell, so an idle connection has no writer task.
    pub(crate) writer_alive: bool,
    /// The sweep asked the (idle) writer to retire.
    pub(crate) retire: bool,
    /// When the writer last parked with an empty queue.
    pub(crate) writer_parked: Tick,
    /// The write half while no writer task holds it.
    pub(crate) wh: Option<OwnedWriteHalf<TcpStream>>,
    /// Dedicated-mode compressor while no writer task holds it.
    pub(crate) dedicated: Option<Box<Dedicated>>,
    /// The reader waiting for the writer to finish (connection teardown).
    pub(crate) reader_waker: Option<Waker>,
    pub(crate) last_seen: Tick,
    pub(crate) last_ping: Tick,
    pub(crate) rooms: SmallVec<[Membership; 1]>,
}

/// Answers still to come from a room's home for one connection's subscriptions to that room.
/// The home answers in order, so the cancelled ones arrive first.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PendingSub {
    /// A subscription the client still wants is in flight.
    pub(crate) live: bool,
    /// Answers to subscriptions the client cancelled (unsubscribed) before they came.
    pub(crate) cancelled: u32,
}

/// Outcome of a direct write ([`Conn::send_direct`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direct {
    /// All of it went out.
    Sent,
    /// Some went out; the rest is queued for the writer.
    Partial,
    /// The socket is broken: the connection was killed.
    Failed,
}

/// Outcome of queueing a broadcast frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    Queued,
    Dropped,
    /// Over the high-water mark under the `close` policy: the caller closes it.
    OverLimit,
    Sealed,
}

impl Conn {
    fn new(fd: RawFd, uid: u64, now: Tick, handshake_deadline: Tick) -> Conn {
        Conn {
            fd,
            uid,
            phase: Phase::Handshake {
                deadline: handshake_deadline,
            },
            queue: VecDeque::new(),
            buffered: 0,
            writer_waker: None,
            sealed: false,
            finishing: false,
            killed: false,
            fin_after_flush: false,
            wire: Wire::Raw,
            writer_alive: false,
            retire: false,
            writer_parked: now,
            wh: None,
            dedicated: None,
            reader_waker: None,
            last_seen: now,
            last_ping: now,
            rooms: SmallVec::new(),
        }
    }

    /// Queue a frame without any limit check (pong, ping, close, handshake replies).
    pub(crate) fn push_control(&mut self, frame: Bytes) {
        if self.sealed {
            return;
        }
        self.buffered += frame.len();
        self.queue.push_back(frame);
        self.wake_writer();
    }

    /// Queue a broadcast frame, applying the high-water mark.
    pub(crate) fn push_broadcast(
        &mut self,
        frame: &Bytes,
        limit: usize,
        policy: SlowConsumer,
    ) -> Push {
        if self.sealed {
            return Push::Sealed;
        }
        if self.buffered + frame.len() > limit && self.buffered > 0 {
            return match policy {
                SlowConsumer::Drop => Push::Dropped,
                SlowConsumer::Close => Push::OverLimit,
            };
        }
        self.buffered += frame.len();
        self.queue.push_back(frame.clone());
        self.wake_writer();
        Push::Queued
    }

    /// Write a broadcast frame at once with one non-blocking `send`, without the writer task:
    /// only when nothing is queued or in flight (`buffered == 0`), so order is kept. `None`: not
    /// tried or the socket is full (the caller queues the frame); otherwise what happened (a
    /// partial write queues the rest and wakes or needs a writer).
    pub(crate) fn send_direct(&mut self, frame: &Bytes) -> Option<Direct> {
        if self.sealed || self.buffered != 0 || self.fd < 0 {
            return None;
        }
        // SAFETY: `fd` is open while the connection is in the slab (see `kill`); the kernel
        // reads at most `frame.len()` bytes from memory we hold.
        let n = unsafe {
            libc::send(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
                _ => {
                    self.kill();
                    Some(Direct::Failed)
                }
            };
        }
        let n = n as usize;
        if n >= frame.len() {
            return Some(Direct::Sent);
        }
        let rest = frame.slice(n..);
        self.buffered += rest.len();
        self.queue.push_back(rest);
        self.wake_writer();
        Some(Direct::Partial)
    }

    /// Queue a close frame and seal the queue. With `discard_queue`, frames not yet handed to
    /// the writer are freed first (slow consumer, shutdown of a stuck client).
    pub(crate) fn start_close(
        &mut self,
        code: CloseCode,
        reason: &str,
        deadline: Tick,
        discard_queue: bool,
    ) {
        if self.sealed {
            return;
        }
        if discard_queue {
            let freed: usize = self.queue.iter().map(Bytes::len).sum();
            self.buffered -= freed;
            self.queue.clear();
            self.queue.shrink_to_fit();
        }
        self.push_control(encode_close(code, reason));
        self.sealed = true;
        if !matches!(self.phase, Phase::Closing { .. }) {
            self.phase = Phase::Closing { deadline };
        }
    }

    /// Shut the socket down from the shard side; pending reads and writes fail at once.
    pub(crate) fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            self.sealed = true;
            // SAFETY: `fd` stays open while the connection is in the slab: the tasks owning the
            // stream remove the entry before dropping it. shutdown(2) on a socket has no memory
            // effects.
            unsafe {
                libc::shutdown(self.fd, libc::SHUT_RDWR);
            }
            self.wake_writer();
        }
    }

    pub(crate) fn wake_writer(&mut self) {
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
    }
}

/// How the daemon is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// SIGTERM: stop accepting, close every client with 1001, flush, wait up to `drain_timeout`.
    Graceful,
    /// SIGINT: the same, but do not wait for slow clients.
    Fast,
}

/// The state one shard owns.
pub(crate) struct ShardCore {
    pub(crate) id: ShardId,
    pub(crate) cfg: Rc<Config>,
    pub(crate) conns: Slab<Conn>,
    pub(crate) rooms: RoomRegistry,
    /// Senders to every shard's inbox (index = shard id; our own is unused).
    pub(crate) peers: Arc<[flume::Sender<ShardMsg>]>,
    pub(crate) stats: Stats,
    /// Daemon-wide count of open WebSocket connections (checked only at upgrade).
    pub(crate) open_connections: Arc<AtomicUsize>,
    pub(crate) shutdown: Option<(ShutdownMode, Instant)>,
    /// Wakes the accept loop when shutdown begins.
    pub(crate) accept_waker: Option<Waker>,
    read_pool: Vec<BytesMut>,
    /// Scratch list reused by fan-out for members over their high-water mark.
    pub(crate) over_limit: Vec<ConnId>,
    /// Scratch list reused by fan-out for members that need a writer task spawned.
    pub(crate) spawn_list: Vec<ConnId>,
    /// Rooms with a non-empty outbox in this loop turn.
    pub(crate) dirty_rooms: Vec<RoomId>,
    /// Wakes the flush task when the first room becomes dirty.
    pub(crate) flush_waker: Option<Waker>,
    /// The shard's compressor for shared-mode broadcasts (created on first use).
    pub(crate) compressor: Option<Box<Compressor>>,
    /// This shard's own handle, to spawn writer tasks from inside its methods.
    pub(crate) me: Weak<RefCell<ShardCore>>,
    /// Inflaters for clients that agreed to `client_no_context_takeover`: they hold no state
    /// between messages, so a few per shard serve every such connection.
    inflaters: Vec<Inflater>,
    /// Rooms this shard is home for.
    pub(crate) home: HomeRooms,
    /// Per peer: messages waiting for room in its inbox, in order.
    pub(crate) overflow: Vec<VecDeque<ShardMsg>>,
    /// Per peer: a task is draining `overflow`.
    pub(crate) draining: Vec<bool>,
    /// Counter behind connection ids.
    next_uid: u64,
    /// Broadcast frames to a connection with nothing queued are written at once from the
    /// delivery loop (off in dedicated compression mode, whose writer compresses each frame).
    pub(crate) direct_send: bool,
    /// The inbox task is handling messages from other shards.
    pub(crate) in_inbox: bool,
    /// Envelope subscriptions sent to their room's home and not answered yet, by (connection
    /// id, room).
    pub(crate) pending_subs: std::collections::HashMap<(u64, Arc<str>), PendingSub>,
}

/// Shared handle to a shard's state.
pub(crate) type ShardRef = Rc<RefCell<ShardCore>>;

impl ShardCore {
    pub(crate) fn new(
        id: ShardId,
        cfg: Rc<Config>,
        peers: Arc<[flume::Sender<ShardMsg>]>,
        stats: Stats,
        open_connections: Arc<AtomicUsize>,
    ) -> ShardCore {
        let _ = epoch(); // ticks count from before the first connection
        let n = peers.len();
        ShardCore {
            home: HomeRooms::default(),
            overflow: (0..n).map(|_| VecDeque::new()).collect(),
            draining: vec![false; n],
            next_uid: 0,
            in_inbox: false,
            pending_subs: std::collections::HashMap::new(),
            direct_send: !(cfg.compression.enabled
                && cfg.compression.mode == crate::protocol::deflate::DeflateMode::Dedicated),
            id,
            cfg,
            conns: Slab::new(),
            rooms: RoomRegistry::default(),
            peers,
            stats,
            open_connections,
            shutdown: None,
            accept_waker: None,
            read_pool: Vec::new(),
            over_limit: Vec::new(),
            spawn_list: Vec::new(),
            dirty_rooms: Vec::new(),
            flush_waker: None,
            compressor: None,
            me: Weak::new(),
            inflaters: Vec::new(),
        }
    }

    pub(crate) fn my_stats(&self) -> &ShardStats {
        self.stats.shard(self.id.0)
    }

    /// Register a freshly accepted socket (in the handshake phase).
    pub(crate) fn add_conn(&mut self, fd: RawFd, now: Instant) -> ConnId {
        let deadline = Tick::at(now + self.cfg.handshake_timeout);
        self.next_uid += 1;
        let uid = (self.next_uid << 10) | self.id.0 as u64;
        ConnId(
            self.conns
                .insert(Conn::new(fd, uid, Tick::at(now), deadline)),
        )
    }

    /// Try to count a new WebSocket connection against `max_connections`.
    pub(crate) fn admit(&self) -> bool {
        let prev = self.open_connections.fetch_add(1, Ordering::AcqRel);
        if prev >= self.cfg.max_connections {
            self.open_connections.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        ShardStats::add(&self.my_stats().connections, 1);
        ShardStats::add(&self.my_stats().upgrades, 1);
        true
    }

    /// Forget a connection entirely (both its tasks are done).
    pub(crate) fn remove_conn(&mut self, id: ConnId, was_admitted: bool) {
        self.leave_all(id);
        if self.conns.try_remove(id.0).is_some() && was_admitted {
            self.open_connections.fetch_sub(1, Ordering::AcqRel);
            self.my_stats().connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Join a room by name on this shard only (the room's home is told separately). `None`
    /// when the connection is gone or in too many rooms.
    pub(crate) fn join_local(&mut self, id: ConnId, room: &str, presence: bool) -> Option<RoomId> {
        let conn = self.conns.get(id.0)?;
        if let Some(r) = self.rooms.find(room) {
            if conn.rooms.iter().any(|m| m.room == r) {
                return Some(r);
            }
        }
        if conn.rooms.len() >= self.cfg.max_rooms_per_connection {
            return None;
        }
        let before = self.rooms.len();
        let mut m = self.rooms.join(room, id);
        m.presence = presence;
        let conn = &mut self.conns[id.0];
        conn.rooms.push(m);
        let wire = conn.wire;
        if let Some(r) = self.rooms.get_mut(m.room) {
            r.census[wire as usize] += 1;
        }
        if self.rooms.len() != before {
            ShardStats::add(&self.my_stats().rooms, 1);
        }
        Some(m.room)
    }

    /// Join a raw room: locally, and counted by the room's home.
    pub(crate) fn join_raw(&mut self, id: ConnId, room: &str) -> Option<RoomId> {
        let rid = self.join_local(id, room, false)?;
        let wire = self.conns.get(id.0)?.wire;
        let name = self.rooms.get(rid)?.name.clone();
        let msg = HomeMsg::Join {
            room: name,
            shard: self.id,
            wire,
            sub: None,
        };
        self.send_home(msg, Instant::now());
        Some(rid)
    }

    /// Leave one room (here and at its home). Returns whether the connection was a member.
    pub(crate) fn leave_room(&mut self, id: ConnId, room: RoomId) -> bool {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return false;
        };
        let Some(pos) = conn.rooms.iter().position(|m| m.room == room) else {
            return false;
        };
        let m = conn.rooms.swap_remove(pos);
        self.leave_membership(id, m);
        true
    }

    /// Leave every room (no further deliveries reach this connection).
    pub(crate) fn leave_all(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.0) else {
            return;
        };
        let memberships = std::mem::take(&mut conn.rooms);
        for m in memberships {
            self.leave_membership(id, m);
        }
    }

    fn leave_membership(&mut self, id: ConnId, m: Membership) {
        let Some(conn) = self.conns.get(id.0) else {
            return;
        };
        let (wire, uid) = (conn.wire, conn.uid);
        let name = self.rooms.get(m.room).map(|r| r.name.clone());
        if let Some(r) = self.rooms.get_mut(m.room) {
            r.census[wire as usize] = r.census[wire as usize].saturating_sub(1);
        }
        let before = self.rooms.len();
        if let Some(moved) = self.rooms.leave(m) {
            if let Some(other) = self.conns.get_mut(moved.conn.0) {
                if let Some(mm) = other.rooms.iter_mut().find(|x| x.room == m.room) {
                    mm.slot = moved.slot;
                }
            }
        }
        if self.rooms.len() != before {
            self.my_stats().rooms.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(name) = name {
            let msg = HomeMsg::Leave {
                room: name,
                shard: self.id,
                wire,
                uid: (!wire.is_raw()).then_some(uid),
            };
            self.send_home(msg, Instant::now());
        }
    }

    /// Take a read buffer from the pool (allocating when empty).
    pub(crate) fn take_read_buf(&mut self) -> BytesMut {
        self.read_pool
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(READ_BUF_SIZE))
    }

    /// Give a read buffer back (only if it is a clean, full-size, unshared buffer).
    pub(crate) fn return_read_buf(&mut self, mut buf: BytesMut) {
        buf.clear();
        if buf.capacity() >= READ_BUF_SIZE && self.read_pool.len() < READ_POOL_KEEP {
            self.read_pool.push(buf);
        }
    }

    /// Make sure what is queued for `id` gets written: wake its writer, or spawn one.
    pub(crate) fn kick(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id.0) else {
            return;
        };
        if c.writer_alive {
            c.wake_writer();
            return;
        }
        if c.queue.is_empty() || c.killed {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let Some(wh) = c.wh.take() else { return };
        c.writer_alive = true;
        c.retire = false;
        monoio::spawn(crate::connection::write_loop(
            me,
            id,
            wh,
            c.dedicated.take(),
        ));
    }

    /// Take a pooled inflater (for `client_no_context_takeover` connections).
    pub(crate) fn take_inflater(&mut self) -> Inflater {
        self.inflaters.pop().unwrap_or_else(|| Inflater::new(15))
    }

    /// Return a pooled inflater.
    pub(crate) fn return_inflater(&mut self, inf: Inflater) {
        if self.inflaters.len() < 4 {
            self.inflaters.push(inf);
        }
    }

    /// The local room called `room`, if `id` is a member of it.
    pub(crate) fn member_room(&self, id: ConnId, room: &str) -> Option<RoomId> {
        let r = self.rooms.find(room)?;
        let c = self.conns.get(id.0)?;
        c.rooms.iter().any(|m| m.room == r).then_some(r)
    }

    /// Fail a connection: what its rooms have pending goes out first (its own echoes included),
    /// then a close frame with `code`, then FIN; the reader discards what the client still sends.
    pub(crate) fn fail_conn(&mut self, id: ConnId, code: CloseCode, reason: &str, now: Instant) {
        self.flush_conn_rooms(id, now);
        ShardStats::add(&self.my_stats().protocol_errors, 1);
        let deadline = Tick::at(now + self.cfg.close_timeout);
        if let Some(c) = self.conns.get_mut(id.0) {
            c.start_close(code, reason, deadline, false);
            c.fin_after_flush = true;
        }
        self.kick(id);
    }

    /// Hand out what is pending in every room of `id` (before closing it).
    pub(crate) fn flush_conn_rooms(&mut self, id: ConnId, now: Instant) {
        let rooms: SmallVec<[RoomId; 4]> = match self.conns.get(id.0) {
            Some(c) => c.rooms.iter().map(|m| m.room).collect(),
            None => return,
        };
        for r in rooms {
            self.flush_room(r, now);
        }
    }

    /// Close one connection because it is over its high-water mark.
    pub(crate) fn close_slow_consumer(&mut self, id: ConnId, now: Instant) {
        self.leave_all(id);
        let deadline = Tick::at(now + self.cfg.close_timeout);
        if let Some(c) = self.conns.get_mut(id.0) {
            c.start_close(CloseCode::POLICY, "slow consumer", deadline, true);
            ShardStats::add(&self.stats.shard(self.id.0).slow_consumer_closes, 1);
        }
        self.kick(id);
    }
}
