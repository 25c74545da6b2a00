//! Shared harness for the end-to-end tests: the real `revgate` binary, a real
//! Envoy 1.40 and real HTTP backends, all on loopback.
//!
//! Every process is killed when its handle drops, so a failing test leaves
//! nothing behind. Waits poll a condition with a deadline; no test depends on
//! a fixed sleep or on timing figures.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The repository root (this file is in `tests/support/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Envoy binary: `$REVGATE_ENVOY`, or the one `scripts/install-tools.sh`
/// puts in `.tools/`. Missing Envoy fails the test with the fix, never skips it.
pub fn envoy_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("REVGATE_ENVOY") {
        return PathBuf::from(path);
    }
    let path = repo_root().join(".tools/envoy/bin/envoy");
    assert!(
        path.exists(),
        "Envoy is not installed at {}: run scripts/install-tools.sh (or set REVGATE_ENVOY)",
        path.display()
    );
    path
}

/// The gateway filter: `$REVGATE_FILTER_WASM`, or built once per test
/// binary with `scripts/build-filter.sh`.
pub fn filter_wasm() -> PathBuf {
    static WASM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    WASM.get_or_init(|| {
        if let Some(path) = std::env::var_os("REVGATE_FILTER_WASM") {
            return PathBuf::from(path);
        }
        let out = Command::new(repo_root().join("scripts/build-filter.sh"))
            .output()
            .expect("running scripts/build-filter.sh");
        assert!(out.status.success(), "building the gateway filter failed:\n{}", stderr(&out));
        PathBuf::from(stdout(&out).lines().last().expect("the script prints the .wasm path").trim())
    })
    .clone()
}

pub fn revgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_revgate"))
}

/// A loopback port for a process a test starts, free a moment ago.
///
/// Taken below the kernel's ephemeral range, never from it: a port the kernel
/// handed out for a bind to port 0 and that was released again can be handed
/// out a second time to any other process of the run (an Envoy's admin, a
/// backend) before the test's process binds it. Below that range ports are
/// only ever given by this function, which never gives one twice in a test
/// binary and skips those a leftover process still holds.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (low, high) = (FIRST_TEST_PORT, ephemeral_ports_start());
    let span = u64::from(high.saturating_sub(low)).max(1);
    // Test binaries run one after another; each starts elsewhere in the span.
    let start = u64::from(std::process::id()).wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = low + u16::try_from(offset).expect("the span fits in a port");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// The lowest port [`free_port`] gives.
const FIRST_TEST_PORT: u16 = 10_000;

/// Where the kernel's ephemeral ports start (`ip_local_port_range`).
fn ephemeral_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|start| *start > FIRST_TEST_PORT + 1_000)
        .unwrap_or(32_768)
}

/// Polls `check` until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out after {DEADLINE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A child process killed on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, mut command: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("creating a log file");
        let err = out.try_clone().expect("cloning a log file handle");
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name: name.to_owned(), child, log }
    }

    /// The process's output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
    }
}

/// `revgate serve` on loopback ports of its own.
#[derive(Debug)]
pub struct Revgate {
    pub process: Process,
    pub state_dir: PathBuf,
    pub admin_addr: SocketAddr,
    pub xds_addr: SocketAddr,
    pub http_port: u16,
    /// Extra `revgate serve` arguments, kept for restarts.
    pub extra: Vec<String>,
    http: reqwest::Client,
}

impl Revgate {
    /// Starts a control plane whose gateway runs revgate's filter, with the
    /// activation service on a port of its own. `filter_config` is merged
    /// into the filter's configuration.
    pub async fn start_with_filter(state_dir: &Path, http_port: u16, filter_config: &str) -> Self {
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
        let xds_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
        let extra = vec![
            "--activation-addr".to_owned(),
            format!("127.0.0.1:{}", free_port()),
            "--wasm-filter".to_owned(),
            filter_wasm().display().to_string(),
            "--filter-config".to_owned(),
            filter_config.to_owned(),
        ];
        Self::start_with(state_dir, http_port, admin_addr, xds_addr, &extra).await
    }

