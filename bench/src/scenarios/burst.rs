//! Scenario 3, burst while cold: N concurrent requests arrive at a revision with no
//! endpoints; the gateway holds them all, then releases them when the
//! backend is registered.
//!
//! `revgate serve --runtime external` with the filter and an Envoy; the
//! revision's backend (the fast upstream) is already listening, and is
//! registered with `PUT /v1/revisions/default/burst-00001/endpoints` once
//! every request is held (the filters' report says so). Measured: how many
//! answered 200, the time from that registration to the last answer, and
//! the growth of Envoy's and revgate's resident memory per held request.
//!
//! The baselines, in the same run, through a bare Envoy (no filter) with the
//! same clusters from the same control plane:
//! - the same N concurrent requests to the same backend, warm: the time for
//!   the gateway and backend to serve such a burst at all;
//! - the same N requests held open by the backend itself (`?hold`, answered
//!   from `GET /arm` until `GET /release`): what Envoy spends on an open request of its own,
//!   which the filter's hold adds to.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use super::{Outcome, Size, host, service};
use crate::env::Tools;
use crate::gateway::{Envoy, Serve};
use crate::load::{Burst, spawn_burst};
use crate::report::{Figure, Goal, Row};
use crate::servers::start_upstream;

const SERVICE: &str = "burst";
const REVISION: &str = "burst-00001";
/// Envoy's counters that tell why a released request failed: circuit
/// breakers, pending-queue overflow, connection failures, 5xx by origin.
const DIAGNOSTIC_STATS: &str = "overflow|rq_pending|cx_connect_fail|upstream_rq_5xx|downstream_rq_5xx|no_healthy|wasm";

#[derive(Debug, serde::Serialize)]
struct Measured {
    requests: usize,
    ok: usize,
    statuses: Vec<(u16, usize)>,
    first_error: Option<String>,
    /// Registration of the backend to the last answer.
    drain_ms: f64,
    /// Time for all N to be reported held.
    hold_ms: f64,
    envoy_rss_before: u64,
    envoy_rss_held: u64,
    revgate_rss_before: u64,
    revgate_rss_held: u64,
    /// The bare gateway, warm.
    warm_ok: usize,
    warm_ms: f64,
    warm_first_error: Option<String>,
    /// The bare gateway holding the N requests open against the upstream.
    bare_held_ok: usize,
    bare_rss_before: u64,
    bare_rss_held: u64,
    /// Envoy's counters that explain failures, after the drain.
    envoy_stats: Vec<String>,
}

impl Measured {
    fn per_held(&self, before: u64, after: u64) -> f64 {
        after.saturating_sub(before) as f64 / self.requests as f64
    }
}

