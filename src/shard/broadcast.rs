//! Broadcasting on one shard: a room message or event goes into the room's outbox
//! ([`crate::room::outbox`]) and is handed to the members at the end of the loop turn by the
//! flush task, through the fan-out loop ([`crate::room::fanout`]). Raw clients' messages take a
//! direct path: local members at once, every other shard through its inbox, and the room's home
//! numbers it on the way for envelope members and history.

use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::bus::ShardMsg;
use super::{ShardCore, ShardRef};
use crate::ids::{ConnId, RoomId, ShardId};
use crate::metrics::ShardStats;
use crate::protocol::decoder::Message;
use crate::protocol::envelope;
use crate::protocol::frame::OpCode;
use crate::room::fanout::{self, Scratch};
use crate::room::outbox::{How, Outbox, COALESCE_FRAME_MAX, OUTBOX_MAX};
use crate::room::requests::{ConnRef, HomeMsg};
use crate::wire::{Bcast, Frames, Wire, WIRES};

/// The current loop turn's broadcasts: rooms with a non-empty outbox, the flush task's waker,
/// and the fan-out loop's scratch lists.
#[derive(Default)]
pub(crate) struct Turn {
    dirty: Vec<RoomId>,
    flush_waker: Option<Waker>,
    scratch: Scratch,
}

impl ShardCore {
    /// Hand `frames` (holding `messages` messages) to the local members of `room` now, and deal
    /// with what the fan-out loop left: slow consumers to close, writers to spawn, counters.
    pub(crate) fn deliver_local(
        &mut self,
        room: RoomId,
        frames: &Frames,
        messages: u64,
        how: How,
        now: Instant,
    ) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let how = How {
            direct: how.direct && self.direct_send,
            ..how
        };
        let policy = if self.cfg.room_classes.is_empty() {
            self.cfg.slow_consumer
        } else {
            self.cfg.slow_consumer_in(&r.name)
        };
        let limits = (self.cfg.max_buffered_bytes, policy);
        let mut scratch = std::mem::take(&mut self.turn.scratch);
        let t = fanout::deliver(r, room, &mut self.conns, frames, how, limits, &mut scratch);
        for id in scratch.over.drain(..) {
            self.close_slow_consumer(id, now);
        }
        for id in scratch.spawn.drain(..) {
            self.kick(id);
        }
        self.turn.scratch = scratch;
        let st = self.my_stats();
        if t.delivered > 0 {
            ShardStats::add(&st.deliveries, t.delivered * messages);
        }
        if t.dropped > 0 {
            ShardStats::add(&st.dropped_frames, t.dropped * messages);
            st.count_slow_consumer(policy, t.dropped * messages);
        }
        if t.writes > 0 {
            ShardStats::add(&st.write_calls, t.writes);
        }
        if t.bytes > 0 {
            ShardStats::add(&st.broadcast_bytes_out, t.bytes);
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
                direct: !self.bus.in_inbox,
            };
            self.deliver_local(room, &frames, 1, how, now);
            return;
        }
        let in_inbox = self.bus.in_inbox;
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.outbox_remote |= in_inbox;
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
        self.turn.dirty.push(room);
        if self.turn.dirty.len() == 1 {
            if let Some(w) = self.turn.flush_waker.take() {
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
        let mut dirty = std::mem::take(&mut self.turn.dirty);
        for room in dirty.drain(..) {
            // A stale id (room dropped, slot reused) finds an empty or legitimately filled
            // outbox of the room now in that slot: flushing it is correct either way.
            self.flush_room(room, now);
        }
        self.turn.dirty = dirty;
    }

    /// The encoding of `b` for `wire` (made now if nobody made it yet).
    pub(crate) fn wire_frame(&mut self, b: &Bcast, wire: Wire) -> Option<Bytes> {
        let stats = self.stats.shard(self.id.0);
        self.enc.frame(&self.cfg.compression, stats, b, wire)
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
        if b.gap {
            self.mark_room_gap(id);
        }
        let frames = self.frames_for(id, b);
        // Only a sender on this shard can be skipped: the room's class is looked up only then.
        let skip = b
            .origin
            .filter(|o| o.0 == self.id)
            .map(|o| o.1)
            .filter(|_| !self.cfg.echo_in(&b.room));
        self.enqueue_room(id, frames, skip, b.is_event(), now);
    }

    /// Cluster mode: every member of `room` is told of a loss on its next message of the room.
    #[cold]
    fn mark_room_gap(&mut self, room: RoomId) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        for &m in &r.members {
            if let Some(c) = self.conns.get_mut(m.0) {
                c.mark_gap(room.0 as u32);
            }
        }
    }

    /// The encodings of a raw client's message: plain, and compressed once when deflate clients
    /// may receive it (here or on another shard).
    fn encode_raw(&mut self, room: RoomId, msg: &Message) -> Frames {
        let may_need_deflate = self
            .rooms
            .get(room)
            .is_some_and(|r| r.census[Wire::RawZ as usize] > 0)
            || self.shards() > 1;
        let deflate = if may_need_deflate {
            let stats = self.stats.shard(self.id.0);
            self.enc
                .compress_shared(&self.cfg.compression, stats, msg.opcode, msg.payload())
        } else {
            None
        };
        Frames::raw(msg.frame().clone(), deflate)
    }

    /// Publish a raw client's message to `room`: encode it once per raw format, deliver it to
    /// the local members (coalesced), hand the same `Bytes` to every other shard, and have the
    /// room's home number it for envelope members and history.
    pub(crate) fn publish_raw(&mut self, from: ConnId, room: RoomId, msg: Message, now: Instant) {
        if self.cluster.is_some() {
            return self.publish_raw_cluster(from, room, &msg, now);
        }
        let frames = self.encode_raw(room, &msg);
        // Without echo the sender is skipped, so this frame cannot share a buffer with others.
        let echo = match self.rooms.get(room) {
            Some(r) if !self.cfg.room_classes.is_empty() => self.cfg.echo_in(&r.name),
            _ => self.cfg.echo_to_sender,
        };
        let skip = (!echo).then_some(from);
        self.enqueue_room(room, frames.clone(), skip, false, now);
        let Some(name) = self.rooms.get(room).map(|r| r.name.clone()) else {
            return;
        };
        let (home, me) = (self.home_of(&name), self.id.0);
        for i in (0..self.shards()).filter(|&i| i != me) {
            let msg = ShardMsg::Raw {
                room: name.clone(),
                frames: frames.clone(),
                sequence: home.0 == i,
            };
            self.send_to(ShardId(i), msg);
        }
        if home == self.id {
            self.home_sequence_raw(name, &frames, now);
        }
    }
}

