//! Connections as their shard owns them: lifecycle, the outbound queue with its high-water mark,
//! direct sends, close; [`Conns`], the shard's slab of them with the pooled read buffers and
//! inflaters; and [`writer`], the task that writes a connection's queue.
//!
//! Everything here is single-threaded and synchronous except the writer task. An idle connection
//! holds no read buffer, an empty queue and no writer task.

pub(crate) mod writer;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::task::Waker;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use monoio::io::OwnedWriteHalf;
use monoio::net::TcpStream;
use slab::Slab;
use smallvec::SmallVec;

use crate::config::SlowConsumer;
use crate::ids::{ConnId, RoomId, ShardId, Tick};
use crate::protocol::close::CloseCode;
use crate::protocol::deflate::Inflater;
use crate::protocol::frame::encode_close;
use crate::tls::session::TlsState;
use crate::wire::{gap_frame, Wire};
use writer::Dedicated;

/// Where a member sits in a room, kept by the connection so it can leave in O(1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Membership {
    /// The room.
    pub(crate) room: RoomId,
    /// Index in the room's member list (u32 keeps a membership at 16 bytes, inline in each
    /// `Conn`).
    pub(crate) slot: u32,
    /// The member receives presence events (`join`/`leave`) of this room.
    pub(crate) presence: bool,
    /// Messages of this room were lost for this member (slow-consumer policy) and the next one
    /// it gets must say so (`"gap": true`).
    pub(crate) gap: bool,
}

/// The room tag of queued frames that belong to no room.
pub(crate) const NO_ROOM: u32 = u32::MAX;
/// The tag of the rest of a frame whose beginning is already in the socket (a partial direct
/// send): no policy may discard it, or the stream would carry a frame cut in half.
pub(crate) const REST_OF_SENT: u32 = u32::MAX - 1;

/// Size of one pooled read buffer.
pub(crate) const READ_BUF_SIZE: usize = 64 * 1024;
/// Pooled read buffers kept when idle.
const READ_POOL_KEEP: usize = 32;
/// Pooled inflaters kept.
const INFLATER_POOL_KEEP: usize = 4;

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
    /// Each with the room it was broadcast to ([`NO_ROOM`] for replies and control frames,
    /// [`REST_OF_SENT`] for the rest of a partly written frame), for the per-room slow-consumer
    /// policies.
    pub(crate) queue: VecDeque<(Bytes, u32)>,
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
    /// When its token runs out (with the leeway), in seconds since the Unix epoch; 0: never.
    pub(crate) expires: u32,
    pub(crate) rooms: SmallVec<[Membership; 1]>,
    /// Some membership has `gap` set: broadcasts take the slow path (no direct send).
    pub(crate) gap_pending: bool,
    /// TLS state (`[tls]`): the reader decrypts with it, the writer encrypts the queued frames
    /// with it; such connections take no direct sends (their frames go through the writer).
    pub(crate) tls: Option<Box<TlsState>>,
    /// Closed with its queue discarded: the writer also drops what it holds and has not
    /// started sending (plain connections only: a TLS stream cannot skip encrypted bytes).
    pub(crate) drop_in_flight: bool,
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
    /// Over the mark under `drop_oldest` or `conflate`: `dropped` older frames of the room were
    /// discarded, and the new one was `queued` (`drop_oldest` drops it when even that is not
    /// enough).
    Replaced {
        dropped: u32,
        queued: bool,
    },
}

