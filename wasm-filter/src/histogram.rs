//! A small latency histogram: log-linear buckets over microseconds, 8 linear
//! sub-buckets per power of two (the HDR-histogram idea with 3 significant
//! bits). A quantile is reported as the upper bound of its bucket, so it
//! overstates the true value by at most 12.5%, never understates it, and is
//! capped at the exact maximum. Memory is fixed: 304 counters per revision
//! per VM, covering 1 µs to ~12 days (longer values count in the last bucket).

/// Linear sub-buckets per power of two.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Values are clamped below 2^40 µs (~12.7 days).
const MAX_EXPONENT: u32 = 40;
const BUCKETS: usize = (SUB + (MAX_EXPONENT - SUB_BITS) as u64 * SUB) as usize;
const MAX_VALUE_US: u64 = (1 << MAX_EXPONENT) - 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self { counts: vec![0; BUCKETS], total: 0, max_us: 0 }
    }

    pub fn record(&mut self, latency_us: u64) {
        let value = latency_us.min(MAX_VALUE_US);
        if let Some(count) = self.counts.get_mut(bucket_of(value)) {
            *count = count.saturating_add(1);
        }
        self.total = self.total.saturating_add(1);
        self.max_us = self.max_us.max(latency_us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// The `q` quantile (0 < q ≤ 1) in µs: the upper bound of the bucket
    /// holding the `ceil(q × count)`-th smallest value. 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*count);
            if seen >= rank {
                return upper_bound(index).min(self.max_us);
            }
        }
        self.max_us
    }

    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
        self.max_us = 0;
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // ≥ SUB_BITS
    let shift = exponent - SUB_BITS;
    let sub = (value >> shift) & (SUB - 1);
    (SUB + u64::from(shift) * SUB + sub) as usize
}

/// The largest value that falls in bucket `index`.
fn upper_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let shift = (index - SUB) / SUB;
    let sub = (index - SUB) % SUB;
    ((SUB + sub + 1) << shift) - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_contiguous_and_increasing() {
        assert_eq!(BUCKETS, 304);
        let mut previous = None;
        for index in 0..BUCKETS {
            let upper = upper_bound(index);
            assert_eq!(bucket_of(upper), index);
            if let Some(p) = previous {
                assert_eq!(bucket_of(p + 1), index, "no gap before bucket {index}");
            }
            previous = Some(upper);
        }
        assert_eq!(previous, Some(MAX_VALUE_US));
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.quantile_us(0.5), 0);
        for ms in 1..=100u64 {
            h.record(ms * 1000);
        }
        let within = |got: u64, want: u64| got >= want && got as f64 <= want as f64 * 1.125;
        assert!(within(h.quantile_us(0.5), 50_000), "{}", h.quantile_us(0.5));
        assert!(within(h.quantile_us(0.9), 90_000), "{}", h.quantile_us(0.9));
        assert!(within(h.quantile_us(0.99), 99_000), "{}", h.quantile_us(0.99));
        assert_eq!(h.quantile_us(1.0), 100_000, "capped at the exact max");
        assert_eq!(h.max_us(), 100_000);
        h.clear();
        assert_eq!((h.count(), h.quantile_us(0.99)), (0, 0));
    }

    #[test]
    fn huge_values_are_clamped_but_max_is_exact() {
        let mut h = LatencyHistogram::new();
        h.record(u64::MAX);
        assert_eq!(h.max_us(), u64::MAX);
        assert_eq!(h.quantile_us(0.5), MAX_VALUE_US);
    }

    proptest! {
        #[test]
        fn quantile_overstates_by_at_most_an_eighth(values in proptest::collection::vec(0u64..10_000_000, 1..200), q in 0.01f64..1.0) {
            let mut h = LatencyHistogram::new();
            for v in &values { h.record(*v); }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            let exact = sorted[rank - 1];
            let got = h.quantile_us(q);
            prop_assert!(got >= exact);
            prop_assert!(got as f64 <= exact as f64 * 1.125 + 1.0, "got {got}, exact {exact}");
        }
    }
}
