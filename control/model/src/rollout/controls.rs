//! The operator's controls (the verbs of `kubectl argo rollouts`): promote
//! jumps to 100%, abort returns to the previous revision, retry rolls the
//! aborted revision out again from 1%.

use super::gates::StepMeasurement;
use super::orchestrator::abort_config;
use super::state::{AbortCause, Phase, RouteRollout, StepParams, StepRecord};
use crate::plan::ObjectKey;

/// The operator's command on one Route's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    Promote,
    Abort,
    Retry,
}

impl Control {
    pub fn as_str(self) -> &'static str {
        match self {
            Control::Promote => "promote",
            Control::Abort => "abort",
            Control::Retry => "retry",
        }
    }
}

/// Why a control did not apply; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlRefused {
    #[error(
        "route {route} has no rollout in progress to {verb}; `revgate rollout status {name} -n {namespace}` shows where it stands",
        verb = control.as_str(), name = route.name, namespace = route.namespace
    )]
    NotInProgress { route: ObjectKey, control: Control },
    #[error(
        "route {route} has no aborted rollout to retry; `revgate rollout status {name} -n {namespace}` shows where it stands",
        name = route.name, namespace = route.namespace
    )]
    NotAborted { route: ObjectKey },
}

/// Applies `control` to the rollout of `route` at `now_ms`.
pub fn apply(
    rollout: &mut RouteRollout,
    route: &ObjectKey,
    control: Control,
    now_ms: u64,
) -> Result<(), ControlRefused> {
    let refused = || match control {
        Control::Retry => ControlRefused::NotAborted { route: route.clone() },
        _ => ControlRefused::NotInProgress { route: route.clone(), control },
    };
    let mut applied = false;
    for c in &mut rollout.configurations {
        match control {
            Control::Promote if c.in_progress() => {
                let Some(mut candidate) = c.revisions.pop() else { continue };
                c.history.push(StepRecord {
                    candidate: candidate.revision.clone(),
                    percent: candidate.percent,
                    measured: c.current,
                    ended_ms: now_ms,
                });
                candidate.percent = c.percent;
                c.revisions = vec![candidate];
                c.step = StepParams::default();
                c.current = StepMeasurement::default();
                c.phase = Phase::Completed;
                applied = true;
            }
            Control::Abort if c.in_progress() => {
                abort_config(c, AbortCause::Operator);
                applied = true;
            }
            // The next tick sees the aborted revision as new and starts over at 1%.
            Control::Retry if matches!(c.phase, Phase::Aborted { .. }) => {
                c.phase = Phase::Stable;
                c.history.clear();
                applied = true;
            }
            _ => {}
        }
    }
    if applied { Ok(()) } else { Err(refused()) }
}
