//! The deafness canary (pure): the bridge publishes a numbered canary on its own node channel
//! every `canary_interval` and must hear it back on its subscriber connection within
//! `canary_timeout`. A subscriber connection that silently stopped receiving (a Redis restart
//! the client did not notice, a black-holed socket, a paused client) fails this check even
//! though every command still succeeds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Canaries sent and not heard back yet.
#[derive(Debug, Default)]
pub struct Canary {
    next: u64,
    unheard: VecDeque<(u64, Instant)>,
}

impl Canary {
    /// A canary goes out now: its number.
    pub fn send(&mut self, now: Instant) -> u64 {
        self.next += 1;
        // Bounded: once deaf, the oldest is what matters.
        if self.unheard.len() < 1024 {
            self.unheard.push_back((self.next, now));
        }
        self.next
    }

    /// Canary `n` came back (and so did every earlier one: the channel is FIFO).
    pub fn heard(&mut self, n: u64) {
        while self.unheard.front().is_some_and(|&(k, _)| k <= n) {
            self.unheard.pop_front();
        }
    }

    /// Forget what is outstanding (a new subscriber connection starts listening).
    pub fn reset(&mut self) {
        self.unheard.clear();
    }

    /// Deaf: the oldest unheard canary is older than `timeout`.
    pub fn deaf(&self, now: Instant, timeout: Duration) -> bool {
        self.unheard
            .front()
            .is_some_and(|&(_, t)| now.saturating_duration_since(t) > timeout)
    }
}

/// The node's cluster readiness (pure): connected to Redis, subscriber connection hearing its
/// canary, and every room resubscribed since the last reconnect.
pub fn ready(connected: bool, deaf: bool, resubscribed: bool) -> bool {
    connected && !deaf && resubscribed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaf_only_when_a_canary_is_late() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = Canary::default();
        assert!(!c.deaf(t0, 3 * s));
        let n1 = c.send(t0);
        let n2 = c.send(t0 + s);
        assert!(!c.deaf(t0 + 2 * s, 3 * s));
        assert!(c.deaf(t0 + 4 * s, 3 * s), "canary 1 is late");
        c.heard(n1);
        assert!(!c.deaf(t0 + 4 * s, 3 * s), "canary 2 is not late yet");
        assert!(c.deaf(t0 + 5 * s, 3 * s));
        c.heard(n2);
        assert!(!c.deaf(t0 + 60 * s, 3 * s), "nothing outstanding");
        c.send(t0);
        c.reset();
        assert!(!c.deaf(t0 + 60 * s, 3 * s));
    }

    #[test]
    fn readiness() {
        assert!(ready(true, false, true));
        assert!(!ready(false, false, true));
        assert!(!ready(true, true, true));
        assert!(!ready(true, false, false));
    }
}
