//! Cumulative per-revision counters built from the filters' reports: the
//! requests by status code with their durations, the time requests were
//! held, and the filter's own refusals by reason. What `/metrics` exposes as
//! Prometheus counters and histograms, and what a rollout compares between
//! two moments ([`RevisionCounters::saturating_sub`], then
//! [`DurationHistogram::quantile`]).
//!
//! Pure. Every report covers its own window, so its counts are added once;
//! counters only grow (saturating), as Prometheus counters must. Bounded: a
//! revision keeps at most [`MAX_STATUS_CODES`] status codes (more count
//! under 0) and [`MAX_REASONS`] reasons (more count under
//! [`OTHER_REASON`]), and revisions that leave the plan are forgotten.

use std::collections::BTreeMap;
use std::sync::Arc;

use revgate_model::plan::ObjectKey;
use revgate_proto::{DURATION_BOUNDS_SECONDS, DURATION_BUCKETS, RevisionMetrics};
use serde::{Deserialize, Serialize};

/// The most status codes one revision's counters keep.
pub const MAX_STATUS_CODES: usize = 64;
/// The most refusal reasons one revision's counters keep.
pub const MAX_REASONS: usize = 16;
/// Where reasons beyond [`MAX_REASONS`] are counted.
pub const OTHER_REASON: &str = "other";

/// Durations over Knative's latency boundaries
/// ([`DURATION_BOUNDS_SECONDS`]), added up from any number of reporters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DurationHistogram {
    /// Observations per bucket (not cumulative); the last is above the last
    /// bound. Empty while nothing was observed.
    buckets: Vec<u64>,
    sum_seconds: f64,
    count: u64,
}

impl DurationHistogram {
    /// A histogram from a report's, once checked (`metrics::check_report`).
    pub fn from_proto(histogram: &revgate_proto::DurationHistogram) -> Self {
        let mut buckets = histogram.bucket_counts.clone();
        if !buckets.is_empty() {
            buckets.resize(DURATION_BUCKETS, 0);
        }
        Self {
            count: buckets.iter().fold(0u64, |a, b| a.saturating_add(*b)),
            buckets,
            sum_seconds: histogram.sum_seconds,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_seconds
    }

    /// Counts one duration of `seconds`.
    pub fn observe(&mut self, seconds: f64) {
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        if self.buckets.is_empty() {
            self.buckets = vec![0; DURATION_BUCKETS];
        }
        let index =
            DURATION_BOUNDS_SECONDS.iter().position(|bound| seconds <= *bound).unwrap_or(DURATION_BOUNDS_SECONDS.len());
        if let Some(count) = self.buckets.get_mut(index) {
            *count = count.saturating_add(1);
        }
        self.sum_seconds += seconds;
        self.count = self.count.saturating_add(1);
    }

    /// Adds `other`'s observations.
    pub fn merge(&mut self, other: &Self) {
        if other.count == 0 {
            return;
        }
        if self.buckets.is_empty() {
            self.buckets = vec![0; DURATION_BUCKETS];
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine = mine.saturating_add(*theirs);
        }
        self.sum_seconds += other.sum_seconds;
        self.count = self.count.saturating_add(other.count);
    }

    /// The observations made since `earlier` (a snapshot of the same
    /// counters taken before).
    pub fn saturating_sub(&self, earlier: &Self) -> Self {
        if earlier.count == 0 {
            return self.clone();
        }
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .zip(earlier.buckets.iter().chain(std::iter::repeat(&0)))
            .map(|(now, before)| now.saturating_sub(*before))
            .collect();
        let count = buckets.iter().fold(0u64, |a, b| a.saturating_add(*b));
        let sum_seconds = if count == 0 { 0.0 } else { (self.sum_seconds - earlier.sum_seconds).max(0.0) };
        Self { buckets: if count == 0 { Vec::new() } else { buckets }, sum_seconds, count }
    }

    /// The `q` quantile (0 ≤ q ≤ 1) in seconds, as Prometheus's
    /// `histogram_quantile` computes it: linear within the bucket that holds
    /// the rank, the first bucket starting at 0, and the last bound for a
    /// rank above it. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        for (index, count) in self.buckets.iter().enumerate() {
            let seen = below.saturating_add(*count);
            if (seen as f64) >= rank && *count > 0 {
                let Some(upper) = DURATION_BOUNDS_SECONDS.get(index) else {
                    return DURATION_BOUNDS_SECONDS.last().copied();
                };
                let lower = index.checked_sub(1).and_then(|i| DURATION_BOUNDS_SECONDS.get(i)).copied().unwrap_or(0.0);
                let within = (rank - below as f64) / *count as f64;
                return Some(lower + (upper - lower) * within);
            }
            below = seen;
        }
        DURATION_BOUNDS_SECONDS.last().copied()
    }

    /// `(upper bound, observations in the bucket)` per bucket, not
    /// cumulative, the last at `+Inf`: what an exposition encoder sums into
    /// the `_bucket` series.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        DURATION_BOUNDS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            .map(|(index, bound)| (bound, self.buckets.get(index).copied().unwrap_or(0)))
            .collect()
    }
}

