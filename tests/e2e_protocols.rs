//! End to end: the protocols Knative serves through its gateway, through a
//! real Envoy 1.40 (`--concurrency 2`) running revgate's filter, programmed
//! by `revgate serve`: WebSocket (a real client and echo server,
//! `tokio-tungstenite`) and gRPC over HTTP/2 cleartext (gRPC's own client and
//! server, Python `grpcio`: `examples/grpc-echo/echo.py`), each warm and
//! from zero, each outliving the revision's `timeoutSeconds` while active.
//!
//! Endpoints are registered through the admin API, standing in for a
//! runtime; registering none scales the revision to zero.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use support::{Gateway, repo_root, wait_for};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The revisions' `timeoutSeconds`: every session below lasts longer.
const TIMEOUT_SECONDS: u64 = 2;
/// Messages per session and the time between them: 6 × 500 ms outlasts
/// [`TIMEOUT_SECONDS`] while the stream stays active.
const MESSAGES: usize = 6;
const INTERVAL: Duration = Duration::from_millis(500);

/// A Knative Service `name` whose container listens on a port named
/// `port_name` (`h2c` for HTTP/2 cleartext), with `timeoutSeconds` 2.
fn service(name: &str, port_name: &str, container_concurrency: u32) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    spec:
      containerConcurrency: {container_concurrency}
      timeoutSeconds: {TIMEOUT_SECONDS}
      containers:
      - image: example.com/{name}:v1
        ports:
        - name: {port_name}
          containerPort: 8080
"#
    )
}

impl Gateway {
    async fn activity(&self, revision: &str, field: &str) -> u64 {
        self.revgate.activity(revision).await.and_then(|a| a.get(field)?.as_u64()).unwrap_or(0)
    }

    async fn wait_activity(&self, revision: &str, field: &str, at_least: u64) {
        wait_for(&format!("{field} of {revision} to reach {at_least}"), async || {
            (self.activity(revision, field).await >= at_least).then_some(())
        })
        .await;
    }
}

/// A WebSocket echo server standing in for a revision: answers every text
/// message with the same text.
struct WsEcho {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl WsEcho {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the WebSocket backend");
        let addr = listener.local_addr().expect("backend address");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                    while let Some(Ok(message)) = ws.next().await {
                        if message.is_text() && ws.send(message).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `host` through the gateway on `port`.
async fn connect(port: u16, host: &str) -> Result<Ws, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let request = format!("ws://{host}/echo").into_client_request().map_err(|e| e.to_string())?;
    let (ws, response) =
        tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await.map_err(|e| e.to_string())?;
    assert_eq!(response.status().as_u16(), 101, "the upgrade is accepted");
    Ok(ws)
}

/// Sends [`MESSAGES`] messages [`INTERVAL`] apart, each answered before the
/// next; returns how long the session lasted. The pauses are the point: the
/// session must stay open, active, past the revision's `timeoutSeconds`.
async fn session(ws: &mut Ws) -> Result<Duration, String> {
    let started = Instant::now();
    for i in 0..MESSAGES {
        if i > 0 {
            tokio::time::sleep(INTERVAL).await;
        }
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.map_err(|e| format!("sending {text:?}: {e}"))?;
        match ws.next().await {
            Some(Ok(Message::Text(echo))) if echo.as_str() == text => {}
            other => return Err(format!("after {:?}, {text:?} got {other:?}", started.elapsed())),
        }
    }
    Ok(started.elapsed())
}

const WS_HOST: &str = "ws.default.example.com";
const WS_REVISION: &str = "ws-00001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_outlives_timeout_seconds_warm_and_from_zero_and_counts_as_one_request() {
    let s = Gateway::start(&service("ws", "http1", 1), "{}").await;
    let backend = WsEcho::start().await;
    let port = s.envoy.http_port;

    // Warm.
    s.endpoints(WS_REVISION, &[backend.addr]).await;
    let mut ws = connect(port, WS_HOST).await.expect("a warm upgrade");
    let lasted = session(&mut ws).await.expect("a warm session");
    assert!(lasted > Duration::from_secs(TIMEOUT_SECONDS), "the session outlived timeoutSeconds: {lasted:?}");
    println!("warm WebSocket session: {MESSAGES} echoes over {lasted:?} (timeoutSeconds {TIMEOUT_SECONDS})");

    // An open WebSocket is one request in flight: with containerConcurrency
    // 1, a second one waits until the first closes.
    s.wait_activity(WS_REVISION, "in_flight", 1).await;
    let second = tokio::spawn(async move {
        let mut ws = connect(port, WS_HOST).await?;
        session(&mut ws).await
    });
    s.wait_activity(WS_REVISION, "held", 1).await;
    assert!(!second.is_finished(), "held behind the open WebSocket");
    ws.close(None).await.expect("closing the first WebSocket");
    second.await.expect("second session task").expect("the second WebSocket, once the first closed");

