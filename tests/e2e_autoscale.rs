//! End to end: `revgate up` runs the example autoscale app as local processes
//! behind a real Envoy with the gateway filter, and Knative's KPA scales it
//! from zero, up under load, down, and back to zero. Windows are shortened
//! with the same `config-autoscaler` keys a Knative user would set.
//!
//! Run: `cargo test -p revgate --test e2e_autoscale -- --nocapture` (the
//! figures are printed; they are reported, never asserted, except where the
//! behaviour itself is about time).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::{GatewayClient, Up, alive, wait_for};

/// Knative's smallest stable window and scale-to-zero grace period.
const CONFIG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-autoscaler
  namespace: knative-serving
data:
  stable-window: "6s"
  scale-to-zero-grace-period: "6s"
  allow-zero-initial-scale: "true"
"#;

const STABLE_WINDOW: Duration = Duration::from_secs(6);

fn service(name: &str, annotations: &[(&str, &str)]) -> String {
    let annotations: String =
        annotations.iter().map(|(k, v)| format!("        autoscaling.knative.dev/{k}: \"{v}\"\n")).collect();
    format!(
        r#"
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  template:
    metadata:
      annotations:
{annotations}    spec:
      containers:
        - image: ghcr.io/knative/autoscale-go:latest
"#
    )
}

fn host(name: &str) -> String {
    format!("{name}.default.example.com")
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Clients looping requests until stopped; every status is counted.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<BTreeMap<u16, usize>>>,
}