    /// Stops the control plane and starts it again on the same addresses and state.
    pub async fn restart(&mut self) {
        self.process.kill();
        *self = Self::start_with(
            &self.state_dir.clone(),
            self.http_port,
            self.admin_addr,
            self.xds_addr,
            &self.extra.clone(),
        )
        .await;
    }

    /// The activation service's address (every way of starting one here passes `--activation-addr`).
    pub fn activation_addr(&self) -> SocketAddr {
        let at = self.extra.iter().position(|arg| arg == "--activation-addr").expect("--activation-addr was passed");
        self.extra[at + 1].parse().expect("an address")
    }

    /// Registers the live endpoints of a revision (empty: scaled to zero).
    pub async fn set_endpoints(&self, revision: &str, endpoints: &[SocketAddr]) {
        let endpoints: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        let response = self
            .http
            .put(format!("{}/v1/revisions/default/{revision}/endpoints", self.server()))
            .json(&serde_json::json!({ "endpoints": endpoints }))
            .send()
            .await
            .expect("admin API");
        assert!(response.status().is_success(), "setting endpoints: {}", response.text().await.unwrap_or_default());
    }

    /// The activity row of a revision (`GET /v1/activity`), if it has any.
    pub async fn activity(&self, revision: &str) -> Option<Value> {
        let rows = self.get_json(&format!("/v1/activity?namespace=default&name={revision}")).await;
        rows.as_array()?.first().cloned()
    }
    /// Starts a control plane with test hooks enabled and waits until its admin API answers.
    pub async fn start(state_dir: &Path, http_port: u16) -> Self {
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
        let xds_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
        Self::start_on(state_dir, http_port, admin_addr, xds_addr).await
    }

    pub async fn start_on(state_dir: &Path, http_port: u16, admin_addr: SocketAddr, xds_addr: SocketAddr) -> Self {
        let extra = ["--activation-addr".to_owned(), format!("127.0.0.1:{}", free_port())];
        Self::start_with(state_dir, http_port, admin_addr, xds_addr, &extra).await
    }

    /// Starts a control plane with extra `revgate serve` arguments.
    pub async fn start_with(
        state_dir: &Path,
        http_port: u16,
        admin_addr: SocketAddr,
        xds_addr: SocketAddr,
        extra: &[String],
    ) -> Self {
        let mut command = Command::new(revgate_bin());
        command
            .args(["serve", "--admin-addr", &admin_addr.to_string(), "--xds-addr", &xds_addr.to_string()])
            .args(["--http-port", &http_port.to_string(), "--state-dir"])
            .arg(state_dir)
            .args(extra)
            .env("REVGATE_TEST_HOOKS", "true")
            .env("REVGATE_LOG", "info,revgate_xds=debug");
        if !extra.iter().any(|arg| arg == "--runtime") {
            // Unless told otherwise, these tests run the backends themselves
            // and register their endpoints.
            command.args(["--runtime", "external"]);
        }
        let log = state_dir.with_extension(format!("serve-{}.log", admin_addr.port()));
        let process = Process::spawn("revgate serve", command, log);
        let revgate = Self {
            process,
            state_dir: state_dir.to_owned(),
            admin_addr,
            xds_addr,
            http_port,
            extra: extra.to_vec(),
            http: reqwest::Client::new(),
        };
        let url = format!("{}/healthz", revgate.server());
        let http = revgate.http.clone();
        wait_for("revgate serve to answer /healthz", async || {
            http.get(&url).send().await.ok().filter(|r| r.status().is_success())
        })
        .await;
        revgate
    }

    pub fn server(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// Runs the `revgate` CLI against this control plane.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(revgate_bin())
            .args(args)
            .env("REVGATE_SERVER", self.server())
            .env_remove("REVGATE_TOKEN")
            .output()
            .expect("running the revgate CLI")
    }

