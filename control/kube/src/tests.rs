//! Scenarios: the reconciler, the scale runtime, the elector and the leader
//! label against a scripted API server. Each test lists, in order, every request the code
//! must make (method, path, the fields of the body that matter) and the
//! answer it gets; a request that is missing, extra or different fails the
//! test, and everything runs under a timeout.
//!
//! Scenarios that start from a running service get there with
//! [`converge`]: a few passes against the in-memory API server, so their
//! starting state is what the controller itself would have written.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::runtime::controller::Action;
use revgate_model::plan::ObjectKey;
use revgate_runtime_api::{Runtime, Workload};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::kinds::Kind;
use crate::leader::{LeaseElector, LeaseSettings, Role};
use crate::leader_label::LeaderLabel;
use crate::reconcile::{self, DEFAULT_RESYNC, ReconcileError};
use crate::scale::KubeRuntime;
use crate::snapshot::Snapshot;
use crate::testing::*;

const V2: &str = "ghcr.io/example/hello:2";

fn namespace() -> Arc<k8s_openapi::api::core::v1::Namespace> {
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some(NAMESPACE.to_string());
    Arc::new(ns)
}

/// Runs one reconcile of `snapshot` against `script`.
async fn reconcile_with(
    snapshot: Snapshot,
    options: revgate_istio::RenderOptions,
    script: Vec<Exchange>,
) -> Result<Action, ReconcileError> {
    let (client, server) = scripted_over(&snapshot, script);
    let ctx = context_with(client, snapshot, options);
    let result = within(reconcile::reconcile(namespace(), ctx)).await;
    server.finish().await;
    result
}

async fn reconcile_once(snapshot: Snapshot, script: Vec<Exchange>) -> Result<Action, ReconcileError> {
    reconcile_with(snapshot, Default::default(), script).await
}

/// The condition of a given type in a status body.
fn condition(body: &Value, type_: &str) -> Value {
    body.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition in {body:#}"))
}

fn expect_condition(type_: &'static str, status: &'static str, reason: Option<&'static str>) -> impl FnOnce(&Value) {
    move |body| {
        let c = condition(body, type_);
        assert_eq!(c["status"], status, "{type_} in {body:#}");
        if let Some(reason) = reason {
            assert_eq!(c["reason"], reason, "{type_} reason in {body:#}");
        }
    }
}

fn owner_uid(kind: Kind, name: &str) -> impl FnOnce(&Value) {
    let want = uid(kind, name);
    move |body| {
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], json!(want), "owner of {body:#}");
        assert_eq!((&owner["controller"], &owner["blockOwnerDeletion"]), (&json!(true), &json!(true)));
    }
}

/// `hello` with one ready pod, as the controller leaves it.
async fn running() -> Snapshot {
    let start = Snapshot::new(NAMESPACE)
        .with(ksvc("hello").object())
        .with(Fixture::endpoint_slice("hello-00001", "a").endpoint("10.0.0.1", Some(true)).object());
    converge(start, 2).await
}

/// `hello` after an update to `V2`, both revisions with a ready pod.
async fn two_revisions() -> Snapshot {
    let updated = running()
        .await
        .with(ksvc("hello").image(V2).generation(2).object())
        .with(Fixture::endpoint_slice("hello-00002", "a").endpoint("10.0.0.2", Some(true)).object());
    converge(updated, 2).await
}

fn weights(body: &Value, entry: usize) -> Vec<(String, i64)> {
    body["spec"]["http"][entry]["route"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| {
            let host = r["destination"]["host"].as_str().unwrap_or_default();
            (host.split('.').next().unwrap_or_default().to_string(), r["weight"].as_i64().unwrap_or(0))
        })
        .collect()
}

// ----- create ----------------------------------------------------------------------------

/// A new Knative Service gets its Configuration and Route, the first
/// Revision, the revision's Service and Deployment (at the initial scale),
/// all owned so that deleting the Service collects them, and Knative's
/// statuses: Unknown while the pods start, with the Service's URL.
#[tokio::test]
async fn create() {
    let snapshot = Snapshot::new(NAMESPACE).with(ksvc("hello").object());
    let result = reconcile_once(
        snapshot,
        vec![
            Exchange::apply(Kind::Configuration, "hello")
                .expect(owner_uid(Kind::KnativeService, "hello"))
                .expect_at("/spec/template/spec/containers/0/image", json!(IMAGE))
                .expect_at("/metadata/labels/serving.knative.dev~1service", json!("hello")),
            Exchange::apply(Kind::Route, "hello").expect(owner_uid(Kind::KnativeService, "hello")).expect_at(
                "/spec/traffic",
                json!([{"configurationName": "hello", "latestRevision": true, "percent": 100}]),
            ),
            Exchange::apply(Kind::Revision, "hello-00001")
                .expect(owner_uid(Kind::Configuration, "hello"))
                .expect_at("/metadata/labels/serving.knative.dev~1configurationGeneration", json!("1"))
                .expect_at("/spec/containers/0/image", json!(IMAGE)),
            Exchange::apply(Kind::Service, "hello-00001")
                .expect(owner_uid(Kind::Revision, "hello-00001"))
                .expect_at("/spec/selector", json!({"serving.knative.dev/revision": "hello-00001"})),
            Exchange::apply(Kind::Deployment, "hello-00001-deployment")
                .expect(owner_uid(Kind::Revision, "hello-00001"))
                .expect_at("/spec/replicas", json!(1)),
            Exchange::status(Kind::Revision, "hello-00001")
                .expect(expect_condition("Ready", "Unknown", Some("Deploying")))
                .expect(expect_condition("ContainerHealthy", "Unknown", Some("Deploying")))
                .expect(expect_condition("ResourcesAvailable", "Unknown", Some("Deploying"))),
            Exchange::status(Kind::Configuration, "hello")
                .expect(expect_condition("Ready", "Unknown", Some("Deploying")))
                .expect(|body| {
                    assert_eq!(
                        condition(body, "Ready")["message"],
                        "revision \"hello-00001\" is not ready: Deploying: \
                         waiting for the pods of revision \"hello-00001\" to become ready"
                    )
                })
                .expect_at("/status/latestCreatedRevisionName", json!("hello-00001")),
            Exchange::status(Kind::Route, "hello").expect(expect_condition("AllTrafficAssigned", "Unknown", None)),
            Exchange::status(Kind::KnativeService, "hello")
                .expect(expect_condition("Ready", "Unknown", Some("Deploying")))
                .expect(expect_condition("RoutesReady", "Unknown", Some("RevisionMissing")))
                .expect_at("/status/url", json!("http://hello.default.example.com"))
                .expect_at("/status/observedGeneration", json!(1)),
        ],
    )
    .await;
    assert_eq!(result.expect("a clean pass"), Action::requeue(DEFAULT_RESYNC));
}

