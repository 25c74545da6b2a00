//! The controller against a real cluster. Ignored by default: it needs a
//! cluster with Istio (its CRDs and an ingress gateway) and revgate's
//! Knative CRDs (`kubectl apply -f shared/knative/knative-serving-crds.yaml`),
//! and uses the current kubeconfig context. It creates a namespace of its
//! own, runs the controller in-process for that namespace only (the Lease
//! lives there too), and deletes the namespace at the end.
//!
//! ```text
//! kind create cluster --name revgate-it        # or k3s: export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
//! istioctl install -y --set profile=minimal
//! kubectl apply -f istio-manifests/100-namespaces.yaml -f istio-manifests/200-knative-serving-crds.yaml
//! CARGO_TARGET_DIR=/work/target-kube cargo test -p revgate-kube --test cluster -- --ignored --nocapture
//! ```
//!
//! The garbage-collection case sets `knative-serving/config-gc` to collect
//! at once while it runs, and puts the previous data back.
//!
//! `REVGATE_IT_IMAGE` overrides the image served (default Knative's
//! helloworld-go, which listens on `$PORT`); `REVGATE_IT_CRASH_IMAGE` the
//! shell image whose container exits on purpose (default `busybox:1.36`).

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
    let (ns, controller) = isolated(&client, "revgate-it").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());

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

/// A fresh namespace for one case, and the controller serving only it (its
/// WasmPlugin goes to that namespace, where it selects no gateway).
async fn isolated(client: &Client, prefix: &str) -> (String, revgate_kube::ControllerHandle) {
    let suffix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() % 100_000);
    let ns = format!("{prefix}-{suffix}");
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await.expect("a test namespace");
    let mut config = ControllerConfig::new("revgate-it");
    config.namespaces = vec![ns.clone()];
    config.lease.namespace = ns.clone();
    config.render.gateway_namespace = ns.clone();
    (ns.clone(), revgate_kube::start(client.clone(), config).expect("the controller starts"))
}

fn reason(object: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    let c = object.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?;
    let text = |key: &str| c[key].as_str().unwrap_or_default().to_string();
    Some((text("status"), text("reason"), text("message")))
}

/// Sets `config-gc` in `knative-serving` (which configures every
/// namespace) and returns what was there, to put back.
async fn set_config_gc(client: &Client, data: Value) -> Option<Value> {
    let maps =
        Api::<DynamicObject>::namespaced_with(client.clone(), "knative-serving", &Kind::ConfigMap.api_resource());
    let mut system = Namespace::default();
    system.metadata.name = Some("knative-serving".into());
    let _ = Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &system).await;
    let before = maps.get_opt("config-gc").await.expect("reading config-gc").map(|m| m.data["data"].clone());
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "config-gc", "namespace": "knative-serving"}, "data": data});
    maps.patch("config-gc", &PatchParams::apply("revgate-it").force(), &Patch::Apply(body)).await.expect("config-gc");
    before
}

