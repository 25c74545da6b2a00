//! Counting the requests no filter saw (pure, time as a parameter).
//!
//! A revision served without the filter (the warm path) is measured by
//! Envoy alone: each flush of its stats sink brings, per revision cluster,
//! the answers since the previous flush by status code and the cumulative
//! response-time histogram in Knative's buckets. Envoy counts every answer
//! of the cluster, the filter only those that passed it, and a route
//! switches between the two at any moment, so what enters the cumulative
//! counters from Envoy is, per gateway, revision and status code, what
//! Envoy counted beyond what the filters counted:
//!
//! `added = max(added, envoy_settled − filters)`
//!
//! where `envoy_settled` are Envoy's counts received at least [`SETTLE`]
//! ago. A request both counted is reported by its filter within a report
//! interval of its end (one second), well before Envoy's count of it
//! settles, so it is never added twice; a request only Envoy saw is added
//! once its count settled. Counting starts at a gateway's first flush of a
//! revision: Envoy's later flushes, and the filters' reports for the part
//! of their windows after it (both on the gateway's clock). Answers the filter made itself (its 503s) never reach Envoy's
//! cluster and are left out of the filters' side.
//!
//! Envoy keeps one histogram per cluster, not per status code: the buckets
//! of the added answers are what Envoy's histogram holds beyond the filters'
//! and the answers added before, shared among the codes in order. When all
//! added answers of a flush share a code (the usual case), only the filters'
//! and Envoy's small difference in what they time (the filter from the
//! request's arrival, Envoy from the upstream request) separates them.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use revgate_model::plan::ObjectKey;
use revgate_proto::{DURATION_BUCKETS, DurationHistogram, RevisionMetrics, StatusDurations};
use revgate_xds::stats::{ClusterStats, CumulativeDurations};

/// How long Envoy's counts wait before they are compared with the filters'.
pub const SETTLE: Duration = Duration::from_secs(3);

/// The status code of the filter's own answers (counted under refusals).
const LOCAL_REPLY_CODE: u16 = 503;

type Buckets = [u64; DURATION_BUCKETS];

#[derive(Debug, Clone, Default)]
struct Tally {
    codes: BTreeMap<u16, u64>,
    buckets: Buckets,
    sum_seconds: f64,
}

/// One gateway's account of one revision.
#[derive(Debug, Default)]
struct Account {
    /// When counting started, by the gateway's clock (Unix ms): the first
    /// flush. Envoy's later flushes hold answers after it; of the filters'
    /// reports, only the part of their window after it counts.
    start_ms: u64,
    /// Flushes not yet settled: when received, answers by code, Envoy's
    /// cumulative histogram then.
    pending: VecDeque<(u64, BTreeMap<u16, u64>, Option<CumulativeDurations>)>,
    /// Envoy's cumulative histogram at the last settled flush (at first,
    /// the first flush's: where counting starts).
    last: Option<CumulativeDurations>,
    envoy: Tally,
    filters: Tally,
    added: Tally,
}

/// Per gateway and revision, what Envoy and the filters counted.
#[derive(Debug, Default)]
pub struct Ledger {
    accounts: BTreeMap<(String, ObjectKey), Account>,
}

