//! End to end: a Knative DomainMapping (`serving.knative.dev/v1beta1`)
//! through `revgate serve` and a real Envoy. The mapped domain answers with
//! its Service's revision, which sees the host rewritten to the Service's
//! address and the domain in `K-Original-Host`, as behind Knative's mapping
//! Ingress; a missing reference and a domain claimed in another namespace
//! show Knative's conditions in `revgate get domainmapping`, and mappings
//! survive a restart.

mod support;

use std::net::SocketAddr;

use serde_json::Value;
use support::{Envoy, Revgate, stderr, stdout, wait_for};

/// A backend that answers with its name and the headers a mapped request
/// arrives with.
struct Echo {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    async fn start(name: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a backend");
        let addr = listener.local_addr().expect("backend address");
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| async move {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            format!("{name} host={} original={}", header("host"), header("k-original-host"))
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, task }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Service `name` in `namespace`, its revisions on `backend`.
fn service(name: &str, namespace: &str, backend: &Echo) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  template:\n    metadata:\n      annotations:\n        revgate.dev/endpoints: \"{}\"\n    spec:\n      containers:\n      - image: example.com/{name}:v1\n",
        backend.addr
    )
}

fn mapping(domain: &str, namespace: &str, service: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1beta1\nkind: DomainMapping\nmetadata:\n  name: {domain}\n  namespace: {namespace}\nspec:\n  ref:\n    apiVersion: serving.knative.dev/v1\n    kind: Service\n    name: {service}\n"
    )
}

/// `(status, reason)` of a mapping's condition, as `get dm -o json` shows it.
fn condition(revgate: &Revgate, namespace: &str, domain: &str, type_: &str) -> (String, String) {
    let out = revgate.cli(&["get", "dm", domain, "-n", namespace, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mappings: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let found = mappings[0]["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or_else(|| panic!("no {type_} condition: {mappings:#}"));
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&found["status"]), text(&found["reason"]))
}

/// The row of `domain` in `get dm -A`, split on whitespace.
fn table_row(revgate: &Revgate, namespace: &str, domain: &str) -> Vec<String> {
    let out = revgate.cli(&["get", "domainmapping", "-A"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    table
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cells| {
            cells.first().map(String::as_str) == Some(namespace) && cells.get(1).map(String::as_str) == Some(domain)
        })
        .unwrap_or_else(|| panic!("no row for {namespace}/{domain} in:\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_mapping_serves_its_domain_and_reports_knatives_conditions() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let hello = Echo::start("hello").await;
    let other = Echo::start("other").await;
    let mut revgate = Revgate::start(&dir.path().join("state"), support::free_port()).await;
    let envoy = Envoy::start_ads(dir.path(), &revgate, false).await;

    // The domain answers with the Service's revision, host rewritten as Knative does.
    let applied = revgate.apply(&format!(
        "{}---\n{}",
        service("hello", "default", &hello),
        mapping("example.org", "default", "hello")
    ));
    assert!(applied.contains("domainmapping.serving.knative.dev/example.org created"), "{applied}");
    revgate.wait_acked(&envoy.node_id).await;
    envoy.wait_body("example.org", &[], "hello host=hello.default.svc.cluster.local original=example.org").await;
    envoy.wait_body("hello.default.example.com", &[], "hello host=hello.default.example.com original=-").await;
    wait_for("example.org to be Ready", async || {
        (condition(&revgate, "default", "example.org", "Ready").0 == "True").then_some(())
    })
    .await;
    assert_eq!(table_row(&revgate, "default", "example.org"), ["default", "example.org", "http://example.org", "True"]);

    // A reference to a Service that does not exist: ResolveFailed, nothing served …
    revgate.apply(&mapping("later.example.org", "default", "later"));
    assert_eq!(
        condition(&revgate, "default", "later.example.org", "ReferenceResolved"),
        ("False".into(), "ResolveFailed".into())
    );
    assert_eq!(
        table_row(&revgate, "default", "later.example.org"),
        ["default", "later.example.org", "http://later.example.org", "False", "ResolveFailed"]
    );
    revgate.wait_acked(&envoy.node_id).await;
    assert_eq!(envoy.get("later.example.org", &[]).await.0, 404, "an unresolved mapping serves nothing");
    // … until the Service appears.
    revgate.apply(&service("later", "default", &other));
    envoy
        .wait_body("later.example.org", &[], "other host=later.default.svc.cluster.local original=later.example.org")
        .await;

    // The same domain mapped from another namespace: refused as Knative
    // refuses it; the first mapping keeps serving.
    let applied = revgate.apply(&format!(
        "{}---\n{}",
        service("hello", "other", &other),
        mapping("example.org", "other", "hello")
    ));
    assert!(applied.contains("domainmapping.serving.knative.dev/example.org created"), "{applied}");
    assert_eq!(
        condition(&revgate, "other", "example.org", "DomainClaimed"),
        ("False".into(), "DomainAlreadyClaimed".into())
    );
    assert_eq!(
        table_row(&revgate, "other", "example.org"),
        ["other", "example.org", "http://example.org", "False", "DomainAlreadyClaimed"]
    );
    revgate.wait_acked(&envoy.node_id).await;
    let counts = envoy.tally("example.org", 20).await;
    assert_eq!(
        counts.get("hello host=hello.default.svc.cluster.local original=example.org"),
        Some(&20),
        "the first mapping keeps the domain: {counts:?}"
    );

    // Stored like every object: a restart keeps mappings and claims.
    revgate.restart().await;
    assert_eq!(condition(&revgate, "other", "example.org", "DomainClaimed").1, "DomainAlreadyClaimed");
    revgate.wait_acked(&envoy.node_id).await;
    envoy.wait_body("example.org", &[], "hello host=hello.default.svc.cluster.local original=example.org").await;

    // Deleted, the holder's claim passes to the other namespace's mapping.
    let file = revgate.write_manifest(&mapping("example.org", "default", "hello"));
    let out = revgate.cli(&["delete", "-f", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("domainmapping.serving.knative.dev/example.org deleted"), "{}", stdout(&out));
    envoy.wait_body("example.org", &[], "other host=hello.other.svc.cluster.local original=example.org").await;
    assert_eq!(condition(&revgate, "other", "example.org", "DomainClaimed").0, "True");
}
