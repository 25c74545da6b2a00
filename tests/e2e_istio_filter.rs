//! End to end: the filter's Istio path. A real Envoy 1.40 (`--concurrency 2`)
//! that revgate does **not** program stands in for an Istio ingress gateway:
//! a static bootstrap with Istio's cluster names
//! (`outbound|80||<revision>.<namespace>.svc.cluster.local`), its revision
//! endpoints fed by a separate EDS source (a watched file, as istiod feeds
//! them over its own xDS), and the filter configured as the Istio manifests
//! configure it: `release_gate: probe` and the control plane reached through
//! an Istio-named cluster. `revgate serve --runtime external` is the control
//! plane; registering endpoints through its admin API stands in for
//! Kubernetes reporting ready pods.
//!
//! revgate sees no EDS ACK from this Envoy, so its word "ready" says nothing
//! about whether this Envoy has the endpoints yet. The tests make Envoy get
//! them *later* than the control plane says ready and check that no held
//! request is released into "no healthy upstream" (or into a pod that does
//! not listen yet); and that a gateway filter left without the probe gate is
//! never told "ready" on endpoints its Envoy did not ACK, so it fails with
//! revgate's own timeout rather than Envoy's "no healthy upstream".

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{Backend, Envoy, Reply, Revgate, wait_for};

/// An Istio gateway's node id (`router~<ip>~<pod>.<ns>~<ns>.svc.<domain>`):
/// characters the readiness poll must percent-encode.
const NODE_ID: &str = "router~10.0.0.1~istio-ingressgateway-5d8f7c-x2x7q.istio-system~istio-system.svc.cluster.local";
/// The Istio cluster of revgate's activation service.
const CONTROL_CLUSTER: &str = "outbound|9091||revgate.revgate-system.svc.cluster.local";

/// Served through an EDS cluster whose endpoints come from a file.
const HELLO_HOST: &str = "hello.default.example.com";
const HELLO_REVISION: &str = "hello-00001";
const HELLO_CLUSTER: &str = "outbound|80||hello-00001.default.svc.cluster.local";
/// Served through a static cluster whose only host does not listen at first.
const WORLD_HOST: &str = "world.default.example.com";
const WORLD_REVISION: &str = "world-00001";
const WORLD_CLUSTER: &str = "outbound|80||world-00001.default.svc.cluster.local";

/// How long the tests keep the control plane's "ready" ahead of Envoy's endpoints.
const ENDPOINTS_LAG: Duration = Duration::from_millis(500);

const PROBE_GATE: &str = r#""release_gate": "probe""#;

fn service(name: &str, timeout_seconds: u32) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    spec:
      timeoutSeconds: {timeout_seconds}
      containers:
      - image: example.com/{name}:v1
"#
    )
}

/// The EDS file of the hello cluster, as a discovery response.
fn eds_response(version: u32, endpoints: &[std::net::SocketAddr]) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|addr| {
            format!(
                "\n      - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}",
                addr.ip(),
                addr.port()
            )
        })
        .collect();
    let lb_endpoints = if endpoints.is_empty() { " []".to_owned() } else { endpoints };
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: "{HELLO_CLUSTER}"
  endpoints:
  - lb_endpoints:{lb_endpoints}
"#
    )
}

