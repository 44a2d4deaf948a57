//! Cluster mode: rooms shared by several nodes through Redis (`[cluster]`, docs/cluster.md).
//!
//! The Redis client runs on one side thread ([`bridge`]: a tokio current_thread runtime with the
//! `redis` crate); shards talk to it over bounded flume channels only: [`Command`]s in (one
//! channel for the node), [`Event`]s out (one channel per shard). A full channel is a counted
//! refusal, never a wait on a shard. This module depends only on leaf modules (`config`,
//! `health`, `metrics`, `ids`); the room's home shard (`shard::home`) calls into it and applies
//! the pure decisions kept here ([`judge_seq`], [`track::Track`], [`canary`]).
//!
//! One Lua script per publish numbers the message in Redis (`INCR`), appends it to the room's
//! history stream (`XADD ... MAXLEN ~ size`, entry id `seq-0`) and `PUBLISH`es it on the room
//! channel `{prefix}:room:{name}`. Every node, the publisher included, delivers only what it
//! receives on that channel, so numbering, history and delivery cannot disagree.

pub mod bridge;
pub mod canary;
pub mod connect;
pub mod presence;
pub mod replay;
pub mod rooms;
pub mod track;

use bytes::Bytes;
use std::sync::Arc;

/// Why a request that needs Redis was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// Redis is unreachable (or the bridge is reconnecting).
    #[error("redis is unreachable")]
    Down,
    /// Redis did not answer in time.
    #[error("redis did not answer in time")]
    Timeout,
    /// The bridge's command channel was full.
    #[error("the cluster bridge is overloaded")]
    Busy,
    /// Redis answered something this node cannot read.
    #[error("redis answered something unexpected")]
    Protocol,
}

impl Unavailable {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::Down => "down",
            Unavailable::Timeout => "timeout",
            Unavailable::Busy => "busy",
            Unavailable::Protocol => "protocol",
        }
    }
}

/// A room message as it travels on the room channel and sits in the history stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// Room name.
    pub room: Arc<str>,
    /// Cluster-wide seq.
    pub seq: u64,
    /// The room's epoch in Redis.
    pub epoch: u64,
    /// The node that published it.
    pub node: Arc<str>,
    /// The publishing connection on that node: (shard, slot, uid); `None` for the HTTP API.
    pub from: Option<(u32, u32, u64)>,
    /// The payload (CBOR of the envelope `data`).
    pub payload: Bytes,
}

/// Encode what the publisher knows (everything but seq and epoch, which the Lua script puts in
/// front as `"{seq}:{epoch}:"`): `node_len node [shard slot uid]? payload`.
pub fn encode_tail(node: &str, from: Option<(u32, u32, u64)>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + node.len() + 16 + payload.len());
    out.push(node.len().min(255) as u8);
    out.extend_from_slice(&node.as_bytes()[..node.len().min(255)]);
    match from {
        Some((s, c, u)) => {
            out.push(1);
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&u.to_le_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(payload);
    out
}

/// Why a room-channel message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The `seq:epoch:` header is missing or not numbers.
    #[error("bad seq/epoch header")]
    Header,
    /// The tail is shorter than its fields.
    #[error("truncated message")]
    Truncated,
}

