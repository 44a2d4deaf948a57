//! A shard with one room and no sockets, for the criterion fan-out bench (`benches/fanout.rs`).

use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::bus::ShardMsg;
use super::ShardCore;
use crate::config::Config;
use crate::conn::Phase;
use crate::ids::{RoomId, ShardId};
use crate::metrics::Stats;
use crate::room::outbox::How;
use crate::wire::Frames;

/// One single-shard `ShardCore` holding one room whose members are open connections with no
/// socket (`fd = -1`) and no writer task.
pub struct LocalFanout {
    core: ShardCore,
    room: RoomId,
    now: Instant,
}

impl LocalFanout {
    /// A shard with one room of `members` open connections, each with a high-water mark of
    /// `max_buffered_bytes` (slow-consumer policy: the default, `close`).
    pub fn new(members: usize, max_buffered_bytes: usize) -> Self {
        assert!(members > 0, "a room needs at least one member");
        let cfg = Rc::new(Config {
            max_buffered_bytes,
            max_connections: members,
            ..Config::default()
        });
        // A one-shard daemon: the peer list holds only our own inbox, which local delivery
        // never uses.
        let (tx, _rx) = flume::bounded(1);
        let peers: Arc<[flume::Sender<ShardMsg>]> = Arc::from(vec![tx]);
        let mut core = ShardCore::new(
            ShardId(0),
            cfg,
            peers,
            Stats::new(1),
            Arc::new(AtomicUsize::new(0)),
            Arc::default(),
            Arc::new(crate::health::Health::new(1)),
        );
        let now = Instant::now();
        let mut room = None;
        for _ in 0..members {
            let id = core.add_conn(-1, now);
            core.conns[id.0].phase = Phase::Open;
            // Steady state of a busy room: every member has a writer task.
            core.conns[id.0].writer_alive = true;
            room = core.join_local(id, "bench", false);
        }
        let room = room.expect("join cannot fail below max_rooms_per_connection");
        LocalFanout { core, room, now }
    }

    /// Queue `frame` to every member at once through `deliver_local`, uncoalesced (the path
    /// of frames over the coalescing limit and of every inbox message before coalescing);
    /// nobody is skipped, as with `echo_to_sender = true`.
    pub fn broadcast(&mut self, frame: &Bytes) {
        self.core.deliver_local(
            self.room,
            &Frames::plain(frame.clone()),
            1,
            How::default(),
            self.now,
        );
    }

    /// Broadcast `frame` `n` times through the coalescing path, as `n` client messages in one
    /// loop turn are (`enqueue_room` each, then the end-of-turn `flush_all`).
    pub fn broadcast_coalesced(&mut self, frame: &Bytes, n: usize) {
        for _ in 0..n {
            self.core.enqueue_room(
                self.room,
                Frames::plain(frame.clone()),
                None,
                false,
                self.now,
            );
        }
        self.core.flush_all(self.now);
    }

    /// Empty every member's queue, as the writers would after a successful `writev`
    /// (queue capacity is kept, as it is for a live connection).
    pub fn drain(&mut self) {
        for (_, conn) in self.core.conns.iter_mut() {
            conn.queue.clear();
            conn.buffered = 0;
        }
    }
}