/// A static Envoy shaped like an Istio ingress gateway, with revgate's filter.
fn bootstrap(ports: &Ports, wasm: &Path, eds_dir: &Path, filter_config: &str) -> String {
    let Ports { admin, http, activation, world } = ports;
    let eds_file = eds_dir.join("hello.yaml");
    let (eds_file, eds_dir, wasm) = (eds_file.display(), eds_dir.display(), wasm.display());
    let configuration = serde_json::to_string(filter_config).expect("a JSON string");
    let route = |host: &str, cluster: &str, revision: &str| {
        format!(
            r#"
            - name: "{host}:80"
              domains: ["{host}", "{host}:*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: "{cluster}", timeout: 0s}}
                # As net-istio's VirtualService: route headers, which the filter never sees.
                request_headers_to_add:
                - header: {{key: Knative-Serving-Revision, value: {revision}}}
                - header: {{key: Knative-Serving-Namespace, value: default}}"#
        )
    };
    let hello_route = route(HELLO_HOST, HELLO_CLUSTER, HELLO_REVISION);
    let world_route = route(WORLD_HOST, WORLD_CLUSTER, WORLD_REVISION);
    format!(
        r#"node:
  id: "{NODE_ID}"
  cluster: istio-ingressgateway.istio-system
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: 0.0.0.0_8080
    address: {{socket_address: {{address: 127.0.0.1, port_value: {http}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound_0.0.0.0_8080
          route_config:
            name: http.8080
            virtual_hosts:{hello_route}{world_route}
          http_filters:
          - name: istio-system.revgate
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: istio-system.revgate
                root_id: revgate
                vm_config:
                  vm_id: revgate
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{wasm}"}}}}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {configuration}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: "{CONTROL_CLUSTER}"
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: "{CONTROL_CLUSTER}"
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {activation}}}}}}}
  - name: "{HELLO_CLUSTER}"
    type: EDS
    connect_timeout: 1s
    eds_cluster_config:
      service_name: "{HELLO_CLUSTER}"
      eds_config:
        resource_api_version: V3
        path_config_source:
          path: "{eds_file}"
          watched_directory: {{path: "{eds_dir}"}}
  - name: "{WORLD_CLUSTER}"
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: "{WORLD_CLUSTER}"
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {world}}}}}}}
"#
    )
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    admin: u16,
    http: u16,
    activation: u16,
    /// Where the world revision's only "pod" listens, once it does.
    world: u16,
}

/// The watched directory of the hello cluster's EDS file, and its version.
struct EdsSource {
    dir: PathBuf,
    staging: PathBuf,
    version: u32,
}

impl EdsSource {
    fn new(root: &Path) -> Self {
        let dir = root.join("eds");
        std::fs::create_dir(&dir).expect("creating the EDS directory");
        let mut source = Self { dir, staging: root.to_owned(), version: 0 };
        source.set(&[]);
        source
    }

    /// Gives Envoy the hello revision's endpoints, as istiod would push
    /// them: a new EDS file moved into the watched directory.
    fn set(&mut self, endpoints: &[std::net::SocketAddr]) {
        self.version += 1;
        let staged = self.staging.join(format!("hello-eds-{}.yaml", self.version));
        std::fs::write(&staged, eds_response(self.version, endpoints)).expect("writing the EDS file");
        std::fs::rename(&staged, self.dir.join("hello.yaml")).expect("moving the EDS file into place");
    }
}

/// Fields drop in order: the processes go before the directory holding their logs.
struct Setup {
    envoy: Envoy,
    revgate: Revgate,
    ports: Ports,
    eds: EdsSource,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// revgate with the hello and world services applied (no endpoints,
    /// `timeoutSeconds` as given), and the Istio-style Envoy with every
    /// filter VM polling it.
    async fn start(filter_config: &str, timeout_seconds: u32) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ports = Ports {
            admin: support::free_port(),
            http: support::free_port(),
            activation: support::free_port(),
            world: support::free_port(),
        };
        let addr = |port: u16| format!("127.0.0.1:{port}").parse().expect("address");
        let extra = ["--activation-addr".to_owned(), format!("127.0.0.1:{}", ports.activation)];
        let revgate = Revgate::start_with(
            &dir.path().join("state"),
            support::free_port(),
            addr(support::free_port()),
            addr(support::free_port()),
            &extra,
        )
        .await;
        revgate.apply(&format!("{}---\n{}", service("hello", timeout_seconds), service("world", timeout_seconds)));

        let eds = EdsSource::new(dir.path());
        let config = match filter_config {
            "" => format!(r#"{{"control_cluster": "{CONTROL_CLUSTER}"}}"#),
            knobs => format!(r#"{{"control_cluster": "{CONTROL_CLUSTER}", {knobs}}}"#),
        };
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, bootstrap(&ports, &support::filter_wasm(), &eds.dir, &config))
            .expect("writing the bootstrap");
        let envoy = Envoy::start(dir.path(), &path, ports.admin, ports.http, NODE_ID).await;
        let setup = Self { envoy, revgate, ports, eds, http: reqwest::Client::new(), _dir: dir };
        // Both workers' VMs and the main thread's poll the control plane.
        wait_for("3 filter VMs of the Istio-style gateway to poll", async || {
            let view = setup.revgate.gateway().await;
            let in_sync = view.get("filters")?.get(NODE_ID)?.as_u64()?;
            (in_sync >= 3).then_some(())
        })
        .await;
        setup
    }

