//! The controller against a real cluster. Ignored by default: it needs a
//! cluster with Istio (its CRDs and an ingress gateway) and revgate's
//! Knative CRDs (`kubectl apply -f shared/knative/knative-serving-crds.yaml`),
//! and uses the current kubeconfig context. It creates a namespace of its
//! own, runs the controller in-process for that namespace only (the Lease
//! lives there too), and deletes the namespace at the end.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-kube cargo test -p revgate-kube --test cluster -- --ignored --nocapture
//! ```
//!
//! `REVGATE_IT_IMAGE` overrides the image served (default Knative's
//! helloworld-go, which listens on `$PORT`).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use revgate_kube::{ControllerConfig, Kind};
use revgate_model::plan::ObjectKey;
use revgate_runtime_api::{Runtime, Workload};
use serde_json::{Value, json};

const DEFAULT_IMAGE: &str = "ghcr.io/knative/helloworld-go:latest";
const PATIENCE: Duration = Duration::from_secs(180);

/// Polls `check` every second until it returns `Some`, for at most [`PATIENCE`].
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn condition(object: &DynamicObject, type_: &str) -> Option<String> {
    object.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

fn service(name: &str, namespace: &str, image: &str, message: &str) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"template": {"spec": {"containers": [{"image": image, "env": [{"name": "TARGET", "value": message}]}]}}},
    })
}

