//! Heartbeat verdicts: what the shard's periodic sweep (`shard::sweep`) does with one
//! connection, as a pure function of its phase and timestamps: keep it, ping it, or drop it for
//! heartbeat silence, an unfinished handshake or an overdue close.

use std::time::Duration;

use crate::conn::Phase;
use crate::ids::Tick;

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

/// Has a connection whose token runs out at `expires` (Unix seconds, leeway included; 0:
/// never) expired at `now_unix`?
pub(crate) fn expired(expires: u32, now_unix: u64) -> bool {
    expires != 0 && now_unix >= u64::from(expires)
}

/// Seconds since the Unix epoch now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn expiry() {
        assert!(!expired(0, u64::MAX), "0 never expires");
        assert!(!expired(100, 99));
        assert!(expired(100, 100));
        assert!(expired(100, 101));
    }

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
