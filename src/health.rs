//! Liveness and readiness of the shards, shared lock-free with the admin listener and the
//! systemd watchdog: each shard's sweep bumps its pulse (so a shard whose loop is stuck stops
//! pulsing), and its accept loop says whether it is accepting. The verdicts are pure functions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One shard's signals.
#[derive(Debug, Default)]
struct Pulse {
    turns: AtomicU64,
    accepting: AtomicBool,
}

/// Every shard's signals, and whether the daemon is draining.
#[derive(Debug)]
pub struct Health {
    shards: Box<[Pulse]>,
    draining: AtomicBool,
    /// Cluster mode: the Redis bridge hears its canary (always true on a single node).
    cluster_ready: AtomicBool,
}

/// What `/readyz` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Every shard accepts.
    Ready,
    /// This shard does not accept yet.
    Starting(usize),
    /// Shutting down (or handing over): no new connections.
    Draining,
    /// Cluster mode: Redis is unreachable or this node does not hear its canary back (deaf).
    Deaf,
}

impl Health {
    /// Signals for `n` shards, none accepting yet.
    pub fn new(n: usize) -> Health {
        Health {
            shards: (0..n).map(|_| Pulse::default()).collect(),
            draining: AtomicBool::new(false),
            cluster_ready: AtomicBool::new(true),
        }
    }

    /// Cluster mode: the bridge hears its canary (`true`) or is deaf or disconnected.
    pub fn set_cluster_ready(&self, on: bool) {
        self.cluster_ready.store(on, Ordering::Release);
    }

    /// Shard `i`'s loop turned (called by its sweep).
    pub fn beat(&self, i: usize) {
        if let Some(p) = self.shards.get(i) {
            p.turns.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Shard `i` accepts connections (or stopped).
    pub fn set_accepting(&self, i: usize, on: bool) {
        if let Some(p) = self.shards.get(i) {
            p.accepting.store(on, Ordering::Release);
        }
    }

    /// The daemon begins draining.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Every shard's pulse count now.
    pub fn pulses(&self) -> Vec<u64> {
        self.shards
            .iter()
            .map(|p| p.turns.load(Ordering::Relaxed))
            .collect()
    }

    /// Ready, starting or draining.
    pub fn readiness(&self) -> Readiness {
        let accepting: Vec<bool> = self
            .shards
            .iter()
            .map(|p| p.accepting.load(Ordering::Acquire))
            .collect();
        match readiness(self.draining.load(Ordering::Acquire), &accepting) {
            Readiness::Ready if !self.cluster_ready.load(Ordering::Acquire) => Readiness::Deaf,
            r => r,
        }
    }
}

/// The readiness verdict: draining wins; then the first shard not accepting.
pub fn readiness(draining: bool, accepting: &[bool]) -> Readiness {
    if draining {
        return Readiness::Draining;
    }
    match accepting.iter().position(|a| !a) {
        Some(i) => Readiness::Starting(i),
        None => Readiness::Ready,
    }
}

/// The watchdog verdict: has every shard's loop turned since `before`? `Err(i)`: shard `i`
/// has not (it is stuck: no ping this time).
pub fn all_turned(before: &[u64], now: &[u64]) -> Result<(), usize> {
    match before.iter().zip(now).position(|(b, n)| n <= b) {
        Some(i) => Err(i),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_shard_accepts_and_not_draining() {
        assert_eq!(readiness(false, &[true, true]), Readiness::Ready);
        assert_eq!(readiness(false, &[true, false]), Readiness::Starting(1));
        assert_eq!(readiness(true, &[true, true]), Readiness::Draining);
        let h = Health::new(2);
        assert_eq!(h.readiness(), Readiness::Starting(0));
        h.set_accepting(0, true);
        h.set_accepting(1, true);
        assert_eq!(h.readiness(), Readiness::Ready);
        h.set_cluster_ready(false);
        assert_eq!(h.readiness(), Readiness::Deaf);
        h.set_cluster_ready(true);
        assert_eq!(h.readiness(), Readiness::Ready);
        h.set_draining();
        assert_eq!(h.readiness(), Readiness::Draining);
    }

    #[test]
    fn a_stuck_shard_fails_the_watchdog() {
        assert_eq!(all_turned(&[1, 5], &[2, 6]), Ok(()));
        assert_eq!(all_turned(&[1, 5], &[2, 5]), Err(1));
        let h = Health::new(2);
        let before = h.pulses();
        h.beat(0);
        assert_eq!(all_turned(&before, &h.pulses()), Err(1));
        h.beat(1);
        assert_eq!(all_turned(&before, &h.pulses()), Ok(()));
    }
}
