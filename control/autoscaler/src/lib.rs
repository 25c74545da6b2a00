//! Knative's KPA (the Knative Pod Autoscaler) as pure logic: the metric
//! windows, the scaling decider, the scale-to-zero rules around it, and a
//! simulator that replays a load trace through all three.
//!
//! revgate reproduces Knative Serving's autoscaling behaviour, so the rules
//! here follow Knative's, down to the rounding. This crate does no I/O and
//! reads no clock: time is a parameter, in milliseconds on whatever monotonic
//! origin the caller uses, so every decision can be replayed and tested by
//! stepping time forward.
//!
//! A revision's autoscaler, whole, is [`RevisionAutoscaler`]; the control
//! plane only feeds it and applies what it returns. Inside, per revision:
//!
//! 1. every second, [`RevisionWindows::record`] the revision-total concurrency
//!    and requests per second the gateway reports;
//! 2. every [`TICK_INTERVAL`] (or at once when a revision at zero gets a
//!    request), read [`RevisionWindows::averages`] and ask
//!    [`Decider::scale`] for a [`Recommendation`];
//! 3. pass the latest recommendation to [`Scaler::step`], apply the replicas
//!    it returns, switch the gateway to its [`Mode`] and report its [`Phase`].
//!
//! # Layout
//! - [`window`]: per-second metric buckets with Knative's linear and
//!   weighted-exponential averages ([`MetricWindow`], [`RevisionWindows`]),
//!   and the max window behind `scale-down-delay` ([`MaxWindow`]).
//! - [`decider`]: [`Decider`], Knative's `Scale(now)`: panic mode, rate
//!   limits, activation scale, scale-down delay, excess burst capacity.
//! - [`scaler`]: [`Scaler`], the reconciler's state machine: min/max and
//!   initial scale, scale to zero with its grace and retention periods, the
//!   gateway's mode and the revision's `Active` phase.
//! - [`revision`]: [`RevisionAutoscaler`], the three above for one
//!   revision, with the scale last asked and its PodAutoscaler status
//!   ([`KpaStatus`]): `record(now, …)`, `tick(now, …) -> Option<scale>`.
//! - [`contract`]: [`decide`], a JSON script of decider ticks in, one JSON line
//!   per tick out; the contract acceptance tests run against.
//! - [`simulate`](mod@simulate): [`simulate()`](simulate::simulate) a trace
//!   and render it as CSV or SVG.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod contract;
pub mod decider;
pub mod revision;
pub mod scaler;
pub mod simulate;
pub mod window;

pub use contract::{ContractError, DecideOutput, decide, to_json_lines};
pub use decider::{Decider, DeciderSpec, Metric, Recommendation, TICK_INTERVAL};
pub use revision::{KpaStatus, RevisionAutoscaler, decider_spec, scaler_spec};
pub use scaler::{Mode, Phase, Reason, ScaleDecision, Scaler, ScalerSpec};
pub use simulate::{SimulationPoint, to_csv, to_svg};
pub use window::{Algorithm, MaxWindow, MetricWindow, RevisionWindows, WindowSpec};
