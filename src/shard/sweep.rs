//! The per-shard timer sweep and the shutdown drain. One periodic scan over the shard's
//! connections replaces a timer per connection: it applies [`crate::heartbeat::judge`] (pings
//! to quiet connections, drops silent ones, handshake and close deadlines), retires idle writer
//! tasks, expires home rooms' history, and ends a drain at its deadline.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ShardCore, ShardRef};
use crate::admission::{Admission, Holder, Jitter};
use crate::conn::Phase;
use crate::heartbeat::{self, judge, unix_now, Verdict};
use crate::ids::{ConnId, Tick};
use crate::metrics::ShardStats;
use crate::protocol::close::CloseCode;

/// A writer task idle for this long exits (and is spawned again when needed).
const WRITER_RETIRE: Duration = Duration::from_secs(2);

/// An empty ping frame (server frames are unmasked), shared by every connection.
static PING: &[u8] = &[0x89, 0x00];

/// How the daemon is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// SIGTERM: stop accepting, close every client with 1001, flush, wait up to `drain_timeout`.
    Graceful,
    /// SIGINT: the same, but do not wait for slow clients.
    Fast,
}

/// Admission count and shutdown state.
pub(crate) struct Lifecycle {
    /// Daemon-wide count of open WebSocket connections (checked only at upgrade).
    pub(crate) open_connections: Arc<AtomicUsize>,
    /// Daemon-wide admission state (rates, per-IP and per-user counts).
    pub(crate) admission: Arc<Admission>,
    /// Spreads `Retry-After` values.
    pub(crate) jitter: Jitter,
    /// Set when shutdown begins: the mode and the drain deadline.
    pub(crate) shutdown: Option<(ShutdownMode, Instant)>,
    /// Wakes the accept loop when shutdown begins.
    pub(crate) accept_waker: Option<Waker>,
    /// The sweep's scratch list of connections to kick (reused).
    kick: Vec<ConnId>,
    /// The sweep's scratch list of connections whose token expired (reused).
    expired: Vec<ConnId>,
}

impl Lifecycle {
    pub(crate) fn new(
        open_connections: Arc<AtomicUsize>,
        admission: Arc<Admission>,
        seed: u64,
    ) -> Lifecycle {
        Lifecycle {
            open_connections,
            admission,
            jitter: Jitter::new(seed),
            shutdown: None,
            accept_waker: None,
            kick: Vec::new(),
            expired: Vec::new(),
        }
    }
}

impl ShardCore {
    /// Run one sweep at `now`.
    pub(crate) fn sweep(&mut self, now: Instant) {
        let interval = self.cfg.heartbeat_interval;
        let timeout = self.cfg.heartbeat_timeout;
        let drain_over = matches!(self.life.shutdown, Some((_, d)) if now >= d);
        let ping = Bytes::from_static(PING);
        let tick = Tick::at(now);
        let (mut hb, mut hs) = (0u64, 0u64);
        let mut kick = std::mem::take(&mut self.life.kick);
        let mut expired = std::mem::take(&mut self.life.expired);
        let unix = unix_now();
        for (i, c) in self.conns.iter_mut() {
            if c.killed {
                continue;
            }
            if c.writer_alive {
                // Retire a writer that has had nothing to do for a while: an idle connection
                // keeps no writer task (one is spawned again when something is queued).
                if c.queue.is_empty() && !c.retire && tick.since(c.writer_parked) >= WRITER_RETIRE {
                    c.retire = true;
                    c.wake_writer();
                }
            } else if !c.queue.is_empty() {
                kick.push(ConnId(i));
            }
            if drain_over {
                c.kill();
                continue;
            }
            if c.phase == Phase::Open && heartbeat::expired(c.expires, unix) {
                expired.push(ConnId(i));
                continue;
            }
            match judge(c.phase, c.last_seen, c.last_ping, tick, interval, timeout) {
                Verdict::Keep => {}
                Verdict::Ping => {
                    c.last_ping = tick;
                    c.push_control(ping.clone());
                    kick.push(ConnId(i));
                }
                Verdict::HeartbeatTimeout => {
                    hb += 1;
                    c.kill();
                }
                Verdict::HandshakeTimeout => {
                    hs += 1;
                    c.kill();
                }
                Verdict::CloseTimeout => c.kill(),
            }
        }
        for id in kick.drain(..) {
            self.kick(id);
        }
        self.life.kick = kick;
        for id in expired.drain(..) {
            self.close_expired(id, now);
        }
        self.life.expired = expired;
        let cfg = self.cfg.clone();
        self.home.sweep(now, |room| cfg.history_in(room).1);
        if self.id.0 == 0 {
            self.life.admission.purge();
        }
        let st = self.my_stats();
        ShardStats::add(&st.heartbeat_timeouts, hb);
        ShardStats::add(&st.handshake_timeouts, hs);
    }

