//! Fan-out: one encoded frame (`Bytes`) to every member of a room, on this shard and on the
//! others. Recipients share the frame by refcount; nothing is copied or allocated per recipient
//! beyond a queue slot.
//!
//! Cross-shard delivery goes through each shard's bounded inbox (flume), drained in batches by
//! [`run_inbox`]. A publisher whose peers' inboxes are full waits (backpressure on the sender
//! only; no other connection is slowed).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::metrics::ShardStats;
use crate::room::{ConnId, RoomId};
use crate::shard::{Push, ShardCore, ShardRef, ShutdownMode};

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

impl ShardCore {
    /// Queue `frame` for every local member of `room` except `skip`.
    pub(crate) fn deliver_local(
        &mut self,
        room: RoomId,
        frame: &Bytes,
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
        for &m in &r.members {
            if Some(m) == skip {
                continue;
            }
            let Some(conn) = self.conns.get_mut(m.0) else {
                continue;
            };
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
            ShardStats::add(&st.deliveries, delivered);
        }
        if dropped > 0 {
            ShardStats::add(&st.dropped_frames, dropped);
        }
    }

    /// Handle one inbox message.
    pub(crate) fn handle_msg(&mut self, msg: ShardMsg, now: Instant) {
        match msg {
            ShardMsg::Broadcast { room, frame } => {
                if let Some(id) = self.rooms.find(&room) {
                    self.deliver_local(id, &frame, None, now);
                }
            }
            ShardMsg::Shutdown(mode) => self.begin_shutdown(mode, now),
        }
    }
}

/// Publish a complete message from connection `from` to `room`: deliver locally, then hand the
/// same `Bytes` to every other shard.
pub(crate) async fn publish(shard: &ShardRef, from: ConnId, room: RoomId, frame: Bytes) {
    let (name, peers, me) = {
        let mut s = shard.borrow_mut();
        let skip = if s.cfg.echo_to_sender {
            None
        } else {
            Some(from)
        };
        s.deliver_local(room, &frame, skip, Instant::now());
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
