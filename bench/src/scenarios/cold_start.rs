//! Scenario 2, cold-start overhead: what revgate adds to the first request of a
//! revision at zero scale, beyond the backend's own start.
//!
//! `revgate up` (process runtime, Envoy with the filter) runs Services whose
//! program is this binary's `backend`, which waits a known time (0 and 200
//! ms) before it listens. Every Service starts at zero
//! (`initial-scale: 0`), and each cycle sends one request to a Service not
//! yet used, so every measured request is a true cold start: held by the
//! filter, activation, the runtime's spawn and readiness probe, endpoints
//! over xDS, release. revgate's share is the request's time minus the
//! backend's start-to-ready time as the runtime measured it.
//!
//! It runs twice: among 100 Services, then among 10,000 (the others never
//! requested), and reports the very first cold request after `revgate up`
//! is ready on its own.
//!
//! The baseline, in the same run, is the least any platform could do: this
//! driver spawns the same backend itself, connects every millisecond until
//! it listens, and sends the request directly.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Outcome, Size, host, service};
use crate::env::Tools;
use crate::gateway::Up;
use crate::process::{Process, free_port, unix_ms_now, wait_for};
use crate::report::{Figure, Goal, Row};
use crate::stats::Samples;

/// The backends' known start-to-listen delays.
const DELAYS_MS: [u64; 2] = [0, 200];
const IMAGE: &str = "example.com/slow-start";

/// One measured cold start.
#[derive(Debug, Clone, serde::Serialize)]
struct Cycle {
    delay_ms: u64,
    /// From sending the request to its whole answer.
    total_ms: f64,
    /// The backend's start to ready, as measured by whoever started it.
    backend_ms: f64,
    /// From sending the request to the instance's spawn.
    to_spawn_ms: f64,
}

impl Cycle {
    fn added_ms(&self) -> f64 {
        self.total_ms - self.backend_ms
    }
}

fn name(delay_ms: u64, cycle: usize) -> String {
    format!("cold-{delay_ms}ms-{cycle}")
}

pub async fn run(tools: &Tools, size: Size) -> anyhow::Result<Outcome> {
    let dir = tools.scenario_dir("cold-start")?;
    let cycles = size.pick(5, 50);
    // Services that are never requested, so that the cold starts happen
    // among 100 Services, then among 10,000: an endpoint change must not
    // cost in proportion to the world.
    let worlds = size.pick([0, 490], [0, 9_900]);

    let mut runs = Vec::new();
    for idle in worlds {
        let services = idle + cycles * DELAYS_MS.len();
        eprintln!("    {services} services");
        let world_dir = dir.join(format!("{services}-services"));
        std::fs::create_dir_all(&world_dir).with_context(|| format!("creating {}", world_dir.display()))?;
        let images = format!("{IMAGE}: [{:?}, backend]\n", tools.bench.display().to_string());
        let up = Up::start(tools, &world_dir, &manifests(cycles, idle), &images).await?;
        let measured = measure_gateway(&up, cycles).await;
        up.stop().await;
        runs.push((services, measured?));
    }

    let mut direct = Vec::new();
    for _ in 0..cycles {
        for delay in DELAYS_MS {
            direct.push(measure_direct(tools, &dir, delay).await?);
        }
    }

    let baseline = "direct spawn, no gateway";
    let mut rows = Vec::new();
    for (services, gateway) in &runs {
        for delay in DELAYS_MS {
            let pick = |cycles: &[Cycle], f: fn(&Cycle) -> f64| {
                Samples::new(cycles.iter().filter(|c| c.delay_ms == delay).map(f).collect())
            };
            let (added, added_direct) = (pick(gateway, Cycle::added_ms), pick(&direct, Cycle::added_ms));
            let (total, total_direct) = (pick(gateway, |c| c.total_ms), pick(&direct, |c| c.total_ms));
            let backend = pick(gateway, |c| c.backend_ms);
            rows.push(
                Row::new(
                    format!(
                        "{services} services, {delay} ms backend: added p50 (backend start-to-ready p50 {:.1} ms)",
                        backend.median()
                    ),
                    Figure::millis(added.median()),
                )
                .baseline(baseline, Figure::millis(added_direct.median())),
            );
            let p99 = Figure::millis(added.percentile(99.0));
            rows.push(
                Row::new(format!("{services} services, {delay} ms backend: added p99"), p99)
                    .baseline(baseline, Figure::millis(added_direct.percentile(99.0)))
                    .goal(Goal::at_most("≤ 10 ms p99 added", p99, " added", 10.0)),
            );
            rows.push(
                Row::new(
                    format!("{services} services, {delay} ms backend: first request, total p50"),
                    Figure::millis(total.median()),
                )
                .baseline(baseline, Figure::millis(total_direct.median())),
            );
        }
        // The first cold request a freshly started gateway sees: its filters'
        // first readiness view and the first activation are part of it.
        if let Some(first) = gateway.first() {
            let added = Figure::millis(first.added_ms());
            rows.push(
                Row::new(
                    format!(
                        "{services} services: the first request after `revgate up` is ready, added \
                         ({} ms backend; to spawn {:.1} ms)",
                        first.delay_ms, first.to_spawn_ms
                    ),
                    added,
                )
                .goal(Goal::at_most("≤ 10 ms added", added, " added", 10.0)),
            );
        }
    }

    let mut notes = vec![
        format!(
            "{cycles} cold starts per backend and world, each on a Service never used before (`initial-scale: 0`), \
             among {} Services in all (the others never requested, at zero); Envoy {} workers with the filter, \
             SotW xDS, as `revgate up` runs it. The first cycle starts as soon as `revgate up` printed its URLs.",
            runs.iter().map(|(services, _)| services.to_string()).collect::<Vec<_>>().join(", then "),
            crate::gateway::ENVOY_CONCURRENCY
        ),
        "Added = the request's time − the backend's start-to-ready time (`startedUnixMs` → `readyUnixMs` in \
         `GET /v1/instances`); the runtime's probe interval before the first readiness is 10 ms, so part of \
         the backend's figure is the probe's wait."
            .to_owned(),
    ];
    for (services, gateway) in &runs {
        let to_spawn = Samples::new(gateway.iter().map(|c| c.to_spawn_ms).collect());
        let after_ready = Samples::new(gateway.iter().map(|c| c.total_ms - c.to_spawn_ms - c.backend_ms).collect());
        notes.push(format!(
            "{services} services — from the request to the instance's spawn: p50 {:.1} ms, p99 {:.1} ms (hold, \
             activation, autoscaler poke, runtime; the Unix clocks of driver and runtime have ms resolution); from \
             the instance's readiness to the answer: p50 {:.1} ms, p99 {:.1} ms (endpoints published over xDS, \
             Envoy's ACK, the filters' readiness long-poll answered, the held request resumed and served).",
            to_spawn.median(),
            to_spawn.percentile(99.0),
            after_ready.median(),
            after_ready.percentile(99.0)
        ));
    }
    let raw = json!({
        "cycles": cycles,
        "worlds": runs.iter().map(|(services, gateway)| json!({ "services": services, "gateway": gateway })).collect::<Vec<_>>(),
        "direct": direct,
    });
    Ok(Outcome { rows, load_commands: Vec::new(), notes, raw })
}

