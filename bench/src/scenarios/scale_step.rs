//! Scenario 6, scale under a step: from zero to C concurrent clients at once against
//! Knative's autoscale sample (`?sleep=100`, `autoscaling.knative.dev/target:
//! 10`), run by `revgate up` as local processes behind Envoy and the filter.
//!
//! Measured: the time from the step until C ÷ target instances are ready
//! (what the load needs at the target), the most instances seen, and every
//! answer that was not a 200. The clients are `oha` in closed loop; ready
//! instances are read from `GET /v1/instances` every 50 ms.
//!
//! The baseline, in the same run: Knative's KPA rules replayed on the same
//! step by `revgate autoscaler simulate`, with the instance start time
//! measured here: how long the rules alone take, with no process, gateway
//! or network delay.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use super::{Outcome, Size, host, service};
use crate::env::Tools;
use crate::gateway::Up;
use crate::load::{Oha, OhaReport};
use crate::report::{Figure, Goal, Row};
use crate::stats::Samples;

const SERVICE: &str = "autoscale";
const REVISION: &str = "autoscale-00001";
const TARGET: usize = 10;
const IMAGE: &str = "ghcr.io/knative/autoscale-go";

pub async fn run(tools: &Tools, size: Size) -> anyhow::Result<Outcome> {
    let dir = tools.scenario_dir("step")?;
    let (clients, duration): (usize, Duration) =
        size.pick((50, Duration::from_secs(12)), (200, Duration::from_secs(30)));
    let enough = clients.div_ceil(TARGET);
    let manifests = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\n  namespace: knative-serving\n\
         data:\n  allow-zero-initial-scale: \"true\"\n{}",
        service(
            SERVICE,
            &[
                ("autoscaling.knative.dev/target", TARGET.to_string()),
                ("autoscaling.knative.dev/initial-scale", "0".to_owned()),
            ],
            &format!("image: {IMAGE}:latest"),
        )
    );
    let images = format!("{IMAGE}: {:?}\n", tools.autoscale.display().to_string());
    let up = Up::start(tools, &dir, &manifests, &images).await?;
    let measured = step(tools, &up, clients, duration, enough).await;
    up.stop().await;
    let Stepped { reached, most, timeline, report, start_ms } = measured?;

    let pod_start_ms = start_ms.median().round() as u64;
    let simulated = simulate(tools, &dir, clients, duration, enough, pod_start_ms)?;
    let errors = report.not_ok();

    let mut rows = Vec::new();
    let reached_figure = Figure::seconds(reached.map_or(f64::NAN, |d| d.as_secs_f64()));
    let mut row = Row::new(
        format!("0 → {clients} clients: time until {enough} instances are ready (most seen {most})"),
        reached_figure,
    );
    if let Some(seconds) = simulated {
        row = row.baseline(format!("KPA rules simulated, {pod_start_ms} ms start"), Figure::seconds(seconds));
    }
    rows.push(row);
    rows.push(
        Row::new(format!("0 → {clients} clients: answers other than 200"), Figure::count(errors as f64))
            .goal(Goal::at_most("no errors", Figure::count(errors as f64), "", 0.0)),
    );
    rows.push(Row::new(format!("0 → {clients} clients: requests answered 200"), Figure::count(report.ok() as f64)));
    let mut notes = vec![
        format!(
            "`revgate up`, Knative's defaults but `initial-scale: 0` (60 s stable window, 6 s panic window, 2 s \
             tick); {clients} clients in closed loop for {} s, each request sleeping 100 ms in the app.",
            duration.as_secs()
        ),
        format!(
            "Instance start to ready (the runtime's measure): p50 {:.1} ms over {} instances.",
            start_ms.median(),
            start_ms.len()
        ),
    ];
    if reached.is_none() {
        notes.push(format!("{enough} instances were never ready during the {} s run.", duration.as_secs()));
    }
    if errors > 0 {
        notes.push(format!("Non-200 answers: statuses {:?}, errors {:?}.", report.statuses, report.errors));
    }
    let raw = json!({
        "clients": clients,
        "enough": enough,
        "reached_s": reached.map(|d| d.as_secs_f64()),
        "most_ready": most,
        "timeline": timeline,
        "oha": report,
        "simulated_s": simulated,
        "pod_start_ms": pod_start_ms,
    });
    let command = Oha::new(&tools.oha, "http://127.0.0.1:$GATEWAY_PORT/?sleep=100", &host(SERVICE))
        .closed_loop(duration, clients);
    Ok(Outcome { rows, load_commands: vec![command.display()], notes, raw })
}

/// What the step produced.
struct Stepped {
    /// From the step until `enough` instances were ready, if they ever were.
    reached: Option<Duration>,
    most: usize,
    /// (seconds since the step, ready instances) at every change.
    timeline: Vec<(f64, usize)>,
    report: OhaReport,
    /// Each instance's start to ready, as the runtime measured it.
    start_ms: Samples,
}

async fn step(tools: &Tools, up: &Up, clients: usize, duration: Duration, enough: usize) -> anyhow::Result<Stepped> {
    if up.admin.ready(REVISION).await? != 0 {
        bail!("{REVISION} is not at zero before the step");
    }
    let url = format!("http://127.0.0.1:{}/?sleep=100", up.http_port);
    let oha = Oha::new(&tools.oha, &url, &host(SERVICE)).closed_loop(duration, clients);
    let load = {
        let oha = oha.clone();
        tokio::spawn(async move { oha.run().await })
    };
    let stepped = Instant::now();
    let mut reached = None;
    let mut most = 0;
    let mut timeline = Vec::new();
    while !load.is_finished() {
        let ready = up.admin.ready(REVISION).await?;
        let at = stepped.elapsed();
        if timeline.last().is_none_or(|(_, last)| *last != ready) {
            timeline.push((at.as_secs_f64(), ready));
        }
        most = most.max(ready);
        if ready >= enough && reached.is_none() {
            reached = Some(at);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = load.await??;
    let instances = up.admin.instances(REVISION).await?;
    let start_ms = Samples::new(
        instances["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| Some(i["readyUnixMs"].as_f64()? - i["startedUnixMs"].as_f64()?))
            .collect(),
    );
    Ok(Stepped { reached, most, timeline, report, start_ms })
}

/// `revgate autoscaler simulate` of the same step: the first second with
/// `enough` instances ready, if any.
fn simulate(
    tools: &Tools,
    dir: &std::path::Path,
    clients: usize,
    duration: Duration,
    enough: usize,
    pod_start_ms: u64,
) -> anyhow::Result<Option<f64>> {
    let trace = dir.join("step-trace.txt");
    let seconds = duration.as_secs() as usize;
    std::fs::write(&trace, vec![clients.to_string(); seconds].join("\n"))?;
    let out = Command::new(&tools.revgate)
        .args(["autoscaler", "simulate", "--trace"])
        .arg(&trace)
        .args(["--annotations", &format!("target={TARGET},initial-scale=0")])
        .args(["--config", "allow-zero-initial-scale=true"])
        .args(["--pod-start-ms", &pod_start_ms.to_string()])
        .output()
        .context("running revgate autoscaler simulate")?;
    if !out.status.success() {
        bail!("revgate autoscaler simulate: {}", String::from_utf8_lossy(&out.stderr));
    }
    let csv = String::from_utf8_lossy(&out.stdout);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).with_context(|| format!("no {name} column"));
    let (t, ready) = (column("t_s")?, column("ready")?);
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let value = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        if let (Some(t), Some(ready)) = (value(t), value(ready))
            && ready >= enough as f64
        {
            return Ok(Some(t));
        }
    }
    Ok(None)
}
