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
mod tests;
