//! Knative's hello-world sample app: answers `Hello <TARGET>!` on `$PORT`
//! (default 8080). `K_REVISION`, when set, is added so a reader can see which
//! revision answered a split. On SIGTERM (or Ctrl-C) it stops accepting,
//! finishes the requests in flight, and exits 0.
//!
//! Two knobs make a bad canary of it (see examples/rollout): `FAIL_PERCENT`
//! (0–100) answers that share of requests `500`, spread evenly, and
//! `DELAY_MS` waits that long before every answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let target = std::env::var("TARGET").unwrap_or_else(|_| "World".to_owned());
    let greeting = match std::env::var("K_REVISION") {
        Ok(revision) => format!("Hello {target}! ({revision})\n"),
        Err(_) => format!("Hello {target}!\n"),
    };
    let fail_percent: u64 = std::env::var("FAIL_PERCENT").ok().and_then(|p| p.parse().ok()).unwrap_or(0).min(100);
    let delay = Duration::from_millis(std::env::var("DELAY_MS").ok().and_then(|d| d.parse().ok()).unwrap_or(0));
    let served = Arc::new(AtomicU64::new(0));
    let app = Router::new().fallback(move || {
        let greeting = greeting.clone();
        let n = served.fetch_add(1, Ordering::Relaxed);
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            // Request n fails when the running count of failures due steps up,
            // so failures are spread evenly rather than bunched.
            if (n + 1) * fail_percent / 100 > n * fail_percent / 100 {
                (StatusCode::INTERNAL_SERVER_ERROR, "failing on purpose (FAIL_PERCENT)\n".to_owned())
            } else {
                (StatusCode::OK, greeting)
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("helloworld: listening on {}", listener.local_addr()?);
    axum::serve(listener, app).with_graceful_shutdown(terminated()).await
}

/// Resolves on SIGTERM (how Kubernetes and revgate stop an instance) or Ctrl-C.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            eprintln!("helloworld: cannot listen for SIGTERM ({e}); stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    eprintln!("helloworld: shutting down after the requests in flight");
}