    /// `revgate apply -f` of a manifest written to a temporary file; asserts success.
    pub fn apply(&self, yaml: &str) -> String {
        let file = self.write_manifest(yaml);
        let out = self.cli(&["apply", "-f", file.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "revgate apply failed:\n{}\n{}", stdout(&out), stderr(&out));
        stdout(&out)
    }

    pub fn write_manifest(&self, yaml: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = self.state_dir.with_extension(format!("manifest-{}.yaml", COUNTER.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, yaml).expect("writing a manifest");
        path
    }

    /// `GET /v1/gateway`.
    pub async fn gateway(&self) -> Value {
        self.get_json("/v1/gateway").await
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", self.server())).send().await.expect("admin API");
        response.json().await.expect("admin API JSON")
    }

    /// Waits until the gateway `node` ACKed every type of the currently published
    /// snapshot; returns the published versions.
    pub async fn wait_acked(&self, node: &str) -> BTreeMap<String, String> {
        wait_for(&format!("gateway {node} to ACK the published snapshot"), async || {
            let view = self.gateway().await;
            let published: BTreeMap<String, String> =
                serde_json::from_value(view.pointer("/published/versions")?.clone()).ok()?;
            let types = view.pointer(&format!("/status/nodes/{node}/types"))?;
            let all = published.iter().all(|(kind, version)| {
                types.get(kind).and_then(|t| t.get("acked_version")).and_then(Value::as_str) == Some(version)
            });
            (all && !published.is_empty()).then_some(published)
        })
        .await
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A real Envoy connected to a control plane over ADS.
#[derive(Debug)]
pub struct Envoy {
    pub process: Process,
    pub admin_port: u16,
    pub http_port: u16,
    pub node_id: String,
    /// For Envoy's admin interface.
    http: reqwest::Client,
    /// For requests through the gateway.
    client: GatewayClient,
}

impl Envoy {
    /// Starts Envoy with the ADS bootstrap that `revgate render envoy --ads` prints.
    pub async fn start_ads(dir: &Path, revgate: &Revgate, delta: bool) -> Self {
        let admin_port = free_port();
        let node_id = format!("gateway-{admin_port}");
        let mut render = vec!["render", "envoy", "--ads", "--node-id", &node_id];
        let xds = revgate.xds_addr.to_string();
        let admin = admin_port.to_string();
        render.extend(["--xds-addr", &xds, "--admin-port", &admin]);
        if delta {
            render.push("--delta");
        }
        let out = revgate.cli(&render);
        assert!(out.status.success(), "revgate render envoy --ads failed: {}", stderr(&out));
        let bootstrap = dir.join(format!("envoy-{admin_port}.yaml"));
        std::fs::write(&bootstrap, &out.stdout).expect("writing the bootstrap");
        Self::start(dir, &bootstrap, admin_port, revgate.http_port, &node_id).await
    }

    /// Starts Envoy on a bootstrap file whose admin listens on `admin_port`.
    pub async fn start(dir: &Path, bootstrap: &Path, admin_port: u16, http_port: u16, node_id: &str) -> Self {
        let mut command = Command::new(envoy_bin());
        command
            .arg("-c")
            .arg(bootstrap)
            .args([
                "--concurrency",
                "2",
                "--base-id",
                &admin_port.to_string(),
                "--log-level",
                "warn",
                "--component-log-level",
                "wasm:info",
            ])
            .args(["--drain-time-s", "1", "--parent-shutdown-time-s", "2"]);
        let log = dir.join(format!("envoy-{admin_port}.log"));
        let process = Process::spawn("envoy", command, log);
        let client = GatewayClient {
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client"),
            port: http_port,
        };
        let envoy =
            Self { process, admin_port, http_port, node_id: node_id.to_owned(), http: reqwest::Client::new(), client };
        let url = format!("http://127.0.0.1:{admin_port}/ready");
        let http = envoy.http.clone();
        wait_for("Envoy's admin /ready", async || http.get(&url).send().await.ok()).await;
        envoy
    }

    /// One request through the gateway with the given Host and extra headers.
    pub async fn get(&self, host: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let reply = self.request(host, "/", headers).await;
        (reply.status, reply.body)
    }

    /// One request for `path`; status 0 means the request itself failed.
    pub async fn request(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.client().request(host, path, headers).await
    }

    /// A client for concurrent requests (each with a deadline of 60 s).
    pub fn client(&self) -> GatewayClient {
        self.client.clone()
    }

    /// Waits until `host` answers 200 with `body`.
    pub async fn wait_body(&self, host: &str, headers: &[(&str, &str)], body: &str) {
        wait_for(&format!("{host} to answer {body:?}"), async || {
            let (status, got) = self.get(host, headers).await;
            (status == 200 && got == body).then_some(())
        })
        .await;
    }

    /// Sends `n` requests and counts the answers by body (non-200 as "status N").
    pub async fn tally(&self, host: &str, n: usize) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let (status, body) = self.get(host, &[]).await;
            let key = if status == 200 { body } else { format!("status {status}") };
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }

    /// Envoy's admin `/clusters` text.
    pub async fn clusters(&self) -> String {
        let url = format!("http://127.0.0.1:{}/clusters", self.admin_port);
        self.http.get(url).send().await.expect("Envoy admin").text().await.expect("Envoy admin text")
    }
}

/// What the gateway answered.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The `x-revgate-reason` header of revgate's own answers.
    pub reason: Option<String>,
    pub body: String,
}

/// A cheap, clonable client for many concurrent requests through a gateway.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    port: u16,
}

impl GatewayClient {
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        self.request(host, path, &[]).await
    }

