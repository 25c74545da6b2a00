//! What a Route serves while it rolls out: the rollout's split in the
//! gateway plan, and in the Route's status (its `traffic` and a `Rollout`
//! condition). Both are steps after the plan and status are computed, so
//! the rules of those stay where they are.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::annotations::RolloutSpec;
use super::gates::Metric;
use super::orchestrator::goal;
use super::state::{AbortCause, ConfigurationRollout, Phase, Rollouts, RouteRollout};
use crate::meta::{Condition, ConditionStatus};
use crate::observed::Observed;
use crate::plan::{GatewayPlan, ObjectKey, Split};
use crate::resources::{Route, RouteStatus, TrafficTarget};
use crate::world::World;

/// The condition type revgate adds to a Route that rolls out.
pub const ROLLOUT_CONDITION: &str = "Rollout";
pub const REASON_PROGRESSING: &str = "Progressing";
pub const REASON_WAITING: &str = "WaitingForData";
pub const REASON_COMPLETED: &str = "Completed";
pub const REASON_ABORTED: &str = "Aborted";

/// Replaces, in `plan`, the split of every `latestRevision` target in
/// rollout by the rollout's. A rollout that no longer matches what the
/// Route asks (its percent changed, a revision is gone) is skipped until
/// the driver's next tick merges it; without a duration the goal is served.
pub(crate) fn overlay_plan(world: &World, observed: &Observed, plan: &mut GatewayPlan, rollouts: &Rollouts) {
    let settings = world.settings();
    for route_plan in &mut plan.routes {
        let (Some(rollout), Some(route)) = (rollouts.get(&route_plan.key), world.routes.get(&route_plan.key)) else {
            continue;
        };
        if RolloutSpec::from_annotations(&route.metadata.annotations, &settings).duration_secs == 0 {
            continue;
        }
        let namespace = &route_plan.key.namespace;
        let goal = goal(world, route, observed);
        let mut splits: BTreeMap<ObjectKey, u32> =
            route_plan.splits.iter().map(|s| (s.revision.clone(), s.percent)).collect();
        for c in &rollout.configurations {
            let Some(wanted) = matching_goal(&goal, c) else { continue };
            let Some(latest) = wanted.revisions.first() else { continue };
            let exist = c
                .revisions
                .iter()
                .all(|r| world.revisions.contains_key(&ObjectKey::new(namespace.clone(), r.revision.clone())));
            let latest = ObjectKey::new(namespace.clone(), latest.revision.clone());
            let served = splits.get(&latest).copied().unwrap_or(0);
            if c.revisions.is_empty() || !exist || served < c.percent {
                continue;
            }
            splits.insert(latest, served - c.percent);
            for r in &c.revisions {
                *splits.entry(ObjectKey::new(namespace.clone(), r.revision.clone())).or_default() += r.percent;
            }
        }
        let served: Vec<Split> = splits
            .into_iter()
            .filter(|(_, percent)| *percent > 0)
            .map(|(revision, percent)| Split { revision, percent })
            .collect();
        // Plan entries are shared with the plan memo: copy only a changed one.
        if route_plan.splits != served {
            Arc::make_mut(route_plan).splits = served;
        }
    }
}

/// The goal's entry for the same configuration and tag as `c`, if the
/// target still asks for the same percent.
fn matching_goal<'a>(goal: &'a RouteRollout, c: &ConfigurationRollout) -> Option<&'a ConfigurationRollout> {
    goal.configurations.iter().find(|g| g.configuration == c.configuration && g.tag == c.tag && g.percent == c.percent)
}

/// Shows in a Route's status the split actually served, and the `Rollout`
/// condition. `status.traffic` lists, for a target in rollout, each of its
/// revisions with its share, oldest first, each with the target's tag, URL
/// and `latestRevision`, as Knative's `GetRevisionTrafficTargets` lists them.
pub fn overlay_route_status(world: &World, route: &Route, status: &mut RouteStatus, rollout: &RouteRollout) {
    let spec = RolloutSpec::from_annotations(&route.metadata.annotations, &world.settings());
    if spec.duration_secs > 0
        && let Some(in_effect) = world.traffic_in_effect(route)
        && in_effect.len() == status.traffic.len()
    {
        let mut traffic = Vec::new();
        for (shown, target) in status.traffic.iter().zip(in_effect) {
            let rolled = target.configuration_name.as_ref().and_then(|configuration| {
                rollout.configurations.iter().find(|c| {
                    &c.configuration == configuration
                        && c.tag == target.tag
                        && i64::from(c.percent) == target.percent.unwrap_or(0)
                        && !c.revisions.is_empty()
                })
            });
            match rolled {
                Some(c) => traffic.extend(c.revisions.iter().map(|r| TrafficTarget {
                    revision_name: Some(r.revision.clone()),
                    percent: Some(i64::from(r.percent)),
                    ..shown.clone()
                })),
                None => traffic.push(shown.clone()),
            }
        }
        status.traffic = traffic;
    }
    if let Some(condition) = condition(rollout) {
        status.conditions.retain(|c| c.type_ != ROLLOUT_CONDITION);
        status.conditions.push(condition);
        status.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    }
}

/// The Route's `Rollout` condition: False if a rollout was aborted, Unknown
/// while one progresses or waits, True once all completed; none before the
/// first rollout.
pub fn condition(rollout: &RouteRollout) -> Option<Condition> {
    let pick = |f: fn(&Phase) -> bool| rollout.configurations.iter().find(|c| f(&c.phase));
    let c = pick(|p| matches!(p, Phase::Aborted { .. }))
        .or_else(|| pick(|p| matches!(p, Phase::Waiting { .. })))
        .or_else(|| pick(|p| matches!(p, Phase::Progressing)))
        .or_else(|| pick(|p| matches!(p, Phase::Completed)))?;
    let candidate = c.candidate().map(|r| (r.revision.as_str(), r.percent)).unwrap_or(("", 0));
    let step = match c.total_steps() {
        Some(total) => format!("step {} of {total}", c.current_step()),
        None => format!("step {}, waiting for the gateway to take it", c.current_step()),
    };
    let (status, reason, message) = match &c.phase {
        Phase::Stable => return None,
        Phase::Progressing => (
            ConditionStatus::Unknown,
            REASON_PROGRESSING,
            format!("{} at {}% of the route ({step})", candidate.0, candidate.1),
        ),
        Phase::Waiting { reason } => (
            ConditionStatus::Unknown,
            REASON_WAITING,
            format!("{} at {}% of the route ({step}): {reason}", candidate.0, candidate.1),
        ),
        Phase::Completed => (
            ConditionStatus::True,
            REASON_COMPLETED,
            format!("{} takes all {}% of configuration {}'s traffic", candidate.0, c.percent, c.configuration),
        ),
        Phase::Aborted { revision, cause } => {
            let back = format!("its traffic returned to {}", candidate.0);
            let why = match cause {
                AbortCause::Gate { breach } => format!(
                    "{} of {revision} was {}, above {} {}",
                    match breach.metric {
                        Metric::ErrorRate => "the 5xx error rate",
                        Metric::LatencyP99 => "the p99 latency",
                    },
                    breach.metric.show(breach.value),
                    breach.metric.annotation(),
                    breach.metric.show(breach.threshold),
                ),
                AbortCause::Operator => format!("the rollout of {revision} was aborted by the operator"),
            };
            (ConditionStatus::False, REASON_ABORTED, format!("{why}; {back}"))
        }
    };
    Some(Condition::new(ROLLOUT_CONDITION, status, Some(reason), Some(message)))
}
