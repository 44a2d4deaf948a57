//! The open Server-Sent Events streams of a shard: who may post to each (its secret and user)
//! and the bounded channel to the stream's task, which runs the stream's envelope session
//! (`transport::ws::sse`). A `POST /sse/{stream}` reaches the stream's shard as an
//! `ApiReq::SsePost` and is handed over here.

use std::collections::HashMap;
use std::sync::Arc;

use super::ShardCore;
use crate::auth::same_key;
use crate::ids::ConnId;
use crate::metrics::ShardStats;
use crate::room::requests::Posted;

/// Posts that may wait for one stream's task; beyond, a post is refused with 429.
pub(crate) const POSTS_IN_FLIGHT: usize = 64;

/// One open stream.
struct Entry {
    id: ConnId,
    secret: u64,
    /// The token's user (a post must come with a token for the same user).
    user: Option<Arc<str>>,
    posts: flume::Sender<Vec<u8>>,
}

/// The open streams, by connection uid.
#[derive(Default)]
pub(crate) struct Streams {
    by_uid: HashMap<u64, Entry>,
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
    /// Register the stream on connection `id` (uid `uid`) of `user`: its secret, and the
    /// receiving end of its posts.
    pub(crate) fn open_stream(
        &mut self,
        (id, uid): (ConnId, u64),
        user: Option<Arc<str>>,
    ) -> (u64, flume::Receiver<Vec<u8>>) {
        let (posts, rx) = flume::bounded(POSTS_IN_FLIGHT);
        let secret = secret();
        self.sse.by_uid.insert(
            uid,
            Entry {
                id,
                secret,
                user,
                posts,
            },
        );
        ShardStats::add(&self.my_stats().sse_streams, 1);
        (secret, rx)
    }

    /// A `POST /sse/{stream}` that reached the stream's shard.
    pub(crate) fn post_sse(
        &mut self,
        (uid, secret): (u64, u64),
        user: Option<&str>,
        body: Vec<u8>,
    ) -> Posted {
        let Some(e) = self.sse.by_uid.get(&uid) else {
            return Posted::NotFound;
        };
        let live = self
            .conns
            .get(e.id.0)
            .is_some_and(|c| c.uid == uid && !c.sealed);
        if !live || !same_key(&e.secret.to_ne_bytes(), &secret.to_ne_bytes()) {
            return Posted::NotFound;
        }
        if e.user.as_deref() != user {
            return Posted::Forbidden;
        }
        match e.posts.try_send(body) {
            Ok(()) => {
                ShardStats::add(&self.my_stats().sse_posts, 1);
                Posted::Accepted
            }
            Err(flume::TrySendError::Full(_)) => Posted::Busy,
            Err(flume::TrySendError::Disconnected(_)) => Posted::NotFound,
        }
    }

    /// The stream of `uid` ended.
    pub(crate) fn close_stream(&mut self, uid: u64) {
        self.sse.by_uid.remove(&uid);
    }

    /// The stream on connection `id` ended (no more posts for it).
    pub(crate) fn close_stream_of(&mut self, id: ConnId) {
        if let Some(uid) = self.conns.get(id.0).map(|c| c.uid) {
            self.close_stream(uid);
        }
    }
}
