//! Aggregation of the gateway filter's metrics reports into per-revision
//! totals — what Knative's autoscaler gets from the activator and the
//! queue-proxies, here from every worker of every gateway.
//!
//! Pure: time is a parameter. Each reporter (one wasm VM on one Envoy
//! worker) sends a report per interval; the latest report of each reporter
//! counts until it is older than [`FRESHNESS_INTERVALS`] of its own window
//! (at most [`MAX_FRESHNESS_MS`]), and the totals for a revision are the
//! sums over the reporters.
//!
//! Only what revgate can use is kept, so no client can make it grow: the
//! entries of revisions in the gateway plan, once each, from at most a set
//! number of reporters, each forgotten once its report is stale.
//!
//! Every recorded report is also added, once, to the cumulative
//! [`Counters`] (requests by status code, durations, held time, refusals),
//! which `/metrics` and rollouts read through [`Aggregator::counters`].

use std::collections::{BTreeMap, BTreeSet};

use revgate_model::plan::ObjectKey;
use revgate_proto::{
    DURATION_BUCKETS, MAX_REASON_BYTES, MAX_REASONS_PER_REVISION, MAX_STATUS_CODES_PER_REVISION, MetricsReport,
    RevisionMetrics,
};
use serde::{Deserialize, Serialize};

use revgate_xds::stats::EnvoyStats;

use crate::bypassed::Ledger;
use crate::counters::{Counters, CountersSnapshot, DurationHistogram};

/// A report stays current for this many of its own windows, so one late or
/// lost report does not make a revision look idle.
pub const FRESHNESS_INTERVALS: u64 = 3;

/// The shortest freshness, for reporters with very short windows.
const MIN_FRESHNESS_MS: u64 = 2_000;

/// The longest freshness, whatever window a report claims: a reporter
/// silent for this long is forgotten.
pub const MAX_FRESHNESS_MS: u64 = 30_000;

/// The reporter name of a gateway's own statistics (Envoy's stats sink):
/// one per node, beside its filter VMs.
pub const ENVOY_STATS_REPORTER: &str = "envoy-stats";

/// Why a report was not recorded. Nothing of it is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error(
        "revision {revision} is not in the gateway plan, so the metrics report was not recorded \
         (a filter reports the revisions its readiness view lists; a deleted revision's reports stop with the next view)"
    )]
    UnknownRevision { revision: ObjectKey },
    #[error("revisions[{index}] repeats revision {revision}: a metrics report has one entry per revision")]
    RepeatedRevision { index: usize, revision: ObjectKey },
    #[error(
        "the activation service already keeps the reports of {limit} filter VMs (MAX_FILTER_VMS = {limit}), \
         so reporter {reporter:?} of node {node:?} was refused; a reporter silent for {}s is forgotten, then a new one is taken",
        MAX_FRESHNESS_MS / 1000
    )]
    TooManyReporters { limit: usize, node: String, reporter: String },
    #[error("{field} {detail}; the metrics report was not recorded")]
    BadEntry { field: String, detail: String },
}

/// Current totals for one revision across every reporter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RevisionTotals {
    /// Time-weighted average of requests in flight to the revision's
    /// endpoints, summed over reporters.
    pub concurrency: f64,
    /// Time-weighted average of requests held by the gateway (cold revision
    /// or throttled), summed over reporters. Knative counts these as demand.
    pub held_concurrency: f64,
    /// Requests per second over the reporters' last windows.
    pub rps: f64,
    pub requests: u64,
    pub responses_5xx: u64,
    /// Requests held right now.
    pub held: u64,
    /// Requests in flight to the revision right now.
    #[serde(default)]
    pub in_flight: u64,
    /// The p99 latency of the requests in the reporters' last windows, all
    /// reporters together, in milliseconds (held time included; 0 when
    /// none finished).
    pub p99_ms: f64,
    /// How many reporters contributed.
    pub reporters: usize,
}

