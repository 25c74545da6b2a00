//! Rate limits the activation service's log lines per kind of event, so a
//! flood of requests (made-up revisions, clients over a limit) writes a
//! line now and then with a count, not a line per request that fills the
//! disk. Pure: time is a parameter.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// At most one line per kind of event in this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Kind {
    logged_at: Instant,
    suppressed: u64,
}

/// When each kind of event was last logged, and how many were not since.
#[derive(Debug, Default)]
pub struct LogThrottle {
    kinds: BTreeMap<&'static str, Kind>,
}

impl LogThrottle {
    /// An event of `kind` happened at `now`: `Some(n)` if a line may be
    /// written, `n` being the events of that kind left unlogged since the
    /// last line; `None` if it must be left out (and is counted).
    pub fn admit(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        match self.kinds.get_mut(kind) {
            Some(entry) if now.saturating_duration_since(entry.logged_at) < LOG_INTERVAL => {
                entry.suppressed += 1;
                None
            }
            Some(entry) => {
                let suppressed = entry.suppressed;
                *entry = Kind { logged_at: now, suppressed: 0 };
                Some(suppressed)
            }
            None => {
                self.kinds.insert(kind, Kind { logged_at: now, suppressed: 0 });
                Some(0)
            }
        }
    }

    /// The kinds whose events were left out and whose interval has passed,
    /// with their counts, so that a flood that stops is still counted in
    /// the log (at most two intervals after its last line).
    pub fn flush(&mut self, now: Instant) -> Vec<(&'static str, u64)> {
        let mut flushed = Vec::new();
        for (kind, entry) in &mut self.kinds {
            if entry.suppressed > 0 && now.saturating_duration_since(entry.logged_at) >= LOG_INTERVAL {
                flushed.push((*kind, entry.suppressed));
                *entry = Kind { logged_at: now, suppressed: 0 };
            }
        }
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_and_interval_with_the_count_of_those_left_out() {
        let t0 = Instant::now();
        let mut throttle = LogThrottle::default();
        assert_eq!(throttle.admit("unknown-revision", t0), Some(0), "the first is logged");
        for i in 1..=40_000u64 {
            let now = t0 + LOG_INTERVAL * 2 / 3 * u32::try_from(i % 2).expect("small");
            assert_eq!(throttle.admit("unknown-revision", now), None);
        }
        assert_eq!(throttle.admit("filter-vm-limit", t0), Some(0), "another kind has its own interval");
        assert_eq!(throttle.admit("unknown-revision", t0 + LOG_INTERVAL), Some(40_000), "the next line counts them");
        assert_eq!(throttle.admit("unknown-revision", t0 + LOG_INTERVAL), None);
        assert_eq!(throttle.admit("unknown-revision", t0 + LOG_INTERVAL * 2), Some(1));
    }

    #[test]
    fn a_flood_that_stops_is_still_counted_once_its_interval_passed() {
        let t0 = Instant::now();
        let mut throttle = LogThrottle::default();
        for _ in 0..1_000 {
            throttle.admit("unknown-revision", t0);
        }
        throttle.admit("quiet", t0);
        assert!(throttle.flush(t0 + LOG_INTERVAL / 2).is_empty(), "not before the interval");
        assert_eq!(throttle.flush(t0 + LOG_INTERVAL), vec![("unknown-revision", 999)]);
        assert!(throttle.flush(t0 + LOG_INTERVAL * 3).is_empty(), "counted once");
        assert_eq!(throttle.admit("unknown-revision", t0 + LOG_INTERVAL * 3 / 2), None, "the flush was its line");
    }
}
