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
        /// The encoded server frame, shared.
        frame: Bytes,
    },
    /// Begin shutting down.
    Shutdown(ShutdownMode),
}

/// Frames waiting to be handed to a room's members at the end of the loop turn.
#[derive(Debug, Default)]
pub enum Outbox {
    /// Nothing pending.
    #[default]
    Empty,
    /// One frame: handed over as it is, no copy.
    One(Bytes),
    /// Several frames concatenated once, and how many.
    Many(BytesMut, u64),
}

impl Outbox {
    /// Take the pending frames as one `Bytes` and the number of messages in it.
    fn take(&mut self) -> Option<(Bytes, u64)> {
        match std::mem::take(self) {
            Outbox::Empty => None,
            Outbox::One(b) => Some((b, 1)),
            Outbox::Many(b, n) => Some((b.freeze(), n)),
        }
    }
}

impl ShardCore {
    /// Queue `frame` (holding `messages` messages) for every local member of `room` except `skip`.
    pub(crate) fn deliver_local(&mut self, room: RoomId, frame: &Bytes, messages: u64, skip: Option<ConnId>, now: Instant) {
        let limit = self.cfg.max_buffered_bytes;
        let policy = self.cfg.slow_consumer;
        let Some(r) = self.rooms.get(room) else { return };
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        let mut over = std::mem::take(&mut self.over_limit);
        for &m in &r.members {
            if Some(m) == skip {
                continue;
            }
            let Some(conn) = self.conns.get_mut(m.0) else { continue };
            match conn.push_broadcast(frame, limit, policy) {
                Push::Queued => delivered += 1,
                Push::Dropped => dropped += 1,
                Push::OverLimit => over.push(m),
                Push::Sealed => {}
            }
        }
        for id in over.drain(..) {
            self.close_slow_consumer(id, now);
        }
        self.over_limit = over;
        let st = self.my_stats();
        if delivered > 0 {
            ShardStats::add(&st.deliveries, delivered * messages);
        }
        if dropped > 0 {
            ShardStats::add(&st.dropped_frames, dropped * messages);
        }
    }

    /// Broadcast `frame` to the local members of `room`, coalescing it with the other frames
    /// of this loop turn.
    pub(crate) fn enqueue_room(&mut self, room: RoomId, frame: Bytes, now: Instant) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        if frame.len() > COALESCE_FRAME_MAX {
            // Keep order: what is pending goes first, then the big frame as it is.
            self.flush_room(room, now);
            self.deliver_local(room, &frame, 1, None, now);
            return;
        }
        match &mut r.outbox {
            Outbox::Empty => {
                r.outbox = Outbox::One(frame);
                self.mark_dirty(room);
            }
            Outbox::One(prev) => {
                let mut b = BytesMut::with_capacity((prev.len() + frame.len()).max(2048));
                b.extend_from_slice(prev);
                b.extend_from_slice(&frame);
                r.outbox = Outbox::Many(b, 2);
            }
            Outbox::Many(b, n) => {
                if b.len() + frame.len() > OUTBOX_MAX {
                    self.flush_room(room, now);
                    if let Some(r) = self.rooms.get_mut(room) {
                        r.outbox = Outbox::One(frame);
                    }
                } else {
                    b.extend_from_slice(&frame);
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
        let Some(r) = self.rooms.get_mut(room) else { return };
        if let Some((bytes, n)) = r.outbox.take() {
            self.deliver_local(room, &bytes, n, None, now);
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
            ShardMsg::Broadcast { room, frame } => {
                if let Some(id) = self.rooms.find(&room) {
                    self.enqueue_room(id, frame, now);
                }
            }
            ShardMsg::Shutdown(mode) => self.begin_shutdown(mode, now),
        }
    }
}

/// Publish a complete message from connection `from` to `room`: deliver locally (coalesced),
/// then hand the same `Bytes` to every other shard.
pub(crate) async fn publish(shard: &ShardRef, from: ConnId, room: RoomId, frame: Bytes) {
    let (name, peers, me) = {
        let mut s = shard.borrow_mut();
        let now = Instant::now();
        if s.cfg.echo_to_sender {
            s.enqueue_room(room, frame.clone(), now);
        } else {
            // The sender must be skipped, so this frame cannot share a buffer with others.
            s.flush_room(room, now);
            s.deliver_local(room, &frame, 1, Some(from), now);
        }
        if s.peers.len() <= 1 {
            return;
        }
        let Some(r) = s.rooms.get(room) else { return };
        (r.name.clone(), s.peers.clone(), s.id.0)
    };
    for (i, tx) in peers.iter().enumerate() {
        if i == me {
            continue;
        }
        let msg = ShardMsg::Broadcast {
            room: name.clone(),
            frame: frame.clone(),
        };
        // Fast path without a future; wait only when the peer's inbox is full.
        if let Err(flume::TrySendError::Full(msg)) = tx.try_send(msg) {
            let _ = tx.send_async(msg).await;
        }
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
