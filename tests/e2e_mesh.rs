//! End to end: calls from inside an Istio mesh to a revision at zero.
//!
//! Two real Envoys 1.40 (`--concurrency 2`) that revgate does not program:
//! one shaped like a client pod's sidecar, one like the cluster-local
//! gateway (`knative-local-gateway`) with revgate's filter as the
//! WasmPlugin installs it (`release_gate: probe`). Both get what istiod
//! would make of the VirtualServices cluster mode writes (rendered by
//! `revgate-istio`, the controller's own builders, and turned into Envoy
//! routes by `support/mesh.rs`) and the revision's endpoints as Istio names
//! them (`outbound|80||hello-00001.default.svc.cluster.local`), through
//! watched files. `revgate serve --runtime external` is the control plane;
//! the test plays Kubernetes and the controller's steps: registering the
//! pod's endpoint stands in for its readiness, the `-mesh` route file for
//! the VirtualService the controller switches.

#[path = "support/mesh.rs"]
mod mesh;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mesh::{FileSource, outbound};
use revgate_istio::options::DEFAULT_LOCAL_GATEWAY_SERVICE;
use revgate_istio::{RenderOptions, VirtualService};
use revgate_model::plan::ObjectKey;
use serde_json::{Value, json};
use support::{Backend, Envoy, GatewayClient, Reply, Revgate, wait_for};

const GATEWAY_NODE: &str =
    "router~10.0.0.1~istio-ingressgateway-5d8f7c-x2x7q.istio-system~istio-system.svc.cluster.local";
const SIDECAR_NODE: &str = "sidecar~10.0.0.7~client-7f9c4-abcde.default~default.svc.cluster.local";
const CONTROL_CLUSTER: &str = "outbound|9091||revgate.revgate-system.svc.cluster.local";
const LOCAL_GATEWAY: &str = "knative-serving/knative-local-gateway";
const REVISION: &str = "hello-00001";
/// What a client in the mesh calls.
const HOST: &str = "hello.default.svc.cluster.local";

const MANIFEST: &str = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    metadata:
      name: hello-00001
    spec:
      containers:
      - image: example.com/hello:v1
"#;

fn revision_cluster() -> String {
    outbound(80, &format!("{REVISION}.default.svc.cluster.local"))
}

/// The VirtualServices the controller writes for [`MANIFEST`], the `-mesh`
/// one switched for the `cold` revisions, as `revgate-kube` does.
fn virtual_services(cold: &BTreeSet<ObjectKey>) -> Vec<VirtualService> {
    let documents = revgate_model::parse_documents("hello.yaml", MANIFEST).expect("the manifest parses");
    let (world, _) = revgate_model::World::default().apply(&documents, 0).expect("the manifest applies");
    let options = RenderOptions::default();
    let mut vss = revgate_istio::virtual_services(&world, &world.plan(&Default::default()), &options);
    for vs in &mut vss {
        revgate_istio::mesh::route_through_local_gateway(vs, cold, &options);
    }
    vss
}

fn cold() -> BTreeSet<ObjectKey> {
    BTreeSet::from([ObjectKey::new("default", REVISION)])
}

/// The sidecar's routes (`80`) for a state of the revision.
fn sidecar_routes(cold: &BTreeSet<ObjectKey>) -> Value {
    let mesh: Vec<VirtualService> = virtual_services(cold).into_iter().filter(revgate_istio::mesh::is_mesh).collect();
    mesh::route_resource(mesh::route_configuration("80", &mesh, "mesh"))
}