#[derive(Debug, Clone)]
struct Latest {
    received_ms: u64,
    report: MetricsReport,
}

impl Latest {
    fn is_fresh(&self, now_ms: u64) -> bool {
        let freshness =
            self.report.window_ms.saturating_mul(FRESHNESS_INTERVALS).clamp(MIN_FRESHNESS_MS, MAX_FRESHNESS_MS);
        now_ms.saturating_sub(self.received_ms) <= freshness
    }
}

/// The latest report of every reporter.
#[derive(Debug)]
pub struct Aggregator {
    latest: BTreeMap<(String, String), Latest>,
    max_reporters: usize,
    /// When stale reporters are next swept out on a report, so a stream of
    /// new reporters costs one pass per second, not one per report.
    next_sweep_ms: u64,
    /// Every recorded report, added up per revision.
    cumulative: Counters,
    /// What Envoy and the filters counted, per gateway and revision.
    unfiltered: Ledger,
}

impl Aggregator {
    /// Keeps the reports of at most `max_reporters` reporters.
    pub fn new(max_reporters: usize) -> Self {
        Self {
            latest: BTreeMap::new(),
            max_reporters,
            next_sweep_ms: 0,
            cumulative: Counters::default(),
            unfiltered: Ledger::default(),
        }
    }

    /// Reporters whose report is kept.
    #[cfg(test)]
    pub fn reporters(&self) -> usize {
        self.latest.len()
    }

    /// Records a report received at `now_ms`, replacing that reporter's
    /// previous one. Entries for revisions not `known` are dropped; a report
    /// with entries, none of them known, is refused (and, like a report with
    /// no entries, leaves that reporter with nothing to count).
    pub fn record(
        &mut self,
        mut report: MetricsReport,
        known: &dyn Fn(&ObjectKey) -> bool,
        now_ms: u64,
    ) -> Result<(), ReportError> {
        let mut seen = BTreeSet::new();
        for (index, metrics) in report.revisions.iter().enumerate() {
            if !seen.insert((metrics.namespace.as_str(), metrics.revision.as_str())) {
                let revision = ObjectKey::new(metrics.namespace.as_str(), metrics.revision.as_str());
                return Err(ReportError::RepeatedRevision { index, revision });
            }
            check_entry(index, metrics)?;
        }
        let unknown = report
            .revisions
            .iter()
            .map(|m| ObjectKey::new(m.namespace.as_str(), m.revision.as_str()))
            .find(|key| !known(key));
        report.revisions.retain(|m| known(&ObjectKey::new(m.namespace.as_str(), m.revision.as_str())));
        // Kept for a while: without the room the dropped entries took.
        report.revisions.shrink_to_fit();
        let key = (report.node_id.clone(), report.reporter.clone());
        if report.revisions.is_empty() {
            self.latest.remove(&key);
            return match unknown {
                Some(revision) => Err(ReportError::UnknownRevision { revision }),
                None => Ok(()),
            };
        }
        if now_ms >= self.next_sweep_ms {
            self.latest.retain(|_, latest| latest.is_fresh(now_ms));
            self.next_sweep_ms = now_ms.saturating_add(1_000);
        }
        if !self.latest.contains_key(&key) && self.latest.len() >= self.max_reporters {
            let (node, reporter) = key;
            return Err(ReportError::TooManyReporters { limit: self.max_reporters, node, reporter });
        }
        self.cumulative.add(&report.revisions);
        for metrics in &report.revisions {
            self.unfiltered.filter_report(&report.node_id, metrics, report.window_start_unix_ms, report.window_ms);
        }
        self.latest.insert(key, Latest { received_ms: now_ms, report });
        Ok(())
    }

