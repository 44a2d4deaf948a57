//! A connection's life on its shard: registered at accept, admitted at the upgrade, joining and
//! leaving rooms (here and at each room's home), replies queued under its high-water mark,
//! closed for a protocol error or as a slow consumer, and forgotten when its tasks are done.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;

use super::ShardCore;
use crate::config::SlowConsumer;
use crate::conn::{Membership, Push};
use crate::ids::{ConnId, RoomId, Tick};
use crate::metrics::ShardStats;
use crate::protocol::close::CloseCode;
use crate::room::requests::{ConnRef, HomeMsg};

impl ShardCore {
    /// Register a freshly accepted socket (in the handshake phase).
    pub(crate) fn add_conn(&mut self, fd: RawFd, now: Instant) -> ConnId {
        let deadline = now + self.cfg.handshake_timeout;
        self.conns.add(self.id, fd, now, deadline)
    }

    /// Count a new WebSocket connection against `max_connections`: `false` when full (a race
    /// with other shards lost after the gate saw room).
    pub(crate) fn admit(&self) -> bool {
        let open = &self.life.open_connections;
        let prev = open.fetch_add(1, Ordering::AcqRel);
        if prev >= self.cfg.max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        ShardStats::add(&self.my_stats().connections, 1);
        ShardStats::add(&self.my_stats().upgrades, 1);
        true
    }

    /// Open WebSocket connections on the whole node.
    pub(crate) fn open_connections(&self) -> usize {
        self.life.open_connections.load(Ordering::Acquire)
    }

    /// Forget a connection entirely (both its tasks are done).
    pub(crate) fn remove_conn(&mut self, id: ConnId, was_admitted: bool) {
        self.leave_all(id);
        if let Some(uid) = self
            .conns
            .get(id.0)
            .filter(|c| c.wire == crate::wire::Wire::Sse)
            .map(|c| c.uid)
        {
            self.close_sse(uid);
        }
        if self.conns.try_remove(id.0).is_some() && was_admitted {
            self.life.open_connections.fetch_sub(1, Ordering::AcqRel);
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
        let c = self.conns.get(id.0)?;
        let conn = ConnRef {
            shard: self.id,
            id,
            uid: c.uid,
        };
        let wire = c.wire;
        let name = self.rooms.get(rid)?.name.clone();
        let msg = HomeMsg::Join {
            room: name,
            conn,
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
                uid: Some(uid),
            };
            self.send_home(msg, Instant::now());
        }
    }

    /// Turn presence events on or off for a member of `room`.
    pub(crate) fn set_presence(&mut self, id: ConnId, room: RoomId, on: bool) {
        if let Some(m) = self
            .conns
            .get_mut(id.0)
            .and_then(|c| c.rooms.iter_mut().find(|m| m.room == room))
        {
            m.presence = on;
        }
    }

    /// The local room called `room`, if `id` is a member of it.
    pub(crate) fn member_room(&self, id: ConnId, room: &str) -> Option<RoomId> {
        let r = self.rooms.find(room)?;
        let c = self.conns.get(id.0)?;
        c.rooms.iter().any(|m| m.room == r).then_some(r)
    }

    /// Queue a reply to `id` (pong, ack, error, presence list, history page, subscribe answer
    /// with its replay) under the connection's high-water mark: over it, the slow-consumer
    /// policy applies (the reply is dropped and counted, or the connection is closed with 1008).
    /// Returns whether the reply was queued.
    pub(crate) fn queue_reply<I>(&mut self, id: ConnId, frames: I, now: Instant) -> bool
    where
        I: IntoIterator<Item = Bytes> + Clone,
    {
        let (limit, policy) = (self.cfg.max_buffered_bytes, self.cfg.slow_consumer);
        let Some(c) = self.conns.get_mut(id.0) else {
            return false;
        };
        match c.push_reply(frames, limit, policy) {
            Push::Queued => {
                self.kick(id);
                true
            }
            Push::Dropped | Push::Replaced { .. } => {
                ShardStats::add(&self.my_stats().dropped_replies, 1);
                false
            }
            Push::OverLimit => {
                debug_assert_eq!(policy, SlowConsumer::Close);
                self.close_slow_consumer(id, now);
                false
            }
            Push::Sealed => false,
        }
    }

    /// Fail a connection: what its rooms have pending goes out first (its own echoes included),
    /// then a close frame with `code`, then FIN; the reader discards what the client still sends.
    pub(crate) fn fail_conn(&mut self, id: ConnId, code: CloseCode, reason: &str, now: Instant) {
        self.flush_conn_rooms(id, now);
        ShardStats::add(&self.my_stats().protocol_errors, 1);
        let deadline = Tick::at(now + self.cfg.close_timeout);
        if let Some(c) = self.conns.get_mut(id.0) {
            c.start_close(code, reason, deadline, false);
            self.stats.shard(self.id.0).count_close(code.0);
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

    /// Close one connection because it is over its high-water mark: what is queued and not yet
    /// handed to the writer is discarded, the close frame follows whole frames only.
    pub(crate) fn close_slow_consumer(&mut self, id: ConnId, now: Instant) {
        self.leave_all(id);
        let deadline = Tick::at(now + self.cfg.close_timeout);
        if let Some(c) = self.conns.get_mut(id.0) {
            if c.sealed {
                return;
            }
            c.start_close(CloseCode::POLICY, "slow consumer", deadline, true);
            self.stats.shard(self.id.0).count_close(CloseCode::POLICY.0);
            ShardStats::add(&self.stats.shard(self.id.0).slow_consumer_closes, 1);
            self.stats
                .shard(self.id.0)
                .count_slow_consumer(crate::config::SlowConsumer::Close, 1);
        }
        self.kick(id);
    }
}
