//! The KPA decider: from observed load to a recommended number of pods
//! (Knative's `autoscaler.Scale`).
//!
//! Each tick (every [`TICK_INTERVAL`], or at once when a scaled-to-zero
//! revision gets a request) the caller reads the stable and panic averages of
//! the revision's metric and asks [`Decider::scale`] for a [`Recommendation`].
//! The decider keeps the only state that spans ticks: whether it is panicking
//! and since when, the most pods asked for during the panic, and the window of
//! recent recommendations that delays scale-downs.
//!
//! # One tick
//!
//! With `r = max(1, ready)`:
//!
//! 1. Pods wanted: `stable_pods = ceil(stable / target)`, `panic_pods = ceil(panic / target)`.
//! 2. Rate limits: at most `ceil(max_scale_up_rate × r)`; at least
//!    `floor(r / max_scale_down_rate)` while reachable, else at least 0.
//!    Both pod counts are clamped to that range.
//! 3. Activation scale: when above 1 and the unclamped count is positive, each
//!    count is raised to at least `activation_scale`.
//! 4. Panic: the tick is *over the threshold* when `panic_pods / r ≥ panic_threshold`
//!    (unclamped pods). Over the threshold starts the panic or extends it to
//!    now; the panic ends on the first tick not over the threshold once more
//!    than a stable window has passed since the last tick that was.
//! 5. In panic the recommendation is the larger of both counts, and never
//!    less than the most recommended since the panic began: no scale-down
//!    while panicking. Otherwise it is the stable count.
//! 6. Scale-down delay: while reachable, the recommendation is the maximum of
//!    those made within the last `scale_down_delay` (in 2 s slots).
//! 7. Excess burst capacity: `floor(ready × total_value − target_burst_capacity − panic)`,
//!    with the raw `ready`; 0 when the burst capacity is 0, −1 when it is −1.
//!
//! A decider created while more than one pod is ready starts in panic, with
//! the ready pods as its floor: after a restart it has no history, and it
//! must not scale a running revision down before it has some.

use std::time::Duration;

use crate::window::MaxWindow;

/// How often the decider runs (Knative's `tickInterval`); also the slot width
/// of the scale-down-delay window.
pub const TICK_INTERVAL: Duration = Duration::from_secs(2);

/// The metric a revision scales on: the model's, named as in Knative's annotations.
pub use revgate_model::autoscaling::Metric;

/// The parameters of one revision's decider (Knative's `DeciderSpec`), already
/// resolved from annotations and `config-autoscaler`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeciderSpec {
    /// Which metric `stable` and `panic` measure.
    pub metric: Metric,
    /// Metric per pod to aim for (`TargetValue`: the total times the target
    /// utilization). Must be positive.
    pub target_value: f64,
    /// Metric a pod can take at most (`TotalValue`), for the burst capacity.
    pub total_value: f64,
    /// Spare capacity to keep before the gateway may stop holding requests;
    /// 0 = none, −1 = always hold.
    pub target_burst_capacity: f64,
    /// Panic when the panic window asks for this multiple of the ready pods
    /// (2.0 for `panic-threshold-percentage: 200`).
    pub panic_threshold: f64,
    /// Most the pod count may grow by in one tick, as a factor.
    pub max_scale_up_rate: f64,
    /// Most the pod count may shrink by in one tick, as a divisor.
    pub max_scale_down_rate: f64,
    /// How long after the last over-threshold tick a panic ends.
    pub stable_window: Duration,
    /// How long a recommendation holds before a lower one takes effect.
    pub scale_down_delay: Duration,
    /// The smallest non-zero recommendation; 0 or 1 = no such floor.
    pub activation_scale: u32,
    /// Whether the revision receives traffic. An unreachable revision may
    /// drop to zero at once: no rate limit downwards, no delay.
    pub reachable: bool,
}

impl Default for DeciderSpec {
    /// Knative's defaults for a concurrency revision with no
    /// `containerConcurrency`: total 100, 70% utilization.
    fn default() -> Self {
        Self {
            metric: Metric::Concurrency,
            target_value: 70.0,
            total_value: 100.0,
            target_burst_capacity: 211.0,
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            stable_window: Duration::from_secs(60),
            scale_down_delay: Duration::ZERO,
            activation_scale: 1,
            reachable: true,
        }
    }
}