    /// Waits until Envoy's hello cluster has `n` hosts.
    async fn wait_envoy_hosts(&self, n: usize) {
        wait_for(&format!("Envoy's {HELLO_CLUSTER} to have {n} host(s)"), async || {
            let clusters = self.envoy.clusters().await;
            let prefix = format!("{HELLO_CLUSTER}::");
            let hosts = clusters.lines().filter(|l| l.starts_with(&prefix) && l.contains("::cx_active::")).count();
            (hosts == n).then_some(())
        })
        .await;
    }

    /// An Envoy counter (0 when absent).
    async fn counter(&self, name: &str) -> u64 {
        let url = format!("http://127.0.0.1:{}/stats", self.ports.admin);
        let filter = format!("^{}$", regex_escape(name));
        let response = self.http.get(url).query(&[("filter", filter)]).send().await.expect("Envoy admin");
        let text = response.text().await.expect("Envoy admin text");
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// Requests through `cluster` that Envoy answered "no healthy upstream"
    /// itself: the filter's probes while the cluster has no endpoints.
    async fn none_healthy(&self, cluster: &str) -> u64 {
        self.counter(&format!("cluster.{cluster}.upstream_cx_none_healthy")).await
    }

    /// Waits until `counter` grows past `from` (the filter heard "ready" and probes).
    async fn wait_counter_above(&self, counter: &str, from: u64) -> u64 {
        wait_for(&format!("{counter} to grow past {from}"), async || {
            let now = self.counter(counter).await;
            (now > from).then_some(now)
        })
        .await
    }

    async fn activations(&self, revision: &str) -> u64 {
        self.revgate.activity(revision).await.and_then(|a| a.get("activations")?.as_u64()).unwrap_or(0)
    }

    /// Sends `n` concurrent requests for `host` and waits until the filter
    /// reports them all held and asked for a new activation.
    async fn hold(&self, host: &str, revision: &str, n: usize) -> Vec<tokio::task::JoinHandle<Reply>> {
        // Reports of an earlier hold must not count for this one.
        wait_for(&format!("no request for {revision} reported held"), async || {
            let held = self.revgate.activity(revision).await.and_then(|a| a.get("held")?.as_u64()).unwrap_or(0);
            (held == 0).then_some(())
        })
        .await;
        let before = self.activations(revision).await;
        let requests: Vec<_> = (0..n)
            .map(|_| {
                let client = self.envoy.client();
                let host = host.to_owned();
                tokio::spawn(async move { client.get(&host, "/").await })
            })
            .collect();
        wait_for(&format!("{n} requests for {revision} held and activated"), async || {
            let activity = self.revgate.activity(revision).await?;
            let held = activity.get("held")?.as_u64()?;
            let activated = activity.get("activations")?.as_u64()?;
            (held >= n as u64 && activated > before).then_some(())
        })
        .await;
        assert!(requests.iter().all(|r| !r.is_finished()), "nothing is answered while {revision} is cold");
        requests
    }
}

fn regex_escape(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_string() } else { format!("\\{c}") }).collect()
}

async fn replies(requests: Vec<tokio::task::JoinHandle<Reply>>) -> Vec<Reply> {
    let mut replies = Vec::new();
    for request in requests {
        replies.push(request.await.expect("request task"));
    }
    replies
}

