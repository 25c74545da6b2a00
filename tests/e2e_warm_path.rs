//! End to end: the warm path. A real Envoy 1.40 (`--concurrency 2`) with
//! revgate's filter, programmed by `revgate serve` over delta xDS and
//! streaming its statistics back. A Route whose one revision has been warm
//! in the gateway for a few seconds is served with the filter disabled on
//! its virtual host, so warm requests never enter the wasm VM; what the
//! filter measured then comes from Envoy's own statistics. Going to zero
//! turns the filter back on before the endpoints leave.
//!
//! Endpoints are registered through the admin API, standing in for a runtime.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Backend, Envoy, Gateway, Revgate, wait_for};

/// The two tests each keep a steady load on the gateway; on two cores one's
/// load would stall the other's clients, whose own timings are what the
/// reported concurrency is compared with. They take turns.
static ONE_LOAD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HOST: &str = "warm.default.example.com";
const REVISION: &str = "warm-00001";
const CLUSTER: &str = "rev|default|warm-00001";

const SERVICE: &str = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: warm
spec:
  template:
    spec:
      containers:
      - image: example.com/warm:v1
"#;

/// Fields drop in order: the processes go before the directory holding their logs.
struct Setup {
    revgate: Revgate,
    envoy: Envoy,
    backend: Backend,
    _dir: tempfile::TempDir,
}

/// revgate with the filter, a delta-xDS Envoy, the Service applied and its
/// revision's endpoint registered and ACKed.
async fn setup() -> Setup {
    let Gateway { revgate, envoy, dir } = Gateway::start(SERVICE, r#"{"report_interval_ms": 500}"#).await;
    let backend = Backend::start("warm-backend").await;
    revgate.set_endpoints(REVISION, &[backend.addr]).await;
    revgate.wait_acked(&envoy.node_id).await;
    Setup { _dir: dir, revgate, envoy, backend }
}

/// Whether Envoy's running routes serve the Service with the filter
/// disabled (its virtual host carries `FilterConfig{disabled: true}`).
async fn filter_disabled_in_envoy(envoy: &Envoy) -> bool {
    let url = format!("http://127.0.0.1:{}/config_dump?resource=dynamic_route_configs", envoy.admin_port);
    let dump: Value = reqwest::get(url).await.expect("Envoy admin").json().await.expect("config dump JSON");
    let configs = dump.get("configs").and_then(Value::as_array).cloned().unwrap_or_default();
    configs
        .iter()
        .filter_map(|c| c.pointer("/route_config/virtual_hosts")?.as_array().cloned())
        .flatten()
        .filter(|vhost| vhost.get("domains").is_some_and(|d| d.to_string().contains(HOST)))
        .any(|vhost| {
            vhost.pointer("/typed_per_filter_config/envoy.filters.http.wasm/disabled") == Some(&Value::Bool(true))
        })
}

async fn wait_filter(envoy: &Envoy, disabled: bool) {
    let what = if disabled { "the filter disabled on the warm route" } else { "the filter back on the route" };
    wait_for(what, async || (filter_disabled_in_envoy(envoy).await == disabled).then_some(())).await;
}

/// Clients that each keep one request in flight (`?sleep=MS` at the
/// backend) until stopped; every answer's status and when it was open.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u16, Instant, Instant)>>>,
}

impl Load {
    fn start(envoy: &Envoy, clients: usize, sleep_ms: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (client, stop) = (envoy.client(), stop.clone());
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let reply = client.get(HOST, &format!("/?sleep={sleep_ms}")).await;
                        answers.push((reply.status, sent, Instant::now()));
                    }
                    answers
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) -> Vec<(u16, Instant, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.expect("client task"));
        }
        all
    }
}

/// The activation service's view of the revision: what is counted now.
async fn totals(revgate: &Revgate) -> (f64, u64) {
    let activity = revgate.activity(REVISION).await.unwrap_or(Value::Null);
    let concurrency = activity.get("concurrency").and_then(Value::as_f64).unwrap_or(0.0);
    let reporters = activity.get("reporters").and_then(Value::as_u64).unwrap_or(0);
    (concurrency, reporters)
}