/// A Deployment starts at the revision's initial scale (Knative's
/// `autoscaling.knative.dev/initial-scale`); later passes keep whatever the
/// autoscaler set.
#[tokio::test]
async fn deployments_start_at_the_initial_scale() {
    let service = ksvc("hello").template_annotation("autoscaling.knative.dev/initial-scale", "3");
    let cluster = converge(Snapshot::new(NAMESPACE).with(service.object()), 1).await;
    let replicas = |cluster: &Snapshot| {
        let deployment = cluster.get(Kind::Deployment, "hello-00001-deployment").expect("a deployment");
        serde_json::to_value(deployment).expect("JSON")["spec"]["replicas"].clone()
    };
    assert_eq!(replicas(&cluster), json!(3));

    let mut scaled = serde_json::to_value(cluster.get(Kind::Deployment, "hello-00001-deployment")).expect("JSON");
    scaled["spec"]["replicas"] = json!(7);
    let cluster = converge(cluster.with(serde_json::from_value(scaled).expect("an object")), 1).await;
    assert_eq!(replicas(&cluster), json!(7), "the autoscaler's count stays");
}

/// Once Kubernetes lists a ready pod for the revision, the route gets its
/// VirtualServices (sidecars and gateways, 100% to the revision) and every
/// object turns Ready.
#[tokio::test]
async fn first_ready_pod_routes_traffic() {
    let started = converge(Snapshot::new(NAMESPACE).with(ksvc("hello").object()), 1).await;
    let ready = started.with(Fixture::endpoint_slice("hello-00001", "a").endpoint("10.0.0.1", Some(true)).object());
    reconcile_once(
        ready,
        vec![
            Exchange::apply(Kind::VirtualService, "hello-mesh")
                .expect(owner_uid(Kind::Route, "hello"))
                .expect_at("/spec/gateways", json!(["mesh"])),
            Exchange::apply(Kind::VirtualService, "hello-ingress").expect(owner_uid(Kind::Route, "hello")).expect(
                |body| {
                    let hosts = body["spec"]["hosts"].as_array().expect("hosts");
                    assert!(hosts.contains(&json!("hello.default.example.com")), "{hosts:?}");
                    assert_eq!(weights(body, 0), [("hello-00001".to_string(), 100)]);
                },
            ),
            Exchange::status(Kind::Revision, "hello-00001").expect(expect_condition("Ready", "True", None)),
            Exchange::status(Kind::Configuration, "hello")
                .expect(expect_condition("Ready", "True", None))
                .expect_at("/status/latestReadyRevisionName", json!("hello-00001")),
            Exchange::status(Kind::Route, "hello")
                .expect(expect_condition("Ready", "True", None))
                .expect_at("/status/traffic/0/revisionName", json!("hello-00001")),
            Exchange::status(Kind::KnativeService, "hello").expect(expect_condition("Ready", "True", None)),
            // Knative's labeler: the revision now takes traffic.
            Exchange::routing_state("hello-00001", "active")
                .expect_at("/metadata/annotations/serving.knative.dev~1routes", json!("hello"))
                .expect_at(
                    "/metadata/annotations/serving.knative.dev~1routingStateModified",
                    json!("2024-05-01T12:00:00Z"),
                ),
        ],
    )
    .await
    .expect("a clean pass");
}

/// A namespace the controller has converged needs no request at all: the
/// reconciler compares before it writes, so a resync is free.
#[tokio::test]
async fn a_converged_namespace_is_left_alone() {
    reconcile_once(running().await, vec![]).await.expect("a clean pass");
    reconcile_once(two_revisions().await, vec![]).await.expect("a clean pass");
}

// ----- update ----------------------------------------------------------------------------

