//! The dashboard's history: a bounded ring of per-revision samples, so that
//! a page opened now draws the last minutes at once instead of starting
//! empty, and a page left open fetches only what it has not seen.
//!
//! Pure: the sampler passes the time in. The ring never holds more than
//! [`History::capacity`] points, nor any point older than its window, and a
//! point names only the revisions that had traffic or held requests at the
//! time, so idle revisions cost nothing.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use revgate_model::plan::ObjectKey;
use serde::Serialize;

use crate::activation::RevisionActivity;

/// One revision at one moment, as its sparklines draw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Requests per second over the gateway filters' last windows.
    pub rps: f64,
    /// 5xx responses as a fraction of requests; `None` without requests.
    pub error_rate: Option<f64>,
    /// The worst p99 latency among the filters, in milliseconds; `None`
    /// without requests.
    pub p99_ms: Option<f64>,
    /// Requests held by the gateway at the time.
    pub held: u64,
}

impl Sample {
    /// What the gateway filters report for a revision now; `None` when the
    /// revision is idle (no request and nothing held), which the page draws
    /// as zero.
    pub fn of(activity: &RevisionActivity) -> Option<Self> {
        let totals = &activity.totals;
        if totals.requests == 0 && totals.held == 0 && totals.rps == 0.0 {
            return None;
        }
        let served = totals.requests > 0;
        Some(Self {
            rps: round(totals.rps),
            error_rate: served.then(|| round(totals.responses_5xx as f64 / totals.requests as f64)),
            p99_ms: served.then(|| round(totals.p99_ms)),
            held: totals.held,
        })
    }
}

/// Two decimals are all a sparkline can show; fewer digits, smaller feeds.
fn round(value: f64) -> f64 {
    if value.is_finite() { (value * 100.0).round() / 100.0 } else { 0.0 }
}

/// Every revision with traffic at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Increments with every point; the page asks for the points after the
    /// last one it has.
    pub seq: u64,
    pub at_unix_ms: u64,
    /// By `namespace/name`.
    pub revisions: BTreeMap<String, Sample>,
}

/// What a reader asked for: the points after its cursor, or all of them
/// when its cursor is not from this ring (a first load, or a page that
/// outlived a restart), with `reset` telling it to drop what it has.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Slice {
    pub interval_ms: u64,
    pub window_ms: u64,
    /// Pass as `?since=` next time.
    pub cursor: u64,
    pub reset: bool,
    pub points: Vec<Point>,
}

/// The ring. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct History {
    points: VecDeque<Point>,
    interval: Duration,
    window: Duration,
    next_seq: u64,
}

