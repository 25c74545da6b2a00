//! Counting the requests no filter saw (pure).
//!
//! A revision served without the filter (the warm path) is measured by
//! Envoy alone: each flush of its stats sink brings, per revision cluster,
//! the answers since the previous flush by status code and the cumulative
//! response-time histogram in Knative's buckets. They go into the same
//! cumulative counters as the filters' reports, exactly once: a flush
//! counts only when the gateway served the revision without the filter
//! both at that flush and at the one before, so its window holds no
//! request a filter counted. The windows around a switch (at most one per
//! gateway each time a revision enters or leaves the warm path, which
//! waits until the revision has been warm for a while, see
//! `crate::warm::WARM_SETTLE`) are left to the filter, which counted
//! what it saw of them.
//!
//! Envoy keeps one histogram per cluster, not per status code. A flush
//! whose answers all share one code (the usual case) is exact; when codes
//! mix, the counts per code stay exact and the buckets are shared among
//! the codes in order, which places each code's answers only approximately.

use std::collections::BTreeMap;

use revgate_model::plan::ObjectKey;
use revgate_proto::{DURATION_BUCKETS, DurationHistogram, RevisionMetrics, StatusDurations};
use revgate_xds::stats::{ClusterStats, CumulativeDurations};

/// What was last seen of one revision on one gateway.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// The filter was off for it at that flush.
    filter_off: bool,
    /// Its cumulative histogram then (Envoy's counters are sent as deltas,
    /// its histograms are not).
    durations: Option<CumulativeDurations>,
}

/// Per gateway and revision, what its previous flush said.
#[derive(Debug, Default)]
pub struct Ledger {
    seen: BTreeMap<(String, ObjectKey), Seen>,
}

impl Ledger {
    /// Takes one flush of `node` for `revision`, served without the filter
    /// at this flush when `filter_off`; returns what to add to the
    /// cumulative counters, if anything.
    pub fn flush(
        &mut self,
        node: &str,
        revision: &ObjectKey,
        stats: &ClusterStats,
        filter_off: bool,
    ) -> Option<RevisionMetrics> {
        let now = Seen { filter_off, durations: stats.durations.clone() };
        let before = self.seen.insert((node.to_owned(), revision.clone()), now)?;
        if !(filter_off && before.filter_off) {
            return None;
        }
        let answered: u64 = stats.codes.values().sum();
        if answered == 0 {
            return None;
        }
        let delta = match (&stats.durations, &before.durations) {
            (Some(now), Some(then)) => difference(now, then),
            _ => None,
        };
        Some(metrics(revision, &stats.codes, delta))
    }

    /// Forgets gateways and revisions `keep` rejects.
    pub fn retain(&mut self, keep: impl Fn(&str, &ObjectKey) -> bool) {
        self.seen.retain(|(node, revision), _| keep(node, revision));
    }
}

/// The answers between two cumulative histograms; `None` when `now` is
/// not later than `then` (Envoy restarted).
fn difference(now: &CumulativeDurations, then: &CumulativeDurations) -> Option<CumulativeDurations> {
    if now.count < then.count || now.buckets.iter().zip(&then.buckets).any(|(n, t)| n < t) {
        return None;
    }
    let mut buckets = [0u64; DURATION_BUCKETS];
    for (bucket, (n, t)) in buckets.iter_mut().zip(now.buckets.iter().zip(&then.buckets)) {
        *bucket = n - t;
    }
    Some(CumulativeDurations {
        buckets,
        count: now.count - then.count,
        sum_seconds: (now.sum_seconds - then.sum_seconds).max(0.0),
    })
}

