//! What to do with the decider's recommendation: the KPA reconciler's rules
//! (Knative's `kpa.go` and `scaler.go`), pure and clocked by parameter.
//!
//! The decider says how many pods the load needs. The scaler turns that into
//! a replica count to apply (within min and max scale, honouring the initial
//! scale and the scale-to-zero grace), into the gateway's [`Mode`], and into
//! the revision's [`Phase`] for its `Active` condition.
//!
//! Where Knative puts the activator in the request path (the serverless
//! service's Proxy mode), revgate's gateway filter holds the requests
//! itself. Knative probes the activator before scaling to zero, to be sure it
//! is in the path; the filter is always in the path, so that probe always
//! succeeds at once here.
//!
//! # Truth tables
//!
//! **Replicas.** The rules apply in order; the first that matches decides.
//! `desired` is the decider's recommendation (−1 = no data yet).
//!
//! | # | when | want | apply |
//! |---|---|---|---|
//! | 1 | requests are held and `desired ≤ 0` | continue with `desired = max(1, activation_scale)` | |
//! | 2 | `desired = −1`, not activating | −1 | nothing |
//! | 3 | always | continue with `desired` clamped to `[min, max]` (see below) | |
//! | 4 | `desired ≠ 0` | `desired` | `desired` |
//! | 5 | scale to zero disabled | 1 | 1 |
//! | 6 | activating for more than progress deadline + 30 s | 0 | 0 |
//! | 7 | activating | −1 | nothing |
//! | 8 | active for less than the stable window | 1 | 1 |
//! | 9 | active for at least the stable window | 0 | nothing (the revision turns inactive) |
//! | 10 | inactive for at least max(grace period, pod retention) | 0 | 0 |
//! | 11 | inactive for less than the pod retention | 0 | nothing |
//! | 12 | holding requests (Proxy) for at least the grace period | 0 | 0 |
//! | 13 | otherwise | 0 | nothing |
//!
//! `min` is `min_scale` (0 for an unreachable revision), raised to the initial
//! scale while a reachable revision has not yet reached it (when that is above
//! 1); `max` is `max_scale`, 0 meaning none. The pod retention counts only
//! while the revision is reachable. Rule 1 is the gateway's counterpart of the
//! activator's poke: a request for a revision at zero must bring a pod up
//! even if the decider has not ticked since it arrived, and a revision must
//! not drop to zero under held requests.
//!
//! **Mode.** [`Mode::Serve`] when `want > 0` and the excess burst capacity is
//! at least 0, else [`Mode::Proxy`]: the gateway holds requests while there is
//! nothing to serve them or too little spare capacity.
//!
//! **Phase** (Knative's `computeActiveCondition`), with `min_ready` =
//! max(`min`, initial scale) until the revision first has that many pods
//! ready, max(`min`, 1) after:
//!
//! | want | ready | phase before | phase after |
//! |---|---|---|---|
//! | 0, or `min_ready` = 0 | any | activating (and `min_ready` > 0) | inactive, `TimedOut` |
//! | 0, or `min_ready` = 0 | any | otherwise | inactive, `NoTraffic` |
//! | > 0 | < `min_ready` | any | activating, `Queued` |
//! | −1 | < `min_ready` | inactive | inactive, `NoTraffic` |
//! | −1 | < `min_ready` | active, activating | activating, `Queued` |
//! | > 0 | ≥ `min_ready` | any | active |
//! | −1 | ≥ `min_ready` | inactive | inactive |
//! | −1 | ≥ `min_ready` | active, activating | active |
//!
//! A phase's start time moves only when the phase or its reason changes.

use std::fmt;
use std::time::Duration;

use crate::decider::Recommendation;

/// Extra time a revision may stay activating beyond its progress deadline
/// before it is given up and scaled to zero, so the revision's own failure
/// diagnosis runs first.
pub const ACTIVATION_TIMEOUT_BUFFER: Duration = Duration::from_secs(30);