impl Conn {
    pub(crate) fn new(fd: RawFd, uid: u64, now: Tick, handshake_deadline: Tick) -> Conn {
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
            expires: 0,
            rooms: SmallVec::new(),
            gap_pending: false,
            drop_in_flight: false,
            tls: None,
        }
    }

    /// Queue a frame without any limit check: only for pings, the close frame and the envelope
    /// `welcome`, which are a few bytes and at most one at a time.
    #[inline]
    pub(crate) fn push_control(&mut self, frame: Bytes) {
        if self.sealed {
            return;
        }
        let frame = if self.wire == Wire::Sse {
            sse_frames(&frame)
        } else {
            frame
        };
        if frame.is_empty() {
            return;
        }
        self.buffered += frame.len();
        self.queue.push_back((frame, NO_ROOM));
        self.wake_writer();
    }

    /// Would `extra` more bytes stay within the high-water mark `limit`? An empty queue takes
    /// anything (one frame or one reply may be larger than the limit on its own).
    #[inline]
    pub(crate) fn fits(&self, extra: usize, limit: usize) -> bool {
        self.buffered == 0 || self.buffered + extra <= limit
    }

    /// Queue a broadcast frame of `room`, applying the high-water mark and, over it, `policy`.
    #[inline]
    pub(crate) fn push_broadcast(
        &mut self,
        frame: &Bytes,
        limit: usize,
        policy: SlowConsumer,
        room: RoomId,
    ) -> Push {
        if self.sealed {
            return Push::Sealed;
        }
        let room = room.0 as u32;
        if self.gap_pending || !self.fits(frame.len(), limit) {
            return self.push_lossy(frame, limit, policy, room);
        }
        self.buffered += frame.len();
        self.queue.push_back((frame.clone(), room));
        self.wake_writer();
        Push::Queued
    }

    /// Over the mark, or a loss to report: `drop` drops the new frame; `drop_oldest` discards
    /// the room's oldest queued frames until the new one fits (or drops it); `conflate` discards
    /// all of the room's queued frames (the new one is the room's latest state). Frames of other
    /// rooms, replies and the rest of a partly written frame are never touched. Envelope
    /// clients learn of every loss from `"gap": true` on the next message of the room they get
    /// ([`Conn::lost`]).
    #[cold]
    fn push_lossy(&mut self, frame: &Bytes, limit: usize, policy: SlowConsumer, room: u32) -> Push {
        let mut dropped = 0u32;
        let over = !self.fits(frame.len(), limit);
        if over {
            match policy {
                SlowConsumer::Close => return Push::OverLimit,
                SlowConsumer::Drop => {
                    self.lost(room, false);
                    return Push::Dropped;
                }
                SlowConsumer::DropOldest | SlowConsumer::Conflate => {
                    dropped = self.discard_room_frames(frame.len(), limit, policy, room);
                    if dropped > 0 {
                        self.lost(room, true);
                    }
                    if policy == SlowConsumer::DropOldest && !self.fits(frame.len(), limit) {
                        self.lost(room, false);
                        return Push::Replaced {
                            dropped,
                            queued: false,
                        };
                    }
                }
            }
        }
        let frame = self.take_gap_mark(frame, room);
        self.buffered += frame.len();
        self.queue.push_back((frame, room));
        self.wake_writer();
        if over {
            Push::Replaced {
                dropped,
                queued: true,
            }
        } else {
            Push::Queued
        }
    }

    /// Discard queued frames of `room` (all of them for `conflate`, the oldest until `extra`
    /// fits for `drop_oldest`); returns how many.
    fn discard_room_frames(
        &mut self,
        extra: usize,
        limit: usize,
        policy: SlowConsumer,
        room: u32,
    ) -> u32 {
        let mut dropped = 0u32;
        let mut i = 0;
        while i < self.queue.len() {
            if policy != SlowConsumer::Conflate && self.fits(extra, limit) {
                break;
            }
            if self.queue[i].1 == room {
                if let Some((b, _)) = self.queue.remove(i) {
                    self.buffered -= b.len();
                    dropped += 1;
                }
            } else {
                i += 1;
            }
        }
        dropped
    }

    /// Frames of `room` were lost for this envelope connection. The first message of the room
    /// it will still get carries `"gap": true`: with `queued_after` (older frames were discarded)
    /// the first queued frame of the room is marked now, if there is one; otherwise the next
    /// frame pushed for the room is ([`Conn::take_gap_mark`]).
    #[cold]
    fn lost(&mut self, room: u32, queued_after: bool) {
        if self.wire.is_raw() {
            return;
        }
        if queued_after {
            let wire = self.wire;
            if let Some((b, _)) = self.queue.iter_mut().find(|(_, r)| *r == room) {
                if let Some(m) = gap_frame(b, wire) {
                    self.buffered = self.buffered - b.len() + m.len();
                    *b = m;
                    return;
                }
            }
        }
        if let Some(m) = self.rooms.iter_mut().find(|m| m.room.0 as u32 == room) {
            m.gap = true;
            self.gap_pending = true;
        }
    }

    /// Messages of `room` were lost before what comes next (cluster mode: not recoverable from
    /// the room's history stream): the next one this connection gets says `"gap": true`.
    #[cold]
    pub(crate) fn mark_gap(&mut self, room: u32) {
        self.lost(room, false);
    }

    /// `frame`, marked `"gap": true` if the room has a loss to report (which is then reported).
    fn take_gap_mark(&mut self, frame: &Bytes, room: u32) -> Bytes {
        let Some(m) = self
            .rooms
            .iter_mut()
            .find(|m| m.gap && m.room.0 as u32 == room)
        else {
            return frame.clone();
        };
        let Some(marked) = gap_frame(frame, self.wire) else {
            // Presence events only: the mark waits for the next message.
            return frame.clone();
        };
        m.gap = false;
        self.gap_pending = self.rooms.iter().any(|m| m.gap);
        marked
    }

    /// Queue the frames of one reply (a pong, an ack, an error, a presence list, a history page,
    /// a subscribe answer with its replay) under the same high-water mark as broadcasts, all or
    /// nothing: a client that asks and never reads is a slow consumer like any other.
    pub(crate) fn push_reply(
        &mut self,
        frames: impl IntoIterator<Item = Bytes> + Clone,
        limit: usize,
        policy: SlowConsumer,
    ) -> Push {
        if self.sealed {
            return Push::Sealed;
        }
        if self.wire == Wire::Sse {
            let sse: Vec<Bytes> = frames.into_iter().map(|f| sse_frames(&f)).collect();
            return self.push_reply_frames(sse, limit, policy);
        }
        self.push_reply_frames(frames, limit, policy)
    }

    fn push_reply_frames(
        &mut self,
        frames: impl IntoIterator<Item = Bytes> + Clone,
        limit: usize,
        policy: SlowConsumer,
    ) -> Push {
        let total: usize = frames.clone().into_iter().map(|f| f.len()).sum();
        if !self.fits(total, limit) {
            return match policy {
                // Per-room policies are for broadcasts; a reply over the mark is dropped.
                SlowConsumer::Drop | SlowConsumer::DropOldest | SlowConsumer::Conflate => {
                    Push::Dropped
                }
                SlowConsumer::Close => Push::OverLimit,
            };
        }
        self.buffered += total;
        self.queue.extend(frames.into_iter().map(|f| (f, NO_ROOM)));
        self.wake_writer();
        Push::Queued
    }

    /// Write a broadcast frame at once with one non-blocking `send`, without the writer task:
    /// only when nothing is queued or in flight (`buffered == 0`), so order is kept. `None`: not
    /// tried or the socket is full (the caller queues the frame); otherwise what happened (a
    /// partial write queues the rest and wakes or needs a writer).
    #[inline]
    pub(crate) fn send_direct(&mut self, frame: &Bytes) -> Option<Direct> {
        if self.sealed
            || self.buffered != 0
            || self.fd < 0
            || self.gap_pending
            || self.tls.is_some()
        {
            return None;
        }
        // SAFETY: `fd` is open while the connection is in the slab (see `kill`); the kernel
        // reads at most `frame.len()` bytes from memory we hold. `fd < 0` (benches) is refused
        // above.
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
        self.queue.push_back((rest, REST_OF_SENT));
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
            // Keep the rest of a frame already partly in the socket: the close frame must
            // follow whole frames only.
            let keep = usize::from(self.queue.front().is_some_and(|f| f.1 == REST_OF_SENT));
            let freed: usize = self.queue.iter().skip(keep).map(|(b, _)| b.len()).sum();
            self.buffered -= freed;
            self.queue.truncate(keep);
            self.queue.shrink_to_fit();
            self.drop_in_flight = self.tls.is_none();
        }
        self.push_control(encode_close(code, reason));
        self.sealed = true;
        if self.wire == Wire::Sse {
            // An event stream has no close handshake: the close event, then FIN.
            self.fin_after_flush = true;
        }
        if !matches!(self.phase, Phase::Closing { .. }) {
            self.phase = Phase::Closing { deadline };
        }
    }

    /// Shut the socket down from the shard side; pending reads and writes fail at once.
    #[inline]
    pub(crate) fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            self.sealed = true;
            // SAFETY: shutdown(2) has no memory effects. The fd is open while the connection is
            // in the slab: the socket closes when the last half of the stream drops, and the
            // code that drops it removes the slab entry in the same synchronous step (no await
            // in between: `transport::ws::serve` and `reader_task`), so no other code can reach
            // this entry with a closed, possibly reused fd. A negative fd (benches) fails with
            // EBADF.
            unsafe {
                libc::shutdown(self.fd, libc::SHUT_RDWR);
            }
            self.wake_writer();
        }
    }

    #[inline]
    pub(crate) fn wake_writer(&mut self) {
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
    }
}