/// A new image makes a new generation of the Configuration and so a new
/// Revision named after the API server's generation; traffic stays on the
/// ready revision until the new one has a ready pod, then moves.
#[tokio::test]
async fn update_creates_a_revision_and_moves_traffic_when_it_is_ready() {
    let updated = running().await.with(ksvc("hello").image(V2).generation(2).object());
    reconcile_once(
        updated.clone(),
        vec![
            Exchange::apply(Kind::Configuration, "hello")
                .expect_at("/spec/template/spec/containers/0/image", json!(V2))
                .generation(2),
            Exchange::apply(Kind::Revision, "hello-00002")
                .expect_at("/metadata/labels/serving.knative.dev~1configurationGeneration", json!("2"))
                .expect_at("/spec/containers/0/image", json!(V2)),
            Exchange::apply(Kind::Service, "hello-00002"),
            Exchange::apply(Kind::Deployment, "hello-00002-deployment").expect_at("/spec/replicas", json!(1)),
            Exchange::status(Kind::Revision, "hello-00002").expect(expect_condition(
                "Ready",
                "Unknown",
                Some("Deploying"),
            )),
            Exchange::status(Kind::Configuration, "hello")
                .expect(expect_condition("Ready", "Unknown", Some("Deploying")))
                .expect_at("/status/latestCreatedRevisionName", json!("hello-00002"))
                .expect_at("/status/latestReadyRevisionName", json!("hello-00001"))
                .expect_at("/status/observedGeneration", json!(2)),
            // The route still sends everything to hello-00001: its status and
            // VirtualServices are unchanged, so neither is written.
            Exchange::status(Kind::KnativeService, "hello")
                .expect(expect_condition("Ready", "Unknown", Some("Deploying")))
                .expect(expect_condition("RoutesReady", "True", None))
                .expect_at("/status/latestCreatedRevisionName", json!("hello-00002"))
                .expect_at("/status/observedGeneration", json!(2)),
        ],
    )
    .await
    .expect("a clean pass");

    let rolled = converge(updated, 1)
        .await
        .with(Fixture::endpoint_slice("hello-00002", "a").endpoint("10.0.0.2", Some(true)).object());
    reconcile_once(
        rolled,
        vec![
            Exchange::apply(Kind::VirtualService, "hello-mesh")
                .expect(|body| assert_eq!(weights(body, 0), [("hello-00002".to_string(), 100)])),
            Exchange::apply(Kind::VirtualService, "hello-ingress")
                .expect(|body| assert_eq!(weights(body, 0), [("hello-00002".to_string(), 100)])),
            Exchange::status(Kind::Revision, "hello-00002").expect(expect_condition("Ready", "True", None)),
            Exchange::status(Kind::Configuration, "hello")
                .expect_at("/status/latestReadyRevisionName", json!("hello-00002"))
                .expect(expect_condition("Ready", "True", None)),
            Exchange::status(Kind::Route, "hello").expect_at("/status/traffic/0/revisionName", json!("hello-00002")),
            Exchange::status(Kind::KnativeService, "hello").expect(expect_condition("Ready", "True", None)),
            // The new revision takes the traffic. The old one turns `reserve`
            // on the next pass, once the Route's status no longer names it.
            Exchange::routing_state("hello-00002", "active"),
        ],
    )
    .await
    .expect("a clean pass");
}

// ----- traffic change --------------------------------------------------------------------

/// Splitting traffic 90/10 with a tag rewrites the Route and both
/// VirtualServices (weights, and the tag's own host); no revision is made.
#[tokio::test]
async fn traffic_change_rewrites_the_route_and_virtual_services() {
    let split = two_revisions().await.with(
        ksvc("hello").image(V2).generation(3).traffic(&[("hello-00001", 90, None), ("", 10, Some("canary"))]).object(),
    );
    reconcile_once(
        split,
        vec![
            Exchange::apply(Kind::Route, "hello").expect_at(
                "/spec/traffic",
                json!([
                    {"revisionName": "hello-00001", "latestRevision": false, "percent": 90},
                    {"configurationName": "hello", "latestRevision": true, "percent": 10, "tag": "canary"},
                ]),
            ),
            Exchange::apply(Kind::VirtualService, "hello-mesh").expect(|body| {
                assert_eq!(weights(body, 0), [("hello-00001".to_string(), 90), ("hello-00002".to_string(), 10)]);
            }),
            Exchange::apply(Kind::VirtualService, "hello-ingress").expect(|body| {
                let hosts = body["spec"]["hosts"].as_array().expect("hosts");
                assert!(hosts.contains(&json!("canary-hello.default.example.com")), "{hosts:?}");
            }),
            Exchange::status(Kind::Route, "hello").expect(|body| {
                let traffic = body["status"]["traffic"].as_array().expect("traffic");
                assert_eq!(traffic.len(), 2);
                assert_eq!(traffic[1]["url"], json!("http://canary-hello.default.example.com"));
                assert_eq!(traffic[1]["revisionName"], json!("hello-00002"));
            }),
            Exchange::status(Kind::KnativeService, "hello")
                .expect_at("/status/observedGeneration", json!(3))
                .expect(expect_condition("Ready", "True", None)),
            Exchange::routing_state("hello-00001", "active"),
        ],
    )
    .await
    .expect("a clean pass");
}

// ----- scaling ----------------------------------------------------------------------------

fn workload(revision: &str) -> Workload {
    Workload {
        key: ObjectKey::new(NAMESPACE, revision),
        service: Some("hello".into()),
        configuration: "hello".into(),
        spec: Default::default(),
    }
}

