//! End to end: revision garbage collection in `revgate serve` with a real
//! Envoy. With `config-gc` retaining revisions only a second after they
//! leave the traffic, every new version of a Service collects the one
//! before it — its Envoy cluster goes — while a revision a tag still routes
//! and one marked `serving.knative.dev/no-gc` stay; the routing states
//! survive a restart.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::{Backend, Envoy, Revgate, wait_for};

const HOST: &str = "hello.default.example.com";
const PINNED_HOST: &str = "pinned-hello.default.example.com";

/// Collect a revision one second after it stops being routed, however many.
const CONFIG_GC: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: config-gc
  namespace: knative-serving
data:
  retain-since-create-time: "disabled"
  retain-since-last-active-time: "1s"
  min-non-active-revisions: "0"
  max-non-active-revisions: "disabled"
"#;

/// Version `n` of `hello`, on `backend`. From version 2 on, the tag
/// `pinned` keeps routing `hello-00001`; version 2 is marked `no-gc`.
fn version(backend: &Backend, n: u32) -> String {
    let no_gc = if n == 2 { "\n        serving.knative.dev/no-gc: \"true\"" } else { "" };
    let traffic = if n >= 2 {
        "  traffic:\n  - latestRevision: true\n    percent: 100\n  - revisionName: hello-00001\n    tag: pinned\n    percent: 0\n"
    } else {
        ""
    };
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
spec:
  template:
    metadata:
      annotations:
        revgate.dev/endpoints: "{endpoint}"{no_gc}
    spec:
      containers:
      - image: example.com/hello:v{n}
{traffic}"#,
        endpoint = backend.endpoint()
    )
}

/// The revisions with an Envoy cluster (`rev|default|<revision>`).
async fn envoy_revisions(envoy: &Envoy) -> BTreeSet<String> {
    envoy
        .clusters()
        .await
        .lines()
        .filter_map(|line| line.strip_prefix("rev|default|"))
        .filter_map(|rest| rest.split("::").next())
        .map(str::to_owned)
        .collect()
}

/// The revisions revgate holds, with their routing state label.
async fn revisions(revgate: &Revgate) -> Vec<(String, String)> {
    let list = revgate.get_json("/v1/revisions").await;
    let items = list.get("items").and_then(Value::as_array).or_else(|| list.as_array()).cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|r| {
            let meta = r.get("metadata")?;
            let name = meta.get("name")?.as_str()?.to_owned();
            let state = meta
                .pointer("/labels/serving.knative.dev~1routingState")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            Some((name, state))
        })
        .collect()
}

fn names(expected: &[&str]) -> BTreeSet<String> {
    expected.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_revisions_are_collected_and_envoy_clusters_stay_bounded() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let backend = Backend::start("hello").await;
    let mut revgate = Revgate::start(&dir.path().join("state"), support::free_port()).await;
    let envoy = Envoy::start_ads(dir.path(), &revgate, false).await;

    revgate.apply(CONFIG_GC);
    revgate.apply(&version(&backend, 1));
    revgate.apply(&version(&backend, 2));
    let mut most = 0;
    for n in 3..=6 {
        revgate.apply(&version(&backend, n));
        // The previous version leaves the traffic and, a second later, the gateway.
        let want = names(&["hello-00001", "hello-00002", &format!("hello-{n:05}")]);
        let seen = wait_for(&format!("Envoy's clusters to be {want:?}"), async || {
            let seen = envoy_revisions(&envoy).await;
            most = most.max(seen.len());
            (seen == want).then_some(seen)
        })
        .await;
        assert_eq!(seen, want);
    }
    assert!(most <= 4, "at most the kept revisions and one on its way out had clusters; saw {most}");
    envoy.wait_body(HOST, &[], "hello").await;
    envoy.wait_body(PINNED_HOST, &[], "hello").await;

    let states = revisions(&revgate).await;
    assert_eq!(
        states,
        [
            ("hello-00001".to_owned(), "active".to_owned()),
            ("hello-00002".to_owned(), "reserve".to_owned()),
            ("hello-00006".to_owned(), "active".to_owned()),
        ],
        "the tagged revision and the no-gc one stay; their routing state as Knative labels it"
    );

    // The routing states are stored with the revisions: after a restart, a
    // revision the tag stops routing is collected as before.
    revgate.restart().await;
    assert_eq!(revisions(&revgate).await, states, "routing states survive a restart");
    revgate.apply(&version(&backend, 6).replace("revisionName: hello-00001", "revisionName: hello-00006"));
    let want = names(&["hello-00002", "hello-00006"]);
    wait_for(&format!("Envoy's clusters to be {want:?}"), async || {
        (envoy_revisions(&envoy).await == want).then_some(())
    })
    .await;
}
