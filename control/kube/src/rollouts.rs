//! Gradual rollouts in cluster mode: the same orchestrator and gates as
//! standalone (`revgate_model::rollout`), as a pure step of each pass.
//!
//! A pass has no memory, so each Route's rollout state travels with its
//! VirtualServices, in the [`ROLLOUT_STATE_ANNOTATION`] — as Knative keeps
//! its rollout in an annotation of the Route's Ingress. Each pass reads the
//! state the last one wrote, merges it with what the Route asks, steps it at
//! the pass's time, and the VirtualServices are written with the split it
//! serves and the new state. While a rollout is in progress the namespace
//! is reconciled again every [`ROLLOUT_REQUEUE`].

use std::time::Duration;

use revgate_model::plan::ObjectKey;
use revgate_model::rollout::orchestrator::{advance, goal, measure, observe_ready, step};
use revgate_model::rollout::{RolloutSpec, Rollouts, RouteRollout, StepMeasurement};
use revgate_model::{Observed, World};

use crate::kinds::Kind;
use crate::snapshot::{Snapshot, controller_owner};

/// Where a Route's VirtualServices carry its rollout state (JSON).
pub const ROLLOUT_STATE_ANNOTATION: &str = "revgate.dev/rollout-state";

/// How soon a namespace with a rollout in progress is reconciled again:
/// steps and gate breaches are acted on within it.
pub const ROLLOUT_REQUEUE: Duration = Duration::from_secs(1);

/// What the gateways measured of a candidate revision in its current step
/// (how many steps it completed) so far.
pub type CandidateFigures = std::sync::Arc<dyn Fn(&ObjectKey, usize) -> StepMeasurement + Send + Sync>;

/// The rollout state each Route's live VirtualServices carry.
pub fn previous(snapshot: &Snapshot) -> Rollouts {
    let mut rollouts = Rollouts::new();
    for object in snapshot.live(Kind::VirtualService) {
        let Some((Kind::Route, route, _)) = controller_owner(&object.metadata) else { continue };
        let Some(text) = object.metadata.annotations.as_ref().and_then(|a| a.get(ROLLOUT_STATE_ANNOTATION)) else {
            continue;
        };
        match serde_json::from_str::<RouteRollout>(text) {
            Ok(state) => {
                rollouts.insert(ObjectKey::new(snapshot.namespace.clone(), route), state);
            }
            Err(e) => tracing::warn!(route, error = %e, "ignoring an unreadable rollout state"),
        }
    }
    rollouts
}

/// Every Route's rollout at `now_ms`: the state the VirtualServices carry,
/// merged with what the Route asks, measured and judged.
pub fn step_all(
    snapshot: &Snapshot,
    world: &World,
    observed: &Observed,
    now_ms: u64,
    figures: Option<&CandidateFigures>,
) -> Rollouts {
    let previous = previous(snapshot);
    let settings = world.settings();
    let mut rollouts = Rollouts::new();
    for (key, route) in &world.routes {
        let spec = RolloutSpec::from_annotations(&route.metadata.annotations, &settings);
        let prev = previous.get(key);
        let mut state = step(goal(world, route, observed), prev, spec.duration_secs, now_ms);
        if spec.duration_secs > 0 {
            if let Some(figures) = figures {
                for c in state.configurations.clone() {
                    if let (true, Some(candidate)) = (c.in_progress(), c.candidate()) {
                        let revision = ObjectKey::new(key.namespace.clone(), candidate.revision.clone());
                        measure(&mut state, &candidate.revision, &figures(&revision, c.history.len()));
                    }
                }
            }
            // The gateway serves the first 1% once a pass wrote it: the
            // VirtualServices carry the split the state now has.
            let written = prev.is_some_and(|p| same_split(p, &state));
            if written {
                observe_ready(&mut state, now_ms, spec.duration_secs);
            }
            advance(&mut state, &spec.gates, now_ms);
        }
        rollouts.insert(key.clone(), state);
    }
    rollouts
}

fn same_split(a: &RouteRollout, b: &RouteRollout) -> bool {
    a.configurations.len() == b.configurations.len()
        && a.configurations.iter().zip(&b.configurations).all(|(x, y)| x.revisions == y.revisions)
}

/// Whether any rollout is in progress.
pub fn in_progress(rollouts: &Rollouts) -> bool {
    rollouts.values().flat_map(|r| &r.configurations).any(|c| c.in_progress())
}

/// The state to write on a Route's VirtualServices.
pub fn annotation(rollouts: &Rollouts, route: &ObjectKey) -> Option<String> {
    let state = rollouts.get(route)?;
    if state.configurations.is_empty() {
        return None;
    }
    serde_json::to_string(state).ok()
}