    /// Records what a gateway's own statistics say of its revision clusters
    /// (reporter [`ENVOY_STATS_REPORTER`]). They count every request the
    /// gateway sent, through the filter or not, so [`Aggregator::totals`]
    /// takes, per gateway and revision, the larger of them and the sum of
    /// its filters' figures rather than both; and they are not added to the
    /// cumulative counters, which the filters' reports keep.
    pub fn record_envoy_stats(&mut self, mut report: MetricsReport, known: &dyn Fn(&ObjectKey) -> bool, now_ms: u64) {
        report.reporter = ENVOY_STATS_REPORTER.to_owned();
        report.revisions.retain(|m| known(&ObjectKey::new(m.namespace.as_str(), m.revision.as_str())));
        let key = (report.node_id.clone(), report.reporter.clone());
        if report.revisions.is_empty() {
            self.latest.remove(&key);
            return;
        }
        if !self.latest.contains_key(&key) && self.latest.len() >= self.max_reporters {
            return;
        }
        self.latest.insert(key, Latest { received_ms: now_ms, report });
    }

    /// Adds the answers of a gateway's flush that no filter saw (see
    /// [`crate::bypassed`]) to the cumulative counters.
    pub fn count_unfiltered(&mut self, flush: &EnvoyStats, known: &dyn Fn(&ObjectKey) -> bool, received_ms: u64) {
        for (revision, stats) in flush.revisions.iter().filter(|(key, _)| known(key)) {
            let flushed_ms = flush.flushed_unix_ms.unwrap_or(received_ms);
            if let Some(unfiltered) = self.unfiltered.flush(&flush.node, revision, stats, flushed_ms, received_ms) {
                self.cumulative.add(std::slice::from_ref(&unfiltered));
            }
        }
        self.unfiltered.retain(|_, revision| known(revision));
    }

    /// Counts an activation request for `key`, a revision of the plan,
    /// timing the cold start it begins unless `key` is `ready` already.
    pub fn activated(&mut self, key: &ObjectKey, ready: bool, now_ms: u64) {
        self.cumulative.activated(key, ready, now_ms);
    }

    /// Ends the cold starts of the revisions `ready` now (see
    /// [`Counters::observe_ready`]); cheap while none is being timed.
    pub fn observe_ready(
        &mut self,
        ready: &dyn Fn(&ObjectKey) -> bool,
        known: &dyn Fn(&ObjectKey) -> bool,
        now_ms: u64,
    ) {
        if self.cumulative.timing_cold_starts() {
            self.cumulative.observe_ready(ready, known, now_ms);
        }
    }

    /// The cumulative counters of the revisions in `known` (the others are
    /// forgotten): a cheap copy, shared until the next report.
    pub fn counters(&mut self, known: &dyn Fn(&ObjectKey) -> bool) -> CountersSnapshot {
        self.cumulative.snapshot(known)
    }

