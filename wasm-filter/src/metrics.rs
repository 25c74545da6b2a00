//! Per-revision traffic seen by one VM, turned into a `MetricsReport` every
//! reporting window: what Knative's queue-proxy (concurrency, requests) and
//! activator (held demand) would report.

use std::collections::BTreeMap;

use revgate_proto::{LatencySummary, MetricsReport, RevisionMetrics};

use crate::averager::ConcurrencyAverager;
use crate::histogram::LatencyHistogram;
use crate::revision::RevisionKey;

const NS_PER_MS: u64 = 1_000_000;

#[derive(Debug, Clone)]
struct RevisionStats {
    in_flight: ConcurrencyAverager,
    held: ConcurrencyAverager,
    held_in_window: bool,
    requests: u64,
    responses_5xx: u64,
    latency: LatencyHistogram,
}

impl RevisionStats {
    fn new(window_start_ns: u64) -> Self {
        Self {
            in_flight: ConcurrencyAverager::new(window_start_ns),
            held: ConcurrencyAverager::new(window_start_ns),
            held_in_window: false,
            requests: 0,
            responses_5xx: 0,
            latency: LatencyHistogram::new(),
        }
    }
}

/// The counters of every revision with traffic in the current window.
#[derive(Debug)]
pub struct Metrics {
    window_start_ns: u64,
    revisions: BTreeMap<RevisionKey, RevisionStats>,
}

impl Metrics {
    pub fn new(now_ns: u64) -> Self {
        Self { window_start_ns: now_ns, revisions: BTreeMap::new() }
    }

    pub fn window_start_ns(&self) -> u64 {
        self.window_start_ns
    }

    fn stats(&mut self, key: &RevisionKey) -> &mut RevisionStats {
        let start = self.window_start_ns;
        self.revisions.entry(key.clone()).or_insert_with(|| RevisionStats::new(start))
    }

    /// A request was sent upstream.
    pub fn admitted(&mut self, key: &RevisionKey, now_ns: u64) {
        self.stats(key).in_flight.increment(now_ns);
    }

    /// A request sent upstream finished.
    pub fn left(&mut self, key: &RevisionKey, now_ns: u64) {
        self.stats(key).in_flight.decrement(now_ns);
    }

    /// A request started waiting.
    pub fn held(&mut self, key: &RevisionKey, now_ns: u64) {
        let stats = self.stats(key);
        stats.held.increment(now_ns);
        stats.held_in_window = true;
    }

    /// A request stopped waiting (released, refused or aborted).
    pub fn unheld(&mut self, key: &RevisionKey, now_ns: u64) {
        self.stats(key).held.decrement(now_ns);
    }

    /// A request finished with `status` (0: no response, e.g. client abort)
    /// after `latency_ns`.
    pub fn finished(&mut self, key: &RevisionKey, status: u32, latency_ns: u64) {
        let stats = self.stats(key);
        stats.requests = stats.requests.saturating_add(1);
        if (500..600).contains(&status) {
            stats.responses_5xx = stats.responses_5xx.saturating_add(1);
        }
        stats.latency.record(latency_ns / 1_000);
    }

    /// Closes the window at `now_ns` and returns its report, or `None` when
    /// no revision had anything to report. Revisions idle for a whole window
    /// are forgotten, so memory follows the revisions with traffic.
    pub fn take_report(&mut self, now_ns: u64, node_id: &str, reporter: &str) -> Option<MetricsReport> {
        let window_start_ns = self.window_start_ns;
        self.window_start_ns = now_ns.max(window_start_ns);
        let mut revisions = Vec::new();
        self.revisions.retain(|key, stats| {
            let busy = !stats.in_flight.is_idle() || !stats.held.is_idle() || stats.requests > 0;
            if busy {
                revisions.push(revision_metrics(key, stats, now_ns));
            }
            stats.requests = 0;
            stats.responses_5xx = 0;
            stats.latency.clear();
            stats.held_in_window = stats.held.current() > 0;
            busy
        });
        if revisions.is_empty() {
            return None;
        }
        Some(MetricsReport {
            node_id: node_id.to_owned(),
            reporter: reporter.to_owned(),
            window_start_unix_ms: window_start_ns / NS_PER_MS,
            window_ms: now_ns.saturating_sub(window_start_ns) / NS_PER_MS,
            revisions,
        })
    }
}

