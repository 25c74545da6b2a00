//! Time windows over the metric stream, as Knative's autoscaler keeps them.
//!
//! - [`MetricWindow`]: per-second buckets of a revision-total metric, averaged
//!   over a stable or a panic window, either linearly or with exponentially
//!   decaying weights ([`Algorithm`]).
//! - [`RevisionWindows`]: the four windows a revision needs (stable and panic,
//!   for concurrency and for requests per second) behind one `record` call.
//! - [`MaxWindow`]: the largest value seen over a sliding window of time, which
//!   the decider uses to delay scale-downs (`scale-down-delay`).
//!
//! Time is a parameter in milliseconds on an arbitrary monotonic origin. Bucket
//! boundaries fall on whole seconds of that origin, which is what makes two
//! samples "the same second".

use std::collections::VecDeque;
use std::time::Duration;

use crate::decider::Metric;

/// Width of one metric bucket. Knative's collector scrapes every second and
/// buckets by the second (`BucketSize`), so finer buckets would add nothing.
pub const BUCKET: Duration = Duration::from_secs(1);

const BUCKET_MS: u64 = 1_000;

/// The weights of the exponential average must add up to at least this much
/// over a full window, so the window still means something.
const WEIGHT_PRECISION: f64 = 0.9999;

/// Lower bound of the smoothing coefficient. Below it, long windows would
/// weigh every bucket about the same and the average would stop favouring
/// recent data.
const MIN_SMOOTHING: f64 = 0.2;

/// Linear averages are rounded to this many decimals, so that float noise
/// (`3.6e-17` instead of 0) cannot turn into an extra pod through `ceil`.
const AVERAGE_DECIMALS: i32 = 6;

/// How a window's buckets become one number (`metric-aggregation-algorithm`):
/// the model's `Aggregation`, under the name the windows use for it.
pub use revgate_model::autoscaling::Aggregation as Algorithm;

/// Whole milliseconds of a duration, saturating far beyond any real window.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Knative's smoothing coefficient for `buckets` buckets:
/// `α = max(1 − (1 − 0.9999)^(1/buckets), 0.2)`.
///
/// It is the smallest α whose weights over a full window sum to 0.9999; a
/// 60-bucket window gets the floor 0.2, a 6-bucket one about 0.78456.
pub fn smoothing_coefficient(buckets: u64) -> f64 {
    let exact = 1.0 - (1.0 - WEIGHT_PRECISION).powf(1.0 / buckets as f64);
    exact.max(MIN_SMOOTHING)
}

fn round_average(value: f64) -> f64 {
    let scale = 10f64.powi(AVERAGE_DECIMALS);
    (value * scale).round() / scale
}

/// A ring of per-second sums covering one window.
///
/// The ring remembers which seconds it has seen (`first_write_ms` ..=
/// `last_write_ms`) so an average over a young or a quiet window divides by the
/// seconds that could hold data, not by the whole window.
#[derive(Debug, Clone)]
struct Buckets {
    values: Vec<f64>,
    window_ms: u64,
    /// Start of the oldest second written since the window last emptied.
    first_write_ms: u64,
    /// Start of the newest second written; `None` before the first write.
    last_write_ms: Option<u64>,
    /// Sum of every slot of `values`, kept so that averages need no full scan.
    total: f64,
}

impl Buckets {
    fn new(window: Duration) -> Self {
        let window_ms = duration_ms(window);
        // At least one bucket, so that a zero-length window degrades to "the
        // current second" instead of dividing by zero.
        let len = window_ms.div_ceil(BUCKET_MS).max(1);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        Self { values: vec![0.0; len], window_ms, first_write_ms: 0, last_write_ms: None, total: 0.0 }
    }

    fn len(&self) -> u64 {
        self.values.len() as u64
    }

    /// Ring slot of the second with index `second` (milliseconds / 1000).
    fn slot(&self, second: u64) -> usize {
        // The remainder is below `values.len()`, so it fits a usize.
        usize::try_from(second % self.len()).unwrap_or(0)
    }

