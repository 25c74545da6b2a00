//! Scenarios of Knative's labeler and revision GC against the scripted API
//! server: the Revisions' routing state as Knative writes it, the deletion
//! of the Revisions `config-gc` collects (their Deployment and Service
//! point at them with controller owner references, so Kubernetes removes
//! them), and the revisions that must stay.

use std::sync::Arc;

use kube::runtime::controller::Action;
use serde_json::{Value, json};

use crate::kinds::Kind;
use crate::reconcile::{self, ReconcileError};
use crate::snapshot::Snapshot;
use crate::testing::*;

/// Collect every non-active revision at once.
fn collect_all() -> revgate_model::ConfigMap {
    config_map(
        "config-gc",
        &[
            ("retain-since-create-time", "disabled"),
            ("retain-since-last-active-time", "disabled"),
            ("min-non-active-revisions", "0"),
            ("max-non-active-revisions", "0"),
        ],
    )
}

fn namespace() -> Arc<k8s_openapi::api::core::v1::Namespace> {
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some(NAMESPACE.to_string());
    Arc::new(ns)
}

async fn reconcile_once(snapshot: Snapshot, script: Vec<Exchange>) -> Result<Action, ReconcileError> {
    let (client, server) = scripted_over(&snapshot, script);
    let ctx = context(client, snapshot);
    let result = within(reconcile::reconcile(namespace(), ctx)).await;
    server.finish().await;
    result
}

/// `hello` at version `n` (image tag), its revision `hello-0000n` with a ready pod.
async fn version(from: Snapshot, n: i64, service: Fixture) -> Snapshot {
    let revision = format!("hello-{n:05}");
    let next = from
        .with(service.image(&format!("ghcr.io/example/hello:{n}")).generation(n).object())
        .with(Fixture::endpoint_slice(&revision, "a").endpoint(&format!("10.0.0.{n}"), Some(true)).object());
    converge(next, 3).await
}

fn routing_state(snapshot: &Snapshot, revision: &str) -> Value {
    let object = snapshot.get(Kind::Revision, revision).unwrap_or_else(|| panic!("no revision {revision}"));
    json!({
        "state": object.metadata.labels.as_ref().and_then(|l| l.get("serving.knative.dev/routingState")),
        "routes": object.metadata.annotations.as_ref().and_then(|a| a.get("serving.knative.dev/routes")),
    })
}

/// Knative's routing states, as the labeler leaves them once traffic moved
/// from the first revision to the second: the Revisions carry them, so a
/// restarted controller reads them back.
#[tokio::test]
async fn revisions_carry_knatives_routing_state() {
    let one = version(Snapshot::new(NAMESPACE), 1, ksvc("hello")).await;
    assert_eq!(routing_state(&one, "hello-00001"), json!({"state": "active", "routes": "hello"}));
    let two = version(one, 2, ksvc("hello")).await;
    assert_eq!(routing_state(&two, "hello-00001"), json!({"state": "reserve", "routes": null}));
    assert_eq!(routing_state(&two, "hello-00002"), json!({"state": "active", "routes": "hello"}));
    let modified = |r: &str| {
        two.get(Kind::Revision, r)
            .and_then(|o| o.metadata.annotations.as_ref())
            .and_then(|a| a.get("serving.knative.dev/routingStateModified").cloned())
    };
    assert_eq!(modified("hello-00001").as_deref(), Some("2024-05-01T12:00:00Z"));
    // Converged: nothing left to label or collect under config-gc's defaults.
    reconcile_once(two, vec![]).await.expect("a clean pass");
}

/// A revision no longer routed is deleted when `config-gc` says so; its
/// Deployment and Service are controlled by it, so Kubernetes' garbage
/// collector removes them with it.
#[tokio::test]
async fn a_revision_no_longer_routed_is_collected_with_its_children() {
    let two = version(version(Snapshot::new(NAMESPACE), 1, ksvc("hello")).await, 2, ksvc("hello")).await;
    let revision_uid = two.uid(Kind::Revision, "hello-00001").expect("a live revision").to_string();
    for (kind, name) in [(Kind::Deployment, "hello-00001-deployment"), (Kind::Service, "hello-00001")] {
        let child = two.get(kind, name).unwrap_or_else(|| panic!("no {kind} {name}"));
        let owner = &child.metadata.owner_references.as_ref().expect("owner references")[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Revision", "hello-00001"), "{kind} {name}");
        assert_eq!(owner.uid, revision_uid, "{kind} {name} is owned by this very revision");
        assert_eq!((owner.controller, owner.block_owner_deletion), (Some(true), Some(true)));
    }

    let collecting = two.with_config_map(collect_all());
    reconcile_once(
        collecting,
        vec![Exchange::delete(Kind::Revision, "hello-00001").expect_at("/propagationPolicy", json!("Background"))],
    )
    .await
    .expect("a clean pass");
}

/// A revision a tag still routes, one marked `serving.knative.dev/no-gc`
/// and the latest stay; only the one in between goes.
#[tokio::test]
async fn tagged_preserved_and_latest_revisions_stay() {
    let one = version(Snapshot::new(NAMESPACE), 1, ksvc("hello")).await;
    let two = version(one, 2, ksvc("hello").template_annotation("serving.knative.dev/no-gc", "true")).await;
    let pinned = ksvc("hello").traffic(&[("", 100, None), ("hello-00001", 0, Some("pinned"))]);
    let three = version(two, 3, pinned.clone()).await;
    let four = version(three, 4, pinned).await;
    assert_eq!(routing_state(&four, "hello-00001"), json!({"state": "active", "routes": "hello"}));
    assert_eq!(routing_state(&four, "hello-00002")["state"], json!("reserve"));
    assert_eq!(routing_state(&four, "hello-00003")["state"], json!("reserve"));

    reconcile_once(four.with_config_map(collect_all()), vec![Exchange::delete(Kind::Revision, "hello-00003")])
        .await
        .expect("a clean pass");
}

/// A revision that is not stale yet is kept, and the namespace is looked
/// at again when it turns stale rather than at the next resync.
#[tokio::test]
async fn the_namespace_is_requeued_when_a_revision_turns_stale() {
    let two = version(version(Snapshot::new(NAMESPACE), 1, ksvc("hello")).await, 2, ksvc("hello")).await;
    let in_two_minutes = config_map(
        "config-gc",
        &[
            ("retain-since-create-time", "disabled"),
            ("retain-since-last-active-time", "2m"),
            ("min-non-active-revisions", "0"),
        ],
    );
    let action = reconcile_once(two.with_config_map(in_two_minutes), vec![]).await.expect("a clean pass");
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(120)));
}