pub async fn run(tools: &Tools, size: Size) -> anyhow::Result<Outcome> {
    let dir = tools.scenario_dir("burst")?;
    let (_upstream, upstream) = start_upstream(tools, &dir).await?;

    let cold_dir = dir.join("filter");
    std::fs::create_dir_all(&cold_dir)?;
    let serve = Serve::start(tools, &cold_dir, true).await?;
    let envoy = serve.envoy(tools, &cold_dir, "gateway", false).await?;
    serve.admin.apply(&[("burst.yaml".to_owned(), service(SERVICE, &[], "image: example.com/burst:v1"))]).await?;
    serve.admin.wait_acked(&envoy.node_id).await?;
    serve.admin.wait_filters(&envoy.node_id, u64::from(crate::gateway::ENVOY_CONCURRENCY)).await?;

    let warm_dir = dir.join("bare");
    std::fs::create_dir_all(&warm_dir)?;
    let bare = Serve::start(tools, &warm_dir, false).await?;
    let bare_envoy = bare.envoy(tools, &warm_dir, "gateway", false).await?;
    let warm_service =
        service(SERVICE, &[("revgate.dev/endpoints", upstream.to_string())], "image: example.com/burst:v1");
    bare.admin.apply(&[("burst.yaml".to_owned(), warm_service)]).await?;
    bare.admin.wait_acked(&bare_envoy.node_id).await?;
    bare_envoy.wait_serving(&host(SERVICE)).await?;

    let envoy_fd_limit = crate::process::open_files_limit(envoy.process.pid());
    let mut measured = Vec::new();
    for n in size.pick(vec![1_000], vec![1_000, 10_000]) {
        let m = burst(&serve, &envoy, &bare_envoy, upstream, n).await?;
        measured.push(m);
    }

    let mut rows = Vec::new();
    for m in &measured {
        let n = m.requests;
        let success = m.ok as f64 / n as f64 * 100.0;
        rows.push(
            Row::new(format!("{n} held: answered 200"), Figure::percent(success))
                .baseline("bare Envoy, warm", Figure::percent(m.warm_ok as f64 / n as f64 * 100.0))
                .goal(Goal::at_least("100% success", Figure::percent(success), "", 100.0)),
        );
        let drain = Figure::seconds(m.drain_ms / 1e3);
        let row = Row::new(format!("{n} held: backend registered → last answer (of any status)"), drain)
            .baseline("same burst, bare Envoy, warm", Figure::seconds(m.warm_ms / 1e3));
        rows.push(match n {
            ..10_000 => row,
            _ if m.ok < n => row.goal(Goal::missed(
                "≤ 1 s to drain 10,000",
                format!("{drain} to the last answer"),
                format!("only {success:.1}% answered 200"),
            )),
            _ => row.goal(Goal::at_most("≤ 1 s to drain 10,000", drain, "", 1.0)),
        });
        let per_held = m.per_held(m.envoy_rss_before, m.envoy_rss_held);
        let bare_per_held = m.per_held(m.bare_rss_before, m.bare_rss_held);
        let above = per_held - bare_per_held;
        rows.push(
            Row::new(format!("{n} held: Envoy memory per held request"), Figure::bytes(per_held))
                .baseline("bare Envoy, per request held open by the upstream", Figure::bytes(bare_per_held))
                .goal(Goal::at_most(
                    "≤ 1 KiB above bare Envoy's open request",
                    Figure::bytes(above),
                    " above bare",
                    1024.0,
                )),
        );
        rows.push(Row::new(
            format!("{n} held: revgate (control plane) memory per held request"),
            Figure::bytes(m.per_held(m.revgate_rss_before, m.revgate_rss_held)),
        ));
    }
    let mut notes = vec![
        format!(
            "Envoy {} workers; each request on a connection of its own (HTTP/1.1), from one client process; the \
             upstream is this suite's Rust server. Memory is VmRSS from /proc before the burst and once every \
             request is reported held; it includes Envoy's cost of each held downstream connection.",
            crate::gateway::ENVOY_CONCURRENCY
        ),
        "Knative's activator queue depth per revision is 10,000 (`max_held_per_revision`, per worker VM).".to_owned(),
        format!(
            "Envoy's open-files limit: {}. Each held request holds a downstream connection; released requests \
             share at most {} upstream connections per revision endpoint (HTTP/1.1), the rest wait in Envoy's \
             pending queue.",
            envoy_fd_limit.map_or("unknown".to_owned(), |n| n.to_string()),
            revgate_xds::translate::ENDPOINT_MAX_CONNECTIONS
        ),
    ];
    for m in &measured {
        if m.ok < m.requests {
            let cluster: Vec<&str> =
                m.envoy_stats.iter().filter(|s| s.starts_with("cluster.rev|")).map(String::as_str).collect();
            notes.push(format!(
                "{} held: answers by status {:?} (0 = transport error); first failure: {}; Envoy's counters for \
                 the revision's cluster after the release: {}.",
                m.requests,
                m.statuses,
                m.first_error.as_deref().unwrap_or("-"),
                cluster.join(", ")
            ));
        }
    }
    for m in &measured {
        if m.warm_ok < m.requests || m.bare_held_ok < m.requests {
            notes.push(format!(
                "{} requests through bare Envoy: {} answered 200 warm (first failure: {}), {} held open by the \
                 upstream.",
                m.requests,
                m.warm_ok,
                m.warm_first_error.as_deref().unwrap_or("-"),
                m.bare_held_ok
            ));
        }
    }
    let raw = json!({ "bursts": measured });
    Ok(Outcome { rows, load_commands: Vec::new(), notes, raw })
}

async fn held(serve: &Serve) -> anyhow::Result<u64> {
    Ok(serve.admin.activity(REVISION).await?.and_then(|a| a.get("held").and_then(Value::as_u64)).unwrap_or(0))
}