#[tokio::test]
#[ignore = "needs a cluster with Istio and revgate's Knative CRDs; changes knative-serving/config-gc for its duration"]
async fn revisions_no_longer_routed_are_collected_with_their_children() {
    let client = Client::try_default().await.expect("a kubeconfig or in-cluster config");
    let image = std::env::var("REVGATE_IT_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_string());
    // Collect every revision that leaves the traffic, at once.
    let before = set_config_gc(
        &client,
        json!({"retain-since-create-time": "disabled", "retain-since-last-active-time": "disabled",
               "min-non-active-revisions": "0", "max-non-active-revisions": "0"}),
    )
    .await;
    let (ns, controller) = isolated(&client, "revgate-gc").await;
    let resource = |kind: Kind| Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &kind.api_resource());
    let ksvcs = resource(Kind::KnativeService);
    let apply = PatchParams::apply("revgate-it").force();
    let mut pinned = service("hello", &ns, &image, "one");
    ksvcs.patch("hello", &apply, &Patch::Apply(pinned.clone())).await.expect("applied");
    eventually("hello-00001 routed", || async {
        let revision = resource(Kind::Revision).get("hello-00001").await.ok()?;
        (revision.metadata.labels?.get("serving.knative.dev/routingState")? == "active").then_some(())
    })
    .await;

    // Version two, with a tag keeping hello-00001; version three: hello-00002 goes.
    pinned["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = json!("two");
    pinned["spec"]["traffic"] = json!([{"latestRevision": true, "percent": 100},
                                       {"revisionName": "hello-00001", "tag": "pinned", "percent": 0}]);
    ksvcs.patch("hello", &apply, &Patch::Apply(pinned.clone())).await.expect("applied");
    eventually("traffic on hello-00002", || async {
        let route = resource(Kind::Route).get("hello").await.ok()?;
        (route.data["status"]["traffic"][0]["revisionName"] == "hello-00002").then_some(())
    })
    .await;
    pinned["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = json!("three");
    ksvcs.patch("hello", &apply, &Patch::Apply(pinned)).await.expect("applied");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually("hello-00002, its Deployment and Service to be collected", || async {
        let gone = resource(Kind::Revision).get_opt("hello-00002").await.ok()?.is_none()
            && deployments.get_opt("hello-00002-deployment").await.ok()?.is_none()
            && resource(Kind::Service).get_opt("hello-00002").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    assert!(resource(Kind::Revision).get_opt("hello-00001").await.expect("listing").is_some(), "the tag keeps it");
    assert!(resource(Kind::Revision).get_opt("hello-00003").await.expect("listing").is_some(), "the latest stays");

    controller.shutdown().await;
    let _ = set_config_gc(&client, before.unwrap_or_else(|| json!({}))).await;
    Api::<Namespace>::all(client.clone()).delete(&ns, &DeleteParams::default()).await.expect("deleted");
}

#[tokio::test]
#[ignore = "needs a cluster with Istio and revgate's Knative CRDs; see the file's docs"]
async fn pods_that_fail_show_why_in_the_revision_and_service() {
    let client = Client::try_default().await.expect("a kubeconfig or in-cluster config");
    let image = std::env::var("REVGATE_IT_CRASH_IMAGE").unwrap_or_else(|_| "busybox:1.36".to_string());
    let (ns, controller) = isolated(&client, "revgate-pods").await;
    let resource = |kind: Kind| Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &kind.api_resource());
    let ksvcs = resource(Kind::KnativeService);
    let apply = PatchParams::apply("revgate-it").force();
    let container = |extra: Value| {
        let mut c = json!({"image": image, "command": ["sh", "-c", "echo 'no DATABASE_URL' >&2; exit 3"]});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        c
    };
    let ksvc = |name: &str, extra: Value| {
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
               "spec": {"template": {"spec": {"containers": [container(extra)]}}}})
    };
    ksvcs.patch("crash", &apply, &Patch::Apply(ksvc("crash", json!({})))).await.expect("applied");
    let huge = json!({"resources": {"requests": {"memory": "64Ti"}}});
    ksvcs.patch("huge", &apply, &Patch::Apply(ksvc("huge", huge))).await.expect("applied");

    let (status, why, message) = eventually("crash-00001 to show its exit code", || async {
        let revision = resource(Kind::Revision).get("crash-00001").await.ok()?;
        reason(&revision, "ContainerHealthy").filter(|(s, _, _)| s == "False")
    })
    .await;
    assert_eq!((status.as_str(), why.as_str()), ("False", "ExitCode3"));
    assert!(message.starts_with("Container failed with: ") && message.contains("no DATABASE_URL"), "{message}");
    let ksvc = ksvcs.get("crash").await.expect("the Service");
    let (_, why, message) = reason(&ksvc, "ConfigurationsReady").expect("ConfigurationsReady");
    assert_eq!(why, "RevisionFailed");
    assert!(message.starts_with("Revision \"crash-00001\" failed with message: Container failed with: "), "{message}");

    let (_, why, message) = eventually("huge-00001 to be unschedulable", || async {
        let revision = resource(Kind::Revision).get("huge-00001").await.ok()?;
        reason(&revision, "ResourcesAvailable").filter(|(s, _, _)| s == "False")
    })
    .await;
    assert_eq!(why, "Unschedulable");
    assert!(message.contains("Insufficient memory"), "the scheduler's message: {message}");

    controller.shutdown().await;
    Api::<Namespace>::all(client.clone()).delete(&ns, &DeleteParams::default()).await.expect("deleted");
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
    let (ns, controller) = isolated(&client, "revgate-it-mesh").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
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

/// The KPA's second source: a revision pod's sidecar exports its inbound
/// cluster's request stats (the controller's `proxy.istio.io/config` on
/// the Deployment), which count a call that reaches the pod past every
/// gateway. Read through the API server's pod proxy, as the scraper reads
/// `podIP:15090/stats/prometheus` from inside the cluster.
#[tokio::test]
#[ignore = "needs a cluster with Istio and revgate's Knative CRDs; see the file's docs"]
async fn a_revision_pods_sidecar_counts_the_calls_that_reach_it() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ListParams;
    use revgate_kube::scrape::{STATS_PATH, STATS_PORT, parse_sidecar_stats};

    let client = Client::try_default().await.expect("a kubeconfig or in-cluster config");
    let image = std::env::var("REVGATE_IT_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_string());
    let (ns, controller) = isolated(&client, "revgate-it-scrape").await;
    let namespaces = Api::<Namespace>::all(client.clone());
    let injection = json!({"metadata": {"labels": {"istio-injection": "enabled"}}});
    namespaces
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&injection))
        .await
        .expect("the namespace joins the mesh");
    let apply = PatchParams::apply("revgate-it").force();
    Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &Kind::KnativeService.api_resource())
        .patch("hello", &apply, &Patch::Apply(service("hello", &ns, &image, "scraped")))
        .await
        .expect("applied");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = eventually("a ready pod of hello-00001 with its sidecar", || async {
        let list = pods.list(&ListParams::default().labels("serving.knative.dev/revision=hello-00001")).await.ok()?;
        list.items.into_iter().find_map(|pod| {
            let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
            let sidecar = statuses.iter().any(|c| c.name == "istio-proxy")
                || pod.spec.as_ref()?.init_containers.iter().flatten().any(|c| c.name == "istio-proxy");
            (sidecar && statuses.iter().all(|c| c.ready)).then(|| pod.metadata.name.clone()).flatten()
        })
    })
    .await;
    let get = |path: String| {
        let client = client.clone();
        async move {
            let request = http::Request::get(path).body(Vec::new()).ok()?;
            client.request_text(request).await.ok()
        }
    };
    let stats_path = format!("/api/v1/namespaces/{ns}/pods/{pod}:{STATS_PORT}/proxy{STATS_PATH}");
    let before = eventually("the sidecar's inbound stats", || async {
        parse_sidecar_stats(&get(stats_path.clone()).await?, 8080).ok()
    })
    .await;
    let reply = get(format!("/api/v1/namespaces/{ns}/pods/{pod}:8080/proxy/")).await.expect("the app answers");
    assert!(reply.contains("scraped"), "{reply}");
    eventually("the sidecar to count the call", || async {
        let now = parse_sidecar_stats(&get(stats_path.clone()).await?, 8080).ok()?;
        (now.total > before.total).then_some(())
    })
    .await;

    controller.shutdown().await;
    namespaces.delete(&ns, &DeleteParams::default()).await.expect("the test namespace is deleted");
}
