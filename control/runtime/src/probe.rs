//! Readiness: when an instance may take traffic.
//!
//! The container's `readinessProbe` decides (`httpGet`: a 2xx or 3xx answer;
//! `tcpSocket`: a connection), or without one a TCP connection to `PORT`.
//! Probe ports name the container port, which an instance serves on its own
//! `PORT`, so every probe goes to `PORT`.
//!
//! Until an instance is ready for the first time it is probed every 10 ms
//! (every 100 ms after 10 s, so a slow starter is not flooded), because
//! every millisecond here is added to a cold start. Once ready, it is probed
//! every `periodSeconds` like the kubelet does:
//!
//! | now | probe result | after | becomes |
//! |---|---|---|---|
//! | not ready | success | `successThreshold` in a row | ready |
//! | ready | failure | `failureThreshold` in a row | not ready |
//! | either | the other result | — | the count starts over |

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Probe interval before the first readiness.
const STARTUP_INTERVAL: Duration = Duration::from_millis(10);
/// …once the process took longer than `STARTUP_PATIENCE` to become ready.
const SLOW_STARTUP_INTERVAL: Duration = Duration::from_millis(100);
const STARTUP_PATIENCE: Duration = Duration::from_secs(10);
/// Upper bound of one TCP attempt before the first readiness. A connection
/// to a port nobody listens on is refused at once; one that hangs (a full
/// backlog) is better retried soon than waited for.
const STARTUP_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// Enough of a response to read its status line.
const MAX_STATUS_LINE: usize = 1024;

/// What one probe attempt does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbeAction {
    Tcp,
    Http { path: String, headers: Vec<(String, String)> },
}

/// A parsed `readinessProbe`, with the kubelet's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeSpec {
    pub(crate) action: ProbeAction,
    pub(crate) initial_delay: Duration,
    pub(crate) period: Duration,
    pub(crate) timeout: Duration,
    pub(crate) success_threshold: u32,
    pub(crate) failure_threshold: u32,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            action: ProbeAction::Tcp,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

impl ProbeSpec {
    /// Parses a container's `readinessProbe`; what cannot be honoured is
    /// replaced by a default and described in the returned warnings.
    pub(crate) fn parse(probe: Option<&Value>, container_port: Option<i64>) -> (Self, Vec<String>) {
        let mut spec = Self::default();
        let mut warnings = Vec::new();
        let Some(probe) = probe else { return (spec, warnings) };
        let seconds = |field: &str, min: u64| probe.get(field).and_then(Value::as_u64).map(|s| s.max(min));
        if let Some(s) = seconds("initialDelaySeconds", 0) {
            spec.initial_delay = Duration::from_secs(s);
        }
        if let Some(s) = seconds("periodSeconds", 1) {
            spec.period = Duration::from_secs(s);
        }
        if let Some(s) = seconds("timeoutSeconds", 1) {
            spec.timeout = Duration::from_secs(s);
        }
        if let Some(n) = seconds("successThreshold", 1) {
            spec.success_threshold = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = seconds("failureThreshold", 1) {
            spec.failure_threshold = u32::try_from(n).unwrap_or(u32::MAX);
        }

        let check_port = |action: &Value, warnings: &mut Vec<String>| {
            if let (Some(port), Some(container_port)) = (action.get("port").and_then(Value::as_i64), container_port)
                && port != container_port
            {
                warnings.push(format!(
                    "readinessProbe port {port} is not the container port {container_port}; the probe goes to PORT"
                ));
            }
        };
        if let Some(http) = probe.get("httpGet") {
            check_port(http, &mut warnings);
            if http.get("scheme").and_then(Value::as_str).is_some_and(|s| !s.eq_ignore_ascii_case("HTTP")) {
                warnings.push("readinessProbe httpGet scheme is not HTTP; probing with a TCP connection".to_string());
            } else {
                let path = http.get("path").and_then(Value::as_str).unwrap_or("/");
                let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
                let headers = http
                    .get("httpHeaders")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|h| Some((h.get("name")?.as_str()?.to_string(), h.get("value")?.as_str()?.to_string())))
                    // A header cannot hold a line break: it would end the header, or the request.
                    .filter(|(name, value)| !(name.is_empty() || format!("{name}{value}").contains(['\r', '\n'])))
                    .collect();
                spec.action = ProbeAction::Http { path, headers };
            }
        } else if let Some(tcp) = probe.get("tcpSocket") {
            check_port(tcp, &mut warnings);
        } else if let Some(kind) = ["exec", "grpc"].into_iter().find(|kind| probe.get(kind).is_some()) {
            warnings.push(format!("readinessProbe {kind} is not supported locally; probing with a TCP connection"));
        }
        (spec, warnings)
    }

