//! Per-shard room registry: room names interned once, members kept in a dense `Vec` for the
//! fan-out loop, O(1) join and leave (each member remembers its index in its `Membership`).
//!
//! Shard-local and single-threaded: no locks. Each shard has its own registry; a room exists on
//! every shard that has at least one member in it.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

use super::outbox::Outbox;
use crate::conn::Membership;
use crate::ids::{ConnId, RoomId};
use crate::wire::WIRES;

/// One room on one shard.
#[derive(Debug)]
pub(crate) struct Room {
    /// Interned name, shared (by refcount) with cross-shard messages.
    pub(crate) name: Arc<str>,
    /// Local members, dense, in no particular order.
    pub(crate) members: Vec<ConnId>,
    /// Frames broadcast to this room during the current loop turn, not yet handed to members.
    pub(crate) outbox: Outbox,
    /// Something in the outbox came from another shard (see `ShardCore::flush_room`).
    pub(crate) outbox_remote: bool,
    /// Local members per wire format ([`crate::wire::Wire`]): only formats someone takes are
    /// encoded.
    pub(crate) census: [u32; WIRES],
}

/// The registry.
#[derive(Debug, Default)]
pub(crate) struct RoomRegistry {
    by_name: HashMap<Arc<str>, RoomId>,
    rooms: Slab<Room>,
}

/// Result of a leave: if another member moved into the freed slot, its new slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    /// The member that moved.
    pub(crate) conn: ConnId,
    /// Its new slot in the room.
    pub(crate) slot: u32,
}

impl RoomRegistry {
    /// Look a room up by name.
    #[inline]
    pub(crate) fn find(&self, name: &str) -> Option<RoomId> {
        self.by_name.get(name).copied()
    }

    /// The room behind an id.
    #[inline]
    pub(crate) fn get(&self, id: RoomId) -> Option<&Room> {
        self.rooms.get(id.0)
    }

    /// The room behind an id, mutably.
    #[inline]
    pub(crate) fn get_mut(&mut self, id: RoomId) -> Option<&mut Room> {
        self.rooms.get_mut(id.0)
    }

    /// Number of rooms with local members.
    pub(crate) fn len(&self) -> usize {
        self.rooms.len()
    }

    /// No rooms at all?
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Add `conn` to the room called `name`, creating it if needed.
    pub(crate) fn join(&mut self, name: &str, conn: ConnId) -> Membership {
        let id = match self.by_name.get(name) {
            Some(id) => *id,
            None => {
                let name: Arc<str> = Arc::from(name);
                let id = RoomId(self.rooms.insert(Room {
                    name: name.clone(),
                    members: Vec::new(),
                    outbox: Default::default(),
                    outbox_remote: false,
                    census: [0; WIRES],
                }));
                self.by_name.insert(name, id);
                id
            }
        };
        let room = &mut self.rooms[id.0];
        room.members.push(conn);
        Membership {
            room: id,
            slot: (room.members.len() - 1) as u32,
            presence: false,
            gap: false,
        }
    }

    /// Remove the member at `m`. Returns the member that moved into its slot, if any; the caller
    /// updates that member's `Membership`. An emptied room is dropped.
    pub(crate) fn leave(&mut self, m: Membership) -> Option<Moved> {
        let room = self.rooms.get_mut(m.room.0)?;
        let slot = m.slot as usize;
        if slot >= room.members.len() {
            return None;
        }
        room.members.swap_remove(slot);
        let moved = room
            .members
            .get(slot)
            .map(|&conn| Moved { conn, slot: m.slot });
        if room.members.is_empty() {
            let room = self.rooms.remove(m.room.0);
            self.by_name.remove(&room.name);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_leave_keeps_slots_consistent() {
        let mut r = RoomRegistry::default();
        let mut slots: Vec<Membership> = (0..5).map(|i| r.join("lobby", ConnId(i))).collect();
        let id = slots[0].room;
        // Leave from the middle: the last member moves into the hole.
        let moved = r.leave(slots[1]).unwrap();
        assert_eq!(
            moved,
            Moved {
                conn: ConnId(4),
                slot: 1
            }
        );
        slots[4].slot = moved.slot;
        assert_eq!(
            r.get(id).unwrap().members,
            vec![ConnId(0), ConnId(4), ConnId(2), ConnId(3)]
        );
        for i in [0, 2, 3, 4] {
            if let Some(m) = r.leave(slots[i]) {
                let idx = m.conn.0;
                slots[idx].slot = m.slot;
            }
        }
        assert!(r.find("lobby").is_none());
        assert!(r.is_empty());
    }
}