/// Scales through a leading runtime and waits until the wish is recorded.
async fn wish(runtime: &KubeRuntime, revision: &str, replicas: u32) {
    let mut states = runtime.states();
    runtime.scale(&workload(revision), replicas);
    within(states.wait_for(|s| s.get(&ObjectKey::new(NAMESPACE, revision)).is_some_and(|s| s.desired == replicas)))
        .await
        .expect("the runtime publishes");
}

/// A revision at zero stays Ready and routed (the gateway holds its
/// requests); the KPA's scale from zero goes through the scale
/// subresource, and a reconcile meanwhile carries the wished count instead
/// of the stale one its snapshot shows.
#[tokio::test]
async fn scale_from_zero() {
    let mut at_zero = running().await.with(Fixture::endpoint_slice("hello-00001", "a").object());
    let deployment = at_zero.get(Kind::Deployment, "hello-00001-deployment").cloned().expect("a deployment");
    let mut deployment = serde_json::to_value(deployment).expect("JSON");
    deployment["spec"]["replicas"] = json!(0);
    at_zero.insert(serde_json::from_value(deployment).expect("an object"));
    let replicas = |actual: i64, desired: i64| {
        Exchange::status(Kind::Revision, "hello-00001")
            .expect(expect_condition("Ready", "True", None))
            .expect_at("/status/actualReplicas", json!(actual))
            .expect_at("/status/desiredReplicas", json!(desired))
    };
    // Only the revision's replica counts change: no routing, no readiness.
    reconcile_once(at_zero.clone(), vec![replicas(0, 0)]).await.expect("a clean pass");

    let (scaled_tx, scaled) = tokio::sync::oneshot::channel();
    let (client, server) = scripted_over(
        &at_zero,
        vec![
            Exchange::scale("hello-00001").expect_at("/spec/replicas", json!(1)).expect(move |_| {
                let _ = scaled_tx.send(());
            }),
            Exchange::apply(Kind::Deployment, "hello-00001-deployment").expect_at("/spec/replicas", json!(1)),
            replicas(0, 1),
        ],
    );
    let (_leading_tx, leading) = watch::channel(true);
    let runtime = KubeRuntime::start(client.clone(), leading);
    wish(&runtime, "hello-00001", 1).await;
    // The scale write comes first; the reconcile runs on the snapshot that predates it.
    within(scaled).await.expect("the scale subresource was written");
    let ctx = Arc::new(
        reconcile::Context::new(client, Arc::new(at_zero), Default::default())
            .with_runtime(runtime.clone())
            .with_clock(Arc::new(|| NOW)),
    );
    within(reconcile::reconcile(namespace(), ctx)).await.expect("a clean pass");
    drop(runtime);
    server.finish().await;
}

/// Scaling to zero writes zero through the scale subresource; once the
/// pods are gone the revision is still Ready and keeps its routing: the
/// reconciler writes only its replica counts.
#[tokio::test]
async fn scale_to_zero() {
    let (client, server) = scripted(vec![Exchange::scale("hello-00001").expect_at("/spec/replicas", json!(0))]);
    let (_leading_tx, leading) = watch::channel(true);
    let runtime = KubeRuntime::start(client, leading);
    wish(&runtime, "hello-00001", 0).await;
    let states = runtime.states();
    drop(runtime);
    server.finish().await;
    assert_eq!(states.borrow()[&ObjectKey::new(NAMESPACE, "hello-00001")].desired, 0);

    let mut gone = running().await.with(Fixture::endpoint_slice("hello-00001", "a").object());
    let mut deployment = serde_json::to_value(gone.get(Kind::Deployment, "hello-00001-deployment")).expect("JSON");
    deployment["spec"]["replicas"] = json!(0);
    gone.insert(serde_json::from_value(deployment).expect("an object"));
    reconcile_once(
        gone,
        vec![
            Exchange::status(Kind::Revision, "hello-00001")
                .expect(expect_condition("Ready", "True", None))
                .expect_at("/status/actualReplicas", json!(0))
                .expect_at("/status/desiredReplicas", json!(0)),
        ],
    )
    .await
    .expect("a clean pass");
}

