//! End to end: `revgate serve` programs a real Envoy over ADS (state of the
//! world and delta), and users see routing, splits, tags, changes, deletes,
//! rejected configuration and restarts behave as they would expect.

mod support;

use std::time::Instant;

use support::{Backend, Envoy, Revgate, stdout, wait_for};

/// Both versions in one file, applied in order as `kubectl apply -f` does:
/// two revisions.
fn two_revisions(a: &Backend, b: &Backend, percent_a: u32) -> String {
    format!("{}---\n{}", support::hello_on(a), support::hello_split(b, percent_a, "hello-00002"))
}

const HOST: &str = "hello.default.example.com";
const CANARY_HOST: &str = "canary-hello.default.example.com";

/// Fields drop in order: the processes go before the directory holding their logs.
struct Setup {
    a: Backend,
    b: Backend,
    revgate: Revgate,
    envoy: Envoy,
    _dir: tempfile::TempDir,
}

async fn setup(delta: bool) -> Setup {
    let dir = tempfile::tempdir().expect("temporary directory");
    let a = Backend::start("hello-a").await;
    let b = Backend::start("hello-b").await;
    let revgate = Revgate::start(&dir.path().join("state"), support::free_port()).await;
    let envoy = Envoy::start_ads(dir.path(), &revgate, delta).await;
    Setup { _dir: dir, a, b, revgate, envoy }
}

