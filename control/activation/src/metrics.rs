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

use std::collections::{BTreeMap, BTreeSet};

use revgate_model::plan::ObjectKey;
use revgate_proto::MetricsReport;
use serde::{Deserialize, Serialize};

/// A report stays current for this many of its own windows, so one late or
/// lost report does not make a revision look idle.
pub const FRESHNESS_INTERVALS: u64 = 3;

/// The shortest freshness, for reporters with very short windows.
const MIN_FRESHNESS_MS: u64 = 2_000;

/// The longest freshness, whatever window a report claims: a reporter
/// silent for this long is forgotten.
pub const MAX_FRESHNESS_MS: u64 = 30_000;

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
    /// The worst p99 latency among reporters, in milliseconds.
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
}

impl Aggregator {
    /// Keeps the reports of at most `max_reporters` reporters.
    pub fn new(max_reporters: usize) -> Self {
        Self { latest: BTreeMap::new(), max_reporters, next_sweep_ms: 0 }
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
        self.latest.insert(key, Latest { received_ms: now_ms, report });
        Ok(())
    }

    /// Totals at `now_ms` for the revisions in `known`; reports for other
    /// revisions are ignored (they may be from a gateway with an older
    /// configuration). Stale reporters are forgotten.
    pub fn totals(&mut self, known: &dyn Fn(&ObjectKey) -> bool, now_ms: u64) -> BTreeMap<ObjectKey, RevisionTotals> {
        self.latest.retain(|_, latest| latest.is_fresh(now_ms));
        let mut totals: BTreeMap<ObjectKey, RevisionTotals> = BTreeMap::new();
        for latest in self.latest.values() {
            let window_s = latest.report.window_ms.max(1) as f64 / 1000.0;
            for metrics in &latest.report.revisions {
                let key = ObjectKey::new(metrics.namespace.as_str(), metrics.revision.as_str());
                if !known(&key) {
                    continue;
                }
                let total = totals.entry(key).or_default();
                total.concurrency += metrics.average_concurrency;
                total.held_concurrency += metrics.average_held_concurrency.unwrap_or(0.0);
                total.rps += metrics.requests as f64 / window_s;
                total.requests += metrics.requests;
                total.responses_5xx += metrics.responses_5xx;
                total.held += metrics.held;
                total.p99_ms = total.p99_ms.max(metrics.latency.as_ref().map_or(0.0, |l| l.p99_ms));
                total.reporters += 1;
            }
        }
        totals
    }
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
}
