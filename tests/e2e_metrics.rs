//! End to end: `revgate up` with a real Envoy, the gateway filter and the
//! example apps as local processes; what a Prometheus scraping revgate's
//! `/metrics` and Envoy's `/stats/prometheus` would see.
//!
//! Every exposition is parsed whole by the Prometheus client's own parser
//! (Python `prometheus_client`, installed by `scripts/install-tools.sh --test` into
//! `.tools/python`), not matched as strings.
//!
//! Run: `cargo test -p revgate --test e2e_metrics` (the example apps are
//! built on first use).

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use support::{GatewayClient, Revgate, Up, free_port, repo_root, wait_for};

/// `hello` starts at zero, so its first request is a cold start, and answers
/// 30% of its requests with a 500 (the example app's `FAIL_PERCENT`); `autoscale` holds each request 300 ms, so concurrent
/// clients make concurrency the KPA sees.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-autoscaler
  namespace: knative-serving
data:
  stable-window: "6s"
  allow-zero-initial-scale: "true"
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/initial-scale: "0"
    spec:
      containers:
        - image: ghcr.io/knative/helloworld-go:latest
          env:
            - name: FAIL_PERCENT
              value: "30"
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: autoscale
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
    spec:
      containers:
        - image: ghcr.io/knative/autoscale-go:latest
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: broken
  namespace: default
spec:
  template:
    spec:
      timeoutSeconds: 1
      containers:
        - image: ghcr.io/knative/no-such-image:latest
"#;

const HELLO: &str = "hello.default.example.com";
const AUTOSCALE: &str = "autoscale.default.example.com";

/// One sample of a parsed exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A whole exposition, parsed by the Prometheus client's parser: the
/// families' types by name, and every sample.
#[derive(Debug)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The samples named `name` whose labels include all of `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).iter().map(|s| s.value).sum()
    }

    /// The value of the sample named `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> =
            self.find(name, labels).into_iter().filter(|s| s.labels.len() == labels.len()).collect();
        match found.as_slice() {
            [one] => Some(one.value),
            _ => None,
        }
    }
}

/// Python's `prometheus_client` parser over stdin, printing the families as
/// JSON. `openmetrics` picks its OpenMetrics parser, which also insists on
/// the `# EOF` line.
const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
parse = openmetrics if sys.argv[1] == "openmetrics" else text
families = list(parse(sys.stdin.read()))
print(json.dumps({
    "types": {f.name: f.type for f in families},
    "samples": [[s.name, s.labels, s.value] for f in families for s in f.samples],
}))
"#;

/// Parses `text` with the Prometheus client's parser; a text it rejects
/// fails the test with the parser's message.
fn parse(text: &str, openmetrics: bool) -> Exposition {
    let python_path = repo_root().join(".tools/python");
    assert!(
        python_path.join("prometheus_client").is_dir(),
        "the Prometheus client's parser is not installed at {}: run scripts/install-tools.sh --test",
        python_path.display()
    );
    let mut child = Command::new("python3")
        .args(["-c", PARSER, if openmetrics { "openmetrics" } else { "text" }])
        .env("PYTHONPATH", &python_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed to run the Prometheus client's parser");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("writing the exposition");
    let out = child.wait_with_output().expect("the parser ran");
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the exposition:\n{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("the parser's JSON");
    let types = parsed["types"]
        .as_object()
        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default();
    let samples = parsed["samples"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| Sample {
                    name: row[0].as_str().unwrap_or_default().to_owned(),
                    labels: row[1]
                        .as_object()
                        .map(|l| {
                            l.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                        })
                        .unwrap_or_default(),
                    value: row[2].as_f64().unwrap_or(f64::NAN),
                })
                .collect()
        })
        .unwrap_or_default();
    Exposition { types, samples }
}

/// `GET url` with `accept`, returning the content type and body.
async fn get(url: &str, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (content_type, response.text().await.unwrap_or_default())
}

