//! The `-mesh` switch (`crate::mesh`) against the scripted API server, both
//! ways: going cold, the VirtualService sends sidecars to the local gateway
//! before the scale to zero is written; going warm, it sends them straight
//! to the revision again only in the pass that sees its pod ready.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use revgate_istio::RenderOptions;
use revgate_istio::options::DEFAULT_LOCAL_GATEWAY_SERVICE;
use revgate_model::plan::ObjectKey;
use revgate_runtime_api::{Runtime, Workload};
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot, watch};

use crate::kinds::Kind;
use crate::mesh::{self, mesh_routes};
use crate::reconcile::{self, Context};
use crate::scale::{KubeRuntime, MESH_SWITCH_SETTLE};
use crate::snapshot::Snapshot;
use crate::testing::*;

const REVISION: &str = "hello-00001";

fn key() -> ObjectKey {
    ObjectKey::new(NAMESPACE, REVISION)
}

fn workload() -> Workload {
    Workload { key: key(), service: Some("hello".into()), configuration: "hello".into(), spec: Default::default() }
}

fn namespace() -> Arc<k8s_openapi::api::core::v1::Namespace> {
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some(NAMESPACE.to_string());
    Arc::new(ns)
}

/// `hello` converged with one ready pod: its `-mesh` VirtualService is direct.
async fn running() -> Snapshot {
    let start = Snapshot::new(NAMESPACE)
        .with(ksvc("hello").object())
        .with(Fixture::endpoint_slice(REVISION, "a").endpoint("10.0.0.1", Some(true)).object());
    converge(start, 2).await
}

/// The destination hosts of a VirtualService body.
fn destinations(body: &Value) -> Vec<String> {
    body.pointer("/spec/http")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|h| h.get("route").and_then(Value::as_array))
        .flatten()
        .filter_map(|r| r.pointer("/destination/host").and_then(Value::as_str).map(str::to_string))
        .collect()
}

fn pass_context(client: kube::Client, cluster: &Snapshot, runtime: &KubeRuntime) -> Arc<Context> {
    Arc::new(
        Context::new(client, Arc::new(cluster.clone()), RenderOptions::default())
            .with_runtime(runtime.clone())
            .with_clock(Arc::new(|| NOW)),
    )
}

/// Going cold: the KPA's zero (already past the gateway filters' cold
/// notice) is recorded but not written while a `-mesh` VirtualService
/// sends sidecars to the revision; the namespace is reconciled at once, the
/// pass points the mesh at the local gateway and keeps the Deployment's
/// pod; only `MESH_SWITCH_SETTLE` after the cluster shows the switch does
/// the scale to zero go out.
#[tokio::test(start_paused = true)]
async fn going_cold_the_mesh_switches_to_the_gateway_before_the_last_pod_goes() {
    let cluster = running().await;
    let routes = mesh_routes(&cluster, &RenderOptions::default());
    assert_eq!(routes.direct, BTreeSet::from([key()]), "converged: sidecars call the pod directly");

    let (scaled_tx, mut scaled) = oneshot::channel();
    let (client, server) = scripted_over(
        &cluster,
        vec![
            Exchange::apply(Kind::VirtualService, "hello-mesh").expect(|body| {
                assert_eq!(destinations(body), [DEFAULT_LOCAL_GATEWAY_SERVICE], "{body:#}");
                let set = &body["spec"]["http"][0]["route"][0]["headers"]["request"]["set"];
                assert_eq!(set["Knative-Serving-Revision"], REVISION, "the revision stays named: {body:#}");
            }),
            Exchange::scale(REVISION).expect_at("/spec/replicas", json!(0)).expect(move |_| {
                let _ = scaled_tx.send(());
            }),
        ],
    );
    let (_leading_tx, leading) = watch::channel(true);
    let runtime = KubeRuntime::start(client.clone(), leading);
    runtime.observe_mesh(routes.direct);
    let (reconciles_tx, mut reconciles) = broadcast::channel(8);
    let trigger = tokio::spawn(mesh::reconcile_held(runtime.held_for_mesh(), reconciles_tx));

    runtime.scale(&workload(), 0);
    let asked = within(reconciles.recv()).await.expect("a pass is asked for");
    assert_eq!(asked.name, NAMESPACE);
    assert!(runtime.held_for_mesh().borrow().contains(&key()), "the zero waits for the mesh");
    assert_eq!(runtime.wishes().get(&key()), Some(&0), "the zero is recorded");
    assert!(!runtime.replicas().contains_key(&key()), "applied Deployments keep their pods meanwhile");

    // The pass sees the pod still ready: only the -mesh VirtualService changes.
    within(reconcile::reconcile(namespace(), pass_context(client.clone(), &cluster, &runtime)))
        .await
        .expect("a clean pass");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(scaled.try_recv().is_err(), "nothing scales while the cluster still shows the direct route");

    // The watch shows the switch; istiod gets its time to push it.
    runtime.observe_mesh(BTreeSet::new());
    tokio::time::sleep(MESH_SWITCH_SETTLE - Duration::from_millis(100)).await;
    assert!(scaled.try_recv().is_err(), "the scale waits for the switch to settle");
    tokio::time::sleep(Duration::from_millis(200)).await;
    within(scaled).await.expect("the scale to zero is written after the switch");
    assert!(runtime.held_for_mesh().borrow().is_empty());

    trigger.abort();
    drop((runtime, client));
    server.finish().await;
}