impl Ledger {
    /// Takes what `node`'s filters reported of a revision over the window
    /// `[window_start_ms, window_start_ms + window_ms)` (the gateway's clock).
    pub fn filter_report(&mut self, node: &str, metrics: &RevisionMetrics, window_start_ms: u64, window_ms: u64) {
        let key = (node.to_owned(), ObjectKey::new(metrics.namespace.as_str(), metrics.revision.as_str()));
        let Some(account) = self.accounts.get_mut(&key) else { return };
        let window_end_ms = window_start_ms.saturating_add(window_ms);
        if window_end_ms <= account.start_ms {
            return;
        }
        // A window that began before counting did: its answers are taken as
        // spread evenly over it.
        let share = if window_start_ms >= account.start_ms || window_ms == 0 {
            1.0
        } else {
            (window_end_ms - account.start_ms) as f64 / window_ms as f64
        };
        let part = |n: u64| if share >= 1.0 { n } else { (n as f64 * share).round() as u64 };
        let mut local: u64 = metrics.refusals.iter().map(|r| r.count).sum();
        for entry in &metrics.durations {
            let Some(histogram) = &entry.duration else { continue };
            let code = u16::try_from(entry.status_code).unwrap_or(0);
            let mut count = histogram.count;
            if code == LOCAL_REPLY_CODE {
                let mine = local.min(count);
                count -= mine;
                local -= mine;
            }
            *account.filters.codes.entry(code).or_insert(0) += part(count);
        }
        if let Some(upstream) = &metrics.upstream_duration {
            for (total, n) in account.filters.buckets.iter_mut().zip(&upstream.bucket_counts) {
                *total += part(*n);
            }
            account.filters.sum_seconds += upstream.sum_seconds * share.min(1.0);
        }
    }

    /// Takes one flush of `node` for `revision`, taken at `flushed_ms` (the
    /// gateway's clock) and received at `now_ms`; returns the answers to add
    /// to the cumulative counters, if any.
    pub fn flush(
        &mut self,
        node: &str,
        revision: &ObjectKey,
        stats: &ClusterStats,
        flushed_ms: u64,
        now_ms: u64,
    ) -> Option<RevisionMetrics> {
        let account = match self.accounts.entry((node.to_owned(), revision.clone())) {
            std::collections::btree_map::Entry::Vacant(vacant) => {
                // Counting starts here: this flush's answers may have passed
                // filters whose reports came before.
                vacant.insert(Account { start_ms: flushed_ms, last: stats.durations.clone(), ..Account::default() });
                return None;
            }
            std::collections::btree_map::Entry::Occupied(occupied) => occupied.into_mut(),
        };
        account.pending.push_back((now_ms, stats.codes.clone(), stats.durations.clone()));
        let settled_before = now_ms.saturating_sub(SETTLE.as_millis() as u64);
        while account.pending.front().is_some_and(|(at, _, _)| *at <= settled_before) {
            let Some((_, codes, durations)) = account.pending.pop_front() else { break };
            for (code, n) in codes {
                *account.envoy.codes.entry(code).or_insert(0) += n;
            }
            if let Some(now) = durations {
                // After a restart, Envoy's histogram holds only answers since.
                let since =
                    account.last.as_ref().and_then(|last| difference(&now, last)).unwrap_or_else(|| now.clone());
                for (total, n) in account.envoy.buckets.iter_mut().zip(&since.buckets) {
                    *total += n;
                }
                account.envoy.sum_seconds += since.sum_seconds;
                account.last = Some(now);
            }
        }
        let mut codes = BTreeMap::new();
        for (code, envoy) in &account.envoy.codes {
            let counted = account.filters.codes.get(code).copied().unwrap_or(0)
                + account.added.codes.get(code).copied().unwrap_or(0);
            if *envoy > counted {
                codes.insert(*code, envoy - counted);
            }
        }
        if codes.is_empty() {
            return None;
        }
        let mut pool = [0u64; DURATION_BUCKETS];
        for (i, slot) in pool.iter_mut().enumerate() {
            *slot = account.envoy.buckets[i].saturating_sub(account.filters.buckets[i] + account.added.buckets[i]);
        }
        let pool_count: u64 = pool.iter().sum();
        let pool_sum = (account.envoy.sum_seconds - account.filters.sum_seconds - account.added.sum_seconds).max(0.0);
        let metrics = metrics(revision, &codes, pool, if pool_count > 0 { pool_sum / pool_count as f64 } else { 0.0 });
        for (code, n) in &codes {
            *account.added.codes.entry(*code).or_insert(0) += n;
        }
        if let Some(all) = &metrics.upstream_duration {
            for (total, n) in account.added.buckets.iter_mut().zip(&all.bucket_counts) {
                *total += n;
            }
            account.added.sum_seconds += all.sum_seconds;
        }
        Some(metrics)
    }

