//! Rooms: the per-shard registry of rooms and their members ([`registry`]), the end-of-turn
//! coalescing of broadcasts ([`outbox`]), the fan-out loop over a room's members ([`fanout`]),
//! the state each room's home shard keeps ([`home`]: seq, epoch, history, presence, census) and
//! the messages of the home protocol ([`requests`]).
//!
//! Everything here works on plain data and the shard's connection table; what needs the whole
//! shard (sending to other shards, spawning writers) is done by `shard`, which calls in.

pub(crate) mod fanout;
pub mod home;
pub(crate) mod outbox;
pub(crate) mod registry;
pub(crate) mod requests;

pub(crate) use registry::RoomRegistry;
