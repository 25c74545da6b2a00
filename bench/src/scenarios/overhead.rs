//! Scenario 1, data-plane overhead: what revgate's filter adds to a request for a
//! warm revision.
//!
//! Two gateways, identical but for the filter: each is a `revgate serve`
//! programming its own Envoy (same binary, same workers) with two Services
//! whose revisions point at the same fast upstream: one plain, which the
//! filter gateway serves through the warm path once it settled (no filter
//! on its route), one with `containerConcurrency`, which keeps the filter.
//! (a) runs without the filter, (b) with it. Per revision, each round
//! measures both back to back, first closed loop (peak throughput), then at
//! a fixed rate of 10% of (a)'s peak on the plain revision, with latency
//! correction; the figures are medians over rounds, so that background
//! noise hits both sides alike.

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
/// The same upstream behind a revision with `containerConcurrency`, which
/// keeps the filter on every request (it is what throttles).
const THROTTLED: &str = "echo-cc";
const CONTAINER_CONCURRENCY: u32 = 1000;
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

/// One revision measured through both gateways.
struct Measured {
    rate: u64,
    peaks: [Vec<OhaReport>; 2],
    steady: [Vec<OhaReport>; 2],
}

impl Measured {
    fn peak(&self, i: usize) -> f64 {
        Samples::new(self.peaks[i].iter().map(|r| r.ok_per_sec).collect()).median()
    }

    fn latency(&self, i: usize, p: &str) -> f64 {
        Samples::new(self.steady[i].iter().map(|r| r.p(p)).collect()).median()
    }

    /// The rows of this revision: latency added at the fixed rate, and peak
    /// throughput against bare Envoy's; `what` names the revision's kind.
    fn rows(&self, what: &str, bare: &str) -> Vec<Row> {
        let mut rows = Vec::new();
        let goals = [("p50", Some(30.0)), ("p99", Some(100.0)), ("p99.9", None)];
        for (p, limit) in goals {
            let (plain, filtered) = (self.latency(0, p), self.latency(1, p));
            let added = Figure::micros(filtered - plain);
            let row = Row::new(
                format!("{what}: {p} latency at {} req/s (fixed rate; {added} added)", self.rate),
                Figure::micros(filtered),
            )
            .baseline(bare, Figure::micros(plain));
            rows.push(match limit {
                Some(limit) => row.goal(Goal::at_most(format!("≤ {limit:.0} µs added"), added, " added", limit)),
                None => row,
            });
        }
        let (bare_peak, filter_peak) = (self.peak(0), self.peak(1));
        let share = if bare_peak > 0.0 { filter_peak / bare_peak * 100.0 } else { 0.0 };
        rows.push(
            Row::new(
                format!("{what}: peak throughput, closed loop, {CONNECTIONS} connections"),
                Figure::rps(filter_peak),
            )
            .baseline(bare, Figure::rps(bare_peak))
            .goal(Goal::at_least("≥ 97% of bare Envoy", Figure::percent(share), " of bare", 97.0)),
        );
        rows
    }

    fn errors(&self) -> u64 {
        self.steady.iter().chain(self.peaks.iter()).flatten().map(OhaReport::not_ok).sum()
    }
}

/// Which gateway runs first in round `round`: bare, filter, then filter,
/// bare, and so on, so that a drift over the run (the machine warming up or
/// a neighbour's load easing) favours neither side.
fn round_order(round: usize) -> [usize; 2] {
    if round.is_multiple_of(2) { [0, 1] } else { [1, 0] }
}