    /// Forgets gateways and revisions `keep` rejects.
    pub fn retain(&mut self, keep: impl Fn(&str, &ObjectKey) -> bool) {
        self.accounts.retain(|(node, revision), _| keep(node, revision));
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

/// Answers to add as a report entry: per status code, a histogram of that
/// many answers taken from `pool` (Envoy's unattributed buckets) in order,
/// fastest first; answers the pool lacks go in its busiest bucket (the
/// first when it is empty).
fn metrics(revision: &ObjectKey, codes: &BTreeMap<u16, u64>, mut pool: Buckets, seconds_each: f64) -> RevisionMetrics {
    let busiest = pool.iter().enumerate().max_by_key(|(_, n)| **n).map_or(0, |(i, _)| i);
    let total: u64 = codes.values().sum();
    let sum_per_answer = seconds_each;
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
    use revgate_proto::ReasonCount;

    use super::*;

    const SETTLE_MS: u64 = SETTLE.as_millis() as u64;

    fn key() -> ObjectKey {
        ObjectKey::new("default", "hello-00001")
    }

    fn buckets(pairs: &[(usize, u64)]) -> Buckets {
        let mut b = [0u64; DURATION_BUCKETS];
        for (i, n) in pairs {
            b[*i] = *n;
        }
        b
    }

    /// A flush: answers by code since the last one, Envoy's cumulative buckets.
    fn flush(codes: &[(u16, u64)], cumulative: &[(usize, u64)]) -> ClusterStats {
        let buckets = buckets(cumulative);
        let count = buckets.iter().sum();
        ClusterStats {
            codes: codes.iter().copied().collect(),
            durations: Some(CumulativeDurations { buckets, count, sum_seconds: count as f64 * 0.01 }),
            ..Default::default()
        }
    }

    /// A filter report of `n` answers with `code`, in bucket `bucket`.
    fn filtered(code: u32, n: u64, bucket: usize) -> RevisionMetrics {
        let histogram =
            DurationHistogram { bucket_counts: buckets(&[(bucket, n)]).to_vec(), sum_seconds: 0.0, count: n };
        RevisionMetrics {
            namespace: "default".into(),
            revision: "hello-00001".into(),
            durations: vec![StatusDurations { status_code: code, duration: Some(histogram.clone()) }],
            upstream_duration: Some(histogram),
            ..Default::default()
        }
    }

    fn by_code(m: &RevisionMetrics) -> Vec<(u32, Vec<u64>)> {
        m.durations
            .iter()
            .map(|d| (d.status_code, d.duration.as_ref().map(|h| h.bucket_counts.clone()).unwrap_or_default()))
            .collect()
    }

    #[test]
    fn answers_the_filters_counted_are_never_added_and_the_others_once_settled() {
        let mut ledger = Ledger::default();
        assert!(ledger.flush("gw", &key(), &flush(&[(200, 9)], &[(0, 9)]), 0, 0).is_none(), "counting starts");
        // The filter is on: both count 5 answers.
        ledger.filter_report("gw", &filtered(200, 5, 0), 0, 1_000);
        assert!(ledger.flush("gw", &key(), &flush(&[(200, 5)], &[(0, 14)]), 1_000, 1_000).is_none());
        // Switched off: Envoy alone counts 7 more, in bucket 3.
        assert!(
            ledger.flush("gw", &key(), &flush(&[(200, 7)], &[(0, 14), (3, 7)]), 2_000, 2_000).is_none(),
            "not settled"
        );
        assert!(
            ledger.flush("gw", &key(), &flush(&[], &[(0, 14), (3, 7)]), 1_000 + SETTLE_MS, 1_000 + SETTLE_MS).is_none()
        );
        let added = ledger
            .flush("gw", &key(), &flush(&[], &[(0, 14), (3, 7)]), 2_000 + SETTLE_MS, 2_000 + SETTLE_MS)
            .expect("settled");
        assert_eq!(added.requests, 7);
        assert_eq!(by_code(&added), vec![(200, buckets(&[(3, 7)]).to_vec())]);
        for later in 3..6 {
            let at = later * 1_000 + SETTLE_MS;
            assert!(ledger.flush("gw", &key(), &flush(&[], &[(0, 14), (3, 7)]), at, at).is_none(), "added once");
        }
    }

    #[test]
    fn a_filter_report_arriving_after_envoys_flush_still_cancels_it() {
        let mut ledger = Ledger::default();
        ledger.flush("gw", &key(), &flush(&[], &[]), 0, 0);
        ledger.flush("gw", &key(), &flush(&[(200, 4)], &[(1, 4)]), 1_000, 1_000);
        ledger.filter_report("gw", &filtered(200, 4, 1), 0, 1_000);
        assert!(ledger.flush("gw", &key(), &flush(&[], &[(1, 4)]), 1_000 + SETTLE_MS, 1_000 + SETTLE_MS).is_none());
    }

    #[test]
    fn codes_stay_exact_when_they_mix_and_the_filters_own_replies_are_not_envoys() {
        let mut ledger = Ledger::default();
        ledger.flush("gw", &key(), &flush(&[], &[]), 0, 0);
        // The filter answered one 503 itself (a refusal): Envoy never saw it.
        let mut refused = filtered(503, 1, 14);
        refused.refusals = vec![ReasonCount { reason: "activation-timeout".into(), count: 1 }];
        ledger.filter_report("gw", &refused, 0, 1_000);
        ledger.flush("gw", &key(), &flush(&[(200, 3), (503, 2)], &[(0, 3), (5, 2)]), 1_000, 1_000);
        let added = ledger
            .flush("gw", &key(), &flush(&[], &[(0, 3), (5, 2)]), 1_000 + SETTLE_MS, 1_000 + SETTLE_MS)
            .expect("settled");
        assert_eq!((added.requests, added.responses_5xx), (5, 2));
        assert_eq!(by_code(&added), vec![(200, buckets(&[(0, 3)]).to_vec()), (503, buckets(&[(5, 2)]).to_vec())]);
    }

    #[test]
    fn of_a_report_from_before_counting_started_only_the_later_part_counts() {
        let mut ledger = Ledger::default();
        ledger.flush("gw", &key(), &flush(&[(200, 10)], &[(0, 10)]), 10_000, 10_000);
        // Half of this window lies before the first flush: 5 of its 10 count.
        ledger.filter_report("gw", &filtered(200, 10, 0), 9_500, 1_000);
        ledger.filter_report("gw", &filtered(200, 99, 0), 8_000, 1_000);
        ledger.flush("gw", &key(), &flush(&[(200, 12)], &[(0, 22)]), 11_000, 11_000);
        let added = ledger.flush("gw", &key(), &flush(&[], &[(0, 22)]), 14_000, 14_000).expect("settled");
        assert_eq!(added.requests, 7, "12 Envoy counted after the start, 5 of them passed a filter");
    }

    #[test]
    fn a_restarted_envoy_keeps_counting() {
        let mut ledger = Ledger::default();
        ledger.flush("gw", &key(), &flush(&[], &[(2, 100)]), 0, 0);
        ledger.flush("gw", &key(), &flush(&[(200, 4)], &[(2, 4)]), 1_000, 1_000);
        let added =
            ledger.flush("gw", &key(), &flush(&[], &[(2, 4)]), 1_000 + SETTLE_MS, 1_000 + SETTLE_MS).expect("settled");
        assert_eq!(added.requests, 4);
        assert_eq!(by_code(&added), vec![(200, buckets(&[(2, 4)]).to_vec())]);
    }
}