struct Setup {
    gateway: Envoy,
    sidecar: Envoy,
    revgate: Revgate,
    routes: FileSource,
    endpoints: FileSource,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// revgate with `hello` applied and no endpoint; the local gateway and
    /// a sidecar whose `-mesh` routes send `hello` through it (at zero).
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let activation = support::free_port();
        let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().expect("address") };
        let extra = ["--activation-addr".to_owned(), addr(activation).to_string()];
        let revgate = Revgate::start_with(
            &dir.path().join("state"),
            support::free_port(),
            addr(support::free_port()),
            addr(support::free_port()),
            &extra,
        )
        .await;
        revgate.apply(MANIFEST);

        let mut endpoints = FileSource::new(dir.path(), "eds");
        endpoints.set(vec![mesh::endpoints_resource(&revision_cluster(), &[])]);
        let mut routes = FileSource::new(dir.path(), "rds");
        routes.set(vec![sidecar_routes(&cold())]);

        // The local gateway: the -ingress VirtualService's cluster-local entries, revgate's filter.
        let (gateway_admin, gateway_port) = (support::free_port(), support::free_port());
        let gateway_routes = mesh::route_configuration("http.8081", &virtual_services(&BTreeSet::new()), LOCAL_GATEWAY);
        let config = format!(r#"{{"control_cluster": "{CONTROL_CLUSTER}", "release_gate": "probe"}}"#);
        let gateway_bootstrap = mesh::bootstrap(
            GATEWAY_NODE,
            "istio-ingressgateway.istio-system",
            gateway_admin,
            vec![mesh::listener(
                "0.0.0.0_8081",
                gateway_port,
                "outbound_0.0.0.0_8081",
                gateway_routes,
                vec![mesh::revgate_filter(&support::filter_wasm(), &config)],
            )],
            vec![
                mesh::static_cluster(CONTROL_CLUSTER, addr(activation)),
                mesh::eds_cluster(&revision_cluster(), &endpoints),
            ],
        );
        let gateway = start_envoy(dir.path(), "gateway", &gateway_bootstrap, gateway_admin, gateway_port).await;

        // The client's sidecar: the -mesh VirtualService, no filter.
        let (sidecar_admin, sidecar_port) = (support::free_port(), support::free_port());
        let sidecar_bootstrap = mesh::bootstrap(
            SIDECAR_NODE,
            "client.default",
            sidecar_admin,
            vec![mesh::listener(
                "0.0.0.0_80",
                sidecar_port,
                "outbound_0.0.0.0_80",
                json!({"route_config_name": "80", "config_source": routes.config_source()}),
                vec![],
            )],
            vec![
                mesh::eds_cluster(&revision_cluster(), &endpoints),
                mesh::static_cluster(&outbound(80, DEFAULT_LOCAL_GATEWAY_SERVICE), addr(gateway_port)),
            ],
        );
        let sidecar = start_envoy(dir.path(), "sidecar", &sidecar_bootstrap, sidecar_admin, sidecar_port).await;

        let setup = Self { gateway, sidecar, revgate, routes, endpoints, http: reqwest::Client::new(), _dir: dir };
        wait_for("3 filter VMs of the local gateway to poll", async || {
            let view = setup.revgate.gateway().await;
            (view.get("filters")?.get(GATEWAY_NODE)?.as_u64()? >= 3).then_some(())
        })
        .await;
        setup.wait_routes().await;
        setup
    }

    /// Switches the sidecar's `-mesh` routes, as the controller's write
    /// reaches it through istiod, and waits until it applied them.
    async fn switch_mesh(&mut self, cold: &BTreeSet<ObjectKey>) {
        self.routes.set(vec![sidecar_routes(cold)]);
        self.wait_routes().await;
    }

    async fn wait_routes(&self) {
        let version = self.routes.version.to_string();
        wait_for(&format!("the sidecar to apply routes version {version}"), async || {
            let dump = self.config_dump(&self.sidecar, "dynamic_route_configs").await?;
            // With `?resource=`, each entry is one DynamicRouteConfig.
            let applied = dump.pointer("/configs/0/version_info")?.as_str()?.to_owned();
            (applied == version).then_some(())
        })
        .await;
    }

    /// Gives both Envoys the revision's endpoints (the pods Kubernetes lists
    /// ready) and waits until both have them.
    async fn set_pods(&mut self, pods: &[SocketAddr]) {
        self.endpoints.set(vec![mesh::endpoints_resource(&revision_cluster(), pods)]);
        for envoy in [&self.gateway, &self.sidecar] {
            wait_for(&format!("Envoy {} to have {} endpoint(s)", envoy.node_id, pods.len()), async || {
                let prefix = format!("{}::", revision_cluster());
                let clusters = envoy.clusters().await;
                let hosts = clusters.lines().filter(|l| l.starts_with(&prefix) && l.contains("::cx_active::")).count();
                (hosts == pods.len()).then_some(())
            })
            .await;
        }
    }

    async fn config_dump(&self, envoy: &Envoy, resource: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/config_dump?resource={resource}", envoy.admin_port);
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    /// An Envoy counter (0 when absent).
    async fn counter(&self, envoy: &Envoy, name: &str) -> u64 {
        let url = format!("http://127.0.0.1:{}/stats", envoy.admin_port);
        let filter = format!("^{}$", regex_escape(name));
        let response = self.http.get(url).query(&[("filter", filter)]).send().await.expect("Envoy admin");
        let text = response.text().await.expect("Envoy admin text");
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// Requests the local gateway received.
    async fn gateway_requests(&self) -> u64 {
        self.counter(&self.gateway, "http.outbound_0.0.0.0_8081.downstream_rq_total").await
    }

    /// Requests the sidecar sent straight to the revision's pods.
    async fn direct_requests(&self) -> u64 {
        self.counter(&self.sidecar, &format!("cluster.{}.upstream_rq_total", revision_cluster())).await
    }

    async fn activity(&self, field: &str) -> u64 {
        self.revgate.activity(REVISION).await.and_then(|a| a.get(field)?.as_u64()).unwrap_or(0)
    }
}

async fn start_envoy(dir: &Path, name: &str, bootstrap: &str, admin: u16, port: u16) -> Envoy {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, bootstrap).expect("writing a bootstrap");
    let node = if name == "gateway" { GATEWAY_NODE } else { SIDECAR_NODE };
    Envoy::start(dir, &path, admin, port, node).await
}