/// Going warm: at zero behind the gateway, a pass (here of a controller
/// that just started, without wishes, and of one whose scale from zero is
/// under way) keeps sending sidecars through the gateway while no pod is
/// ready; the pass that sees the pod ready sends them straight to it.
#[tokio::test(start_paused = true)]
async fn going_warm_the_mesh_switches_back_only_once_a_pod_is_ready() {
    // At zero: the zero was written, the pod went.
    let (idle_client, idle_server) = scripted(vec![]);
    let (_idle_tx, not_leading) = watch::channel(false);
    let cold_runtime = KubeRuntime::start(idle_client, not_leading);
    cold_runtime.scale(&workload(), 0);
    let mut wishes = cold_runtime.states();
    within(wishes.wait_for(|s| s.get(&key()).is_some_and(|s| s.desired == 0))).await.expect("recorded");
    let mut gone = running().await;
    gone.insert(Fixture::endpoint_slice(REVISION, "a").object());
    let at_zero = converge_in(gone, 2, |client, current| pass_context(client, &current, &cold_runtime)).await;
    drop(cold_runtime);
    idle_server.finish().await;
    let routes = mesh_routes(&at_zero, &RenderOptions::default());
    assert_eq!(routes.through_gateway, BTreeSet::from([key()]), "at zero: sidecars go through the gateway");
    assert!(routes.direct.is_empty());

    // A restarted controller, no wish yet, no pod: nothing to write.
    let (client, server) = scripted_over(&at_zero, vec![]);
    let (_tx, leading) = watch::channel(false);
    let runtime = KubeRuntime::start(client.clone(), leading);
    within(reconcile::reconcile(namespace(), pass_context(client, &at_zero, &runtime))).await.expect("a clean pass");
    drop(runtime);
    server.finish().await;

    // The pod is ready: the mesh goes direct, and the revision counts it.
    let warm = at_zero.with(Fixture::endpoint_slice(REVISION, "a").endpoint("10.0.0.1", Some(true)).object());
    let (client, server) = scripted_over(
        &warm,
        vec![
            Exchange::apply(Kind::VirtualService, "hello-mesh").expect(|body| {
                assert_eq!(destinations(body), ["hello-00001.default.svc.cluster.local"], "{body:#}");
            }),
            Exchange::status(Kind::Revision, REVISION).expect_at("/status/actualReplicas", json!(1)),
        ],
    );
    let (_tx, leading) = watch::channel(false);
    let runtime = KubeRuntime::start(client.clone(), leading);
    runtime.scale(&workload(), 1);
    within(reconcile::reconcile(namespace(), pass_context(client, &warm, &runtime))).await.expect("a clean pass");
    drop(runtime);
    server.finish().await;
}
