use super::*;

const S: u64 = 1_000;

fn linear(secs: u64) -> MetricWindow {
    MetricWindow::new(Duration::from_secs(secs), Algorithm::Linear)
}

fn weighted(secs: u64) -> MetricWindow {
    MetricWindow::new(Duration::from_secs(secs), Algorithm::WeightedExponential)
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() < 1e-12, "{what}: got {got}, want {want}");
}

#[test]
fn smoothing_coefficients_match_knative() {
    for (buckets, want) in [(100, 0.2), (60, 0.2), (40, 0.20567), (6, 0.78456)] {
        let got = smoothing_coefficient(buckets);
        assert!((got - want).abs() < 1e-5, "buckets={buckets}: got {got}, want {want}");
    }
}

#[test]
fn values_in_one_second_add_up() {
    // Knative "granularity = 1s": 1 then 10 in the same second, then 1, gap, 1.
    let base = 7 * S;
    let mut w = linear(120);
    w.record(base, 1.0);
    w.record(base + 100, 10.0);
    w.record(base + S, 1.0);
    w.record(base + 3 * S, 1.0);
    // 11 + 1 + 0 + 1 over four written seconds.
    assert_eq!(w.average(base + 3 * S), 13.0 / 4.0);
}

#[test]
fn many_records_per_second_sum() {
    let mut w = linear(60);
    for p in 0..5u64 {
        for t in 0..5u64 {
            w.record((p + 1) * S, (p + t) as f64);
        }
    }
    assert_eq!(w.average(5 * S), 100.0 / 5.0);
}

#[test]
fn out_of_order_seconds_sum() {
    let mut w = linear(60);
    for (p, d) in [0u64, 3, 2, 1, 4].into_iter().enumerate() {
        for t in 0..5u64 {
            w.record(d * S, (p as u64 + t) as f64);
        }
    }
    assert_eq!(w.average(4 * S), 100.0 / 5.0);
}

#[test]
fn linear_average_follows_knative_bucketing_test() {
    let now = 1_000 * S + 250;
    let mut w = linear(5);
    // The first write bounds the average: 1, not 1/5.
    w.record(now, 1.0);
    assert_eq!(w.average(now), 1.0);
    for i in 1..5u64 {
        w.record(now + i * S, (i + 1) as f64);
    }
    assert_eq!(w.average(now + 4 * S), 15.0 / 5.0);
    // A query lagging behind the last write reads the full window.
    assert_eq!(w.average(now + 3_600), 15.0 / 5.0);
    // Short hole: the two oldest seconds have left the window.
    assert_eq!(w.average(now + 6 * S), (15.0 - 1.0 - 2.0) / 3.0);
    // Long hole: nothing for a window.
    assert_eq!(w.average(now + 10 * S), 0.0);
    // Writing after a short hole zeroes the skipped seconds.
    w.record(now + 6 * S, 91.0);
    assert_eq!(w.average(now + 6 * S), (15.0 - 1.0 - 2.0 + 91.0) / 5.0);

    // Much later: the window restarts from this write.
    let now = now + 60 * S;
    w.record(now, 1984.0);
    assert_eq!(w.average(now), 1984.0);
    // A late sample extends the written span backwards.
    w.record(now - 3 * S, 4.0);
    assert_eq!(w.average(now), (4.0 + 1984.0) / 4.0);
    let now = now + S;
    w.record(now, 5.0);
    assert_eq!(w.average(now), (4.0 + 1984.0 + 5.0) / 5.0);
    w.record(now - 3 * S, 10.0);
    assert_eq!(w.average(now), (4.0 + 10.0 + 1984.0 + 5.0) / 5.0);
    // Samples a window old or older are ignored.
    w.record(now - 6 * S, 10.0);
    assert_eq!(w.average(now), (4.0 + 10.0 + 1984.0 + 5.0) / 5.0);
    w.record(now - 5 * S, 10.0);
    assert_eq!(w.average(now), (4.0 + 10.0 + 1984.0 + 5.0) / 5.0);
    // Exactly a window of silence also restarts the window.
    w.record(now + 5 * S, 10.0);
    assert_eq!(w.average(now + 5 * S), 10.0);
}

#[test]
fn descending_records_fill_every_second() {
    let mut w = linear(5);
    for i in (0..=8u64).rev() {
        w.record(i * S, 5.0);
    }
    assert_eq!(w.average(5 * S), 5.0);
}

#[test]
fn holes_are_zeroed_when_writing_again() {
    let mut w = linear(5);
    for i in 0..5u64 {
        w.record(i * S, (i + 1) as f64);
    }
    assert_eq!(w.average(4 * S), 3.0);
    // Seconds 5..7 had nothing and second 8 reuses second 3's slot: the
    // window now holds 5, 0, 0, 0, 2.
    w.record(8 * S, 2.0);
    assert_eq!(w.average(8 * S), (5.0 + 2.0) / 5.0);
}