/// Only the leader scales: a follower's runtime records wishes and writes
/// none; when it becomes leader it writes the wishes the cluster does not
/// show yet, so a change of leader loses no decision.
#[tokio::test(start_paused = true)]
async fn only_the_leader_scales() {
    let (client, server) = scripted(vec![Exchange::scale("hello-00002").expect_at("/spec/replicas", json!(3))]);
    let (leading_tx, leading) = watch::channel(false);
    let runtime = KubeRuntime::start(client, leading);
    wish(&runtime, "hello-00002", 3).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    leading_tx.send_replace(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(runtime);
    server.finish().await;
}

/// A refused scale write is retried after a delay, with the newest wish.
#[tokio::test(start_paused = true)]
async fn a_failed_scale_is_retried() {
    let (client, server) = scripted(vec![
        Exchange::scale("hello-00001").fail(500, "InternalError", "etcd is sad"),
        Exchange::scale("hello-00001").expect_at("/spec/replicas", json!(2)),
    ]);
    let (_leading_tx, leading) = watch::channel(true);
    let runtime = KubeRuntime::start(client, leading);
    wish(&runtime, "hello-00001", 1).await;
    wish(&runtime, "hello-00001", 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(runtime);
    server.finish().await;
}

// ----- delete ------------------------------------------------------------------------------

/// Deleting a Knative Service leaves its children to the garbage collector
/// (they are owned): the reconciler neither recreates nor touches them,
/// whether the Service is gone or still being deleted.
#[tokio::test]
async fn deleted_service_is_left_to_the_garbage_collector() {
    let mut gone = running().await;
    gone.remove(Kind::KnativeService, "hello");
    reconcile_once(gone, vec![]).await.expect("nothing to do");

    let deleting = running().await.with(ksvc("hello").deleting().object());
    reconcile_once(deleting, vec![]).await.expect("nothing to do");
}

/// A route that turns cluster-local loses its gateway VirtualService when
/// no local gateway is configured: the one object that is gone while its
/// owner lives is deleted explicitly.
#[tokio::test]
async fn a_virtual_service_no_longer_wanted_is_deleted() {
    let options = revgate_istio::RenderOptions { local_gateway: None, ..Default::default() };
    let start = Snapshot::new(NAMESPACE)
        .with(ksvc("hello").object())
        .with(Fixture::endpoint_slice("hello-00001", "a").endpoint("10.0.0.1", Some(true)).object());
    let local = converge_with(start, 2, options.clone())
        .await
        .with(ksvc("hello").label("networking.knative.dev/visibility", "cluster-local").object());
    reconcile_with(
        local,
        options,
        vec![
            // Labels go down to the children (no new revision: the spec, and so the generation, is unchanged).
            Exchange::apply(Kind::Configuration, "hello")
                .expect_at("/metadata/labels/networking.knative.dev~1visibility", json!("cluster-local")),
            Exchange::apply(Kind::Route, "hello")
                .expect_at("/metadata/labels/networking.knative.dev~1visibility", json!("cluster-local")),
            Exchange::delete(Kind::VirtualService, "hello-ingress"),
            Exchange::status(Kind::Route, "hello")
                .expect_at("/status/url", json!("http://hello.default.svc.cluster.local")),
            Exchange::status(Kind::KnativeService, "hello")
                .expect_at("/status/url", json!("http://hello.default.svc.cluster.local")),
        ],
    )
    .await
    .expect("a clean pass");
}

// ----- conflicts and API errors ------------------------------------------------------------

/// A 409 on the Deployment fails the pass (so it is retried with backoff)
/// but not the namespace: everything else is written, and the Revision,
/// its Configuration and the Service say what went wrong and why.
#[tokio::test]
async fn a_conflict_is_reported_in_status_and_retried_with_backoff() {
    let snapshot = Snapshot::new(NAMESPACE).with(ksvc("hello").object());
    let conflict =
        "Operation cannot be fulfilled on deployments.apps \"hello-00001-deployment\": the object has been modified";
    let (client, server) = scripted(vec![
        Exchange::apply(Kind::Configuration, "hello"),
        Exchange::apply(Kind::Route, "hello"),
        Exchange::apply(Kind::Revision, "hello-00001"),
        Exchange::apply(Kind::Service, "hello-00001"),
        Exchange::apply(Kind::Deployment, "hello-00001-deployment").fail(409, "Conflict", conflict),
        Exchange::status(Kind::Revision, "hello-00001").expect(|body| {
            let ready = condition(body, "Ready");
            assert_eq!((&ready["status"], &ready["reason"]), (&json!("False"), &json!("Conflict")));
            let message = ready["message"].as_str().expect("a message");
            assert!(
                message.contains("applying Deployment.apps default/hello-00001-deployment: 409 Conflict"),
                "{message}"
            );
            assert!(message.contains("retries with backoff"), "{message}");
        }),
        Exchange::status(Kind::Configuration, "hello").expect(expect_condition(
            "Ready",
            "False",
            Some("RevisionFailed"),
        )),
        Exchange::status(Kind::Route, "hello"),
        Exchange::status(Kind::KnativeService, "hello")
            .expect(expect_condition("ConfigurationsReady", "False", Some("RevisionFailed")))
            .expect(expect_condition("Ready", "False", Some("RevisionFailed"))),
    ]);
    let ctx = context(client, snapshot);
    let error = within(reconcile::reconcile(namespace(), ctx.clone())).await.expect_err("the pass failed");
    let ReconcileError::Writes { failures, .. } = &error;
    assert_eq!(failures.len(), 1);
    assert_eq!((failures[0].kind, failures[0].code), (Kind::Deployment, Some(409)));
    assert!(error.to_string().contains("retried with backoff"), "{error}");

    // The error policy backs off: 1s, 2s, 4s… per namespace.
    let delays: Vec<Action> = (0..3).map(|_| reconcile::error_policy(namespace(), &error, ctx.clone())).collect();
    assert_eq!(delays, [1, 2, 4].map(|s| Action::requeue(Duration::from_secs(s))));
    drop(ctx);
    server.finish().await;
}

/// After a failure, a clean pass resets the backoff.
#[tokio::test]
async fn a_clean_pass_resets_the_backoff() {
    let (client, server) = scripted(vec![]);
    let ctx = context(client, running().await);
    let error = ReconcileError::Writes { namespace: NAMESPACE.into(), failures: Vec::new() };
    reconcile::error_policy(namespace(), &error, ctx.clone());
    reconcile::error_policy(namespace(), &error, ctx.clone());
    within(reconcile::reconcile(namespace(), ctx.clone())).await.expect("a clean pass");
    assert_eq!(reconcile::error_policy(namespace(), &error, ctx.clone()), Action::requeue(Duration::from_secs(1)));
    drop(ctx);
    server.finish().await;
}

/// A VirtualService the API server refuses (here Istio's validating
/// webhook) makes the Route's `IngressReady` False with the server's
/// message, and the Service's `RoutesReady` with it.
#[tokio::test]
async fn a_refused_virtual_service_shows_on_the_route_and_service() {
    let started = converge(Snapshot::new(NAMESPACE).with(ksvc("hello").object()), 1).await;
    let ready = started.with(Fixture::endpoint_slice("hello-00001", "a").endpoint("10.0.0.1", Some(true)).object());
    let webhook = "admission webhook \"validation.istio.io\" denied the request";
    let result = reconcile_once(
        ready,
        vec![
            Exchange::apply(Kind::VirtualService, "hello-mesh").fail(400, "BadRequest", webhook),
            Exchange::apply(Kind::VirtualService, "hello-ingress"),
            Exchange::status(Kind::Revision, "hello-00001").expect(expect_condition("Ready", "True", None)),
            Exchange::status(Kind::Configuration, "hello").expect(expect_condition("Ready", "True", None)),
            Exchange::status(Kind::Route, "hello")
                .expect(expect_condition("IngressReady", "False", Some("GatewayRejected")))
                .expect(move |body| {
                    let message = condition(body, "IngressReady")["message"].as_str().unwrap_or_default().to_string();
                    assert!(message.contains(webhook), "{message}");
                }),
            Exchange::status(Kind::KnativeService, "hello")
                .expect(expect_condition("RoutesReady", "False", Some("GatewayRejected")))
                .expect(expect_condition("Ready", "False", Some("GatewayRejected"))),
            Exchange::routing_state("hello-00001", "active"),
        ],
    )
    .await;
    assert!(result.is_err());
}

/// An object revgate would write that belongs to someone else is not
/// overwritten; the revision says so (Knative's `NotOwned`).
#[tokio::test]
async fn an_object_owned_by_someone_else_is_not_overwritten() {
    let snapshot =
        Snapshot::new(NAMESPACE).with(ksvc("hello").object()).with(Fixture::deployment("hello-00001").object());
    reconcile_once(
        snapshot,
        vec![
            Exchange::apply(Kind::Configuration, "hello"),
            Exchange::apply(Kind::Route, "hello"),
            Exchange::apply(Kind::Revision, "hello-00001"),
            Exchange::apply(Kind::Service, "hello-00001"),
            Exchange::status(Kind::Revision, "hello-00001").expect(expect_condition(
                "Ready",
                "False",
                Some("NotOwned"),
            )),
            Exchange::status(Kind::Configuration, "hello"),
            Exchange::status(Kind::Route, "hello"),
            Exchange::status(Kind::KnativeService, "hello").expect(expect_condition(
                "Ready",
                "False",
                Some("RevisionFailed"),
            )),
        ],
    )
    .await
    .expect("nothing failed to write");
}

/// A manifest the model rejects (Knative's webhook would have) writes no
/// children; the Service's status names the field.
#[tokio::test]
async fn an_invalid_service_says_why() {
    let invalid = ksvc("hello").set("/spec/template/spec/containers", json!([]));
    reconcile_once(
        Snapshot::new(NAMESPACE).with(invalid.object()),
        vec![Exchange::status(Kind::KnativeService, "hello").expect(|body| {
            let ready = condition(body, "Ready");
            assert_eq!((&ready["status"], &ready["reason"]), (&json!("False"), &json!("InvalidSpec")));
            assert!(ready["message"].as_str().unwrap_or_default().contains("spec.template.spec.containers"), "{ready}");
        })],
    )
    .await
    .expect("nothing failed to write");
}

/// Revisions are immutable: changing a template that names its revision,
/// without a new name, creates nothing, and the Configuration and Service
/// say which field to change.
#[tokio::test]
async fn a_changed_template_needs_a_new_name() {
    let named = ksvc("hello").set("/spec/template/metadata/name", json!("hello-one"));
    let start = Snapshot::new(NAMESPACE)
        .with(named.clone().object())
        .with(Fixture::endpoint_slice("hello-one", "a").endpoint("10.0.0.1", Some(true)).object());
    let changed = converge(start, 2).await.with(named.image(V2).generation(2).object());
    reconcile_once(
        changed,
        vec![
            Exchange::apply(Kind::Configuration, "hello").generation(2),
            Exchange::status(Kind::Configuration, "hello")
                .expect(expect_condition("Ready", "False", Some("InvalidSpec")))
                .expect_at("/status/observedGeneration", json!(2)),
            Exchange::status(Kind::KnativeService, "hello")
                .expect(expect_condition("ConfigurationsReady", "False", Some("InvalidSpec")))
                .expect(|body| {
                    let message = condition(body, "Ready")["message"].as_str().unwrap_or_default().to_string();
                    assert!(message.contains("spec.template.metadata.name"), "{message}");
                }),
        ],
    )
    .await
    .expect("nothing failed to write");
}

/// `config-domain` applies to every namespace: the Service's URL follows it.
#[tokio::test]
async fn config_maps_configure_every_namespace() {
    let snapshot = Snapshot::new(NAMESPACE)
        .with(ksvc("hello").object())
        .with_config_map(config_map("config-domain", &[("svc.example.org", "")]));
    let script = vec![
        Exchange::apply(Kind::Configuration, "hello"),
        Exchange::apply(Kind::Route, "hello"),
        Exchange::apply(Kind::Revision, "hello-00001"),
        Exchange::apply(Kind::Service, "hello-00001"),
        Exchange::apply(Kind::Deployment, "hello-00001-deployment"),
        Exchange::status(Kind::Revision, "hello-00001"),
        Exchange::status(Kind::Configuration, "hello"),
        Exchange::status(Kind::Route, "hello"),
        Exchange::status(Kind::KnativeService, "hello")
            .expect_at("/status/url", json!("http://hello.default.svc.example.org")),
    ];
    reconcile_once(snapshot, script).await.expect("a clean pass");
}

// ----- leader change -------------------------------------------------------------------------

fn lease_path() -> String {
    "/apis/coordination.k8s.io/v1/namespaces/revgate-system/leases/revgate-controller".to_string()
}

fn lease(holder: &str, version: &str, transitions: i64) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "revgate-controller", "namespace": "revgate-system", "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": transitions,
                 "acquireTime": "2024-05-01T12:00:00.000000Z", "renewTime": "2024-05-01T12:00:00.000000Z"},
    })
}