/// A shard's connections: the slab, the counter behind node-unique ids, and the pools of read
/// buffers and stateless inflaters the connections borrow from.
#[derive(Default)]
pub(crate) struct Conns {
    slab: Slab<Conn>,
    next_uid: u64,
    read_pool: Vec<BytesMut>,
    /// Inflaters for clients that agreed to `client_no_context_takeover`: they hold no state
    /// between messages, so a few per shard serve every such connection.
    inflaters: Vec<Inflater>,
}

impl std::ops::Deref for Conns {
    type Target = Slab<Conn>;
    fn deref(&self) -> &Slab<Conn> {
        &self.slab
    }
}

impl std::ops::DerefMut for Conns {
    fn deref_mut(&mut self) -> &mut Slab<Conn> {
        &mut self.slab
    }
}

impl Conns {
    /// Register a freshly accepted socket (in the handshake phase). Its node-unique id is a
    /// per-shard counter shifted left by 10 bits, or'ed with the shard index.
    pub(crate) fn add(
        &mut self,
        shard: ShardId,
        fd: RawFd,
        now: Instant,
        deadline: Instant,
    ) -> ConnId {
        self.next_uid += 1;
        let uid = (self.next_uid << 10) | shard.0 as u64;
        ConnId(
            self.slab
                .insert(Conn::new(fd, uid, Tick::at(now), Tick::at(deadline))),
        )
    }

