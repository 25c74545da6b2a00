//! Replays a load trace through the whole autoscaler, to see (and chart) how
//! a revision would scale.
//!
//! Every simulated second: pods whose start delay has passed become ready;
//! the trace's value is recorded in the [`RevisionWindows`]; the [`Decider`]
//! ticks every [`TICK_INTERVAL`], or at once when it last said 0 and load
//! arrives (the poke); the [`Scaler`] reconciles; and the replica count it
//! applies takes effect: new pods become ready `pod_start_ms` later, removed
//! pods go at once (the newest first). A pod is assumed to take load up to the
//! target, so the observed metric is the trace itself; requests count as held
//! by the gateway while there is load and no ready pod.
//!
//! The output is one [`SimulationPoint`] per second, as CSV ([`to_csv`]) or
//! as a self-contained SVG chart ([`to_svg`]).

use std::fmt::Write;

use crate::decider::{Decider, DeciderSpec, Metric, Recommendation, TICK_INTERVAL};
use crate::scaler::{Scaler, ScalerSpec};
use crate::window::{RevisionWindows, WindowSpec};

/// The state of the simulated revision at the end of one second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulationPoint {
    /// Seconds since the revision was created.
    pub t_s: u64,
    /// The metric observed in that second (the trace value).
    pub observed: f64,
    /// Replicas requested (ready or starting).
    pub desired: u32,
    /// Replicas ready.
    pub ready: u32,
}

/// Replays `trace` (one revision-total value of the decider's metric per
/// second) for a revision created at second 0 with its initial scale.
///
/// `windows` are the metric collection's settings, the specs the decider's
/// and the reconciler's; all three should agree on the stable window, as
/// they do when resolved from one revision.
pub fn simulate(
    trace: &[f64],
    decider_spec: &DeciderSpec,
    windows: &WindowSpec,
    scaler_spec: &ScalerSpec,
    pod_start_ms: u64,
) -> Vec<SimulationPoint> {
    let tick_s = TICK_INTERVAL.as_secs().max(1);
    let initial = scaler_spec.effective_initial_scale();
    let mut metrics = RevisionWindows::new(windows);
    let mut decider = Decider::new(decider_spec.clone(), 0, 0);
    let mut scaler = Scaler::new(scaler_spec.clone(), 0);
    let mut recommendation = Recommendation::before_first_tick(decider_spec, initial);
    let mut pods = Pods::default();
    pods.resize(initial, pod_start_ms);

    let mut points = Vec::with_capacity(trace.len());
    for (t_s, &observed) in (0u64..).zip(trace) {
        let now_ms = t_s * 1_000;
        let ready = pods.ready(now_ms);
        metrics.record(now_ms, observed, observed);

        let poke = recommendation.desired == 0 && observed > 0.0;
        if (t_s % tick_s == 0 || poke)
            && let Some((stable, panic)) = metrics.averages(now_ms, decider_spec.metric)
        {
            recommendation = decider.scale(now_ms, ready, stable, panic);
        }

        let held = observed > 0.0 && ready == 0;
        let decision = scaler.step(now_ms, &recommendation, ready, held);
        if let Some(replicas) = decision.apply {
            pods.resize(replicas, now_ms.saturating_add(pod_start_ms));
        }
        points.push(SimulationPoint { t_s, observed, desired: pods.requested(), ready: pods.ready(now_ms) });
    }
    points
}

/// The simulated replicas, as batches of (ready at, count) in the order they
/// were requested, so that a huge scale costs no more than a small one.
#[derive(Debug, Default)]
struct Pods {
    batches: Vec<(u64, u32)>,
}

impl Pods {
    fn requested(&self) -> u32 {
        self.batches.iter().fold(0u32, |sum, &(_, n)| sum.saturating_add(n))
    }

    fn ready(&self, now_ms: u64) -> u32 {
        self.batches.iter().filter(|&&(at, _)| at <= now_ms).fold(0u32, |sum, &(_, n)| sum.saturating_add(n))
    }

    /// Sets the replica count: new replicas are ready at `ready_at_ms`; on a
    /// scale-down the replicas requested last go first.
    fn resize(&mut self, replicas: u32, ready_at_ms: u64) {
        let requested = self.requested();
        if replicas > requested {
            self.batches.push((ready_at_ms, replicas - requested));
            return;
        }
        let mut excess = requested - replicas;
        while excess > 0 {
            let Some(last) = self.batches.last_mut() else { break };
            let removed = last.1.min(excess);
            last.1 -= removed;
            excess -= removed;
            if last.1 == 0 {
                self.batches.pop();
            }
        }
    }
}

