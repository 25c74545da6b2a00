//! Why a revision's pods do not run, read as Knative's revision reconciler
//! reads it, and which of the Revision's conditions says so (pure).
//!
//! Knative looks at the pods only while the Deployment wants some and has
//! none available, and then at the first pod (they all fail alike). What
//! it finds, in the order Knative marks it (a later mark is the one
//! `Ready` shows):
//!
//! | found | condition | reason | message |
//! |---|---|---|---|
//! | Deployment `Progressing=False` (`ProgressDeadlineExceeded`) or `ReplicaFailure=True` | `ResourcesAvailable` False | the Deployment condition's | the Deployment condition's |
//! | pod `PodScheduled=False` | `ResourcesAvailable` False | the scheduler's (`Unschedulable`) | the scheduler's |
//! | serving container waiting (`ImagePullBackOff`, `ErrImagePull`…) once the Deployment's progress deadline passed | `ResourcesAvailable` False | the waiting reason | the waiting message |
//! | serving container terminated before (`CrashLoopBackOff`, `OOMKilled`…) | `ContainerHealthy` False | `ExitCode<n>` | `Container failed with: <termination message>` |
//!
//! An empty termination message reads as the termination's reason
//! (`OOMKilled`), and an exit code 0 without one as `container exited with
//! no error`, as Knative words it; the pods' log tail is the message
//! otherwise (`terminationMessagePolicy: FallbackToLogsOnError`).
//!
//! The other condition of the two stays Unknown (`Deploying`), and `Ready`
//! turns False with the failing condition's reason and message.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use revgate_model::meta::{Condition, ConditionStatus};
use revgate_model::status::reason;

/// Why a revision's pods do not run, and the condition that says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFailure {
    /// [`reason::RESOURCES_AVAILABLE`] or [`reason::CONTAINER_HEALTHY`].
    pub condition: &'static str,
    pub reason: String,
    pub message: String,
}

impl PodFailure {
    fn resources(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { condition: reason::RESOURCES_AVAILABLE, reason: reason.into(), message: message.into() }
    }
}

/// Knative's reason for a container's exit (`ExitCode137`).
pub fn exit_code_reason(exit_code: i32) -> String {
    format!("ExitCode{exit_code}")
}

/// Knative's message for a container's exit.
pub fn container_exiting_message(message: &str) -> String {
    format!("Container failed with: {message}")
}

/// Whether the Deployment gave up making progress (Knative's `hasDeploymentTimedOut`).
pub fn deployment_timed_out(deployment: &Deployment) -> bool {
    conditions(deployment).any(|c| {
        c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    })
}

fn conditions(deployment: &Deployment) -> impl Iterator<Item = &k8s_openapi::api::apps::v1::DeploymentCondition> {
    deployment.status.iter().flat_map(|s| s.conditions.iter().flatten())
}

/// Why the Deployment cannot make progress, from its own conditions.
pub fn deployment_failure(deployment: &Deployment) -> Option<PodFailure> {
    conditions(deployment).find_map(|c| {
        let failed =
            (c.type_ == "Progressing" && c.status == "False") || (c.type_ == "ReplicaFailure" && c.status == "True");
        failed.then(|| {
            PodFailure::resources(
                c.reason.clone().unwrap_or_else(|| c.type_.clone()),
                c.message.clone().unwrap_or_default(),
            )
        })
    })
}

/// Whether Knative would look at the pods: the Deployment wants some and has none available.
pub fn wants_pods_but_has_none(deployment: &Deployment) -> bool {
    let wanted = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let available = deployment.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
    wanted > 0 && available == 0
}

/// What the first pod says, for the serving container `container` (the
/// only one when `None`), given whether the Deployment timed out.
pub fn pod_failure(pod: &Pod, container: Option<&str>, timed_out: bool) -> Option<PodFailure> {
    let status = pod.status.as_ref()?;
    let mut found = status.conditions.iter().flatten().find_map(|c| {
        (c.type_ == "PodScheduled" && c.status == "False").then(|| {
            PodFailure::resources(
                c.reason.clone().unwrap_or_else(|| "Unschedulable".to_string()),
                c.message.clone().unwrap_or_default(),
            )
        })
    });
    let statuses = status.container_statuses.iter().flatten();
    let serving = match container {
        Some(name) => statuses.into_iter().find(|s| s.name == name),
        None => statuses.into_iter().next(),
    };
    if let Some(serving) = serving {
        if let Some(t) = serving.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            let message = match (t.message.as_deref().map(str::trim), t.reason.as_deref()) {
                (Some(m), _) if !m.is_empty() => m.to_string(),
                (_, Some(r)) if !r.is_empty() && t.exit_code != 0 => r.to_string(),
                _ if t.exit_code == 0 => "container exited with no error".to_string(),
                _ => String::new(),
            };
            found = Some(PodFailure {
                condition: reason::CONTAINER_HEALTHY,
                reason: exit_code_reason(t.exit_code),
                message: container_exiting_message(&message),
            });
        } else if let Some(w) = serving.state.as_ref().and_then(|s| s.waiting.as_ref())
            && timed_out
        {
            found = Some(PodFailure::resources(
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default(),
            ));
        }
    }
    found
}