    /// The timeout of one attempt: short for connections until the first
    /// readiness. An HTTP check always gets `timeoutSeconds`: a health
    /// endpoint that is slow while the app warms up must still be able to pass.
    pub(crate) fn attempt_timeout(&self, ever_ready: bool) -> Duration {
        match self.action {
            ProbeAction::Tcp if !ever_ready => self.timeout.min(STARTUP_CONNECT_TIMEOUT),
            _ => self.timeout,
        }
    }
}

/// The threshold state machine of one process (see the module table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Readiness {
    success_threshold: u32,
    failure_threshold: u32,
    ready: bool,
    ever_ready: bool,
    successes: u32,
    failures: u32,
}

impl Readiness {
    pub(crate) fn new(spec: &ProbeSpec) -> Self {
        Self {
            success_threshold: spec.success_threshold,
            failure_threshold: spec.failure_threshold,
            ready: false,
            ever_ready: false,
            successes: 0,
            failures: 0,
        }
    }

    pub(crate) fn ever_ready(&self) -> bool {
        self.ever_ready
    }

    /// Records one attempt; returns the new readiness when it changed.
    pub(crate) fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.ready && self.successes >= self.success_threshold {
                self.ready = true;
                self.ever_ready = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.ready && self.failures >= self.failure_threshold {
                self.ready = false;
                return Some(false);
            }
        }
        None
    }

    /// How long to wait before the next attempt, `running_for` after the process started.
    pub(crate) fn next_delay(&self, spec: &ProbeSpec, running_for: Duration) -> Duration {
        if self.ever_ready {
            spec.period
        } else if running_for < STARTUP_PATIENCE {
            STARTUP_INTERVAL
        } else {
            SLOW_STARTUP_INTERVAL
        }
    }
}

/// One probe attempt against `addr`; `false` on any failure, including the timeout.
pub(crate) async fn check(action: &ProbeAction, addr: SocketAddr, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, attempt(action, addr)).await.unwrap_or(false)
}

async fn attempt(action: &ProbeAction, addr: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect(addr).await else { return false };
    match action {
        ProbeAction::Tcp => true,
        ProbeAction::Http { path, headers } => {
            http_status(stream, addr, path, headers).await.is_some_and(|status| (200..400).contains(&status))
        }
    }
}

