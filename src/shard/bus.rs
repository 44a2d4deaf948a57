//! The shard-to-shard bus: one bounded FIFO channel into every shard ([`ShardMsg`]), sends that
//! never block the loop (a full peer inbox spills into an ordered per-peer overflow drained by a
//! task), and the dispatcher that handles what arrives ([`ShardCore::handle_msg`]).
//!
//! Every pair of shards talks through one FIFO channel, so messages from one shard arrive at
//! another in the order they were sent: a room's sequenced messages reach every shard in seq
//! order, and a home's answer to a subscribe falls between the messages it covers and the live
//! ones. Readers stop reading while the overflow is long (back-pressure on publishers only).

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::{ShardCore, ShardRef, ShutdownMode};
use crate::admission::Holder;
use crate::config::Config;
use crate::ids::ShardId;
use crate::metrics::ShardStats;
use crate::room::requests::{ApiAnswer, ApiReq, HomeMsg, Reply};
use crate::wire::{Bcast, Frames};

/// A message between shards.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// A raw client's message for the local raw members of `room`; with `sequence`, this shard is
    /// the room's home and also numbers it.
    Raw {
        /// Interned room name.
        room: Arc<str>,
        /// The raw encodings.
        frames: Frames,
        /// Number it (this shard is the room's home).
        sequence: bool,
    },
    /// A sequenced message or presence event for the local members of its room.
    Event(Arc<Bcast>),
    /// A request to the room's home shard.
    Home(HomeMsg),
    /// A home shard's answer to one connection.
    Reply(Reply),
    /// An HTTP API request (answered on the channel).
    Api(ApiReq, flume::Sender<ApiAnswer>),
    /// Close one connection: its user opened a newer one over `max_connections_per_user`
    /// (`on_user_limit = "close_oldest"`).
    Evict(Holder),
    /// Put a new configuration in force; say so on the channel once done.
    Reconfigure(Arc<Config>, flume::Sender<()>),
    /// Test hook (`SHARDCAST_TEST_HOOKS=1`): block this shard's thread, as a stuck loop would.
    Stall(std::time::Duration),
    /// Begin shutting down.
    Shutdown(ShutdownMode),
}

/// The shard's end of the bus.
pub(crate) struct Bus {
    /// Senders to every shard's inbox (index = shard id; our own is used only by the HTTP API).
    pub(crate) peers: Arc<[flume::Sender<ShardMsg>]>,
    /// Per peer: messages waiting for room in its inbox, in order.
    overflow: Vec<VecDeque<ShardMsg>>,
    /// Per peer: a task is draining `overflow`.
    draining: Vec<bool>,
    /// The inbox task is handling messages from other shards (they take the writer path).
    pub(crate) in_inbox: bool,
}

impl Bus {
    pub(crate) fn new(peers: Arc<[flume::Sender<ShardMsg>]>) -> Bus {
        let n = peers.len();
        Bus {
            peers,
            overflow: (0..n).map(|_| VecDeque::new()).collect(),
            draining: vec![false; n],
            in_inbox: false,
        }
    }

    /// Messages waiting for room in peers' inboxes.
    pub(crate) fn backlog(&self) -> usize {
        self.overflow.iter().map(|q| q.len()).sum()
    }
}

impl ShardCore {
    /// Send `msg` to shard `peer` in order: straight into its inbox when it has room and nothing
    /// is waiting, otherwise behind what is waiting (drained by a task). Never blocks.
    pub(crate) fn send_to(&mut self, peer: ShardId, msg: ShardMsg) {
        let i = peer.0;
        ShardStats::add(&self.stats.shard(self.id.0).cross_shard_messages, 1);
        let bus = &mut self.bus;
        if bus.overflow[i].is_empty() {
            match bus.peers[i].try_send(msg) {
                Ok(()) => return,
                Err(flume::TrySendError::Full(m)) => bus.overflow[i].push_back(m),
                Err(flume::TrySendError::Disconnected(_)) => return,
            }
        } else {
            bus.overflow[i].push_back(msg);
        }
        ShardStats::add(&self.stats.shard(self.id.0).cross_shard_overflow, 1);
        if !bus.draining[i] {
            if let Some(me) = self.me.upgrade() {
                self.bus.draining[i] = true;
                monoio::spawn(drain_overflow(me, i));
            }
        }
    }

