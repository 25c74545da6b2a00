//! Scenario 4, xDS scale: thousands of Services, each with two revisions
//! and a 50/50 split, applied to one control plane with Envoy connected;
//! then one route change at a time among them. Two Envoys are connected to
//! the same control plane at once, one over state-of-the-world ADS and one
//! over delta ADS, so both see every apply at the same moment.
//!
//! - Full configuration: from the first apply until Envoy has ACKed the
//!   whole published snapshot (ACK times from `GET /v1/gateway`). The
//!   Services are applied in two passes through the admin API, as a user
//!   would: first every Service (revision 1), then every Service with a new
//!   template and a split between revision 1 and revision 2; each pass in
//!   requests of at most [`SERVICES_PER_REQUEST`] Services.
//! - One change: a single Service's split moves (50/50 → 40/60 …); from
//!   sending the apply to Envoy's ACK of the new routes, and the bytes Envoy
//!   received on its xDS connection meanwhile
//!   (`cluster.revgate-xds.upstream_cx_rx_bytes_total` in Envoy's stats:
//!   gRPC and HTTP/2 framing included).
//! - Control-plane memory: revgate's VmRSS (and peak) after all of it.
//!
//! The baseline, in the same run: Envoy loading the same configuration from
//! a file (`revgate render envoy -f` of the same manifests), from start to
//! live; and, for a change, state-of-the-world next to delta.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use super::{Outcome, Size};
use crate::env::Tools;
use crate::gateway::{Envoy, Serve};
use crate::process::{free_port, unix_ms_now};
use crate::report::{Figure, Goal, Row};
use crate::stats::Samples;