    /// One request for `path`; status 0 means the request itself failed.
    pub async fn request(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.http.get(format!("http://127.0.0.1:{}{path}", self.port)).header("host", host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let reason =
                    response.headers().get("x-revgate-reason").and_then(|v| v.to_str().ok()).map(ToOwned::to_owned);
                Reply { status, reason, body: response.text().await.unwrap_or_default() }
            }
            Err(e) => Reply { status: 0, reason: None, body: e.to_string() },
        }
    }
}

/// An HTTP backend standing in for one revision: answers every request with
/// its name (after `?sleep=MS` milliseconds, like Knative's autoscale sample)
/// and counts what it served and how many requests it had at once.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub served: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
    pub max_in_flight: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("address"), name).await
    }

    /// Starts on a given address (for a backend that comes back on the same port).
    pub async fn start_on(addr: SocketAddr, name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("binding a backend");
        let addr = listener.local_addr().expect("backend address");
        let served = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        let max_in_flight = Arc::new(AtomicU64::new(0));
        let counters = (Arc::clone(&served), Arc::clone(&in_flight), Arc::clone(&max_in_flight));
        let body = name.to_owned();
        let app = axum::Router::new().fallback(move |query: axum::extract::RawQuery| {
            let (served, in_flight, max_in_flight) = (counters.0.clone(), counters.1.clone(), counters.2.clone());
            let body = body.clone();
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_in_flight.fetch_max(now, Ordering::SeqCst);
                let sleep = query
                    .0
                    .as_deref()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("sleep=")))
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(0);
                if sleep > 0 {
                    tokio::time::sleep(Duration::from_millis(sleep)).await;
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                served.fetch_add(1, Ordering::SeqCst);
                body
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, name: name.to_owned(), served, in_flight, max_in_flight, task }
    }

    /// The `revgate.dev/endpoints` annotation value pointing at this backend.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

/// revgate with the gateway filter and a delta-xDS Envoy, with a manifest
/// applied and ACKed: where most data-path tests start. Fields drop in
/// order: the processes go before the directory holding their logs.
pub struct Gateway {
    pub revgate: Revgate,
    pub envoy: Envoy,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts both with the filter configured by `filter_config` (JSON) and
    /// applies `manifest`.
    pub async fn start(manifest: &str, filter_config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let revgate = Revgate::start_with_filter(&dir.path().join("state"), free_port(), filter_config).await;
        let envoy = Envoy::start_ads(dir.path(), &revgate, true).await;
        revgate.apply(manifest);
        revgate.wait_acked(&envoy.node_id).await;
        Self { revgate, envoy, dir }
    }

