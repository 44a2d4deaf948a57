//! Identifiers and the compact clock every other module shares. A leaf: it imports nothing
//! from the crate.

use std::time::Instant;

/// Index of a shard (one thread, one monoio runtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardId(pub usize);

/// Index of a connection in its shard's slab (reused after the connection is gone; the node-unique
/// id is `Conn::uid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub usize);

/// Index of a room in its shard's registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoomId(pub usize);

/// A compact timestamp: milliseconds since the process started, wrapping every ~49 days
/// (comparisons use wrapping differences, valid for spans under ~24 days). Four bytes instead of
/// an `Instant`'s sixteen: it is stored several times per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tick(u32);

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Tick {
    /// Fix the clock's origin (ticks count from before the first connection).
    pub(crate) fn start_clock() {
        let _ = epoch();
    }

    /// The tick of `t`.
    #[inline]
    pub(crate) fn at(t: Instant) -> Tick {
        Tick(t.saturating_duration_since(epoch()).as_millis() as u32)
    }

    /// Has `self` been reached at `now`?
    #[inline]
    pub(crate) fn reached(self, now: Tick) -> bool {
        (now.0.wrapping_sub(self.0) as i32) >= 0
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    #[inline]
    pub(crate) fn since(self, earlier: Tick) -> std::time::Duration {
        let d = self.0.wrapping_sub(earlier.0) as i32;
        std::time::Duration::from_millis(d.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ticks_compare_across_wrap() {
        let a = Tick(u32::MAX - 5);
        let b = Tick(4);
        assert!(a.reached(b));
        assert!(!b.reached(a));
        assert_eq!(b.since(a), Duration::from_millis(10));
        assert_eq!(a.since(b), Duration::ZERO);
    }
}
