//! The control plane's processes, started the same way by `revgate serve`
//! and `revgate up`: the admin API, the xDS server, the activation service
//! the gateway filter calls, and — with a runtime — the autoscaler that runs
//! revisions.
//!
//! The xDS server and the activation service require the gateway token
//! (`gateway_auth`) when bound beyond loopback; the filter configuration and
//! the bootstraps carry it everywhere.
//!
//! ```text
//! admin API ─▶ ControlPlane ─▶ xDS ─▶ Envoy (filter) ─▶ activation service
//!                  ▲                                         │ reports, activations
//!                  │ ready endpoints (held while the         ▼
//!               ZeroGate   filters hear "cold")           Autoscaler (KPA)
//!                  ▲                                         │
//!               Runtime ◀──────── scale(revision, n) ────────┘
//! ```
//!
//! Without a runtime that runs revisions (`--runtime external`), the
//! external runtime takes the endpoints registered through the admin API
//! and reports them the same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use revgate_runtime::{ImageMap, ProcessConfig, ProcessRuntime, Runtime};
use revgate_xds::server::{SnapshotCache, XdsServer};
use revgate_xds::stats::StatsSink;
use revgate_xds::translate::XdsSettings;
use revgate_xds::{FilterSettings, GatewayToken};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;

use crate::activation::{ActivationService, COLD_NOTICE_TIMEOUT};
use crate::admin::server::{AdminState, is_loopback, router};
use crate::autoscaling::Autoscaler;
use crate::cli::{RuntimeKind, ServeArgs};
use crate::control::{ControlPlane, Handle};
use crate::external::ExternalRuntime;
use crate::gateway_auth;
use crate::gc::Collector;
use crate::http;
use crate::metrics::{Exporter, RevisionSources, RolloutMetrics, XdsMetrics};
use crate::private_file;
use crate::rollout::Driver;
use crate::store::Store;
use crate::zero_gate;

const TOKEN_FILE: &str = "admin-token";

/// Where instance logs go, below the state directory.
pub const LOG_DIR: &str = "logs";

/// How long a stopping instance stays up after leaving the ready endpoints.
/// The last instance of a revision leaves Envoy only once every filter
/// heard the revision is cold (at most [`COLD_NOTICE_TIMEOUT`]), then Envoy
/// must take the change: SIGTERM waits for both, with a margin.
const DRAIN: Duration = Duration::from_secs(COLD_NOTICE_TIMEOUT.as_secs() + 3);

/// `revgate serve`: runs until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install()?;
    let server = Server::start(ServerConfig::from(&args)).await?;
    server.run_until(shutdown.wait()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Everything needed to start a control plane.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub activation_addr: SocketAddr,
    pub state_dir: PathBuf,
    pub http_port: u16,
    pub wasm_filter: Option<PathBuf>,
    pub filter_config: Option<String>,
    pub runtime: RuntimeKind,
    pub images: Option<PathBuf>,
    pub test_hooks: bool,
    /// `--gateway-token-file`; else `REVGATE_GATEWAY_TOKEN`, else the
    /// state directory's `gateway-token`.
    pub gateway_token_file: Option<PathBuf>,
    /// Mutual TLS on the xDS port, when given.
    pub xds_tls: Option<XdsTlsFiles>,
    /// The flags that set the addresses, named in errors.
    pub flags: AddressFlags,
    /// `--metrics-addr`: `/metrics` on a listener of its own, without a token.
    pub metrics_addr: Option<SocketAddr>,
    /// The gateway also serves every host under this domain (`revgate up`:
    /// `localhost`); see `XdsSettings::alias_domain`.
    pub alias_domain: Option<String>,
}

/// PEM files for mutual TLS on the xDS port.
#[derive(Debug, Clone)]
pub struct XdsTlsFiles {
    /// The server's certificate chain (`--xds-tls-cert`).
    pub cert: PathBuf,
    /// Its key (`--xds-tls-key`).
    pub key: PathBuf,
    /// The CA whose client certificates are accepted (`--xds-client-ca`).
    pub client_ca: PathBuf,
}

impl XdsTlsFiles {
    /// tonic's TLS settings: this identity, and client certificates required
    /// and verified against the CA.
    fn server_config(&self) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
        let read =
            |path: &Path, flag: &str| std::fs::read(path).with_context(|| format!("reading {flag} {}", path.display()));
        let identity = tonic::transport::Identity::from_pem(
            read(&self.cert, "--xds-tls-cert")?,
            read(&self.key, "--xds-tls-key")?,
        );
        let ca = tonic::transport::Certificate::from_pem(read(&self.client_ca, "--xds-client-ca")?);
        Ok(tonic::transport::ServerTlsConfig::new().identity(identity).client_ca_root(ca))
    }
}