/// What the decider recommends after one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    /// Pods wanted; −1 means "no recommendation yet" (no data).
    pub desired: i32,
    /// Capacity beyond the target burst capacity, in units of the metric;
    /// negative means the gateway should keep holding requests.
    pub excess_burst_capacity: i32,
    /// Whether the decider is in panic mode.
    pub panicking: bool,
}

impl Recommendation {
    /// The recommendation a revision has before its first valid tick: no
    /// desired scale (−1), and the burst capacity its `initial_scale` pods
    /// would give, so that a revision whose initial pods cannot absorb the
    /// target burst starts with the gateway holding requests.
    pub fn before_first_tick(spec: &DeciderSpec, initial_scale: u32) -> Self {
        let tbc = spec.target_burst_capacity;
        let excess_burst_capacity = if tbc == 0.0 || tbc == -1.0 {
            tbc as i32
        } else {
            // Truncated, not floored, as Knative converts it.
            (f64::from(initial_scale) * spec.total_value - tbc) as i32
        };
        Self { desired: -1, excess_burst_capacity, panicking: false }
    }
}

/// One revision's decider. See the [module docs](self) for the algorithm.
#[derive(Debug, Clone)]
pub struct Decider {
    spec: DeciderSpec,
    /// Time of the last over-threshold tick while panicking; `None` when calm.
    panic_since_ms: Option<u64>,
    /// The floor of recommendations while panicking.
    max_panic_pods: i32,
    /// Recent recommendations, when a scale-down delay is set.
    delay_window: Option<MaxWindow>,
}

fn delay_window(delay: Duration) -> Option<MaxWindow> {
    (!delay.is_zero()).then(|| MaxWindow::new(delay, TICK_INTERVAL))
}

/// Clamps a pod count to the rate limits, as a whole number of pods.
fn clamp_pods(pods: f64, at_least: f64, at_most: f64) -> i32 {
    // `as` saturates: absurd loads give i32::MAX rather than wrapping.
    pods.max(at_least).min(at_most) as i32
}

/// Whether more than `stable_window` has passed since the last over-threshold
/// tick at `since_ms`.
fn panic_over(since_ms: u64, stable_window: Duration, now_ms: u64) -> bool {
    // An end beyond what a Duration holds never comes.
    Duration::from_millis(since_ms).checked_add(stable_window).is_some_and(|end| end < Duration::from_millis(now_ms))
}

impl Decider {
    /// A decider created at `now_ms` for a revision with `initial_ready` ready
    /// pods. With more than one, it starts in panic at that floor.
    pub fn new(spec: DeciderSpec, initial_ready: u32, now_ms: u64) -> Self {
        let panic_since_ms = (initial_ready > 1).then_some(now_ms);
        let max_panic_pods = i32::try_from(initial_ready).unwrap_or(i32::MAX);
        let delay_window = delay_window(spec.scale_down_delay);
        Self { spec, panic_since_ms, max_panic_pods, delay_window }
    }

    /// The current parameters.
    pub fn spec(&self) -> &DeciderSpec {
        &self.spec
    }

    /// Replaces the parameters; the panic state carries over. A different
    /// scale-down delay starts a fresh delay window of the new length (none
    /// for a zero delay).
    pub fn set_spec(&mut self, spec: DeciderSpec) {
        if spec.scale_down_delay != self.spec.scale_down_delay {
            self.delay_window = delay_window(spec.scale_down_delay);
        }
        self.spec = spec;
    }

    /// Whether the decider is in panic mode.
    pub fn is_panicking(&self) -> bool {
        self.panic_since_ms.is_some()
    }

