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
use crate::health::Health;
use crate::heartbeat::{self, judge, unix_now, Verdict};
use crate::ids::{ConnId, Tick};
use crate::metrics::ShardStats;
use crate::protocol::close::CloseCode;
use crate::protocol::envelope::ServerOp;
use crate::wire::envelope_frame;

/// A writer task idle for this long exits (and is spawned again when needed).
const WRITER_RETIRE: Duration = Duration::from_secs(2);

/// Connections one sweep pass tears down for a handshake or heartbeat timeout. The rest wait
/// for the next pass, which then comes after [`BACKLOG_PAUSE`] instead of a full period: a
/// flood of thousands of silent connections expiring together is torn down in slices, so the
/// shard's rooms are served between them (and the flood's re-opens come spread out too).
pub(crate) const KILLS_PER_PASS: u64 = 256;

/// Pause before the next pass while timed-out connections wait to be torn down.
pub(crate) const BACKLOG_PAUSE: Duration = Duration::from_millis(2);

/// An empty ping frame (server frames are unmasked), shared by every connection.
static PING: &[u8] = &[0x89, 0x00];

/// How the daemon is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// SIGTERM: stop accepting at once; close the clients with 1012 (service restart) spread
    /// evenly over most of `drain_timeout` (envelope clients first get a `reconnect` hint with
    /// their delay), flush, and exit by `drain_timeout`.
    Graceful,
    /// `shardcast drain --over D`: the same, spread over `D` instead of `drain_timeout`.
    Over(Duration),
    /// SIGINT: close every client with 1001 at once, and do not wait for slow clients.
    Fast,
}

/// The share of the drain window over which closes are spread (the rest lets the last ones
/// flush and finish their close handshake).
pub(crate) const DRAIN_SPREAD: f64 = 0.8;

/// When each of `n` connections is closed in a rolling drain over `window`: slot `i` at a
/// uniformly jittered point of the `i`-th of `n` equal parts of `DRAIN_SPREAD × window`
/// (`jitter` yields uniforms in [0, 1)), so closes — and the reconnects they cause — are spread
/// evenly, never all at once.
pub(crate) fn drain_schedule(
    n: usize,
    window: Duration,
    mut jitter: impl FnMut() -> f64,
) -> Vec<Duration> {
    let spread = window.mul_f64(DRAIN_SPREAD);
    (0..n)
        .map(|i| spread.mul_f64((i as f64 + jitter().clamp(0.0, 0.999)) / n as f64))
        .collect()
}

/// Admission count and shutdown state.
pub(crate) struct Lifecycle {
    /// Daemon-wide count of open WebSocket connections (checked only at upgrade).
    pub(crate) open_connections: Arc<AtomicUsize>,
    /// Daemon-wide admission state (rates, per-IP and per-user counts).
    pub(crate) admission: Arc<Admission>,
    /// Spreads `Retry-After` values.
    pub(crate) jitter: Jitter,
    /// Pulses and accepting flags (`/readyz`, the systemd watchdog).
    pub(crate) health: Arc<Health>,
    /// Set when shutdown begins: the mode and the drain deadline.
    pub(crate) shutdown: Option<(ShutdownMode, Instant)>,
    /// Wakes the accept loop when shutdown begins.
    pub(crate) accept_waker: Option<Waker>,
    /// The sweep's scratch list of connections to kick (reused).
    kick: Vec<ConnId>,
    /// Rolling drain: when each remaining connection is to be closed (time, slot, uid), soonest
    /// first.
    pub(crate) drain_queue: std::collections::VecDeque<(Instant, ConnId, u64)>,
    /// The sweep's scratch list of connections whose token expired (reused).
    expired: Vec<ConnId>,
}

impl Lifecycle {
    pub(crate) fn new(
        open_connections: Arc<AtomicUsize>,
        admission: Arc<Admission>,
        health: Arc<Health>,
        seed: u64,
    ) -> Lifecycle {
        Lifecycle {
            open_connections,
            admission,
            health,
            jitter: Jitter::new(seed),
            shutdown: None,
            accept_waker: None,
            kick: Vec::new(),
            drain_queue: std::collections::VecDeque::new(),
            expired: Vec::new(),
        }
    }
}

