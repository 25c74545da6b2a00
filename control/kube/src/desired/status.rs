//! Step 3's last part: the status subresource of every live Knative object,
//! from the model's views of the world, with what only this pass knows
//! (its problems, replica counts, `observedGeneration`, transition times).

use std::collections::BTreeMap;

use revgate_model::meta::{Condition, ConditionStatus, SERVICE_LABEL, rfc3339};
use revgate_model::status::reason;
use revgate_model::{Observed, World};
use serde_json::{Value, json};

use super::{Problem, Problems, to_value};
use crate::kinds::Kind;
use crate::readiness;
use crate::snapshot::Snapshot;

/// A status subresource to write.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusWrite {
    pub kind: Kind,
    pub name: String,
    /// `{apiVersion, kind, status}`: the applied configuration of the status.
    pub body: Value,
}

/// The status of every live Knative object, where it differs from what the
/// cluster shows. Conditions keep their `lastTransitionTime` while their
/// status stays the same.
///
/// Every condition comes from the model, computed from what [`observe`](super::observe)
/// saw (a revision still deploying included); this step adds only what the
/// model cannot know: the problems of this pass, replica counts,
/// `observedGeneration` and transition times.
pub fn statuses(
    snapshot: &Snapshot,
    world: &World,
    observed: &Observed,
    problems: &Problems,
    rollouts: &revgate_model::rollout::Rollouts,
    now_unix_secs: u64,
) -> Vec<StatusWrite> {
    let now = rfc3339(now_unix_secs);
    let pods = readiness::pods(snapshot);
    let mut views: Vec<(Kind, String, Value)> = Vec::new();
    for revision in world.revision_views(observed) {
        let mut revision_status = revision.status.unwrap_or_default();
        // Which of ContainerHealthy and ResourcesAvailable the pods' failure concerns.
        if let Some(failure) =
            pods.get(&revision.metadata.name).filter(|p| p.ready.is_empty()).and_then(|p| p.failure.as_ref())
            && problems.get(Kind::Revision, &revision.metadata.name).is_none()
        {
            crate::pod_status::show(&mut revision_status.conditions, failure);
        }
        let mut status = to_value(&revision_status);
        // Knative's `kubectl get revisions` columns: pods ready, pods asked for.
        if let (Some(map), Some(pods)) = (status.as_object_mut(), pods.get(&revision.metadata.name)) {
            map.insert("actualReplicas".to_string(), json!(pods.ready.len()));
            if let Some(replicas) = pods.replicas {
                map.insert("desiredReplicas".to_string(), json!(replicas));
            }
        }
        views.push((Kind::Revision, revision.metadata.name, status));
    }
    let mut configuration_problems: BTreeMap<String, Problem> = BTreeMap::new();
    for configuration in world.configuration_views(observed) {
        let mut status = configuration.status.unwrap_or_default();
        if let Some(p) = problems.get(Kind::Configuration, &configuration.metadata.name) {
            mark(&mut status.conditions, p);
            if let Some(service) = configuration.metadata.labels.get(SERVICE_LABEL) {
                configuration_problems.insert(service.clone(), p.clone());
            }
        }
        views.push((Kind::Configuration, configuration.metadata.name, to_value(&status)));
    }
    for route in world.route_views(observed) {
        let key = route.metadata.key();
        let mut status = route.status.unwrap_or_default();
        // The split a rollout serves, and its `Rollout` condition.
        if let (Some(rollout), Some(spec)) = (rollouts.get(&key), world.routes.get(&key)) {
            revgate_model::rollout::served::overlay_route_status(world, spec, &mut status, rollout);
        }
        views.push((Kind::Route, route.metadata.name, to_value(&status)));
    }
    for service in world.service_views(observed) {
        let name = service.metadata.name;
        let mut status = service.status.unwrap_or_default();
        if let Some(p) = configuration_problems.get(&name) {
            let mirrored = Problem { condition: reason::CONFIGURATIONS_READY, ..p.clone() };
            mark(&mut status.conditions, &mirrored);
        }
        if let Some(p) = problems.get(Kind::KnativeService, &name) {
            mark(&mut status.conditions, p);
        }
        views.push((Kind::KnativeService, name, to_value(&status)));
    }
    views.extend(crate::domain_mappings::status_views(snapshot, world, observed));
    // Objects the model could not read at all still show why.
    for kind in [Kind::KnativeService, Kind::Configuration] {
        for (name, p) in problems.of_kind(kind) {
            if !views.iter().any(|(k, n, _)| *k == kind && n == name) && snapshot.is_live_named(kind, name) {
                let mut conditions = Vec::new();
                mark(&mut conditions, p);
                views.push((kind, name.to_string(), json!({ "conditions": conditions })));
            }
        }
    }

    let mut writes = Vec::new();
    for (kind, name, mut status) in views {
        let Some(object) = snapshot.get(kind, &name) else { continue };
        if let Some(generation) = object.metadata.generation
            && status.get("observedGeneration").is_none()
            && let Some(map) = status.as_object_mut()
        {
            map.insert("observedGeneration".to_string(), json!(generation));
        }
        let current = object.data.get("status").cloned().unwrap_or(Value::Null);
        stamp_transitions(&mut status, &current, &now);
        if without_transitions(&status) == without_transitions(&current) {
            continue;
        }
        let body = json!({ "apiVersion": kind.api_version(), "kind": kind.name(), "status": status });
        writes.push(StatusWrite { kind, name, body });
    }
    writes
}