fn get_lease(answer: Value) -> Exchange {
    Exchange::request(Method::GET, &lease_path()).respond(200, answer)
}

fn elector(client: kube::Client, identity: &str) -> LeaseElector {
    LeaseElector::new(client, LeaseSettings::new("revgate-system", "revgate-controller", identity))
}

fn wall() -> k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc> {
    k8s_openapi::chrono::DateTime::from_timestamp(i64::try_from(NOW).unwrap_or_default(), 0).unwrap_or_default()
}

/// Two replicas: `a` creates the Lease and leads, renewing it; `b` follows
/// while the Lease changes. When `a` stops renewing, `b` waits out the
/// lease duration on its own clock, takes over (a new term: transitions
/// + 1, written against the resourceVersion it read), and `a`, back,
/// follows `b`.
#[tokio::test]
async fn leader_change() {
    let t0 = Instant::now();
    let secs = Duration::from_secs;
    let not_found =
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
    let (client_a, server_a) = scripted(vec![
        Exchange::request(Method::GET, &lease_path()).respond(404, not_found),
        Exchange::request(Method::POST, "/apis/coordination.k8s.io/v1/namespaces/revgate-system/leases")
            .expect_at("/spec/holderIdentity", json!("a"))
            .expect_at("/spec/leaseTransitions", json!(0))
            .respond(201, lease("a", "1", 0)),
        get_lease(lease("a", "1", 0)),
        Exchange::request(Method::PUT, &lease_path())
            .expect_at("/metadata/resourceVersion", json!("1"))
            .expect_at("/spec/holderIdentity", json!("a"))
            .expect_at("/spec/leaseTransitions", json!(0))
            .respond(200, lease("a", "2", 0)),
        get_lease(lease("b", "3", 1)),
    ]);
    let (client_b, server_b) = scripted(vec![
        get_lease(lease("a", "1", 0)),
        get_lease(lease("a", "2", 0)),
        get_lease(lease("a", "2", 0)),
        get_lease(lease("a", "2", 0)),
        Exchange::request(Method::PUT, &lease_path())
            .expect_at("/metadata/resourceVersion", json!("2"))
            .expect_at("/spec/holderIdentity", json!("b"))
            .expect_at("/spec/leaseTransitions", json!(1))
            .respond(200, lease("b", "3", 1)),
    ]);
    let (mut a, mut b) = (elector(client_a, "a"), elector(client_b, "b"));
    let follows = |holder: &str| Role::Follower { holder: Some(holder.to_string()) };

    assert_eq!(within(a.step(t0, wall())).await.expect("a step"), Role::Leader);
    assert_eq!(within(b.step(t0, wall())).await.expect("a step"), follows("a"));
    assert_eq!(within(a.step(t0 + secs(2), wall())).await.expect("a step"), Role::Leader, "a renews");
    assert_eq!(within(b.step(t0 + secs(3), wall())).await.expect("a step"), follows("a"), "the lease changed");
    // `a` is gone; 14s after b last saw a change it still waits…
    assert_eq!(within(b.step(t0 + secs(17), wall())).await.expect("a step"), follows("a"));
    // …and at 15s it takes over.
    assert_eq!(within(b.step(t0 + secs(18), wall())).await.expect("a step"), Role::Leader);
    assert_eq!(within(a.step(t0 + secs(19), wall())).await.expect("a step"), follows("b"), "a steps down");
    drop((a, b));
    server_a.finish().await;
    server_b.finish().await;
}

