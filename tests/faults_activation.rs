//! Fault injection: stray and hostile clients of the activation service.
//!
//! The activation service (`revgate-proto` over HTTP) is what every gateway
//! filter VM calls. Whatever other clients send it, revgate promises that
//! its memory and its log stay bounded and that the real gateway's cold
//! starts keep working.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use revgate_proto::{ActivationRequest, MetricsReport, ReadinessUpdate, RevisionMetrics, paths};
use serde_json::Value;
use support::{Backend, Envoy, Revgate, service_manifest as service, wait_for};

const HOST: &str = "cold.default.example.com";
const REVISION: &str = "cold-00001";

/// Made-up activations, as in the flood that once added 156 MB and 88 MB of log.
const FLOOD_ACTIVATIONS: usize = 40_000;
/// Concurrent clients of the flood.
const FLOOD_CLIENTS: usize = 64;
/// Readiness polls held open at once by made-up filter VMs: more than the
/// activation service tracks (`MAX_FILTER_VMS`, 1024).
const FLOOD_HELD_POLLS: usize = 1_100;
/// Readiness polls answered at once (`after=0`), each from a new made-up node.
const FLOOD_QUICK_POLLS: usize = 5_000;

/// The generous bound on the control plane's memory growth under the flood.
const MAX_RSS_GROWTH_KB: u64 = 30 * 1024;
/// The bound on its log growth: a few rate-limited lines per kind of event.
const MAX_LOG_GROWTH_BYTES: u64 = 8 * 1024;

/// The `--activation-addr` the harness gave `revgate serve`.
fn activation_addr(revgate: &Revgate) -> SocketAddr {
    let flag = revgate.extra.iter().position(|arg| arg == "--activation-addr").expect("an activation address");
    revgate.extra[flag + 1].parse().expect("a socket address")
}

/// The pid of the `revgate serve` listening on `admin_addr`.
fn serve_pid(admin_addr: SocketAddr) -> u32 {
    let needle = admin_addr.to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&b"serve".as_slice()) && args.contains(&needle.as_bytes())
        })
        .expect("the revgate serve process")
}

/// `VmRSS` of a process, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn log_bytes(revgate: &Revgate) -> u64 {
    revgate.process.log().len() as u64
}