fn revision_metrics(key: &RevisionKey, stats: &mut RevisionStats, now_ns: u64) -> RevisionMetrics {
    let held_in_window = stats.held_in_window;
    let average_held = stats.held.take_window(now_ns);
    let ms = |us: u64| us as f64 / 1_000.0;
    RevisionMetrics {
        namespace: key.namespace.clone(),
        revision: key.revision.clone(),
        average_concurrency: stats.in_flight.take_window(now_ns),
        requests: stats.requests,
        responses_5xx: stats.responses_5xx,
        latency: (stats.latency.count() > 0).then(|| LatencySummary {
            p50_ms: ms(stats.latency.quantile_us(0.50)),
            p90_ms: ms(stats.latency.quantile_us(0.90)),
            p99_ms: ms(stats.latency.quantile_us(0.99)),
            max_ms: ms(stats.latency.max_us()),
        }),
        held: stats.held.current(),
        average_held_concurrency: held_in_window.then_some(average_held),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = NS_PER_MS;
    const T0: u64 = 1_700_000_000_000 * MS;

    #[test]
    fn one_window_of_traffic() {
        let key = RevisionKey::new("default", "hello-00001");
        let mut m = Metrics::new(T0);
        // One request held 0–200 ms, then in flight 200–700 ms, answered 200.
        m.held(&key, T0);
        m.unheld(&key, T0 + 200 * MS);
        m.admitted(&key, T0 + 200 * MS);
        m.left(&key, T0 + 700 * MS);
        m.finished(&key, 200, 700 * MS);
        // One request refused with 503 at once.
        m.finished(&key, 503, MS);

        let report = m.take_report(T0 + 1000 * MS, "gw", "gw/1").unwrap();
        assert_eq!((report.node_id.as_str(), report.reporter.as_str()), ("gw", "gw/1"));
        assert_eq!(report.window_start_unix_ms, 1_700_000_000_000);
        assert_eq!(report.window_ms, 1000);
        let [rev] = report.revisions.as_slice() else { panic!("{report:?}") };
        assert_eq!((rev.namespace.as_str(), rev.revision.as_str()), ("default", "hello-00001"));
        assert!((rev.average_concurrency - 0.5).abs() < 1e-9);
        assert!((rev.average_held_concurrency.unwrap() - 0.2).abs() < 1e-9);
        assert_eq!((rev.requests, rev.responses_5xx, rev.held), (2, 1, 0));
        let latency = rev.latency.unwrap();
        assert!(latency.p99_ms >= 700.0 && latency.max_ms == 700.0, "{latency:?}");
        assert!(latency.p50_ms >= 1.0 && latency.p50_ms <= 1.125, "{latency:?}");
    }

    #[test]
    fn long_requests_carry_over_and_idle_revisions_are_forgotten() {
        let key = RevisionKey::new("default", "slow");
        let mut m = Metrics::new(T0);
        m.admitted(&key, T0);
        let first = m.take_report(T0 + 1000 * MS, "gw", "r").unwrap();
        assert_eq!(first.revisions[0].average_concurrency, 1.0);
        assert_eq!(first.revisions[0].requests, 0);
        assert_eq!(first.revisions[0].latency, None);
        assert_eq!(first.revisions[0].average_held_concurrency, None, "nothing held: absent");
        m.left(&key, T0 + 1500 * MS);
        m.finished(&key, 200, 1500 * MS);
        let second = m.take_report(T0 + 2000 * MS, "gw", "r").unwrap();
        assert_eq!(second.window_start_unix_ms, 1_700_000_001_000);
        assert!((second.revisions[0].average_concurrency - 0.5).abs() < 1e-9);
        assert_eq!(m.take_report(T0 + 3000 * MS, "gw", "r"), None, "idle window: nothing to report");
        assert_eq!(m.take_report(T0 + 4000 * MS, "gw", "r"), None);
    }

    #[test]
    fn requests_still_held_are_reported_every_window() {
        let key = RevisionKey::new("default", "cold");
        let mut m = Metrics::new(T0);
        m.held(&key, T0 + 500 * MS);
        let first = m.take_report(T0 + 1000 * MS, "gw", "r").unwrap();
        assert_eq!(first.revisions[0].held, 1);
        assert!((first.revisions[0].average_held_concurrency.unwrap() - 0.5).abs() < 1e-9);
        let second = m.take_report(T0 + 2000 * MS, "gw", "r").unwrap();
        assert_eq!(second.revisions[0].held, 1);
        assert_eq!(second.revisions[0].average_held_concurrency, Some(1.0));
        assert_eq!(second.revisions[0].average_concurrency, 0.0);
    }
}