fn regex_escape(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_string() } else { format!("\\{c}") }).collect()
}

fn tally(replies: &[Reply]) -> BTreeMap<(u16, String), usize> {
    let mut counts = BTreeMap::new();
    for reply in replies {
        *counts.entry((reply.status, reply.body.trim().to_owned())).or_insert(0) += 1;
    }
    counts
}

async fn replies(requests: Vec<tokio::task::JoinHandle<Reply>>) -> Vec<Reply> {
    let mut replies = Vec::new();
    for request in requests {
        replies.push(request.await.expect("request task"));
    }
    replies
}

fn call(client: &GatewayClient) -> tokio::task::JoinHandle<Reply> {
    let client = client.clone();
    tokio::spawn(async move { client.get(HOST, "/").await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_the_mesh_wakes_a_revision_at_zero_then_goes_direct_and_back_to_zero_fails_none() {
    let mut s = Setup::start().await;
    let sidecar = s.sidecar.client();

    // At zero: calls from the sidecar reach the local gateway, whose filter holds them and asks for the revision.
    const HELD: usize = 20;
    let requests: Vec<_> = (0..HELD).map(|_| call(&sidecar)).collect();
    wait_for("the sidecar's calls held at the local gateway and the revision activated", async || {
        (s.activity("held").await >= HELD as u64 && s.activity("activations").await >= 1).then_some(())
    })
    .await;
    assert!(requests.iter().all(|r| !r.is_finished()), "nothing is answered while the revision is at zero");

    // The activation starts a pod; Kubernetes lists it ready, istiod pushes it to both proxies.
    let pod = Backend::start("hello-pod").await;
    s.revgate.set_endpoints(REVISION, &[pod.addr]).await;
    s.set_pods(&[pod.addr]).await;
    let answered = tally(&replies(requests).await);
    assert_eq!(answered, [((200, "hello-pod".to_owned()), HELD)].into(), "every held call answered by the pod");
    assert!(s.gateway_requests().await >= HELD as u64, "the held calls went through the local gateway");

    // Warm: the controller points the mesh at the revision again; the gateway sees none of the calls.
    s.switch_mesh(&BTreeSet::new()).await;
    let (through_gateway, direct) = (s.gateway_requests().await, s.direct_requests().await);
    const WARM: usize = 50;
    let warm = tally(&replies((0..WARM).map(|_| call(&sidecar)).collect()).await);
    assert_eq!(warm, [((200, "hello-pod".to_owned()), WARM)].into());
    assert_eq!(s.gateway_requests().await, through_gateway, "warm calls do not pass the local gateway");
    assert_eq!(s.direct_requests().await - direct, WARM as u64, "warm calls go sidecar to pod");

    // Back to zero under steady calls, in the controller's order: the
    // filters hear "cold" (the zero gate), the mesh goes through the
    // gateway, and only then does the pod leave the endpoints and stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop) = (sidecar.clone(), stop.clone());
            tokio::spawn(async move {
                let mut replies = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    replies.push(client.get(HOST, "/").await);
                }
                replies
            })
        })
        .collect();
    let direct = s.direct_requests().await;
    wait_for("calls flowing sidecar to pod", async || (s.direct_requests().await > direct + 20).then_some(())).await;
    let activations = s.activity("activations").await;
    s.revgate.set_endpoints(REVISION, &[]).await;
    s.switch_mesh(&cold()).await;
    s.set_pods(&[]).await;
    let served_before_stop = pod.served.load(Ordering::SeqCst);
    drop(pod);
    wait_for("a call held at the local gateway asking for the revision again", async || {
        (s.activity("activations").await > activations).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);

    // The next activation answers whatever was held meanwhile.
    let pod = Backend::start("hello-pod-2").await;
    s.revgate.set_endpoints(REVISION, &[pod.addr]).await;
    s.set_pods(&[pod.addr]).await;
    let mut all = Vec::new();
    for task in load {
        all.extend(task.await.expect("a load task"));
    }
    let counts = tally(&all);
    let failed: usize = counts.iter().filter(|((status, _), _)| *status != 200).map(|(_, n)| n).sum();
    println!(
        "back to zero under 4 callers: {} calls, {counts:?} (the first pod served {served_before_stop} in all)",
        all.len()
    );
    assert_eq!(failed, 0, "no call fails on the way to zero: {counts:?}");
    assert!(counts.contains_key(&(200, "hello-pod-2".to_owned())), "calls made at zero waited for the next pod");
}

/// `revgate render istio --at-zero` shows the `-mesh` VirtualService as the
/// controller writes it at zero; without the flag, direct.
#[test]
fn render_istio_shows_the_mesh_at_zero_and_warm() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("hello.yaml");
    std::fs::write(&file, MANIFEST).expect("writing the manifest");
    let render = |extra: &[&str]| -> Vec<Value> {
        let out = std::process::Command::new(support::revgate_bin())
            .args(["render", "istio", "-f"])
            .arg(&file)
            .args(extra)
            .output()
            .expect("running revgate render istio");
        assert!(out.status.success(), "{}", support::stderr(&out));
        serde_yaml_ng::Deserializer::from_slice(&out.stdout)
            .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
            .collect()
    };
    let hosts = |objects: &[Value], name: &str| -> Vec<String> {
        let vs = objects.iter().find(|o| o["metadata"]["name"] == name).expect("the VirtualService");
        vs["spec"]["http"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|h| h["route"].as_array().cloned().unwrap_or_default())
            .map(|r| r["destination"]["host"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let warm = render(&[]);
    let at_zero = render(&["--at-zero"]);
    assert_eq!(hosts(&warm, "hello-mesh"), ["hello-00001.default.svc.cluster.local"]);
    assert_eq!(hosts(&at_zero, "hello-mesh"), [DEFAULT_LOCAL_GATEWAY_SERVICE]);
    assert_eq!(hosts(&warm, "hello-ingress"), hosts(&at_zero, "hello-ingress"), "the gateways' routes do not change");
}
