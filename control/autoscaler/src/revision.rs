//! One revision's KPA, whole: its metric windows, [`Decider`], [`Scaler`]
//! and the scale last asked of the runtime, driven by time as a parameter.
//!
//! This is the per-revision half of Knative's autoscaler (the collector's
//! metric for the revision, its decider, and the KPA reconciler's rules);
//! the other half, which watches the world, reads the clock and calls the
//! runtime, is the caller's and holds no scaling state. So every decision
//! here can be replayed by stepping time forward, as the tests below do.
//!
//! ```text
//! record(now, concurrency, rps) ──▶ windows ──tick(now, ready, held)──▶ Decider ─▶ Scaler ─▶ Some(scale) to ask for
//! ```
//!
//! The caller:
//!
//! 1. creates it when a revision appears and asks the runtime for
//!    [`RevisionAutoscaler::first_request`];
//! 2. every second, [`RevisionAutoscaler::record`]s the revision's total
//!    concurrency and requests per second;
//! 3. every [`TICK_INTERVAL`](crate::TICK_INTERVAL), or at once when a
//!    request is held for a revision at zero
//!    ([`RevisionAutoscaler::is_at_zero`]), calls
//!    [`RevisionAutoscaler::tick`] and asks the runtime for the scale it
//!    returns, if any;
//! 4. shows [`RevisionAutoscaler::status`] as the revision's PodAutoscaler.
//!
//! Only revisions of Knative's KPA class are scaled. A revision of another
//! class (`hpa.autoscaling.knative.dev`) runs at its initial or min scale,
//! whichever is higher, and its status says so (`UnsupportedClass`).

use revgate_model::autoscaling::{KPA_CLASS, RevisionScaling};
use serde::{Deserialize, Serialize};

use crate::decider::{Decider, DeciderSpec, Recommendation};
use crate::scaler::{Mode, ScaleDecision, Scaler, ScalerSpec};
use crate::window::RevisionWindows;

/// What the KPA decided for one revision, shown as a Knative PodAutoscaler
/// (`revgate get kpa`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KpaStatus {
    /// The Configuration that created the revision; the caller's to fill in.
    pub configuration: String,
    /// The Service that owns the revision, if any; the caller's to fill in.
    pub service: Option<String>,
    /// The metric scaled on: `concurrency` or `rps`.
    pub metric: String,
    /// Per-instance target of the metric.
    pub target: f64,
    /// Whether a route sends the revision traffic.
    pub reachable: bool,
    /// The scale the KPA wants; `None` before any metric arrived.
    pub desired_scale: Option<i64>,
    /// Ready instances.
    pub actual_scale: u32,
    /// Instances the runtime was asked for.
    pub requested_scale: Option<u32>,
    /// The stable window's average of the metric, revision-wide.
    pub observed_stable_value: f64,
    /// The panic window's average of the metric, revision-wide.
    pub observed_panic_value: f64,
    /// Whether the decider is in panic mode.
    pub panicking: bool,
    /// Spare capacity beyond the target burst capacity; negative: the
    /// gateway keeps holding requests.
    pub excess_burst_capacity: i64,
    /// Knative's `Active` condition: `True`, `False` or `Unknown`.
    pub active: String,
    /// The `Active` condition's reason, in Knative's words.
    pub reason: Option<String>,
    /// The `Active` condition's message.
    pub message: Option<String>,
}

/// The reason of a revision whose autoscaling class revgate does not run.
pub const UNSUPPORTED_CLASS: &str = "UnsupportedClass";

/// The KPA of one revision. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RevisionAutoscaler {
    scaling: RevisionScaling,
    reachable: bool,
    windows: RevisionWindows,
    decider: Decider,
    /// The decider's latest valid recommendation (a tick without metrics
    /// keeps the previous one, as Knative's PodAutoscaler status does).
    recommendation: Recommendation,
    scaler: Scaler,
    /// The scale last asked of the runtime; `None` before the first request.
    requested: Option<u32>,
    /// Ready instances, as last told.
    ready: u32,
    /// The windows' stable and panic averages at the last tick that had metrics.
    observed: (f64, f64),
    /// The scaler's last decision; `None` before the first KPA tick.
    decision: Option<ScaleDecision>,
    /// The fixed scale of a revision of another class, while it runs at one.
    fixed: Option<u32>,
}