async fn split_90_10_and_tags(delta: bool) {
    let s = setup(delta).await;
    let applied = s.revgate.apply(&two_revisions(&s.a, &s.b, 90));
    assert!(applied.contains("service.serving.knative.dev/hello created"), "{applied}");
    s.revgate.wait_acked(&s.envoy.node_id).await;
    s.envoy.wait_body(CANARY_HOST, &[], "hello-b").await;

    let counts = s.envoy.tally(HOST, 2000).await;
    let to_a = counts.get("hello-a").copied().unwrap_or(0);
    let to_b = counts.get("hello-b").copied().unwrap_or(0);
    assert_eq!(to_a + to_b, 2000, "every request answered 200 by a revision: {counts:?}");
    let share_a = to_a as f64 / 20.0;
    println!("90/10 split over 2000 requests ({}): {share_a:.1}% / {:.1}%", api(delta), 100.0 - share_a);
    assert!((87.0..=93.0).contains(&share_a), "90/10 split landed at {share_a}% for hello-00001");

    // The tag host always reaches the tagged revision.
    let canary = s.envoy.tally(CANARY_HOST, 50).await;
    assert_eq!(canary.get("hello-b"), Some(&50), "tag host answers: {canary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10_and_tag_host_over_sotw() {
    split_90_10_and_tags(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10_and_tag_host_over_delta() {
    split_90_10_and_tags(true).await;
}

fn api(delta: bool) -> &'static str {
    if delta { "delta xDS" } else { "SotW xDS" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_header_routing_follows_config_features() {
    let s = setup(true).await;
    s.revgate.apply(&two_revisions(&s.a, &s.b, 90));
    s.revgate.wait_acked(&s.envoy.node_id).await;
    s.envoy.wait_body(CANARY_HOST, &[], "hello-b").await;

    // Disabled (Knative's default): the header does not pin the revision.
    let mut pinned = 0;
    for _ in 0..100 {
        let (status, body) = s.envoy.get(HOST, &[("Knative-Serving-Tag", "canary")]).await;
        assert_eq!(status, 200);
        pinned += usize::from(body == "hello-b");
    }
    assert!(pinned < 100, "the tag header must be ignored while tag-header-based-routing is disabled");

    s.revgate.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-features\n  namespace: knative-serving\ndata:\n  tag-header-based-routing: Enabled\n",
    );
    s.revgate.wait_acked(&s.envoy.node_id).await;
    for _ in 0..100 {
        assert_eq!(s.envoy.get(HOST, &[("Knative-Serving-Tag", "canary")]).await, (200, "hello-b".to_owned()));
    }
    // An unknown tag falls back to the percentage split.
    let (status, _) = s.envoy.get(HOST, &[("Knative-Serving-Tag", "nope")]).await;
    assert_eq!(status, 200);
}

async fn route_change_converges(delta: bool) {
    let s = setup(delta).await;
    s.revgate.apply(&two_revisions(&s.a, &s.b, 100));
    s.revgate.wait_acked(&s.envoy.node_id).await;
    s.envoy.wait_body(HOST, &[], "hello-a").await;
    let before = s.revgate.gateway().await;

    let started = Instant::now();
    s.revgate.apply(&support::hello_split(&s.b, 0, "hello-00002"));
    let versions = s.revgate.wait_acked(&s.envoy.node_id).await;
    let to_ack = started.elapsed();
    assert_ne!(
        Some(&versions["RDS"]),
        before.pointer("/published/versions/RDS").and_then(|v| v.as_str()).map(ToOwned::to_owned).as_ref()
    );
    println!("route change, apply to Envoy ACK ({}): {:.1} ms", api(delta), to_ack.as_secs_f64() * 1e3);

    // Once ACKed, every request goes to the new target.
    let counts = s.envoy.tally(HOST, 200).await;
    assert_eq!(counts.get("hello-b"), Some(&200), "after the change: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_change_converges_over_sotw() {
    route_change_converges(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_change_converges_over_delta() {
    route_change_converges(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_service_removes_its_routes_and_clusters() {
    let s = setup(true).await;
    s.revgate.apply(&two_revisions(&s.a, &s.b, 90));
    s.revgate.wait_acked(&s.envoy.node_id).await;
    s.envoy.wait_body(CANARY_HOST, &[], "hello-b").await;
    assert!(s.envoy.clusters().await.contains("rev|default|hello-00001"));

    // Any manifest naming the Service deletes it, with its revisions.
    let file = s.revgate.write_manifest(&support::hello_on(&s.a));
    let out = s.revgate.cli(&["delete", "-f", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(stdout(&out).contains("service.serving.knative.dev/hello deleted"), "{}", stdout(&out));
    s.revgate.wait_acked(&s.envoy.node_id).await;

    assert_eq!(s.envoy.get(HOST, &[]).await.0, 404);
    assert_eq!(s.envoy.get(CANARY_HOST, &[]).await.0, 404);
    let clusters = s.envoy.clusters().await;
    assert!(!clusters.contains("rev|default|hello-0000"), "revision clusters left behind:\n{clusters}");
    let out = s.revgate.cli(&["get", "ksvc", "hello"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_update_keeps_the_last_good_config_and_shows_in_status() {
    let s = setup(false).await;
    s.revgate.apply(&two_revisions(&s.a, &s.b, 100));
    s.revgate.wait_acked(&s.envoy.node_id).await;
    s.envoy.wait_body(HOST, &[], "hello-a").await;

    // Arm the fault, then move all traffic to the second revision: the gateway
    // rejects the new route configuration.
    let http = reqwest::Client::new();
    let armed = http
        .put(format!("{}/v1/debug/fault", s.revgate.server()))
        .json(&serde_json::json!({"fault": "duplicate-domain"}))
        .send()
        .await
        .expect("admin API");
    assert!(armed.status().is_success());
    s.revgate.apply(&support::hello_split(&s.b, 0, "hello-00002"));
    let node = s.envoy.node_id.clone();
    let message = wait_for("the gateway to NACK", async || {
        let view = s.revgate.gateway().await;
        view.pointer(&format!("/status/nodes/{node}/types/RDS/nack/message"))?.as_str().map(ToOwned::to_owned)
    })
    .await;
    assert!(message.contains("fault.invalid"), "Envoy's own error text is kept: {message}");

    // Envoy keeps serving the last good configuration.
    let counts = s.envoy.tally(HOST, 100).await;
    assert_eq!(counts.get("hello-a"), Some(&100), "last good config still served: {counts:?}");

    // `revgate get` shows the rejection.
    let route = stdout(&s.revgate.cli(&["get", "route", "hello"]));
    assert!(route.contains("False"), "{route}");
    let yaml = stdout(&s.revgate.cli(&["get", "route", "hello", "-o", "yaml"]));
    assert!(yaml.contains("fault.invalid"), "the route's status carries Envoy's error:\n{yaml}");
    let gateway = stdout(&s.revgate.cli(&["get", "gateway"]));
    assert!(gateway.contains("NACK") && gateway.contains(&node), "{gateway}");

    // Clearing the fault lets the next snapshot through.
    http.put(format!("{}/v1/debug/fault", s.revgate.server()))
        .json(&serde_json::json!({"fault": null}))
        .send()
        .await
        .expect("admin API");
    s.revgate.wait_acked(&node).await;
    s.envoy.wait_body(HOST, &[], "hello-b").await;
    let route = stdout(&s.revgate.cli(&["get", "route", "hello"]));
    assert!(route.contains("True"), "{route}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_control_plane_keeps_state_and_envoy_keeps_serving() {
    let mut s = setup(true).await;
    s.revgate.apply(&two_revisions(&s.a, &s.b, 100));
    s.revgate.wait_acked(&s.envoy.node_id).await;
    s.envoy.wait_body(HOST, &[], "hello-a").await;

    s.revgate.process.kill();
    let counts = s.envoy.tally(HOST, 100).await;
    assert_eq!(counts.get("hello-a"), Some(&100), "Envoy serves while the control plane is down: {counts:?}");

    let (state, admin, xds, http_port) =
        (s.revgate.state_dir.clone(), s.revgate.admin_addr, s.revgate.xds_addr, s.revgate.http_port);
    s.revgate = Revgate::start_on(&state, http_port, admin, xds).await;
    let revisions = stdout(&s.revgate.cli(&["get", "revisions"]));
    assert!(revisions.contains("hello-00001") && revisions.contains("hello-00002"), "{revisions}");
    let ksvc = stdout(&s.revgate.cli(&["get", "ksvc", "hello"]));
    assert!(ksvc.contains("http://hello.default.example.com"), "{ksvc}");

    // Envoy reconnects by itself and takes changes made after the restart.
    s.revgate.wait_acked(&s.envoy.node_id).await;
    let unchanged = s.revgate.apply(&support::hello_split(&s.b, 100, "hello-00002"));
    assert!(
        unchanged.contains("unchanged") && !unchanged.contains("hello-00003"),
        "re-applying creates no revision: {unchanged}"
    );
    s.revgate.apply(&support::hello_split(&s.b, 0, "hello-00002"));
    s.revgate.wait_acked(&s.envoy.node_id).await;
    s.envoy.wait_body(HOST, &[], "hello-b").await;
}
