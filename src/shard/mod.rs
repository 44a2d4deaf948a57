//! One shard: the state a single monoio runtime owns, and every operation that needs more than
//! one part of it. Everything here is single-threaded (`Rc<RefCell<_>>`), and no borrow is ever
//! held across an `.await`.
//!
//! [`ShardCore`] is composed of parts that each own their state:
//! - `conns` ([`crate::conn::Conns`]): connections, their queues, read-buffer and inflater pools;
//! - `rooms` and `turn`: the room registry, and the rooms with broadcasts pending in this loop
//!   turn ([`broadcast`]);
//! - `home`: the rooms this shard is home for ([`crate::room::home`], applied by [`home`]);
//! - `bus`: the shard-to-shard channels, their ordered overflow, and the dispatcher ([`bus`]);
//! - `subs`: envelope subscriptions waiting for their home's answer ([`replies`]);
//! - `life`: admission count, shutdown state, the accept loop's waker ([`sweep`]);
//! - `enc`: the broadcast encoder and its shared compressor ([`crate::wire::Encoder`]).
//!
//! The `impl ShardCore` blocks are all in this directory, one file per concern: `membership`
//! (join, leave, admit, close), `broadcast` (coalescing, fan-out, raw publishes), `home` (the
//! home side of the home protocol), `replies` (the subscriber side), `bus` (dispatch), `sweep`
//! (heartbeats, drain).

pub(crate) mod broadcast;
pub(crate) mod bus;
pub(crate) mod cluster;
pub(crate) mod home;
pub(crate) mod membership;
pub(crate) mod presence;
pub(crate) mod replies;
pub(crate) mod streams;
pub(crate) mod sweep;

#[doc(hidden)]
pub mod bench;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::admission::Admission;
use crate::config::Config;
use crate::conn::{writer, Conns};
use crate::health::Health;
use crate::ids::{ConnId, ShardId, Tick};
use crate::metrics::{ShardStats, Stats};
use crate::protocol::deflate::DeflateMode;
use crate::room::home::HomeRooms;
use crate::room::RoomRegistry;
use crate::wire::Encoder;

pub use sweep::ShutdownMode;

/// Shared handle to a shard's state.
pub(crate) type ShardRef = Rc<RefCell<ShardCore>>;

/// The state one shard owns (see the module doc for its parts).
pub(crate) struct ShardCore {
    pub(crate) id: ShardId,
    /// The configuration in force; replaced as a whole by [`ShardCore::reconfigure`].
    pub(crate) cfg: Rc<Config>,
    pub(crate) conns: Conns,
    pub(crate) rooms: RoomRegistry,
    pub(crate) turn: broadcast::Turn,
    pub(crate) home: HomeRooms,
    pub(crate) bus: bus::Bus,
    pub(crate) subs: HashMap<(u64, Arc<str>), replies::PendingSub>,
    /// Open Server-Sent Events streams (who may post to each, and where posts go).
    pub(crate) sse: streams::Streams,
    pub(crate) life: sweep::Lifecycle,
    pub(crate) enc: Encoder,
    pub(crate) stats: Stats,
    /// Broadcast frames to a connection with nothing queued are written at once from the
    /// delivery loop (off in dedicated compression mode, whose writer compresses each frame).
    pub(crate) direct_send: bool,
    /// This shard's own handle, to spawn tasks from inside its methods.
    pub(crate) me: Weak<RefCell<ShardCore>>,
    /// Cluster mode (`[cluster]`): the Redis bridge and the rooms' channel state.
    pub(crate) cluster: Option<cluster::ClusterHome>,
}

impl ShardCore {
    pub(crate) fn new(
        id: ShardId,
        cfg: Rc<Config>,
        peers: Arc<[flume::Sender<bus::ShardMsg>]>,
        stats: Stats,
        open_connections: Arc<AtomicUsize>,
        admission: Arc<Admission>,
        health: Arc<Health>,
    ) -> ShardCore {
        Tick::start_clock();
        ShardCore {
            id,
            direct_send: direct_send(&cfg),
            cfg,
            conns: Conns::default(),
            rooms: RoomRegistry::default(),
            turn: broadcast::Turn::default(),
            home: HomeRooms::default(),
            bus: bus::Bus::new(peers),
            subs: HashMap::new(),
            sse: Default::default(),
            life: sweep::Lifecycle::new(
                open_connections,
                admission,
                health,
                0x5eed ^ (id.0 as u64 + 1) << 32,
            ),
            enc: Encoder::default(),
            stats,
            me: Weak::new(),
            cluster: None,
        }
    }

    /// This shard's counters.
    pub(crate) fn my_stats(&self) -> &ShardStats {
        self.stats.shard(self.id.0)
    }

    /// Number of shards on the node.
    pub(crate) fn shards(&self) -> usize {
        self.bus.peers.len()
    }

    /// Put a new configuration in force. Connections keep the limits they were opened with where
    /// those were fixed at the upgrade (frame and message sizes, deflate parameters); everything
    /// read per event (high-water marks, heartbeats, history, admission) follows at once.
    pub(crate) fn reconfigure(&mut self, cfg: Rc<Config>) {
        self.direct_send = direct_send(&cfg);
        self.cfg = cfg;
    }

    /// Make sure what is queued for `id` gets written: wake its writer, or spawn one.
    pub(crate) fn kick(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id.0) else {
            return;
        };
        if c.writer_alive {
            c.wake_writer();
            return;
        }
        if c.queue.is_empty() || c.killed {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let Some(wh) = c.wh.take() else { return };
        c.writer_alive = true;
        c.retire = false;
        let tls = c.tls.is_some();
        monoio::spawn(writer::write_loop(me, id, wh, c.dedicated.take(), tls));
    }
}

fn direct_send(cfg: &Config) -> bool {
    !(cfg.compression.enabled && cfg.compression.mode == DeflateMode::Dedicated)
}

impl writer::Host for ShardCore {
    fn conns_mut(&mut self) -> &mut Conns {
        &mut self.conns
    }
    fn stats(&self) -> &ShardStats {
        self.my_stats()
    }
}