impl RevisionAutoscaler {
    /// The KPA of a revision that appears at `now_ms` with `ready` instances,
    /// scaled as `scaling` says, routed or not (`reachable`).
    pub fn new(scaling: RevisionScaling, reachable: bool, ready: u32, now_ms: u64) -> Self {
        let spec = decider_spec(&scaling, reachable);
        let recommendation = Recommendation::before_first_tick(&spec, scaling.initial_scale);
        Self {
            windows: windows(&scaling),
            decider: Decider::new(spec, ready, now_ms),
            recommendation,
            scaler: Scaler::new(scaler_spec(&scaling, reachable), now_ms),
            scaling,
            reachable,
            requested: None,
            ready,
            observed: (0.0, 0.0),
            decision: None,
            fixed: None,
        }
    }

    /// The scale to ask the runtime for when the revision first appears.
    ///
    /// A new revision starts at its initial scale, as Knative creates the
    /// Deployment with that many replicas. One `stored_before_start` (found
    /// when the control plane starts, not created while it runs) that no
    /// route reaches stays at zero, as it was: Knative keeps its replicas.
    /// A revision of another class runs at the higher of its min and initial
    /// scale, at least one.
    pub fn first_request(&mut self, stored_before_start: bool) -> u32 {
        let initial = self.scaler.spec().effective_initial_scale();
        let scale = if self.scaling.class != KPA_CLASS {
            let fixed = self.scaling.min_scale.max(initial).max(1);
            self.fixed = Some(fixed);
            fixed
        } else if stored_before_start && !self.reachable {
            0
        } else {
            initial
        };
        self.requested = Some(scale);
        scale
    }

    /// Takes new settings: a changed `config-autoscaler` or annotation, or a
    /// route change that makes the revision reachable or not. The windows
    /// start over only when their shape changes; every other state carries on.
    pub fn update(&mut self, scaling: RevisionScaling, reachable: bool) {
        if scaling == self.scaling && reachable == self.reachable {
            return;
        }
        if scaling.stable_window != self.scaling.stable_window
            || scaling.panic_window != self.scaling.panic_window
            || scaling.aggregation != self.scaling.aggregation
        {
            self.windows = windows(&scaling);
        }
        self.decider.set_spec(decider_spec(&scaling, reachable));
        self.scaler.set_spec(scaler_spec(&scaling, reachable));
        self.scaling = scaling;
        self.reachable = reachable;
    }

    /// Records one second of the revision's load: the total concurrency
    /// (served and held) and requests per second across the gateways.
    pub fn record(&mut self, now_ms: u64, concurrency: f64, rps: f64) {
        self.windows.record(now_ms, concurrency, rps);
    }

    /// Tells how many instances are ready at `now_ms`. Between ticks the
    /// status follows them as Knative's PodAutoscaler reconciler does on
    /// every pod change: the phase is recomputed with the scale last
    /// wanted (before the first tick, the scale asked at start: the initial
    /// scale), so a revision that answers is `Active` at once, not one tick
    /// later.
    pub fn observe_ready(&mut self, now_ms: u64, ready: u32) {
        self.ready = ready;
        if self.fixed.is_some() {
            return;
        }
        let asked = self.requested.map(|scale| i32::try_from(scale).unwrap_or(i32::MAX));
        let Some(want) = self.decision.map(|d| d.want).or(asked) else { return };
        let (phase, reason, phase_since_ms) = self.scaler.observe_ready(now_ms, want, ready);
        let mode = if ready > 0 { Mode::Serve } else { Mode::Proxy };
        let decision =
            self.decision.get_or_insert(ScaleDecision { apply: None, want, mode, phase, reason, phase_since_ms });
        (decision.phase, decision.reason, decision.phase_since_ms) = (phase, reason, phase_since_ms);
    }