/// Counts replies by status and body.
fn tally(replies: &[Reply]) -> std::collections::BTreeMap<(u16, String), usize> {
    let mut counts = std::collections::BTreeMap::new();
    for reply in replies {
        *counts.entry((reply.status, reply.body.trim().to_owned())).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_wait_for_the_gateways_own_endpoints_not_the_control_planes_word() {
    let mut s = Setup::start(PROBE_GATE, 300).await;
    let backend = Backend::start("hello-backend").await;
    const HELD: usize = 50;
    for cycle in 1..=3u64 {
        if cycle > 1 {
            // Scale to zero: every filter VM hears "cold" (the call returns
            // once they did), then the gateway loses the endpoint.
            s.revgate.set_endpoints(HELLO_REVISION, &[]).await;
            s.eds.set(&[]);
            s.wait_envoy_hosts(0).await;
        }
        let requests = s.hold(HELLO_HOST, HELLO_REVISION, HELD).await;

        // The pod is ready and the control plane says so; the gateway has no
        // endpoint yet. The filter hears "ready" and starts probing.
        let none_healthy = format!("cluster.{HELLO_CLUSTER}.upstream_cx_none_healthy");
        let before = s.counter(&none_healthy).await;
        let ready_at = Instant::now();
        s.revgate.set_endpoints(HELLO_REVISION, &[backend.addr]).await;
        s.wait_counter_above(&none_healthy, before).await;
        tokio::time::sleep(ENDPOINTS_LAG).await;
        let probes_refused = s.none_healthy(HELLO_CLUSTER).await - before;
        assert!(
            requests.iter().all(|r| !r.is_finished()),
            "cycle {cycle}: a request was released before the gateway had an endpoint"
        );

        // istiod's push arrives.
        let served_before = backend.served.load(std::sync::atomic::Ordering::SeqCst);
        s.eds.set(&[backend.addr]);
        let pushed_at = Instant::now();
        let replies = replies(requests).await;
        let drained = pushed_at.elapsed();
        let counts = tally(&replies);
        assert_eq!(
            counts,
            [((200, "hello-backend".to_owned()), HELD)].into(),
            "cycle {cycle}: every held request is answered by the revision"
        );
        let probes_answered = backend.served.load(std::sync::atomic::Ordering::SeqCst) - served_before - HELD as u64;
        println!(
            "cycle {cycle}: control plane said ready {:.0} ms before the gateway got the endpoint; meanwhile \
             {probes_refused} probes met \"no healthy upstream\" and no request left; {HELD} held requests \
             answered 200 within {:.0} ms of the EDS push ({probes_answered} probe(s) reached the app)",
            (pushed_at - ready_at).as_secs_f64() * 1e3,
            drained.as_secs_f64() * 1e3,
        );
        assert!(probes_answered >= 1, "a probe reached the app before the release");

        // Warm: answered at once.
        let reply = s.envoy.client().get(HELLO_HOST, "/").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "hello-backend"), "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_wait_until_the_revisions_pod_answers() {
    let s = Setup::start(PROBE_GATE, 300).await;
    // Ready in the control plane's view, and the gateway routes to the pod,
    // but nothing listens there yet (a sidecar not yet forwarding, say).
    let pod: std::net::SocketAddr = format!("127.0.0.1:{}", s.ports.world).parse().expect("address");
    let requests = s.hold(WORLD_HOST, WORLD_REVISION, 20).await;
    let connect_fail = format!("cluster.{WORLD_CLUSTER}.upstream_cx_connect_fail");
    let before = s.counter(&connect_fail).await;
    s.revgate.set_endpoints(WORLD_REVISION, &[pod]).await;
    s.wait_counter_above(&connect_fail, before).await;
    tokio::time::sleep(ENDPOINTS_LAG).await;
    let failed = s.counter(&connect_fail).await - before;
    assert!(requests.iter().all(|r| !r.is_finished()), "released before the pod listened");

    let _pod = Backend::start_on(pod, "world-backend").await;
    let listening = Instant::now();
    let replies = replies(requests).await;
    assert_eq!(tally(&replies), [((200, "world-backend".to_owned()), 20)].into());
    println!(
        "{failed} probes met a refused connection while the pod did not listen; 20 held requests answered 200 \
         within {:.0} ms of it listening",
        listening.elapsed().as_secs_f64() * 1e3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_filter_without_the_probe_gate_times_out_rather_than_meet_no_healthy_upstream() {
    // Misconfigured: the filter trusts the control plane's word alone, as
    // behind revgate's own xDS. revgate counts only endpoints this Envoy
    // ACKed, and it ACKs nothing to revgate, so the revision stays cold here:
    // held requests end at the revision's timeout (1 s), with revgate's 503.
    let s = Setup::start("", 1).await;
    let backend = Backend::start("hello-backend").await;
    s.revgate.set_endpoints(HELLO_REVISION, &[backend.addr]).await;
    let started = Instant::now();
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let client = s.envoy.client();
            tokio::spawn(async move { client.get(HELLO_HOST, "/").await })
        })
        .collect();
    let replies = replies(requests).await;
    for reply in &replies {
        assert_eq!((reply.status, reply.reason.as_deref()), (503, Some("activation-timeout")), "{reply:?}");
    }
    assert!(started.elapsed() >= Duration::from_secs(1), "held for the revision's timeoutSeconds");
    assert!(s.activations(HELLO_REVISION).await >= 1, "the Istio cluster name was read as the revision");
    assert_eq!(backend.served.load(std::sync::atomic::Ordering::SeqCst), 0);
}