    /// Handle one inbox message.
    pub(crate) fn handle_msg(&mut self, msg: ShardMsg, now: Instant) {
        match msg {
            ShardMsg::Raw {
                room,
                frames,
                sequence,
            } => {
                if let Some(id) = self.rooms.find(&room) {
                    self.enqueue_room(id, frames.clone(), None, false, now);
                }
                if sequence {
                    self.home_sequence_raw(room, &frames, now);
                }
            }
            ShardMsg::Event(b) => self.deliver_bcast(&b, now),
            ShardMsg::Home(m) => self.home_handle(m, now),
            ShardMsg::Reply(r) => self.handle_reply(r, now),
            ShardMsg::Api(ApiReq::Publish { room, data }, tx) if self.cluster.is_some() => {
                self.cluster_publish(room, data, None, None, None, Some(tx), now);
            }
            ShardMsg::Api(ApiReq::Presence { room }, tx) if !self.presence_cached(&room) => {
                self.presence_query(room, super::presence::PresenceQuery::Api(tx), now);
            }
            ShardMsg::Api(req, tx) => {
                let answer = self.home_api(req, now);
                let _ = tx.try_send(answer);
            }
            ShardMsg::Evict(h) => self.evict(h, now),
            ShardMsg::Stall(d) => std::thread::sleep(d),
            ShardMsg::Reconfigure(cfg, done) => {
                self.reconfigure(Rc::new(Config::clone(&cfg)));
                let _ = done.try_send(());
            }
            ShardMsg::Shutdown(mode) => self.begin_shutdown(mode, now),
        }
    }
}

/// Push what waits for shard `peer` into its inbox, in order, waiting while it is full.
async fn drain_overflow(shard: ShardRef, peer: usize) {
    loop {
        let next = {
            let mut s = shard.borrow_mut();
            match s.bus.overflow[peer].pop_front() {
                Some(m) => Some((s.bus.peers[peer].clone(), m)),
                None => {
                    s.bus.draining[peer] = false;
                    None
                }
            }
        };
        let Some((tx, msg)) = next else { return };
        if tx.send_async(msg).await.is_err() {
            let mut s = shard.borrow_mut();
            s.bus.overflow[peer].clear();
            s.bus.draining[peer] = false;
            return;
        }
    }
}

/// Cluster mode: drain what the Redis bridge reports, in batches, until it is gone.
pub(crate) async fn run_cluster_inbox(shard: ShardRef, rx: flume::Receiver<crate::cluster::Event>) {
    while let Ok(first) = rx.recv_async().await {
        let now = Instant::now();
        let mut s = shard.borrow_mut();
        s.bus.in_inbox = true;
        s.cluster_event(first, now);
        for _ in 0..1024 {
            match rx.try_recv() {
                Ok(ev) => s.cluster_event(ev, now),
                Err(_) => break,
            }
        }
        s.bus.in_inbox = false;
    }
}

/// Drain this shard's inbox in batches until every sender is gone.
pub(crate) async fn run_inbox(shard: ShardRef, rx: flume::Receiver<ShardMsg>) {
    while let Ok(first) = rx.recv_async().await {
        let now = Instant::now();
        let mut s = shard.borrow_mut();
        s.bus.in_inbox = true;
        s.handle_msg(first, now);
        // Drain what else is already there in the same turn (bounded, to stay fair).
        for _ in 0..1024 {
            match rx.try_recv() {
                Ok(m) => s.handle_msg(m, now),
                Err(_) => break,
            }
        }
        s.bus.in_inbox = false;
    }
}