async fn burst(
    serve: &Serve,
    envoy: &Envoy,
    bare: &Envoy,
    upstream: std::net::SocketAddr,
    n: usize,
) -> anyhow::Result<Measured> {
    // Cold, with nothing held from an earlier round.
    serve.admin.set_endpoints(REVISION, &[]).await?;
    serve.admin.wait_acked(&envoy.node_id).await?;
    crate::process::wait_for("no held requests", Duration::from_millis(100), async || {
        Ok((held(serve).await? == 0).then_some(()))
    })
    .await?;

    let url = format!("http://127.0.0.1:{}/", envoy.http_port);
    let envoy_rss_before = envoy.process.rss_bytes()?;
    let revgate_rss_before = serve.process.rss_bytes()?;
    let sent = Instant::now();
    let requests = spawn_burst(&url, &host(SERVICE), n, false)?;
    let mut last_held = 0;
    let all_held = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now_held = held(serve).await?;
        if now_held >= n as u64 {
            break sent.elapsed();
        }
        if requests.is_finished() || sent.elapsed() > Duration::from_secs(120) {
            let outcome = requests.await?;
            bail!(
                "{now_held} of {n} requests held (most seen {last_held}); answers so far by status {:?}, first error {:?}",
                outcome.statuses,
                outcome.first_error
            );
        }
        last_held = last_held.max(now_held);
    };
    // The reports lag the holds by up to a second; let memory settle the same way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let envoy_rss_held = envoy.process.rss_bytes()?;
    let revgate_rss_held = serve.process.rss_bytes()?;

    let registered = Instant::now();
    serve.admin.set_endpoints(REVISION, &[upstream]).await?;
    let done: Burst = requests.await?;
    let drain_ms = done.last.saturating_duration_since(registered).as_secs_f64() * 1e3;
    let envoy_stats = envoy.stats_matching(DIAGNOSTIC_STATS).await?;

    // Held first, as the filter's gateway was: a warm burst before it
    // would leave Envoy's allocator with pages the held requests then reuse.
    let (bare_rss_before, bare_rss_held, bare_held_ok) = bare_held(bare, upstream, n).await?;
    let bare_url = format!("http://127.0.0.1:{}/", bare.http_port);
    let started = Instant::now();
    let warm: Burst = spawn_burst(&bare_url, &host(SERVICE), n, false)?.await?;
    let warm_ms = warm.last.saturating_duration_since(started).as_secs_f64() * 1e3;
    let warm_ok = warm.ok();
    let warm_first_error = warm.first_error.clone();
    drop(warm);

    Ok(Measured {
        requests: n,
        ok: done.ok(),
        statuses: done.statuses.iter().map(|(s, n)| (*s, *n)).collect(),
        first_error: done.first_error.clone(),
        drain_ms,
        hold_ms: all_held.as_secs_f64() * 1e3,
        envoy_rss_before,
        envoy_rss_held,
        revgate_rss_before,
        revgate_rss_held,
        warm_ok,
        warm_ms,
        warm_first_error,
        bare_held_ok,
        bare_rss_before,
        bare_rss_held,
        envoy_stats,
    })
}

/// The memory baseline: bare Envoy with `n` requests open because the
/// upstream holds them, measured as the filter's holds are. Returns Envoy's
/// resident memory before and while they are open, and how many answered 200
/// once released.
async fn bare_held(bare: &Envoy, upstream: std::net::SocketAddr, n: usize) -> anyhow::Result<(u64, u64, usize)> {
    let active = format!("http.{}.downstream_rq_active", revgate_xds::names::HTTP_STAT_PREFIX);
    crate::process::wait_for("the bare gateway to settle", Duration::from_millis(100), async || {
        Ok((bare.stat(&active).await? == 0).then_some(()))
    })
    .await?;
    reqwest::get(format!("http://{upstream}/arm")).await?.error_for_status()?;
    let url = format!("http://127.0.0.1:{}/?hold", bare.http_port);
    let before = bare.process.rss_bytes()?;
    let requests = spawn_burst(&url, &host(SERVICE), n, false)?;
    crate::process::wait_for("every request open at the bare gateway", Duration::from_millis(50), async || {
        Ok((bare.stat(&active).await? >= n as u64).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = bare.process.rss_bytes()?;
    reqwest::get(format!("http://{upstream}/release")).await?.error_for_status()?;
    let done = requests.await?;
    Ok((before, held, done.ok()))
}