/// Two replicas racing for an expired Lease: the API server accepts the
/// write with the current resourceVersion only; the loser (409) follows.
#[tokio::test]
async fn losing_a_race_for_the_lease_means_following() {
    let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                          "message": "the object has been modified"});
    let (client, server) = scripted(vec![
        get_lease(lease("", "7", 3)),
        Exchange::request(Method::PUT, &lease_path()).respond(409, conflict),
    ]);
    let mut c = elector(client, "c");
    assert_eq!(within(c.step(Instant::now(), wall())).await.expect("a step"), Role::Follower { holder: None });
    drop(c);
    server.finish().await;
}

/// A leader that cannot reach the API server keeps leading only until its
/// renew deadline, then steps down on its own; a leader that releases the
/// Lease leaves it free for the next replica at once.
#[tokio::test]
async fn a_cut_off_leader_steps_down_and_a_leaving_one_releases() {
    let t0 = Instant::now();
    let unavailable = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "ServiceUnavailable",
                             "code": 503, "message": "etcd timeout"});
    let (client, server) = scripted(vec![
        get_lease(lease("a", "1", 0)),
        Exchange::request(Method::PUT, &lease_path()).respond(200, lease("a", "2", 0)),
        Exchange::request(Method::GET, &lease_path()).respond(503, unavailable.clone()),
        Exchange::request(Method::GET, &lease_path()).respond(503, unavailable),
        get_lease(lease("a", "2", 0)),
        Exchange::request(Method::PUT, &lease_path())
            .expect(|body| assert!(body.pointer("/spec/holderIdentity").is_none_or(Value::is_null), "{body:#}"))
            .expect_at("/spec/leaseDurationSeconds", json!(1))
            .respond(200, lease("", "3", 0)),
    ]);
    let mut a = elector(client, "a");
    assert!(within(a.tick(t0, wall(), false)).await, "renewed");
    assert!(within(a.tick(t0 + Duration::from_secs(5), wall(), true)).await, "within the renew deadline");
    assert!(!within(a.tick(t0 + Duration::from_secs(11), wall(), true)).await, "past the renew deadline");
    within(a.release(wall())).await.expect("released");
    drop(a);
    server.finish().await;
}