    /// One KPA tick at `now_ms`: the decider on the windows' averages, then
    /// the scale-to-zero rules. `requests_held` says whether gateways hold
    /// requests for the revision (a held request brings a revision at zero
    /// up even before its load reaches the windows: Knative's poke).
    ///
    /// Returns the scale to ask the runtime for, only when it differs from
    /// the one last asked; `None` leaves the runtime as it is. A revision of
    /// another class is never scaled here.
    #[must_use = "the runtime must be asked for the returned scale"]
    pub fn tick(&mut self, now_ms: u64, ready: u32, requests_held: bool) -> Option<u32> {
        self.ready = ready;
        if self.scaling.class != KPA_CLASS {
            return None;
        }
        if let Some((stable, panic)) = self.windows.averages(now_ms, self.scaling.metric) {
            self.observed = (stable, panic);
            self.recommendation = self.decider.scale(now_ms, ready, stable, panic);
        }
        let decision = self.scaler.step(now_ms, &self.recommendation, ready, requests_held);
        self.decision = Some(decision);
        self.fixed = None;
        let scale = decision.apply.filter(|&scale| self.requested != Some(scale))?;
        self.requested = Some(scale);
        Some(scale)
    }

    /// Whether the revision is at zero, or on its way there: nothing asked
    /// for, or the decider wants none. A held request for such a revision
    /// is worth a tick at once.
    pub fn is_at_zero(&self) -> bool {
        self.requested.unwrap_or(0) == 0 || self.recommendation.desired <= 0
    }

    /// The scale last asked of the runtime.
    pub fn requested(&self) -> Option<u32> {
        self.requested
    }

    /// The settings in force.
    pub fn scaling(&self) -> &RevisionScaling {
        &self.scaling
    }

    /// The revision's PodAutoscaler status, without the workload's names
    /// (`configuration`, `service`), which the caller knows.
    pub fn status(&self) -> KpaStatus {
        let mut status = KpaStatus {
            metric: self.scaling.metric.as_str().to_owned(),
            target: self.scaling.target,
            reachable: self.reachable,
            actual_scale: self.ready,
            requested_scale: self.requested,
            observed_stable_value: self.observed.0,
            observed_panic_value: self.observed.1,
            active: "Unknown".to_owned(),
            ..KpaStatus::default()
        };
        if let Some(scale) = self.fixed {
            status.desired_scale = Some(i64::from(scale));
            status.active = "True".to_owned();
            status.reason = Some(UNSUPPORTED_CLASS.to_owned());
            status.message = Some(format!(
                "autoscaling class {:?} is not run by revgate, which scales with the KPA ({KPA_CLASS}); \
                 running {scale} instance(s): the higher of min-scale and initial-scale",
                self.scaling.class
            ));
        } else if let Some(decision) = self.decision {
            status.desired_scale = (decision.want >= 0).then_some(i64::from(decision.want));
            status.panicking = self.recommendation.panicking;
            status.excess_burst_capacity = i64::from(self.recommendation.excess_burst_capacity);
            status.active = decision.phase.condition_status().to_owned();
            status.reason = decision.reason.map(|r| r.as_str().to_owned());
            status.message = decision.reason.map(|r| r.message().to_owned());
        }
        status
    }
}

fn windows(scaling: &RevisionScaling) -> RevisionWindows {
    RevisionWindows::from_windows(scaling.stable_window, scaling.panic_window, scaling.aggregation)
}

/// The decider's spec for a revision (Knative's `MakeDecider`).
pub fn decider_spec(scaling: &RevisionScaling, reachable: bool) -> DeciderSpec {
    DeciderSpec {
        metric: scaling.metric,
        target_value: scaling.target,
        total_value: scaling.total_value,
        target_burst_capacity: scaling.target_burst_capacity,
        panic_threshold: scaling.panic_threshold,
        max_scale_up_rate: scaling.max_scale_up_rate,
        max_scale_down_rate: scaling.max_scale_down_rate,
        stable_window: scaling.stable_window,
        scale_down_delay: scaling.scale_down_delay,
        activation_scale: scaling.activation_scale,
        reachable,
    }
}