    // From zero: the upgrade is held, the revision activated, the upgrade released.
    s.endpoints(WS_REVISION, &[]).await;
    let cold = tokio::spawn(async move {
        let mut ws = connect(port, WS_HOST).await?;
        session(&mut ws).await
    });
    s.wait_activity(WS_REVISION, "activations", 1).await;
    assert!(!cold.is_finished(), "the upgrade is held while the revision has no endpoint");
    s.revgate.set_endpoints(WS_REVISION, &[backend.addr]).await;
    let lasted = cold.await.expect("cold session task").expect("a session from zero");
    assert!(lasted > Duration::from_secs(TIMEOUT_SECONDS), "{lasted:?}");
}

/// `idleTimeoutSeconds` is the one limit an upgraded WebSocket has: an
/// active session outlives it (each echo is a response byte), a quiet one
/// is closed once it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_closed_only_once_it_stays_quiet_past_idle_timeout_seconds() {
    let manifest =
        service("ws", "http1", 0).replace("      containers:", "      idleTimeoutSeconds: 1\n      containers:");
    let s = Gateway::start(&manifest, "{}").await;
    let backend = WsEcho::start().await;
    s.endpoints(WS_REVISION, &[backend.addr]).await;

    let mut ws = connect(s.envoy.http_port, WS_HOST).await.expect("an upgrade");
    let lasted = session(&mut ws).await.expect("an active session is not cut");
    assert!(lasted > Duration::from_secs(1), "{lasted:?}");
    // Quiet from now on: the gateway ends the stream.
    let end = tokio::time::timeout(support::DEADLINE, ws.next()).await.expect("the quiet WebSocket is closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "no message, the end of the stream: {end:?}");
}

/// The Python that runs `examples/grpc-echo/echo.py`: grpcio from
/// `.tools/python`, or the test fails with the command that installs it.
fn grpc_python() -> (PathBuf, PathBuf) {
    let python_path = repo_root().join(".tools/python");
    assert!(
        python_path.join("grpc").is_dir(),
        "grpcio is not installed in {}: run scripts/install-tools.sh --test",
        python_path.display()
    );
    (python_path, repo_root().join("examples/grpc-echo/echo.py"))
}

/// The gRPC echo server, killed when dropped.
struct GrpcServer {
    child: Child,
    addr: SocketAddr,
}

impl GrpcServer {
    /// Starts it on a free port, its output in `dir`, and waits until it listens.
    async fn start(dir: &std::path::Path) -> Self {
        let (python_path, script) = grpc_python();
        let port = support::free_port();
        let log = std::fs::File::create(dir.join("grpc-echo.log")).expect("creating a log file");
        let child = Command::new("python3")
            .arg(&script)
            .arg("serve")
            .env("PORT", port.to_string())
            .env("PYTHONPATH", &python_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a log file handle"))
            .stderr(log)
            .spawn()
            .expect("starting the gRPC echo server with python3");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let server = Self { child, addr };
        wait_for("the gRPC echo server to listen", async || TcpStream::connect(addr).await.ok()).await;
        server
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run of the gRPC client through the gateway: a unary call, then a
/// bidirectional stream of [`MESSAGES`] messages [`INTERVAL`] apart.
async fn grpc_call(port: u16, host: &str) -> Value {
    let (python_path, script) = grpc_python();
    let args = [
        "call".to_owned(),
        format!("127.0.0.1:{port}"),
        host.to_owned(),
        "--messages".to_owned(),
        MESSAGES.to_string(),
        "--interval-ms".to_owned(),
        INTERVAL.as_millis().to_string(),
        "--deadline-s".to_owned(),
        "30".to_owned(),
    ];
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args(&args)
        .env("PYTHONPATH", &python_path)
        .output()
        .await
        .expect("running the gRPC client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the gRPC client failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("the gRPC client printed {stdout:?}: {e}"))
}

fn assert_echoed(result: &Value, when: &str) {
    assert_eq!(result["unary"], "hello", "{when}: {result}");
    let want: Vec<String> = (0..MESSAGES).map(|i| format!("message {i}")).collect();
    assert_eq!(result["chat"], serde_json::json!(want), "{when}: {result}");
    let seconds = result["chat_seconds"].as_f64().unwrap_or(0.0);
    assert!(seconds > TIMEOUT_SECONDS as f64, "{when}: the stream outlived timeoutSeconds: {result}");
}

const GRPC_HOST: &str = "grpc.default.example.com";
const GRPC_REVISION: &str = "grpc-00001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_bidirectional_streaming_calls_work_warm_and_from_zero() {
    let s = Gateway::start(&service("grpc", "h2c", 0), "{}").await;
    let server = GrpcServer::start(s.dir.path()).await;
    let addr = server.addr;
    let port = s.envoy.http_port;

    s.endpoints(GRPC_REVISION, &[addr]).await;
    let warm = grpc_call(port, GRPC_HOST).await;
    assert_echoed(&warm, "warm");
    println!("warm gRPC: {warm}");

    s.endpoints(GRPC_REVISION, &[]).await;
    let cold = tokio::spawn(async move { grpc_call(port, GRPC_HOST).await });
    s.wait_activity(GRPC_REVISION, "activations", 1).await;
    assert!(!cold.is_finished(), "the call is held while the revision has no endpoint");
    s.revgate.set_endpoints(GRPC_REVISION, &[addr]).await;
    let cold = cold.await.expect("cold call task");
    assert_echoed(&cold, "from zero");
    println!("gRPC from zero: {cold}");
}
