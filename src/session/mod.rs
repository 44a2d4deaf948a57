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
pub(crate) mod sse;

use std::sync::Arc;
use std::time::Instant;

use crate::admission::rate::{gcra, mono_ns};
use crate::auth::Identity;
use crate::ids::{ConnId, RoomId};
use crate::metrics::ShardStats;
use crate::protocol::close::CloseCode;
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
    /// The socket of a Server-Sent Events stream: its requests come as posts ([`sse`]); what
    /// the client sends on the stream itself is ignored.
    Sse,
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
        Session::Raw(raw::RawSession {
            room,
            may_publish,
            rate_tat: 0,
        })
    }

    /// Handle one complete data message from the client (first charged to its message rate).
    pub(crate) fn on_message(
        &mut self,
        s: &mut ShardCore,
        id: ConnId,
        m: Message,
        now: Instant,
    ) -> Verdict {
        if let Session::Sse = self {
            return Verdict::Continue;
        }
        if let Some(rate) = s.cfg.message_rate {
            let tat = match self {
                Session::Raw(r) => &mut r.rate_tat,
                Session::Envelope(e) => &mut e.rate_tat,
                Session::Sse => return Verdict::Continue,
            };
            match gcra(*tat, mono_ns(now), &rate) {
                Ok(next) => *tat = next,
                Err(wait_ns) => return self.over_rate(s, id, &m, wait_ns, now),
            }
        }
        match self {
            Session::Raw(r) => r.on_message(s, id, m, now),
            Session::Envelope(e) => e.on_message(s, id, &m, now),
            Session::Sse => Verdict::Continue,
        }
    }

    /// A message over `[limits] messages_per_second` (not carried out, counted): a raw client
    /// is closed with 1008; an envelope client gets `rate_limited` with the wait, and is closed
    /// with 1008 once `max_bad_frames` refusals come in a row.
    #[cold]
    fn over_rate(
        &mut self,
        s: &mut ShardCore,
        id: ConnId,
        m: &Message,
        wait_ns: u64,
        now: Instant,
    ) -> Verdict {
        ShardStats::add(&s.my_stats().rate_limited, 1);
        let e = match self {
            Session::Raw(_) => {
                s.fail_conn(id, CloseCode::POLICY, "rate limit exceeded", now);
                return Verdict::Discard;
            }
            Session::Envelope(e) => e,
            Session::Sse => return Verdict::Continue,
        };
        e.bad += 1;
        if e.bad >= s.cfg.max_bad_frames {
            s.fail_conn(id, CloseCode::POLICY, "rate limit exceeded", now);
            return Verdict::Discard;
        }
        e.send_rate_limited(s, id, m, wait_ns, now);
        Verdict::Continue
    }
}
