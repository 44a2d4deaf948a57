//! Rates as GCRA (the generic cell rate algorithm): one number per limited thing, the
//! "theoretical arrival time" `tat`, so a bucket is a single `u64` — an atomic one when shards
//! share it, a plain one inside a connection — and every decision is a pure function of it.

use std::sync::atomic::{AtomicU64, Ordering};

/// A rate: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained events per second (> 0).
    pub per_second: f64,
    /// Events allowed back to back (>= 1).
    pub burst: u32,
}

impl Rate {
    /// Nanoseconds between events at the sustained rate.
    pub fn interval_ns(&self) -> u64 {
        (1e9 / self.per_second).max(1.0) as u64
    }

    /// How far ahead of `now` the theoretical arrival time may run: `burst - 1` intervals.
    pub fn tolerance_ns(&self) -> u64 {
        self.interval_ns()
            .saturating_mul(u64::from(self.burst.max(1) - 1))
    }
}

/// One GCRA step: an event at `now` (ns on any monotonic clock) against the state `tat`.
/// `Ok(new_tat)`: allowed; `Err(wait_ns)`: refused, allowed again in `wait_ns`.
pub fn gcra(tat: u64, now: u64, rate: &Rate) -> Result<u64, u64> {
    let start = tat.max(now);
    let limit = now.saturating_add(rate.tolerance_ns());
    if start > limit {
        return Err(start - limit);
    }
    Ok(start.saturating_add(rate.interval_ns()))
}

/// Nanoseconds from a process-wide origin to `t` (the clock of per-connection buckets).
pub fn mono_ns(t: std::time::Instant) -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    t.saturating_duration_since(origin).as_nanos() as u64
}

/// A GCRA bucket shared by every shard without a lock (one compare-and-swap per event).
#[derive(Debug, Default)]
pub struct SharedBucket(AtomicU64);

impl SharedBucket {
    /// Take one event at `now`: `Err(wait_ns)` when over the rate.
    pub fn take(&self, now: u64, rate: &Rate) -> Result<(), u64> {
        let mut tat = self.0.load(Ordering::Relaxed);
        loop {
            let next = gcra(tat, now, rate)?;
            match self
                .0
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(t) => tat = t,
            }
        }
    }
}

/// `Retry-After` in whole seconds for a refusal that clears in `wait_ns`: the wait rounded up
/// (at least 1 s) plus a uniform whole number of seconds from 0 to as many again (`jitter`
/// uniform in [0, 1)), so refused clients spread out instead of coming back in lockstep.
pub fn retry_after_secs(wait_ns: u64, jitter: f64) -> u32 {
    let base = wait_ns.div_ceil(1_000_000_000).max(1);
    let extra = (jitter.clamp(0.0, 0.999_999) * (base + 1) as f64).floor() as u64;
    u32::try_from(base + extra).unwrap_or(u32::MAX)
}

/// A small, fast, non-cryptographic random source for jitter (xorshift64*).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from `seed` (any value; 0 is replaced).
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// Uniform in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_the_sustained_rate() {
        let r = Rate {
            per_second: 10.0,
            burst: 3,
        };
        let mut tat = 0;
        let now = 5 * S;
        for _ in 0..3 {
            tat = gcra(tat, now, &r).expect("within the burst");
        }
        let wait = gcra(tat, now, &r).expect_err("burst used up");
        assert_eq!(wait, S / 10, "next one allowed after one interval");
        assert!(gcra(tat, now + S / 10, &r).is_ok());
        // An idle bucket refills up to the burst, not beyond.
        let later = now + 60 * S;
        let mut t2 = tat;
        for _ in 0..3 {
            t2 = gcra(t2, later, &r).unwrap();
        }
        assert!(gcra(t2, later, &r).is_err());
    }

    #[test]
    fn shared_bucket_counts_across_threads() {
        let b = std::sync::Arc::new(SharedBucket::default());
        let r = Rate {
            per_second: 1.0,
            burst: 100,
        };
        let ok: u32 = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..50).filter(|_| b.take(S, &r).is_ok()).count() as u32)
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(ok, 100, "exactly the burst, whatever the interleaving");
    }

    #[test]
    fn retry_after_is_jittered_and_never_zero() {
        assert_eq!(retry_after_secs(1, 0.0), 1);
        assert_eq!(retry_after_secs(S + 1, 0.0), 2);
        assert_eq!(retry_after_secs(2 * S, 0.99), 4);
        assert_eq!(
            retry_after_secs(S / 2, 0.9),
            2,
            "a short wait still spreads over a second"
        );
        let mut j = Jitter::new(7);
        let spread: std::collections::BTreeSet<u32> = (0..200)
            .map(|_| retry_after_secs(4 * S, j.next_unit()))
            .collect();
        assert_eq!(spread.first(), Some(&4));
        assert_eq!(spread.last(), Some(&8));
        assert!(
            spread.len() == 5,
            "every second of the window is used: {spread:?}"
        );
    }
}