    /// Totals at `now_ms` for the revisions in `known`; reports for other
    /// revisions are ignored (they may be from a gateway with an older
    /// configuration). Stale reporters are forgotten.
    pub fn totals(&mut self, known: &dyn Fn(&ObjectKey) -> bool, now_ms: u64) -> BTreeMap<ObjectKey, RevisionTotals> {
        self.latest.retain(|_, latest| latest.is_fresh(now_ms));
        // Per gateway and revision: its filters' sum, and its own statistics.
        let mut filters: BTreeMap<(&str, ObjectKey), RevisionTotals> = BTreeMap::new();
        let mut envoy: BTreeMap<(&str, ObjectKey), RevisionTotals> = BTreeMap::new();
        let mut durations: BTreeMap<ObjectKey, DurationHistogram> = BTreeMap::new();
        for ((node, reporter), latest) in &self.latest {
            let window_s = latest.report.window_ms.max(1) as f64 / 1000.0;
            let sums = if reporter == ENVOY_STATS_REPORTER { &mut envoy } else { &mut filters };
            for metrics in &latest.report.revisions {
                let key = ObjectKey::new(metrics.namespace.as_str(), metrics.revision.as_str());
                if !known(&key) {
                    continue;
                }
                let merged = durations.entry(key.clone()).or_default();
                for entry in metrics.durations.iter().filter_map(|d| d.duration.as_ref()) {
                    merged.merge(&DurationHistogram::from_proto(entry));
                }
                let total = sums.entry((node.as_str(), key)).or_default();
                total.concurrency += metrics.average_concurrency;
                total.held_concurrency += metrics.average_held_concurrency.unwrap_or(0.0);
                total.rps += metrics.requests as f64 / window_s;
                total.requests += metrics.requests;
                total.responses_5xx += metrics.responses_5xx;
                total.held += metrics.held;
                total.in_flight += metrics.in_flight;
                total.reporters += 1;
            }
        }
        for (node_key, own) in envoy {
            let total = filters.entry(node_key).or_default();
            total.concurrency = total.concurrency.max(own.concurrency);
            total.rps = total.rps.max(own.rps);
            total.requests = total.requests.max(own.requests);
            total.responses_5xx = total.responses_5xx.max(own.responses_5xx);
            total.in_flight = total.in_flight.max(own.in_flight);
            total.reporters += own.reporters;
        }
        let mut totals: BTreeMap<ObjectKey, RevisionTotals> = BTreeMap::new();
        for ((_, key), node) in filters {
            let total = totals.entry(key).or_default();
            total.concurrency += node.concurrency;
            total.held_concurrency += node.held_concurrency;
            total.rps += node.rps;
            total.requests += node.requests;
            total.responses_5xx += node.responses_5xx;
            total.held += node.held;
            total.in_flight += node.in_flight;
            total.reporters += node.reporters;
        }
        for (key, merged) in durations {
            if let (Some(total), Some(p99)) = (totals.get_mut(&key), merged.quantile(0.99)) {
                total.p99_ms = p99 * 1000.0;
            }
        }
        totals
    }
}

/// Checks one entry's histograms and lists against the contract's bounds,
/// naming the field at fault.
fn check_entry(index: usize, metrics: &RevisionMetrics) -> Result<(), ReportError> {
    let bad = |field: String, detail: String| Err(ReportError::BadEntry { field, detail });
    let at = format!("revisions[{index}]");
    if metrics.durations.len() > MAX_STATUS_CODES_PER_REVISION {
        return bad(
            format!("{at}.durations"),
            format!(
                "lists {} status codes, more than MAX_STATUS_CODES_PER_REVISION = {MAX_STATUS_CODES_PER_REVISION}",
                metrics.durations.len()
            ),
        );
    }
    let mut codes = BTreeSet::new();
    for (i, entry) in metrics.durations.iter().enumerate() {
        if entry.status_code > 999 || !codes.insert(entry.status_code) {
            return bad(
                format!("{at}.durations[{i}].status_code"),
                format!("is {}, not a status code (0, or 100–999) listed once", entry.status_code),
            );
        }
        if let Some(h) = &entry.duration {
            check_histogram(format!("{at}.durations[{i}].duration"), h)?;
        }
    }
    if let Some(h) = &metrics.upstream_duration {
        check_histogram(format!("{at}.upstream_duration"), h)?;
    }
    if let Some(h) = &metrics.held_duration {
        check_histogram(format!("{at}.held_duration"), h)?;
    }
    if metrics.refusals.len() > MAX_REASONS_PER_REVISION {
        return bad(
            format!("{at}.refusals"),
            format!(
                "lists {} reasons, more than MAX_REASONS_PER_REVISION = {MAX_REASONS_PER_REVISION}",
                metrics.refusals.len()
            ),
        );
    }
    for (i, refusal) in metrics.refusals.iter().enumerate() {
        if refusal.reason.is_empty() || refusal.reason.len() > MAX_REASON_BYTES {
            return bad(
                format!("{at}.refusals[{i}].reason"),
                format!(
                    "is {} bytes; a reason is 1 to MAX_REASON_BYTES = {MAX_REASON_BYTES} bytes",
                    refusal.reason.len()
                ),
            );
        }
    }
    Ok(())
}

