//! The system under test, started the way a user starts it: `revgate serve`
//! (runtime `external`, endpoints registered through the admin API) with a
//! real Envoy connected over ADS, or `revgate up` with the process runtime.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::env::Tools;
use crate::process::{Process, free_port, wait_for};

/// Poll interval of waits on the admin API.
const POLL: Duration = Duration::from_millis(5);

/// The admin API of a running control plane.
#[derive(Debug, Clone)]
pub struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    pub fn new(addr: SocketAddr) -> Self {
        Self { base: format!("http://{addr}"), http: reqwest::Client::new() }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self.http.get(format!("{}{path}", self.base)).send().await.context("admin API")?;
        let status = response.status();
        let body: Value = response.json().await.with_context(|| format!("GET {path}: not JSON"))?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        Ok(body)
    }

    /// `POST /v1/apply` of manifests (one file each); fails with the API's errors.
    pub async fn apply(&self, files: &[(String, String)]) -> anyhow::Result<()> {
        let files: Vec<Value> = files.iter().map(|(name, content)| json!({"name": name, "content": content})).collect();
        let response = self
            .http
            .post(format!("{}/v1/apply", self.base))
            .json(&json!({ "files": files }))
            .send()
            .await
            .context("POST /v1/apply")?;
        if !response.status().is_success() {
            bail!("POST /v1/apply: {}: {}", response.status(), response.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// Registers the live endpoints of a revision in namespace `default` (empty: none ready).
    pub async fn set_endpoints(&self, revision: &str, endpoints: &[SocketAddr]) -> anyhow::Result<()> {
        let endpoints: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        let response = self
            .http
            .put(format!("{}/v1/revisions/default/{revision}/endpoints", self.base))
            .json(&json!({ "endpoints": endpoints }))
            .send()
            .await
            .context("PUT endpoints")?;
        if !response.status().is_success() {
            bail!("setting endpoints of {revision}: {}", response.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// The activity row of a revision in namespace `default`.
    pub async fn activity(&self, revision: &str) -> anyhow::Result<Option<Value>> {
        let rows = self.get(&format!("/v1/activity?namespace=default&name={revision}")).await?;
        Ok(rows.as_array().and_then(|rows| rows.first()).cloned())
    }

    /// The runtime's instances of a revision in namespace `default`.
    pub async fn instances(&self, revision: &str) -> anyhow::Result<Value> {
        let rows = self.get(&format!("/v1/instances?namespace=default&name={revision}")).await?;
        Ok(rows.as_array().and_then(|rows| rows.first()).cloned().unwrap_or(Value::Null))
    }

    /// Ready instances of a revision.
    pub async fn ready(&self, revision: &str) -> anyhow::Result<usize> {
        Ok(self.instances(revision).await?.get("ready").and_then(Value::as_array).map_or(0, Vec::len))
    }

    /// When `node` has ACKed every type of the published snapshot: the
    /// latest of its ACK times (Unix ms) and the published versions.
    pub async fn acked(&self, node: &str) -> anyhow::Result<Option<(f64, BTreeMap<String, String>)>> {
        let view = self.get("/v1/gateway").await?;
        let Some(published) = view.pointer("/published/versions") else { return Ok(None) };
        let published: BTreeMap<String, String> = serde_json::from_value(published.clone())?;
        let Some(types) = view.pointer(&format!("/status/nodes/{node}/types")) else { return Ok(None) };
        let mut latest: f64 = 0.0;
        for (kind, version) in &published {
            let Some(status) = types.get(kind) else { return Ok(None) };
            if status.get("acked_version").and_then(Value::as_str) != Some(version) {
                return Ok(None);
            }
            latest = latest.max(status.get("acked_at").map_or(0.0, system_time_ms));
        }
        Ok((!published.is_empty()).then_some((latest, published)))
    }

    /// Waits until `node` ACKed the published snapshot; returns the latest ACK time (Unix ms).
    pub async fn wait_acked(&self, node: &str) -> anyhow::Result<f64> {
        let (at, _) =
            wait_for(&format!("gateway {node} to ACK the published snapshot"), POLL, async || self.acked(node).await)
                .await?;
        Ok(at)
    }

    /// Waits until `node` has ACKed the published listeners: connected and
    /// programmed, even with no clusters (whose EDS it then never asks for).
    pub async fn wait_listening(&self, node: &str) -> anyhow::Result<()> {
        wait_for(&format!("gateway {node} to ACK its listeners"), POLL, async || {
            let view = self.get("/v1/gateway").await?;
            let published = view.pointer("/published/versions/LDS");
            let acked = view.pointer(&format!("/status/nodes/{node}/types/LDS/acked_version"));
            Ok((published.is_some() && published == acked).then_some(()))
        })
        .await
    }

    /// Waits until `count` filter VMs of `node` have polled the current readiness view.
    pub async fn wait_filters(&self, node: &str, count: u64) -> anyhow::Result<()> {
        wait_for(&format!("{count} filter VMs of {node} to poll the activation service"), POLL, async || {
            let view = self.get("/v1/gateway").await?;
            Ok((view.pointer(&format!("/filters/{node}")).and_then(Value::as_u64).unwrap_or(0) >= count).then_some(()))
        })
        .await
    }
}

/// A serialized `SystemTime` (`{secs_since_epoch, nanos_since_epoch}`) in Unix ms.
pub fn system_time_ms(value: &Value) -> f64 {
    let secs = value.get("secs_since_epoch").and_then(Value::as_f64).unwrap_or(0.0);
    let nanos = value.get("nanos_since_epoch").and_then(Value::as_f64).unwrap_or(0.0);
    secs * 1e3 + nanos / 1e6
}

/// `revgate serve --runtime external` on loopback ports of its own.
#[derive(Debug)]
pub struct Serve {
    pub process: Process,
    pub admin: Admin,
    pub xds_addr: SocketAddr,
    pub http_port: u16,
    revgate: PathBuf,
}

impl Serve {
    /// Starts a control plane in `dir`; with `filter`, every gateway runs
    /// revgate's filter ahead of the router.
    pub async fn start(tools: &Tools, dir: &Path, filter: bool) -> anyhow::Result<Self> {
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let xds_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let http_port = free_port()?;
        let mut command = Command::new(&tools.revgate);
        command
            .args(["serve", "--runtime", "external"])
            .args(["--admin-addr", &admin_addr.to_string(), "--xds-addr", &xds_addr.to_string()])
            .args(["--activation-addr", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--http-port", &http_port.to_string()])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("REVGATE_LOG", "warn");
        if filter {
            command.arg("--wasm-filter").arg(&tools.filter);
        }
        let mut process = Process::spawn("revgate serve", command, dir.join("revgate-serve.log"))?;
        let admin = Admin::new(admin_addr);
        let http = reqwest::Client::new();
        let healthz = format!("{}/healthz", admin.url());
        wait_for("revgate serve to answer /healthz", POLL, async || {
            process.check_running()?;
            Ok(http.get(&healthz).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()))
        })
        .await?;
        Ok(Self { process, admin, xds_addr, http_port, revgate: tools.revgate.clone() })
    }

    /// An ADS bootstrap for a new Envoy (`revgate render envoy --ads`).
    pub fn bootstrap(&self, dir: &Path, node_id: &str, admin_port: u16, delta: bool) -> anyhow::Result<PathBuf> {
        let mut command = Command::new(&self.revgate);
        command.args(["render", "envoy", "--ads", "--node-id", node_id]);
        command.args(["--xds-addr", &self.xds_addr.to_string(), "--admin-port", &admin_port.to_string()]);
        if delta {
            command.arg("--delta");
        }
        let out = command.output().context("running revgate render envoy --ads")?;
        if !out.status.success() {
            bail!("revgate render envoy --ads: {}", String::from_utf8_lossy(&out.stderr));
        }
        let path = dir.join(format!("envoy-{node_id}.yaml"));
        std::fs::write(&path, &out.stdout).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Starts an Envoy connected to this control plane.
    pub async fn envoy(&self, tools: &Tools, dir: &Path, node_id: &str, delta: bool) -> anyhow::Result<Envoy> {
        let admin_port = free_port()?;
        let bootstrap = self.bootstrap(dir, node_id, admin_port, delta)?;
        Envoy::start(tools, dir, &bootstrap, admin_port, self.http_port, node_id).await
    }
}

/// Envoy's worker threads in every scenario, like the end-to-end tests.
pub const ENVOY_CONCURRENCY: u16 = 2;

/// A real Envoy.
#[derive(Debug)]
pub struct Envoy {
    pub process: Process,
    pub admin_port: u16,
    pub http_port: u16,
    pub node_id: String,
    http: reqwest::Client,
}

impl Envoy {
    /// Starts Envoy on `bootstrap` (whose admin listens on `admin_port`) and
    /// waits until its admin interface answers.
    pub async fn start(
        tools: &Tools,
        dir: &Path,
        bootstrap: &Path,
        admin_port: u16,
        http_port: u16,
        node_id: &str,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(&tools.envoy);
        command
            .arg("-c")
            .arg(bootstrap)
            .args(["--concurrency", &ENVOY_CONCURRENCY.to_string(), "--base-id", &admin_port.to_string()])
            .args(["--log-level", "warn", "--drain-time-s", "1", "--parent-shutdown-time-s", "2"]);
        let process = Process::spawn("envoy", command, dir.join(format!("envoy-{node_id}.log")))?;
        let mut envoy =
            Self { process, admin_port, http_port, node_id: node_id.to_owned(), http: reqwest::Client::new() };
        let url = format!("http://127.0.0.1:{admin_port}/ready");
        let http = envoy.http.clone();
        let process = &mut envoy.process;
        wait_for("Envoy's admin interface", POLL, async || {
            process.check_running()?;
            Ok(http.get(&url).send().await.ok().map(|_| ()))
        })
        .await?;
        Ok(envoy)
    }

    /// Waits until Envoy says it is live (`/ready` answers 200: initial configuration loaded).
    pub async fn wait_live(&mut self) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/ready", self.admin_port);
        let http = self.http.clone();
        let process = &mut self.process;
        wait_for("Envoy to be live", Duration::from_millis(2), async || {
            process.check_running()?;
            Ok(http.get(&url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()))
        })
        .await
    }

    /// One counter or gauge from Envoy's admin `/stats`.
    pub async fn stat(&self, name: &str) -> anyhow::Result<u64> {
        let url = format!("http://127.0.0.1:{}/stats?filter=^{}$", self.admin_port, regex_escape(name));
        let text = self.http.get(url).send().await?.text().await?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
            .with_context(|| format!("Envoy has no stat {name}"))
    }

    /// Envoy's non-zero stats whose names match `regex`, as `name: value` lines.
    pub async fn stats_matching(&self, regex: &str) -> anyhow::Result<Vec<String>> {
        let url = format!("http://127.0.0.1:{}/stats", self.admin_port);
        let text = self.http.get(url).query(&[("filter", regex)]).send().await?.text().await?;
        Ok(text.lines().filter(|line| !line.ends_with(": 0")).map(ToOwned::to_owned).collect())
    }

    /// Bytes Envoy has read from the control plane's xDS connection.
    pub async fn xds_bytes_received(&self) -> anyhow::Result<u64> {
        self.stat("cluster.revgate-xds.upstream_cx_rx_bytes_total").await
    }

    /// Waits until Envoy serves `host` with the gateway filter disabled (the
    /// warm path: its virtual host carries `FilterConfig{disabled: true}`).
    pub async fn wait_filter_disabled(&self, host: &str) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/config_dump?resource=dynamic_route_configs", self.admin_port);
        wait_for(&format!("{host} to be served without the filter"), POLL, async || {
            let dump: Value = self.http.get(&url).send().await?.json().await?;
            let vhosts = dump["configs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.pointer("/route_config/virtual_hosts")?.as_array())
                .flatten();
            let disabled = vhosts
                .filter(|v| v["domains"].as_array().is_some_and(|d| d.iter().any(|d| d.as_str() == Some(host))))
                .any(|v| v.pointer("/typed_per_filter_config/envoy.filters.http.wasm/disabled") == Some(&json!(true)));
            Ok(disabled.then_some(()))
        })
        .await
    }

    /// Waits until a request for `host` answers 200.
    pub async fn wait_serving(&self, host: &str) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/", self.http_port);
        wait_for(&format!("{host} to answer 200 through Envoy"), POLL, async || {
            let reply = self.http.get(&url).header("host", host).send().await;
            Ok(reply.ok().filter(|r| r.status().is_success()).map(|_| ()))
        })
        .await
    }
}

fn regex_escape(name: &str) -> String {
    name.chars().flat_map(|c| if c.is_ascii_alphanumeric() || c == '_' { vec![c] } else { vec!['\\', c] }).collect()
}

/// `revgate up`: control plane, Envoy with the filter and the process runtime.
#[derive(Debug)]
pub struct Up {
    pub process: Process,
    pub admin: Admin,
    pub http_port: u16,
}

impl Up {
    /// Starts `revgate up -f <manifests>` with `images` as the image map, and
    /// waits until it printed its URLs (Envoy programmed, filters in sync).
    pub async fn start(tools: &Tools, dir: &Path, manifests: &str, images: &str) -> anyhow::Result<Self> {
        let images_path = dir.join("images.yaml");
        std::fs::write(&images_path, images).context("writing the image map")?;
        let manifest = dir.join("manifests.yaml");
        std::fs::write(&manifest, manifests).context("writing the manifests")?;
        let (http_port, admin_port) = (free_port()?, free_port()?);
        let mut command = Command::new(&tools.revgate);
        command
            .arg("up")
            .arg("-f")
            .arg(&manifest)
            .arg("--images")
            .arg(&images_path)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--http-port", &http_port.to_string(), "--admin-port", &admin_port.to_string()])
            .args(["--xds-port", &free_port()?.to_string(), "--activation-port", &free_port()?.to_string()])
            .args(["--envoy-admin-port", &free_port()?.to_string()])
            .args(["--envoy-concurrency", &ENVOY_CONCURRENCY.to_string()])
            .arg("--envoy")
            .arg(&tools.envoy)
            .arg("--wasm-filter")
            .arg(&tools.filter)
            .env("REVGATE_LOG", "warn");
        let mut process = Process::spawn("revgate up", command, dir.join("up.log"))?;
        let started = Instant::now();
        let log = process.log_path().to_owned();
        loop {
            if std::fs::read_to_string(&log).unwrap_or_default().contains("Press Ctrl-C to stop") {
                break;
            }
            process.check_running()?;
            if started.elapsed() > crate::process::DEADLINE {
                bail!("revgate up did not get ready in time:\n{}", process.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let admin = Admin::new(format!("127.0.0.1:{admin_port}").parse()?);
        Ok(Self { process, admin, http_port })
    }

    /// Stops it as Ctrl-C does, so that it stops Envoy and every instance.
    pub async fn stop(mut self) {
        self.process.interrupt(Duration::from_secs(30)).await;
    }
}