pub async fn run(tools: &Tools, size: Size) -> anyhow::Result<Outcome> {
    let dir = tools.scenario_dir("overhead")?;
    let (_upstream, upstream) = start_upstream(tools, &dir).await?;
    let endpoints = [("revgate.dev/endpoints", upstream.to_string())];
    let throttled = format!("image: example.com/echo:v1\n      containerConcurrency: {CONTAINER_CONCURRENCY}");
    let manifests = vec![
        ("echo.yaml".to_owned(), service(SERVICE, &endpoints, "image: example.com/echo:v1")),
        ("echo-cc.yaml".to_owned(), service(THROTTLED, &endpoints, &throttled)),
    ];

    let mut gateways = Vec::new();
    for (name, filter) in [("bare Envoy", false), ("Envoy + revgate filter", true)] {
        let sub = dir.join(if filter { "filter" } else { "bare" });
        std::fs::create_dir_all(&sub)?;
        let serve = Serve::start(tools, &sub, filter).await?;
        let envoy = serve.envoy(tools, &sub, "gateway", false).await?;
        serve.admin.apply(&manifests).await?;
        serve.admin.wait_acked(&envoy.node_id).await?;
        if filter {
            serve.admin.wait_filters(&envoy.node_id, u64::from(crate::gateway::ENVOY_CONCURRENCY)).await?;
        }
        envoy.wait_serving(&host(SERVICE)).await?;
        envoy.wait_serving(&host(THROTTLED)).await?;
        if filter {
            // The warm revision settles into the warm path: no filter on its route.
            envoy.wait_filter_disabled(&host(SERVICE)).await?;
        }
        gateways.push(Gateway { name, _serve: serve, envoy });
    }

    let (saturate, fixed, rounds) = size.pick(
        (Duration::from_secs(3), Duration::from_secs(5), 1),
        (Duration::from_secs(10), Duration::from_secs(20), 3),
    );
    let oha = |g: &Gateway, service: &str| {
        Oha::new(&tools.oha, &format!("http://127.0.0.1:{}/", g.envoy.http_port), &host(service))
    };

    // Warm both: connections, Envoy's and the filter's first-use paths.
    for g in &gateways {
        for service in [SERVICE, THROTTLED] {
            oha(g, service).closed_loop(Duration::from_secs(1), CONNECTIONS).run().await?;
        }
    }

    let mut measured = Vec::new();
    let mut rate = 0;
    for service in [SERVICE, THROTTLED] {
        let mut peaks: [Vec<OhaReport>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for i in round_order(round) {
                peaks[i].push(oha(&gateways[i], service).closed_loop(saturate, CONNECTIONS).run().await?);
            }
        }
        if rate == 0 {
            // One fixed rate for both revisions: 10% of bare Envoy's peak on the first.
            let bare = Samples::new(peaks[0].iter().map(|r| r.ok_per_sec).collect()).median();
            rate = (bare * RATE_SHARE).round().max(100.0) as u64;
        }
        let mut steady: [Vec<OhaReport>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for i in round_order(round) {
                steady[i].push(oha(&gateways[i], service).fixed_rate(fixed, CONNECTIONS, rate).run().await?);
            }
        }
        measured.push(Measured { rate, peaks, steady });
    }

    let bare = gateways[0].name;
    let mut rows = measured[0].rows("warm revision (warm path, no filter on its route)", bare);
    rows.extend(
        measured[1].rows(&format!("warm revision with containerConcurrency {CONTAINER_CONCURRENCY} (filter on)"), bare),
    );

    let errors: u64 = measured.iter().map(Measured::errors).sum();
    let notes = vec![
        format!(
            "Upstream: this suite's Rust server (axum, one worker thread) on loopback; Envoy {} workers in both; \
             {rounds} round(s), each gateway going first in turn, medians shown; fixed rate = {:.0}% of bare Envoy's peak.",
            crate::gateway::ENVOY_CONCURRENCY,
            RATE_SHARE * 100.0
        ),
        format!(
            "Two revisions on the same upstream: `{SERVICE}` (no `containerConcurrency`), measured once the \
             control plane serves its route without the filter (the warm path), and `{THROTTLED}` \
             (`containerConcurrency: {CONTAINER_CONCURRENCY}`, never reached here), whose route keeps the filter."
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
        "warm_path": { "peak": { "bare": measured[0].peaks[0], "filter": measured[0].peaks[1] },
                       "fixed_rate": { "bare": measured[0].steady[0], "filter": measured[0].steady[1] } },
        "container_concurrency": { "peak": { "bare": measured[1].peaks[0], "filter": measured[1].peaks[1] },
                       "fixed_rate": { "bare": measured[1].steady[0], "filter": measured[1].steady[1] } },
    });
    Ok(Outcome { rows, load_commands, notes, raw })
}
