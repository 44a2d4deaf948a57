//! The per-shard timer sweep: one periodic scan over the shard's connections replaces a timer per
//! connection. It sends pings to quiet connections, drops silent ones, enforces the handshake and
//! close deadlines, and ends a shutdown drain.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::metrics::ShardStats;
use crate::protocol::close::CloseCode;
use crate::shard::{Phase, ShardCore, ShardRef, ShutdownMode, Tick};

/// A writer task idle for this long exits (and is spawned again when needed).
const WRITER_RETIRE: Duration = Duration::from_secs(2);

/// An empty ping frame (server frames are unmasked), shared by every connection.
static PING: &[u8] = &[0x89, 0x00];

/// What the sweep decided for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    Ping,
    /// Silent for `interval + timeout`.
    HeartbeatTimeout,
    /// Did not finish the HTTP request in time.
    HandshakeTimeout,
    /// Close handshake or drain took too long.
    CloseTimeout,
}

/// Decide for one connection (pure function of its timestamps).
pub(crate) fn judge(
    phase: Phase,
    last_seen: Tick,
    last_ping: Tick,
    now: Tick,
    interval: Duration,
    timeout: Duration,
) -> Verdict {
    match phase {
        Phase::Handshake { deadline } if deadline.reached(now) => Verdict::HandshakeTimeout,
        Phase::Handshake { .. } => Verdict::Keep,
        Phase::Closing { deadline } if deadline.reached(now) => Verdict::CloseTimeout,
        Phase::Closing { .. } => Verdict::Keep,
        Phase::Open => {
            let quiet = now.since(last_seen);
            if quiet >= interval + timeout {
                Verdict::HeartbeatTimeout
            } else if quiet >= interval && now.since(last_ping) >= interval {
                Verdict::Ping
            } else {
                Verdict::Keep
            }
        }
    }
}

impl ShardCore {
    /// Run one sweep at `now`.
    pub(crate) fn sweep(&mut self, now: Instant) {
        let interval = self.cfg.heartbeat_interval;
        let timeout = self.cfg.heartbeat_timeout;
        let drain_over = matches!(self.shutdown, Some((_, d)) if now >= d);
        let ping = Bytes::from_static(PING);
        let tick = Tick::at(now);
        let (mut hb, mut hs) = (0u64, 0u64);
        let mut kick = std::mem::take(&mut self.spawn_list);
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
                kick.push(crate::room::ConnId(i));
            }
            if drain_over {
                c.kill();
                continue;
            }
            match judge(c.phase, c.last_seen, c.last_ping, tick, interval, timeout) {
                Verdict::Keep => {}
                Verdict::Ping => {
                    c.last_ping = tick;
                    c.push_control(ping.clone());
                    kick.push(crate::room::ConnId(i));
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
        self.spawn_list = kick;
        let ttl = self.cfg.history_ttl;
        self.home.sweep(now, ttl);
        let st = self.my_stats();
        ShardStats::add(&st.heartbeat_timeouts, hb);
        ShardStats::add(&st.handshake_timeouts, hs);
    }

    /// Start shutting down: every open client gets 1001; handshakes in progress are dropped.
    pub(crate) fn begin_shutdown(&mut self, mode: ShutdownMode, now: Instant) {
        if let Some((ShutdownMode::Fast, _)) = self.shutdown {
            return;
        }
        let grace = match mode {
            ShutdownMode::Graceful => self.cfg.drain_timeout,
            ShutdownMode::Fast => self.cfg.drain_timeout.min(Duration::from_millis(250)),
        };
        let deadline = now + grace;
        self.shutdown = Some((mode, deadline));
        let deadline = Tick::at(deadline);
        if let Some(w) = self.accept_waker.take() {
            w.wake();
        }
        let ids: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for i in ids {
            self.leave_all(crate::room::ConnId(i));
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
            self.kick(crate::room::ConnId(i));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let _ = Tick::at(Instant::now()); // fix the epoch before i0
        let i0 = Instant::now();
        let t0 = Tick::at(i0);
        let s = Duration::from_secs;
        let at = |d: Duration| Tick::at(i0 + d);
        let open = Phase::Open;
        assert_eq!(judge(open, t0, t0, at(s(1)), s(30), s(10)), Verdict::Keep);
        assert_eq!(judge(open, t0, t0, at(s(30)), s(30), s(10)), Verdict::Ping);
        // Pinged at 30 s: no second ping before 60 s.
        assert_eq!(
            judge(open, t0, at(s(30)), at(s(35)), s(30), s(10)),
            Verdict::Keep
        );
        assert_eq!(
            judge(open, t0, at(s(30)), at(s(40)), s(30), s(10)),
            Verdict::HeartbeatTimeout
        );
        let hs = Phase::Handshake { deadline: at(s(5)) };
        assert_eq!(judge(hs, t0, t0, at(s(4)), s(30), s(10)), Verdict::Keep);
        assert_eq!(
            judge(hs, t0, t0, at(s(5)), s(30), s(10)),
            Verdict::HandshakeTimeout
        );
        let cl = Phase::Closing { deadline: at(s(1)) };
        assert_eq!(
            judge(cl, t0, t0, at(s(2)), s(30), s(10)),
            Verdict::CloseTimeout
        );
    }
}
