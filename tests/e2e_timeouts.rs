//! End to end: Knative's three timeouts, per revision, through a real Envoy
//! 1.40 (`--concurrency 2`) running revgate's filter, programmed by
//! `revgate serve`. A revision that does not start its response within
//! `responseStartTimeoutSeconds` is answered 504 `response-start-timeout`;
//! a stream that stalls longer than `idleTimeoutSeconds` is cut; in a split
//! of revisions with different `timeoutSeconds`, each request gets the
//! timeout of the revision that serves it, not the longest of the split.
//!
//! Timeouts are a few seconds, so each test takes seconds; backends delay or
//! stall per request (`?sleep=MS`, `?stall=MS`).

#[path = "support/mesh.rs"]
mod mesh;
mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::StreamExt;
use serde_json::json;
use support::{Backend, Envoy, Gateway, Revgate};

/// A Service `name` with a first revision `<name>-00001` whose template sets `spec`.
fn service(name: &str, spec: &str) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    spec:
{spec}      containers:
      - image: example.com/{name}:v1
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_does_not_start_its_response_in_time_gets_504_naming_the_limit() {
    let spec = "      timeoutSeconds: 30\n      responseStartTimeoutSeconds: 1\n";
    let s = Gateway::start(&service("slow", spec), "{}").await;
    let backend = Backend::start("slow-backend").await;
    s.endpoints("slow-00001", &[backend.addr]).await;
    let client = s.envoy.client();

    let reply = client.get("slow.default.example.com", "/?sleep=200").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "slow-backend"), "a prompt response passes: {reply:?}");

    let reply = client.get("slow.default.example.com", "/?sleep=10000").await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.reason.as_deref(), Some("response-start-timeout"), "{reply:?}");
    assert_eq!(
        reply.body,
        "revgate: revision default/slow-00001 did not start its response within 1 s \
         (limit responseStartTimeoutSeconds of the revision)\n"
    );
}