    /// One tick at `now_ms` with `ready` pods and the stable and panic averages
    /// of the revision-total metric (finite, non-negative).
    pub fn scale(&mut self, now_ms: u64, ready: u32, stable: f64, panic: f64) -> Recommendation {
        let spec = &self.spec;
        // With no pod ready, rates are relative to one pod so a revision can
        // still grow from zero.
        let pods = f64::from(ready.max(1));
        // `ceil` lets a slow rate still add a pod: 1.1 × 2 pods allows 3.
        let max_up = (spec.max_scale_up_rate * pods).ceil();
        let max_down = if spec.reachable { (pods / spec.max_scale_down_rate).floor() } else { 0.0 };

        let stable_pods = (stable / spec.target_value).ceil();
        let panic_pods = (panic / spec.target_value).ceil();
        let mut stable_desired = clamp_pods(stable_pods, max_down, max_up);
        let mut panic_desired = clamp_pods(panic_pods, max_down, max_up);

        if spec.activation_scale > 1 {
            let floor = i32::try_from(spec.activation_scale).unwrap_or(i32::MAX);
            if stable_pods > 0.0 {
                stable_desired = stable_desired.max(floor);
            }
            if panic_pods > 0.0 {
                panic_desired = panic_desired.max(floor);
            }
        }

        // Unclamped on purpose: a surge the rate limit hides must still panic.
        let over_threshold = panic_pods / pods >= spec.panic_threshold;
        match self.panic_since_ms {
            _ if over_threshold => self.panic_since_ms = Some(now_ms),
            Some(since) if panic_over(since, spec.stable_window, now_ms) => {
                // The surge has had a whole stable window to show up in the
                // stable average, which can take over again.
                self.panic_since_ms = None;
                self.max_panic_pods = 0;
            }
            _ => {}
        }

        let mut desired = stable_desired;
        if self.panic_since_ms.is_some() {
            // The stable window can ask for more than the panic window (load
            // that is falling off); provision for whichever is larger.
            desired = desired.max(panic_desired);
            self.max_panic_pods = self.max_panic_pods.max(desired);
            desired = self.max_panic_pods;
        }

        // An unreachable revision gets no traffic to protect: no delay.
        if spec.reachable
            && let Some(window) = &mut self.delay_window
        {
            window.record(now_ms, desired);
            desired = window.current();
        }

        Recommendation {
            desired,
            excess_burst_capacity: excess_burst_capacity(spec, ready, panic),
            panicking: self.panic_since_ms.is_some(),
        }
    }
}

