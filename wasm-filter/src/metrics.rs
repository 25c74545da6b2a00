//! Per-revision traffic seen by one VM, turned into a `MetricsReport` every
//! reporting window: what Knative's queue-proxy (concurrency, requests and
//! their durations) and activator (held demand) would report.
//!
//! Durations are counted in fixed buckets ([`DurationRecorder`]) per
//! response status code, so the control plane can add up every reporter's.
//! Bounded: at most [`MAX_STATUS_CODES_PER_REVISION`] codes per revision per
//! window (more count under status 0), and refusal reasons are the filter's
//! own few constants.

use std::collections::BTreeMap;

use prost::Message;
use revgate_proto::{MAX_STATUS_CODES_PER_REVISION, MetricsReport, ReasonCount, RevisionMetrics, StatusDurations};

use crate::averager::ConcurrencyAverager;
use crate::histogram::DurationRecorder;
use crate::revision::RevisionKey;

const NS_PER_MS: u64 = 1_000_000;

/// Bytes of a report's entries past which the rest go without their
/// histograms (durations, held time): the counts, concurrency and held
/// requests the autoscaler needs always fit, well inside the activation
/// service's 1 MiB message limit, however many revisions had traffic.
pub const HISTOGRAM_BUDGET_BYTES: usize = 512 * 1024;

/// Status code of requests without a response (and of codes beyond the
/// bound per window).
const NO_STATUS: u32 = 0;

/// How one request ended, as the gate saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// The response status (0: none, e.g. the client left).
    pub status: u32,
    /// From the request headers to the end of the stream.
    pub duration_ns: u64,
    /// How long it was held, if it was.
    pub held_ns: Option<u64>,
    /// The `x-revgate-reason` of the filter's own answer, if it gave one.
    pub refused: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct RevisionStats {
    in_flight: ConcurrencyAverager,
    held: ConcurrencyAverager,
    held_in_window: bool,
    requests: u64,
    responses_5xx: u64,
    durations: BTreeMap<u32, DurationRecorder>,
    upstream: DurationRecorder,
    held_for: DurationRecorder,
    refusals: BTreeMap<&'static str, u64>,
}

impl RevisionStats {
    fn new(window_start_ns: u64) -> Self {
        Self {
            in_flight: ConcurrencyAverager::new(window_start_ns),
            held: ConcurrencyAverager::new(window_start_ns),
            held_in_window: false,
            requests: 0,
            responses_5xx: 0,
            durations: BTreeMap::new(),
            upstream: DurationRecorder::new(),
            held_for: DurationRecorder::new(),
            refusals: BTreeMap::new(),
        }
    }

    /// Starts the next window: the counts restart, the averagers carry on.
    fn clear_counts(&mut self) {
        self.requests = 0;
        self.responses_5xx = 0;
        self.durations.clear();
        self.upstream = DurationRecorder::new();
        self.held_for = DurationRecorder::new();
        self.refusals.clear();
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

    /// A request's stream ended: it is counted once, under its status code.
    pub fn finished(&mut self, key: &RevisionKey, finished: Finished) {
        let stats = self.stats(key);
        stats.requests = stats.requests.saturating_add(1);
        if (500..600).contains(&finished.status) {
            stats.responses_5xx = stats.responses_5xx.saturating_add(1);
        }
        // One entry is kept free for status 0, where codes beyond the bound go.
        let known = stats.durations.contains_key(&finished.status);
        let room = stats.durations.len() + 1 < MAX_STATUS_CODES_PER_REVISION;
        let code = if known || room { finished.status } else { NO_STATUS };
        stats.durations.entry(code).or_default().record(finished.duration_ns);
        let held_ns = finished.held_ns.unwrap_or(0);
        stats.upstream.record(finished.duration_ns.saturating_sub(held_ns));
        if let Some(held_ns) = finished.held_ns {
            stats.held_for.record(held_ns);
        }
        if let Some(reason) = finished.refused {
            let count = stats.refusals.entry(reason).or_insert(0);
            *count = count.saturating_add(1);
        }
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
            stats.clear_counts();
            stats.held_in_window = stats.held.current() > 0;
            busy
        });
        if revisions.is_empty() {
            return None;
        }
        keep_within_budget(&mut revisions);
        Some(MetricsReport {
            node_id: node_id.to_owned(),
            reporter: reporter.to_owned(),
            window_start_unix_ms: window_start_ns / NS_PER_MS,
            window_ms: now_ns.saturating_sub(window_start_ns) / NS_PER_MS,
            revisions,
        })
    }
}

/// Drops the histograms of the entries past [`HISTOGRAM_BUDGET_BYTES`].
fn keep_within_budget(revisions: &mut [RevisionMetrics]) {
    let mut used = 0usize;
    let mut stripped = 0usize;
    for entry in revisions.iter_mut() {
        if used.saturating_add(entry.encoded_len()) > HISTOGRAM_BUDGET_BYTES {
            entry.durations.clear();
            entry.upstream_duration = None;
            entry.held_duration = None;
            stripped += 1;
        }
        used = used.saturating_add(entry.encoded_len());
    }
    if stripped > 0 {
        log::warn!(
            "revgate: {stripped} revisions reported without their duration histograms this window \
             (a report keeps them within {HISTOGRAM_BUDGET_BYTES} bytes)"
        );
    }
}