impl History {
    /// A ring of the last `window`, sampled every `interval`.
    pub fn new(window: Duration, interval: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(1));
        Self { points: VecDeque::new(), interval, window, next_seq: 1 }
    }

    /// The most points the ring holds: one per interval over the window.
    pub fn capacity(&self) -> usize {
        usize::try_from(self.window.as_millis() / self.interval.as_millis()).unwrap_or(usize::MAX).max(1)
    }

    /// Adds a point for `now_ms` from the revisions' activity and drops what
    /// fell out of the window (or beyond the capacity, should the clock jump).
    pub fn record(&mut self, now_ms: u64, activity: &BTreeMap<ObjectKey, RevisionActivity>) {
        let revisions = activity
            .iter()
            .filter_map(|(key, activity)| Sample::of(activity).map(|sample| (key.to_string(), sample)))
            .collect();
        self.points.push_back(Point { seq: self.next_seq, at_unix_ms: now_ms, revisions });
        self.next_seq += 1;
        let oldest = now_ms.saturating_sub(u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX));
        while self.points.front().is_some_and(|point| point.at_unix_ms < oldest) || self.points.len() > self.capacity()
        {
            self.points.pop_front();
        }
    }

    /// The points after `since`. A cursor this ring did not hand out, or
    /// one whose successors already left the ring, gets every point and
    /// `reset`, so that the reader never shows a gap as if it were data.
    pub fn since(&self, since: Option<u64>) -> Slice {
        let last = self.next_seq - 1;
        let first = self.points.front().map_or(self.next_seq, |point| point.seq);
        let (reset, points) = match since {
            Some(cursor) if cursor <= last && cursor + 1 >= first => {
                (false, self.points.iter().filter(|point| point.seq > cursor).cloned().collect())
            }
            _ => (true, self.points.iter().cloned().collect()),
        };
        Slice {
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            window_ms: u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX),
            cursor: last,
            reset,
            points,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::activation::RevisionActivity;
    use crate::metrics::RevisionTotals;

    use super::*;

    const SECOND: u64 = 1_000;

    fn busy(requests: u64, errors: u64, held: u64) -> RevisionActivity {
        RevisionActivity {
            totals: RevisionTotals {
                rps: requests as f64,
                requests,
                responses_5xx: errors,
                held,
                p99_ms: 12.345,
                reporters: 2,
                ..RevisionTotals::default()
            },
            ..RevisionActivity::default()
        }
    }

    fn activity(entries: &[(&str, RevisionActivity)]) -> BTreeMap<ObjectKey, RevisionActivity> {
        entries.iter().map(|(name, a)| (ObjectKey::new("default", *name), a.clone())).collect()
    }

    fn ring() -> History {
        History::new(Duration::from_secs(10), Duration::from_secs(2))
    }

    #[test]
    fn a_point_names_only_revisions_with_traffic_or_held_requests() {
        let mut history = ring();
        let now = activity(&[
            ("busy-00001", busy(40, 10, 0)),
            ("idle-00001", RevisionActivity::default()),
            ("cold-00001", busy(0, 0, 3)),
        ]);
        history.record(100 * SECOND, &now);
        let slice = history.since(None);
        let point = &slice.points[0];
        assert_eq!(point.revisions.keys().collect::<Vec<_>>(), ["default/busy-00001", "default/cold-00001"]);
        let busy = &point.revisions["default/busy-00001"];
        assert_eq!((busy.rps, busy.error_rate, busy.p99_ms, busy.held), (40.0, Some(0.25), Some(12.35), 0));
        let cold = &point.revisions["default/cold-00001"];
        assert_eq!((cold.error_rate, cold.p99_ms, cold.held), (None, None, 3), "no requests: no rate, no latency");
    }

    /// Stepped through time: the ring keeps the window's points and no more.
    #[test]
    fn the_ring_keeps_the_last_window_only() {
        let mut history = ring();
        assert_eq!(history.capacity(), 5);
        let traffic = activity(&[("busy-00001", busy(1, 0, 0))]);
        for step in 0..20 {
            history.record(step * 2 * SECOND, &traffic);
        }
        let slice = history.since(None);
        let times: Vec<u64> = slice.points.iter().map(|p| p.at_unix_ms / SECOND).collect();
        assert_eq!(times, [30, 32, 34, 36, 38], "the last 10 s");
        assert_eq!(slice.cursor, 20);

        // A long pause: everything older than the window leaves with the next point.
        history.record(100 * SECOND, &traffic);
        let times: Vec<u64> = history.since(None).points.iter().map(|p| p.at_unix_ms / SECOND).collect();
        assert_eq!(times, [100]);

        // A clock that jumps back does not make the ring grow past its capacity.
        for step in 0..20 {
            history.record(50 * SECOND + step, &traffic);
        }
        assert_eq!(history.since(None).points.len(), 5);
    }

    #[test]
    fn a_reader_gets_only_what_it_has_not_seen() {
        let mut history = ring();
        let traffic = activity(&[("busy-00001", busy(1, 0, 0))]);
        let first = history.since(None);
        assert!(first.reset && first.points.is_empty(), "an empty ring: {first:?}");
        for step in 0..3 {
            history.record(step * 2 * SECOND, &traffic);
        }
        let all = history.since(Some(first.cursor));
        assert!(!all.reset, "cursor 0 is before the first point");
        assert_eq!(all.points.len(), 3);
        let cursor = all.cursor;

        history.record(6 * SECOND, &traffic);
        let next = history.since(Some(cursor));
        assert!(!next.reset);
        assert_eq!(next.points.iter().map(|p| p.seq).collect::<Vec<_>>(), [4]);
        let none = history.since(Some(next.cursor));
        assert!(!none.reset && none.points.is_empty(), "nothing new: {none:?}");
    }

    #[test]
    fn a_cursor_from_elsewhere_resets_the_reader() {
        let mut history = ring();
        let traffic = activity(&[("busy-00001", busy(1, 0, 0))]);
        for step in 0..10 {
            history.record(step * 2 * SECOND, &traffic);
        }
        // From a control plane that ran longer before a restart.
        let ahead = history.since(Some(1_000));
        assert!(ahead.reset);
        assert_eq!(ahead.points.len(), 5);
        // From a page that slept while its next points left the ring.
        let behind = history.since(Some(2));
        assert!(behind.reset, "points 3 to 5 are gone; the page must not draw them as a gap");
        assert_eq!(behind.points.first().map(|p| p.seq), Some(6));
        // The oldest point's predecessor is still a cursor without a gap.
        assert!(!history.since(Some(5)).reset);
    }
}