/// The command-line flags behind a server's addresses.
#[derive(Debug, Clone, Copy)]
pub struct AddressFlags {
    pub xds: &'static str,
    pub admin: &'static str,
    pub activation: &'static str,
}

impl From<&ServeArgs> for ServerConfig {
    fn from(args: &ServeArgs) -> Self {
        Self {
            xds_addr: args.xds_addr,
            admin_addr: args.admin_addr,
            activation_addr: args.activation_addr,
            state_dir: args.state_dir.clone(),
            http_port: args.http_port,
            wasm_filter: args.wasm_filter.clone(),
            filter_config: args.filter_config.clone(),
            runtime: args.runtime,
            images: args.images.clone(),
            test_hooks: args.test_hooks,
            gateway_token_file: args.gateway_token_file.clone(),
            xds_tls: match (&args.xds_tls_cert, &args.xds_tls_key, &args.xds_client_ca) {
                (Some(cert), Some(key), Some(client_ca)) => {
                    Some(XdsTlsFiles { cert: cert.clone(), key: key.clone(), client_ca: client_ca.clone() })
                }
                _ => None,
            },
            flags: AddressFlags { xds: "--xds-addr", admin: "--admin-addr", activation: "--activation-addr" },
            metrics_addr: args.metrics_addr,
            alias_domain: None,
        }
    }
}