/// Everything counted for one revision since revgate started (or since the
/// revision entered the plan).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RevisionCounters {
    /// Finished requests per response status code (0: no response).
    pub requests_by_code: BTreeMap<u16, u64>,
    /// Per status code, their duration as the client saw it, held time
    /// included (Knative's `kn.serving.invocation.duration`).
    pub invocations: BTreeMap<u16, DurationHistogram>,
    /// Every finished request's duration without the time it was held: what
    /// the revision itself took.
    pub duration: DurationHistogram,
    /// How long held requests were held.
    pub held: DurationHistogram,
    /// The filter's own answers (503) per `x-revgate-reason`.
    pub reasons: BTreeMap<String, u64>,
    /// Activation requests: requests held for the revision while it had no
    /// ready endpoints, one per filter VM and cold start.
    pub activations: u64,
    /// Cold starts: from the first activation request while no gateway
    /// could reach the revision to the first gateway ACKing its endpoints.
    pub activation_duration: DurationHistogram,
}

impl RevisionCounters {
    /// All finished requests.
    pub fn requests(&self) -> u64 {
        self.requests_by_code.values().fold(0, |a, b| a.saturating_add(*b))
    }

    /// Finished requests answered with a 5xx status.
    pub fn errors_5xx(&self) -> u64 {
        self.requests_by_code.range(500..600).fold(0, |a, (_, b)| a.saturating_add(*b))
    }

    /// What was counted since `earlier`, a snapshot of the same revision
    /// taken before: e.g. one rollout step's requests, errors and p99.
    pub fn saturating_sub(&self, earlier: &Self) -> Self {
        let sub_counts = |now: &BTreeMap<u16, u64>, before: &BTreeMap<u16, u64>| {
            now.iter().map(|(code, n)| (*code, n.saturating_sub(before.get(code).copied().unwrap_or(0)))).collect()
        };
        Self {
            requests_by_code: sub_counts(&self.requests_by_code, &earlier.requests_by_code),
            invocations: self
                .invocations
                .iter()
                .map(|(code, h)| {
                    (*code, h.saturating_sub(earlier.invocations.get(code).unwrap_or(&DurationHistogram::default())))
                })
                .collect(),
            duration: self.duration.saturating_sub(&earlier.duration),
            held: self.held.saturating_sub(&earlier.held),
            reasons: self
                .reasons
                .iter()
                .map(|(reason, n)| {
                    (reason.clone(), n.saturating_sub(earlier.reasons.get(reason).copied().unwrap_or(0)))
                })
                .collect(),
            activations: self.activations.saturating_sub(earlier.activations),
            activation_duration: self.activation_duration.saturating_sub(&earlier.activation_duration),
        }
    }