/// The points as CSV with the header `t_s,observed,desired,ready`.
pub fn to_csv(points: &[SimulationPoint]) -> String {
    let mut csv = String::from("t_s,observed,desired,ready\n");
    for p in points {
        // Writing to a String cannot fail.
        let _ = writeln!(csv, "{},{},{},{}", p.t_s, p.observed, p.desired, p.ready);
    }
    csv
}

// ----- SVG ----------------------------------------------------------------

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = WIDTH - 80.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = HEIGHT - 60.0;

const OBSERVED_COLOUR: &str = "#1f77b4";
const DESIRED_COLOUR: &str = "#ff7f0e";
const READY_COLOUR: &str = "#2ca02c";

/// A tick step of 1, 2 or 5 times a power of ten giving about five ticks up
/// to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = match raw / magnitude {
        n if n <= 1.0 => 1.0,
        n if n <= 2.0 => 2.0,
        n if n <= 5.0 => 5.0,
        _ => 10.0,
    };
    step * magnitude
}

/// An axis from 0 to a round number at or above `max`, with its tick step.
/// `whole` keeps ticks on whole numbers (pods, seconds).
fn axis(max: f64, whole: bool) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 { max } else { 1.0 };
    let mut step = tick_step(max);
    if whole {
        step = step.max(1.0).round();
    }
    ((max / step).ceil() * step, step)
}