/// Services per `POST /v1/apply`: the admin API takes bodies up to 2 MB.
const SERVICES_PER_REQUEST: usize = 2_000;
/// Every revision's endpoint (nothing is sent to it).
const ENDPOINT: &str = "127.0.0.1:9";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Api {
    Sotw,
    Delta,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Self::Sotw => "state of the world",
            Self::Delta => "delta",
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct Measured {
    services: usize,
    api: Api,
    /// First apply sent → last apply answered.
    apply_ms: f64,
    /// First apply sent → Envoy ACKed everything.
    full_ms: f64,
    full_bytes: u64,
    change_ms: Vec<f64>,
    change_bytes: Vec<u64>,
    revgate_rss: u64,
    revgate_peak_rss: u64,
    envoy_rss: u64,
}

pub async fn run(tools: &Tools, size: Size) -> anyhow::Result<Outcome> {
    let dir = tools.scenario_dir("xds")?;
    let changes = size.pick(5, 30);
    let mut measured = Vec::new();
    let mut static_ms = Vec::new();
    for services in size.pick(vec![500], vec![1_000, 10_000]) {
        let passes = manifests(services);
        let sub = dir.join(services.to_string());
        std::fs::create_dir_all(&sub)?;
        eprintln!("    {services} services…");
        measured.extend(measure(tools, &sub, &passes, services, changes).await?);
        static_ms.push((services, load_from_file(tools, &dir, &passes, services).await?));
    }

    let mut rows = Vec::new();
    for (services, file_ms) in &static_ms {
        let of = |api: Api| measured.iter().find(|m| m.services == *services && m.api == api);
        let (Some(sotw), Some(delta)) = (of(Api::Sotw), of(Api::Delta)) else { bail!("missing measurements") };
        for m in [sotw, delta] {
            rows.push(
                Row::new(
                    format!(
                        "{services} services, {}: apply → Envoy ACKed all (apply alone {:.1} s)",
                        m.api.name(),
                        m.apply_ms / 1e3
                    ),
                    Figure::seconds(m.full_ms / 1e3),
                )
                .baseline("Envoy loading the same config from a file", Figure::seconds(file_ms / 1e3)),
            );
        }
        let (d, s) = (Samples::new(delta.change_ms.clone()), Samples::new(sotw.change_ms.clone()));
        let p99 = Figure::millis(d.percentile(99.0));
        let row = Row::new(format!("{services} services, one route change, delta: apply → ACK p99"), p99)
            .baseline("state of the world", Figure::millis(s.percentile(99.0)));
        rows.push(if *services >= 10_000 {
            row.goal(Goal::at_most("≤ 100 ms p99 (delta)", p99, "", 100.0))
        } else {
            row
        });
        rows.push(
            Row::new(
                format!("{services} services, one route change, delta: apply → ACK p50"),
                Figure::millis(d.median()),
            )
            .baseline("state of the world", Figure::millis(s.median())),
        );
        let change_bytes = |m: &Measured| Samples::new(m.change_bytes.iter().map(|b| *b as f64).collect()).median();
        // Proportional to the change: no more than a few Services' share of the whole configuration.
        let per_service = delta.full_bytes as f64 / *services as f64;
        let bytes = Figure::bytes(change_bytes(delta));
        rows.push(
            Row::new(
                format!(
                    "{services} services, one route change, delta: bytes to Envoy (whole config {})",
                    Figure::bytes(delta.full_bytes as f64)
                ),
                bytes,
            )
            .baseline("state of the world", Figure::bytes(change_bytes(sotw)))
            .goal(Goal::at_most(
                format!("proportional to the change (≤ 10 Services' share, {})", Figure::bytes(10.0 * per_service)),
                bytes,
                "",
                10.0 * per_service,
            )),
        );
        let rss = Figure::bytes(sotw.revgate_rss.max(delta.revgate_rss) as f64);
        let row = Row::new(format!("{services} services: control-plane resident memory"), rss);
        rows.push(if *services >= 10_000 {
            row.goal(Goal::at_most("≤ 200 MB at 10,000", rss, "", 200e6))
        } else {
            row
        });
    }
    let notes = vec![
        format!(
            "Each Service: two revisions (a new template applied over the first) split 50/50, endpoints given by \
             annotation; so N Services make 2N clusters and N virtual hosts. Applied in requests of at most \
             {SERVICES_PER_REQUEST} Services (the admin API's 2 MB body limit)."
        ),
        format!(
            "{changes} route changes per run, one Service at a time, each after the previous was ACKed; p99 of so \
             few is close to their maximum. Bytes are what Envoy read on its xDS connection (gRPC/HTTP/2 framing \
             included); the control plane has no bytes-sent counter of its own."
        ),
        "Reference figures from elsewhere (not measured here): istiod ~1.5 GB for 1,000 services; Envoy Gateway \
         ~23 s to settle 1,000 routes."
            .to_owned(),
    ];
    let raw = json!({ "runs": measured, "static_file_ms": static_ms });
    Ok(Outcome { rows, load_commands: Vec::new(), notes, raw })
}

/// Two passes of manifests (each a list of files of at most
/// [`SERVICES_PER_REQUEST`] Services): revision 1, then revision 2 with the split.
fn manifests(services: usize) -> [Vec<(String, String)>; 2] {
    let pass = |second: bool| {
        (0..services)
            .collect::<Vec<_>>()
            .chunks(SERVICES_PER_REQUEST)
            .enumerate()
            .map(|(chunk, indexes)| {
                let text: String = indexes.iter().map(|i| service(*i, second, 50)).collect();
                (format!("pass{}-{chunk}.yaml", u8::from(second) + 1), text)
            })
            .collect()
    };
    [pass(false), pass(true)]
}

/// Service `s-<i>`; in the second pass with template v2 and `percent` to revision 1.
fn service(i: usize, second: bool, percent: u32) -> String {
    let version = if second { 2 } else { 1 };
    let traffic = if second {
        format!(
            "  traffic:\n  - revisionName: s-{i}-00001\n    percent: {percent}\n  - latestRevision: true\n    percent: {}\n",
            100 - percent
        )
    } else {
        String::new()
    };
    format!(
        "---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: s-{i}\n  namespace: default\nspec:\n  \
         template:\n    metadata:\n      annotations:\n        revgate.dev/endpoints: \"{ENDPOINT}\"\n    spec:\n      \
         containers:\n      - image: example.com/app:v{version}\n{traffic}"
    )
}

/// One control plane with two Envoys connected, one per API: both see the
/// same applies at the same moment, so neither is favoured by background noise.
async fn measure(
    tools: &Tools,
    dir: &Path,
    passes: &[Vec<(String, String)>; 2],
    services: usize,
    changes: usize,
) -> anyhow::Result<Vec<Measured>> {
    let serve = Serve::start(tools, dir, false).await?;
    let mut envoys = Vec::new();
    for api in [Api::Sotw, Api::Delta] {
        let envoy = serve.envoy(tools, dir, &format!("gateway-{api:?}").to_lowercase(), api == Api::Delta).await?;
        serve.admin.wait_listening(&envoy.node_id).await?;
        let bytes_at_start = envoy.xds_bytes_received().await?;
        envoys.push((api, envoy, bytes_at_start));
    }

    let started_unix = unix_ms_now();
    let started = Instant::now();
    for pass in passes {
        for file in pass {
            serve.admin.apply(std::slice::from_ref(file)).await.with_context(|| format!("applying {}", file.0))?;
        }
    }
    let apply_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut measured = Vec::new();
    for (api, envoy, bytes_at_start) in &envoys {
        let full_ms = serve.admin.wait_acked(&envoy.node_id).await? - started_unix;
        eprintln!(
            "      {}: applied in {:.1} s, ACKed {:.1} s after the first apply",
            api.name(),
            apply_ms / 1e3,
            full_ms / 1e3
        );
        measured.push(Measured {
            services,
            api: *api,
            apply_ms,
            full_ms,
            full_bytes: settled_bytes(envoy).await? - bytes_at_start,
            change_ms: Vec::new(),
            change_bytes: Vec::new(),
            revgate_rss: 0,
            revgate_peak_rss: 0,
            envoy_rss: 0,
        });
    }

    for k in 0..changes {
        let i = (k * 7919) % services;
        let percent = if k % 2 == 0 { 40 } else { 60 };
        let mut before = Vec::new();
        for (_, envoy, _) in &envoys {
            before.push(envoy.xds_bytes_received().await?);
        }
        let sent = unix_ms_now();
        serve.admin.apply(&[(format!("change-{k}.yaml"), service(i, true, percent))]).await?;
        // Both ACK times first, then the bytes: reading one Envoy's byte
        // counter costs its main thread about half a second of CPU at 10,000
        // Services (`/stats?filter=` walks its 1.3 million statistics), so
        // polling it until it settles while the other Envoy was still
        // applying the change starved that one of a core and delayed its ACK.
        for ((_, envoy, _), m) in envoys.iter().zip(&mut measured) {
            m.change_ms.push(serve.admin.wait_acked(&envoy.node_id).await? - sent);
        }
        for (((_, envoy, _), m), before) in envoys.iter().zip(&mut measured).zip(before) {
            m.change_bytes.push(settled_bytes(envoy).await? - before);
        }
    }
    for ((_, envoy, _), m) in envoys.iter().zip(&mut measured) {
        m.revgate_rss = serve.process.rss_bytes()?;
        m.revgate_peak_rss = serve.process.peak_rss_bytes()?;
        m.envoy_rss = envoy.process.rss_bytes()?;
    }
    Ok(measured)
}

/// Envoy's xDS byte counter once it stopped moving (the ACK can be seen
/// before the last bytes of a response are counted).
async fn settled_bytes(envoy: &Envoy) -> anyhow::Result<u64> {
    let mut last = envoy.xds_bytes_received().await?;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = envoy.xds_bytes_received().await?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
}

/// Starts Envoy on a static bootstrap of the same manifests and times it
/// from start to live.
async fn load_from_file(
    tools: &Tools,
    dir: &Path,
    passes: &[Vec<(String, String)>; 2],
    services: usize,
) -> anyhow::Result<f64> {
    let sub = dir.join(format!("{services}-file"));
    std::fs::create_dir_all(&sub)?;
    let mut files = Vec::new();
    for (name, content) in passes.iter().flatten() {
        let path = sub.join(name);
        std::fs::write(&path, content)?;
        files.push(path);
    }
    let (admin_port, http_port) = (free_port()?, free_port()?);
    let out = Command::new(&tools.revgate)
        .args(["render", "envoy", "--admin-port", &admin_port.to_string(), "--http-port", &http_port.to_string(), "-f"])
        .args(&files)
        .output()
        .context("running revgate render envoy -f")?;
    if !out.status.success() {
        bail!("revgate render envoy -f: {}", String::from_utf8_lossy(&out.stderr));
    }
    let bootstrap = sub.join("envoy-static.yaml");
    std::fs::write(&bootstrap, &out.stdout)?;
    let started = Instant::now();
    let mut envoy = Envoy::start(tools, &sub, &bootstrap, admin_port, http_port, "static").await?;
    envoy.wait_live().await?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}
