//! End to end: the activator lives in the gateway. A real Envoy 1.40
//! (`--concurrency 2`) runs revgate's wasm filter, programmed by
//! `revgate serve`: requests for a revision with no endpoints are held and
//! released once this Envoy has ACKed endpoints for it, limits answer
//! clearly, `containerConcurrency` throttles, and concurrency is reported.
//!
//! Endpoints are registered through the admin API, standing in for a runtime
//! that starts and stops the revision's instances.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::{Backend, Envoy, Gateway, Reply, Revgate, wait_for};

const HOST: &str = "cold.default.example.com";
const REVISION: &str = "cold-00001";

fn service(name: &str, container_concurrency: u32, timeout_seconds: u32) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    spec:
      containerConcurrency: {container_concurrency}
      timeoutSeconds: {timeout_seconds}
      containers:
      - image: example.com/{name}:v1
"#
    )
}

fn unix_ms(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

/// `acked_at` of the node's EDS, in Unix milliseconds.
async fn eds_acked_at(revgate: &Revgate, node: &str) -> f64 {
    let view = revgate.gateway().await;
    let at = view.pointer(&format!("/status/nodes/{node}/types/EDS/acked_at")).cloned().unwrap_or(Value::Null);
    let secs = at.get("secs_since_epoch").and_then(Value::as_f64).unwrap_or(0.0);
    let nanos = at.get("nanos_since_epoch").and_then(Value::as_f64).unwrap_or(0.0);
    secs * 1e3 + nanos / 1e6
}

/// Waits until `count` filter VMs of `node` have the current readiness view.
async fn wait_filters_in_sync(revgate: &Revgate, node: &str, count: u64) {
    wait_for(&format!("{count} filter VMs of {node} to have the current readiness view"), async || {
        let in_sync = revgate.gateway().await.pointer(&format!("/filters/{node}"))?.as_u64()?;
        (in_sync >= count).then_some(())
    })
    .await;
}

/// `n` concurrent requests for the cold revision's host.
fn spawn_requests(envoy: &Envoy, n: usize) -> Vec<tokio::task::JoinHandle<Reply>> {
    (0..n)
        .map(|_| {
            let client = envoy.client();
            tokio::spawn(async move { client.get(HOST, "/").await })
        })
        .collect()
}

async fn activations(revgate: &Revgate, revision: &str) -> u64 {
    revgate.activity(revision).await.and_then(|a| a.get("activations")?.as_u64()).unwrap_or(0)
}

async fn wait_activations(revgate: &Revgate, revision: &str, at_least: u64) {
    wait_for(&format!("{at_least} activation(s) of {revision}"), async || {
        (activations(revgate, revision).await >= at_least).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_cold_revision_is_held_and_released_once_an_endpoint_is_acked() {
    let s = Gateway::start(&service("cold", 0, 300), "{}").await;
    let backend = Backend::start("cold-backend").await;
    let client = s.envoy.client();

    // The first cold start after the gateway started, then a second one in
    // steady state, which is the one measured.
    for cycle in 1..=2 {
        if cycle == 2 {
            s.revgate.set_endpoints(REVISION, &[]).await;
            s.revgate.wait_acked(&s.envoy.node_id).await;
        }
        let sent = SystemTime::now();
        let request = {
            let client = client.clone();
            tokio::spawn(async move { (client.get(HOST, "/").await, SystemTime::now()) })
        };
        wait_activations(&s.revgate, REVISION, cycle).await;
        let activation = s.revgate.activity(REVISION).await.expect("activity");
        let activated_ms = activation.pointer("/last_activation/at_unix_ms").and_then(Value::as_f64).unwrap_or(0.0);
        assert!(!request.is_finished(), "the request is held while the revision has no endpoint");

        s.revgate.set_endpoints(REVISION, &[backend.addr]).await;
        let (reply, done) = request.await.expect("request task");
        assert_eq!((reply.status, reply.body.as_str()), (200, "cold-backend"), "{reply:?}");
        let acked = eds_acked_at(&s.revgate, &s.envoy.node_id).await;
        println!(
            "cold start {cycle}: activation request received {:.1} ms after the request was sent; \
             released {:.1} ms after Envoy ACKed the endpoints",
            activated_ms - unix_ms(sent),
            unix_ms(done) - acked
        );
    }
}

/// Hosts are case-insensitive: a cold request whose `Host` has capitals is
/// held like any other and released once the revision has an endpoint
/// (Envoy picks its route again after lowercasing the host, and the filter
/// must see that route, not none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_request_with_capitals_in_its_host_is_held_and_released() {
    let s = Gateway::start(&service("cold", 0, 300), "{}").await;
    let backend = Backend::start("cold-backend").await;
    let client = s.envoy.client();
    let request = tokio::spawn(async move { client.get("Cold.Default.Example.COM", "/").await });
    wait_activations(&s.revgate, REVISION, 1).await;
    assert!(!request.is_finished(), "the request is held while the revision has no endpoint");
    s.revgate.set_endpoints(REVISION, &[backend.addr]).await;
    let reply = request.await.expect("request task");
    assert_eq!((reply.status, reply.body.as_str()), (200, "cold-backend"), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_held_requests_all_complete_after_activation() {
    let s = Gateway::start(&service("cold", 0, 300), "{}").await;
    let backend = Backend::start("cold-backend").await;
    let requests = spawn_requests(&s.envoy, 1000);
    wait_for("1000 requests held by the gateway", async || {
        let held = s.revgate.activity(REVISION).await?.get("held")?.as_u64()?;
        (held >= 1000).then_some(())
    })
    .await;
    assert!(requests.iter().all(|r| !r.is_finished()), "nothing answered while cold");

    let released = Instant::now();
    s.revgate.set_endpoints(REVISION, &[backend.addr]).await;
    let mut statuses = std::collections::BTreeMap::new();
    for request in requests {
        *statuses.entry(request.await.expect("request task").status).or_insert(0) += 1;
    }
    println!(
        "1000 held requests drained {:.0} ms after the endpoint was registered",
        released.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(statuses, [(200, 1000)].into(), "every held request completes 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_cold_start_cycles_under_concurrent_load_see_only_200s() {
    let s = Gateway::start(&format!("{}---\n{}", service("cold", 0, 300), service("warm", 0, 300)), "{}").await;
    let cold = Backend::start("cold-backend").await;
    let warm = Backend::start("warm-backend").await;
    s.revgate.set_endpoints("warm-00001", &[warm.addr]).await;
    s.revgate.wait_acked(&s.envoy.node_id).await;

    // Steady load on a warm revision throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, stop) = (s.envoy.client(), stop.clone());
        tokio::spawn(async move {
            let mut replies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                replies.push(client.get("warm.default.example.com", "/").await.status);
            }
            replies
        })
    };

    let mut failures: Vec<Reply> = Vec::new();
    for cycle in 1..=100u64 {
        // Scale to zero, and wait until Envoy runs without endpoints.
        s.revgate.set_endpoints(REVISION, &[]).await;
        s.revgate.wait_acked(&s.envoy.node_id).await;
        let requests = spawn_requests(&s.envoy, 5);
        wait_activations(&s.revgate, REVISION, cycle).await;
        s.revgate.set_endpoints(REVISION, &[cold.addr]).await;
        for request in requests {
            let reply = request.await.expect("request task");
            if reply.status != 200 {
                failures.push(reply);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let warm_replies = load.await.expect("load task");
    assert!(failures.is_empty(), "non-200 answers during cold starts: {failures:?}");
    assert!(!warm_replies.is_empty() && warm_replies.iter().all(|status| *status == 200), "warm load saw failures");
    println!("100 cold-start cycles (500 cold requests) and {} warm requests: all 200", warm_replies.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_timeout_and_client_abort_answer_clearly() {
    // Five held requests per worker VM at most; the revision times out after 1 s.
    let s = Gateway::start(&service("cold", 0, 1), r#"{"max_held_per_revision": 5}"#).await;
    let requests = spawn_requests(&s.envoy, 30);
    let mut overflow = 0;
    let mut timeouts = 0;
    for request in requests {
        let reply = request.await.expect("request task");
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(reply.body.contains("default/cold-00001"), "the answer names the revision: {reply:?}");
        match reply.reason.as_deref() {
            Some("held-requests-limit") => {
                assert!(reply.body.contains("max_held_per_revision"), "{reply:?}");
                overflow += 1;
            }
            Some("activation-timeout") => timeouts += 1,
            other => panic!("unexpected reason {other:?}: {reply:?}"),
        }
    }
    println!("30 requests, 2 workers × 5 held at most: {overflow} over the limit, {timeouts} timed out");
    assert!(overflow >= 20, "at most 10 can be held across two workers");
    assert!(timeouts >= 1);

    // A client that gives up while held is forgotten by the gateway.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().expect("client");
    let url = format!("http://127.0.0.1:{}/", s.envoy.http_port);
    assert!(impatient.get(&url).header("host", HOST).send().await.is_err(), "the client gave up");
    wait_for("the aborted request to leave the gateway's hold", async || {
        let activity = s.revgate.activity(REVISION).await?;
        (activity.get("held")?.as_u64()? == 0 && activity.get("reporters")?.as_u64()? > 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_one_never_overloads_the_backend() {
    let s = Gateway::start(&service("cold", 1, 300), "{}").await;
    let backend = Backend::start("cold-backend").await;
    s.revgate.set_endpoints(REVISION, &[backend.addr]).await;
    s.revgate.wait_acked(&s.envoy.node_id).await;

    let clients: Vec<_> = (0..50)
        .map(|_| {
            let client = s.envoy.client();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..2 {
                    statuses.push(client.get(HOST, "/?sleep=5").await.status);
                }
                statuses
            })
        })
        .collect();
    for client in clients {
        assert!(client.await.expect("client task").iter().all(|s| *s == 200));
    }
    let max = backend.max_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(max, 1, "with containerConcurrency 1 the backend never sees two requests at once");
    assert_eq!(backend.served.load(std::sync::atomic::Ordering::SeqCst), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_concurrency_matches_the_load() {
    let s = Gateway::start(&service("cold", 0, 300), r#"{"report_interval_ms": 500}"#).await;
    let backend = Backend::start("cold-backend").await;
    s.revgate.set_endpoints(REVISION, &[backend.addr]).await;
    s.revgate.wait_acked(&s.envoy.node_id).await;

    // Ten clients, each always with one request in flight against a handler
    // that sleeps 100 ms: the revision's concurrency is about 10. What the
    // clients really kept in flight (the time their requests were open,
    // divided by the time measured: Little's law) is what the reports must
    // show, so a busy machine that starves the clients does not fail this.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, Instant)>::new()));
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let (client, stop, open) = (s.envoy.client(), stop.clone(), open.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = Instant::now();
                    assert_eq!(client.get(HOST, "/?sleep=100").await.status, 200);
                    open.lock().expect("request log").push((sent, Instant::now()));
                }
            })
        })
        .collect();
    // Let full report windows pass under load, then read the total.
    let mut samples = Vec::new();
    let started = Instant::now();
    let measured_from = started + Duration::from_millis(1500);
    while samples.len() < 4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if Instant::now() < measured_from {
            continue;
        }
        let concurrency =
            s.revgate.activity(REVISION).await.and_then(|a| a.get("concurrency")?.as_f64()).unwrap_or(0.0);
        samples.push(concurrency);
    }
    let measured_to = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }
    // Each report covers the second before it was read: compare with what
    // the clients kept open from a second before the first sample on.
    let window_from = measured_from - Duration::from_secs(1);
    let busy: f64 = open
        .lock()
        .expect("request log")
        .iter()
        .map(|(sent, done)| {
            let (from, to) = ((*sent).max(window_from), (*done).min(measured_to));
            to.saturating_duration_since(from).as_secs_f64()
        })
        .sum();
    let actual = busy / measured_to.duration_since(window_from).as_secs_f64();
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    println!(
        "reported concurrency for 10 clients: {samples:?} (mean {mean:.2}); the clients kept {actual:.2} in flight"
    );
    assert!(actual > 5.0, "the clients kept only {actual:.2} requests in flight");
    assert!(
        (mean - actual).abs() <= actual * 0.1,
        "reported {mean:.2}, but the clients kept {actual:.2} in flight (within 10% expected; {samples:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_control_plane_down_warm_revisions_serve_and_held_requests_fail_at_their_timeout() {
    let mut s = Gateway::start(&format!("{}---\n{}", service("cold", 0, 2), service("warm", 0, 300)), "{}").await;
    let warm = Backend::start("warm-backend").await;
    s.revgate.set_endpoints("warm-00001", &[warm.addr]).await;
    s.revgate.wait_acked(&s.envoy.node_id).await;
    s.envoy.wait_body("warm.default.example.com", &[], "warm-backend").await;
    // Every filter VM (two workers and the main thread) has the current view.
    wait_filters_in_sync(&s.revgate, &s.envoy.node_id, 3).await;

    s.revgate.process.kill();
    let client = s.envoy.client();
    let cold = tokio::spawn({
        let client = client.clone();
        async move {
            let started = Instant::now();
            (client.get(HOST, "/").await, started.elapsed())
        }
    });
    for _ in 0..200 {
        let reply = client.get("warm.default.example.com", "/").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "warm-backend"), "{reply:?}");
    }
    let (reply, waited) = cold.await.expect("request task");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.reason.as_deref(), Some("activation-timeout"), "{reply:?}");
    assert!(reply.body.contains("default/cold-00001"), "{reply:?}");
    assert!(waited >= Duration::from_secs(2), "held for the revision's timeoutSeconds, answered after {waited:?}");

    // Back up: the gateway reconnects, its filters poll again, and a new
    // cold request is activated again.
    s.revgate.restart().await;
    s.revgate.wait_acked(&s.envoy.node_id).await;
    wait_filters_in_sync(&s.revgate, &s.envoy.node_id, 3).await;
    let backend = Backend::start("cold-backend").await;
    let request = tokio::spawn(async move { client.get(HOST, "/").await });
    wait_activations(&s.revgate, REVISION, 1).await;
    s.revgate.set_endpoints(REVISION, &[backend.addr]).await;
    let reply = request.await.expect("request task");
    assert_eq!(reply.status, 200, "{reply:?}");
}