/// A started control plane: every listener bound, every task running.
#[derive(Debug)]
pub struct Server {
    pub handle: Handle,
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub activation_addr: SocketAddr,
    /// Where `--metrics-addr` serves `/metrics`, if it was given.
    pub metrics_addr: Option<SocketAddr>,
    /// What the gateway filters report and which of them are in sync.
    pub activation_service: ActivationService,
    /// The token gateways present (required on ports bound beyond loopback).
    pub gateway_token: GatewayToken,
    runtime: Option<Arc<dyn Runtime>>,
    plane: JoinHandle<()>,
    /// The rollout driver (`rollout`).
    rollouts: JoinHandle<()>,
    /// The revision garbage collector's timer (`gc`).
    gc: JoinHandle<()>,
    autoscaler: Option<JoinHandle<()>>,
    xds: JoinHandle<Result<(), tonic::transport::Error>>,
    admin: JoinHandle<std::io::Result<()>>,
    activation: JoinHandle<std::io::Result<()>>,
    metrics: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Binds every listener (failing with the address and the flag to change
    /// when one is taken) and starts serving.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        // Creates the state directory, owner-only, if it is new.
        let store = Store::open(&config.state_dir)?;
        let token =
            private_file::read_or_create_token(&config.state_dir.join(TOKEN_FILE)).context("the admin API's token")?;
        let gateway_token = gateway_auth::for_server(
            config.gateway_token_file.as_deref(),
            gateway_auth::from_env(),
            &config.state_dir,
        )?;

        let flags = config.flags;
        let activation_listener = bind(config.activation_addr, "the activation service", flags.activation).await?;
        let xds_listener = bind(config.xds_addr, "the xDS server", flags.xds).await?;
        let admin_listener = bind(config.admin_addr, "the admin API", flags.admin).await?;
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(bind(addr, "the metrics endpoint", "--metrics-addr").await?),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let activation_addr = activation_listener.local_addr()?;
        let xds_addr = xds_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        // Every file-based setting is read and checked before the runtime
        // starts: once it runs, a failure must also stop it.
        let filter = match &config.wasm_filter {
            Some(path) => {
                Some(filter_settings(path, activation_addr, &gateway_token, config.filter_config.as_deref())?)
            }
            None => None,
        };
        let mut xds_server = tonic::transport::Server::builder();
        if let Some(tls) = &config.xds_tls {
            xds_server = xds_server.tls_config(tls.server_config()?).context(
                "configuring mutual TLS for the xDS server (--xds-tls-cert, --xds-tls-key, --xds-client-ca)",
            )?;
            tracing::info!(client_ca = %tls.client_ca.display(), "xDS speaks mutual TLS");
        }
        let mut instance_counts = None;
        let runtime: Option<Arc<dyn Runtime>> = match config.runtime {
            RuntimeKind::External => None,
            RuntimeKind::Process => {
                let images = match &config.images {
                    Some(path) => ImageMap::load(path)?,
                    None => ImageMap::empty(),
                };
                if config.wasm_filter.is_none() {
                    tracing::warn!(
                        "revisions scale to zero, but without the gateway filter (--wasm-filter) nothing holds \
                         their requests or asks for their activation: requests to a revision at zero fail"
                    );
                }
                let runtime = ProcessRuntime::start(ProcessConfig {
                    images,
                    log_dir: config.state_dir.join(LOG_DIR),
                    drain: DRAIN,
                    ..ProcessConfig::default()
                })?;
                instance_counts = Some(runtime.instance_counts());
                Some(Arc::new(runtime))
            }
        };

        let cache = SnapshotCache::default();
        let xds_metrics = XdsMetrics::default();
        let xds = XdsServer::with_callbacks(cache.clone(), Arc::new(xds_metrics.clone()));
        let settings = XdsSettings {
            listener_port: config.http_port,
            filter,
            alias_domain: config.alias_domain.clone(),
            ..XdsSettings::default()
        };
        let registrations = store.registrations();
        let rollout_store = store.rollouts();
        // From here on the runtime may run instances: a step that fails stops it.
        let wired = ControlPlane::start(store, cache, settings, xds.status()).and_then(|(plane, handle)| {
            let activation = ActivationService::start(handle.plan(), handle.desired(), xds.subscribe_acks());
            // Every revision's endpoints come from a runtime: the process
            // runtime, or the registrations of revisions that run elsewhere.
            let (handle, states) = match &runtime {
                Some(runtime) => {
                    let stored = registrations.load()?;
                    if !stored.is_empty() {
                        // Registered by an earlier `serve --runtime external`; this
                        // runtime starts its own instances and reports their endpoints.
                        tracing::warn!(
                            revisions = stored.len(),
                            "ignoring stored endpoints registered for another runtime"
                        );
                    }
                    (handle, runtime.states())
                }
                None => {
                    let external = ExternalRuntime::start(registrations, handle.world_updates())?;
                    let states = external.states();
                    (handle.with_external(external), states)
                }
            };
            Ok((plane, handle, activation, states))
        });
        let (plane, handle, activation, states) = match wired {
            Ok(wired) => wired,
            Err(e) => {
                if let Some(runtime) = &runtime {
                    runtime.shutdown().await;
                }
                return Err(e.into());
            }
        };
        // Going to zero, the filters hear first (see `zero_gate`).
        let states = zero_gate::gate_states(states, Arc::new(activation.clone()));
        // The rollout driver: its states are the owner's input for the splits.
        let rollout_metrics = RolloutMetrics::default();
        let (plane, handle, rollout_driver) = {
            let observer = handle.clone();
            match Driver::start(
                rollout_store,
                handle.world_updates(),
                move || observer.observed(),
                Arc::new(activation.clone()),
            ) {
                Ok((driver, rollouts)) => {
                    let driver = driver.with_metrics(rollout_metrics.clone());
                    let mut plane = plane;
                    plane.follow_rollouts(rollouts.states());
                    (plane, handle.with_rollouts(rollouts), driver)
                }
                Err(e) => {
                    if let Some(runtime) = &runtime {
                        runtime.shutdown().await;
                    }
                    return Err(e.into());
                }
            }
        };
        let rollout_driver = tokio::spawn(rollout_driver.run());
        // The warm path: routes whose revisions are warm in every gateway that
        // streams its statistics here are served without the filter.
        let (stats_sink, envoy_stats) = StatsSink::new();
        activation.follow_gateways(envoy_stats, xds.status(), xds.subscribe_acks());
        let mut plane = plane;
        plane.follow_warm_path(activation.warm());

        let (autoscaler, kpa) = match &runtime {
            Some(runtime) => {
                let (autoscaler, statuses) =
                    Autoscaler::new(handle.world_updates(), handle.plan(), activation.clone(), runtime.clone());
                (Some(tokio::spawn(autoscaler.run())), Some(statuses))
            }
            None => (None, None),
        };
        let admin_token = if is_loopback(&config.admin_addr) {
            None
        } else {
            tracing::info!(file = %config.state_dir.join(TOKEN_FILE).display(), "admin API bound beyond loopback: bearer token required");
            Some(token)
        };
        tracing::info!(
            xds = %xds_addr,
            admin = %admin_addr,
            activation = %activation_addr,
            metrics = ?metrics_addr,
            filter = ?config.wasm_filter,
            runtime = ?config.runtime,
            state_dir = %config.state_dir.display(),
            "revgate control plane serving"
        );

        let exporter = Arc::new(Exporter::new(
            RevisionSources {
                activation: activation.clone(),
                kpa: kpa.clone(),
                control: handle.clone(),
                instances: instance_counts,
            },
            &xds_metrics,
            &rollout_metrics,
        ));
        let admin = router(AdminState {
            control: handle.clone(),
            activation: activation.clone(),
            kpa,
            instances: runtime.as_ref().map(|runtime| runtime.states()),
            token: admin_token,
            test_hooks: config.test_hooks,
            metrics: exporter.clone(),
        });
        let metrics = metrics_listener
            .map(|listener| tokio::spawn(http::serve(listener, crate::metrics::router(exporter), "metrics endpoint")));
        let plane = tokio::spawn(plane.run(Some(states)));
        let gc = tokio::spawn(Collector::new(handle.clone()).run());
        let xds = tokio::spawn(
            xds_server
                .add_service(xds.into_authenticated_service(gateway_auth::xds_auth(xds_addr, &gateway_token)))
                .add_service(stats_sink.into_authenticated_service(gateway_auth::xds_auth(xds_addr, &gateway_token)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(xds_listener)),
        );
        let admin = tokio::spawn(http::serve(admin_listener, admin, "admin API"));
        let activation_service = activation.clone();
        let activation_api =
            gateway_auth::activation_router(activation.router(), activation_addr, Some(&gateway_token));
        let activation = tokio::spawn(http::serve(activation_listener, activation_api, "activation service"));
        Ok(Self {
            handle,
            xds_addr,
            admin_addr,
            activation_addr,
            metrics_addr,
            activation_service,
            gateway_token,
            runtime,
            plane,
            rollouts: rollout_driver,
            gc,
            autoscaler,
            xds,
            admin,
            activation,
            metrics,
        })
    }

    /// Serves until `shutdown` completes or a server fails, then stops every
    /// revision instance the runtime started.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let result = tokio::select! {
            () = shutdown => {
                tracing::info!("shutting down");
                Ok(())
            }
            e = self.failed() => Err(e),
        };
        self.stop().await;
        result
    }

    /// Completes when one of the server's tasks ends, which only happens on
    /// failure, with what failed.
    pub async fn failed(&mut self) -> anyhow::Error {
        let autoscaler = async {
            match &mut self.autoscaler {
                Some(task) => task.await,
                None => std::future::pending().await,
            }
        };
        let metrics = async {
            match &mut self.metrics {
                Some(task) => task.await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            result = metrics => flatten(result).context("the metrics endpoint stopped"),
            result = &mut self.xds => flatten(result).context("the xDS server stopped"),
            result = &mut self.admin => flatten(result).context("the admin API stopped"),
            result = &mut self.activation => flatten(result).context("the activation service stopped"),
            result = &mut self.plane => result.context("the control plane stopped"),
            result = &mut self.rollouts => result.context("the rollout driver stopped"),
            result = autoscaler => result.context("the autoscaler stopped"),
        };
        result.err().unwrap_or_else(|| anyhow::anyhow!("a server task ended"))
    }

    /// Stops the autoscaler first (so nothing is scaled up again), then every
    /// instance, then the servers.
    pub async fn stop(&mut self) {
        if let Some(autoscaler) = &self.autoscaler {
            autoscaler.abort();
        }
        if let Some(runtime) = &self.runtime {
            runtime.shutdown().await;
        }
        for task in [&self.xds.abort_handle(), &self.admin.abort_handle(), &self.activation.abort_handle()] {
            task.abort();
        }
        if let Some(metrics) = &self.metrics {
            metrics.abort();
        }
        self.plane.abort();
        self.rollouts.abort();
        self.gc.abort();
    }
}

