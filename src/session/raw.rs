//! Raw rooms (`/ws/{room}`): the client joined one room at the upgrade, and every message it
//! sends is broadcast verbatim, with its opcode, to the room (encoded once, shared by every
//! recipient on every shard; see `shard::broadcast`).

use std::time::Instant;

use super::Verdict;
use crate::ids::{ConnId, RoomId};
use crate::protocol::decoder::Message;
use crate::shard::ShardCore;

/// A raw client's message: broadcast it to its room.
pub(crate) fn on_message(
    s: &mut ShardCore,
    id: ConnId,
    room: RoomId,
    m: Message,
    now: Instant,
) -> Verdict {
    s.publish_raw(id, room, m, now);
    Verdict::Continue
}