/// Sets the problem's condition, and `Ready` with it, to False with the
/// problem's reason and message.
fn mark(conditions: &mut Vec<Condition>, problem: &Problem) {
    let failed =
        Condition::new(problem.condition, ConditionStatus::False, Some(&problem.reason), Some(problem.message.clone()));
    let ready = Condition { type_: reason::READY.to_string(), ..failed.clone() };
    for condition in [failed, ready] {
        match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
            Some(c) => *c = condition,
            None => conditions.push(condition),
        }
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Gives each condition a `lastTransitionTime`: the current one's while
/// its status is unchanged, else `now`.
fn stamp_transitions(status: &mut Value, current: &Value, now: &str) {
    let previous: BTreeMap<&str, (&Value, Option<&Value>)> = current
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c.get("type")?.as_str()?, (c.get("status")?, c.get("lastTransitionTime")))))
        .collect();
    let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) else { return };
    for condition in conditions {
        let kept = condition
            .get("type")
            .and_then(Value::as_str)
            .and_then(|t| previous.get(t))
            .filter(|(status, _)| condition.get("status") == Some(*status))
            .and_then(|(_, time)| time.cloned());
        if let Some(map) = condition.as_object_mut() {
            map.insert("lastTransitionTime".to_string(), kept.unwrap_or_else(|| json!(now)));
        }
    }
}

fn without_transitions(status: &Value) -> Value {
    let mut status = status.clone();
    if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conditions {
            if let Some(map) = c.as_object_mut() {
                map.remove("lastTransitionTime");
            }
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::NOT_OWNED;

    #[test]
    fn a_problem_turns_its_condition_and_ready_false() {
        let mut conditions = vec![
            Condition::new("ConfigurationsReady", ConditionStatus::True, None, None),
            Condition::new("Ready", ConditionStatus::True, None, None),
            Condition::new("RoutesReady", ConditionStatus::True, None, None),
        ];
        let problem = Problem { condition: "RoutesReady", reason: NOT_OWNED.into(), message: "taken".into() };
        mark(&mut conditions, &problem);
        let ready = conditions.iter().find(|c| c.type_ == "Ready").expect("ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some(NOT_OWNED)));
        assert_eq!(conditions.iter().filter(|c| c.status == "False").count(), 2);
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let current = json!({"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"},
            {"type": "RoutesReady", "status": "Unknown", "lastTransitionTime": "2024-01-01T00:00:00Z"},
        ]});
        let mut status =
            json!({"conditions": [{"type": "Ready", "status": "True"}, {"type": "RoutesReady", "status": "True"}]});
        stamp_transitions(&mut status, &current, "2024-02-02T00:00:00Z");
        assert_eq!(status.pointer("/conditions/0/lastTransitionTime"), Some(&json!("2024-01-01T00:00:00Z")));
        assert_eq!(status.pointer("/conditions/1/lastTransitionTime"), Some(&json!("2024-02-02T00:00:00Z")));
    }
}