/// Status and body of a protobuf POST.
async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, String) {
    match http.post(url).header("content-type", paths::CONTENT_TYPE).body(body).send().await {
        Ok(response) => (response.status().as_u16(), response.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Status and body of a readiness poll.
async fn poll(http: &reqwest::Client, base: &str, after: u64, node: &str) -> (u16, Vec<u8>) {
    let url = format!("{base}{}", paths::readiness_path(after, node, &format!("{node}/1/1")));
    match http.get(url).send().await {
        Ok(response) => (response.status().as_u16(), response.bytes().await.map(|b| b.to_vec()).unwrap_or_default()),
        Err(e) => (0, format!("{e:?}").into_bytes()),
    }
}

/// Counts answers by status, keeping one body per status.
#[derive(Debug, Default)]
struct Tally {
    counts: BTreeMap<u16, usize>,
    bodies: BTreeMap<u16, String>,
}

impl Tally {
    fn add(&mut self, status: u16, body: String) {
        *self.counts.entry(status).or_insert(0) += 1;
        self.bodies.entry(status).or_insert(body);
    }

    fn merge(&mut self, other: Tally) {
        for (status, count) in other.counts {
            *self.counts.entry(status).or_insert(0) += count;
        }
        for (status, body) in other.bodies {
            self.bodies.entry(status).or_insert(body);
        }
    }
}

/// Holds open more readiness long-polls from made-up filter VMs than the
/// service tracks (a refused VM tries again, as a filter does, until a slot
/// frees), until one more VM is refused for the limit; then the clients
/// leave. Returns the control plane's RSS while they were held.
async fn hold_more_polls_than_tracked(http: &reqwest::Client, base: &str, version: u64, pid: u32) -> u64 {
    let held: Vec<_> = (0..FLOOD_HELD_POLLS)
        .map(|i| {
            let (http, base, vm) = (http.clone(), base.to_owned(), format!("held-{i}"));
            tokio::spawn(async move {
                while poll(&http, &base, version, &vm).await.0 == 429 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    // Each try is a new VM: one already tracked is never refused.
    let mut tries = 0;
    let refused = wait_for("a made-up filter VM to be refused for the limit", async || {
        tries += 1;
        let (status, body) = poll(http, base, 0, &format!("one-more-{tries}")).await;
        (status == 429).then(|| String::from_utf8_lossy(&body).into_owned())
    })
    .await;
    assert!(refused.contains("MAX_FILTER_VMS = 1024"), "the answer names the limit: {refused}");
    let rss = rss_kb(pid);
    for poll in &held {
        poll.abort();
    }
    for poll in held {
        let _ = poll.await;
    }
    rss
}

/// Injects: 40,000 activation requests for revisions that do not exist,
/// metrics reports for them, thousands of readiness polls from made-up
/// filter VMs answered at once, more long-polls held open than the service
/// tracks, many long-polls of one made-up VM, an oversized message and an
/// oversized node id.
/// Promises: unknown revisions are answered 404 naming the revision and
/// stored nowhere; filter VMs beyond `MAX_FILTER_VMS`, and polls of one VM
/// beyond `MAX_POLLS_PER_VM`, are answered 429 naming the limit; made-up
/// VMs are forgotten once they stop polling; oversized input is answered
/// 413 or 400 naming its limit; the control plane's memory and log barely
/// grow; and a real cold start through a real Envoy still works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_activations_and_pollers_leaves_memory_and_log_bounded() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let revgate = Revgate::start_with_filter(&dir.path().join("state"), support::free_port(), "{}").await;
    let envoy = Envoy::start_ads(dir.path(), &revgate, true).await;
    revgate.apply(&service("cold"));
    revgate.wait_acked(&envoy.node_id).await;
    // Every filter VM of the gateway (two workers and the main thread) polls.
    wait_for("the gateway's three filter VMs to have the current readiness view", async || {
        let in_sync = revgate.gateway().await.pointer(&format!("/filters/{}", envoy.node_id))?.as_u64()?;
        (in_sync >= 3).then_some(())
    })
    .await;

    let base = format!("http://{}", activation_addr(&revgate));
    let pid = serve_pid(revgate.admin_addr);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client");
    // Warm the service's own code paths (and allocator) before measuring.
    for i in 0..100 {
        let request =
            ActivationRequest { namespace: "default".into(), revision: format!("warm-up-{i}"), ..Default::default() };
        post(&http, &format!("{base}{}", paths::ACTIVATE), request.encode_to_vec()).await;
    }
    let rss_before = rss_kb(pid);
    let log_before = log_bytes(&revgate);

    // 40,000 activations and 4,000 metrics reports for made-up revisions.
    let clients: Vec<_> = (0..FLOOD_CLIENTS)
        .map(|client| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let (mut activations, mut reports) = (Tally::default(), Tally::default());
                for i in (client..FLOOD_ACTIVATIONS).step_by(FLOOD_CLIENTS) {
                    // Names as long as real ones get (a node id like Istio's,
                    // a revision name of 63 characters).
                    let node = format!(
                        "router~10.0.{}.{}~gateway-{i:0>10}.istio-system~istio-system.svc.cluster.local",
                        i / 256,
                        i % 256
                    );
                    let request = ActivationRequest {
                        reporter: format!("{node}/1700000000000/1"),
                        node_id: node,
                        namespace: "default".into(),
                        revision: format!("made-up-{i:-<55}"),
                        held: 1,
                    };
                    let (status, body) =
                        post(&http, &format!("{base}{}", paths::ACTIVATE), request.encode_to_vec()).await;
                    activations.add(status, body);
                    if i % 10 == 0 {
                        let report = MetricsReport {
                            node_id: format!("node-{i}"),
                            reporter: format!("node-{i}/1/1"),
                            window_ms: 1000,
                            revisions: vec![RevisionMetrics {
                                namespace: "default".into(),
                                revision: format!("made-up-{i:-<55}"),
                                held: 1,
                                ..Default::default()
                            }],
                            ..Default::default()
                        };
                        let (status, body) =
                            post(&http, &format!("{base}{}", paths::REPORT), report.encode_to_vec()).await;
                        reports.add(status, body);
                    }
                }
                (activations, reports)
            })
        })
        .collect();
    let (mut activations, mut reports) = (Tally::default(), Tally::default());
    for client in clients {
        let (a, r) = client.await.expect("flood client");
        activations.merge(a);
        reports.merge(r);
    }
    let (rss_flooded, log_flooded) = (rss_kb(pid), log_bytes(&revgate));
    println!(
        "{FLOOD_ACTIVATIONS} made-up activations answered {:?}, reports {:?}; RSS +{} kB, log +{} bytes",
        activations.counts,
        reports.counts,
        rss_flooded.saturating_sub(rss_before),
        log_flooded - log_before
    );
    assert_eq!(activations.counts, [(404, FLOOD_ACTIVATIONS)].into(), "{:?}", activations.bodies);
    assert!(
        activations.bodies[&404].contains("default/made-up-"),
        "the answer names the revision: {:?}",
        activations.bodies
    );
    assert_eq!(reports.counts, [(404, FLOOD_ACTIVATIONS / 10)].into(), "{:?}", reports.bodies);

    // Made-up filter VMs: polls answered at once, then long-polls held open
    // on the current version, more than the service tracks.
    let (status, body) = poll(&http, &base, 0, "prober").await;
    assert_eq!(status, 200);
    let version = ReadinessUpdate::decode(body.as_slice()).expect("a readiness update").version;
    let quick: Vec<_> = (0..FLOOD_CLIENTS)
        .map(|client| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                for i in (client..FLOOD_QUICK_POLLS).step_by(FLOOD_CLIENTS) {
                    let (status, body) = poll(&http, &base, 0, &format!("stray-{i}")).await;
                    tally.add(status, String::from_utf8_lossy(&body).into_owned());
                }
                tally
            })
        })
        .collect();
    let mut quick_polls = Tally::default();
    for client in quick {
        quick_polls.merge(client.await.expect("poll client"));
    }
    println!("{FLOOD_QUICK_POLLS} polls from made-up nodes answered {:?}", quick_polls.counts);
    assert!(quick_polls.counts.keys().all(|status| [200, 429].contains(status)), "{:?}", quick_polls.bodies);

    let rss_held = hold_more_polls_than_tracked(&http, &base, version, pid).await;
    // Once their clients left, the made-up VMs are forgotten: `get gateway`
    // lists only the real gateway's filters again.
    let left = std::time::Instant::now();
    let filters = wait_for("the made-up filter VMs to be forgotten", async || {
        let filters = revgate.gateway().await.get("filters")?.as_object()?.clone();
        filters.keys().all(|node| *node == envoy.node_id).then_some(filters)
    })
    .await;
    println!(
        "the made-up filter VMs were forgotten {:.1} s after their clients left: {filters:?}",
        left.elapsed().as_secs_f64()
    );
    // One made-up VM cannot hold many polls either. The VMs above leave
    // the count of tracked VMs only at their idle timeout, which may not
    // have passed yet: a poll refused for that limit tries again, as a
    // filter does.
    let refused_for_vm_limit =
        |status: u16, body: &[u8]| status == 429 && String::from_utf8_lossy(body).contains("MAX_FILTER_VMS");
    let same_vm: Vec<_> = (0..100)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                loop {
                    let (status, body) = poll(&http, &base, version, "greedy").await;
                    if !refused_for_vm_limit(status, &body) {
                        return (status, body);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    let (status, body) = wait_for("a poll of the same VM to be refused", async || {
        let (status, body) = poll(&http, &base, 0, "greedy").await;
        (status == 429 && !refused_for_vm_limit(status, &body))
            .then(|| (status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await;
    assert!(body.contains("MAX_POLLS_PER_VM = 4"), "{status}: {body}");
    for poll in &same_vm {
        poll.abort();
    }

    let rss_after = rss_kb(pid);
    let log_after = log_bytes(&revgate);
    let growth = rss_after.saturating_sub(rss_before);
    println!(
        "control plane RSS: {rss_before} kB before the flood, {rss_held} kB with the long-polls held, \
         {rss_after} kB after (+{growth} kB); log +{} bytes",
        log_after - log_before
    );
    let flood_log =
        revgate.process.log().get(usize::try_from(log_before).unwrap_or(0)..).unwrap_or_default().to_owned();
    println!("the control plane's log during the flood:\n{flood_log}");
    assert!(growth < MAX_RSS_GROWTH_KB, "RSS grew by {growth} kB under the flood");
    assert!(log_after - log_before <= MAX_LOG_GROWTH_BYTES, "the log grew by {} bytes", log_after - log_before);
    assert!(revgate.activity("made-up-1").await.is_none(), "nothing is kept for made-up revisions");

    // Oversized messages and ids are refused, naming the limit.
    // (On a client of its own: the server closes a connection whose request
    // body it did not read, and a pooled connection would fail the next call.)
    let own_client = reqwest::Client::new();
    let (status, body) = post(&own_client, &format!("{base}{}", paths::ACTIVATE), vec![0; 2 * 1024 * 1024]).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("MAX_MESSAGE_BYTES = 1048576"), "{body}");
    let (status, body) = poll(&http, &base, 0, &"n".repeat(1000)).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("node is 1000 bytes") && body.contains("MAX_ID_BYTES = 512"), "{body}");

    // The real gateway still cold-starts its revision.
    let backend = Backend::start("cold-backend").await;
    let client = envoy.client();
    let request = tokio::spawn(async move { client.get(HOST, "/").await });
    wait_for("the held request's activation", async || {
        let activity = revgate.activity(REVISION).await?;
        (activity.get("activations")?.as_u64()? >= 1).then_some(())
    })
    .await;
    assert!(!request.is_finished(), "the request is held while the revision has no endpoint");
    revgate.set_endpoints(REVISION, &[backend.addr]).await;
    let reply = request.await.expect("request task");
    assert_eq!((reply.status, reply.body.as_str()), (200, "cold-backend"), "{reply:?}");
    let row: Value = revgate.activity(REVISION).await.expect("activity of the real revision");
    println!("the real revision after the flood: {row}");
}