    /// Take a read buffer from the pool (allocating when empty).
    pub(crate) fn take_read_buf(&mut self) -> BytesMut {
        self.read_pool
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(READ_BUF_SIZE))
    }

    /// Give a read buffer back (only a clean, full-size, unshared one is kept).
    pub(crate) fn return_read_buf(&mut self, mut buf: BytesMut) {
        buf.clear();
        if buf.capacity() >= READ_BUF_SIZE && self.read_pool.len() < READ_POOL_KEEP {
            self.read_pool.push(buf);
        }
    }

    /// Take a pooled inflater (for `client_no_context_takeover` connections).
    pub(crate) fn take_inflater(&mut self) -> Inflater {
        self.inflaters.pop().unwrap_or_else(|| Inflater::new(15))
    }

    /// Return a pooled inflater.
    pub(crate) fn return_inflater(&mut self, inf: Inflater) {
        if self.inflaters.len() < INFLATER_POOL_KEEP {
            self.inflaters.push(inf);
        }
    }
}

/// Our WebSocket frame(s) for a Server-Sent Events stream (cold: replies and control frames).
/// Frames made in the stream's own encoding already (broadcasts, a resume's replay: they start
/// with `id:` or `data:`, while our WebSocket frames start with FIN set) pass as they are.
#[cold]
fn sse_frames(frame: &Bytes) -> Bytes {
    if frame.first().is_some_and(|b| b & 0x80 == 0) {
        return frame.clone();
    }
    Bytes::from(crate::protocol::sse::from_ws_frames(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        let now = Tick::at(Instant::now());
        let mut c = Conn::new(-1, 1, now, now);
        c.phase = Phase::Open;
        c
    }

    #[test]
    fn replies_count_toward_the_high_water_mark() {
        let mut c = conn();
        let page = Bytes::from(vec![0u8; 100]);
        // An empty queue takes a reply larger than the limit on its own.
        assert_eq!(
            c.push_reply([page.clone()], 50, SlowConsumer::Close),
            Push::Queued
        );
        assert_eq!(c.buffered, 100);
        assert_eq!(
            c.push_reply([page.clone()], 150, SlowConsumer::Close),
            Push::OverLimit
        );
        assert_eq!(
            c.push_reply([page.clone()], 150, SlowConsumer::Drop),
            Push::Dropped
        );
        assert_eq!(c.queue.len(), 1, "a refused reply queues nothing");
        // All or nothing: two frames of 30 fit under 200, not under 150.
        let small = Bytes::from(vec![0u8; 30]);
        assert_eq!(
            c.push_reply([small.clone(), small.clone()], 150, SlowConsumer::Close),
            Push::OverLimit
        );
        assert_eq!(
            c.push_reply([small.clone(), small], 200, SlowConsumer::Close),
            Push::Queued
        );
        assert_eq!((c.queue.len(), c.buffered), (3, 160));
        c.sealed = true;
        assert_eq!(
            c.push_reply([page], 1000, SlowConsumer::Close),
            Push::Sealed
        );
    }

    #[test]
    fn broadcasts_and_replies_share_one_limit() {
        let mut c = conn();
        let f = Bytes::from(vec![0u8; 60]);
        assert_eq!(
            c.push_broadcast(&f, 100, SlowConsumer::Close, RoomId(0)),
            Push::Queued
        );
        assert_eq!(
            c.push_reply([f.clone()], 100, SlowConsumer::Close),
            Push::OverLimit
        );
        assert_eq!(
            c.push_broadcast(&f, 100, SlowConsumer::Close, RoomId(0)),
            Push::OverLimit
        );
    }

    fn frame(n: u8, len: usize) -> Bytes {
        Bytes::from(vec![n; len])
    }

    #[test]
    fn a_slow_consumer_close_keeps_the_rest_of_a_partly_sent_frame() {
        let mut c = conn();
        // A direct send wrote the start of a frame; its rest waits at the front of the queue.
        c.queue.push_back((frame(7, 40), REST_OF_SENT));
        c.buffered = 40;
        for _ in 0..3 {
            c.push_broadcast(&frame(1, 50), 1000, SlowConsumer::Close, RoomId(0));
        }
        c.start_close(
            CloseCode::POLICY,
            "slow consumer",
            Tick::at(Instant::now()),
            true,
        );
        let close = encode_close(CloseCode::POLICY, "slow consumer");
        assert_eq!(
            c.queue.len(),
            2,
            "the rest of the cut frame, then the close"
        );
        assert_eq!(c.queue[0].0, frame(7, 40));
        assert_eq!(c.queue[1].0, close);
        assert_eq!(c.buffered, 40 + close.len());
        // Without a partly sent frame, everything queued goes.
        let mut c = conn();
        c.push_broadcast(&frame(1, 50), 1000, SlowConsumer::Close, RoomId(0));
        c.start_close(
            CloseCode::POLICY,
            "slow consumer",
            Tick::at(Instant::now()),
            true,
        );
        assert_eq!(c.queue.len(), 1);
        assert_eq!(c.buffered, close.len());
    }

    fn firsts(c: &Conn) -> Vec<(u8, u32)> {
        c.queue.iter().map(|(b, r)| (b[0], *r)).collect()
    }

    #[test]
    fn drop_oldest_makes_room_in_the_same_room_only() {
        let mut c = conn();
        let (a, b) = (RoomId(1), RoomId(2));
        let p = SlowConsumer::DropOldest;
        assert_eq!(c.push_broadcast(&frame(1, 40), 100, p, a), Push::Queued);
        assert_eq!(
            c.push_reply([frame(9, 10)], 100, SlowConsumer::Close),
            Push::Queued
        );
        assert_eq!(c.push_broadcast(&frame(2, 40), 100, p, b), Push::Queued);
        // 90 queued; a 40-byte frame of room a needs frame 1 (room a) to go.
        assert_eq!(
            c.push_broadcast(&frame(3, 40), 100, p, a),
            Push::Replaced {
                dropped: 1,
                queued: true
            }
        );
        assert_eq!(firsts(&c), vec![(9, NO_ROOM), (2, 2), (3, 1)]);
        assert_eq!(c.buffered, 90);
        assert!(c.buffered <= 100, "never over the mark");
        // Room a has only frame 3 to give; a 60-byte frame still does not fit: dropped, and
        // what was dropped for it is gone too.
        assert_eq!(
            c.push_broadcast(&frame(4, 60), 100, p, a),
            Push::Replaced {
                dropped: 1,
                queued: false
            }
        );
        assert_eq!(firsts(&c), vec![(9, NO_ROOM), (2, 2)]);
        assert_eq!(c.buffered, 50);
    }

    #[test]
    fn conflate_keeps_the_latest_frame_of_the_room() {
        let mut c = conn();
        let (a, b) = (RoomId(1), RoomId(2));
        let p = SlowConsumer::Conflate;
        for n in 1..=3 {
            assert_eq!(c.push_broadcast(&frame(n, 30), 100, p, a), Push::Queued);
        }
        assert_eq!(c.push_broadcast(&frame(7, 10), 100, p, b), Push::Queued);
        assert_eq!(
            c.push_broadcast(&frame(4, 30), 100, p, a),
            Push::Replaced {
                dropped: 3,
                queued: true
            }
        );
        assert_eq!(firsts(&c), vec![(7, 2), (4, 1)]);
        assert_eq!(c.buffered, 40);
        // The rest of a partly written frame is never touched.
        c.queue.push_front((frame(8, 95), NO_ROOM));
        c.buffered += 95;
        assert_eq!(
            c.push_broadcast(&frame(5, 30), 100, p, a),
            Push::Replaced {
                dropped: 1,
                queued: true
            }
        );
        assert_eq!(firsts(&c), vec![(8, NO_ROOM), (7, 2), (5, 1)]);
    }

    /// An envelope JSON message frame of `room` 1 with `seq`, padded to about 60 bytes.
    fn msg(seq: u64) -> Bytes {
        let text = format!(
            r#"{{"op":"message","room":"r","seq":{seq},"from":null,"data":"{}"}}"#,
            "x".repeat(10)
        );
        crate::protocol::frame::encode_server_frame(
            crate::protocol::frame::OpCode::Text,
            false,
            text.as_bytes(),
        )
    }

    /// (seq, marked) of each queued frame.
    fn seqs(c: &Conn) -> Vec<(u64, bool)> {
        c.queue
            .iter()
            .map(|(b, _)| {
                let t = std::str::from_utf8(&b[2..]).unwrap();
                let seq = t.split(r#""seq":"#).nth(1).unwrap();
                let seq: u64 = seq[..seq.find(',').unwrap()].parse().unwrap();
                (seq, t.contains(r#""gap":true"#))
            })
            .collect()
    }

    fn envelope_member() -> Conn {
        let mut c = conn();
        c.wire = Wire::Json;
        c.rooms.push(Membership {
            room: RoomId(1),
            slot: 0,
            presence: false,
            gap: false,
        });
        c
    }

    #[test]
    fn the_first_message_after_a_loss_carries_gap() {
        let len = msg(1).len();
        let limit = 2 * len + 20; // two messages, one of them marked
        let r = RoomId(1);
        // drop: 3 is lost, so 4 (the next the client gets) is marked; 5 is not.
        let mut c = envelope_member();
        for seq in 1..=3 {
            c.push_broadcast(&msg(seq), limit, SlowConsumer::Drop, r);
        }
        assert!(c.gap_pending, "no direct send may skip the mark");
        c.queue.clear();
        c.buffered = 0;
        for seq in 4..=5 {
            assert_eq!(
                c.push_broadcast(&msg(seq), limit, SlowConsumer::Drop, r),
                Push::Queued
            );
        }
        assert_eq!(seqs(&c), vec![(4, true), (5, false)]);
        assert!(!c.gap_pending);
        // drop_oldest: 1 is discarded, 2 (first still queued) is marked.
        let mut c = envelope_member();
        for seq in 1..=3 {
            c.push_broadcast(&msg(seq), limit, SlowConsumer::DropOldest, r);
        }
        assert_eq!(seqs(&c), vec![(2, true), (3, false)]);
        assert_eq!(
            c.buffered,
            c.queue.iter().map(|(b, _)| b.len()).sum::<usize>()
        );
        // conflate: only the latest, marked.
        let mut c = envelope_member();
        for seq in 1..=3 {
            c.push_broadcast(&msg(seq), limit, SlowConsumer::Conflate, r);
        }
        assert_eq!(seqs(&c), vec![(3, true)]);
        // Raw clients have no seq: nothing to mark.
        let mut c = envelope_member();
        c.wire = Wire::Raw;
        for seq in 1..=3 {
            c.push_broadcast(&msg(seq), limit, SlowConsumer::Drop, r);
        }
        assert!(!c.gap_pending);
    }
}