fn check_histogram(field: String, h: &revgate_proto::DurationHistogram) -> Result<(), ReportError> {
    let buckets = h.bucket_counts.len();
    if buckets != 0 && buckets != DURATION_BUCKETS {
        return Err(ReportError::BadEntry {
            field: format!("{field}.bucket_counts"),
            detail: format!("has {buckets} buckets; Knative's boundaries make {DURATION_BUCKETS} (or none when empty)"),
        });
    }
    let total = h.bucket_counts.iter().fold(0u64, |a, b| a.saturating_add(*b));
    if total != h.count {
        return Err(ReportError::BadEntry {
            field: format!("{field}.count"),
            detail: format!("is {}, but its buckets add up to {total}", h.count),
        });
    }
    if !h.sum_seconds.is_finite() || h.sum_seconds < 0.0 {
        return Err(ReportError::BadEntry {
            field: format!("{field}.sum_seconds"),
            detail: format!("is {}; a sum of durations is finite and not negative", h.sum_seconds),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use revgate_proto::RevisionMetrics;

    use super::*;

    fn report(node: &str, reporter: &str, revision: &str, concurrency: f64, requests: u64) -> MetricsReport {
        MetricsReport {
            node_id: node.into(),
            reporter: reporter.into(),
            window_start_unix_ms: 0,
            window_ms: 1000,
            revisions: vec![RevisionMetrics {
                namespace: "default".into(),
                revision: revision.into(),
                average_concurrency: concurrency,
                requests,
                ..Default::default()
            }],
        }
    }

    fn any(_: &ObjectKey) -> bool {
        true
    }

    fn aggregator() -> Aggregator {
        Aggregator::new(100)
    }

    fn record(aggregator: &mut Aggregator, report: MetricsReport, now_ms: u64) {
        aggregator.record(report, &any, now_ms).expect("recorded");
    }

    #[test]
    fn a_gateways_own_statistics_count_once_beside_its_filters() {
        let key = || ObjectKey::new("default", "hello-00001");
        let mut aggregator = aggregator();
        let envoy = |node: &str, concurrency: f64, requests: u64| MetricsReport {
            reporter: String::new(),
            ..report(node, "", "hello-00001", concurrency, requests)
        };
        // Filter off: only Envoy saw the requests.
        aggregator.record_envoy_stats(envoy("gw-1", 10.0, 100), &any, 0);
        let totals = aggregator.totals(&any, 500);
        assert_eq!((totals[&key()].concurrency, totals[&key()].requests), (10.0, 100));
        // Filter on: both saw the same requests; counted once.
        record(&mut aggregator, report("gw-1", "vm-1", "hello-00001", 6.0, 60), 600);
        record(&mut aggregator, report("gw-1", "vm-2", "hello-00001", 4.5, 45), 600);
        let totals = aggregator.totals(&any, 700);
        assert_eq!((totals[&key()].concurrency, totals[&key()].requests), (10.5, 105));
        // Another gateway adds up.
        aggregator.record_envoy_stats(envoy("gw-2", 2.0, 20), &any, 700);
        let totals = aggregator.totals(&any, 800);
        assert_eq!((totals[&key()].concurrency, totals[&key()].requests), (12.5, 125));
    }

    #[test]
    fn sums_reporters_and_keeps_only_each_reporters_latest() {
        let mut aggregator = aggregator();
        record(&mut aggregator, report("gw", "w1", "hello-00001", 1.0, 10), 0);
        record(&mut aggregator, report("gw", "w1", "hello-00001", 4.0, 40), 1000);
        record(&mut aggregator, report("gw", "w2", "hello-00001", 6.0, 60), 1000);
        record(&mut aggregator, report("gw2", "w1", "hello-00001", 0.5, 5), 1000);
        let totals = aggregator.totals(&any, 1000);
        let hello = &totals[&ObjectKey::new("default", "hello-00001")];
        assert_eq!(hello.concurrency, 10.5);
        assert_eq!(hello.requests, 105);
        assert_eq!(hello.rps, 105.0);
        assert_eq!(hello.reporters, 3);
    }

    #[test]
    fn stale_reporters_stop_counting() {
        let mut aggregator = aggregator();
        record(&mut aggregator, report("gw", "w1", "hello-00001", 5.0, 5), 0);
        assert_eq!(aggregator.totals(&any, 3000).len(), 1, "three windows old is still current");
        assert!(aggregator.totals(&any, 3001).is_empty(), "older reports are forgotten");
    }

    #[test]
    fn revisions_that_left_the_plan_stop_counting() {
        let mut aggregator = aggregator();
        record(&mut aggregator, report("gw", "w1", "gone-00001", 5.0, 5), 0);
        let totals = aggregator.totals(&|key: &ObjectKey| key.name != "gone-00001", 0);
        assert!(totals.is_empty());
    }

    fn known(key: &ObjectKey) -> bool {
        key.name.starts_with("hello")
    }

    #[test]
    fn a_report_naming_only_unknown_revisions_is_refused_and_keeps_nothing() {
        let mut aggregator = aggregator();
        let refused = aggregator.record(report("gw", "w1", "made-up-1", 5.0, 5), &known, 0);
        assert_eq!(refused, Err(ReportError::UnknownRevision { revision: ObjectKey::new("default", "made-up-1") }));
        assert_eq!(aggregator.reporters(), 0);
        assert!(refused.is_err_and(|e| e.to_string().contains("default/made-up-1 is not in the gateway plan")));
    }

    #[test]
    fn unknown_entries_are_dropped_and_known_ones_kept() {
        let mut aggregator = aggregator();
        let mut mixed = report("gw", "w1", "hello-00001", 2.0, 4);
        mixed.revisions.extend(report("gw", "w1", "made-up-1", 5.0, 5).revisions);
        assert_eq!(aggregator.record(mixed, &known, 0), Ok(()));
        let totals = aggregator.totals(&known, 0);
        assert_eq!(totals.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(), vec!["hello-00001"]);
        let kept: Vec<(usize, usize)> =
            aggregator.latest.values().map(|l| (l.report.revisions.len(), l.report.revisions.capacity())).collect();
        assert_eq!(kept, vec![(1, 1)], "the known entry alone, without room for the dropped one");
    }

    #[test]
    fn a_repeated_revision_is_refused_with_its_index() {
        let mut aggregator = aggregator();
        let mut repeated = report("gw", "w1", "hello-00001", 2.0, 4);
        repeated.revisions.push(repeated.revisions[0].clone());
        let refused = aggregator.record(repeated, &known, 0);
        assert_eq!(
            refused,
            Err(ReportError::RepeatedRevision { index: 1, revision: ObjectKey::new("default", "hello-00001") })
        );
        assert_eq!(aggregator.reporters(), 0);
    }

    #[test]
    fn an_empty_report_means_nothing_left_to_count_for_that_reporter() {
        let mut aggregator = aggregator();
        record(&mut aggregator, report("gw", "w1", "hello-00001", 2.0, 4), 0);
        record(
            &mut aggregator,
            MetricsReport { node_id: "gw".into(), reporter: "w1".into(), ..Default::default() },
            500,
        );
        assert_eq!(aggregator.reporters(), 0);
        assert!(aggregator.totals(&any, 500).is_empty());
    }

    #[test]
    fn reporters_beyond_the_limit_are_refused_until_stale_ones_are_forgotten() {
        let mut aggregator = Aggregator::new(2);
        record(&mut aggregator, report("gw", "w1", "hello-00001", 1.0, 1), 0);
        record(&mut aggregator, report("gw", "w2", "hello-00001", 1.0, 1), 0);
        let refused = aggregator.record(report("gw", "w3", "hello-00001", 1.0, 1), &any, 1_000);
        assert!(
            matches!(&refused, Err(ReportError::TooManyReporters { limit: 2, reporter, .. }) if reporter == "w3"),
            "{refused:?}"
        );
        assert!(refused.is_err_and(|e| e.to_string().contains("MAX_FILTER_VMS = 2")));
        record(&mut aggregator, report("gw", "w1", "hello-00001", 1.0, 1), 2_000);
        // w2 has been silent for more than three 1 s windows: stale, forgotten.
        assert_eq!(aggregator.record(report("gw", "w3", "hello-00001", 1.0, 1), &any, 3_001), Ok(()));
        assert_eq!(aggregator.reporters(), 2);
    }

    #[test]
    fn a_report_claiming_a_huge_window_is_still_forgotten() {
        let mut aggregator = aggregator();
        let mut report = report("gw", "w1", "hello-00001", 1.0, 1);
        report.window_ms = u64::MAX;
        record(&mut aggregator, report, 0);
        assert_eq!(aggregator.totals(&any, MAX_FRESHNESS_MS).len(), 1);
        assert!(aggregator.totals(&any, MAX_FRESHNESS_MS + 1).is_empty(), "at most MAX_FRESHNESS_MS");
    }

    fn histogram(bucket: usize, n: u64) -> revgate_proto::DurationHistogram {
        let mut bucket_counts = vec![0; DURATION_BUCKETS];
        bucket_counts[bucket] = n;
        revgate_proto::DurationHistogram { bucket_counts, sum_seconds: 0.0, count: n }
    }

    fn with_durations(reporter: &str, bucket: usize, n: u64) -> MetricsReport {
        let mut report = report("gw", reporter, "hello-00001", 1.0, n);
        report.revisions[0].durations =
            vec![revgate_proto::StatusDurations { status_code: 200, duration: Some(histogram(bucket, n)) }];
        report
    }

    #[test]
    fn p99_is_over_every_reporters_requests_together() {
        let mut aggregator = aggregator();
        // 99 fast requests on one worker, one slow on another: the worst
        // per-worker p99 would be slow, the true p99 of the 100 is fast.
        record(&mut aggregator, with_durations("w1", 0, 99), 0);
        record(&mut aggregator, with_durations("w2", 9, 1), 0);
        let totals = aggregator.totals(&any, 0);
        let p99 = totals[&ObjectKey::new("default", "hello-00001")].p99_ms;
        assert!(p99 > 0.0 && p99 <= 5.0, "{p99}");
        let counted = aggregator.counters(&any);
        assert_eq!(counted[&ObjectKey::new("default", "hello-00001")].requests(), 100);
    }

    #[test]
    fn malformed_entries_are_refused_naming_the_field_and_count_nothing() {
        let mut aggregator = aggregator();
        let mut short = with_durations("w1", 0, 3);
        if let Some(h) = short.revisions[0].durations[0].duration.as_mut() {
            h.bucket_counts.pop();
        }
        let refused = aggregator.record(short, &any, 0).expect_err("refused");
        assert!(
            refused.to_string().starts_with("revisions[0].durations[0].duration.bucket_counts has 14 buckets"),
            "{refused}"
        );
        let mut lying = with_durations("w1", 0, 3);
        if let Some(h) = lying.revisions[0].durations[0].duration.as_mut() {
            h.count = 4;
        }
        let refused = aggregator.record(lying, &any, 0).expect_err("refused");
        assert!(refused.to_string().contains("durations[0].duration.count is 4, but its buckets add up to 3"));
        let mut codes = with_durations("w1", 0, 1);
        codes.revisions[0].durations[0].status_code = 1000;
        assert!(matches!(aggregator.record(codes, &any, 0), Err(ReportError::BadEntry { .. })));
        assert_eq!(aggregator.reporters(), 0);
        assert!(aggregator.counters(&any).is_empty());
    }
}