/// A backend whose response starts at once, sends `first\n`, then stalls
/// `?stall=MS` before `rest\n`; or answers only after `?sleep=MS`.
struct Stalling {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Stalling {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a backend");
        let addr = listener.local_addr().expect("backend address");
        let app = axum::Router::new().fallback(|query: axum::extract::RawQuery| async move {
            let param = |name: &str| {
                query.0.as_deref().and_then(|q| {
                    q.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
                })
            };
            if let Some(sleep) = param("sleep") {
                tokio::time::sleep(Duration::from_millis(sleep)).await;
            }
            let stall = Duration::from_millis(param("stall").unwrap_or(0));
            let chunks = futures::stream::iter([("first\n", Duration::ZERO), ("rest\n", stall)]).then(
                |(chunk, wait)| async move {
                    tokio::time::sleep(wait).await;
                    Ok::<_, Infallible>(Bytes::from_static(chunk.as_bytes()))
                },
            );
            Body::from_stream(chunks)
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, task }
    }
}

impl Drop for Stalling {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a streamed GET got: status, the body bytes that arrived, and
/// whether the stream ended cleanly.
async fn stream(port: u16, host: &str, path: &str) -> (u16, Option<String>, String, bool) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client");
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .send()
        .await
        .expect("a response through the gateway");
    let status = response.status().as_u16();
    let reason = response.headers().get("x-revgate-reason").and_then(|v| v.to_str().ok()).map(ToOwned::to_owned);
    let mut response = response;
    let mut body = String::new();
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => body.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(None) => return (status, reason, body, true),
            Err(_) => return (status, reason, body, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_is_cut_after_idle_timeout_seconds() {
    let spec = "      timeoutSeconds: 30\n      idleTimeoutSeconds: 1\n";
    let s = Gateway::start(&service("stall", spec), "{}").await;
    let backend = Stalling::start().await;
    s.endpoints("stall-00001", &[backend.addr]).await;
    let (port, host) = (s.envoy.http_port, "stall.default.example.com");

    // Bytes no further apart than the limit: the whole response.
    assert_eq!(stream(port, host, "/?stall=300").await, (200, None, "first\nrest\n".to_owned(), true));

    // A response that started, then stalls for 20 s: cut after about 1 s,
    // with what came before the stall delivered.
    let (status, _, body, clean) = stream(port, host, "/?stall=20000").await;
    assert_eq!((status, body.as_str(), clean), (200, "first\n", false), "the stalled stream is cut, not finished");

    // No byte at all within the limit: answered 504 naming it.
    let (status, reason, body, _) = stream(port, host, "/?sleep=20000").await;
    assert_eq!((status, reason.as_deref()), (504, Some("idle-timeout")), "{body}");
    assert!(body.contains("default/stall-00001") && body.contains("idleTimeoutSeconds"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_split_each_revision_has_its_own_timeout_seconds() {
    // Two revisions of one Service: `split-00001` with timeoutSeconds 1,
    // `split-00002` with 5, half the traffic each.
    let s = Gateway::start(&service("split", "      timeoutSeconds: 1\n"), "{}").await;
    let second = format!(
        "{}  traffic:\n  - revisionName: split-00001\n    percent: 50\n  - revisionName: split-00002\n    percent: 50\n",
        service("split", "      timeoutSeconds: 5\n").replace(":v1", ":v2")
    );
    s.revgate.apply(&second);
    let (short, long) = (Backend::start("short").await, Backend::start("long").await);
    s.revgate.set_endpoints("split-00001", &[short.addr]).await;
    s.endpoints("split-00002", &[long.addr]).await;
    s.envoy.wait_body("split.default.example.com", &[], "long").await;

    // Every response starts after 2.5 s: past split-00001's limit, within split-00002's.
    let client = s.envoy.client();
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("split.default.example.com", "/?sleep=2500").await })
        })
        .collect();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for request in requests {
        let reply = request.await.expect("request task");
        let outcome = match (reply.status, reply.reason.as_deref()) {
            (200, None) => format!("200 {}", reply.body),
            (504, Some(reason)) if reply.body.contains("default/split-00001") => format!("504 {reason} split-00001"),
            _ => format!("unexpected {reply:?}"),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    println!("20 requests over a 50/50 split with timeoutSeconds 1 and 5: {outcomes:?}");
    let kinds: Vec<&str> = outcomes.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        ["200 long", "504 request-timeout split-00001"],
        "split-00001's requests end at its 1 s, split-00002's are served: {outcomes:?}"
    );
}

/// Istio's cluster of revgate's activation service, and of the `istio` revision.
const ISTIO_CONTROL_CLUSTER: &str = "outbound|9091||revgate.revgate-system.svc.cluster.local";
const ISTIO_REVISION_CLUSTER: &str = "outbound|80||istio-00001.default.svc.cluster.local";

/// A static Envoy shaped like an Istio ingress gateway that revgate does not
/// program: Istio's cluster names, a route without a timeout (a
/// VirtualService's default, and what revgate renders), WebSocket upgrades
/// on (as Istio's gateways have them), and revgate's filter configured as
/// the Istio manifests configure it.
fn istio_gateway(admin: u16, http: u16, activation: u16, revision: SocketAddr) -> String {
    let configuration = format!(r#"{{"control_cluster": "{ISTIO_CONTROL_CLUSTER}", "release_gate": "probe"}}"#);
    let routes = json!({"virtual_hosts": [{
        "name": "istio.default.example.com:80",
        "domains": ["istio.default.example.com", "istio.default.example.com:*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": ISTIO_REVISION_CLUSTER, "timeout": "0s"}}],
    }]});
    let filter = mesh::revgate_filter(&support::filter_wasm(), &configuration);
    let mut listener = mesh::listener("0.0.0.0_8080", http, "outbound_0.0.0.0_8080", routes, vec![filter]);
    listener["filter_chains"][0]["filters"][0]["typed_config"]["upgrade_configs"] =
        json!([{"upgrade_type": "websocket"}]);
    let activation = SocketAddr::from(([127, 0, 0, 1], activation));
    mesh::bootstrap(
        "router~10.0.0.1~istio-ingressgateway.istio-system~istio-system.svc.cluster.local",
        "istio-ingressgateway.istio-system",
        admin,
        vec![listener],
        vec![
            mesh::static_cluster(ISTIO_CONTROL_CLUSTER, activation),
            mesh::static_cluster(ISTIO_REVISION_CLUSTER, revision),
        ],
    )
}

/// In an Istio gateway the VirtualService has no timeout; the filter
/// enforces the revision's limits from the readiness view the control plane
/// sends it, with the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_istio_gateway_the_filter_enforces_the_revisions_timeouts() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (admin, http, activation) = (support::free_port(), support::free_port(), support::free_port());
    let addr = |port: u16| format!("127.0.0.1:{port}").parse().expect("address");
    let extra = ["--activation-addr".to_owned(), format!("127.0.0.1:{activation}")];
    let revgate = Revgate::start_with(
        &dir.path().join("state"),
        support::free_port(),
        addr(support::free_port()),
        addr(support::free_port()),
        &extra,
    )
    .await;
    let spec = "      timeoutSeconds: 30\n      responseStartTimeoutSeconds: 1\n      idleTimeoutSeconds: 2\n";
    revgate.apply(&service("istio", spec));
    let backend = Stalling::start().await;
    revgate.set_endpoints("istio-00001", &[backend.addr]).await;
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, istio_gateway(admin, http, activation, backend.addr)).expect("writing the bootstrap");
    let envoy = Envoy::start(dir.path(), &path, admin, http, "istio-gateway").await;
    let host = "istio.default.example.com";

    // Once the filter has the revision in its view (and a probe reached it), a prompt response passes.
    support::wait_for("the revision to answer through the Istio-style gateway", async || {
        let reply = stream(http, host, "/").await;
        (reply == (200, None, "first\nrest\n".to_owned(), true)).then_some(())
    })
    .await;
    let (status, reason, body, _) = stream(http, host, "/?sleep=20000").await;
    assert_eq!((status, reason.as_deref()), (504, Some("response-start-timeout")), "{body}");
    assert_eq!(
        body,
        "revgate: revision default/istio-00001 did not start its response within 1 s \
         (limit responseStartTimeoutSeconds of the revision)\n"
    );
    let (status, _, body, clean) = stream(http, host, "/?stall=20000").await;
    assert_eq!((status, body.as_str(), clean), (200, "first\n", false), "cut after idleTimeoutSeconds");
    drop(envoy);
    drop(revgate);
}