/// The URL `revgate up` printed after `label`.
fn printed_url(up: &Up, label: &str) -> String {
    let log = up.log();
    let after = log.split(label).nth(1).unwrap_or_else(|| panic!("revgate up printed no {label:?}:\n{log}"));
    after.split_whitespace().next().unwrap_or_default().to_owned()
}

async fn scrape(up: &Up) -> Exposition {
    let (content_type, text) = get(&printed_url(up, "Metrics: "), None).await;
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    parse(&text, false)
}

/// Sends `n` requests for `host`, one after the other; the statuses seen.
async fn send(client: &GatewayClient, host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut statuses = BTreeMap::new();
    for _ in 0..n {
        let reply = client.get(host, "/").await;
        *statuses.entry(reply.status.to_string()).or_insert(0) += 1;
    }
    statuses
}

fn revision(name: &str) -> [(&'static str, &str); 4] {
    [
        ("k8s_namespace_name", "default"),
        ("kn_service_name", name.split('-').next().unwrap_or(name)),
        ("kn_configuration_name", name.split('-').next().unwrap_or(name)),
        ("kn_revision_name", name),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_is_counted_once_by_status_code_and_the_autoscaler_gauges_follow_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let up = Up::start(dir.path(), MANIFESTS).await;
    let client = up.client();

    const N: usize = 40;
    let statuses = send(&client, HELLO, N).await;
    assert_eq!(statuses.values().sum::<usize>(), N);
    assert_eq!(statuses.get("500"), Some(&12), "FAIL_PERCENT=30 fails 12 of 40: {statuses:?}");

    // Reports arrive every second: wait until all N are counted, then the
    // split by status code must be exactly what the client saw.
    let hello = revision("hello-00001");
    let count = "kn_serving_invocation_duration_seconds_count";
    let metrics = wait_for("every request in kn_serving_invocation_duration_seconds_count", async || {
        let metrics = scrape(&up).await;
        (metrics.sum(count, &hello) as usize == N).then_some(metrics)
    })
    .await;
    assert_eq!(metrics.types.get("kn_serving_invocation_duration_seconds").map(String::as_str), Some("histogram"));
    for (code, seen) in &statuses {
        let labels: Vec<(&str, &str)> =
            hello.iter().copied().chain([("http_response_status_code", code.as_str())]).collect();
        assert_eq!(metrics.value(count, &labels), Some(*seen as f64), "status {code}: {statuses:?}");
        let inf: Vec<(&str, &str)> = labels.iter().copied().chain([("le", "+Inf")]).collect();
        assert_eq!(metrics.value("kn_serving_invocation_duration_seconds_bucket", &inf), Some(*seen as f64));
        let buckets = metrics.find("kn_serving_invocation_duration_seconds_bucket", &labels).len();
        assert_eq!(buckets, 15, "Knative's 14 latency bounds and +Inf");
    }
    assert_eq!(metrics.sum(count, &revision("autoscale-00001")), 0.0, "nothing sent there yet");
    // revgate's own: the gateway took its configuration, the instances started.
    assert!(metrics.sum("revgate_xds_acks_total", &[("node", "revgate-gateway")]) >= 5.0, "an ACK per xDS type");
    assert_eq!(metrics.sum("revgate_xds_nacks_total", &[]), 0.0);
    assert!(metrics.value("revgate_xds_snapshot_builds_total", &[]).is_some_and(|n| n >= 1.0));
    assert_eq!(metrics.value("revgate_instance_starts_total", &hello), Some(1.0), "one cold start");
    assert_eq!(metrics.value("revgate_activations_total", &hello), Some(1.0));
    assert_eq!(metrics.value("revgate_activation_duration_seconds_count", &hello), Some(1.0));
    assert!(metrics.value("revgate_request_held_duration_seconds_count", &hello).is_some_and(|n| n >= 1.0));
    assert_eq!(metrics.value("revgate_instance_crashes_total", &hello), Some(0.0));
    assert_eq!(metrics.types.get("revgate_request_held_duration_seconds").map(String::as_str), Some("histogram"));
    let autoscale_count = metrics.value("revgate_activation_duration_seconds_count", &revision("autoscale-00001"));
    assert!(autoscale_count.is_none_or(|n| n == 0.0), "min-scale 1: never cold, no cold start timed");

    // A revision that never starts: its request waits out its 1 s timeout
    // and gets the filter's own 503, counted by reason.
    let reply = client.get("broken.default.example.com", "/").await;
    assert_eq!((reply.status, reply.reason.as_deref()), (503, Some("activation-timeout")), "{}", reply.body);
    let broken = revision("broken-00001");
    let reason: Vec<(&str, &str)> = broken.iter().copied().chain([("reason", "activation-timeout")]).collect();
    let metrics = wait_for("the filter's 503 counted by reason", async || {
        let metrics = scrape(&up).await;
        (metrics.value("revgate_gateway_replies_total", &reason) == Some(1.0)).then_some(metrics)
    })
    .await;
    let code: Vec<(&str, &str)> = broken.iter().copied().chain([("http_response_status_code", "503")]).collect();
    assert_eq!(metrics.value(count, &code), Some(1.0));
    let held = metrics.value("revgate_request_held_duration_seconds_sum", &broken).unwrap_or_default();
    assert!(held >= 1.0, "held for its whole timeout: {held}");

    // The OpenMetrics form parses under the stricter OpenMetrics parser.
    let (content_type, text) =
        get(&printed_url(&up, "Metrics: "), Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")).await;
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let open = parse(&text, true);
    assert_eq!(open.sum("kn_serving_invocation_duration_seconds_count", &hello) as usize, N);

    // Load on autoscale: the gateway and KPA gauges rise, then fall back
    // once it stops.
    let autoscale = revision("autoscale-00001");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    client.get(AUTOSCALE, "/?sleep=300").await;
                }
            })
        })
        .collect();
    wait_for("the gauges to show the load", async || {
        let m = scrape(&up).await;
        let loaded = m.value("kn_revision_request_active", &autoscale).is_some_and(|v| v > 0.0)
            && m.value("kn_revision_request_concurrency", &autoscale).is_some_and(|v| v > 1.0)
            && m.value("kn_revision_concurrency_panic", &autoscale).is_some_and(|v| v > 1.0)
            && m.value("kn_revision_concurrency_stable", &autoscale).is_some_and(|v| v > 0.0)
            && m.value("kn_revision_pods_count", &autoscale).is_some_and(|v| v >= 1.0)
            && m.value("kn_revision_pods_desired", &autoscale).is_some_and(|v| v >= 1.0)
            && m.value("kn_revision_pods_requested", &autoscale).is_some_and(|v| v >= 1.0);
        loaded.then_some(())
    })
    .await;
    let m = scrape(&up).await;
    assert_eq!(
        m.value("kn_revision_concurrency_target", &autoscale),
        Some(70.0),
        "Knative's default target: 100 at 70% utilization"
    );
    assert_eq!(m.value("kn_revision_rps_stable", &autoscale), None, "rps families only for rps revisions");
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("load client");
    }
    wait_for("the gauges to fall back once the load stops", async || {
        let m = scrape(&up).await;
        let idle = m.value("kn_revision_request_active", &autoscale).is_none_or(|v| v == 0.0)
            && m.value("kn_revision_concurrency_panic", &autoscale) == Some(0.0);
        idle.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_stats_name_each_revision_cluster_as_flagger_queries_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let up = Up::start(dir.path(), MANIFESTS).await;
    let client = up.client();
    const N: usize = 20;
    let statuses = send(&client, HELLO, N).await;
    assert_eq!((statuses.get("200"), statuses.get("500")), (Some(&14), Some(&6)), "{statuses:?}");

    let stats_url = printed_url(&up, "Envoy stats: ");
    let cluster = [("envoy_cluster_name", "default/hello-00001")];
    let stats = wait_for("Envoy's counts of the revision's requests", async || {
        let (_, text) = get(&stats_url, None).await;
        let stats = parse(&text, false);
        // Envoy merges histograms at its stats flush (every 5 s by default).
        let inf = [cluster[0], ("le", "+Inf")];
        let counted = stats.value("envoy_cluster_upstream_rq_total", &cluster) == Some(N as f64)
            && stats.value("envoy_cluster_upstream_rq_time_bucket", &inf) == Some(N as f64);
        counted.then_some(stats)
    })
    .await;
    // Flagger's Knative provider: success rate from `envoy_cluster_upstream_rq`
    // by response code (a counter the parser names `…_total`, as the
    // revision's total is), latency from the `upstream_rq_time` buckets.
    for (code, seen) in &statuses {
        let labels = [cluster[0], ("envoy_response_code", code.as_str())];
        assert_eq!(stats.value("envoy_cluster_upstream_rq_total", &labels), Some(*seen as f64), "code {code}");
    }
    let inf = [cluster[0], ("le", "+Inf")];
    assert_eq!(stats.value("envoy_cluster_upstream_rq_time_bucket", &inf), Some(N as f64));
    assert!(
        !stats.samples.iter().any(|s| s.labels.get("envoy_cluster_name").is_some_and(|c| c.starts_with("rev|"))),
        "no revision cluster is named by its xDS name"
    );

    // A revision that served nothing has no traffic statistics yet: Envoy
    // creates them on first use. Its first request brings them, under its
    // stat name.
    let autoscale = [("envoy_cluster_name", "default/autoscale-00001")];
    assert_eq!(stats.value("envoy_cluster_upstream_rq_total", &autoscale), None);
    assert_eq!(send(&client, AUTOSCALE, 1).await.get("200"), Some(&1));
    wait_for("the other revision's first request in Envoy's statistics", async || {
        let (_, text) = get(&stats_url, None).await;
        (parse(&text, false).value("envoy_cluster_upstream_rq_total", &autoscale) == Some(1.0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_admin_token_beyond_loopback_unless_served_on_their_own_address() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let admin_port = free_port();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let extra = [
        "--activation-addr".to_owned(),
        format!("127.0.0.1:{}", free_port()),
        "--metrics-addr".to_owned(),
        metrics_addr.clone(),
    ];
    let admin = format!("0.0.0.0:{admin_port}").parse().expect("address");
    let xds = format!("127.0.0.1:{}", free_port()).parse().expect("address");
    let _revgate = Revgate::start_with(&state, free_port(), admin, xds, &extra).await;

    let http = reqwest::Client::new();
    let on_admin = format!("http://127.0.0.1:{admin_port}/metrics");
    let refused = http.get(&on_admin).send().await.expect("admin API");
    assert_eq!(refused.status().as_u16(), 401);
    assert!(refused.text().await.unwrap_or_default().contains("Authorization: Bearer"), "the answer names the token");
    let token = std::fs::read_to_string(state.join("admin-token")).expect("the admin token");
    let with_token = http.get(&on_admin).bearer_auth(token.trim()).send().await.expect("admin API");
    assert_eq!(with_token.status().as_u16(), 200);
    parse(&with_token.text().await.unwrap_or_default(), false);

    // Its own listener: no token, and nothing but /metrics.
    let (_, text) = get(&format!("http://{metrics_addr}/metrics"), None).await;
    let metrics = parse(&text, false);
    assert_eq!(metrics.types.get("kn_serving_invocation_duration_seconds").map(String::as_str), Some("histogram"));
    let other = http.get(format!("http://{metrics_addr}/v1/services")).send().await.expect("metrics endpoint");
    assert_eq!(other.status().as_u16(), 404);
}