impl Load {
    fn start(client: &GatewayClient, host: &str, path: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (client, host, path, stop) = (client.clone(), host.to_owned(), path.to_owned(), stop.clone());
                tokio::spawn(async move {
                    let mut statuses = BTreeMap::new();
                    while !stop.load(Ordering::Relaxed) {
                        let reply = client.get(&host, &path).await;
                        if reply.status != 200 {
                            eprintln!("non-200: {} {:?} {}", reply.status, reply.reason, reply.body.trim());
                        }
                        *statuses.entry(reply.status).or_insert(0) += 1;
                    }
                    statuses
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) -> BTreeMap<u16, usize> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = BTreeMap::new();
        for task in self.tasks {
            for (status, n) in task.await.expect("load task") {
                *total.entry(status).or_insert(0) += n;
            }
        }
        total
    }
}

fn only_200(statuses: &BTreeMap<u16, usize>) -> bool {
    statuses.keys().all(|status| *status == 200)
}

/// Sends one request to a revision at zero; asserts it is answered by the
/// revision and reports the cold start minus the backend's own start-to-listen time.
async fn cold_start(up: &Up, client: &GatewayClient, host: &str, revision: &str, which: &str) {
    assert_eq!(up.ready(revision).await, 0, "{revision} is at zero");
    let sent = Instant::now();
    let sent_unix = unix_ms();
    let reply = client.get(host, "/?sleep=1").await;
    let cold = sent.elapsed();
    assert_eq!(reply.status, 200, "cold request: {reply:?}\n{}", up.log());
    assert!(reply.body.contains(revision), "answered by the revision: {}", reply.body);
    let instance = up.instances(revision).await["instances"][0].clone();
    let started = instance["startedUnixMs"].as_u64().expect("start time");
    let ready = instance["readyUnixMs"].as_u64().expect("ready time");
    let backend = Duration::from_millis(ready.saturating_sub(started));
    println!(
        "cold start ({which}): {:.1} ms for the request; the backend took {:.1} ms from start to listening; revgate's share {:.1} ms (instance started {} ms after the request)",
        cold.as_secs_f64() * 1e3,
        backend.as_secs_f64() * 1e3,
        cold.saturating_sub(backend).as_secs_f64() * 1e3,
        started.saturating_sub(sent_unix),
    );
}

/// The pids of every instance the runtime reports for `revision`.
fn pids(instances: &Value) -> Vec<i32> {
    instances["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["pid"].as_i64())
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scales_from_zero_up_under_load_and_back_to_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = format!("{CONFIG}{}", service("autoscale", &[("target", "10"), ("initial-scale", "0")]));
    let mut up = Up::start(dir.path(), &manifests).await;
    let revision = "autoscale-00001";
    let host = host("autoscale");
    let client = up.client();

    // Scaled to zero from the start: the gateway holds, in Proxy mode.
    assert_eq!(up.ready(revision).await, 0, "initial-scale 0 starts no instance");
    let sks = up.get_json(&format!("/v1/serverlessservices?namespace=default&name={revision}")).await;
    assert_eq!(sks[0]["spec"]["mode"], "Proxy", "{sks}");

    // Cold start: the first request is held, activates the revision, and is answered.
    cold_start(&up, &client, &host, revision, "first").await;

    // A step from 1 to 50 clients of 100 ms requests, with target 10.
    let light = Load::start(&client, &host, "/?sleep=100", 1);
    wait_for("one instance under light load", async || (up.ready(revision).await >= 1).then_some(())).await;
    let heavy = Load::start(&client, &host, "/?sleep=100", 49);
    let stepped = Instant::now();
    let (mut decided, mut most) = (None, 0);
    let reached = loop {
        if decided.is_none() && up.kpa(revision).await["status"]["desiredScale"].as_i64().unwrap_or(0) >= 5 {
            decided = Some(stepped.elapsed());
        }
        let ready = up.ready(revision).await;
        most = most.max(ready);
        if ready >= 5 {
            break stepped.elapsed();
        }
        assert!(stepped.elapsed() < Duration::from_secs(30), "never reached 5 instances (most {most})\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let decided = decided.unwrap_or(reached);
    println!(
        "scale up: the KPA wanted 5+ instances {:.1} s and had 5 ready {:.1} s after the step to 50 clients",
        decided.as_secs_f64(),
        reached.as_secs_f64()
    );
    // The decision is the KPA's (a 2 s tick on a 1 s panic window); the
    // instances' own start time is the machine's, and is only reported.
    assert!(decided <= Duration::from_secs(6), "the KPA wanted 5 instances only after {decided:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kpa = up.kpa(revision).await;
    println!("under load: {kpa}");
    let heavy = heavy.stop().await;

    // Back to light load: the KPA scales down (at most halving per tick)
    // while requests keep flowing.
    let load_dropped = Instant::now();
    wait_for("scaling down to 1 instance under light load", async || (up.ready(revision).await == 1).then_some(()))
        .await;
    println!("scale down: 1 instance {:.1} s after the load dropped", load_dropped.elapsed().as_secs_f64());
    let light = light.stop().await;

    // Idle: back to zero after the stable window and the grace period.
    let idle = Instant::now();
    let last = pids(&up.instances(revision).await);
    let to_zero = loop {
        if up.ready(revision).await == 0
            && up.instances(revision).await["instances"].as_array().is_some_and(Vec::is_empty)
        {
            break idle.elapsed();
        }
        assert!(idle.elapsed() < Duration::from_secs(45), "not back to zero after 45 s idle\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("scale to zero: {:.1} s after the last request", to_zero.as_secs_f64());
    assert!(to_zero >= STABLE_WINDOW, "scaled to zero {to_zero:?} after the last request, within the stable window");
    assert!(last.iter().all(|pid| !alive(*pid)), "stopped instances are gone: {last:?}");

    println!("statuses: heavy {heavy:?}, light {light:?}");
    assert!(only_200(&heavy) && only_200(&light), "every request answered 200: heavy {heavy:?}, light {light:?}");

    // The next request is a cold start again.
    cold_start(&up, &client, &host, revision, "again").await;

    // Requests arriving while the last instance is being stopped: they reach
    // it before it leaves the gateway, or are held and start a new one.
    wait_for_scale_to_zero_decision(&up, revision).await;
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let (client, host) = (client.clone(), host.clone());
            tokio::spawn(async move { client.get(&host, "/?sleep=50").await })
        })
        .collect();
    for request in burst {
        let reply = request.await.expect("request task");
        assert_eq!(reply.status, 200, "a request during scale to zero: {reply:?}\n{}", up.log());
    }
    println!("20 requests while the last instance was stopping: all 200");

    let envoy = up.envoy_pid();
    let status = up.interrupt().await;
    assert!(status.success(), "revgate up exits cleanly on Ctrl-C: {status:?}\n{}", up.log());
    assert!(!alive(envoy), "Ctrl-C stops Envoy");
}

/// Waits until the KPA asked the runtime for zero instances of `revision`
/// (the stable window without traffic, then the grace period).
async fn wait_for_scale_to_zero_decision(up: &Up, revision: &str) {
    let started = Instant::now();
    while up.instances(revision).await["desired"].as_u64() != Some(0) {
        assert!(started.elapsed() < Duration::from_secs(45), "no scale to zero within 45 s\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_scale_keeps_instances_and_max_scale_caps_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = format!(
        "{CONFIG}{}{}",
        service("floor", &[("target", "10"), ("min-scale", "2")]),
        service("capped", &[("target", "10"), ("max-scale", "2")]),
    );
    let mut up = Up::start(dir.path(), &manifests).await;
    let client = up.client();

    wait_for("min-scale 2 to start two instances", async || (up.ready("floor-00001").await == 2).then_some(())).await;

    // 40 clients against a revision capped at 2 instances.
    let load = Load::start(&client, &host("capped"), "/?sleep=100", 40);
    let peak = Arc::new(AtomicUsize::new(0));
    let watched = Instant::now();
    while watched.elapsed() < STABLE_WINDOW + Duration::from_secs(2) {
        let ready = up.ready("capped-00001").await;
        peak.fetch_max(ready, Ordering::Relaxed);
        let desired = up.instances("capped-00001").await["desired"].as_u64().unwrap_or(0);
        assert!(desired <= 2, "max-scale 2 caps what the runtime is asked for, got {desired}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kpa = up.kpa("capped-00001").await;
    let statuses = load.stop().await;
    println!(
        "capped: peak {} ready instances; KPA status {}; statuses {statuses:?}",
        peak.load(Ordering::Relaxed),
        kpa["status"]
    );
    assert_eq!(peak.load(Ordering::Relaxed), 2, "max-scale 2 reached and never exceeded");
    let wanted =
        kpa["status"]["observedStableValue"].as_f64().unwrap_or(0.0) / kpa["status"]["target"].as_f64().unwrap_or(1.0);
    assert!(wanted > 2.0, "the load alone would want more than 2 instances: {kpa}");
    assert_eq!(kpa["status"]["desiredScale"], 2, "the KPA's desired scale is capped: {kpa}");
    assert!(only_200(&statuses), "every request answered 200: {statuses:?}");

    // Idle past the stable window and grace period: min-scale keeps 2.
    let idle = Instant::now();
    while idle.elapsed() < STABLE_WINDOW * 2 + Duration::from_secs(4) {
        assert_eq!(up.ready("floor-00001").await, 2, "min-scale 2 keeps two instances while idle");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let table = support::stdout(&up.cli(&["get", "kpa"]));
    println!("{table}");
    assert!(table.contains("NAME") && table.contains("DESIREDSCALE") && table.contains("floor-00001"), "{table}");

    let mut all = pids(&up.instances("floor-00001").await);
    all.extend(pids(&up.instances("capped-00001").await));
    assert!(!all.is_empty());
    all.push(up.envoy_pid());
    let status = up.interrupt().await;
    assert!(status.success(), "revgate up exits cleanly on Ctrl-C: {status:?}\n{}", up.log());
    assert!(all.iter().all(|pid| !alive(*pid)), "Ctrl-C leaves no instance and no Envoy behind: {all:?}");
}