    fn restart_at(&mut self, bucket_ms: u64) {
        self.values.fill(0.0);
        self.total = 0.0;
        self.first_write_ms = bucket_ms;
        self.last_write_ms = Some(bucket_ms);
    }

    fn record(&mut self, now_ms: u64, value: f64) {
        let bucket_ms = now_ms - now_ms % BUCKET_MS;
        match self.last_write_ms {
            None => self.restart_at(bucket_ms),
            Some(last) if last != bucket_ms => {
                if bucket_ms.saturating_add(self.window_ms) <= last {
                    // Older than the window reaches: it can no longer count.
                    return;
                }
                // A late sample can extend the written span backwards.
                self.first_write_ms = self.first_write_ms.min(bucket_ms);
                if bucket_ms > last {
                    if bucket_ms - last >= self.window_ms {
                        // A whole window passed without data: start afresh, so the
                        // average covers only the seconds from now on.
                        self.restart_at(bucket_ms);
                    } else {
                        // Seconds skipped since the last write held no data; their
                        // slots still hold values from a window ago.
                        for second in last / BUCKET_MS + 1..=bucket_ms / BUCKET_MS {
                            let slot = self.slot(second);
                            self.total -= self.values[slot];
                            self.values[slot] = 0.0;
                        }
                        self.last_write_ms = Some(bucket_ms);
                    }
                }
            }
            Some(_) => {}
        }
        let slot = self.slot(now_ms / BUCKET_MS);
        self.values[slot] += value;
        self.total += value;
    }

    /// Seconds between the first and the last write, both included.
    fn written_seconds(&self, last_ms: u64) -> u64 {
        last_ms.saturating_sub(self.first_write_ms) / BUCKET_MS + 1
    }

    fn linear_average(&self, now_ms: u64) -> f64 {
        let Some(last) = self.last_write_ms else { return 0.0 };
        let now_bucket = now_ms - now_ms % BUCKET_MS;
        if now_bucket <= last {
            let seconds = self.written_seconds(last).min(self.len());
            return round_average(self.total / seconds as f64);
        }
        if now_bucket - last >= self.window_ms {
            // Nothing for a whole window: the metric is zero, not unknown.
            return 0.0;
        }
        // Seconds after the last write have slid out of the window's far end:
        // drop what they held, and count only the seconds still covered.
        let (from, to) = (last / BUCKET_MS, now_bucket / BUCKET_MS);
        let mut sum = self.total;
        for second in from + 1..=to {
            sum -= self.values[self.slot(second)];
        }
        let seconds = self.written_seconds(last).min(self.len() - (to - from));
        round_average(sum / seconds as f64)
    }

    fn weighted_average(&self, now_ms: u64, alpha: f64) -> f64 {
        let Some(last) = self.last_write_ms else { return 0.0 };
        let now_bucket = now_ms - now_ms % BUCKET_MS;
        if now_bucket > last && now_bucket - last > self.window_ms {
            return 0.0;
        }
        let len = self.len();
        let mut weight = alpha;
        let mut newest_to_read = len;
        if now_bucket > last {
            // Every silent second since the last write is a zero at the head of
            // the series: skip them by decaying the first weight directly.
            let silent = (now_bucket - last) / BUCKET_MS;
            weight *= (1.0 - alpha).powf(silent as f64);
            newest_to_read = len.saturating_sub(silent);
        }
        let newest = last / BUCKET_MS;
        let mut sum = 0.0;
        for age in 0..newest_to_read {
            // `age < len`, so adding `len` keeps the subtraction non-negative.
            sum += self.values[self.slot(newest % len + len - age)] * weight;
            weight *= 1.0 - alpha;
        }
        sum
    }

    fn is_empty(&self, now_ms: u64) -> bool {
        let now_bucket = now_ms - now_ms % BUCKET_MS;
        match self.last_write_ms {
            None => true,
            Some(last) => now_bucket.saturating_sub(last) > self.window_ms,
        }
    }
}

