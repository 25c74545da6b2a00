//! Serving revgate's HTTP APIs (admin, activation, health) with a timer on
//! every connection.
//!
//! `axum::serve` sets no timeout on reading a request head, so a client that
//! opens connections and never finishes a request holds each one forever.
//! Here each connection is served by hyper's HTTP/1 server with a timer: the
//! request line and headers must arrive within [`HEADER_READ_TIMEOUT`], which
//! also bounds how long an idle kept-alive connection stays open. Bodies are
//! bounded by each API's own limits (the admin API's body timeouts, the
//! activation service's message size).

use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How long a client may take to send a request's line and headers, and how
/// long an idle kept-alive connection stays open: a client that holds a
/// connection without finishing a request does not hold it forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until the task is dropped; `api` names the
/// API in log lines.
///
/// The connections belong to this future: dropping it (aborting its task)
/// closes them too, kept-alive connections and long polls included.
pub async fn serve(listener: TcpListener, router: Router, api: &'static str) -> std::io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        // Finished connections leave the set as new ones arrive.
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: the error is not the
                // listener's, and retrying at once would spin.
                tracing::warn!(error = %e, "{api}: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "{api}: connection closed");
            }
        });
    }
}