/// A revision's scaling bounds and scale-to-zero settings, already resolved
/// from annotations and `config-autoscaler`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalerSpec {
    /// `min-scale`; ignored while the revision is unreachable.
    pub min_scale: u32,
    /// `max-scale`; 0 = unbounded.
    pub max_scale: u32,
    /// `initial-scale`: pods before the revision first becomes ready.
    pub initial_scale: u32,
    /// `allow-zero-initial-scale`: whether an initial scale of 0 is honoured.
    pub allow_zero_initial_scale: bool,
    /// `enable-scale-to-zero`; when off, the floor is one pod.
    pub enable_scale_to_zero: bool,
    /// The stable window: how long a revision stays up after becoming active.
    pub stable_window: Duration,
    /// `scale-to-zero-grace-period`: how long requests are held by the gateway
    /// before the last pod goes.
    pub scale_to_zero_grace_period: Duration,
    /// `scale-to-zero-pod-retention-period`: how long the last pod stays after
    /// the revision turns inactive.
    pub scale_to_zero_pod_retention_period: Duration,
    /// Whether the revision receives traffic (is routed).
    pub reachable: bool,
    /// `activation-scale`: the scale a held request brings a revision up to.
    pub activation_scale: u32,
    /// `progress-deadline`: how long a revision may take to become ready.
    pub progress_deadline: Duration,
}

impl Default for ScalerSpec {
    /// Knative's defaults.
    fn default() -> Self {
        Self {
            min_scale: 0,
            max_scale: 0,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            enable_scale_to_zero: true,
            stable_window: Duration::from_secs(60),
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            reachable: true,
            activation_scale: 1,
            progress_deadline: Duration::from_secs(600),
        }
    }
}

impl ScalerSpec {
    /// The replicas a new revision starts with: the initial scale, where 0
    /// counts only if allowed (else Knative's default of 1). The workload is
    /// created with this many replicas; until they are first ready, the scaler
    /// keeps at least this many (when above 1).
    pub fn effective_initial_scale(&self) -> u32 {
        if self.initial_scale == 0 && !self.allow_zero_initial_scale { 1 } else { self.initial_scale }
    }

    /// The lower bound; an unreachable revision has none, so it can go.
    fn min(&self) -> u32 {
        if self.reachable { self.min_scale } else { 0 }
    }

    /// The pod retention; an unreachable revision keeps no pod for traffic.
    fn pod_retention(&self) -> Duration {
        if self.reachable { self.scale_to_zero_pod_retention_period } else { Duration::ZERO }
    }
}

/// Whether the gateway sends requests straight to the pods or holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Requests go to ready pods.
    Serve,
    /// The gateway holds requests and releases them as capacity allows
    /// (Knative's activator in the path).
    Proxy,
}

/// The revision's `Active` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Pods are wanted but not enough are ready (`Active=Unknown`).
    Activating,
    /// Enough pods are ready (`Active=True`).
    Active,
    /// No pods are wanted (`Active=False`).
    Inactive,
}

impl Phase {
    /// The `Active` condition's status as Knative writes it: `Unknown`,
    /// `True` or `False`.
    pub fn condition_status(self) -> &'static str {
        match self {
            Phase::Activating => "Unknown",
            Phase::Active => "True",
            Phase::Inactive => "False",
        }
    }
}

/// Why the revision is in its phase, with Knative's reason strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Requests are held while pods start.
    Queued,
    /// The revision is not receiving traffic.
    NoTraffic,
    /// The revision could not be activated within its progress deadline.
    TimedOut,
}

impl Reason {
    /// The condition reason as Knative writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Queued => "Queued",
            Reason::NoTraffic => "NoTraffic",
            Reason::TimedOut => "TimedOut",
        }
    }
}

