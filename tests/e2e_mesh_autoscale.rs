//! End to end: cluster mode's KPA sizes a revision called only from inside
//! the mesh, sidecar to pod, which no gateway sees.
//!
//! Two real Envoys 1.40 in Istio's shapes (`support/mesh.rs`): a client
//! pod's sidecar routing `hello.default.svc.cluster.local` with the
//! `-mesh` VirtualService the controller writes for a warm revision, and
//! the revision pod's sidecar, whose inbound cluster (`inbound|<pod
//! port>||`) passes the calls to the app; its admin port stands in for
//! Istio's stats port 15090. In process, the controller's own pieces as
//! `revgate controller` wires them: the activation service (no gateway
//! reports anything), the sidecar scraper (`revgate_kube::scraper`) and
//! the autoscaler with the scraper's figures; a runtime stands in for
//! Kubernetes, listing the pod ready as the EndpointSlices would.

#[path = "support/mesh.rs"]
mod mesh;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh::outbound;
use revgate::activation::ActivationService;
use revgate::autoscaling::Autoscaler;
use revgate_istio::{RenderOptions, VirtualService};
use revgate_kube::scraper::ScrapeConfig;
use revgate_model::plan::{Endpoint, ObjectKey};
use revgate_runtime::{RevisionState, RevisionStates, Runtime, Workload};
use serde_json::json;
use support::{Backend, Envoy, wait_for};
use tokio::sync::{broadcast, watch};

/// Callers keep this many calls in flight, each held by the app for
/// [`CALL_MS`] (long, so that the moments between a caller's calls are
/// rare); with a target of 4 at Knative's 70 % utilization (2.8 per pod)
/// the KPA wants 3 pods.
const IN_FLIGHT: usize = 8;
const CALL_MS: u64 = 1000;
const WANTED: i64 = 3;
/// Knative's shortest stable window: a revision nobody reports traffic for
/// is wanted at zero once it has passed.
const STABLE_WINDOW: Duration = Duration::from_secs(6);

const MANIFEST: &str = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    metadata:
      name: hello-00001
      annotations:
        autoscaling.knative.dev/window: "6s"
        autoscaling.knative.dev/target: "4"
    spec:
      containers:
      - image: example.com/hello:v1
"#;

fn revision() -> ObjectKey {
    ObjectKey::new("default", "hello-00001")
}

/// Kubernetes as the KPA sees it: one ready pod (the app behind its
/// sidecar), whatever scale is asked; every ask is recorded.
#[derive(Debug)]
struct OnePod {
    states: watch::Sender<Arc<RevisionStates>>,
    asked: Mutex<Vec<u32>>,
}

impl OnePod {
    fn new(pod: Endpoint) -> Self {
        let state = RevisionState { desired: 1, ready: vec![pod], ..RevisionState::default() };
        let states = watch::Sender::new(Arc::new(BTreeMap::from([(revision(), state)])));
        Self { states, asked: Mutex::new(Vec::new()) }
    }

    fn asked(&self) -> Vec<u32> {
        self.asked.lock().expect("the record of scales").clone()
    }
}

impl Runtime for OnePod {
    fn scale(&self, _: &Workload, replicas: u32) {
        self.asked.lock().expect("the record of scales").push(replicas);
    }

    fn remove(&self, _: &ObjectKey) {}

