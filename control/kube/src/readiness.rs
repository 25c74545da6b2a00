//! Whether a revision can take traffic, read from what Kubernetes reports:
//! the EndpointSlices of the revision's Service (Kubernetes' own verdict on
//! which pods passed their readiness probe) and the Deployment's conditions.
//!
//! A revision's readiness, as the model's [`RevisionReadiness`] (which
//! decides routing: a route's `latestRevision` target follows the newest
//! *ready* revision):
//!
//! | ready endpoints | Deployment failed | Revision's `Ready` so far | verdict |
//! |---|---|---|---|
//! | ≥ 1 | any | any | Ready |
//! | 0 | yes: the Deployment's conditions or its pods say why ([`crate::pod_status`]: `ExitCode1`, `Unschedulable`, `ImagePullBackOff`, `ProgressDeadlineExceeded`…) | any | NotReady, with that reason |
//! | 0 | no | True | Ready: scaled to zero (or pods restarting); the gateway holds requests until pods are back |
//! | 0 | no | not True | Deploying: the model shows it Unknown `Deploying` |
//!
//! The third row is why the Revision's own status is an input: like
//! Knative, a revision stays Ready at zero scale, and nothing else in the
//! cluster remembers that it once was.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use revgate_model::meta::{Condition, condition};
use revgate_model::plan::{Endpoint, ObjectKey};
use revgate_model::status::reason;
use revgate_model::{Revision, RevisionReadiness};
use revgate_runtime_api::{RevisionState, RevisionStates};

use crate::kinds::{Kind, REVISION_LABEL, SERVICE_NAME_LABEL, typed};
use crate::pod_status::{PodFailure, deployment_failure, deployment_timed_out, pod_failure, wants_pods_but_has_none};
use crate::snapshot::Snapshot;

/// What the cluster says about one revision's pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodsView {
    /// Ready pod addresses (`ip:port`), sorted.
    pub ready: Vec<Endpoint>,
    /// `spec.replicas` of the Deployment, if it exists.
    pub replicas: Option<u32>,
    /// Why the pods do not run, as Knative reads it from the Deployment and its first pod.
    pub failure: Option<PodFailure>,
}

/// The pods of every revision in a snapshot, by revision name.
pub fn pods(snapshot: &Snapshot) -> BTreeMap<String, PodsView> {
    let mut views: BTreeMap<String, PodsView> = BTreeMap::new();
    for revision in snapshot.all(Kind::Revision) {
        let Some(name) = revision.metadata.name.clone() else { continue };
        let deployment = snapshot
            .get(Kind::Deployment, &revgate_istio::names::deployment(&name))
            .and_then(|d| typed::<Deployment>(d).ok());
        let view = views.entry(name).or_default();
        if let Some(deployment) = deployment {
            view.replicas = deployment.spec.as_ref().and_then(|s| s.replicas).and_then(|r| u32::try_from(r).ok());
            view.failure = deployment_failure(&deployment);
            if wants_pods_but_has_none(&deployment)
                && let Some(pod) = first_pod(snapshot, view_name(revision))
            {
                let container = typed::<Revision>(revision)
                    .ok()
                    .and_then(|r| r.spec.serving_container().map(|c| c.name.clone()))
                    .filter(|n| !n.is_empty());
                if let Some(found) = pod_failure(&pod, container.as_deref(), deployment_timed_out(&deployment)) {
                    view.failure = Some(found);
                }
            }
        }
    }
    for slice in snapshot.all(Kind::EndpointSlice) {
        let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else { continue };
        // The revision Service carries the revision's name.
        let Some(view) = views.get_mut(service.as_str()) else { continue };
        if let Ok(slice) = typed::<EndpointSlice>(slice) {
            view.ready.extend(ready_endpoints(&slice));
        }
    }
    for view in views.values_mut() {
        view.ready.sort();
        view.ready.dedup();
    }
    views
}

/// The ready endpoints of a slice: endpoints whose `ready` condition is
/// not false (Kubernetes: "nil should be interpreted as ready"), at their
/// first address and the slice's first port.
pub fn ready_endpoints(slice: &EndpointSlice) -> Vec<Endpoint> {
    let Some(port) =
        slice.ports.as_ref().and_then(|ports| ports.iter().find_map(|p| p.port)).and_then(|p| u16::try_from(p).ok())
    else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .filter_map(|e| e.addresses.first())
        .map(|host| Endpoint { host: host.clone(), port })
        .collect()
}

fn view_name(revision: &kube::api::DynamicObject) -> &str {
    revision.metadata.name.as_deref().unwrap_or_default()
}