#[tokio::test]
#[ignore = "needs a cluster with Istio and revgate's Knative CRDs; see the file's docs"]
async fn a_service_runs_updates_scales_and_is_collected() {
    let client = Client::try_default().await.expect("a kubeconfig or in-cluster config");
    let image = std::env::var("REVGATE_IT_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_string());
    let suffix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() % 100_000);
    let ns = format!("revgate-it-{suffix}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    namespaces.create(&PostParams::default(), &namespace).await.expect("a test namespace");

    let mut config = ControllerConfig::new("revgate-it");
    config.namespaces = vec![ns.clone()];
    config.lease.namespace = ns.clone();
    // The WasmPlugin goes to the test namespace, where it selects no gateway.
    config.render.gateway_namespace = ns.clone();
    let controller = revgate_kube::start(client.clone(), config).expect("the controller starts");

    let resource = |kind: Kind| Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &kind.api_resource());
    let ksvcs = resource(Kind::KnativeService);
    let apply = PatchParams::apply("revgate-it").force();
    ksvcs.patch("hello", &apply, &Patch::Apply(service("hello", &ns, &image, "one"))).await.expect("applied");

    // Create: Ready, with a Deployment, a Service and the route's VirtualServices.
    eventually("hello to be Ready", || async {
        let ksvc = ksvcs.get("hello").await.ok()?;
        (condition(&ksvc, "Ready").as_deref() == Some("True")).then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments.get("hello-00001-deployment").await.expect("the revision's Deployment");
    resource(Kind::VirtualService).get("hello-ingress").await.expect("the gateway VirtualService");

    // Update: a second revision takes the traffic once ready.
    ksvcs.patch("hello", &apply, &Patch::Apply(service("hello", &ns, &image, "two"))).await.expect("applied");
    eventually("traffic on hello-00002", || async {
        let route = resource(Kind::Route).get("hello").await.ok()?;
        (route.data["status"]["traffic"][0]["revisionName"] == "hello-00002").then_some(())
    })
    .await;

    // Scale to zero through the runtime: the Deployment follows, the revision stays Ready.
    let workload = Workload {
        key: ObjectKey::new(ns.clone(), "hello-00001"),
        service: Some("hello".into()),
        configuration: "hello".into(),
        spec: Default::default(),
    };
    eventually("leadership", || async { controller.leading.borrow().then_some(()) }).await;
    controller.runtime.scale(&workload, 0);
    eventually("hello-00001 at zero", || async {
        let d = deployments.get("hello-00001-deployment").await.ok()?;
        (d.spec?.replicas == Some(0)).then_some(())
    })
    .await;
    let revision = resource(Kind::Revision).get("hello-00001").await.expect("the revision");
    assert_eq!(condition(&revision, "Ready").as_deref(), Some("True"), "a revision at zero stays Ready");

    // Delete: the garbage collector takes every child with the Service.
    ksvcs.delete("hello", &DeleteParams::foreground()).await.expect("deleted");
    eventually("the children to be collected", || async {
        let gone = resource(Kind::Configuration).get_opt("hello").await.ok()?.is_none()
            && deployments.get_opt("hello-00002-deployment").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;

    controller.shutdown().await;
    namespaces.delete(&ns, &DeleteParams::default()).await.expect("the test namespace is deleted");
}

/// The `-mesh` destinations of a VirtualService.
fn mesh_destinations(vs: &DynamicObject) -> Vec<String> {
    vs.data["spec"]["http"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["route"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["destination"]["host"].as_str().map(str::to_string))
        .collect()
}

/// Calls from inside the mesh: going to zero, the `-mesh` VirtualService
/// sends sidecars to the local gateway before the Deployment is scaled to
/// zero (never direct to a revision without pods); going warm, it sends
/// them to the revision again only once its EndpointSlices show a ready pod.
#[tokio::test]
#[ignore = "needs a cluster with Istio and revgate's Knative CRDs; see the file's docs"]
async fn the_mesh_goes_through_the_local_gateway_while_a_revision_is_at_zero() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::ListParams;
    use revgate_istio::options::DEFAULT_LOCAL_GATEWAY_SERVICE;

    let client = Client::try_default().await.expect("a kubeconfig or in-cluster config");
    let image = std::env::var("REVGATE_IT_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_string());
    let suffix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() % 100_000);
    let ns = format!("revgate-it-mesh-{suffix}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    namespaces.create(&PostParams::default(), &namespace).await.expect("a test namespace");

    let mut config = ControllerConfig::new("revgate-it");
    config.namespaces = vec![ns.clone()];
    config.lease.namespace = ns.clone();
    config.render.gateway_namespace = ns.clone();
    let controller = revgate_kube::start(client.clone(), config).expect("the controller starts");
    let resource = |kind: Kind| Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &kind.api_resource());
    let apply = PatchParams::apply("revgate-it").force();
    resource(Kind::KnativeService)
        .patch("hello", &apply, &Patch::Apply(service("hello", &ns, &image, "mesh")))
        .await
        .expect("applied");
    let direct = format!("hello-00001.{ns}.svc.cluster.local");
    let virtual_services = resource(Kind::VirtualService);
    eventually("hello-mesh to call the running revision directly", || async {
        let vs = virtual_services.get("hello-mesh").await.ok()?;
        (mesh_destinations(&vs) == [direct.clone()]).then_some(())
    })
    .await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let ready_pods = || async {
        let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=hello-00001")).await.ok()?;
        let ready = list
            .items
            .iter()
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .count();
        Some(ready)
    };
    let workload = Workload {
        key: ObjectKey::new(ns.clone(), "hello-00001"),
        service: Some("hello".into()),
        configuration: "hello".into(),
        spec: Default::default(),
    };
    eventually("leadership", || async { controller.leading.borrow().then_some(()) }).await;

    // Going cold: never a direct route to a Deployment scaled to zero.
    controller.runtime.scale(&workload, 0);
    eventually("hello-00001 scaled to zero behind the local gateway", || async {
        let vs = virtual_services.get("hello-mesh").await.ok()?;
        let replicas = deployments.get("hello-00001-deployment").await.ok()?.spec?.replicas;
        let destinations = mesh_destinations(&vs);
        assert!(
            !(replicas == Some(0) && destinations.contains(&direct)),
            "the Deployment went to zero while sidecars still called it directly"
        );
        (replicas == Some(0) && destinations == [DEFAULT_LOCAL_GATEWAY_SERVICE]).then_some(())
    })
    .await;

    // Going warm: direct again only with a ready pod.
    controller.runtime.scale(&workload, 1);
    eventually("hello-mesh direct again", || async {
        let vs = virtual_services.get("hello-mesh").await.ok()?;
        let is_direct = mesh_destinations(&vs) == [direct.clone()];
        if is_direct {
            assert!(ready_pods().await? >= 1, "sidecars sent to the revision before a pod was ready");
        }
        is_direct.then_some(())
    })
    .await;

    controller.shutdown().await;
    namespaces.delete(&ns, &DeleteParams::default()).await.expect("the test namespace is deleted");
}
