//! End to end: Knative's gradual rollout through a real Envoy with the
//! gateway filter, the example helloworld app run as local processes by
//! `revgate up`, and revgate's gates judging the candidate from the
//! filters' own reports.
//!
//! Run: `cargo build -p helloworld && cargo test -p revgate --test e2e_rollout -- --nocapture`
//! (shares and step counts are printed; they are asserted only as behaviour:
//! intermediate shares seen, all traffic where it must be, never timings).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{GatewayClient, Up, stdout, wait_for};

const HOST: &str = "hello.default.example.com";
const PREVIOUS: &str = "hello-00001";
const CANDIDATE: &str = "hello-00002";
/// Longer than any rollout here: a rollout is judged by behaviour, this
/// only stops a broken one from hanging the test.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(90);

/// The hello Service: `annotations` on the Service (the rollout's), `env`
/// for the app (its knobs). One instance stays up, so that cold starts do
/// not blur the figures.
fn hello(target: &str, annotations: &[(&str, &str)], env: &[(&str, &str)]) -> String {
    let annotations: String = annotations.iter().map(|(k, v)| format!("    {k}: \"{v}\"\n")).collect();
    let env: String = [("TARGET", target)]
        .iter()
        .chain(env)
        .map(|(k, v)| format!("            - name: {k}\n              value: \"{v}\"\n"))
        .collect();
    format!(
        "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
  annotations:
{annotations}spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: \"1\"
    spec:
      containers:
        - image: ghcr.io/knative/helloworld-go:latest
          env:
{env}"
    )
}

fn apply(up: &Up, dir: &Path, yaml: &str) {
    let file = dir.join("next.yaml");
    std::fs::write(&file, yaml).expect("writing the manifest");
    let out = up.cli(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "apply failed: {}\n{}", support::stderr(&out), up.log());
}

/// What one batch of requests through the gateway saw.
#[derive(Debug, Default)]
struct Sample {
    previous: usize,
    candidate: usize,
    /// Anything but a 200 from one of the two revisions.
    other: Vec<(u16, String)>,
    /// When the batch was answered.
    answered: Option<Instant>,
}

impl Sample {
    fn candidate_share(&self) -> f64 {
        self.candidate as f64 / (self.previous + self.candidate).max(1) as f64
    }
}

/// `n` requests, 10 at a time.
async fn sample(client: &GatewayClient, n: usize) -> Sample {
    let mut sample = Sample::default();
    for _ in 0..n / 10 {
        let replies = futures_join(client, 10).await;
        for reply in replies {
            match reply.status {
                200 if reply.body.contains(CANDIDATE) => sample.candidate += 1,
                200 if reply.body.contains(PREVIOUS) => sample.previous += 1,
                status => sample.other.push((status, reply.body.trim().to_owned())),
            }
        }
    }
    sample.answered = Some(Instant::now());
    sample
}

async fn futures_join(client: &GatewayClient, n: usize) -> Vec<support::Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get(HOST, "/").await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    replies
}

/// Waits until the gateway took a change of split: a batch all on `revision`.
async fn settled_on(client: &GatewayClient, revision: &str) {
    wait_for(&format!("the gateway to send everything to {revision}"), async || {
        let batch = sample(client, 20).await;
        let all = if revision == CANDIDATE { batch.candidate } else { batch.previous };
        (all == 20).then_some(())
    })
    .await;
}

/// The hello Route's `Rollout` condition: (status, reason, message).
async fn rollout_condition(up: &Up) -> Option<(String, String, String)> {
    let routes = up.get_json("/v1/routes?namespace=default&name=hello").await;
    let conditions = routes.get(0)?.pointer("/status/conditions")?.as_array()?.clone();
    let c = conditions.iter().find(|c| c["type"] == "Rollout")?;
    let field = |name: &str| c.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    Some((field("status"), field("reason"), field("message")))
}

/// Sends traffic until the Rollout condition has `reason`; returns its
/// message and every sample taken.
async fn traffic_until(up: &Up, client: &GatewayClient, reason: &str) -> (String, Vec<Sample>) {
    let started = Instant::now();
    let mut samples = Vec::new();
    loop {
        if let Some((_, r, message)) = rollout_condition(up).await
            && r == reason
        {
            return (message, samples);
        }
        assert!(
            started.elapsed() < ROLLOUT_DEADLINE,
            "no Rollout condition with reason {reason} (now {:?})\n{}",
            rollout_condition(up).await,
            up.log()
        );
        samples.push(sample(client, 50).await);
    }
}