fn revision_metrics(key: &RevisionKey, stats: &mut RevisionStats, now_ns: u64) -> RevisionMetrics {
    let held_in_window = stats.held_in_window;
    let average_held = stats.held.take_window(now_ns);
    let histogram = |recorder: &DurationRecorder| (recorder.count() > 0).then(|| recorder.to_proto());
    RevisionMetrics {
        namespace: key.namespace.clone(),
        revision: key.revision.clone(),
        average_concurrency: stats.in_flight.take_window(now_ns),
        requests: stats.requests,
        responses_5xx: stats.responses_5xx,
        latency: None,
        held: stats.held.current(),
        in_flight: stats.in_flight.current(),
        average_held_concurrency: held_in_window.then_some(average_held),
        durations: stats
            .durations
            .iter()
            .map(|(code, recorder)| StatusDurations { status_code: *code, duration: Some(recorder.to_proto()) })
            .collect(),
        upstream_duration: histogram(&stats.upstream),
        held_duration: histogram(&stats.held_for),
        refusals: stats
            .refusals
            .iter()
            .map(|(reason, count)| ReasonCount { reason: (*reason).to_owned(), count: *count })
            .collect(),
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
        m.finished(&key, Finished { status: 200, duration_ns: 700 * MS, held_ns: Some(200 * MS), refused: None });
        // One request refused with 503 at once.
        m.finished(
            &key,
            Finished { status: 503, duration_ns: MS, held_ns: None, refused: Some("held-requests-limit") },
        );

        let report = m.take_report(T0 + 1000 * MS, "gw", "gw/1").unwrap();
        assert_eq!((report.node_id.as_str(), report.reporter.as_str()), ("gw", "gw/1"));
        assert_eq!(report.window_start_unix_ms, 1_700_000_000_000);
        assert_eq!(report.window_ms, 1000);
        let [rev] = report.revisions.as_slice() else { panic!("{report:?}") };
        assert_eq!((rev.namespace.as_str(), rev.revision.as_str()), ("default", "hello-00001"));
        assert!((rev.average_concurrency - 0.5).abs() < 1e-9);
        assert!((rev.average_held_concurrency.unwrap() - 0.2).abs() < 1e-9);
        assert_eq!((rev.requests, rev.responses_5xx, rev.held), (2, 1, 0));
        let by_code: Vec<(u32, Vec<u64>)> = rev
            .durations
            .iter()
            .map(|d| (d.status_code, d.duration.clone().unwrap_or_default().bucket_counts))
            .collect();
        assert_eq!(
            by_code,
            vec![
                (200, vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
                (503, vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            ],
            "held time included: 700 ms falls under 0.75 s"
        );
        let upstream = rev.upstream_duration.clone().unwrap();
        assert_eq!((upstream.count, upstream.bucket_counts[7]), (2, 1), "500 ms upstream, under 0.5 s");
        let held = rev.held_duration.clone().unwrap();
        assert_eq!((held.count, held.bucket_counts[6]), (1, 1), "held 200 ms, under 0.25 s");
        assert_eq!(rev.refusals, vec![ReasonCount { reason: "held-requests-limit".into(), count: 1 }]);
    }

    #[test]
    fn long_requests_carry_over_and_idle_revisions_are_forgotten() {
        let key = RevisionKey::new("default", "slow");
        let mut m = Metrics::new(T0);
        m.admitted(&key, T0);
        let first = m.take_report(T0 + 1000 * MS, "gw", "r").unwrap();
        assert_eq!(first.revisions[0].average_concurrency, 1.0);
        assert_eq!(first.revisions[0].requests, 0);
        assert_eq!(first.revisions[0].in_flight, 1, "still in flight when reported");
        assert!(first.revisions[0].durations.is_empty());
        assert_eq!(first.revisions[0].average_held_concurrency, None, "nothing held: absent");
        m.left(&key, T0 + 1500 * MS);
        m.finished(&key, Finished { status: 200, duration_ns: 1500 * MS, held_ns: None, refused: None });
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

#[cfg(test)]
mod bounds {
    use super::*;

    #[test]
    fn a_report_of_many_busy_revisions_keeps_within_its_budget() {
        let mut m = Metrics::new(0);
        for index in 0..4000 {
            let key = RevisionKey::new("default", format!("revision-{index:05}"));
            for status in 200..216 {
                m.finished(&key, Finished { status, duration_ns: 1, held_ns: Some(1), refused: None });
            }
        }
        let report = m.take_report(1_000 * NS_PER_MS, "gw", "r").unwrap();
        assert_eq!(report.revisions.len(), 4000, "every revision's counts are reported");
        assert!(report.revisions.iter().all(|r| r.requests == 16));
        assert!(report.encoded_len() < 1024 * 1024, "{} bytes", report.encoded_len());
        assert!(report.revisions[0].durations.len() == 16 && report.revisions[3999].durations.is_empty());
    }

    #[test]
    fn codes_beyond_the_bound_count_under_status_zero() {
        let key = RevisionKey::new("default", "odd");
        let mut m = Metrics::new(0);
        for status in 200..240 {
            m.finished(&key, Finished { status, duration_ns: 1, held_ns: None, refused: None });
        }
        m.finished(&key, Finished { status: 200, duration_ns: 1, held_ns: None, refused: None });
        let report = m.take_report(1_000 * NS_PER_MS, "gw", "r").unwrap();
        let durations = &report.revisions[0].durations;
        assert_eq!(durations.len(), MAX_STATUS_CODES_PER_REVISION);
        let count = |code: u32| {
            durations.iter().find(|d| d.status_code == code).and_then(|d| d.duration.as_ref()).map_or(0, |h| h.count)
        };
        assert_eq!(count(200), 2, "a code already listed keeps counting");
        assert_eq!(count(NO_STATUS), 40 - (MAX_STATUS_CODES_PER_REVISION as u64 - 1));
        assert_eq!(durations.iter().filter_map(|d| d.duration.as_ref()).map(|h| h.count).sum::<u64>(), 41);
    }
}