    /// Adds one report's entry (checked beforehand).
    fn add(&mut self, metrics: &RevisionMetrics) {
        for entry in &metrics.durations {
            let Some(histogram) = &entry.duration else { continue };
            let histogram = DurationHistogram::from_proto(histogram);
            let status = u16::try_from(entry.status_code).unwrap_or(0);
            let known = self.invocations.contains_key(&status);
            // One entry stays free for status 0, where the overflow goes.
            let code = if known || self.invocations.len() + 1 < MAX_STATUS_CODES { status } else { 0 };
            let count = self.requests_by_code.entry(code).or_insert(0);
            *count = count.saturating_add(histogram.count());
            self.invocations.entry(code).or_default().merge(&histogram);
        }
        if let Some(upstream) = &metrics.upstream_duration {
            self.duration.merge(&DurationHistogram::from_proto(upstream));
        }
        if let Some(held) = &metrics.held_duration {
            self.held.merge(&DurationHistogram::from_proto(held));
        }
        for refusal in &metrics.refusals {
            let known = self.reasons.contains_key(&refusal.reason);
            let reason =
                if known || self.reasons.len() + 1 < MAX_REASONS { refusal.reason.as_str() } else { OTHER_REASON };
            let count = self.reasons.entry(reason.to_owned()).or_insert(0);
            *count = count.saturating_add(refusal.count);
        }
    }
}

/// A point-in-time copy of every revision's counters; cheap to take (the
/// counters are shared until the next report changes them).
pub type CountersSnapshot = BTreeMap<ObjectKey, Arc<RevisionCounters>>;

/// The cumulative counters of every revision in the plan.
#[derive(Debug, Default)]
pub struct Counters {
    revisions: CountersSnapshot,
    /// Revisions in a cold start: when its first activation request came
    /// (Unix ms). At most one entry per revision of the plan.
    cold_since: BTreeMap<ObjectKey, u64>,
}

impl Counters {
    /// Adds a checked report's entries (already limited to known revisions).
    pub fn add(&mut self, revisions: &[RevisionMetrics]) {
        for metrics in revisions {
            let key = ObjectKey::new(metrics.namespace.as_str(), metrics.revision.as_str());
            Arc::make_mut(self.revisions.entry(key).or_default()).add(metrics);
        }
    }

    /// Counts an activation request for `key` (a revision of the plan) at
    /// `now_ms`; the first while `key` is `ready` nowhere starts timing a
    /// cold start.
    pub fn activated(&mut self, key: &ObjectKey, ready: bool, now_ms: u64) {
        let counters = Arc::make_mut(self.revisions.entry(key.clone()).or_default());
        counters.activations = counters.activations.saturating_add(1);
        if !ready {
            self.cold_since.entry(key.clone()).or_insert(now_ms);
        }
    }

    /// Ends the cold starts of the revisions now `ready` somewhere, at
    /// `now_ms`; forgets those of revisions no longer `known`.
    pub fn observe_ready(
        &mut self,
        ready: &dyn Fn(&ObjectKey) -> bool,
        known: &dyn Fn(&ObjectKey) -> bool,
        now_ms: u64,
    ) {
        let revisions = &mut self.revisions;
        self.cold_since.retain(|key, since| {
            if !known(key) {
                return false;
            }
            if !ready(key) {
                return true;
            }
            let seconds = now_ms.saturating_sub(*since) as f64 / 1000.0;
            Arc::make_mut(revisions.entry(key.clone()).or_default()).activation_duration.observe(seconds);
            false
        });
    }

    /// Whether a cold start of some revision is being timed.
    pub fn timing_cold_starts(&self) -> bool {
        !self.cold_since.is_empty()
    }

