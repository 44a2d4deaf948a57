//! The home protocol: what shards send a room's home ([`HomeMsg`], [`ApiReq`]) and what the
//! home answers to one connection ([`Reply`]) or to the HTTP API ([`ApiAnswer`]). They travel
//! the shards' FIFO channels (`shard::bus`), which is what orders a subscribe's answer between
//! the messages it covers and the live ones.

use std::sync::Arc;

use bytes::Bytes;

use crate::ids::{ConnId, ShardId};
use crate::protocol::envelope::{Data, Format};
use crate::wire::{Bcast, Wire};

/// A connection somewhere on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnRef {
    pub(crate) shard: ShardId,
    pub(crate) id: ConnId,
    /// Node-unique id (also tells a reused slot apart).
    pub(crate) uid: u64,
}

/// An envelope subscription request.
#[derive(Debug)]
pub(crate) struct SubReq {
    pub(crate) since: Option<u64>,
    pub(crate) epoch: Option<u64>,
    pub(crate) presence: bool,
    pub(crate) info: Arc<Data>,
    /// The token's `sub`, for presence.
    pub(crate) user: Option<Arc<str>>,
    /// The request's `id`, echoed by its answer.
    pub(crate) id: Option<Data>,
}

/// A request to a room's home shard.
#[derive(Debug)]
pub(crate) enum HomeMsg {
    /// `conn` joined `room` with `wire`; for an envelope subscription, also register its
    /// presence and answer with [`Reply::Subscribed`]. A room of a class at its
    /// `max_subscribers` answers [`Reply::Full`] instead and counts nothing.
    Join {
        room: Arc<str>,
        conn: ConnRef,
        wire: Wire,
        sub: Option<SubReq>,
    },
    /// A member left; `uid` identifies it (presence, refused raw joins).
    Leave {
        room: Arc<str>,
        shard: ShardId,
        wire: Wire,
        uid: Option<u64>,
    },
    /// An envelope publish; `ack` asks for an `ack` frame with the seq.
    Publish {
        room: Arc<str>,
        data: Data,
        from: ConnRef,
        ack: Option<(Format, Data)>,
        /// (user, session, id) of a publish to deduplicate (`?session=` connections).
        dedup: Option<Box<[u8]>>,
    },
    /// `presence` or `history` for one connection.
    Query {
        room: Arc<str>,
        conn: ConnRef,
        format: Format,
        query: Query,
        /// The request's `id`, echoed by its answer.
        id: Option<Data>,
    },
}

impl HomeMsg {
    /// The room the request is about (its home handles it).
    pub(crate) fn room(&self) -> &Arc<str> {
        match self {
            HomeMsg::Join { room, .. }
            | HomeMsg::Leave { room, .. }
            | HomeMsg::Publish { room, .. }
            | HomeMsg::Query { room, .. } => room,
        }
    }
}

/// What a [`HomeMsg::Query`] asks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Query {
    Presence {
        /// One entry per user instead of per connection.
        by_user: bool,
    },
    History {
        since: Option<u64>,
        limit: Option<u32>,
    },
}

/// A subscription's answer from the room's home.
#[derive(Debug)]
pub(crate) struct SubAnswer {
    pub(crate) conn: ConnRef,
    pub(crate) room: Arc<str>,
    pub(crate) wire: Wire,
    pub(crate) presence: bool,
    pub(crate) seq: u64,
    pub(crate) epoch: u64,
    pub(crate) recovered: bool,
    pub(crate) replay: Vec<Arc<Bcast>>,
    /// The `subscribe`'s `id`, echoed by `subscribed` (or by the error that refuses it).
    pub(crate) id: Option<Data>,
}

/// A home shard's answer to one connection.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The subscription is registered: join locally, send `subscribed`, then the replay.
    Subscribed(SubAnswer),
    /// A ready frame (ack, presence, history).
    Frame { conn: ConnRef, frame: Bytes },
    /// The room is at its class's `max_subscribers`: the join was not counted (a raw member
    /// that joined locally leaves and is closed; an envelope subscribe gets `room_full`).
    Full {
        conn: ConnRef,
        room: Arc<str>,
        /// The `subscribe`'s `id`, echoed by the `room_full` error.
        id: Option<Data>,
    },
}

/// An HTTP API request, answered by the room's home (or, for `Rooms`, by every shard).
#[derive(Debug)]
pub(crate) enum ApiReq {
    Publish {
        room: Arc<str>,
        data: Data,
    },
    Presence {
        room: Arc<str>,
    },
    Rooms,
    /// Every room this shard is home to: members and seq (the admin page's top rooms).
    RoomStats,
    /// A client operation for the Server-Sent Events stream `(uid, secret)` on this shard,
    /// from a post with `user`'s token.
    SsePost {
        stream: (u64, u64),
        user: Option<String>,
        body: Vec<u8>,
    },
}

/// The answer to an [`ApiReq`].
#[derive(Debug)]
pub(crate) enum ApiAnswer {
    Seq(u64),
    /// Cluster mode: Redis could not number the publish (503 `unavailable`).
    Unavailable,
    Members(Vec<(u64, Option<Arc<str>>, Arc<Data>)>),
    Rooms(Vec<(Arc<str>, u64)>),
    /// (room, members, seq).
    RoomStats(Vec<(Arc<str>, u64, u64)>),
    /// What became of an [`ApiReq::SsePost`].
    Posted(Posted),
}

/// What became of a `POST /sse/{stream}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Posted {
    /// Handed to the stream (its answer comes on the stream): 202.
    Accepted,
    /// No such stream (ended, or never opened): 404.
    NotFound,
    /// The token is not for the stream's user: 403.
    Forbidden,
    /// The stream has [`crate::shard::streams::POSTS_IN_FLIGHT`] posts waiting already: 429.
    Busy,
}
