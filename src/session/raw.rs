//! Raw rooms (`/ws/{room}`): the client joined one room at the upgrade, and every message it
//! sends is broadcast verbatim, with its opcode, to the room (encoded once, shared by every
//! recipient on every shard; see `shard::broadcast`). A client whose token may subscribe but not
//! publish is closed with 1008 on its first message, or its messages are dropped and counted
//! (`[auth] raw_readonly`).

use std::time::Instant;

use super::Verdict;
use crate::config::RawReadonly;
use crate::ids::{ConnId, RoomId};
use crate::metrics::ShardStats;
use crate::protocol::close::CloseCode;
use crate::protocol::decoder::Message;
use crate::shard::ShardCore;

/// One raw connection's session.
pub(crate) struct RawSession {
    /// Its room.
    pub(crate) room: RoomId,
    /// Its token allows publishing there.
    pub(crate) may_publish: bool,
    /// Its message rate's GCRA state (`[limits] messages_per_second`).
    pub(crate) rate_tat: u64,
}

impl RawSession {
    /// A raw client's message: broadcast it to its room, if it may.
    pub(crate) fn on_message(
        &self,
        s: &mut ShardCore,
        id: ConnId,
        m: Message,
        now: Instant,
    ) -> Verdict {
        if self.may_publish {
            s.publish_raw(id, self.room, m, now);
            return Verdict::Continue;
        }
        ShardStats::add(&s.my_stats().refused_publishes, 1);
        match s.cfg.auth.raw_readonly {
            RawReadonly::Drop => Verdict::Continue,
            RawReadonly::Close => {
                s.fail_conn(id, CloseCode::POLICY, "publish not allowed", now);
                Verdict::Discard
            }
        }
    }
}