/// One metric averaged over one window (Knative's `TimedFloat64Buckets` and
/// `WeightedFloat64Buckets`).
///
/// Values recorded in the same second add up: each sample is a revision-total
/// (from the gateway, or from several reporters), not a reading to average.
///
/// The linear average divides by the seconds that could hold data: one sample
/// of 1 gives 1, not 1/60. If nothing arrives for a while, the seconds that have
/// slid out of the window leave both the sum and the count; after a whole window
/// of silence the average is 0. Averages are rounded to 6 decimals.
///
/// The weighted-exponential average is `Σ bucket[newest − i] · α(1 − α)^(i + s)`
/// where `s` counts the silent seconds since the last write and
/// α = [`smoothing_coefficient`]`(buckets)`.
#[derive(Debug, Clone)]
pub struct MetricWindow {
    buckets: Buckets,
    algorithm: Algorithm,
    smoothing: f64,
}

impl MetricWindow {
    /// A window of `length` (rounded up to whole seconds for its buckets).
    pub fn new(length: Duration, algorithm: Algorithm) -> Self {
        let buckets = Buckets::new(length);
        let smoothing = smoothing_coefficient(buckets.len());
        Self { buckets, algorithm, smoothing }
    }

    /// Adds `value` to the second containing `now_ms`.
    ///
    /// Samples may arrive slightly out of order; a sample older than the window
    /// is dropped.
    pub fn record(&mut self, now_ms: u64, value: f64) {
        self.buckets.record(now_ms, value);
    }

    /// The window's average as of `now_ms`; 0 when nothing was recorded in the
    /// last window.
    pub fn average(&self, now_ms: u64) -> f64 {
        match self.algorithm {
            Algorithm::Linear => self.buckets.linear_average(now_ms),
            Algorithm::WeightedExponential => self.buckets.weighted_average(now_ms, self.smoothing),
        }
    }

    /// Whether nothing was recorded within a window of `now_ms`.
    pub fn is_empty(&self, now_ms: u64) -> bool {
        self.buckets.is_empty(now_ms)
    }

    /// The smoothing coefficient α (meaningful for the weighted algorithm).
    pub fn smoothing(&self) -> f64 {
        self.smoothing
    }
}

/// The window settings of a revision: `window`, `panic-window-percentage` and
/// `metric-aggregation-algorithm`.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    /// The stable window (Knative default 60 s).
    pub stable_window: Duration,
    /// The panic window as a percentage of the stable window (default 10).
    pub panic_window_percentage: f64,
    /// How buckets are averaged (default linear).
    pub algorithm: Algorithm,
}

impl Default for WindowSpec {
    fn default() -> Self {
        Self { stable_window: Duration::from_secs(60), panic_window_percentage: 10.0, algorithm: Algorithm::Linear }
    }
}

impl WindowSpec {
    /// `round(stable window × percentage / 100)` to the second, at least one
    /// bucket: 6 s with the defaults.
    pub fn panic_window(&self) -> Duration {
        let exact_ns = self.stable_window.as_nanos() as f64 * self.panic_window_percentage / 100.0;
        // Truncate to whole nanoseconds, then round half up to the second; a
        // negative or NaN percentage saturates to 0 and takes the floor.
        let ns = exact_ns as u64;
        let secs = ns / 1_000_000_000 + u64::from(ns % 1_000_000_000 >= 500_000_000);
        Duration::from_secs(secs).max(BUCKET)
    }
}

#[derive(Debug, Clone)]
struct StableAndPanic {
    stable: MetricWindow,
    panic: MetricWindow,
}

impl StableAndPanic {
    fn record(&mut self, now_ms: u64, value: f64) {
        self.stable.record(now_ms, value);
        self.panic.record(now_ms, value);
    }
}

/// Everything the decider reads about one revision's load: stable and panic
/// windows of concurrency and of requests per second.
///
/// The caller records one sample per second while the revision has pods or
/// held requests, including zeros: an idle second must count as idle, or a
/// quiet window keeps the average of its last busy seconds.
#[derive(Debug, Clone)]
pub struct RevisionWindows {
    concurrency: StableAndPanic,
    rps: StableAndPanic,
    recorded: bool,
}