    /// The counters of the revisions still `known`; the others are forgotten.
    pub fn snapshot(&mut self, known: &dyn Fn(&ObjectKey) -> bool) -> CountersSnapshot {
        self.revisions.retain(|key, _| known(key));
        self.cold_since.retain(|key, _| known(key));
        self.revisions.clone()
    }
}

#[cfg(test)]
mod tests {
    use revgate_proto::{ReasonCount, StatusDurations};

    use super::*;

    /// A report's histogram with `n` values in bucket `bucket`.
    fn proto(bucket: usize, n: u64, sum_seconds: f64) -> revgate_proto::DurationHistogram {
        let mut bucket_counts = vec![0; DURATION_BUCKETS];
        bucket_counts[bucket] = n;
        revgate_proto::DurationHistogram { bucket_counts, sum_seconds, count: n }
    }

    fn entry(revision: &str, by_code: &[(u32, u64)], refused: u64) -> RevisionMetrics {
        RevisionMetrics {
            namespace: "default".into(),
            revision: revision.into(),
            durations: by_code
                .iter()
                .map(|(code, n)| StatusDurations { status_code: *code, duration: Some(proto(5, *n, 0.1 * *n as f64)) })
                .collect(),
            upstream_duration: Some(proto(4, by_code.iter().map(|(_, n)| n).sum(), 0.0)),
            held_duration: (refused > 0).then(|| proto(13, refused, 10.0)),
            refusals: (refused > 0)
                .then(|| ReasonCount { reason: "activation-timeout".into(), count: refused })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    fn hello() -> ObjectKey {
        ObjectKey::new("default", "hello-00001")
    }

    #[test]
    fn reports_add_up_and_counters_only_grow() {
        let mut counters = Counters::default();
        counters.add(&[entry("hello-00001", &[(200, 7), (500, 3)], 0)]);
        let first = counters.snapshot(&|_| true);
        counters.add(&[entry("hello-00001", &[(200, 5)], 2)]);
        let second = counters.snapshot(&|_| true);
        let counted = &second[&hello()];
        assert_eq!(counted.requests_by_code, BTreeMap::from([(200, 12), (500, 3)]));
        assert_eq!((counted.requests(), counted.errors_5xx()), (15, 3));
        assert_eq!(counted.invocations[&200].count(), 12);
        assert_eq!(counted.duration.count(), 15);
        assert_eq!(counted.held.count(), 2);
        assert_eq!(counted.reasons, BTreeMap::from([("activation-timeout".to_owned(), 2)]));
        assert_eq!(first[&hello()].requests(), 10, "an earlier snapshot is not changed by later reports");
    }

    #[test]
    fn the_difference_of_two_snapshots_is_what_happened_between() {
        let mut counters = Counters::default();
        counters.add(&[entry("hello-00001", &[(200, 90), (500, 10)], 0)]);
        let before = counters.snapshot(&|_| true);
        counters.add(&[entry("hello-00001", &[(200, 48), (503, 2)], 1)]);
        let after = counters.snapshot(&|_| true);
        let step = after[&hello()].saturating_sub(&before[&hello()]);
        assert_eq!(step.requests_by_code, BTreeMap::from([(200, 48), (500, 0), (503, 2)]));
        assert_eq!((step.requests(), step.errors_5xx()), (50, 2));
        assert_eq!(step.invocations[&500].count(), 0);
        assert_eq!(step.held.count(), 1);
        assert_eq!(step.reasons["activation-timeout"], 1);
        assert_eq!(step.duration.count(), 50);
        let backwards = before[&hello()].saturating_sub(&after[&hello()]);
        assert_eq!(backwards.requests(), 0, "never negative");
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket_like_prometheus() {
        let mut h = DurationHistogram::default();
        assert_eq!(h.quantile(0.99), None);
        // 100 values: 90 in (0.05, 0.075], 10 in (0.5, 0.75].
        let mut report = proto(4, 90, 5.0);
        report.bucket_counts[8] = 10;
        report.count = 100;
        h.merge(&DurationHistogram::from_proto(&report));
        let close = |got: Option<f64>, want: f64| got.is_some_and(|got| (got - want).abs() < 1e-9);
        assert!(close(h.quantile(0.5), 0.05 + 0.025 * (50.0 / 90.0)), "{:?}", h.quantile(0.5));
        assert!(close(h.quantile(0.9), 0.075), "{:?}", h.quantile(0.9));
        assert!(close(h.quantile(0.99), 0.5 + 0.25 * 0.9), "{:?}", h.quantile(0.99));
        // A rank above the last bound answers the last bound.
        let mut slow = DurationHistogram::default();
        slow.merge(&DurationHistogram::from_proto(&proto(14, 1, 60.0)));
        assert_eq!(slow.quantile(0.99), Some(10.0));
        let buckets = h.buckets();
        assert_eq!(buckets.len(), DURATION_BUCKETS);
        assert_eq!((buckets[4], buckets[8]), ((0.075, 90), (0.75, 10)));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 0)));
    }