    fn states(&self) -> watch::Receiver<Arc<RevisionStates>> {
        self.states.subscribe()
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

async fn start_envoy(dir: &std::path::Path, name: &str, bootstrap: &str, admin: u16, port: u16) -> Envoy {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, bootstrap).expect("writing a bootstrap");
    Envoy::start(dir, &path, admin, port, name).await
}

/// A revision that only other pods call, straight through their sidecars,
/// keeps its scale past its stable window, and its KPA observes what the
/// callers keep in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_called_only_from_inside_the_mesh_keeps_its_scale() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let app = Backend::start("hello-00001").await;
    let addr = |port: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], port)) };

    // The pod's sidecar: inbound listener to the app's port.
    let inbound = format!("inbound|{}||", app.addr.port());
    let (pod_admin, pod_port) = (support::free_port(), support::free_port());
    let pod_routes = json!({"name": "inbound|http|80", "virtual_hosts": [
        {"name": "inbound|http|80", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": inbound, "timeout": "0s"}}]}]});
    let pod_bootstrap = mesh::bootstrap(
        "sidecar~10.0.0.9~hello-00001-deployment-6d9f-x1.default~default.svc.cluster.local",
        "hello-00001-deployment.default",
        pod_admin,
        vec![mesh::listener("virtualInbound", pod_port, "inbound_0.0.0.0_8080", pod_routes, vec![])],
        vec![mesh::static_cluster(&inbound, app.addr)],
    );

    // The client's sidecar: the controller's -mesh VirtualService for a warm revision.
    let (client_admin, client_port) = (support::free_port(), support::free_port());
    let revision_cluster = outbound(80, "hello-00001.default.svc.cluster.local");
    let client_bootstrap = mesh::bootstrap(
        "sidecar~10.0.0.7~client-7f9c4-abcde.default~default.svc.cluster.local",
        "client.default",
        client_admin,
        vec![mesh::listener("0.0.0.0_80", client_port, "outbound_0.0.0.0_80", mesh_routes(), vec![])],
        vec![mesh::static_cluster(&revision_cluster, addr(pod_port))],
    );
    let (_pod_sidecar, client_sidecar) = tokio::join!(
        start_envoy(dir.path(), "pod-sidecar", &pod_bootstrap, pod_admin, pod_port),
        start_envoy(dir.path(), "client-sidecar", &client_bootstrap, client_admin, client_port),
    );

    // The controller's pieces, the scraper reading the pod sidecar's admin port.
    let documents = revgate_model::parse_documents("hello.yaml", MANIFEST).expect("the manifest parses");
    let (world, _) = revgate_model::World::default().apply(&documents, 0).expect("the manifest applies");
    let plan = world.plan(&Default::default());
    let (_world_tx, world) = watch::channel(Arc::new(world));
    let (_plan_tx, plan) = watch::channel(Arc::new(plan));
    let (_desired_tx, desired) = watch::channel(Arc::default());
    let (_acks_tx, acks) = broadcast::channel(1);
    let activation = ActivationService::start(plan.clone(), desired, acks);
    let runtime = Arc::new(OnePod::new(Endpoint { host: "127.0.0.1".into(), port: app.addr.port() }));
    let (_leading_tx, leading) = watch::channel(true);
    let config = ScrapeConfig { port: pod_admin, ..ScrapeConfig::default() };
    let sidecars = revgate_kube::scraper::start(runtime.states(), leading, config);
    let (autoscaler, statuses) = Autoscaler::new(world, plan, activation, runtime.clone());
    let autoscaler = tokio::spawn(autoscaler.with_sidecar_figures(sidecars).run());

    // Callers in the mesh keep IN_FLIGHT calls going, sidecar to pod.
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{client_port}/?sleep={CALL_MS}");
    let callers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answered = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    let reply = http.get(&url).header("host", "hello.default.svc.cluster.local").send().await;
                    let status = reply.as_ref().map(|r| r.status().as_u16());
                    assert!(status.as_ref().is_ok_and(|s| *s == 200), "a call from inside the mesh failed: {reply:?}");
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let load_started = Instant::now();

    // Past the stable window, the KPA still wants the revision at the
    // scale its mesh load needs, having seen that load.
    let status = wait_for("the KPA to size hello-00001 on its mesh load after its stable window", async || {
        let status = statuses.borrow().get(&revision()).cloned()?;
        let settled = load_started.elapsed() > STABLE_WINDOW + Duration::from_secs(2);
        (settled && status.desired_scale == Some(WANTED)).then_some(status)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for caller in callers {
        answered += caller.await.expect("a caller");
    }
    autoscaler.abort();

    #[allow(clippy::cast_precision_loss)]
    let in_flight = IN_FLIGHT as f64;
    let observed = status.observed_stable_value;
    assert!(
        (observed - in_flight).abs() <= in_flight * 0.05,
        "the KPA observed {observed} requests in flight over its stable window, the callers kept {IN_FLIGHT}"
    );
    assert!(!runtime.asked().contains(&0), "the revision was asked to go to zero while called: {:?}", runtime.asked());
    assert!(answered > 0);
    drop(client_sidecar);
}

/// The client sidecar's routes (`80`) from the controller's `-mesh`
/// VirtualService for [`MANIFEST`], the revision warm.
fn mesh_routes() -> serde_json::Value {
    let documents = revgate_model::parse_documents("hello.yaml", MANIFEST).expect("the manifest parses");
    let (world, _) = revgate_model::World::default().apply(&documents, 0).expect("the manifest applies");
    let vss: Vec<VirtualService> =
        revgate_istio::virtual_services(&world, &world.plan(&Default::default()), &RenderOptions::default())
            .into_iter()
            .filter(revgate_istio::mesh::is_mesh)
            .collect();
    mesh::route_configuration("80", &vss, "mesh")
}