    /// Start shutting down: every open client gets 1001; handshakes in progress are dropped.
    pub(crate) fn begin_shutdown(&mut self, mode: ShutdownMode, now: Instant) {
        if let Some((ShutdownMode::Fast, _)) = self.life.shutdown {
            return;
        }
        let grace = match mode {
            ShutdownMode::Graceful => self.cfg.drain_timeout,
            ShutdownMode::Fast => self.cfg.drain_timeout.min(Duration::from_millis(250)),
        };
        let deadline = now + grace;
        self.life.shutdown = Some((mode, deadline));
        let deadline = Tick::at(deadline);
        if let Some(w) = self.life.accept_waker.take() {
            w.wake();
        }
        let ids: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for i in ids {
            self.leave_all(ConnId(i));
            let c = &mut self.conns[i];
            match c.phase {
                Phase::Handshake { .. } => c.kill(),
                _ => {
                    c.start_close(
                        CloseCode::GOING_AWAY,
                        "server shutting down",
                        deadline,
                        mode == ShutdownMode::Fast,
                    );
                    // The drain deadline also bounds a close already in progress.
                    c.phase = Phase::Closing { deadline };
                }
            }
            self.kick(ConnId(i));
        }
    }

    /// Close a connection whose user opened a newer one over `max_connections_per_user`
    /// (`on_user_limit = "close_oldest"`): 1008, after what its rooms have pending.
    pub(crate) fn evict(&mut self, h: Holder, now: Instant) {
        if h.shard != self.id {
            self.send_to(h.shard, super::bus::ShardMsg::Evict(h));
            return;
        }
        if self.conns.get(h.id.0).is_none_or(|c| c.uid != h.uid) {
            return;
        }
        self.flush_conn_rooms(h.id, now);
        self.leave_all(h.id);
        let deadline = Tick::at(now + self.cfg.close_timeout);
        if let Some(c) = self.conns.get_mut(h.id.0) {
            c.start_close(
                CloseCode::POLICY,
                "replaced by a newer connection",
                deadline,
                false,
            );
        }
        self.kick(h.id);
    }

    /// Close a connection whose token ran out: 4001, after what its rooms have pending.
    fn close_expired(&mut self, id: ConnId, now: Instant) {
        self.flush_conn_rooms(id, now);
        self.leave_all(id);
        let deadline = Tick::at(now + self.cfg.close_timeout);
        if let Some(c) = self.conns.get_mut(id.0) {
            c.start_close(CloseCode::TOKEN_EXPIRED, "token expired", deadline, false);
            c.fin_after_flush = true;
            ShardStats::add(&self.stats.shard(self.id.0).token_expiries, 1);
        }
        self.kick(id);
    }

    /// Nothing left to drain?
    pub(crate) fn drained(&self) -> bool {
        self.conns.is_empty()
    }
}

/// The sweep task.
pub(crate) async fn run_sweeper(shard: ShardRef) {
    let period = shard.borrow().cfg.sweep_period();
    loop {
        monoio::time::sleep(period).await;
        shard.borrow_mut().sweep(Instant::now());
    }
}
