//! Aggregation of the gateway filter's metrics reports into per-revision
//! totals — what Knative's autoscaler gets from the activator and the
//! queue-proxies, here from every worker of every gateway.
//!
//! Pure: time is a parameter. Each reporter (one wasm VM on one Envoy
//! worker) sends a report per interval; the latest report of each reporter
//! counts until it is older than [`FRESHNESS_INTERVALS`] of its own window,
//! and the totals for a revision are the sums over the reporters.

use std::collections::BTreeMap;

use revgate_model::plan::ObjectKey;
use revgate_proto::MetricsReport;
use serde::{Deserialize, Serialize};

/// A report stays current for this many of its own windows, so one late or
/// lost report does not make a revision look idle.
pub const FRESHNESS_INTERVALS: u64 = 3;

/// The shortest freshness, for reporters with very short windows.
const MIN_FRESHNESS_MS: u64 = 2_000;

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

/// The latest report of every reporter.
#[derive(Debug, Default)]
pub struct Aggregator {
    latest: BTreeMap<(String, String), Latest>,
}

impl Aggregator {
    /// Records a report received at `now_ms`, replacing that reporter's previous one.
    pub fn record(&mut self, report: MetricsReport, now_ms: u64) {
        let key = (report.node_id.clone(), report.reporter.clone());
        self.latest.insert(key, Latest { received_ms: now_ms, report });
    }

    /// Totals at `now_ms` for the revisions in `known`; reports for other
    /// revisions are ignored (they may be from a gateway with an older
    /// configuration). Stale reporters are forgotten.
    pub fn totals(&mut self, known: &dyn Fn(&ObjectKey) -> bool, now_ms: u64) -> BTreeMap<ObjectKey, RevisionTotals> {
        self.latest.retain(|_, latest| {
            let freshness = (latest.report.window_ms * FRESHNESS_INTERVALS).max(MIN_FRESHNESS_MS);
            now_ms.saturating_sub(latest.received_ms) <= freshness
        });
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

    #[test]
    fn sums_reporters_and_keeps_only_each_reporters_latest() {
        let mut aggregator = Aggregator::default();
        aggregator.record(report("gw", "w1", "hello-00001", 1.0, 10), 0);
        aggregator.record(report("gw", "w1", "hello-00001", 4.0, 40), 1000);
        aggregator.record(report("gw", "w2", "hello-00001", 6.0, 60), 1000);
        aggregator.record(report("gw2", "w1", "hello-00001", 0.5, 5), 1000);
        let totals = aggregator.totals(&any, 1000);
        let hello = &totals[&ObjectKey::new("default", "hello-00001")];
        assert_eq!(hello.concurrency, 10.5);
        assert_eq!(hello.requests, 105);
        assert_eq!(hello.rps, 105.0);
        assert_eq!(hello.reporters, 3);
    }

    #[test]
    fn stale_reporters_stop_counting() {
        let mut aggregator = Aggregator::default();
        aggregator.record(report("gw", "w1", "hello-00001", 5.0, 5), 0);
        assert_eq!(aggregator.totals(&any, 3000).len(), 1, "three windows old is still current");
        assert!(aggregator.totals(&any, 3001).is_empty(), "older reports are forgotten");
    }

    #[test]
    fn unknown_revisions_are_ignored() {
        let mut aggregator = Aggregator::default();
        aggregator.record(report("gw", "w1", "gone-00001", 5.0, 5), 0);
        let totals = aggregator.totals(&|key: &ObjectKey| key.name != "gone-00001", 0);
        assert!(totals.is_empty());
    }
}
