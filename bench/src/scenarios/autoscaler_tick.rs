//! Scenario 5, autoscaler tick: one decision pass over 10,000 revisions with live
//! metrics, in-process, with the very type the control plane ticks per
//! revision: [`RevisionAutoscaler::tick`] (the windows' averages, the
//! decider, the scale-to-zero rules, the scale to ask for).
//!
//! Each revision has Knative's default windows (60 s stable, 6 s panic)
//! filled with a minute of per-second samples that differ between
//! revisions, so the pass reads full windows as it would in production.
//! Between timed passes, two seconds of samples are recorded (the
//! collector's work, timed separately), as the control plane does between
//! ticks. There is no other implementation to run here: the baseline is
//! the goal itself.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use revgate_autoscaler::{RevisionAutoscaler, TICK_INTERVAL};
use revgate_model::autoscaling::{AutoscalerConfig, RevisionScaling};
use serde_json::json;

use super::{Outcome, Size};
use crate::report::{Figure, Goal, Row};
use crate::stats::Samples;

/// Knative's per-revision target in these revisions (`autoscaling.knative.dev/target: 10`).
const TARGET: f64 = 10.0;

struct Revision {
    kpa: RevisionAutoscaler,
    ready: u32,
}

/// A small deterministic generator: the same load in every run, no dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn run(size: Size) -> anyhow::Result<Outcome> {
    let revisions_count = 10_000;
    let passes = size.pick(30, 300);
    // Knative's defaults, with the target as given (and its 70% utilization).
    let mut scaling = RevisionScaling::resolve(&BTreeMap::new(), 0, &AutoscalerConfig::default());
    scaling.target = TARGET;
    scaling.total_value = TARGET / 0.7;
    let mut random = Lcg(7);
    let mut revisions: Vec<Revision> = (0..revisions_count)
        .map(|i| {
            let ready = (i % 8) as u32 + 1;
            let mut kpa = RevisionAutoscaler::new(scaling.clone(), true, ready, 0);
            let _initial = kpa.first_request(false);
            Revision { kpa, ready }
        })
        .collect();

    // Per revision, concurrency around its ready instances × target.
    let mut collect = |revisions: &mut [Revision], now_ms: u64| {
        for revision in revisions.iter_mut() {
            let concurrency = f64::from(revision.ready) * TARGET * (0.5 + random.next());
            revision.kpa.record(now_ms, concurrency, concurrency * 10.0);
        }
    };

    let stable_s = scaling.stable_window.as_secs();
    for second in 0..stable_s {
        collect(&mut revisions, second * 1000);
    }

    let tick_s = TICK_INTERVAL.as_secs();
    let mut now_ms = stable_s * 1000;
    let mut pass_ms = Vec::with_capacity(passes);
    let mut collect_ms = Vec::new();
    let mut scaled = 0u64;
    for _ in 0..passes {
        let started = Instant::now();
        for revision in &mut revisions {
            scaled += u64::from(revision.kpa.tick(now_ms, revision.ready, false).is_some());
        }
        pass_ms.push(started.elapsed().as_secs_f64() * 1e3);

        for _ in 0..tick_s {
            now_ms += 1000;
            let started = Instant::now();
            collect(&mut revisions, now_ms);
            collect_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    std::hint::black_box(scaled);

    let pass = Samples::new(pass_ms);
    let record = Samples::new(collect_ms);
    let goal = "≤ 10 ms (the goal is the baseline)";
    let rows = vec![
        Row::new(format!("decision pass over {revisions_count} revisions, p50"), Figure::millis(pass.median()))
            .goal(Goal::at_most(goal, Figure::millis(pass.median()), "", 10.0)),
        Row::new(format!("decision pass over {revisions_count} revisions, p99"), Figure::millis(pass.percentile(99.0)))
            .goal(Goal::at_most(goal, Figure::millis(pass.percentile(99.0)), "", 10.0)),
        Row::new(
            format!("recording one second of metrics for {revisions_count} revisions, p50"),
            Figure::millis(record.median()),
        ),
    ];
    let notes = vec![
        format!(
            "In-process, one thread: {passes} timed passes, each preceded by {tick_s} s of samples; windows of \
             {} s (stable) and {} s (panic), filled before the first pass.",
            stable_s,
            scaling.panic_window.as_secs()
        ),
        "The control plane's tick also renders each revision's PodAutoscaler status to publish it; that copy is \
         not part of the decision and is not timed here."
            .to_owned(),
        "No other implementation runs here, so the baseline is the goal itself.".to_owned(),
    ];
    let raw = json!({
        "revisions": revisions_count,
        "passes": passes,
        "pass_ms": { "p50": pass.median(), "p99": pass.percentile(99.0), "max": pass.max(), "mean": pass.mean() },
        "collect_ms": { "p50": record.median(), "p99": record.percentile(99.0) },
        "tick_interval_s": Duration::from_secs(tick_s).as_secs(),
    });
    Ok(Outcome { rows, load_commands: Vec::new(), notes, raw })
}
