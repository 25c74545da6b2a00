//! Scenario 1, data-plane overhead: what revgate's filter adds to a request for a
//! warm revision.
//!
//! Two gateways, identical but for the filter: each is a `revgate serve`
//! programming its own Envoy (same binary, same workers) with one Service
//! whose revision points at the same fast upstream. (a) runs without the
//! filter, (b) with it. Each round measures both back to back, first
//! closed loop (peak throughput), then at a fixed rate of 10% of (a)'s peak
//! with latency correction; the figures are medians over rounds, so that
//! background noise hits both sides alike.

use std::time::Duration;

use serde_json::json;

use super::{Outcome, Size, host, service};
use crate::env::Tools;
use crate::gateway::{Envoy, Serve};
use crate::load::{Oha, OhaReport};
use crate::report::{Figure, Goal, Row};
use crate::servers::start_upstream;
use crate::stats::Samples;

const SERVICE: &str = "echo";
/// Concurrent connections of the closed-loop and fixed-rate runs.
const CONNECTIONS: usize = 50;
/// The fixed rate as a share of bare Envoy's peak: real load, yet far from
/// saturation, so that latency is service time rather than queueing.
const RATE_SHARE: f64 = 0.1;

struct Gateway {
    name: &'static str,
    _serve: Serve,
    envoy: Envoy,
}

pub async fn run(tools: &Tools, size: Size) -> anyhow::Result<Outcome> {
    let dir = tools.scenario_dir("overhead")?;
    let (_upstream, upstream) = start_upstream(tools, &dir).await?;
    let manifest = service(SERVICE, &[("revgate.dev/endpoints", upstream.to_string())], "image: example.com/echo:v1");

    let mut gateways = Vec::new();
    for (name, filter) in [("bare Envoy", false), ("Envoy + revgate filter", true)] {
        let sub = dir.join(if filter { "filter" } else { "bare" });
        std::fs::create_dir_all(&sub)?;
        let serve = Serve::start(tools, &sub, filter).await?;
        let envoy = serve.envoy(tools, &sub, "gateway", false).await?;
        serve.admin.apply(&[("echo.yaml".to_owned(), manifest.clone())]).await?;
        serve.admin.wait_acked(&envoy.node_id).await?;
        if filter {
            serve.admin.wait_filters(&envoy.node_id, u64::from(crate::gateway::ENVOY_CONCURRENCY)).await?;
        }
        envoy.wait_serving(&host(SERVICE)).await?;
        gateways.push(Gateway { name, _serve: serve, envoy });
    }

    let (saturate, fixed, rounds) = size.pick(
        (Duration::from_secs(3), Duration::from_secs(5), 1),
        (Duration::from_secs(15), Duration::from_secs(30), 3),
    );
    let oha = |g: &Gateway| Oha::new(&tools.oha, &format!("http://127.0.0.1:{}/", g.envoy.http_port), &host(SERVICE));

    // Warm both: connections, Envoy's and the filter's first-use paths.
    for g in &gateways {
        oha(g).closed_loop(Duration::from_secs(1), CONNECTIONS).run().await?;
    }

    let mut peaks: [Vec<OhaReport>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, g) in gateways.iter().enumerate() {
            peaks[i].push(oha(g).closed_loop(saturate, CONNECTIONS).run().await?);
        }
    }
    let peak = |i: usize| Samples::new(peaks[i].iter().map(|r| r.ok_per_sec).collect()).median();
    let rate = (peak(0) * RATE_SHARE).round().max(100.0) as u64;

    let mut steady: [Vec<OhaReport>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, g) in gateways.iter().enumerate() {
            steady[i].push(oha(g).fixed_rate(fixed, CONNECTIONS, rate).run().await?);
        }
    }
    let latency = |i: usize, p: &str| Samples::new(steady[i].iter().map(|r| r.p(p)).collect()).median();

    let mut rows = Vec::new();
    let goals = [("p50", Some(30.0)), ("p99", Some(100.0)), ("p99.9", None)];
    for (p, limit) in goals {
        let (bare, filtered) = (latency(0, p), latency(1, p));
        let added = Figure::micros(filtered - bare);
        let row =
            Row::new(format!("{p} latency at {rate} req/s (fixed rate; {added} added)"), Figure::micros(filtered))
                .baseline(gateways[0].name, Figure::micros(bare));
        rows.push(match limit {
            Some(limit) => row.goal(Goal::at_most(format!("≤ {limit:.0} µs added"), added, " added", limit)),
            None => row,
        });
    }
    let (bare_peak, filter_peak) = (peak(0), peak(1));
    let share = if bare_peak > 0.0 { filter_peak / bare_peak * 100.0 } else { 0.0 };
    rows.push(
        Row::new(format!("peak throughput, closed loop, {CONNECTIONS} connections"), Figure::rps(filter_peak))
            .baseline(gateways[0].name, Figure::rps(bare_peak))
            .goal(Goal::at_least("≥ 97% of bare Envoy", Figure::percent(share), " of bare", 97.0)),
    );

    let errors: u64 = steady.iter().chain(peaks.iter()).flatten().map(OhaReport::not_ok).sum();
    let notes = vec![
        format!(
            "Upstream: this suite's Rust server (axum, one worker thread) on loopback; Envoy {} workers in both; \
             {rounds} alternating round(s), medians shown; fixed rate = {:.0}% of bare Envoy's peak.",
            crate::gateway::ENVOY_CONCURRENCY,
            RATE_SHARE * 100.0
        ),
        "Load generator, upstream and Envoy share the same cores, so peak throughput is the whole \
         machine's, not Envoy's alone; the ratio is what compares."
            .to_owned(),
        format!("Non-2xx answers or errors over all runs: {errors}."),
    ];
    let load_commands = vec![
        Oha::new(&tools.oha, "http://127.0.0.1:$GATEWAY_PORT/", &host(SERVICE))
            .closed_loop(saturate, CONNECTIONS)
            .display(),
        Oha::new(&tools.oha, "http://127.0.0.1:$GATEWAY_PORT/", &host(SERVICE))
            .fixed_rate(fixed, CONNECTIONS, rate)
            .display(),
    ];
    let raw = json!({
        "rate": rate,
        "rounds": rounds,
        "peak": { "bare": peaks[0], "filter": peaks[1] },
        "fixed_rate": { "bare": steady[0], "filter": steady[1] },
    });
    Ok(Outcome { rows, load_commands, notes, raw })
}