/// The first pod of a revision by name, as Knative takes the first one the
/// API server lists: they all fail alike.
fn first_pod(snapshot: &Snapshot, revision: &str) -> Option<Pod> {
    snapshot
        .all(Kind::Pod)
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find(|p| p.metadata.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)).map(String::as_str) == Some(revision))
        .and_then(|p| typed::<Pod>(p).ok())
}

/// The readiness of a revision (the truth table of this module).
pub fn readiness(revision: &Revision, pods: Option<&PodsView>) -> RevisionReadiness {
    let empty = PodsView::default();
    let pods = pods.unwrap_or(&empty);
    if !pods.ready.is_empty() {
        return RevisionReadiness::Ready;
    }
    if let Some(failure) = &pods.failure {
        return RevisionReadiness::NotReady { reason: failure.reason.clone(), message: failure.message.clone() };
    }
    let was_ready =
        revision.status.as_ref().and_then(|s| condition(&s.conditions, reason::READY)).is_some_and(Condition::is_true);
    if was_ready {
        RevisionReadiness::Ready
    } else {
        RevisionReadiness::Deploying {
            message: format!("waiting for the pods of revision {:?} to become ready", revision.metadata.name),
        }
    }
}

/// The state of every revision of a namespace as a [`revgate_runtime_api::Runtime`]
/// reports it: ready endpoints, the replicas asked for, and why the pods
/// do not run.
pub fn revision_states(snapshot: &Snapshot) -> RevisionStates {
    pods(snapshot)
        .into_iter()
        .map(|(name, view)| {
            let (reason, message) = view.failure.map_or((None, None), |f| (Some(f.reason), Some(f.message)));
            let state = RevisionState {
                desired: view.replicas.unwrap_or(0),
                ready: view.ready,
                instances: Vec::new(),
                reason,
                message,
            };
            (ObjectKey::new(snapshot.namespace.clone(), name), state)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;

    fn revision(ready: Option<bool>) -> Revision {
        let fixture = Fixture::revision("hello-00001");
        let fixture = match ready {
            Some(true) => fixture.ready(),
            Some(false) => fixture.not_ready("Deploying"),
            None => fixture,
        };
        typed(&fixture.object()).expect("a revision")
    }

    #[test]
    fn readiness_follows_the_truth_table() {
        let up = PodsView { ready: vec![Endpoint { host: "10.0.0.1".into(), port: 8080 }], ..PodsView::default() };
        let failed = PodsView {
            failure: Some(PodFailure {
                condition: reason::RESOURCES_AVAILABLE,
                reason: "ProgressDeadlineExceeded".into(),
                message: "too slow".into(),
            }),
            ..PodsView::default()
        };
        let zero = PodsView { replicas: Some(0), ..PodsView::default() };
        let deploying = |r: &RevisionReadiness| matches!(r, RevisionReadiness::Deploying { .. });
        assert_eq!(readiness(&revision(None), Some(&up)), RevisionReadiness::Ready);
        assert_eq!(
            readiness(&revision(Some(true)), Some(&failed)),
            RevisionReadiness::NotReady { reason: "ProgressDeadlineExceeded".into(), message: "too slow".into() }
        );
        assert_eq!(readiness(&revision(Some(true)), Some(&zero)), RevisionReadiness::Ready, "ready at zero");
        assert!(deploying(&readiness(&revision(None), Some(&zero))));
        assert!(deploying(&readiness(&revision(Some(false)), None)));
    }

    #[test]
    fn only_ready_endpoints_count_and_slices_are_merged() {
        let snapshot = Snapshot::new("default")
            .with(Fixture::revision("hello-00001").object())
            .with(Fixture::deployment("hello-00001").replicas(3).object())
            .with(Fixture::endpoint_slice("hello-00001", "a").endpoint("10.0.0.2", Some(true)).object())
            .with(
                Fixture::endpoint_slice("hello-00001", "b")
                    .endpoint("10.0.0.1", None)
                    .endpoint("10.0.0.3", Some(false))
                    .object(),
            );
        let states = revision_states(&snapshot);
        let state = &states[&ObjectKey::new("default", "hello-00001")];
        let shown: Vec<String> = state.ready.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(state.desired, 3);
        assert_eq!(state.reason, None);
    }

    #[test]
    fn a_stuck_deployment_names_its_reason() {
        let stuck = Fixture::deployment("hello-00001").condition("Progressing", "False", "ProgressDeadlineExceeded");
        let deployment: Deployment = typed(&stuck.object()).expect("a deployment");
        assert_eq!(deployment_failure(&deployment).map(|f| f.reason).as_deref(), Some("ProgressDeadlineExceeded"));
        let fine = Fixture::deployment("hello-00001").condition("Progressing", "True", "NewReplicaSetAvailable");
        assert_eq!(deployment_failure(&typed(&fine.object()).expect("a deployment")), None);
    }
}