/// The revision's requests in `kn_serving_invocation_duration_seconds_count`
/// (every status code), from a `/metrics` scrape.
fn invocations(text: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with("kn_serving_invocation_duration_seconds_count{")
                && l.contains(&format!("kn_revision_name=\"{REVISION}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_requests_skip_the_filter_and_their_concurrency_is_still_reported() {
    let _turn = ONE_LOAD_AT_A_TIME.lock().await;
    let s = setup().await;
    // Ten clients, each always with one request in flight to a handler that
    // sleeps 100 ms: about 10 in flight.
    let load = Load::start(&s.envoy, 10, 100);
    wait_filter(&s.envoy, true).await;

    // Measure once the filters' last reports from before the switch are
    // stale (2 s) and over full flushes with the filter off: what the
    // clients really kept in flight (the time their requests were open,
    // divided by the time measured: Little's law) is what the KPA must be told.
    let measured_from = Instant::now() + Duration::from_millis(3000);
    let mut samples = Vec::new();
    while samples.len() < 6 {
        let (concurrency, reporters) = totals(&s.revgate).await;
        if Instant::now() >= measured_from {
            // Only the gateway's own statistics count the revision: no
            // filter VM saw one of its requests.
            assert_eq!(reporters, 1, "a filter VM reported requests of a route it is disabled on");
            samples.push(concurrency);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let measured_to = Instant::now();
    assert!(filter_disabled_in_envoy(&s.envoy).await, "the route kept the filter off throughout");
    let answers = load.stop().await;
    assert!(answers.iter().all(|(status, _, _)| *status == 200), "every warm request answered 200");

    // Every request counted once in Knative's request metric, those the
    // filter saw before the switch and those only Envoy saw after it. Where
    // Envoy's counting starts, the filters' report windows that straddle it
    // are shared in proportion, so the total may be off by a few answers;
    // counted twice or lost at the switch, it would be off by a second's worth.
    let url = format!("{}/metrics", s.revgate.server());
    let expected = answers.len() as f64;
    let counted = wait_for("the requests in kn_serving_invocation_duration_seconds_count", async || {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        let counted = invocations(&text) as f64;
        ((counted - expected).abs() <= expected * 0.01).then_some(counted)
    })
    .await;
    println!("{counted} of {expected} requests counted in kn_serving_invocation_duration_seconds_count");

    let window_from = measured_from - Duration::from_secs(1);
    let busy: f64 = answers
        .iter()
        .map(|(_, sent, done)| {
            let (from, to) = ((*sent).max(window_from), (*done).min(measured_to));
            to.saturating_duration_since(from).as_secs_f64()
        })
        .sum();
    let actual = busy / measured_to.duration_since(window_from).as_secs_f64();
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    println!("reported concurrency with the filter off: {samples:?} (mean {mean:.2}); the clients kept {actual:.2}");
    assert!(actual > 5.0, "the clients kept only {actual:.2} requests in flight");
    assert!(
        (mean - actual).abs() <= actual * 0.05,
        "reported {mean:.2}, but the clients kept {actual:.2} in flight (within 5% expected; {samples:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_to_zero_and_back_under_steady_load_answers_every_request_200() {
    let _turn = ONE_LOAD_AT_A_TIME.lock().await;
    let s = setup().await;
    let load = Load::start(&s.envoy, 4, 20);
    wait_filter(&s.envoy, true).await;

    // To zero while requests keep coming: the filter comes back on the
    // route before Envoy loses the endpoint, so requests are held, not
    // answered "no healthy upstream".
    s.revgate.set_endpoints(REVISION, &[]).await;
    wait_filter(&s.envoy, false).await;
    let endpoint = s.backend.addr.to_string();
    wait_for("Envoy to lose the revision's endpoint", async || {
        let clusters = s.envoy.clusters().await;
        (!clusters.lines().any(|l| l.starts_with(CLUSTER) && l.contains(&endpoint))).then_some(())
    })
    .await;
    wait_for("requests held at the gateway", async || {
        let held = s.revgate.activity(REVISION).await?.get("held")?.as_u64()?;
        (held > 0).then_some(())
    })
    .await;

    // And back: the held requests are released, warm traffic flows again and
    // the route settles into the warm path once more.
    s.revgate.set_endpoints(REVISION, &[s.backend.addr]).await;
    wait_filter(&s.envoy, true).await;
    let answers = load.stop().await;
    let failed: Vec<u16> = answers.iter().map(|(status, _, _)| *status).filter(|s| *s != 200).collect();
    println!("{} requests across zero and back; non-200: {failed:?}", answers.len());
    assert!(answers.len() > 100, "only {} requests", answers.len());
    assert!(failed.is_empty(), "answers other than 200: {failed:?}");
}
