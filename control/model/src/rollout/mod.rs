//! Knative's gradual rollout, with revgate's gates and rollback.
//!
//! When the revision behind a Route's `latestRevision: true` target changes,
//! the new one takes that target's traffic in steps over
//! `serving.knative.dev/rollout-duration`, starting at 1%, exactly as
//! Knative's route reconciler does. revgate adds gates judged from the
//! gateway's own measurements of the candidate in each step; a breach
//! returns the target to the previous revision.
//!
//! Pure, like the rest of the model: time comes in as Unix milliseconds.
//!
//! # Layout
//! - [`annotations`]: the keys, their validation, and the parsed [`RolloutSpec`].
//! - [`gates`]: what was measured in a step ([`StepMeasurement`]) and the verdict on it.
//! - [`state`]: the serialisable per-Route state ([`RouteRollout`]) and its phases.
//! - [`orchestrator`]: Knative's algorithm (goal, step, observe-ready) and the gates' steps.
//! - [`controls`]: promote, abort, retry.
//! - [`served`]: the rollout's split in the gateway plan and in the Route's status.

pub mod annotations;
pub mod controls;
pub mod gates;
pub mod orchestrator;
pub mod served;
pub mod state;
#[cfg(test)]
mod tests;

pub use annotations::{Gates, RolloutSpec};
pub use controls::{Control, ControlRefused};
pub use gates::{Breach, Metric, StepMeasurement};
pub use state::{AbortCause, ConfigurationRollout, Phase, RevisionShare, Rollouts, RouteRollout};