#[test]
fn averages_are_rounded_to_six_decimals() {
    let mut w = linear(3);
    w.record(0, 1.0);
    w.record(S, 1.0);
    w.record(2 * S, 0.0);
    assert_eq!(w.average(2 * S), 0.666667);
    assert_eq!(round_average(3.6e-17), 0.0);
    assert_eq!(round_average(12345.0), 12345.0);
}

#[test]
fn weighted_average_follows_knative_bucketing_test() {
    let now = 500 * S + 700;
    let mut w = weighted(5);
    let m = w.smoothing();
    w.record(now, 2.0);
    let mut want = 2.0 * m;
    assert_close(w.average(now), want, "one write");
    // A second later, no write: the only value weighs one step less.
    want *= 1.0 - m;
    assert_close(w.average(now + S), want, "one silent second");
    w.record(now + S, 2.0);
    want += 2.0 * m;
    assert_close(w.average(now + S), want, "second write");
    for i in 0..5u64 {
        w.record(now + (2 + i) * S, (i + 2) as f64);
    }
    let k = 1.0 - m;
    let want = 6.0 * m + 5.0 * m * k + 4.0 * m * k * k + 3.0 * m * k * k * k + 2.0 * m * k * k * k * k;
    assert_close(w.average(now + 6 * S), want, "full window");
    assert_eq!(w.average(now + 16 * S), 0.0, "empty window");
}

#[test]
fn weighted_average_of_a_known_series() {
    // Knative's resize test records 1..=6 over a 5 s window (6 overwrites 1).
    let mut w = weighted(5);
    for i in 0..6u64 {
        w.record(i * S, (i + 1) as f64);
    }
    assert_eq!((w.average(5 * S) * 1000.0).round() / 1000.0, 5.812);
}

#[test]
fn emptiness_is_a_window_without_writes() {
    let mut w = linear(5);
    assert!(w.is_empty(0));
    w.record(10 * S, 1.0);
    assert!(!w.is_empty(15 * S));
    assert!(w.is_empty(16 * S));
}

#[test]
fn panic_window_is_rounded_and_at_least_a_second() {
    let spec = |secs: u64, pct: f64| WindowSpec {
        stable_window: Duration::from_secs(secs),
        panic_window_percentage: pct,
        algorithm: Algorithm::Linear,
    };
    assert_eq!(spec(60, 10.0).panic_window(), Duration::from_secs(6));
    assert_eq!(spec(6, 1.0).panic_window(), Duration::from_secs(1));
    assert_eq!(spec(45, 10.0).panic_window(), Duration::from_secs(5)); // 4.5 s rounds up
    assert_eq!(spec(44, 10.0).panic_window(), Duration::from_secs(4));
    assert_eq!(spec(3600, 100.0).panic_window(), Duration::from_secs(3600));
}

#[test]
fn revision_windows_pick_the_metric() {
    let mut w = RevisionWindows::new(&WindowSpec::default());
    assert_eq!(w.averages(0, Metric::Concurrency), None);
    for t in 0..60u64 {
        let concurrency = if t < 54 { 0.0 } else { 12.0 };
        w.record(t * S, concurrency, 2.0 * concurrency);
    }
    // Stable: 6 busy seconds of 60; panic: the last 6 seconds, all busy.
    assert_eq!(w.averages(59 * S, Metric::Concurrency), Some((1.2, 12.0)));
    assert_eq!(w.averages(59 * S, Metric::Rps), Some((2.4, 24.0)));
    // Long after the last sample, the load reads as zero rather than unknown.
    assert_eq!(w.averages(600 * S, Metric::Concurrency), Some((0.0, 0.0)));
}

#[test]
fn max_window_follows_knative_time_window_test() {
    /// (ms after the start, value) pairs.
    type Records = &'static [(u64, i32)];
    let cases: [(&str, Records, i32); 4] = [
        ("single value", &[(0, 5)], 5),
        ("two values in same second", &[(0, 6), (500, 5)], 6),
        ("two values", &[(0, 5), (1_000, 8)], 8),
        ("time gap", &[(0, 5), (6_000, 4)], 4),
    ];
    for (name, values, want) in cases {
        let mut m = MaxWindow::new(Duration::from_secs(5), Duration::from_secs(1));
        for &(at, v) in values {
            m.record(40_000 + at, v);
        }
        assert_eq!(m.current(), want, "{name}");
    }
}

#[test]
fn max_window_lets_older_maxima_age_out_in_order() {
    let mut m = MaxWindow::new(Duration::from_secs(10), Duration::from_secs(2));
    m.record(0, 9);
    m.record(2_000, 7);
    m.record(4_000, 3);
    assert_eq!(m.current(), 9);
    m.record(10_000, 1); // slot 5: slot 0 has aged out
    assert_eq!(m.current(), 7);
    m.record(12_000, 1);
    assert_eq!(m.current(), 3);
    m.record(14_000, 1);
    assert_eq!(m.current(), 1);
    m.record(14_500, 2); // same slot keeps the larger
    assert_eq!(m.current(), 2);
}