/// Capacity left after serving the panic-window load and keeping the target
/// burst in reserve. It uses the short window so the decision to put the
/// gateway back in front of the pods reacts to surges quickly.
fn excess_burst_capacity(spec: &DeciderSpec, ready: u32, panic: f64) -> i32 {
    let tbc = spec.target_burst_capacity;
    if tbc == 0.0 {
        0
    } else if tbc > 0.0 {
        (f64::from(ready) * spec.total_value - tbc - panic).floor() as i32
    } else {
        -1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000;
    const MINUTE: u64 = 60 * SECOND;
    /// Knative's tests resolve the total from the target at 75% utilization.
    const TARGET_UTILIZATION: f64 = 0.75;

    /// The spec of Knative's `newTestAutoscaler(target, tbc)`.
    fn test_spec(target: f64, tbc: f64) -> DeciderSpec {
        DeciderSpec {
            metric: Metric::Concurrency,
            target_value: target,
            total_value: target / TARGET_UTILIZATION,
            target_burst_capacity: tbc,
            panic_threshold: 2.0,
            max_scale_up_rate: 10.0,
            max_scale_down_rate: 10.0,
            stable_window: Duration::from_secs(60),
            scale_down_delay: Duration::ZERO,
            activation_scale: 0,
            reachable: true,
        }
    }

    /// The spec of Knative's scale-down-delay tests: no panic, no burst capacity.
    fn delay_spec(delay: Duration) -> DeciderSpec {
        DeciderSpec {
            metric: Metric::Concurrency,
            target_value: 10.0,
            total_value: 0.0,
            target_burst_capacity: 0.0,
            panic_threshold: 100.0,
            max_scale_up_rate: 10.0,
            max_scale_down_rate: 10.0,
            stable_window: Duration::ZERO,
            scale_down_delay: delay,
            activation_scale: 0,
            reachable: true,
        }
    }

    /// Knative's `expectedEBC(target, tbc, panic, pods)`.
    fn ebc(target: f64, tbc: f64, panic: f64, pods: f64) -> i32 {
        (target / TARGET_UTILIZATION * pods - tbc - panic).floor() as i32
    }

    #[derive(Debug)]
    struct Tick {
        at_ms: u64,
        ready: u32,
        stable: f64,
        panic: f64,
        new_spec: Option<DeciderSpec>,
        desired: i32,
        ebc: i32,
        panicking: Option<bool>,
    }

    fn tick(at_ms: u64, ready: u32, stable: f64, panic: f64, desired: i32, ebc: i32) -> Tick {
        Tick { at_ms, ready, stable, panic, new_spec: None, desired, ebc, panicking: None }
    }

    impl Tick {
        fn panicking(self, panicking: bool) -> Self {
            Self { panicking: Some(panicking), ..self }
        }

        fn after_update(self, spec: DeciderSpec) -> Self {
            Self { new_spec: Some(spec), ..self }
        }
    }

    struct Case {
        label: &'static str,
        spec: DeciderSpec,
        initial_ready: u32,
        ticks: Vec<Tick>,
    }

    fn case(label: &'static str, spec: DeciderSpec, initial_ready: u32, ticks: Vec<Tick>) -> Case {
        Case { label, spec, initial_ready, ticks }
    }

    fn with(spec: DeciderSpec, change: impl FnOnce(&mut DeciderSpec)) -> DeciderSpec {
        let mut spec = spec;
        change(&mut spec);
        spec
    }

    /// Every case of Knative's `autoscaler_test.go` that this API can express,
    /// labelled with the Knative test it reproduces. Every decider is created
    /// at time 0. Knative's tests that set the panic state by hand (panicking
    /// since 5 s ago, at 5 pods) start here from a decider created with 5
    /// ready pods and ticked 5 s later, which is the same state.
    fn knative_cases() -> Vec<Case> {
        let t0 = 1_000 * SECOND;
        vec![
            case(
                "TestAutoscalerScaleDownDelay/simple+gradual",
                delay_spec(Duration::from_secs(300)),
                0,
                vec![
                    tick(2 * SECOND, 0, 40.0, 40.0, 4, 0),
                    // Less than the delay at reduced load: hold.
                    tick(5 * MINUTE, 0, 0.0, 0.0, 4, 0),
                    // The 4 has aged out.
                    tick(5 * MINUTE + 2 * SECOND, 0, 0.0, 0.0, 0, 0),
                    // gradual
                    tick(9 * MINUTE, 0, 40.0, 40.0, 4, 0),
                    tick(10 * MINUTE, 0, 30.0, 30.0, 4, 0),
                    tick(11 * MINUTE, 0, 0.0, 0.0, 4, 0),
                    tick(14 * MINUTE, 0, 0.0, 0.0, 3, 0),
                    tick(15 * MINUTE, 0, 0.0, 0.0, 0, 0),
                ],
            ),
            case(
                "TestAutoscalerScaleDownDelayNotReachable",
                delay_spec(Duration::from_secs(300)),
                0,
                vec![
                    tick(2 * SECOND, 0, 40.0, 40.0, 4, 0),
                    tick(MINUTE, 0, 0.0, 0.0, 4, 0),
                    // Unreachable: the delay no longer applies.
                    tick(2 * SECOND, 0, 0.0, 0.0, 0, 0)
                        .after_update(with(delay_spec(Duration::from_secs(300)), |s| s.reachable = false)),
                ],
            ),
            case(
                "TestAutoscalerScaleDownDelayZero",
                delay_spec(Duration::ZERO),
                0,
                vec![tick(0, 0, 40.0, 40.0, 4, 0), tick(500, 0, 20.0, 20.0, 2, 0)],
            ),
            case(
                "TestAutoscalerMetrics",
                test_spec(10.0, 100.0),
                1,
                vec![tick(t0, 1, 50.0, 50.0, 5, ebc(10.0, 100.0, 50.0, 1.0)).panicking(true)],
            ),
            case(
                "TestAutoscalerMetricsWithRPS",
                with(test_spec(10.0, 100.0), |s| s.metric = Metric::Rps),
                1,
                vec![tick(t0 + 61 * SECOND, 1, 100.0, 99.0, 10, ebc(10.0, 100.0, 99.0, 1.0)).panicking(true)],
            ),
            case(
                "TestAutoscalerStableModeIncreaseWithConcurrencyDefault",
                test_spec(10.0, 101.0),
                1,
                vec![
                    tick(t0, 1, 50.0, 10.0, 5, ebc(10.0, 101.0, 10.0, 1.0)).panicking(false),
                    tick(t0, 1, 100.0, 10.0, 10, ebc(10.0, 101.0, 10.0, 1.0)).panicking(false),
                ],
            ),
            case(
                "TestAutoscalerStableModeIncreaseWithRPS",
                with(test_spec(10.0, 101.0), |s| s.metric = Metric::Rps),
                1,
                vec![
                    tick(t0, 1, 50.0, 50.0, 5, ebc(10.0, 101.0, 50.0, 1.0)),
                    tick(t0, 1, 100.0, 99.0, 10, ebc(10.0, 101.0, 99.0, 1.0)),
                ],
            ),
            case(
                "TestAutoscalerUnpanicAfterSlowIncrease",
                test_spec(1.0, 98.0),
                1,
                vec![
                    tick(t0, 10, 11.0, 25.0, 25, ebc(1.0, 98.0, 25.0, 10.0)).panicking(true),
                    // Half a window later, still panicking (from t0): no scale-down below the panic floor.
                    tick(t0 + 30 * SECOND, 40, 30.0, 41.0, 41, ebc(1.0, 98.0, 41.0, 40.0)).panicking(true),
                    // A window and a tick after the last over-threshold tick: calm again.
                    tick(t0 + 62 * SECOND, 55, 50.0, 56.0, 50, ebc(1.0, 98.0, 56.0, 55.0)).panicking(false),
                ],
            ),
            case(
                "TestAutoscalerExtendPanicWindow",
                test_spec(1.0, 98.0),
                1,
                vec![
                    tick(t0, 10, 11.0, 25.0, 25, ebc(1.0, 98.0, 25.0, 10.0)).panicking(true),
                    tick(t0 + 30 * SECOND, 40, 30.0, 80.0, 80, ebc(1.0, 98.0, 80.0, 40.0)).panicking(true),
                    // Extended at t0+30s, so still panicking at t0+62s despite the calm.
                    tick(t0 + 62 * SECOND, 80, 30.0, 30.0, 80, ebc(1.0, 98.0, 30.0, 80.0)).panicking(true),
                    tick(t0 + 92 * SECOND, 80, 30.0, 30.0, 30, ebc(1.0, 98.0, 30.0, 80.0)).panicking(false),
                ],
            ),
            case(
                "TestAutoscalerStableModeDecrease",
                test_spec(10.0, 98.0),
                1,
                vec![
                    tick(t0, 8, 100.0, 100.0, 10, ebc(10.0, 98.0, 100.0, 8.0)),
                    tick(t0, 8, 50.0, 50.0, 5, ebc(10.0, 98.0, 50.0, 8.0)),
                ],
            ),
            case(
                "TestAutoscalerStableModeNoTrafficScaleToZero",
                test_spec(10.0, 75.0),
                1,
                vec![
                    tick(t0, 1, 1.0, 0.0, 1, ebc(10.0, 75.0, 0.0, 1.0)),
                    tick(t0, 1, 0.0, 0.0, 0, ebc(10.0, 75.0, 0.0, 1.0)),
                ],
            ),
            case(
                "TestAutoscalerActivationScale",
                with(test_spec(10.0, 75.0), |s| s.activation_scale = 2),
                1,
                vec![
                    tick(t0, 1, 0.0, 0.0, 0, ebc(10.0, 75.0, 0.0, 1.0)),
                    tick(t0, 1, 1.0, 0.0, 2, ebc(10.0, 75.0, 0.0, 1.0)),
                ],
            ),
            case(
                "TestAutoscalerPanicModeExponentialTrackAndStabilize",
                test_spec(1.0, 101.0),
                1,
                vec![
                    tick(t0, 1, 6.0, 6.0, 6, ebc(1.0, 101.0, 6.0, 1.0)).panicking(true),
                    tick(t0 + 10, 6, 36.0, 36.0, 36, ebc(1.0, 101.0, 36.0, 6.0)).panicking(true),
                    tick(t0 + 10 + SECOND, 36, 216.0, 216.0, 216, ebc(1.0, 101.0, 216.0, 36.0)).panicking(true),
                    tick(t0 + 10 + SECOND, 216, 1296.0, 1296.0, 1296, ebc(1.0, 101.0, 1296.0, 216.0)),
                    tick(t0 + 10 + 2 * SECOND, 1296, 1296.0, 1296.0, 1296, ebc(1.0, 101.0, 1296.0, 1296.0)),
                ],
            ),
            case(
                "TestAutoscalerScale/AutoscalerNoDataAtZeroNoAutoscale",
                test_spec(10.0, 100.0),
                1,
                vec![tick(t0, 1, 0.0, 0.0, 0, ebc(10.0, 100.0, 0.0, 1.0))],
            ),
            case(
                "TestAutoscalerScale/AutoscalerStableModeUnlimitedTBC",
                test_spec(181.0, -1.0),
                1,
                vec![tick(t0, 1, 21.0, 26.0, 1, -1)],
            ),
            case("TestAutoscalerScale/Autoscaler0TBC", test_spec(10.0, 0.0), 1, vec![tick(t0, 1, 50.0, 49.0, 5, 0)]),
            case(
                "TestAutoscalerScale/AutoscalerStableModeNoChange",
                test_spec(10.0, 100.0),
                1,
                vec![tick(t0, 1, 50.0, 50.0, 5, ebc(10.0, 100.0, 50.0, 1.0))],
            ),
            case(
                "TestAutoscalerScale/AutoscalerPanicStableLargerThanPanic",
                test_spec(1.0, 100.0),
                5,
                // Stable asks for more than panic: provision for the stable window.
                vec![tick(5 * SECOND, 5, 50.0, 30.0, 50, ebc(1.0, 100.0, 30.0, 5.0)).panicking(true)],
            ),
            case(
                "TestAutoscalerScale/AutoscalerPanicStableLessThanPanic",
                test_spec(1.0, 100.0),
                5,
                vec![tick(5 * SECOND, 5, 20.0, 30.0, 30, ebc(1.0, 100.0, 30.0, 5.0)).panicking(true)],
            ),
            case(
                "TestAutoscalerScale/AutoscalerStableModeNoChangeAlreadyScaled",
                test_spec(10.0, 100.0),
                1,
                vec![tick(t0, 5, 50.0, 50.0, 5, ebc(10.0, 100.0, 50.0, 5.0))],
            ),
            case(
                "TestAutoscalerScale/AutoscalerStableModeIncreaseWithSmallScaleUpRate",
                with(test_spec(1.0, 1982.0), |s| s.max_scale_up_rate = 1.1),
                1,
                vec![tick(t0, 2, 3.0, 3.1, 3, ebc(1.0, 1982.0, 3.1, 2.0))],
            ),
            case(
                "TestAutoscalerScale/AutoscalerStableModeDecreaseWithSmallScaleDownRate",
                with(test_spec(10.0, 1982.0), |s| s.max_scale_down_rate = 1.1),
                1,
                vec![tick(t0, 100, 1.0, 1.0, 90, ebc(10.0, 1982.0, 1.0, 100.0))],
            ),
            case(
                "TestAutoscalerScale/AutoscalerStableModeDecreaseNonReachable",
                with(test_spec(10.0, 1982.0), |s| {
                    s.max_scale_down_rate = 1.1;
                    s.reachable = false;
                }),
                1,
                vec![tick(t0, 100, 1.0, 1.0, 1, ebc(10.0, 1982.0, 1.0, 100.0))],
            ),
            case(
                "TestAutoscalerScale/AutoscalerPanicModeDoublePodCount",
                test_spec(10.0, 84.0),
                1,
                vec![tick(t0, 1, 50.0, 100.0, 10, ebc(10.0, 84.0, 100.0, 1.0)).panicking(true)],
            ),
            case(
                "TestAutoscalerPanicThenUnPanicScaleDown",
                test_spec(10.0, 93.0),
                1,
                vec![
                    tick(t0, 1, 100.0, 100.0, 10, ebc(10.0, 93.0, 100.0, 1.0)),
                    tick(t0 + 10, 10, 100.0, 1000.0, 100, ebc(10.0, 93.0, 1000.0, 10.0)).panicking(true),
                    // Load gone, but still in panic: hold.
                    tick(t0 + 10 + 30 * SECOND, 10, 1.0, 1.0, 100, ebc(10.0, 93.0, 1.0, 10.0)).panicking(true),
                    // Past the stable window: scale down (by the rate limit, to 1).
                    tick(t0 + 10 + 61 * SECOND, 10, 1.0, 1.0, 1, ebc(10.0, 93.0, 1.0, 10.0)).panicking(false),
                ],
            ),
            case(
                "TestAutoscalerRateLimitScaleUp",
                test_spec(10.0, 61.0),
                1,
                vec![
                    // Needs 100 pods but may only grow tenfold.
                    tick(t0, 1, 1000.0, 1001.0, 10, ebc(10.0, 61.0, 1001.0, 1.0)),
                    tick(t0, 10, 1000.0, 1001.0, 100, ebc(10.0, 61.0, 1001.0, 10.0)),
                ],
            ),
            case(
                "TestAutoscalerRateLimitScaleDown",
                test_spec(10.0, 61.0),
                1,
                vec![
                    tick(t0, 100, 1.0, 1.0, 10, ebc(10.0, 61.0, 1.0, 100.0)),
                    tick(t0, 10, 1.0, 1.0, 1, ebc(10.0, 61.0, 1.0, 10.0)),
                ],
            ),
            case(
                "TestAutoscalerUseOnePodAsMinimumIfEndpointsNotFound",
                test_spec(10.0, 81.0),
                1,
                vec![tick(t0, 0, 1000.0, 888.0, 10, ebc(10.0, 81.0, 888.0, 0.0))],
            ),
            case(
                "TestAutoscalerUpdateTarget",
                test_spec(10.0, 77.0),
                1,
                vec![
                    tick(t0, 1, 100.0, 101.0, 10, ebc(10.0, 77.0, 101.0, 1.0)),
                    tick(t0, 10, 100.0, 101.0, 100, ebc(1.0, 71.0, 101.0, 10.0)).after_update(DeciderSpec {
                        target_value: 1.0,
                        total_value: 1.0 / TARGET_UTILIZATION,
                        target_burst_capacity: 71.0,
                        panic_threshold: 2.0,
                        max_scale_down_rate: 10.0,
                        max_scale_up_rate: 10.0,
                        stable_window: Duration::from_secs(60),
                        reachable: false,
                        ..test_spec(1.0, 71.0)
                    }),
                ],
            ),
            case(
                "TestStartInPanicMode/ready=2",
                DeciderSpec {
                    target_value: 100.0,
                    total_value: 120.0,
                    target_burst_capacity: 11.0,
                    panic_threshold: 220.0,
                    ..test_spec(100.0, 11.0)
                },
                2,
                // Created in panic with a floor of 2 pods: a quiet first tick keeps them.
                vec![tick(2 * SECOND, 2, 10.0, 10.0, 2, (2.0f64 * 120.0 - 11.0 - 10.0).floor() as i32).panicking(true)],
            ),
        ]
    }

    #[test]
    fn reproduces_knative_autoscaler_tests() {
        for case in knative_cases() {
            let mut decider = Decider::new(case.spec, case.initial_ready, 0);
            for (i, t) in case.ticks.into_iter().enumerate() {
                if let Some(spec) = t.new_spec {
                    decider.set_spec(spec);
                }
                let got = decider.scale(t.at_ms, t.ready, t.stable, t.panic);
                let at = format!("{} tick {i} at {} ms", case.label, t.at_ms);
                assert_eq!(got.desired, t.desired, "{at}: desired");
                assert_eq!(got.excess_burst_capacity, t.ebc, "{at}: excess burst capacity");
                if let Some(panicking) = t.panicking {
                    assert_eq!(got.panicking, panicking, "{at}: panicking");
                }
            }
        }
    }

    #[test]
    fn starts_in_panic_only_above_one_ready_pod() {
        // Knative's TestStartInPanicMode and TestNewFail (a failed count is 0).
        let spec = test_spec(100.0, 11.0);
        for ready in 0..3u32 {
            let decider = Decider::new(spec.clone(), ready, 5_000);
            assert_eq!(decider.is_panicking(), ready > 1, "ready={ready}");
            assert_eq!(decider.panic_since_ms, (ready > 1).then_some(5_000), "ready={ready}");
            assert_eq!(decider.max_panic_pods, ready as i32, "ready={ready}");
        }
    }

    #[test]
    fn panic_time_moves_only_while_over_the_threshold() {
        // Knative's Unpanic and Extend tests check panicTime directly.
        let mut decider = Decider::new(test_spec(1.0, 98.0), 1, 0);
        decider.scale(10_000, 10, 11.0, 25.0);
        assert_eq!(decider.panic_since_ms, Some(10_000));
        decider.scale(40_000, 40, 30.0, 41.0);
        assert_eq!(decider.panic_since_ms, Some(10_000), "below the threshold: not extended");
        decider.scale(50_000, 40, 30.0, 80.0);
        assert_eq!(decider.panic_since_ms, Some(50_000), "at the threshold: extended");
    }

    #[test]
    fn panic_ends_strictly_after_a_stable_window() {
        let mut decider = Decider::new(test_spec(1.0, 98.0), 1, 0);
        assert!(decider.scale(0, 10, 10.0, 20.0).panicking);
        assert!(decider.scale(60_000, 10, 1.0, 1.0).panicking, "exactly a window later");
        let calm = decider.scale(60_001, 10, 1.0, 1.0);
        assert!(!calm.panicking);
        assert_eq!(calm.desired, 1);
    }

    #[test]
    fn activation_scale_applies_only_to_positive_load() {
        let spec = with(test_spec(10.0, 0.0), |s| s.activation_scale = 3);
        let mut decider = Decider::new(spec, 0, 0);
        assert_eq!(decider.scale(0, 0, 0.0, 0.0).desired, 0);
        assert_eq!(decider.scale(2_000, 0, 0.5, 0.5).desired, 3);
        // Above the activation scale the load decides.
        assert_eq!(decider.scale(4_000, 3, 45.0, 45.0).desired, 5);
    }

    #[test]
    fn a_new_scale_down_delay_starts_a_new_window() {
        let mut decider = Decider::new(delay_spec(Duration::from_secs(300)), 0, 0);
        assert_eq!(decider.scale(2_000, 0, 40.0, 40.0).desired, 4);
        assert_eq!(decider.scale(4_000, 0, 0.0, 0.0).desired, 4);
        decider.set_spec(delay_spec(Duration::from_secs(60)));
        assert_eq!(decider.scale(6_000, 0, 0.0, 0.0).desired, 0, "the old maxima are gone");
        assert_eq!(decider.scale(8_000, 0, 20.0, 20.0).desired, 2);
        // The same delay keeps the window.
        decider.set_spec(with(delay_spec(Duration::from_secs(60)), |s| s.target_value = 20.0));
        assert_eq!(decider.scale(10_000, 0, 0.0, 0.0).desired, 2);
        decider.set_spec(with(delay_spec(Duration::ZERO), |s| s.target_value = 20.0));
        assert_eq!(decider.scale(12_000, 0, 0.0, 0.0).desired, 0, "no delay");
    }

    #[test]
    fn initial_recommendation_carries_the_initial_burst_capacity() {
        let spec = DeciderSpec::default();
        assert_eq!(
            Recommendation::before_first_tick(&spec, 1),
            Recommendation { desired: -1, excess_burst_capacity: -111, panicking: false }
        );
        assert_eq!(Recommendation::before_first_tick(&spec, 3).excess_burst_capacity, 89);
        let zero = DeciderSpec { target_burst_capacity: 0.0, ..DeciderSpec::default() };
        assert_eq!(Recommendation::before_first_tick(&zero, 1).excess_burst_capacity, 0);
        let always = DeciderSpec { target_burst_capacity: -1.0, ..DeciderSpec::default() };
        assert_eq!(Recommendation::before_first_tick(&always, 1).excess_burst_capacity, -1);
    }
}