impl ShardCore {
    /// Run one sweep at `now`. Returns `true` when timed-out connections are left for the next
    /// pass ([`KILLS_PER_PASS`]).
    pub(crate) fn sweep(&mut self, now: Instant) -> bool {
        let interval = self.cfg.heartbeat_interval;
        let timeout = self.cfg.heartbeat_timeout;
        let drain_over = matches!(self.life.shutdown, Some((_, d)) if now >= d);
        let ping = Bytes::from_static(PING);
        let tick = Tick::at(now);
        let (mut hb, mut hs) = (0u64, 0u64);
        let mut backlog = false;
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
                    if c.wire == crate::wire::Wire::Sse {
                        // An event stream never answers: its comment line keeps proxies from
                        // timing it out, and a dead client shows as a failed write.
                        c.last_seen = tick;
                    }
                    c.push_control(ping.clone());
                    kick.push(ConnId(i));
                }
                Verdict::HeartbeatTimeout | Verdict::HandshakeTimeout
                    if hb + hs >= KILLS_PER_PASS =>
                {
                    backlog = true;
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
        self.drain_due(now);
        self.life.expired = expired;
        self.sweep_homes(now);
        self.sweep_shared();
        let st = self.my_stats();
        ShardStats::add(&st.heartbeat_timeouts, hb);
        ShardStats::add(&st.handshake_timeouts, hs);
        backlog
    }

    /// Once per sweep: admission entries (shard 0 for the node), the queue-depth sample, the
    /// health pulse.
    fn sweep_shared(&self) {
        if self.id.0 == 0 {
            self.life.admission.purge();
        }
        let depths = self.conns.iter().map(|(_, c)| c.buffered);
        self.stats.shard(self.id.0).record_queue_depths(depths);
        let open = self.conns.iter().filter(|(_, c)| c.phase == Phase::Open);
        self.stats
            .shard(self.id.0)
            .record_wires(open.map(|(_, c)| c.wire as usize));
        self.life.health.beat(self.id.0);
    }

    /// Expire the home rooms' history and dedup memory (once a second) and set the gauges of
    /// what they keep.
    fn sweep_homes(&mut self, now: Instant) {
        let cfg = self.cfg.clone();
        let dedup = cfg.publish_dedup_window;
        if let Some(t) = self.home.sweep(now, |room| cfg.history_in(room).1, dedup) {
            let st = self.stats.shard(self.id.0);
            ShardStats::add(&st.history_evictions, t.expired);
            ShardStats::set(&st.history_messages, t.messages);
            ShardStats::set(&st.history_bytes, t.bytes);
            ShardStats::set(&st.presence_members, t.presence);
        }
    }

    /// Start shutting down: stop accepting; handshakes in progress are dropped; open clients
    /// are closed with 1001 at once (`Fast`) or with 1012 on a rolling schedule (see
    /// [`ShutdownMode::Graceful`]).
    pub(crate) fn begin_shutdown(&mut self, mode: ShutdownMode, now: Instant) {
        if let Some((ShutdownMode::Fast, _)) = self.life.shutdown {
            return;
        }
        let grace = match mode {
            ShutdownMode::Graceful => self.cfg.drain_timeout,
            ShutdownMode::Over(d) => d,
            ShutdownMode::Fast => self.cfg.drain_timeout.min(Duration::from_millis(250)),
        };
        let deadline = now + grace;
        self.life.shutdown = Some((mode, deadline));
        self.life.health.set_draining();
        self.life.health.set_accepting(self.id.0, false);
        if let Some(w) = self.life.accept_waker.take() {
            w.wake();
        }
        let ids: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        let mut open = Vec::with_capacity(ids.len());
        for i in ids {
            match self.conns[i].phase {
                Phase::Handshake { .. } => self.conns[i].kill(),
                Phase::Closing { .. } => {
                    // The drain deadline also bounds a close already in progress.
                    self.conns[i].phase = Phase::Closing {
                        deadline: Tick::at(deadline),
                    };
                }
                Phase::Open if mode == ShutdownMode::Fast => {
                    self.close_for_shutdown(ConnId(i), CloseCode::GOING_AWAY, deadline, now);
                }
                Phase::Open => open.push(ConnId(i)),
            }
        }
        self.schedule_drain(open, grace, now);
    }

    /// Give each of `open` its close time over `grace` and send envelope clients their
    /// `reconnect` hint (the delay until their close) now.
    fn schedule_drain(&mut self, open: Vec<ConnId>, grace: Duration, now: Instant) {
        let jitter = &mut self.life.jitter;
        let mut slots = drain_schedule(open.len(), grace, || jitter.next_unit());
        // Who goes when is shuffled too, so no shard or room goes first.
        for i in (1..slots.len()).rev() {
            let j = (self.life.jitter.next_unit() * (i + 1) as f64) as usize;
            slots.swap(i, j.min(i));
        }
        let mut queue: Vec<(Instant, ConnId, u64)> = Vec::with_capacity(open.len());
        for (id, at) in open.into_iter().zip(slots) {
            let Some(c) = self.conns.get(id.0) else {
                continue;
            };
            let uid = c.uid;
            if let Some(format) = c.wire.format() {
                let after_ms = at.as_millis() as u64;
                let hint = envelope_frame(&ServerOp::Reconnect { after_ms }, format);
                self.queue_reply(id, [hint], now);
            }
            queue.push((now + at, id, uid));
        }
        queue.sort_by_key(|e| e.0);
        self.life.drain_queue = queue.into();
    }