// ----- leader label --------------------------------------------------------------------------

fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/revgate-system/pods/{name}")
}

/// The label in a merge patch's body (JSON pointer: `/` escaped as `~1`).
const LEADER_LABEL_POINTER: &str = "/metadata/labels/revgate.dev~1leader";

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "revgate-system"}})
}

/// The leading replica labels its own pod, which the activation Service
/// selects, so the gateways' reports reach the replica that scales.
#[tokio::test]
async fn the_leader_labels_its_pod() {
    let (client, server) = scripted(vec![
        Exchange::request(Method::PATCH, &pod_path("revgate-0"))
            .expect_at(LEADER_LABEL_POINTER, json!("true"))
            .respond(200, pod("revgate-0")),
    ]);
    let (leading_tx, leading) = watch::channel(true);
    drop(leading_tx);
    let label = LeaderLabel::new(client, "revgate-system", "revgate-0");
    within(label.follow(leading)).await;
    drop(label);
    server.finish().await;
}

/// A replica that loses the Lease removes its label (a merge patch setting
/// it to null), so the activation Service stops sending the gateways to a
/// replica that no longer scales.
#[tokio::test]
async fn a_replica_that_loses_the_lease_removes_its_label() {
    let (labelled_tx, labelled) = tokio::sync::oneshot::channel();
    let (client, server) = scripted(vec![
        Exchange::request(Method::PATCH, &pod_path("revgate-1"))
            .expect_at(LEADER_LABEL_POINTER, json!("true"))
            .expect(move |_| {
                let _ = labelled_tx.send(());
            })
            .respond(200, pod("revgate-1")),
        Exchange::request(Method::PATCH, &pod_path("revgate-1"))
            .expect_at(LEADER_LABEL_POINTER, Value::Null)
            .expect(|body| {
                assert_eq!(
                    body.pointer("/metadata/labels").and_then(Value::as_object).map(|l| l.len()),
                    Some(1),
                    "only the leader label: {body:#}"
                )
            })
            .respond(200, pod("revgate-1")),
    ]);
    let (leading_tx, leading) = watch::channel(true);
    let label = LeaderLabel::new(client, "revgate-system", "revgate-1");
    let following = tokio::spawn(async move { label.follow(leading).await });
    within(labelled).await.expect("the leader labelled its pod");
    leading_tx.send_replace(false);
    drop(leading_tx);
    within(following).await.expect("the label follower");
    server.finish().await;
}

/// A refused patch says which pod and label, and which permission is missing.
#[tokio::test]
async fn a_refused_label_names_the_pod_and_the_permission() {
    let (client, server) = scripted(vec![Exchange::request(Method::PATCH, &pod_path("revgate-2")).fail(
        403,
        "Forbidden",
        "pods is forbidden",
    )]);
    let label = LeaderLabel::new(client, "revgate-system", "revgate-2");
    let error = within(label.set(true)).await.expect_err("refused").to_string();
    assert!(error.contains("revgate.dev/leader on pod revgate-system/revgate-2"), "{error}");
    assert!(error.contains("may patch pods in revgate-system"), "{error}");
    drop(label);
    server.finish().await;
}

/// A failed label patch is tried again with backoff until it succeeds:
/// without the label, the activation Service selects no pod and no gateway
/// filter reaches the autoscaler.
#[tokio::test(start_paused = true)]
async fn a_failed_label_patch_is_retried_until_it_succeeds() {
    let (labelled_tx, labelled) = tokio::sync::oneshot::channel();
    let (client, server) = scripted(vec![
        Exchange::request(Method::PATCH, &pod_path("revgate-3")).fail(500, "InternalError", "etcd is sad"),
        Exchange::request(Method::PATCH, &pod_path("revgate-3")).fail(409, "Conflict", "try again"),
        Exchange::request(Method::PATCH, &pod_path("revgate-3"))
            .expect_at(LEADER_LABEL_POINTER, json!("true"))
            .expect(move |_| {
                let _ = labelled_tx.send(());
            })
            .respond(200, pod("revgate-3")),
    ]);
    let (leading_tx, leading) = watch::channel(true);
    let label = LeaderLabel::new(client, "revgate-system", "revgate-3");
    let following = tokio::spawn(async move { label.follow(leading).await });
    within(labelled).await.expect("the label is set after two failed patches");
    drop(leading_tx);
    within(following).await.expect("the label follower");
    server.finish().await;
}