    /// Gives `revision` these endpoints (none: scaled to zero) and waits
    /// until this Envoy has them.
    pub async fn endpoints(&self, revision: &str, endpoints: &[SocketAddr]) {
        self.revgate.set_endpoints(revision, endpoints).await;
        self.revgate.wait_acked(&self.envoy.node_id).await;
    }
}

/// A Knative Service `name` with one container (`example.com/{name}:v1`) and
/// nothing else: whoever runs its revisions registers their endpoints.
pub fn service_manifest(name: &str) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    spec:
      containers:
      - image: example.com/{name}:v1
"#
    )
}

/// The Service `hello` whose first revision, `hello-00001`, runs on
/// `backend` (static endpoints, `revgate.dev/endpoints`).
pub fn hello_on(backend: &Backend) -> String {
    hello_version(backend, "v1")
}

/// The second version of `hello` (see [`hello_on`]): a new template on
/// `backend` (revision `hello-00002`) and a split that gives `hello-00001`
/// `percent_first` percent and the rest, tagged `canary`, to `second`.
pub fn hello_split(backend: &Backend, percent_first: u32, second: &str) -> String {
    format!(
        r#"{template}  traffic:
  - revisionName: hello-00001
    percent: {percent_first}
  - revisionName: {second}
    percent: {percent_second}
    tag: canary
"#,
        template = hello_version(backend, "v2"),
        percent_second = 100 - percent_first
    )
}

/// The Service `hello` with image tag `tag`, its template's endpoints on `backend`.
fn hello_version(backend: &Backend, tag: &str) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
spec:
  template:
    metadata:
      annotations:
        revgate.dev/endpoints: "{}"
    spec:
      containers:
      - image: example.com/hello:{tag}
"#,
        backend.endpoint()
    )
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An example app's binary (`examples/<name>`), built (or found up to date)
/// once per test binary, with `revgate`'s profile and target directory.
pub fn example_bin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "--quiet", "-p", "autoscale", "-p", "helloworld"]).current_dir(repo_root());
        if revgate_bin().parent().and_then(Path::file_name).is_some_and(|profile| profile == "release") {
            command.arg("--release");
        }
        let out = command.output().expect("running cargo build");
        assert!(out.status.success(), "building the example apps failed:\n{}", stderr(&out));
    });
    let path = revgate_bin().with_file_name(name);
    assert!(path.exists(), "examples/{name} was built but {} is missing", path.display());
    path
}

/// `revgate up` on loopback ports of its own, with the example images
/// mapped to the example apps built from this repository.
#[derive(Debug)]
pub struct Up {
    pub process: Process,
    pub dir: PathBuf,
    pub admin_port: u16,
    pub http_port: u16,
    http: reqwest::Client,
}

impl Up {
    /// Starts `revgate up -f <manifests>` on free ports of its own and waits
    /// until it printed its URLs.
    pub async fn start(dir: &Path, manifests: &str) -> Self {
        let internal =
            [("--xds-port", free_port()), ("--activation-port", free_port()), ("--envoy-admin-port", free_port())];
        Self::launch(dir, manifests, free_port(), free_port(), &internal).await
    }

    /// [`Up::start`] given only the gateway's and the admin API's ports, as a
    /// user would: `up` picks its internal ports itself.
    pub async fn start_on(dir: &Path, manifests: &str, http_port: u16, admin_port: u16) -> Self {
        Self::launch(dir, manifests, http_port, admin_port, &[]).await
    }

