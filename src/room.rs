//! Per-shard room registry: room names interned once, members kept in a dense `Vec` for the
//! fan-out loop, O(1) join and leave (each member remembers its index).
//!
//! Shard-local and single-threaded: no locks. Each shard has its own registry; a room exists on
//! every shard that has at least one member in it.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

/// Index of a connection in its shard's slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub usize);

/// Index of a room in its shard's registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoomId(pub usize);

/// Is `name` a valid room name: 1–128 bytes of `[A-Za-z0-9_.:-]`?
pub fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// One room on one shard.
#[derive(Debug)]
pub struct Room {
    /// Interned name, shared (by refcount) with cross-shard messages.
    pub name: Arc<str>,
    /// Local members, dense, in no particular order.
    pub members: Vec<ConnId>,
    /// Frames broadcast to this room during the current loop turn, not yet handed to members.
    pub outbox: crate::fanout::Outbox,
    /// Something in the outbox came from another shard (see `ShardCore::flush_room`).
    pub outbox_remote: bool,
    /// Local members per wire format ([`crate::fanout::Wire`]): only formats someone takes are
    /// encoded.
    pub census: [u32; crate::fanout::WIRES],
}

/// The registry.
#[derive(Debug, Default)]
pub struct RoomRegistry {
    by_name: HashMap<Arc<str>, RoomId>,
    rooms: Slab<Room>,
}

/// Where a member sits in a room (kept by the connection so it can leave in O(1)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// The room.
    pub room: RoomId,
    /// Index in `Room::members` (u32 keeps a membership at 16 bytes, inline in each `Conn`).
    pub slot: u32,
    /// The member receives presence events (`join`/`leave`) of this room.
    pub presence: bool,
}

/// Result of a leave: if another member moved into the freed slot, its new slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// The member that moved.
    pub conn: ConnId,
    /// Its new slot in the room.
    pub slot: u32,
}

impl RoomRegistry {
    /// Look a room up by name.
    pub fn find(&self, name: &str) -> Option<RoomId> {
        self.by_name.get(name).copied()
    }

    /// The room behind an id.
    pub fn get(&self, id: RoomId) -> Option<&Room> {
        self.rooms.get(id.0)
    }

    /// The room behind an id, mutably.
    pub fn get_mut(&mut self, id: RoomId) -> Option<&mut Room> {
        self.rooms.get_mut(id.0)
    }

    /// Number of rooms with local members.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// No rooms at all?
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Add `conn` to the room called `name`, creating it if needed.
    pub fn join(&mut self, name: &str, conn: ConnId) -> Membership {
        let id = match self.by_name.get(name) {
            Some(id) => *id,
            None => {
                let name: Arc<str> = Arc::from(name);
                let id = RoomId(self.rooms.insert(Room {
                    name: name.clone(),
                    members: Vec::new(),
                    outbox: Default::default(),
                    outbox_remote: false,
                    census: [0; crate::fanout::WIRES],
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
        }
    }

    /// Remove the member at `m`. Returns the member that moved into its slot, if any; the caller
    /// updates that member's `Membership`. An emptied room is dropped.
    pub fn leave(&mut self, m: Membership) -> Option<Moved> {
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

    /// Iterate over all rooms.
    pub fn iter(&self) -> impl Iterator<Item = &Room> {
        self.rooms.iter().map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_room_name("lobby"));
        assert!(valid_room_name("a.b:c-d_9"));
        assert!(valid_room_name(&"x".repeat(128)));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name(&"x".repeat(129)));
        assert!(!valid_room_name("a/b"));
        assert!(!valid_room_name("a b"));
        assert!(!valid_room_name("é"));
    }

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
