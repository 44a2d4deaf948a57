//! A fixed-size log-bucket histogram (HDR-like): values below 128 are exact, above that each
//! power of two is split into 64 linear sub-buckets, so any recorded value is reported within
//! 1/64 (~1.6 %) of its true value. Memory is fixed (~30 KiB) whatever the sample count.

const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS; // 64
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

pub struct Hist {
    counts: Box<[u64]>,
    pub n: u64,
    pub max: u64,
    pub min: u64,
    pub sum: u128,
}

impl Hist {
    pub fn new() -> Self {
        Hist {
            counts: vec![0u64; BUCKETS].into_boxed_slice(),
            n: 0,
            max: 0,
            min: u64::MAX,
            sum: 0,
        }
    }

    #[inline]
    fn index(v: u64) -> usize {
        if v < (SUB as u64) * 2 {
            return v as usize;
        }
        let k = 63 - v.leading_zeros(); // position of the top bit, >= 7
        let sub = (v >> (k - SUB_BITS)) as usize & (SUB - 1);
        ((k - SUB_BITS) as usize) * SUB + SUB + sub
    }

    /// Lowest value that maps to bucket `i`.
    fn lower(i: usize) -> u64 {
        if i < SUB * 2 {
            return i as u64;
        }
        let k = (i - SUB) / SUB + SUB_BITS as usize;
        let sub = ((i - SUB) % SUB) as u64;
        (1u64 << k) | (sub << (k - SUB_BITS as usize))
    }

    /// Upper (exclusive) bound of bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < SUB * 2 {
            return i as u64 + 1;
        }
        let k = (i - SUB) / SUB + SUB_BITS as usize;
        Self::lower(i).saturating_add(1u64 << (k - SUB_BITS as usize))
    }

    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        if v > self.max {
            self.max = v;
        }
        if v < self.min {
            self.min = v;
        }
        self.sum += v as u128;
    }

    /// Value at quantile q (0..=1): the midpoint of the bucket holding it, clamped to [min, max].
    pub fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let lo = Self::lower(i);
                let hi = Self::upper(i);
                let mid = lo + (hi - lo - 1) / 2;
                return mid.clamp(self.min, self.max);
            }
        }
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            5,
            127,
            128,
            129,
            1000,
            65_535,
            1 << 20,
            123_456_789,
            u64::MAX / 3,
        ] {
            let i = Hist::index(v);
            assert!(i >= last);
            last = i;
            assert!(Hist::lower(i) <= v && v < Hist::upper(i), "v={v} i={i}");
            assert!((Hist::upper(i) - Hist::lower(i)) as f64 <= (v as f64 / 64.0).max(1.0));
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Hist::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5_000_000.0).abs() / 5_000_000.0 < 0.02, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 9_900_000.0).abs() / 9_900_000.0 < 0.02, "{p99}");
        assert_eq!(h.quantile(1.0), 10_000_000);
    }
}