    async fn launch(dir: &Path, manifests: &str, http_port: u16, admin_port: u16, internal: &[(&str, u16)]) -> Self {
        let images = dir.join("images.yaml");
        std::fs::write(
            &images,
            format!(
                "ghcr.io/knative/autoscale-go: {:?}\nghcr.io/knative/helloworld-go: {:?}\n",
                example_bin("autoscale"),
                example_bin("helloworld")
            ),
        )
        .expect("writing the image map");
        let manifest = dir.join("manifests.yaml");
        std::fs::write(&manifest, manifests).expect("writing the manifests");
        let mut command = Command::new(revgate_bin());
        command
            .arg("up")
            .arg("-f")
            .arg(&manifest)
            .arg("--images")
            .arg(&images)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--http-port", &http_port.to_string(), "--admin-port", &admin_port.to_string()])
            .args(internal.iter().flat_map(|(flag, port)| [flag.to_string(), port.to_string()]))
            .args(["--envoy-concurrency", "2"])
            .arg("--envoy")
            .arg(envoy_bin())
            .arg("--wasm-filter")
            .arg(filter_wasm())
            .env("REVGATE_LOG", "info");
        let process = Process::spawn("revgate up", command, dir.join("up.log"));
        let mut up = Self { process, dir: dir.to_owned(), admin_port, http_port, http: reqwest::Client::new() };
        let log = up.process.log.clone();
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Press Ctrl-C to stop") {
                break;
            }
            assert!(up.process.is_running(), "revgate up exited:\n{text}");
            assert!(started.elapsed() < DEADLINE, "revgate up did not get ready in {DEADLINE:?}:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        up
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// A client for requests through the gateway.
    pub fn client(&self) -> GatewayClient {
        GatewayClient {
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client"),
            port: self.http_port,
        }
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        let response = self.http.get(url).send().await.expect("admin API");
        response.json().await.expect("admin API JSON")
    }

    /// The runtime's view of a revision (`GET /v1/instances`).
    pub async fn instances(&self, revision: &str) -> Value {
        let rows = self.get_json(&format!("/v1/instances?namespace=default&name={revision}")).await;
        rows.as_array().and_then(|rows| rows.first()).cloned().unwrap_or(Value::Null)
    }

    /// How many instances of `revision` are ready.
    pub async fn ready(&self, revision: &str) -> usize {
        self.instances(revision).await.get("ready").and_then(Value::as_array).map_or(0, Vec::len)
    }

    /// The PodAutoscaler of `revision`.
    pub async fn kpa(&self, revision: &str) -> Value {
        let rows = self.get_json(&format!("/v1/podautoscalers?namespace=default&name={revision}")).await;
        rows.as_array().and_then(|rows| rows.first()).cloned().unwrap_or(Value::Null)
    }

    /// Runs the `revgate` CLI against this control plane.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(revgate_bin())
            .args(args)
            .env("REVGATE_SERVER", format!("http://127.0.0.1:{}", self.admin_port))
            .env_remove("REVGATE_TOKEN")
            .output()
            .expect("running the revgate CLI")
    }

    /// Envoy's pid, from `revgate up`'s progress line.
    pub fn envoy_pid(&self) -> i32 {
        let log = self.log();
        let pid = log.split("Envoy started (pid ").nth(1).and_then(|rest| rest.split(')').next());
        pid.and_then(|pid| pid.parse().ok()).unwrap_or_else(|| panic!("no Envoy pid in the log:\n{log}"))
    }

    /// Sends SIGINT, as Ctrl-C does, and waits for `revgate up` to exit.
    pub async fn interrupt(&mut self) -> std::process::ExitStatus {
        self.signal_interrupt();
        let started = Instant::now();
        loop {
            if let Some(status) = self.process.child.try_wait().expect("waiting for revgate up") {
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "revgate up did not stop within 60 s of Ctrl-C");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal_interrupt(&self) {
        if let Ok(pid) = i32::try_from(self.process.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT);
        }
    }
}

impl Drop for Up {
    /// A failed test still stops Envoy and the instances: Ctrl-C first, so
    /// that revgate stops them, and a kill only if it does not exit in time.
    fn drop(&mut self) {
        if !self.process.is_running() {
            return;
        }
        self.signal_interrupt();
        let started = Instant::now();
        while self.process.is_running() && started.elapsed() < Duration::from_secs(40) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name.
    !stat.is_empty() && !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
}