    /// Close the connections whose drain time has come (1012 "service restart").
    pub(crate) fn drain_due(&mut self, now: Instant) {
        let Some((_, deadline)) = self.life.shutdown else {
            return;
        };
        while let Some(&(at, id, uid)) = self.life.drain_queue.front() {
            if at > now {
                break;
            }
            self.life.drain_queue.pop_front();
            if self
                .conns
                .get(id.0)
                .is_some_and(|c| c.uid == uid && c.phase == Phase::Open)
            {
                self.close_for_shutdown(id, CloseCode::SERVICE_RESTART, deadline, now);
            }
        }
    }

    /// Leave every room and queue the close frame (`Fast`: what is queued is discarded).
    fn close_for_shutdown(&mut self, id: ConnId, code: CloseCode, deadline: Instant, now: Instant) {
        let fast = matches!(self.life.shutdown, Some((ShutdownMode::Fast, _)));
        if !fast {
            self.flush_conn_rooms(id, now);
        }
        self.leave_all(id);
        let reason = if code == CloseCode::SERVICE_RESTART {
            "service restart"
        } else {
            "server shutting down"
        };
        if let Some(c) = self.conns.get_mut(id.0) {
            let deadline = Tick::at(deadline);
            c.start_close(code, reason, deadline, fast);
            self.stats.shard(self.id.0).count_close(code.0);
            c.phase = Phase::Closing { deadline };
        }
        self.kick(id);
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
            self.stats.shard(self.id.0).count_close(CloseCode::POLICY.0);
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
            self.stats
                .shard(self.id.0)
                .count_close(CloseCode::TOKEN_EXPIRED.0);
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
    let mut pause = shard.borrow().cfg.sweep_period();
    loop {
        monoio::time::sleep(pause).await;
        let backlog = shard.borrow_mut().sweep(Instant::now());
        let period = shard.borrow().cfg.sweep_period();
        pause = if backlog { BACKLOG_PAUSE } else { period };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Stats;
    use crate::shard::bus::ShardMsg;
    use std::rc::Rc;

    #[test]
    fn timed_out_handshakes_are_torn_down_in_slices() {
        let cfg = Rc::new(Config {
            handshake_timeout: Duration::from_millis(100),
            ..Config::default()
        });
        let (tx, _rx) = flume::bounded::<ShardMsg>(1);
        let stats = Stats::new(1);
        let mut core = ShardCore::new(
            crate::ids::ShardId(0),
            cfg,
            Arc::from(vec![tx]),
            stats.clone(),
            Arc::new(AtomicUsize::new(0)),
            Arc::default(),
            Arc::new(Health::new(1)),
        );
        let t0 = Instant::now();
        let n = KILLS_PER_PASS as usize * 2 + 10;
        let ids: Vec<ConnId> = (0..n).map(|_| core.add_conn(-1, t0)).collect();
        let killed = |core: &ShardCore| ids.iter().filter(|i| core.conns[i.0].killed).count();
        let later = t0 + Duration::from_secs(1);
        assert!(core.sweep(later), "a backlog is left");
        assert_eq!(killed(&core), KILLS_PER_PASS as usize);
        assert!(core.sweep(later));
        assert_eq!(killed(&core), 2 * KILLS_PER_PASS as usize);
        assert!(!core.sweep(later), "the last slice leaves nothing");
        assert_eq!(killed(&core), n);
        assert_eq!(stats.snapshot().handshake_timeouts, n as u64);
    }

    #[test]
    fn a_rolling_drain_spreads_closes_evenly() {
        let mut x = 0.0f64;
        let slots = drain_schedule(1000, Duration::from_secs(10), || {
            x = (x + 0.618_034) % 1.0;
            x
        });
        assert_eq!(slots.len(), 1000);
        assert!(
            slots.iter().all(|d| *d < Duration::from_secs(8)),
            "within the spread"
        );
        // Ten equal buckets of 0.8 s hold about 100 each.
        let mut buckets = [0u32; 10];
        for d in &slots {
            buckets[(d.as_secs_f64() / 0.8) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (95..=105).contains(&b)),
            "{buckets:?}"
        );
        assert!(drain_schedule(0, Duration::from_secs(1), || 0.5).is_empty());
    }
}