fn flatten<E: std::error::Error + Send + Sync + 'static>(
    result: Result<Result<(), E>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    Ok(result??)
}

async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("binding {what} to {addr} (is the port in use, perhaps by another revgate? choose another with {flag})")
    })
}

/// The gateway filter's settings: its code, where it reaches the activation
/// service, and its JSON configuration (`extra` is merged over revgate's).
/// The configuration carries the gateway token, which the filter presents on
/// its calls; on loopback it is not required, but sending it anyway means
/// moving the service beyond loopback changes nothing on the gateway.
fn filter_settings(
    wasm: &Path,
    activation: SocketAddr,
    token: &GatewayToken,
    extra: Option<&str>,
) -> anyhow::Result<FilterSettings> {
    let wasm = std::fs::canonicalize(wasm).with_context(|| {
        format!("the gateway filter {} does not exist (build it with scripts/build-filter.sh)", wasm.display())
    })?;
    // Envoy runs on this machine: an unspecified address means loopback.
    let control_address = if activation.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), activation.port())
    } else {
        activation
    };
    let mut configuration = serde_json::json!({
        "control_cluster": revgate_xds::names::CONTROL_CLUSTER,
        "control_authority": revgate_xds::names::CONTROL_CLUSTER,
        "token": token.expose(),
    });
    if let Some(extra) = extra {
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(extra).context("--filter-config must be a JSON object")?;
        if let Some(object) = configuration.as_object_mut() {
            object.extend(extra);
        }
    }
    Ok(FilterSettings {
        wasm_path: wasm.display().to_string(),
        control_address,
        configuration: configuration.to_string(),
    })
}

/// Ctrl-C (SIGINT) and SIGTERM, registered as soon as this is created so
/// that a signal arriving during start-up is caught rather than fatal (an
/// uncaught one would leave Envoy and the instances running).
#[derive(Debug)]
pub struct Shutdown {
    interrupt: Signal,
    terminate: Signal,
}

impl Shutdown {
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("listening for Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// Completes on the next Ctrl-C or SIGTERM.
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
