//! Server-Sent Events streams (`GET /sse`, the fallback transport): an envelope JSON session
//! whose frames go out as events (`Wire::Sse`, encoded once per message like every wire) and
//! whose requests come in as `POST /sse/{stream}` on other connections, possibly on other
//! shards (the stream id names the shard). So the session of a stream lives here, in the
//! shard that serves the stream, not in a reader task; the stream's own socket is only read
//! for its end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::{Session, Verdict};
use crate::auth::Identity;
use crate::ids::ConnId;
use crate::metrics::ShardStats;
use crate::protocol::decoder::Message;
use crate::protocol::envelope::{encode_client, ClientOp, Data, Format, ServerOp};
use crate::protocol::frame::OpCode;
use crate::protocol::sse::{stream_id, Sub};
use crate::shard::ShardCore;
use crate::wire::Wire;

/// One open stream.
pub(crate) struct Stream {
    id: ConnId,
    secret: u64,
    /// The token's user (a post must come with a token for the same user).
    user: Option<Arc<str>>,
    session: Session,
}

/// The open streams of a shard, by connection uid.
#[derive(Default)]
pub(crate) struct Streams {
    by_uid: HashMap<u64, Stream>,
}

/// What became of a `POST /sse/{stream}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Posted {
    /// Handed to the stream's session (its answer comes on the stream): 202.
    Accepted,
    /// No such stream (ended, or never opened): 404.
    NotFound,
    /// The token is not for the stream's user: 403.
    Forbidden,
}

/// A random 64-bit secret from the kernel (0 if it cannot give one, which only weakens the
/// stream id to its connection id).
fn secret() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into the local buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        0
    }
}

impl ShardCore {
    /// A stream is open on connection `id`: it speaks envelope JSON as events; `welcome` carries
    /// the stream id for the posts, then each room of `subs` is subscribed to as if the client
    /// had sent `subscribe` (errors come as `error` events). Returns the reader's session (it
    /// ignores what the client sends on the stream's own socket).
    pub(crate) fn open_sse(
        &mut self,
        id: ConnId,
        info: Arc<Data>,
        identity: Option<Arc<Identity>>,
        subs: Vec<Sub>,
        now: Instant,
    ) -> Option<Session> {
        let c = self.conns.get_mut(id.0)?;
        c.wire = Wire::Sse;
        let uid = c.uid;
        let secret = secret();
        let stream = stream_id(uid, secret);
        let welcome = ServerOp::Welcome {
            conn: uid,
            user: identity.as_ref().map(|i| &*i.sub),
            exp: identity.as_ref().map(|i| i.exp),
        };
        let mut frame = crate::protocol::envelope::encode_server(&welcome, Format::Json);
        // `welcome` plus the stream's id: `{"op":"welcome","conn":N,...,"stream":"..."}`.
        frame.pop();
        frame.extend_from_slice(format!(",\"stream\":\"{stream}\"}}").as_bytes());
        c.push_control(crate::protocol::frame::encode_server_frame(
            OpCode::Text,
            false,
            &frame,
        ));
        ShardStats::add(&self.my_stats().sse_streams, 1);
        let user = identity.as_ref().map(|i| i.sub.clone());
        let session = Session::envelope(Format::Json, info, identity);
        self.sse.by_uid.insert(
            uid,
            Stream {
                id,
                secret,
                user,
                session,
            },
        );
        for s in subs {
            let op = ClientOp::Subscribe {
                room: s.room,
                since: s.since,
                epoch: s.epoch,
                presence: s.presence,
            };
            let payload = encode_client(&op, Format::Json);
            self.sse_message(uid, &payload, now);
        }
        Some(Session::Sse)
    }

    /// Carry out one client frame for stream `uid` through its session (rate limit included).
    fn sse_message(&mut self, uid: u64, payload: &[u8], now: Instant) {
        let Some(mut st) = self.sse.by_uid.remove(&uid) else {
            return;
        };
        let m = Message::from_payload(OpCode::Text, payload);
        let id = st.id;
        let verdict = st.session.on_message(self, id, m, now);
        if verdict == Verdict::Discard {
            // Failed (a close event is queued): the stream takes no more posts.
            return;
        }
        if self
            .conns
            .get(id.0)
            .is_some_and(|c| c.uid == uid && !c.sealed)
        {
            self.sse.by_uid.insert(uid, st);
        }
    }

    /// A `POST /sse/{stream}` that reached the stream's shard.
    pub(crate) fn post_sse(
        &mut self,
        (uid, secret): (u64, u64),
        user: Option<&str>,
        body: &[u8],
        now: Instant,
    ) -> Posted {
        let Some(st) = self.sse.by_uid.get(&uid) else {
            return Posted::NotFound;
        };
        if !crate::http::api::same_key(&st.secret.to_ne_bytes(), &secret.to_ne_bytes()) {
            return Posted::NotFound;
        }
        if st.user.as_deref() != user {
            return Posted::Forbidden;
        }
        ShardStats::add(&self.my_stats().sse_posts, 1);
        ShardStats::add(&self.my_stats().messages_in, 1);
        self.sse_message(uid, body, now);
        Posted::Accepted
    }

    /// The stream on `id` ended: forget its session.
    pub(crate) fn close_sse(&mut self, uid: u64) {
        self.sse.by_uid.remove(&uid);
    }
}