/// The cold Services every cycle requests, after `idle` Services never
/// requested; all at zero until their first request.
fn manifests(cycles: usize, idle: usize) -> String {
    let mut manifests = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\n  namespace: knative-serving\n\
         data:\n  allow-zero-initial-scale: \"true\"\n",
    );
    let annotations = [("autoscaling.knative.dev/initial-scale", "0".to_owned())];
    let container = |delay: u64| format!("image: {IMAGE}:v1\n        args: [\"--listen-delay-ms\", \"{delay}\"]");
    for i in 0..idle {
        manifests.push_str(&service(&format!("idle-{i}"), &annotations, &container(0)));
    }
    for cycle in 0..cycles {
        for delay in DELAYS_MS {
            manifests.push_str(&service(&name(delay, cycle), &annotations, &container(delay)));
        }
    }
    manifests
}

/// One request per unused Service, alternating the delays.
async fn measure_gateway(up: &Up, cycles: usize) -> anyhow::Result<Vec<Cycle>> {
    let url = format!("http://127.0.0.1:{}/", up.http_port);
    let mut measured = Vec::new();
    for cycle in 0..cycles {
        for delay in DELAYS_MS {
            let service = name(delay, cycle);
            let revision = format!("{service}-00001");
            if up.admin.ready(&revision).await? != 0 {
                bail!("{revision} is not at zero before its first request");
            }
            // A new connection per request, as a first visitor's.
            let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
            let sent_unix = unix_ms_now();
            let sent = Instant::now();
            let response = client.get(&url).header("host", host(&service)).send().await?;
            let status = response.status();
            let body = response.text().await?;
            let total_ms = sent.elapsed().as_secs_f64() * 1e3;
            if !status.is_success() || !body.contains("start_to_listen_ms") {
                bail!("the cold request for {service} answered {status}: {body}");
            }
            let instances = up.admin.instances(&revision).await?;
            let instance = &instances["instances"][0];
            let (started, ready) = (instance["startedUnixMs"].as_f64(), instance["readyUnixMs"].as_f64());
            let (Some(started), Some(ready)) = (started, ready) else {
                bail!("the runtime reports no start and ready times for {revision}: {instances}");
            };
            measured.push(Cycle {
                delay_ms: delay,
                total_ms,
                backend_ms: ready - started,
                to_spawn_ms: started - sent_unix,
            });
            // Let the instance's scale-up settle before the next cold start.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(measured)
}

/// The least a platform could do: spawn, wait for the port, request.
async fn measure_direct(tools: &Tools, dir: &std::path::Path, delay_ms: u64) -> anyhow::Result<Cycle> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut command = Command::new(&tools.bench);
    command.args(["backend", "--listen-delay-ms", &delay_ms.to_string()]).env("PORT", port.to_string());
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let started = Instant::now();
    let mut process = Process::spawn("backend", command, dir.join("direct-backend.log"))?;
    wait_for("the directly started backend to listen", Duration::from_millis(1), async || {
        process.check_running()?;
        Ok(tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()))
    })
    .await?;
    let listening_ms = started.elapsed().as_secs_f64() * 1e3;
    let body: Value = client.get(format!("http://{addr}/")).send().await?.json().await.context("backend answer")?;
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    if body.get("start_to_listen_ms").is_none() {
        bail!("unexpected backend answer {body}");
    }
    process.kill();
    Ok(Cycle { delay_ms, total_ms, backend_ms: listening_ms, to_spawn_ms: 0.0 })
}