impl ShardCore {
    /// Cluster mode: a raw client's message is numbered by Redis like an envelope publish and
    /// delivered by every node (this one included) from the room's channel, so raw and envelope
    /// members on every node see one order (docs/cluster.md). A text message crosses as a string,
    /// a binary one as bytes; raw members get back the same opcode and payload. Raw clients have
    /// no error frame: a publish Redis cannot number is counted (`cluster_unavailable_total`).
    // Kept out of line: the single-node path of `publish_raw` stays as it was.
    #[cold]
    #[inline(never)]
    fn publish_raw_cluster(&mut self, from: ConnId, room: RoomId, msg: &Message, now: Instant) {
        let (Some(r), Some(c)) = (self.rooms.get(room), self.conns.get(from.0)) else {
            return;
        };
        let data = envelope::raw_frame_data(msg.opcode == OpCode::Text, msg.payload());
        let from = ConnRef {
            shard: self.id,
            id: from,
            uid: c.uid,
        };
        let msg = HomeMsg::Publish {
            room: r.name.clone(),
            data,
            from,
            ack: None,
            dedup: None,
        };
        self.send_home(msg, now);
    }
}

/// The flush task: runs once per loop turn in which something was broadcast.
pub(crate) async fn run_flusher(shard: ShardRef) {
    loop {
        poll_fn(|cx| {
            let mut s = shard.borrow_mut();
            if s.turn.dirty.is_empty() {
                s.turn.flush_waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        shard.borrow_mut().flush_all(Instant::now());
    }
}
