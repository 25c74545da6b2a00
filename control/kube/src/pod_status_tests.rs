//! Scenarios: a revision whose pods do not run shows why in its status and
//! in its Service's, as Knative writes it (see [`crate::pod_status`]),
//! against the scripted API server.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::kinds::{Kind, REVISION_LABEL};
use crate::reconcile;
use crate::snapshot::Snapshot;
use crate::testing::*;

fn namespace() -> Arc<k8s_openapi::api::core::v1::Namespace> {
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some(NAMESPACE.to_string());
    Arc::new(ns)
}

/// `hello` created, its Deployment asking for a pod that never became available.
async fn deployed() -> Snapshot {
    converge(Snapshot::new(NAMESPACE).with(ksvc("hello").object()), 1).await
}

/// The pod of `hello-00001` with `status`.
fn pod(status: Value) -> Fixture {
    Fixture::new(Kind::Pod, "hello-00001-deployment-7d9f-abcde")
        .label(REVISION_LABEL, "hello-00001")
        .set("/status", status)
}

/// The serving container's status (Knative names an unnamed container `user-container`).
fn container(state: Value, last_state: Value) -> Value {
    json!({"containerStatuses": [{
        "name": "user-container", "image": IMAGE, "imageID": "", "ready": false, "restartCount": 4,
        "state": state, "lastState": last_state,
    }]})
}

/// The condition of a given type in a status body.
fn condition(body: &Value, type_: &str) -> Value {
    body.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition in {body:#}"))
}

fn expect(
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
    message: &'static str,
) -> impl FnOnce(&Value) {
    move |body| {
        let c = condition(body, type_);
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some(status), Some(reason)), "{type_} in {body:#}");
        let shown = c["message"].as_str().unwrap_or_default();
        assert!(shown.contains(message), "{type_} message {shown:?} should contain {message:?}");
    }
}

/// One pass; the Revision, Configuration and Service statuses are written
/// with the pods' reason (the Route's does not change: nothing was routed).
async fn pass_shows(snapshot: Snapshot, failed: &'static str, reason: &'static str, message: &'static str) {
    let other = if failed == "ContainerHealthy" { "ResourcesAvailable" } else { "ContainerHealthy" };
    let script = vec![
        Exchange::status(Kind::Revision, "hello-00001")
            .expect(expect(failed, "False", reason, message))
            .expect(expect("Ready", "False", reason, message))
            .expect(expect(other, "Unknown", "Deploying", "")),
        Exchange::status(Kind::Configuration, "hello")
            .expect(expect("Ready", "False", "RevisionFailed", "Revision \"hello-00001\" failed with message: "))
            .expect(expect("Ready", "False", "RevisionFailed", message)),
        Exchange::status(Kind::KnativeService, "hello")
            .expect(expect("ConfigurationsReady", "False", "RevisionFailed", message))
            .expect(expect("Ready", "False", "RevisionFailed", message)),
    ];
    let (client, server) = scripted_over(&snapshot, script);
    let ctx = context(client, snapshot);
    within(reconcile::reconcile(namespace(), ctx)).await.expect("a clean pass");
    server.finish().await;
}

/// A container that keeps exiting (CrashLoopBackOff): `ContainerHealthy`
/// False with Knative's `ExitCode<n>` and the container's last words.
#[tokio::test]
async fn a_crashing_container_shows_its_exit_code_and_message() {
    let crashing = pod(container(
        json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container"}}),
        json!({"terminated": {"exitCode": 1, "reason": "Error", "message": "panic: DATABASE_URL is not set"}}),
    ));
    let snapshot = deployed().await.with(crashing.object());
    pass_shows(snapshot, "ContainerHealthy", "ExitCode1", "Container failed with: panic: DATABASE_URL is not set")
        .await;
}

/// A container killed for its memory: exit code 137, and `OOMKilled` as the message.
#[tokio::test]
async fn an_oom_killed_container_says_so() {
    let killed = pod(container(
        json!({"waiting": {"reason": "CrashLoopBackOff"}}),
        json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
    ));
    pass_shows(
        deployed().await.with(killed.object()),
        "ContainerHealthy",
        "ExitCode137",
        "Container failed with: OOMKilled",
    )
    .await;
}

/// A pod the scheduler cannot place: `ResourcesAvailable` False with the scheduler's reason and message.
#[tokio::test]
async fn an_unschedulable_pod_shows_the_schedulers_message() {
    let pending = pod(json!({"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient memory.",
    }]}));
    pass_shows(
        deployed().await.with(pending.object()),
        "ResourcesAvailable",
        "Unschedulable",
        "0/3 nodes are available: 3 Insufficient memory.",
    )
    .await;
}

/// An image that cannot be pulled shows once the Deployment's progress
/// deadline passed (before that, the revision is still deploying).
#[tokio::test]
async fn an_image_pull_failure_shows_once_the_deadline_passed() {
    let pulling = pod(container(
        json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"ghcr.io/example/hello:1\""}}),
        json!({}),
    ));
    let started = deployed().await.with(pulling.object());
    // Within the deadline: still Deploying, nothing new to write.
    let (client, server) = scripted_over(&started, vec![]);
    within(reconcile::reconcile(namespace(), context(client, started.clone()))).await.expect("a clean pass");
    server.finish().await;

    let deployment = started.get(Kind::Deployment, "hello-00001-deployment").expect("the Deployment").clone();
    let mut timed_out = serde_json::to_value(&deployment).expect("JSON");
    timed_out["status"] = json!({"conditions": [{
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"hello-00001-deployment-7d9f\" has timed out progressing.",
    }]});
    let snapshot = started.with(serde_json::from_value(timed_out).expect("a Deployment"));
    pass_shows(snapshot, "ResourcesAvailable", "ImagePullBackOff", "Back-off pulling image").await;
}