fn number(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Decode a room-channel message (`"{seq}:{epoch}:" tail`).
pub fn decode(room: Arc<str>, msg: &[u8]) -> Result<Incoming, DecodeError> {
    let mut parts = msg.splitn(3, |&b| b == b':');
    let (Some(seq), Some(epoch), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(DecodeError::Header);
    };
    let (Some(seq), Some(epoch)) = (number(seq), number(epoch)) else {
        return Err(DecodeError::Header);
    };
    let (&n, rest) = tail.split_first().ok_or(DecodeError::Truncated)?;
    let n = usize::from(n);
    if rest.len() < n + 1 {
        return Err(DecodeError::Truncated);
    }
    let node: Arc<str> = Arc::from(String::from_utf8_lossy(&rest[..n]).as_ref());
    let (flag, rest) = (rest[n], &rest[n + 1..]);
    let (from, payload) = if flag == 1 {
        if rest.len() < 16 {
            return Err(DecodeError::Truncated);
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let mut uid = [0u8; 8];
        uid.copy_from_slice(&rest[8..16]);
        (
            Some((u32_at(0), u32_at(4), u64::from_le_bytes(uid))),
            &rest[16..],
        )
    } else {
        (None, rest)
    };
    Ok(Incoming {
        room,
        seq,
        epoch,
        node,
        from,
        payload: Bytes::copy_from_slice(payload),
    })
}

/// What the room's home does with a message numbered `got` when it has delivered up to `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Already delivered (a replay, or a catch-up that overlapped): drop it.
    Duplicate,
    /// The next one: deliver it.
    Next,
    /// Messages `last+1 ..= got-1` are missing: catch up from the stream first.
    Jump {
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
    },
}

/// The seq decision (pure).
pub fn judge_seq(last: u64, got: u64) -> SeqVerdict {
    if got <= last {
        SeqVerdict::Duplicate
    } else if got == last + 1 {
        SeqVerdict::Next
    } else {
        SeqVerdict::Jump {
            from: last + 1,
            to: got - 1,
        }
    }
}

/// Whether a catch-up read of the room (Redis at `got_seq` in `got_epoch`) shows Redis's
/// counter went backwards in the epoch this node delivered up to `last` in (pure): a failover
/// promoted a replica that lacks the last writes.
pub fn regressed(epoch: u64, last: u64, got_epoch: u64, got_seq: u64) -> bool {
    epoch != 0 && got_epoch == epoch && got_seq < last
}

/// A request to the bridge. Every answer goes to the shard named in the request.
#[derive(Debug)]
pub enum Command {
    /// Run the publish script; answer [`Event::Published`] with `token`.
    Publish {
        /// Room name.
        room: Arc<str>,
        /// [`encode_tail`] of the message.
        tail: Vec<u8>,
        /// History stream length (`[history] size` of the room; 0: no stream).
        history: usize,
        /// A publish id to deduplicate cluster-wide (user, session, id) and how long Redis
        /// remembers it (`[envelope] publish_dedup_window`).
        dedup: Option<(Box<[u8]>, std::time::Duration)>,
        /// Shard to answer.
        shard: usize,
        /// Opaque to the bridge.
        token: u64,
    },
    /// Subscribe the room's channel (the room's home `shard` gets its messages).
    Subscribe {
        /// Room name.
        room: Arc<str>,
        /// Its home shard.
        shard: usize,
    },
    /// Unsubscribe the room's channel (no local members left).
    Unsubscribe {
        /// Room name.
        room: Arc<str>,
    },
    /// Shard `shard` has caught up every room after [`Event::Resync`] `generation`.
    Synced {
        /// The shard.
        shard: usize,
        /// The resync it answers.
        generation: u64,
    },
    /// Write (`member`: its CBOR) or delete this node's entry for connection `uid` in the
    /// room's presence hash and announce it on the room channel.
    Presence {
        /// Room name.
        room: Arc<str>,
        /// The member's connection id on this node.
        uid: u64,
        /// A join (the member's CBOR) or a leave (`None`).
        member: Option<Vec<u8>>,
    },
    /// Read the room's presence hash (`HGETALL`); answer [`Event::PresenceLoaded`].
    PresenceLoad {
        /// Room name.
        room: Arc<str>,
        /// Shard to answer.
        shard: usize,
        /// Opaque to the bridge (0: the room's cache, else a `presence` request).
        token: u64,
    },
    /// Delete node `node`'s entries (it is gone) from the room's presence hash.
    PresenceForget {
        /// Room name.
        room: Arc<str>,
        /// The node gone.
        node: Arc<str>,
        /// Its connection ids in the room.
        uids: Vec<u64>,
    },
    /// Room `room` now has `members` members on this node ([`rooms`]).
    Members {
        /// Room name.
        room: Arc<str>,
        /// Its members on this node (raw and envelope, every shard).
        members: u64,
    },
    /// `GET /api/rooms`: every room's members on every node, sorted by name.
    Rooms {
        /// Where the answer goes.
        reply: flume::Sender<RoomsAnswer>,
    },
    /// Give the room a new epoch if Redis still has `epoch` and a seq below `seen`
    /// ([`connect::GUARD_LUA`]).
    Guard {
        /// Room name.
        room: Arc<str>,
        /// The epoch this node delivered in.
        epoch: u64,
        /// The highest seq it delivered.
        seen: u64,
    },
    /// Read the room's seq and epoch (creating the epoch if the room is new) and the stream
    /// entries after `after`; answer [`Event::Fetched`] with `token`.
    Fetch {
        /// Room name.
        room: Arc<str>,
        /// Entries after this seq (`None`: none, only seq and epoch).
        after: Option<u64>,
        /// Shard to answer.
        shard: usize,
        /// Opaque to the bridge.
        token: u64,
    },
}

/// What a [`Command::Fetch`] found.
#[derive(Debug)]
pub struct Fetched {
    /// The room's seq in Redis.
    pub seq: u64,
    /// The room's epoch in Redis.
    pub epoch: u64,
    /// Stream entries after the asked seq, oldest first (the oldest kept may be later than
    /// asked: the stream was trimmed).
    pub entries: Vec<Incoming>,
}

/// What the bridge tells a shard.
#[derive(Debug)]
pub enum Event {
    /// A message on a room channel (this shard is the room's home).
    Message(Incoming),
    /// The answer to a [`Command::Publish`]: the seq it got.
    Published {
        /// The request's token.
        token: u64,
        /// Its seq and whether it is a duplicate (its id was published before, on any node:
        /// nothing was published again), or why it was not published.
        result: Result<(u64, bool), Unavailable>,
    },
    /// The answer to a [`Command::Fetch`].
    Fetched {
        /// Room name.
        room: Arc<str>,
        /// The request's token.
        token: u64,
        /// What Redis holds, or why it could not be read.
        result: Result<Fetched, Unavailable>,
    },
    /// A join or leave announced on a room channel (this shard is the room's home).
    Presence(presence::Announce),
    /// What the room's presence hash held: (node, uid, member CBOR).
    PresenceLoaded {
        /// Room name.
        room: Arc<str>,
        /// The request's token.
        token: u64,
        /// The entries (empty when Redis could not be read).
        entries: Vec<(Arc<str>, u64, Bytes)>,
    },
    /// Node `node`'s liveness key expired: its members are gone.
    NodeGone {
        /// The node.
        node: Arc<str>,
    },
    /// The subscriber connection was (re-)established: every room may have missed messages;
    /// catch up from the streams, then answer [`Command::Synced`] with `generation`.
    Resync {
        /// Which connection this is.
        generation: u64,
    },
}

/// The answer to [`Command::Rooms`]: every room with members anywhere and their count.
pub type RoomsAnswer = Result<Vec<(Arc<str>, u64)>, Unavailable>;

/// A shard's end of the bridge.
#[derive(Debug, Clone)]
pub struct Link {
    /// Commands to the bridge.
    pub tx: flume::Sender<Command>,
    /// This node's id.
    pub node: Arc<str>,
}

impl Link {
    /// Hand `cmd` to the bridge without waiting; a full channel refuses it.
    pub fn send(&self, cmd: Command) -> Result<(), Unavailable> {
        match self.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(flume::TrySendError::Full(_)) => Err(Unavailable::Busy),
            Err(flume::TrySendError::Disconnected(_)) => Err(Unavailable::Down),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_verdicts() {
        assert_eq!(judge_seq(5, 6), SeqVerdict::Next);
        assert_eq!(judge_seq(5, 5), SeqVerdict::Duplicate);
        assert_eq!(judge_seq(5, 2), SeqVerdict::Duplicate);
        assert_eq!(judge_seq(5, 9), SeqVerdict::Jump { from: 6, to: 8 });
        assert_eq!(judge_seq(0, 1), SeqVerdict::Next);
    }

    #[test]
    fn regressions() {
        assert!(regressed(7, 10, 7, 9));
        assert!(!regressed(7, 10, 7, 10), "same");
        assert!(!regressed(7, 10, 7, 12), "ahead: a jump");
        assert!(!regressed(7, 10, 8, 1), "another epoch: the lost-room path");
        assert!(!regressed(0, 10, 0, 1), "numbering unknown");
    }

    #[test]
    fn messages_round_trip() {
        let room: Arc<str> = Arc::from("r");
        for from in [None, Some((1, 2, 99))] {
            let tail = encode_tail("gw-1", from, b"\xa1ax");
            let mut msg = b"17:1700000000000000:".to_vec();
            msg.extend_from_slice(&tail);
            let m = decode(room.clone(), &msg).unwrap();
            assert_eq!((m.seq, m.epoch), (17, 1_700_000_000_000_000));
            assert_eq!(&*m.node, "gw-1");
            assert_eq!(m.from, from);
            assert_eq!(&m.payload[..], b"\xa1ax");
        }
        assert_eq!(decode(room.clone(), b"x:1:"), Err(DecodeError::Header));
        assert_eq!(decode(room.clone(), b"1:2"), Err(DecodeError::Header));
        assert_eq!(decode(room.clone(), b"1:2:"), Err(DecodeError::Truncated));
        assert_eq!(decode(room, b"1:2:\x05ab"), Err(DecodeError::Truncated));
    }
}
