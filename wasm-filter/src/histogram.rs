//! A duration histogram over Knative's request latency boundaries
//! ([`DURATION_BOUNDS_SECONDS`], 5 ms to 10 s, and one bucket above).
//!
//! Every reporter counts into the same fixed buckets, so the control plane
//! adds the histograms of every worker of every gateway and gets a true
//! distribution: a p99 over all of them, not the worst of per-reporter
//! percentiles. Memory is fixed: 15 counters, a sum and a count.

use revgate_proto::{DURATION_BOUNDS_SECONDS, DURATION_BUCKETS, DurationHistogram};

const NS_PER_SECOND: f64 = 1e9;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DurationRecorder {
    counts: [u64; DURATION_BUCKETS],
    sum_seconds: f64,
    count: u64,
}

impl DurationRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one duration of `ns` nanoseconds.
    pub fn record(&mut self, ns: u64) {
        let seconds = ns as f64 / NS_PER_SECOND;
        let index = bucket_of(seconds);
        if let Some(count) = self.counts.get_mut(index) {
            *count = count.saturating_add(1);
        }
        self.sum_seconds += seconds;
        self.count = self.count.saturating_add(1);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The histogram as the report carries it (no buckets when empty).
    pub fn to_proto(&self) -> DurationHistogram {
        DurationHistogram {
            bucket_counts: if self.count == 0 { Vec::new() } else { self.counts.to_vec() },
            sum_seconds: self.sum_seconds,
            count: self.count,
        }
    }
}

/// The index of the bucket holding `seconds`: the first bound at or above
/// it, or the bucket above the last bound.
fn bucket_of(seconds: f64) -> usize {
    DURATION_BOUNDS_SECONDS.iter().position(|bound| seconds <= *bound).unwrap_or(DURATION_BOUNDS_SECONDS.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn values_fall_in_knatives_buckets_bounds_inclusive() {
        let mut h = DurationRecorder::new();
        assert_eq!(h.to_proto(), DurationHistogram::default(), "empty: no buckets");
        h.record(0);
        h.record(5 * MS); // exactly the first bound: first bucket
        h.record(6 * MS);
        h.record(700 * MS);
        h.record(11_000 * MS); // above 10 s: the last bucket
        let p = h.to_proto();
        assert_eq!(p.bucket_counts.len(), 15);
        assert_eq!(p.bucket_counts, vec![2, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(p.count, 5);
        assert!((p.sum_seconds - 11.711).abs() < 1e-9, "{}", p.sum_seconds);
    }

    #[test]
    fn huge_values_count_above_the_last_bound() {
        let mut h = DurationRecorder::new();
        h.record(u64::MAX);
        assert_eq!(h.to_proto().bucket_counts.last(), Some(&1));
    }

    proptest! {
        #[test]
        fn buckets_always_add_up_to_the_count(values in proptest::collection::vec(any::<u64>(), 0..100)) {
            let mut h = DurationRecorder::new();
            for v in &values { h.record(*v); }
            let p = h.to_proto();
            prop_assert_eq!(p.count, values.len() as u64);
            prop_assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        }
    }
}
