//! Sessions: what a connection speaks once upgraded, and what its messages do.
//! - [`raw`]: a raw room (`/ws/{room}`): every message is broadcast verbatim to the room.
//! - [`envelope`]: the envelope protocol (`/ws`, `shardcast.v1.json`/`.cbor`): requests to
//!   rooms' homes (subscribe, publish, presence, history), refusals as `error` frames
//!   ([`SessionError`]).
//!
//! The transport (`transport::ws::reader`) decodes frames and hands each complete message to
//! [`Session::on_message`]; sessions never touch the socket.

pub(crate) mod envelope;
pub(crate) mod raw;

use std::sync::Arc;
use std::time::Instant;

use crate::auth::Identity;
use crate::ids::{ConnId, RoomId};
use crate::protocol::decoder::Message;
use crate::protocol::envelope::{Data, Format};
use crate::shard::ShardCore;

pub(crate) use crate::protocol::session::SessionError;

/// What a connection speaks after the upgrade.
pub(crate) enum Session {
    /// A raw room: every message is broadcast to it.
    Raw(raw::RawSession),
    /// The envelope protocol.
    Envelope(envelope::EnvelopeSession),
}

/// What a session asks of the reader after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go on reading.
    Continue,
    /// The connection is being failed (a close frame is queued): discard what the client still
    /// sends.
    Discard,
}

impl Session {
    /// An envelope session in `format` whose presence entries carry `info`.
    pub(crate) fn envelope(
        format: Format,
        info: Arc<Data>,
        identity: Option<Arc<Identity>>,
    ) -> Session {
        Session::Envelope(envelope::EnvelopeSession::new(format, info, identity))
    }

    /// A raw session in `room`.
    pub(crate) fn raw(room: RoomId, may_publish: bool) -> Session {
        Session::Raw(raw::RawSession { room, may_publish })
    }

    /// Handle one complete data message from the client.
    pub(crate) fn on_message(
        &mut self,
        s: &mut ShardCore,
        id: ConnId,
        m: Message,
        now: Instant,
    ) -> Verdict {
        match self {
            Session::Raw(r) => r.on_message(s, id, m, now),
            Session::Envelope(e) => e.on_message(s, id, &m, now),
        }
    }
}