/// Sends `GET path` and reads the status code of the answer.
async fn http_status(mut stream: TcpStream, addr: SocketAddr, path: &str, headers: &[(String, String)]) -> Option<u16> {
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("user-agent")) {
        // Apps often recognise the kubelet's probes by this prefix.
        request.push_str("User-Agent: kube-probe/revgate\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;

    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() >= MAX_STATUS_LINE {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head)
}

/// `HTTP/1.1 204 No Content\r\n…` → 204.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|version| version.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_probes_with_the_kubelet_defaults() {
        let (spec, warnings) = ProbeSpec::parse(None, None);
        assert_eq!(spec, ProbeSpec::default());
        assert!(warnings.is_empty());

        let probe = json!({
            "httpGet": {"path": "healthz", "port": 8080, "httpHeaders": [
                {"name": "X-Probe", "value": "yes"}, {"name": "Bad", "value": "a\r\nb"}, {"value": "no name"}
            ]},
            "periodSeconds": 0, "timeoutSeconds": 5, "successThreshold": 2, "failureThreshold": 1, "initialDelaySeconds": 3
        });
        let (spec, warnings) = ProbeSpec::parse(Some(&probe), Some(8080));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            spec,
            ProbeSpec {
                action: ProbeAction::Http {
                    path: "/healthz".to_string(),
                    headers: vec![("X-Probe".to_string(), "yes".to_string())]
                },
                initial_delay: Duration::from_secs(3),
                period: Duration::from_secs(1),
                timeout: Duration::from_secs(5),
                success_threshold: 2,
                failure_threshold: 1,
            }
        );
        assert_eq!(spec.attempt_timeout(false), Duration::from_secs(5), "HTTP checks get their whole timeout");
        assert_eq!(spec.attempt_timeout(true), Duration::from_secs(5));
        let tcp = ProbeSpec { action: ProbeAction::Tcp, ..spec };
        assert_eq!(tcp.attempt_timeout(false), STARTUP_CONNECT_TIMEOUT);
        assert_eq!(tcp.attempt_timeout(true), Duration::from_secs(5));
    }

    #[test]
    fn unsupported_probes_fall_back_to_tcp_with_a_warning() {
        let cases = [
            (json!({"tcpSocket": {"port": 8080}}), 0),
            (json!({"tcpSocket": {"port": 9090}}), 1),
            (json!({"exec": {"command": ["true"]}}), 1),
            (json!({"grpc": {"port": 8080}}), 1),
            (json!({"httpGet": {"scheme": "HTTPS"}}), 1),
        ];
        for (probe, want_warnings) in cases {
            let (spec, warnings) = ProbeSpec::parse(Some(&probe), Some(8080));
            assert_eq!(spec.action, ProbeAction::Tcp, "{probe}");
            assert_eq!(warnings.len(), want_warnings, "{probe}: {warnings:?}");
        }
    }

    #[test]
    fn thresholds_decide_transitions() {
        let spec = ProbeSpec { success_threshold: 2, failure_threshold: 3, ..ProbeSpec::default() };
        let mut readiness = Readiness::new(&spec);
        // (probe result, transition)
        let steps = [
            (true, None),
            (false, None),
            (true, None),
            (true, Some(true)),
            (true, None),
            (false, None),
            (false, None),
            (true, None),
            (false, None),
            (false, None),
            (false, Some(false)),
            (false, None),
            (true, None),
            (true, Some(true)),
        ];
        for (i, (ok, want)) in steps.into_iter().enumerate() {
            assert_eq!(readiness.record(ok), want, "step {i}: {ok}");
        }
        assert!(readiness.ever_ready());
    }

    #[test]
    fn probes_fast_until_first_ready_then_every_period() {
        let spec = ProbeSpec { period: Duration::from_secs(7), ..ProbeSpec::default() };
        let mut readiness = Readiness::new(&spec);
        assert_eq!(readiness.next_delay(&spec, Duration::ZERO), STARTUP_INTERVAL);
        assert_eq!(readiness.next_delay(&spec, Duration::from_secs(11)), SLOW_STARTUP_INTERVAL);
        readiness.record(true);
        assert_eq!(readiness.next_delay(&spec, Duration::from_secs(1)), Duration::from_secs(7));
        readiness.record(false);
        readiness.record(false);
        readiness.record(false);
        assert_eq!(readiness.next_delay(&spec, Duration::from_secs(1)), Duration::from_secs(7), "not ready again");
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 abc\r\n"), None);
    }

    #[tokio::test]
    async fn checks_against_a_real_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            for status in ["200 OK", "302 Found", "500 Internal Server Error"] {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut request = vec![0u8; 1024];
                let n = conn.read(&mut request).await.expect("read");
                let request = String::from_utf8_lossy(&request[..n]).to_string();
                assert!(
                    request.starts_with("GET /ready HTTP/1.1\r\n") && request.contains("X-Probe: yes\r\n"),
                    "{request}"
                );
                conn.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await
                    .expect("write");
            }
        });
        let http = ProbeAction::Http { path: "/ready".to_string(), headers: vec![("X-Probe".into(), "yes".into())] };
        let timeout = Duration::from_secs(5);
        assert!(check(&http, addr, timeout).await, "200");
        assert!(check(&http, addr, timeout).await, "302");
        assert!(!check(&http, addr, timeout).await, "500");
        server.await.expect("server");
        assert!(!check(&ProbeAction::Tcp, addr, timeout).await, "nothing listens any more");
    }
}