    #[test]
    fn merged_reporters_give_a_true_quantile() {
        // One fast reporter (99 requests under 5 ms), one slow (1 request
        // near 1 s): the p99 of all 100 is fast, whatever each one's p99.
        let mut all = DurationHistogram::default();
        all.merge(&DurationHistogram::from_proto(&proto(0, 99, 0.2)));
        all.merge(&DurationHistogram::from_proto(&proto(9, 1, 0.9)));
        assert!(all.quantile(0.99).is_some_and(|p99| p99 <= 0.005), "{:?}", all.quantile(0.99));
        assert!(all.quantile(1.0).is_some_and(|max| max > 0.75));
    }

    #[test]
    fn a_cold_start_is_timed_from_its_first_activation_to_ready() {
        let mut counters = Counters::default();
        let all = |_: &ObjectKey| true;
        counters.activated(&hello(), false, 1_000);
        counters.activated(&hello(), false, 1_200); // another VM: same cold start
        counters.observe_ready(&|_| false, &all, 1_500);
        assert!(counters.timing_cold_starts());
        counters.observe_ready(&|_| true, &all, 1_800);
        assert!(!counters.timing_cold_starts());
        counters.activated(&hello(), true, 2_000); // already ready: nothing to time
        let snapshot = counters.snapshot(&all);
        let timed = &snapshot[&hello()];
        assert_eq!(timed.activations, 3);
        assert_eq!(timed.activation_duration.count(), 1);
        assert!((timed.activation_duration.sum_seconds() - 0.8).abs() < 1e-9);
        assert_eq!(timed.activation_duration.quantile(1.0), Some(1.0), "in Knative's (0.75, 1] bucket");
    }

    #[test]
    fn codes_and_reasons_are_bounded_and_revisions_forgotten() {
        let mut counters = Counters::default();
        for code in 100..300u32 {
            counters.add(&[entry("hello-00001", &[(code, 1)], 0)]);
        }
        for index in 0..40 {
            let mut odd = entry("hello-00001", &[], 0);
            odd.refusals = vec![ReasonCount { reason: format!("reason-{index}"), count: 1 }];
            counters.add(&[odd]);
        }
        let snapshot = counters.snapshot(&|_| true);
        let counted = &snapshot[&hello()];
        assert_eq!(counted.requests_by_code.len(), MAX_STATUS_CODES);
        assert_eq!(counted.requests(), 200, "nothing lost, only folded");
        assert_eq!(counted.requests_by_code[&0], 200 - (MAX_STATUS_CODES as u64 - 1));
        assert_eq!(counted.reasons.len(), MAX_REASONS);
        assert_eq!(counted.reasons[OTHER_REASON], 40 - (MAX_REASONS as u64 - 1));
        assert!(counters.snapshot(&|key| key.name != "hello-00001").is_empty());
    }
}