/// One flush's answers as a report entry: per status code, a histogram of
/// that many answers taken from the flush's buckets in order (fastest
/// first); answers the histogram lacks (it missed them, or there is none)
/// go in the bucket most answers fell in, or the first.
fn metrics(revision: &ObjectKey, codes: &BTreeMap<u16, u64>, delta: Option<CumulativeDurations>) -> RevisionMetrics {
    let mut pool = delta.as_ref().map_or([0u64; DURATION_BUCKETS], |d| d.buckets);
    let busiest = pool.iter().enumerate().max_by_key(|(_, n)| **n).map_or(0, |(i, _)| i);
    let total: u64 = codes.values().sum();
    let sum_per_answer = delta.as_ref().filter(|d| d.count > 0).map_or(0.0, |d| d.sum_seconds / d.count as f64);
    let mut durations = Vec::with_capacity(codes.len());
    let mut all = [0u64; DURATION_BUCKETS];
    for (code, count) in codes.iter().filter(|(_, n)| **n > 0) {
        let mut buckets = [0u64; DURATION_BUCKETS];
        let mut left = *count;
        for (taken, available) in buckets.iter_mut().zip(pool.iter_mut()) {
            let take = left.min(*available);
            *taken += take;
            *available -= take;
            left -= take;
        }
        if let Some(bucket) = buckets.get_mut(busiest) {
            *bucket += left;
        }
        for (a, b) in all.iter_mut().zip(&buckets) {
            *a += b;
        }
        durations.push(StatusDurations {
            status_code: u32::from(*code),
            duration: Some(DurationHistogram {
                bucket_counts: buckets.to_vec(),
                sum_seconds: sum_per_answer * *count as f64,
                count: *count,
            }),
        });
    }
    RevisionMetrics {
        namespace: revision.namespace.clone(),
        revision: revision.name.clone(),
        requests: total,
        responses_5xx: codes.iter().filter(|(code, _)| (500..600).contains(*code)).map(|(_, n)| n).sum(),
        durations,
        upstream_duration: Some(DurationHistogram {
            bucket_counts: all.to_vec(),
            sum_seconds: sum_per_answer * total as f64,
            count: total,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::new("default", "hello-00001")
    }

    fn stats(codes: &[(u16, u64)], cumulative: [u64; DURATION_BUCKETS]) -> ClusterStats {
        let count = cumulative.iter().sum();
        ClusterStats {
            codes: codes.iter().copied().collect(),
            durations: Some(CumulativeDurations { buckets: cumulative, count, sum_seconds: count as f64 * 0.01 }),
            ..Default::default()
        }
    }

    fn buckets(pairs: &[(usize, u64)]) -> [u64; DURATION_BUCKETS] {
        let mut b = [0u64; DURATION_BUCKETS];
        for (i, n) in pairs {
            b[*i] = *n;
        }
        b
    }

    fn counts(m: &RevisionMetrics) -> Vec<(u32, Vec<u64>)> {
        m.durations
            .iter()
            .map(|d| (d.status_code, d.duration.as_ref().map(|h| h.bucket_counts.clone()).unwrap_or_default()))
            .collect()
    }

    #[test]
    fn only_flushes_with_the_filter_off_at_both_ends_count() {
        let mut ledger = Ledger::default();
        assert!(ledger.flush("gw", &key(), &stats(&[(200, 5)], buckets(&[(0, 5)])), false).is_none());
        assert!(ledger.flush("gw", &key(), &stats(&[(200, 5)], buckets(&[(0, 10)])), true).is_none(), "switching");
        let counted = ledger.flush("gw", &key(), &stats(&[(200, 7)], buckets(&[(0, 15), (3, 2)])), true);
        let counted = counted.expect("the filter was off for the whole window");
        assert_eq!(counted.requests, 7);
        assert_eq!(counts(&counted), vec![(200, buckets(&[(0, 5), (3, 2)]).to_vec())]);
        assert!(ledger.flush("gw", &key(), &stats(&[(200, 3)], buckets(&[(0, 18), (3, 2)])), false).is_none());
        assert!(ledger.flush("other", &key(), &stats(&[(200, 3)], buckets(&[(0, 3)])), true).is_none(), "first seen");
    }

    #[test]
    fn codes_stay_exact_when_they_mix_and_the_buckets_are_shared_in_order() {
        let mut ledger = Ledger::default();
        ledger.flush("gw", &key(), &stats(&[], buckets(&[])), true);
        let counted =
            ledger.flush("gw", &key(), &stats(&[(200, 3), (500, 2)], buckets(&[(0, 3), (5, 2)])), true).expect("off");
        assert_eq!(counted.requests, 5);
        assert_eq!(counted.responses_5xx, 2);
        assert_eq!(counts(&counted), vec![(200, buckets(&[(0, 3)]).to_vec()), (500, buckets(&[(5, 2)]).to_vec())]);
    }

    #[test]
    fn a_restarted_envoy_still_counts_its_answers() {
        let mut ledger = Ledger::default();
        ledger.flush("gw", &key(), &stats(&[], buckets(&[(2, 100)])), true);
        let counted = ledger.flush("gw", &key(), &stats(&[(200, 4)], buckets(&[(2, 4)])), true).expect("off");
        assert_eq!(counted.requests, 4);
        assert_eq!(counts(&counted)[0].1.iter().sum::<u64>(), 4, "the histogram went back: counted in one bucket");
    }
}
