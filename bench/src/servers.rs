//! The HTTP servers the scenarios put behind the gateway, run as separate
//! processes of this same binary so that their CPU and memory are not the
//! driver's.
//!
//! - `upstream`: a fast server for the data-plane scenarios; answers `ok`
//!   (after `?sleep=MS` milliseconds; with `?hold`, once `GET /release` came).
//! - `backend`: a revision's program for the process runtime that waits a
//!   known time before it listens on `$PORT`, standing in for an app with a
//!   slow start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::Query;

use crate::process::{Process, free_port, wait_for};

/// Runs the fast upstream on `addr` with `workers` threads until killed.
/// A request that asks `?hold` stays open until `GET /release`; `GET /arm`
/// makes later ones wait again. A stand-in for a slow upstream whose
/// requests stay open exactly as long as a measurement needs.
pub fn upstream(addr: SocketAddr, workers: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers.max(1)).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        // Whether held requests may answer: a request that arrives after the
        // release (still pending in the gateway then) must not wait forever.
        let (released, _) = tokio::sync::watch::channel(true);
        let released = std::sync::Arc::new(released);
        let (release, arm) = (released.clone(), released.clone());
        let app = Router::new()
            .route(
                "/release",
                axum::routing::get(move || async move {
                    release.send_replace(true);
                    "released"
                }),
            )
            .route(
                "/arm",
                axum::routing::get(move || async move {
                    arm.send_replace(false);
                    "armed"
                }),
            )
            .fallback(move |Query(query): Query<HashMap<String, String>>| async move {
                if let Some(ms) = query.get("sleep").and_then(|ms| ms.parse().ok()) {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if query.contains_key("hold") {
                    // An error means the server is stopping: answer anyway.
                    let _ = released.subscribe().wait_for(|released| *released).await;
                }
                "ok"
            });
        axum::serve(listener, app).await.context("serving")
    })
}

/// Waits `listen_delay`, then listens on `127.0.0.1:$PORT` until killed.
/// Every answer says how long the process took from its start to
/// listening, as the process itself measured it.
pub fn backend(listen_delay: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let port: u16 = std::env::var("PORT").context("$PORT is not set")?.parse().context("$PORT is not a port")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        tokio::time::sleep(listen_delay).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.context("binding $PORT")?;
        let to_listen_ms = started.elapsed().as_secs_f64() * 1e3;
        let body = format!("{{\"start_to_listen_ms\":{to_listen_ms:.3}}}");
        let app = Router::new().fallback(move || {
            let body = body.clone();
            async move { body }
        });
        axum::serve(listener, app).await.context("serving")
    })
}

/// Starts the fast upstream (this binary's `upstream`) on a free loopback
/// port with one worker thread, and waits until it listens.
pub async fn start_upstream(tools: &crate::env::Tools, dir: &std::path::Path) -> anyhow::Result<(Process, SocketAddr)> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut command = std::process::Command::new(&tools.bench);
    command.args(["upstream", "--addr", &addr.to_string(), "--workers", "1"]);
    let mut process = Process::spawn("upstream", command, dir.join("upstream.log"))?;
    wait_for("the upstream to listen", Duration::from_millis(5), async || {
        process.check_running()?;
        Ok(tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()))
    })
    .await?;
    Ok((process, addr))
}
