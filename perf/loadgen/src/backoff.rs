//! Reconnect decisions of the storm scenario, as pure functions: full-jitter exponential
//! backoff (AWS Architecture Blog, "Exponential Backoff And Jitter") that honours an HTTP
//! `Retry-After`, and the parsing of that header.

use std::time::Duration;

/// How long a client waits before its next attempt. Without a server hint, full-jitter
/// backoff: retry number `attempt` (0 = the first retry after a loss) waits a uniform draw in
/// [0, min(cap, base * 2^attempt)). With a `Retry-After` of N seconds (a 429/503), the server
/// has already spread its refused clients over whole seconds: wait N plus a uniform draw in
/// [0, 1 s), so those told the same N do not come back in the same instant either.
/// `unit` is a uniform draw in [0, 1).
pub fn delay(
    attempt: u32,
    base: Duration,
    cap: Duration,
    retry_after: Option<u64>,
    unit: f64,
) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    if let Some(s) = retry_after {
        return Duration::from_secs(s) + Duration::from_secs(1).mul_f64(unit);
    }
    let ceil = base
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    ceil.mul_f64(unit)
}

/// The value of a `Retry-After` header in an HTTP response head, if it is delay-seconds
/// (RFC 9110 §10.2.3; an HTTP-date is not used by the servers measured here and reads as None).
pub fn retry_after(head: &str) -> Option<u64> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if !k.trim().eq_ignore_ascii_case("retry-after") {
            return None;
        }
        v.trim().parse().ok()
    })
}

/// xorshift64*: a small, seedable generator for the jitter draws (not cryptographic).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(20);

    #[test]
    fn doubles_up_to_the_cap() {
        let top = |a| delay(a, BASE, CAP, None, 0.999_999);
        assert!(top(0) < BASE && top(0) > Duration::from_millis(499));
        assert!(top(1) < BASE * 2 && top(1) > Duration::from_millis(999));
        assert!(top(5) < Duration::from_secs(16) && top(5) > Duration::from_millis(15_990));
        assert!(top(6) <= CAP && top(6) > Duration::from_millis(19_990));
        assert!(top(40) <= CAP && top(u32::MAX) <= CAP);
        assert_eq!(delay(3, BASE, CAP, None, 0.0), Duration::ZERO);
    }

    #[test]
    fn retry_after_replaces_the_backoff() {
        let d = delay(0, BASE, CAP, Some(2), 0.5);
        assert_eq!(d, Duration::from_millis(2500));
        // Whatever the attempt number: the server's hint decides, never earlier than it says.
        assert_eq!(delay(9, BASE, CAP, Some(1), 0.0), Duration::from_secs(1));
        assert!(delay(9, BASE, CAP, Some(1), 0.999_999) < Duration::from_secs(2));
    }

    #[test]
    fn parses_retry_after_seconds_only() {
        let h = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nretry-after:  3 \r\n";
        assert_eq!(retry_after(h), Some(3));
        assert_eq!(
            retry_after("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0"),
            Some(0)
        );
        assert_eq!(
            retry_after("HTTP/1.1 503 x\r\nRetry-After: Fri, 31 Dec 1999 23:59:59 GMT"),
            None
        );
        assert_eq!(retry_after("HTTP/1.1 503 x\r\nRetry-After-Not: 4"), None);
        // The status line is never a header.
        assert_eq!(retry_after("Retry-After: 5"), None);
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut r = Rng::new(7);
        let n = 100_000;
        let mean = (0..n).map(|_| r.unit()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!((0..1000).all(|_| (0.0..1.0).contains(&r.unit())));
    }
}