/// The scale-to-zero rules' spec for a revision.
pub fn scaler_spec(scaling: &RevisionScaling, reachable: bool) -> ScalerSpec {
    ScalerSpec {
        min_scale: scaling.min_scale,
        max_scale: scaling.max_scale,
        initial_scale: scaling.initial_scale,
        allow_zero_initial_scale: scaling.allow_zero_initial_scale,
        enable_scale_to_zero: scaling.enable_scale_to_zero,
        stable_window: scaling.stable_window,
        scale_to_zero_grace_period: scaling.scale_to_zero_grace_period,
        scale_to_zero_pod_retention_period: scaling.scale_to_zero_pod_retention_period,
        reachable,
        activation_scale: scaling.activation_scale,
        ..ScalerSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use revgate_model::autoscaling::AutoscalerConfig;

    use super::*;
    use crate::TICK_INTERVAL;

    const SECOND: u64 = 1000;

    /// A revision's scaling from its annotations and Knative's defaults.
    fn scaling(annotations: &[(&str, &str)]) -> RevisionScaling {
        let annotations: BTreeMap<String, String> =
            annotations.iter().map(|(k, v)| (format!("autoscaling.knative.dev/{k}"), (*v).to_owned())).collect();
        RevisionScaling::resolve(&annotations, 0, &AutoscalerConfig::default())
    }

    /// A target of 10 concurrent requests per instance, used as is.
    fn ten_per_instance() -> Vec<(&'static str, &'static str)> {
        vec![("target", "10"), ("target-utilization-percentage", "100")]
    }

    /// Drives a revision as the control plane does: one record per second,
    /// a tick every [`TICK_INTERVAL`], the runtime doing at once what it is
    /// asked (ready = last asked). Returns every request with its time.
    struct Run {
        kpa: RevisionAutoscaler,
        now_ms: u64,
        requests: Vec<(u64, u32)>,
    }

    impl Run {
        fn start(annotations: &[(&str, &str)]) -> Self {
            let mut kpa = RevisionAutoscaler::new(scaling(annotations), true, 0, 0);
            let first = kpa.first_request(false);
            Self { kpa, now_ms: 0, requests: vec![(0, first)] }
        }

        fn ready(&self) -> u32 {
            self.kpa.requested().unwrap_or(0)
        }

        /// `seconds` of a steady `concurrency`, ticking as the control plane does.
        fn load(&mut self, seconds: u64, concurrency: f64) {
            for _ in 0..seconds {
                self.now_ms += SECOND;
                self.kpa.record(self.now_ms, concurrency, concurrency);
                if self.now_ms.is_multiple_of(TICK_INTERVAL.as_millis() as u64) {
                    let ready = self.ready();
                    if let Some(scale) = self.kpa.tick(self.now_ms, ready, false) {
                        self.requests.push((self.now_ms, scale));
                    }
                }
            }
        }
    }

    /// Knative's table style, time stepped forward: a new revision starts
    /// at its initial scale, follows its load at the first tick, and is not
    /// asked again for a scale it already has.
    #[test]
    fn follows_the_load_and_asks_only_for_changes() {
        let mut run = Run::start(&ten_per_instance());
        assert_eq!(run.requests, vec![(0, 1)], "the initial scale, at once");
        assert_eq!(run.kpa.status().desired_scale, None, "no metric yet");

        // Three instances' worth of load on one instance.
        run.load(2, 30.0);
        assert_eq!(run.requests, vec![(0, 1), (2 * SECOND, 3)]);
        let status = run.kpa.status();
        assert_eq!((status.desired_scale, status.requested_scale, status.actual_scale), (Some(3), Some(3), 1));
        assert!(status.panicking, "3× the target on one instance is past the panic threshold (2×)");
        assert_eq!(status.active, "True", "active: the one instance Knative requires (min-ready) is ready");

        // The same load on three instances: nothing new to ask.
        run.load(20, 30.0);
        assert_eq!(run.requests.len(), 2, "{:?}", run.requests);
        let status = run.kpa.status();
        assert_eq!((status.active.as_str(), status.reason), ("True", None));
        assert_eq!(status.observed_stable_value, 30.0);
    }

    /// After the load ends, the revision keeps its instance until the stable
    /// window holds no load, and turns inactive (`NoTraffic`) then. It goes
    /// to zero once the gateway has held its requests for the grace period:
    /// at once when the gateway was holding already (the default burst
    /// capacity keeps it in the path of a small revision), a grace period
    /// later when it was not (`target-burst-capacity: 0`).
    #[test]
    fn scales_to_zero_after_the_stable_window_and_the_grace_period() {
        // (case, annotations, seconds from the last load to the scale to zero)
        type Case = (&'static str, &'static [(&'static str, &'static str)], u64);
        let cases: [Case; 2] = [
            ("gateway holding all along", &[], 60 + 2),
            ("gateway out of the path while serving", &[("target-burst-capacity", "0")], 60 + 30),
        ];
        for (case, extra, to_zero_after) in cases {
            let mut annotations = ten_per_instance();
            annotations.extend_from_slice(extra);
            let mut run = Run::start(&annotations);
            run.load(10, 10.0);
            assert_eq!(run.requests, vec![(0, 1)], "{case}: one instance carries it");
            let last_load_ms = run.now_ms;

            run.load(60, 0.0);
            assert_eq!(run.requests.len(), 1, "{case}: kept within the stable window: {:?}", run.requests);
            let status = run.kpa.status();
            assert_eq!(
                (status.active.as_str(), status.reason.as_deref(), status.desired_scale),
                ("False", Some("NoTraffic"), Some(0)),
                "{case}: inactive once the window holds no load"
            );

            run.load(40, 0.0);
            assert_eq!(
                run.requests,
                vec![(0, 1), (last_load_ms + to_zero_after * SECOND, 0)],
                "{case}: to zero {to_zero_after} s after the last load"
            );
            assert!(run.kpa.is_at_zero(), "{case}");
        }
    }

    /// A revision found at zero that no route reaches stays there; when a
    /// route reaches it and the gateway holds a request for it, it is asked
    /// for an instance at the first tick, before any load was recorded.
    #[test]
    fn a_held_request_brings_a_revision_at_zero_up() {
        let mut kpa = RevisionAutoscaler::new(scaling(&ten_per_instance()), false, 0, 0);
        assert_eq!(kpa.first_request(true), 0, "stored at zero, unrouted: kept at zero");
        assert_eq!(kpa.tick(2 * SECOND, 0, false), None, "nothing asks for it");
        assert!(kpa.is_at_zero());

        kpa.update(scaling(&ten_per_instance()), true);
        assert_eq!(kpa.tick(3 * SECOND, 0, true), Some(1), "the held request brings one instance");
        let status = kpa.status();
        assert_eq!((status.active.as_str(), status.reason.as_deref()), ("Unknown", Some("Queued")));
        assert!(status.reachable);
        assert_eq!(kpa.tick(4 * SECOND, 0, true), None, "asked once");

        // A revision started at its initial scale is Active once its
        // instance answers, before the first tick.
        let mut started = RevisionAutoscaler::new(scaling(&ten_per_instance()), true, 0, 0);
        assert_eq!(started.first_request(false), 1, "the initial scale, 1");
        started.observe_ready(300, 1);
        let status = started.status();
        assert_eq!((status.active.as_str(), status.desired_scale, status.actual_scale), ("True", Some(1), 1));

        // Its instance answers between ticks: Active at once, as Knative's
        // PodAutoscaler is on the pod change, not at the next tick.
        kpa.observe_ready(4 * SECOND + 300, 1);
        let status = kpa.status();
        assert_eq!((status.active.as_str(), status.reason.as_deref(), status.actual_scale), ("True", None, 1));
    }

    /// A changed annotation takes effect at the next tick; the load already
    /// recorded is kept.
    #[test]
    fn a_changed_max_scale_applies_at_the_next_tick() {
        let mut run = Run::start(&ten_per_instance());
        run.load(2, 30.0);
        assert_eq!(run.ready(), 3);
        let mut capped = ten_per_instance();
        capped.push(("max-scale", "2"));
        run.kpa.update(scaling(&capped), true);
        run.load(2, 30.0);
        assert_eq!(run.requests.last(), Some(&(4 * SECOND, 2)));
    }

    /// A revision of another autoscaling class runs at the higher of its min
    /// and initial scale, is never scaled, and says why.
    #[test]
    fn another_class_runs_at_a_fixed_scale() {
        let mut kpa = RevisionAutoscaler::new(
            scaling(&[("class", "hpa.autoscaling.knative.dev"), ("min-scale", "2")]),
            true,
            0,
            0,
        );
        assert_eq!(kpa.first_request(false), 2);
        kpa.record(SECOND, 100.0, 100.0);
        assert_eq!(kpa.tick(2 * SECOND, 2, false), None);
        let status = kpa.status();
        assert_eq!(
            (status.desired_scale, status.requested_scale, status.actual_scale, status.active.as_str()),
            (Some(2), Some(2), 2, "True")
        );
        assert_eq!(status.reason.as_deref(), Some(UNSUPPORTED_CLASS));
        assert!(status.message.is_some_and(|m| m.contains("hpa.autoscaling.knative.dev")));
    }
}