/// Sets a revision's conditions as Knative shows `failure`: the failing
/// condition and `Ready` False with its reason and message, the other of
/// `ContainerHealthy` and `ResourcesAvailable` Unknown (`Deploying`).
pub fn show(conditions: &mut Vec<Condition>, failure: &PodFailure) {
    let other = if failure.condition == reason::CONTAINER_HEALTHY {
        reason::RESOURCES_AVAILABLE
    } else {
        reason::CONTAINER_HEALTHY
    };
    let failed = |type_: &str| {
        Condition::new(type_, ConditionStatus::False, Some(&failure.reason), Some(failure.message.clone()))
    };
    let waiting = Condition::new(other, ConditionStatus::Unknown, Some(reason::DEPLOYING), None);
    for condition in [failed(failure.condition), failed(reason::READY), waiting] {
        match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
            Some(existing) => *existing = condition,
            None => conditions.push(condition),
        }
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "hello-00001-deployment-abc"}, "status": status}))
            .expect("a pod")
    }

    fn terminated(exit_code: i32, reason: &str, message: Option<&str>) -> Pod {
        let mut terminated = json!({"exitCode": exit_code, "reason": reason});
        if let Some(message) = message {
            terminated["message"] = json!(message);
        }
        pod(json!({"containerStatuses": [{
            "name": "user-container", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": terminated},
        }]}))
    }

    fn waiting(reason: &str, message: &str) -> Pod {
        pod(json!({"containerStatuses": [{
            "name": "user-container", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}},
        }]}))
    }

    #[test]
    fn a_crashing_container_is_unhealthy_with_its_exit_code() {
        let crash =
            pod_failure(&terminated(1, "Error", Some("panic: no DATABASE_URL\n")), Some("user-container"), false);
        assert_eq!(
            crash,
            Some(PodFailure {
                condition: reason::CONTAINER_HEALTHY,
                reason: "ExitCode1".into(),
                message: "Container failed with: panic: no DATABASE_URL".into(),
            })
        );
        let oom = pod_failure(&terminated(137, "OOMKilled", None), None, false).expect("a failure");
        assert_eq!((oom.reason.as_str(), oom.message.as_str()), ("ExitCode137", "Container failed with: OOMKilled"));
        let clean = pod_failure(&terminated(0, "Completed", None), None, false).expect("a failure");
        assert_eq!(clean.message, "Container failed with: container exited with no error");
        assert_eq!(pod_failure(&terminated(1, "Error", None), Some("sidecar"), false), None, "another container");
    }

    #[test]
    fn image_pulls_count_once_the_deployment_timed_out() {
        let pull = waiting("ImagePullBackOff", "Back-off pulling image \"ghcr.io/example/nope\"");
        assert_eq!(pod_failure(&pull, None, false), None, "still within the progress deadline");
        let failure = pod_failure(&pull, None, true).expect("a failure");
        assert_eq!((failure.condition, failure.reason.as_str()), (reason::RESOURCES_AVAILABLE, "ImagePullBackOff"));
    }

    #[test]
    fn an_unschedulable_pod_shows_the_schedulers_message() {
        let message = "0/3 nodes are available: 3 Insufficient memory.";
        let pending = pod(
            json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}),
        );
        assert_eq!(pod_failure(&pending, None, false), Some(PodFailure::resources("Unschedulable", message)));
    }

    #[test]
    fn the_failing_condition_and_ready_turn_false() {
        let mut conditions = vec![
            Condition::new(reason::CONTAINER_HEALTHY, ConditionStatus::False, Some("ExitCode1"), Some("x".into())),
            Condition::new(reason::READY, ConditionStatus::False, Some("ExitCode1"), Some("x".into())),
            Condition::new(reason::RESOURCES_AVAILABLE, ConditionStatus::Unknown, Some("ExitCode1"), Some("x".into())),
        ];
        show(&mut conditions, &PodFailure::resources("Unschedulable", "no nodes"));
        let shown: Vec<(String, ConditionStatus, Option<String>)> =
            conditions.iter().map(|c| (c.type_.clone(), c.status(), c.reason.clone())).collect();
        assert_eq!(
            shown,
            [
                ("ContainerHealthy".to_string(), ConditionStatus::Unknown, Some("Deploying".to_string())),
                ("Ready".to_string(), ConditionStatus::False, Some("Unschedulable".to_string())),
                ("ResourcesAvailable".to_string(), ConditionStatus::False, Some("Unschedulable".to_string())),
            ]
        );
    }
}
