//! Knative's autoscale sample app (`autoscale-go`), in Rust: each request
//! costs what its query asks for, so that load drives the autoscaler.
//!
//! ```text
//! curl 'localhost:8080?sleep=100&prime=10000&bloat=5'
//! Allocated 5 MB of memory.
//! The largest prime below 10000 is 9973.
//! Slept for 100.12 milliseconds.
//! (autoscale-go-00001)
//! ```
//!
//! - `sleep=MS`: wait that many milliseconds (holds a request in flight, which
//!   is what Knative's concurrency autoscaler counts);
//! - `prime=N`: find the largest prime below N with a sieve (CPU and memory ∝ N);
//! - `bloat=MB`: allocate that many megabytes and touch every page.
//!
//! Listens on `127.0.0.1:$PORT` (default 8080). On SIGTERM (or Ctrl-C) it
//! stops accepting, finishes the requests in flight, and exits 0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;

/// Limits that keep one request from taking the machine down.
const MAX_SLEEP_MS: u64 = 10 * 60 * 1000;
const MAX_PRIME: u64 = 10_000_000;
const MAX_BLOAT_MB: u64 = 1024;

/// What one request asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Work {
    sleep_ms: Option<u64>,
    prime_below: Option<u64>,
    bloat_mb: Option<u64>,
}

impl Work {
    /// Reads `sleep`, `prime` and `bloat`; other parameters are ignored.
    fn from_query(query: &HashMap<String, String>) -> Result<Self, String> {
        let number = |name: &str, what: &str, max: u64| -> Result<Option<u64>, String> {
            let Some(value) = query.get(name) else { return Ok(None) };
            match value.trim().parse::<u64>() {
                Ok(n) if n <= max => Ok(Some(n)),
                _ => Err(format!("{name}={value:?}: expected {what}, a whole number from 0 to {max}")),
            }
        };
        Ok(Self {
            sleep_ms: number("sleep", "milliseconds to sleep", MAX_SLEEP_MS)?,
            prime_below: number("prime", "a bound to find the largest prime below", MAX_PRIME)?,
            bloat_mb: number("bloat", "megabytes to allocate", MAX_BLOAT_MB)?,
        })
    }

    /// Does the work, in the sample's order, and describes it.
    async fn run(self) -> String {
        let mut lines = Vec::new();
        let Self { sleep_ms, prime_below, bloat_mb } = self;
        if bloat_mb.is_some() || prime_below.is_some() {
            // CPU and memory work off the async thread, so that other requests are still accepted.
            let computed = tokio::task::spawn_blocking(move || {
                let mut lines = Vec::new();
                if let Some(mb) = bloat_mb {
                    bloat(mb);
                    lines.push(format!("Allocated {mb} MB of memory."));
                }
                if let Some(n) = prime_below {
                    lines.push(match largest_prime_below(n) {
                        Some(p) => format!("The largest prime below {n} is {p}."),
                        None => format!("There is no prime below {n}."),
                    });
                }
                lines
            })
            .await;
            lines.extend(computed.unwrap_or_else(|e| vec![format!("The computation failed: {e}.")]));
        }
        if let Some(ms) = sleep_ms {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            lines.push(format!("Slept for {:.2} milliseconds.", start.elapsed().as_secs_f64() * 1000.0));
        }
        if lines.is_empty() {
            lines.push("Nothing to do; try ?sleep=100&prime=10000&bloat=5".to_string());
        }
        lines.join("\n")
    }
}

/// The largest prime `p < n`, by a sieve of Eratosthenes over `0..n`.
fn largest_prime_below(n: u64) -> Option<u64> {
    let n = usize::try_from(n).ok()?;
    if n <= 2 {
        return None;
    }
    let mut composite = vec![false; n];
    let mut i = 2;
    while i * i < n {
        if !composite[i] {
            for multiple in (i * i..n).step_by(i) {
                composite[multiple] = true;
            }
        }
        i += 1;
    }
    (2..n).rev().find(|&k| !composite[k]).map(|p| p as u64)
}

/// Allocates `mb` megabytes and writes to every page, so the memory is really used.
fn bloat(mb: u64) {
    const PAGE: usize = 4096;
    let bytes = usize::try_from(mb).unwrap_or(0) * 1024 * 1024;
    let mut memory = vec![0u8; bytes];
    for page in memory.chunks_mut(PAGE) {
        page[0] = 1;
    }
    std::hint::black_box(&memory);
}

async fn handle(revision: Option<String>, query: HashMap<String, String>) -> (StatusCode, String) {
    match Work::from_query(&query) {
        Ok(work) => {
            let mut body = work.run().await;
            if let Some(revision) = revision {
                body.push_str(&format!("\n({revision})"));
            }
            body.push('\n');
            (StatusCode::OK, body)
        }
        Err(problem) => (StatusCode::BAD_REQUEST, format!("{problem}\n")),
    }
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
            eprintln!("autoscale: cannot listen for SIGTERM ({e}); stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    eprintln!("autoscale: shutting down after the requests in flight");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let revision = std::env::var("K_REVISION").ok();
    let app = Router::new().fallback(move |Query(query): Query<HashMap<String, String>>| {
        let revision = revision.clone();
        handle(revision, query)
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("autoscale: listening on {}", listener.local_addr()?);
    axum::serve(listener, app).with_graceful_shutdown(terminated()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn largest_primes() {
        let cases =
            [(0, None), (2, None), (3, Some(2)), (4, Some(3)), (10, Some(7)), (11, Some(7)), (10_000, Some(9973))];
        for (n, want) in cases {
            assert_eq!(largest_prime_below(n), want, "below {n}");
        }
        assert_eq!(largest_prime_below(1_000_000), Some(999_983));
    }

    #[test]
    fn parameters() {
        let work = Work::from_query(&query(&[("sleep", "100"), ("prime", "10000"), ("bloat", "5"), ("x", "y")]));
        assert_eq!(work, Ok(Work { sleep_ms: Some(100), prime_below: Some(10_000), bloat_mb: Some(5) }));
        assert_eq!(Work::from_query(&query(&[])), Ok(Work::default()));

        for (name, value) in [("sleep", "abc"), ("sleep", "-1"), ("prime", "1e9"), ("prime", "10000001"), ("bloat", "")]
        {
            let problem = Work::from_query(&query(&[(name, value)])).expect_err(value);
            assert!(problem.starts_with(&format!("{name}={value:?}: expected ")), "{problem}");
            assert!(problem.contains("a whole number from 0 to"), "{problem}");
        }
    }

    #[tokio::test]
    async fn describes_what_it_did() {
        let work = Work { sleep_ms: Some(1), prime_below: Some(10), bloat_mb: Some(1) };
        let text = work.run().await;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["Allocated 1 MB of memory.", "The largest prime below 10 is 7."]);
        assert!(lines[2].starts_with("Slept for "), "{text}");

        let (status, body) = handle(Some("autoscale-go-00001".to_string()), query(&[("prime", "3")])).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "The largest prime below 3 is 2.\n(autoscale-go-00001)\n")
        );
        let (status, body) = handle(None, query(&[("bloat", "lots")])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("bloat=\"lots\""), "{body}");
    }
}