impl RevisionWindows {
    /// Empty windows for `spec`.
    pub fn new(spec: &WindowSpec) -> Self {
        Self::from_windows(spec.stable_window, spec.panic_window(), spec.algorithm)
    }

    /// Empty windows of the given lengths, for a caller that has resolved the
    /// panic window already (see [`WindowSpec::panic_window`]).
    pub fn from_windows(stable: Duration, panic: Duration, algorithm: Algorithm) -> Self {
        let pair = || StableAndPanic {
            stable: MetricWindow::new(stable, algorithm),
            panic: MetricWindow::new(panic, algorithm),
        };
        Self { concurrency: pair(), rps: pair(), recorded: false }
    }

    /// Adds one sample of revision-total concurrency and requests per second.
    pub fn record(&mut self, now_ms: u64, concurrency: f64, rps: f64) {
        self.concurrency.record(now_ms, concurrency);
        self.rps.record(now_ms, rps);
        self.recorded = true;
    }

    /// `(stable, panic)` averages of `metric` at `now_ms`, or `None` if nothing
    /// was ever recorded, in which case the decider should skip its tick.
    ///
    /// Knative also skips ticks once a whole stable window has passed without a
    /// sample. Here such a window averages 0 instead: the gateway stops
    /// reporting a revision that gets no traffic, and a revision with no traffic
    /// must still be able to scale to zero.
    pub fn averages(&self, now_ms: u64, metric: Metric) -> Option<(f64, f64)> {
        if !self.recorded {
            return None;
        }
        let pair = match metric {
            Metric::Concurrency => &self.concurrency,
            Metric::Rps => &self.rps,
        };
        Some((pair.stable.average(now_ms), pair.panic.average(now_ms)))
    }
}

/// The largest value recorded over the last `length` of time, with time cut
/// into `granularity` slots (Knative's `max.TimeWindow`).
///
/// The decider records its recommendation here on every tick and acts on the
/// maximum, so a scale-down takes effect only once the higher values have
/// aged out: that is `scale-down-delay`.
///
/// It keeps a deque of (slot, value) with strictly decreasing values: a value
/// that is both older and not larger than a newer one can never be the maximum
/// again, so each record costs amortised O(1).
#[derive(Debug, Clone)]
pub struct MaxWindow {
    granularity_s: u64,
    slots: u64,
    maxima: VecDeque<(u64, i32)>,
}

impl MaxWindow {
    /// A window covering `ceil(length / granularity)` slots. The granularity is
    /// counted in whole seconds, at least one.
    pub fn new(length: Duration, granularity: Duration) -> Self {
        let granularity_s = granularity.as_secs().max(1);
        let granularity_ns = u128::from(granularity_s) * 1_000_000_000;
        let slots = length.as_nanos().div_ceil(granularity_ns).max(1);
        let slots = u64::try_from(slots).unwrap_or(u64::MAX);
        Self { granularity_s, slots, maxima: VecDeque::new() }
    }

    /// Records `value` at `now_ms`. Several values in one slot keep the largest.
    pub fn record(&mut self, now_ms: u64, value: i32) {
        let slot = now_ms / 1_000 / self.granularity_s;
        let mut value = value;
        while self.maxima.back().is_some_and(|&(_, v)| v <= value) {
            self.maxima.pop_back();
        }
        while self.maxima.front().is_some_and(|&(s, _)| slot.saturating_sub(s) >= self.slots) {
            self.maxima.pop_front();
        }
        if let Some(&(s, v)) = self.maxima.back()
            && s == slot
        {
            value = value.max(v);
            self.maxima.pop_back();
        }
        self.maxima.push_back((slot, value));
    }

    /// The largest value of the window as of the last record; 0 before any.
    pub fn current(&self) -> i32 {
        self.maxima.front().map_or(0, |&(_, v)| v)
    }
}

#[cfg(test)]
mod tests;