/// Starts `revgate up` with hello at its first revision, serving it.
async fn up_with_hello(dir: &Path, annotations: &[(&str, &str)]) -> (Up, GatewayClient) {
    let up = Up::start(dir, &hello("v1", annotations, &[])).await;
    let client = up.client();
    wait_for("hello-00001 to answer", async || {
        let reply = client.get(HOST, "/").await;
        (reply.status == 200 && reply.body.contains(PREVIOUS)).then_some(())
    })
    .await;
    (up, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_candidate_rises_through_intermediate_shares_to_100_percent_without_a_failure() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let annotations = [("serving.knative.dev/rollout-duration", "20s"), ("revgate.dev/rollout-max-error-rate", "0.05")];
    let (up, client) = up_with_hello(dir.path(), &annotations).await;
    apply(&up, dir.path(), &hello("v2", &annotations, &[]));
    let started = Instant::now();
    let (message, samples) = traffic_until(&up, &client, "Completed").await;
    let last = sample(&client, 100).await;
    let shares: Vec<u32> = samples.iter().map(|s| (s.candidate_share() * 100.0).round() as u32).collect();
    let every_tenth: Vec<u32> = shares.iter().step_by(10).copied().collect();
    println!(
        "candidate share, every 10th sample of 50 requests (%): {every_tenth:?}; completed after {:.1} s, {} requests",
        started.elapsed().as_secs_f64(),
        shares.len() * 50
    );
    let failures: Vec<&(u16, String)> = samples.iter().chain([&last]).flat_map(|s| &s.other).collect();
    assert!(failures.is_empty(), "every request answered 200 by one of the revisions: {failures:?}");
    assert!(shares.iter().any(|p| (10..=90).contains(p)), "intermediate shares: {shares:?}");
    assert_eq!((last.candidate, last.previous), (100, 0), "all traffic on the new revision once completed");
    assert!(message.contains(CANDIDATE), "{message}");

    let table = stdout(&up.cli(&["get", "route", "hello"]));
    assert!(table.contains("ROLLOUT") && table.contains("completed"), "{table}");
    let status = stdout(&up.cli(&["rollout", "status", "hello"]));
    assert!(status.contains("True Completed") && status.contains("STEP"), "{status}");
    let steps = metric(&up, "revgate_rollout_steps_total", CANDIDATE).await;
    assert!(steps >= 2.0, "the steps are counted in /metrics: {steps}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_answering_500_rolls_back_by_itself_naming_the_metric() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let annotations = [("serving.knative.dev/rollout-duration", "60s"), ("revgate.dev/rollout-max-error-rate", "0.05")];
    let (up, client) = up_with_hello(dir.path(), &annotations).await;
    apply(&up, dir.path(), &hello("v2", &annotations, &[("FAIL_PERCENT", "30")]));
    let (message, samples) = traffic_until(&up, &client, "Aborted").await;
    let first_500 = samples.iter().find(|s| !s.other.is_empty()).and_then(|s| s.answered);
    println!(
        "aborted after {} requests, {:.1} s after the batch with the first 500: {message}",
        samples.len() * 50,
        first_500.map_or(f64::NAN, |t| t.elapsed().as_secs_f64())
    );
    assert!(message.contains("5xx error rate") && message.contains("revgate.dev/rollout-max-error-rate"), "{message}");

    settled_on(&client, PREVIOUS).await;
    let after = sample(&client, 100).await;
    assert_eq!((after.previous, after.candidate, after.other.len()), (100, 0, 0), "all back on {PREVIOUS}");
    let (status, reason, _) = rollout_condition(&up).await.expect("condition");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Aborted"));
    let table = stdout(&up.cli(&["get", "route", "hello"]));
    assert!(table.contains("aborted: 5xx"), "{table}");
    let aborts = metric(&up, "revgate_rollout_aborts_total", "cause=\"5xx\"").await;
    assert_eq!(aborts, 1.0, "the abort is counted in /metrics with its cause");
}

/// The value of the one series of `family` in `revgate up`'s `/metrics`
/// whose labels contain `label` (0 if there is none).
async fn metric(up: &Up, family: &str, label: &str) -> f64 {
    let body = reqwest::get(format!("http://127.0.0.1:{}/metrics", up.admin_port))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the exposition");
    let series: Vec<f64> = body
        .lines()
        .filter(|line| line.starts_with(&format!("{family}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(series.len() <= 1, "one series of {family} with {label}: {body}");
    series.first().copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_candidate_waits_for_traffic_then_rolls_back_on_latency() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let annotations = [
        ("serving.knative.dev/rollout-duration", "20s"),
        ("revgate.dev/rollout-max-latency", "200ms"),
        ("revgate.dev/rollout-min-requests", "3"),
    ];
    let (up, client) = up_with_hello(dir.path(), &annotations).await;
    apply(&up, dir.path(), &hello("v2", &annotations, &[("DELAY_MS", "500")]));
    // No traffic: at its first step time the rollout waits, and says why.
    let started = Instant::now();
    let message = loop {
        if let Some((status, reason, message)) = rollout_condition(&up).await
            && reason == "WaitingForData"
        {
            assert_eq!(status, "Unknown");
            break message;
        }
        assert!(started.elapsed() < ROLLOUT_DEADLINE, "never waited: {:?}", rollout_condition(&up).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(message.contains("0 of 3 requests") && message.contains("1%"), "{message}");
    let status = stdout(&up.cli(&["rollout", "status", "hello"]));
    assert!(status.contains("WaitingForData") && status.contains("candidate"), "{status}");

    // Traffic comes: the slow candidate is measured and rolled back.
    let (message, _) = traffic_until(&up, &client, "Aborted").await;
    assert!(message.contains("p99 latency") && message.contains("200ms"), "{message}");
    settled_on(&client, PREVIOUS).await;
    let after = sample(&client, 50).await;
    assert_eq!((after.previous, after.candidate), (50, 0), "all back on {PREVIOUS}");
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_abort_retry_and_promote_and_a_restart_resumes_the_rollout() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let annotations = [("serving.knative.dev/rollout-duration", "300s")];
    let (up, client) = up_with_hello(dir.path(), &annotations).await;

    // A bad gate is refused at apply, naming the file, the object, the
    // annotation and its value; nothing changes.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, hello("v2", &[("revgate.dev/rollout-max-error-rate", "5%")], &[])).expect("manifest");
    let refused = up.cli(&["apply", "-f", bad.to_str().expect("utf-8 path")]);
    let error = support::stderr(&refused);
    assert!(!refused.status.success(), "{error}");
    for part in ["bad.yaml", "hello", "metadata.annotations[revgate.dev/rollout-max-error-rate]", "\"5%\""] {
        assert!(error.contains(part), "{part} in {error}");
    }
    let revisions = up.get_json("/v1/revisions?namespace=default").await;
    assert_eq!(revisions.as_array().map(Vec::len), Some(1), "nothing created: {revisions}");

    apply(&up, dir.path(), &hello("v2", &annotations, &[]));
    wait_for("the rollout to start", async || {
        rollout_condition(&up).await.filter(|(_, reason, _)| reason == "Progressing")
    })
    .await;

    let out = up.cli(&["rollout", "abort", "hello"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    settled_on(&client, PREVIOUS).await;
    let after = sample(&client, 50).await;
    assert_eq!((after.previous, after.candidate), (50, 0), "abort: all back on {PREVIOUS}");
    let refused = up.cli(&["rollout", "promote", "hello"]);
    assert!(!refused.status.success() && support::stderr(&refused).contains("no rollout in progress"));

    let out = up.cli(&["rollout", "retry", "hello"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(stdout(&out).contains(CANDIDATE), "{}", stdout(&out));
    let out = up.cli(&["rollout", "promote", "hello"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    settled_on(&client, CANDIDATE).await;
    let after = sample(&client, 50).await;
    assert_eq!((after.previous, after.candidate), (0, 50), "promote: all on {CANDIDATE}");

    // A third revision rolls out; a restart in the middle resumes it.
    let v3 = hello("v3", &annotations, &[]);
    apply(&up, dir.path(), &v3);
    let share = |view: &Value| view[0]["rollout"]["configurations"][0]["revisions"][1]["percent"].as_u64();
    let before = wait_for("the third revision past its first steps", async || {
        share(&up.get_json("/v1/rollouts?namespace=default&name=hello").await).filter(|p| *p >= 3)
    })
    .await;
    drop(client);
    let mut up = up;
    up.interrupt().await;
    let up = Up::start(dir.path(), &v3).await;
    let view = up.get_json("/v1/rollouts?namespace=default&name=hello").await;
    let resumed = share(&view).expect("a rollout in progress after the restart");
    assert!((before..100).contains(&resumed), "resumed at {resumed}% (was {before}%): {view}");
    assert_eq!(view[0]["rollout"]["configurations"][0]["revisions"][1]["revision"], "hello-00003");
}