impl Reason {
    /// The condition message Knative gives with the reason.
    pub fn message(self) -> &'static str {
        match self {
            Reason::Queued => "Requests to the target are being buffered as resources are provisioned.",
            Reason::NoTraffic => "The target is not receiving traffic.",
            Reason::TimedOut => "The target could not be activated.",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one [`Scaler::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleDecision {
    /// Replicas to set on the workload, if anything is to be applied. Applying
    /// the current count again is harmless; the caller may skip it.
    pub apply: Option<u32>,
    /// The scale the autoscaler wants (status `desiredScale`); −1 = unknown.
    pub want: i32,
    /// How the gateway should treat the revision's requests.
    pub mode: Mode,
    /// The revision's phase after this step.
    pub phase: Phase,
    /// The reason for the phase; `None` while active.
    pub reason: Option<Reason>,
    /// When the phase (with its reason) began.
    pub phase_since_ms: u64,
}

impl ScaleDecision {
    /// Whether the revision is active (`Active=True`).
    pub fn is_active(&self) -> bool {
        self.phase == Phase::Active
    }
}

/// The scale-to-zero state machine of one revision. See the
/// [module docs](self) for its tables.
#[derive(Debug, Clone)]
pub struct Scaler {
    spec: ScalerSpec,
    phase: Phase,
    reason: Option<Reason>,
    phase_since_ms: u64,
    /// Whether the revision has once had `min_ready` pods ready; until then the
    /// initial scale acts as a lower bound.
    reached_initial_scale: bool,
    /// Since when the gateway has been holding requests; `None` while serving.
    proxy_since_ms: Option<u64>,
}

fn elapsed(since_ms: u64, now_ms: u64) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(since_ms))
}

/// Clamps to `[min, max]`, `max = 0` meaning no upper bound; a lower bound
/// above the upper one wins.
fn apply_bounds(min: u32, max: u32, desired: i32) -> i32 {
    let min = i32::try_from(min).unwrap_or(i32::MAX);
    let max = i32::try_from(max).unwrap_or(i32::MAX);
    if desired < min {
        min
    } else if max != 0 && desired > max {
        max
    } else {
        desired
    }
}

impl Scaler {
    /// The state of a revision created at `now_ms`: activating, with the
    /// gateway holding its requests until it is ready.
    pub fn new(spec: ScalerSpec, now_ms: u64) -> Self {
        Self {
            spec,
            phase: Phase::Activating,
            reason: Some(Reason::Queued),
            phase_since_ms: now_ms,
            reached_initial_scale: false,
            proxy_since_ms: Some(now_ms),
        }
    }

    /// The current settings.
    pub fn spec(&self) -> &ScalerSpec {
        &self.spec
    }

    /// Replaces the settings (after an annotation or routing change); the
    /// state carries over.
    pub fn set_spec(&mut self, spec: ScalerSpec) {
        self.spec = spec;
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// One reconcile at `now_ms`, with the decider's latest valid
    /// recommendation ([`Recommendation::before_first_tick`] until there is
    /// one), the ready pods, and whether the gateway holds requests for the
    /// revision that wait for a pod.
    pub fn step(
        &mut self,
        now_ms: u64,
        recommendation: &Recommendation,
        ready: u32,
        requests_held: bool,
    ) -> ScaleDecision {
        let (want, apply) = self.replicas(now_ms, recommendation.desired, requests_held);

        let mode = if want > 0 && recommendation.excess_burst_capacity >= 0 { Mode::Serve } else { Mode::Proxy };
        self.proxy_since_ms = match mode {
            Mode::Serve => None,
            Mode::Proxy => Some(self.proxy_since_ms.unwrap_or(now_ms)),
        };

        self.update_phase(now_ms, want, ready);
        ScaleDecision { apply, want, mode, phase: self.phase, reason: self.reason, phase_since_ms: self.phase_since_ms }
    }

    /// Rules 1 to 4 of the replica table.
    fn replicas(&self, now_ms: u64, desired: i32, requests_held: bool) -> (i32, Option<u32>) {
        let mut desired = desired;
        if requests_held && desired <= 0 {
            desired = i32::try_from(self.spec.activation_scale.max(1)).unwrap_or(i32::MAX);
        }
        if desired < 0 && self.phase != Phase::Activating {
            return (desired, None);
        }

        let mut min = self.spec.min();
        let initial = self.spec.effective_initial_scale();
        if initial > 1 && !self.reached_initial_scale && self.spec.reachable {
            min = min.max(initial);
        }
        let desired = apply_bounds(min, self.spec.max_scale, desired);
        if desired != 0 {
            return (desired, u32::try_from(desired).ok());
        }
        self.scale_to_zero(now_ms)
    }

    /// Rules 5 to 13: whether the revision may go to zero now.
    fn scale_to_zero(&self, now_ms: u64) -> (i32, Option<u32>) {
        let spec = &self.spec;
        if !spec.enable_scale_to_zero {
            return (1, Some(1));
        }
        let in_phase = elapsed(self.phase_since_ms, now_ms);
        match self.phase {
            Phase::Activating => {
                // A revision that cannot start must not hold pods forever.
                if in_phase > spec.progress_deadline.saturating_add(ACTIVATION_TIMEOUT_BUFFER) {
                    (0, Some(0))
                } else {
                    (-1, None)
                }
            }
            Phase::Active => {
                // Keep one pod for a stable window after becoming active, so a
                // revision that just woke up is not torn down before its
                // stable average could show any load.
                if in_phase >= spec.stable_window { (0, None) } else { (1, Some(1)) }
            }
            Phase::Inactive => {
                let retention = spec.pod_retention();
                if in_phase >= spec.scale_to_zero_grace_period.max(retention) {
                    return (0, Some(0));
                }
                if !retention.is_zero() && in_phase < retention {
                    return (0, None);
                }
                // The grace period is there so requests are held by the gateway
                // before the last pod goes; it counts from when holding began.
                let holding_for = self.proxy_since_ms.map_or(Duration::ZERO, |since| elapsed(since, now_ms));
                if holding_for >= spec.scale_to_zero_grace_period { (0, Some(0)) } else { (0, None) }
            }
        }
    }

    /// The phase with `ready` pods at `now_ms`, the scale wanted being
    /// `want` (the last step's): the phase table run between steps.
    pub fn observe_ready(&mut self, now_ms: u64, want: i32, ready: u32) -> (Phase, Option<Reason>, u64) {
        self.update_phase(now_ms, want, ready);
        (self.phase, self.reason, self.phase_since_ms)
    }

    /// The phase table.
    fn update_phase(&mut self, now_ms: u64, want: i32, ready: u32) {
        let min = self.spec.min();
        let min_ready =
            if self.reached_initial_scale { min.max(1) } else { min.max(self.spec.effective_initial_scale()) };
        if ready >= min_ready {
            self.reached_initial_scale = true;
        }

        if want == 0 || min_ready == 0 {
            let reason =
                if self.phase == Phase::Activating && min_ready > 0 { Reason::TimedOut } else { Reason::NoTraffic };
            self.set_phase(now_ms, Phase::Inactive, Some(reason));
        } else if ready < min_ready {
            if want > 0 || self.phase != Phase::Inactive {
                self.set_phase(now_ms, Phase::Activating, Some(Reason::Queued));
            } else {
                self.set_phase(now_ms, Phase::Inactive, Some(Reason::NoTraffic));
            }
        } else if want > 0 || self.phase != Phase::Inactive {
            self.set_phase(now_ms, Phase::Active, None);
        }
    }

    fn set_phase(&mut self, now_ms: u64, phase: Phase, reason: Option<Reason>) {
        if (phase, reason) != (self.phase, self.reason) {
            self.phase = phase;
            self.reason = reason;
            self.phase_since_ms = now_ms;
        }
    }
}

#[cfg(test)]
mod tests;