fn label(value: f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        format!("{}", value.round() as i64)
    } else {
        let text = format!("{value:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The points of `line` where it bends: the inner points of a horizontal run
/// add nothing to the drawing and would only bloat it.
fn corners(line: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut kept = Vec::with_capacity(line.len());
    for (i, &point) in line.iter().enumerate() {
        let flat_before = i > 0 && line[i - 1].1 == point.1;
        let flat_after = i + 1 < line.len() && line[i + 1].1 == point.1;
        if !(flat_before && flat_after) {
            kept.push(point);
        }
    }
    kept
}

/// A line chart of a simulation: the observed metric (left axis) and the
/// desired and ready pods (right axis) over time, with a legend. The SVG is
/// self-contained: no scripts, fonts or stylesheets to fetch.
pub fn to_svg(points: &[SimulationPoint], metric: Metric) -> String {
    let t_max = points.iter().map(|p| p.t_s).max().unwrap_or(0) as f64;
    let (t_top, t_step) = axis(t_max, true);
    // A tenth of headroom keeps the lines off the frame and apart from each
    // other when the load and the pods peak together.
    let (m_top, m_step) = axis(points.iter().map(|p| p.observed).fold(0.0, f64::max) * 1.1, false);
    let pods_max = points.iter().map(|p| p.desired.max(p.ready)).max().unwrap_or(0);
    let (p_top, p_step) = axis(f64::from(pods_max) * 1.1, true);

    let x = |t: f64| LEFT + (RIGHT - LEFT) * t / t_top;
    let y_metric = |v: f64| BOTTOM - (BOTTOM - TOP) * v / m_top;
    let y_pods = |v: f64| BOTTOM - (BOTTOM - TOP) * v / p_top;
    let metric_name = match metric {
        Metric::Concurrency => "concurrency",
        Metric::Rps => "requests per second",
    };

    let mut svg = String::new();
    let _ = write!(svg, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}""#);
    let _ = writeln!(svg, r#" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(svg, r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="26" text-anchor="middle" font-size="16">Observed {metric_name} and pods over time</text>"#,
        WIDTH / 2.0
    );

    // Grid and left ticks (metric), right ticks (pods), bottom ticks (time).
    let mut v = 0.0;
    while v <= m_top + m_step / 2.0 {
        let yy = y_metric(v);
        let _ = writeln!(svg, r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{RIGHT}" y2="{yy:.1}" stroke="#e0e0e0"/>"##);
        let _ = writeln!(svg, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, LEFT - 8.0, yy + 4.0, label(v));
        v += m_step;
    }
    let mut v = 0.0;
    while v <= p_top + p_step / 2.0 {
        let _ = writeln!(svg, r#"<text x="{}" y="{:.1}">{}</text>"#, RIGHT + 8.0, y_pods(v) + 4.0, label(v));
        v += p_step;
    }
    let mut v = 0.0;
    while v <= t_top + t_step / 2.0 {
        let xx = x(v);
        let _ =
            writeln!(svg, r#"<line x1="{xx:.1}" y1="{BOTTOM}" x2="{xx:.1}" y2="{}" stroke="black"/>"#, BOTTOM + 5.0);
        let _ = writeln!(svg, r#"<text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"#, BOTTOM + 20.0, label(v));
        v += t_step;
    }

    // Axes and their titles.
    let _ = writeln!(
        svg,
        r#"<polyline points="{LEFT},{TOP} {LEFT},{BOTTOM} {RIGHT},{BOTTOM} {RIGHT},{TOP}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">time (s)</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 42.0
    );
    let mid = (TOP + BOTTOM) / 2.0;
    let _ = writeln!(
        svg,
        r#"<text x="24" y="{mid}" text-anchor="middle" transform="rotate(-90 24 {mid})" fill="{}">{}</text>"#,
        OBSERVED_COLOUR, metric_name
    );
    let right_title = WIDTH - 24.0;
    let _ = writeln!(
        svg,
        r#"<text x="{0}" y="{mid}" text-anchor="middle" transform="rotate(90 {0} {mid})">pods</text>"#,
        right_title
    );

    // The series. Pod counts hold until they change, so they are drawn as steps.
    let observed: Vec<(f64, f64)> = points.iter().map(|p| (x(p.t_s as f64), y_metric(p.observed))).collect();
    let steps = |value: fn(&SimulationPoint) -> u32| {
        let mut line: Vec<(f64, f64)> = Vec::with_capacity(points.len() * 2);
        for p in points {
            let (px, py) = (x(p.t_s as f64), y_pods(f64::from(value(p))));
            if let Some(&(_, prev)) = line.last() {
                line.push((px, prev));
            }
            line.push((px, py));
        }
        line
    };
    let series = [
        (observed, OBSERVED_COLOUR, ""),
        (steps(|p| p.desired), DESIRED_COLOUR, r#" stroke-dasharray="6 3""#),
        (steps(|p| p.ready), READY_COLOUR, ""),
    ];
    for (line, colour, dash) in &series {
        let coords: Vec<String> = corners(line).iter().map(|(px, py)| format!("{px:.1},{py:.1}")).collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
            coords.join(" ")
        );
    }

    // Legend, in a row between the title and the plot, where it hides nothing.
    let entries = [
        (format!("observed {metric_name}"), OBSERVED_COLOUR, ""),
        ("desired pods".to_string(), DESIRED_COLOUR, r#" stroke-dasharray="6 3""#),
        ("ready pods".to_string(), READY_COLOUR, ""),
    ];
    let yy = TOP - 16.0;
    let mut x0 = LEFT;
    for (name, colour, dash) in &entries {
        let _ = writeln!(
            svg,
            r#"<line x1="{x0}" y1="{yy}" x2="{}" y2="{yy}" stroke="{colour}" stroke-width="2"{dash}/>"#,
            x0 + 30.0
        );
        let _ = writeln!(svg, r#"<text x="{}" y="{}">{name}</text>"#, x0 + 38.0, yy + 4.0);
        // About 7 px per character at this font size, then a gap.
        x0 += 38.0 + 7.0 * name.len() as f64 + 32.0;
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// 10 s idle, 60 s at 50 concurrent requests, then idle: with a target of
    /// 10 per pod that is a step from 1 to 5 pods and back to zero.
    fn step_trace() -> Vec<f64> {
        let mut trace = vec![0.0; 10];
        trace.extend([50.0; 60]);
        trace.extend([0.0; 130]);
        trace
    }

    fn step_run() -> Vec<SimulationPoint> {
        let decider =
            DeciderSpec { target_value: 10.0, total_value: 10.0, target_burst_capacity: 0.0, ..DeciderSpec::default() };
        simulate(&step_trace(), &decider, &WindowSpec::default(), &ScalerSpec::default(), 3_000)
    }

    #[test]
    fn step_trace_scales_up_then_to_zero() {
        let points = step_run();
        let csv = to_csv(&points);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "t_s,observed,desired,ready");
        assert_eq!(lines.len(), 1 + 200);
        // The seconds at which the pods (desired, ready) change.
        let mut changes = Vec::new();
        let mut last = None;
        for line in &lines[1..] {
            let fields: Vec<&str> = line.split(',').collect();
            let pods = (fields[2], fields[3]);
            if last != Some(pods) {
                changes.push(*line);
                last = Some(pods);
            }
        }
        assert_eq!(
            changes,
            [
                // Created at its initial scale; the pod is ready 3 s later.
                "0,0,1,0",
                "3,0,1,1",
                // Load at 10 s. By 12 s the panic window (6 s) asks for 3 pods
                // against 1 ready: panic, and 5 pods by the next tick.
                "12,50,3,1",
                "14,50,5,1",
                "15,50,5,3",
                "17,50,5,5",
                // Load gone at 70 s. The panic ends a stable window after its
                // last over-threshold tick (14 s); the stable average then falls
                // off a pod at a time as the busy seconds leave the window.
                "82,0,4,4",
                "94,0,3,3",
                "106,0,2,2",
                "118,0,1,1",
                // Nothing left in the window at 130 s: inactive, and the last
                // pod goes after the 30 s grace period.
                "160,0,0,0",
            ]
        );
    }

    #[test]
    fn scale_from_zero_is_poked_by_the_first_request() {
        let scaler = ScalerSpec { initial_scale: 0, allow_zero_initial_scale: true, ..ScalerSpec::default() };
        let decider = DeciderSpec { target_value: 10.0, ..DeciderSpec::default() };
        let mut trace = vec![0.0; 5];
        trace.push(5.0);
        trace.extend([5.0; 4]);
        let points = simulate(&trace, &decider, &WindowSpec::default(), &scaler, 2_000);
        assert_eq!(points[4].desired, 0);
        // The request at second 5 (odd: not a tick) brings up a pod at once.
        assert_eq!((points[5].desired, points[5].ready), (1, 0));
        assert_eq!((points[7].desired, points[7].ready), (1, 1));
    }

    #[test]
    fn absurd_load_saturates_instead_of_failing() {
        let decider = DeciderSpec { target_value: 1.0, ..DeciderSpec::default() };
        let points = simulate(&[1e15; 12], &decider, &WindowSpec::default(), &ScalerSpec::default(), 0);
        // Up a thousandfold per tick, until the pod count saturates.
        assert_eq!(points[1].desired, 1_000);
        assert_eq!(points[11].desired, i32::MAX as u32);
    }

    #[test]
    fn disabled_scale_to_zero_keeps_one_pod() {
        let scaler = ScalerSpec { enable_scale_to_zero: false, ..ScalerSpec::default() };
        let windows = WindowSpec { stable_window: Duration::from_secs(6), ..WindowSpec::default() };
        let points = simulate(&[0.0; 120], &DeciderSpec::default(), &windows, &scaler, 0);
        assert!(points.iter().all(|p| p.desired == 1 && p.ready == 1));
    }

    /// Checks that every tag is closed in order; returns the element names seen.
    fn balanced_tags(svg: &str) -> Result<Vec<String>, String> {
        let mut open: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let Some(len) = rest[start..].find('>') else { return Err("unterminated tag".into()) };
            let tag = &rest[start + 1..start + len];
            rest = &rest[start + len + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match open.pop() {
                    Some(top) if top == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                continue;
            }
            let name: String = tag.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            if name.is_empty() {
                return Err(format!("bad tag <{tag}>"));
            }
            seen.push(name.clone());
            if !tag.ends_with('/') {
                open.push(name);
            }
        }
        if open.is_empty() { Ok(seen) } else { Err(format!("unclosed {open:?}")) }
    }

    #[test]
    fn svg_is_a_well_formed_chart() {
        let svg = to_svg(&step_run(), Metric::Concurrency);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        let names = match balanced_tags(&svg) {
            Ok(names) => names,
            Err(e) => panic!("{e}\n{svg}"),
        };
        assert_eq!(names.first().map(String::as_str), Some("svg"));
        // Axes frame plus three series.
        assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 4);
        for text in ["time (s)", "pods", "observed concurrency", "desired pods", "ready pods"] {
            assert!(svg.contains(&format!(">{text}</text>")), "missing {text}");
        }
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn svg_of_nothing_is_still_well_formed() {
        let svg = to_svg(&[], Metric::Rps);
        assert!(balanced_tags(&svg).is_ok(), "{svg}");
        assert!(!svg.contains("NaN"), "{svg}");
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(axis(47.0, false), (50.0, 10.0));
        assert_eq!(axis(5.0, true), (5.0, 1.0));
        assert_eq!(axis(0.0, true), (1.0, 1.0));
        assert_eq!(axis(199.0, true), (200.0, 50.0));
        assert_eq!(label(0.30000000000000004), "0.3");
        assert_eq!(label(12.0), "12");
    }
}
