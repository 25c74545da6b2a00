//! Command-line interface: argument definitions only; each command's work
//! lives in its own module.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "revgate",
    version,
    about = "Knative Serving on an Envoy gateway: revisions, traffic splits and scale to zero without extra hops."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything on this machine: the control plane, an Envoy gateway
    /// with the filter, and the revisions of the given manifests as local
    /// processes. Prints each service's URL; Ctrl-C stops it all.
    Up(UpArgs),
    /// Run the control plane alone: the admin API, the xDS server, the
    /// activation service and the autoscaler.
    Serve(ServeArgs),
    /// Cluster mode on an Istio mesh: the Kubernetes controller, the
    /// activation API and the autoscaler (see istio-manifests/).
    Controller(ControllerArgs),
    /// Apply Knative manifests (files or directories), in order, like `kubectl apply -f`.
    Apply(ManifestArgs),
    /// Delete the objects named in manifests.
    Delete(ManifestArgs),
    /// Show objects, like `kubectl get`.
    Get(GetArgs),
    /// Print configuration for a gateway without running the control plane.
    #[command(subcommand)]
    Render(RenderCommand),
    /// Knative's KPA offline: replay decisions or whole load traces.
    #[command(subcommand)]
    Autoscaler(AutoscalerCommand),
    /// A Route's gradual rollout: where it stands, or promote, abort, retry.
    ///
    /// A Route (or Service) with `serving.knative.dev/rollout-duration` moves
    /// its `latestRevision` target to a new revision in steps from 1%, as
    /// Knative does; gates (`revgate.dev/rollout-max-error-rate`,
    /// `rollout-max-latency`, `rollout-min-requests`) judge each step from the
    /// gateway's figures and roll back on a breach.
    Rollout(RolloutArgs),
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// status: the current step, the candidate's figures per step and the
    /// history; promote: all of the target's traffic to the candidate now;
    /// abort: all of it back to the previous revision; retry: roll the
    /// aborted revision out again from 1%.
    pub action: RolloutAction,
    /// The Route (a Service's Route has the Service's name).
    pub route: String,
    /// Namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RolloutAction {
    Status,
    Promote,
    Abort,
    Retry,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the xDS (ADS) gRPC server. Bound beyond loopback, Envoy
    /// must present the gateway token (see --gateway-token-file).
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds_addr: SocketAddr,
    /// Address of the admin API. Binding anything but loopback requires the
    /// bearer token kept in the state directory.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    /// Directory for the state database and the admin token.
    #[arg(long, default_value = ".revgate")]
    pub state_dir: PathBuf,
    /// Port of the gateway's HTTP listener programmed over xDS.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Address of the activation service the gateway filter calls. Bound
    /// beyond loopback, the filter must present the gateway token.
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub activation_addr: SocketAddr,
    /// The gateway filter (`.wasm`) to run in Envoy ahead of the router; see
    /// scripts/build-filter.sh. Without it revisions are never held.
    #[arg(long)]
    pub wasm_filter: Option<PathBuf>,
    /// JSON object merged into the filter's configuration, e.g.
    /// '{"max_held_per_revision": 100}'.
    #[arg(long, requires = "wasm_filter")]
    pub filter_config: Option<String>,
    /// Who runs revisions: `process` (local processes, scaled by the
    /// autoscaler) or `external` (instances run elsewhere register their
    /// endpoints through the admin API; nothing is scaled).
    #[arg(long, value_enum, default_value_t = RuntimeKind::Process)]
    pub runtime: RuntimeKind,
    /// YAML map from container image to the local command that stands for it
    /// (see examples/images.yaml).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// File holding the token gateways present to the xDS server and the
    /// activation service (required where they are bound beyond loopback).
    /// Default: REVGATE_GATEWAY_TOKEN (the token itself), else
    /// `<state-dir>/gateway-token`, created on first start.
    #[arg(long)]
    pub gateway_token_file: Option<PathBuf>,
    /// PEM certificate chain of the xDS server. With --xds-tls-key and
    /// --xds-client-ca, xDS speaks mutual TLS: only gateways presenting a
    /// client certificate that CA signed can connect (and, beyond loopback,
    /// they still present the gateway token).
    #[arg(long, requires_all = ["xds_tls_key", "xds_client_ca"])]
    pub xds_tls_cert: Option<PathBuf>,
    /// PEM private key of --xds-tls-cert.
    #[arg(long, requires = "xds_tls_cert")]
    pub xds_tls_key: Option<PathBuf>,
    /// PEM CA whose client certificates the xDS server accepts.
    #[arg(long, requires = "xds_tls_cert")]
    pub xds_client_ca: Option<PathBuf>,
    /// Enable the admin API's fault-injection endpoints (tests only).
    #[arg(long, hide = true, env = "REVGATE_TEST_HOOKS")]
    pub test_hooks: bool,
    /// Also serve `GET /metrics` on this address, without a token (the
    /// Prometheus convention). The admin API serves it too, under its own
    /// token rules.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Namespaces whose Knative objects to serve (repeatable); all when absent.
    #[arg(short = 'n', long = "namespace")]
    pub namespaces: Vec<String>,
    /// Address of the activation API the gateway filters call.
    #[arg(long, default_value = "0.0.0.0:9091")]
    pub activation_addr: SocketAddr,
    /// Address of the health endpoint (`/healthz`).
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    /// This replica's pod: its name in the leader Lease (default: the host
    /// name), and the pod the leader labels so that the activation Service
    /// reaches it.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// The Istio Gateway for external traffic, `namespace/name`.
    #[arg(long, default_value = "knative-serving/knative-ingress-gateway")]
    pub gateway: String,
    /// Where the gateway pulls the filter from (the WasmPlugin's url).
    #[arg(long)]
    pub wasm_url: Option<String>,
    /// File holding the token the gateway filters present to the activation
    /// API (the Secret revgate-gateway-token, mounted); required when the
    /// API is bound beyond loopback, and given to the WasmPlugin's
    /// pluginConfig. Default: REVGATE_GATEWAY_TOKEN (the token itself).
    #[arg(long)]
    pub gateway_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    Process,
    External,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Manifests to apply (files or directories, in order; ConfigMaps in
    /// `knative-serving` configure revgate as they configure Knative).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Refuse files with documents of kinds revgate does not manage
    /// (Deployments, Kubernetes Services…) instead of skipping each with a
    /// warning; nothing is applied.
    #[arg(long)]
    pub strict: bool,
    /// YAML map from container image to the local command that stands for it.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Port of the gateway's HTTP listener.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Port of the admin API (`revgate get …` talks to it).
    #[arg(long, default_value_t = 9090)]
    pub admin_port: u16,
    /// Port of the xDS server Envoy connects to (default: a free port, printed
    /// at start; only Envoy, which `up` configures, needs to know it).
    #[arg(long)]
    pub xds_port: Option<u16>,
    /// Port of the activation service the gateway filter calls (default: a
    /// free port, printed at start).
    #[arg(long)]
    pub activation_port: Option<u16>,
    /// Port of Envoy's admin interface (default: a free port, printed at start).
    #[arg(long)]
    pub envoy_admin_port: Option<u16>,
    /// Envoy worker threads (Envoy's default: one per core).
    #[arg(long)]
    pub envoy_concurrency: Option<u16>,
    /// The domain of service URLs (Knative's `config-domain`) [default:
    /// example.com, Knative's, unless a `config-domain` among the manifests
    /// says otherwise]. Every service is also served as
    /// `<name>.<namespace>.localhost`, which opens on this machine without DNS.
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Directory for state, logs and the generated Envoy bootstrap.
    #[arg(long, default_value = ".revgate")]
    pub state_dir: PathBuf,
    /// The Envoy binary (default: the one scripts/install-tools.sh installs, else `envoy` on PATH).
    #[arg(long, env = "REVGATE_ENVOY")]
    pub envoy: Option<PathBuf>,
    /// The gateway filter (default: build it with scripts/build-filter.sh, or find a built one).
    #[arg(long, env = "REVGATE_FILTER_WASM")]
    pub wasm_filter: Option<PathBuf>,
    /// JSON object merged into the filter's configuration.
    #[arg(long)]
    pub filter_config: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AutoscalerCommand {
    /// Run the KPA decider over JSON steps (file or stdin); one JSON line per step.
    Decide(DecideArgs),
    /// Replay a per-second load trace through the metric windows, the decider,
    /// the scale-to-zero rules and a pod start delay.
    Simulate(SimulateArgs),
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// JSON input; standard input when absent.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// One value per line (or comma-separated): the revision's total
    /// concurrency, or requests per second with `metric=rps`, each second.
    #[arg(long)]
    pub trace: PathBuf,
    /// Revision annotations, `key=value` (the `autoscaling.knative.dev/` prefix may be left out).
    #[arg(long = "annotations", num_args = 1.., value_delimiter = ',')]
    pub annotations: Vec<String>,
    /// `config-autoscaler` keys, `key=value`, as in the ConfigMap.
    #[arg(long = "config", num_args = 1.., value_delimiter = ',')]
    pub config: Vec<String>,
    /// The revision's `containerConcurrency`.
    #[arg(long, default_value_t = 0)]
    pub container_concurrency: u32,
    /// How long a new instance takes to become ready.
    #[arg(long, default_value_t = 1000)]
    pub pod_start_ms: u64,
    #[arg(short = 'o', long, value_enum, default_value_t = SimulateFormat::Csv)]
    pub output: SimulateFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimulateFormat {
    Csv,
    Svg,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Admin API of a running `revgate serve`.
    #[arg(long, env = "REVGATE_SERVER", default_value = "http://127.0.0.1:9090", global = true)]
    pub server: String,
    /// Bearer token for an admin API bound beyond loopback (see `<state-dir>/admin-token`).
    #[arg(long, env = "REVGATE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// Manifest files or directories (YAML or JSON; directories are read in name order).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Refuse files with documents of kinds revgate does not manage
    /// (Deployments, Kubernetes Services…) instead of skipping each with a
    /// warning; nothing is applied.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to show: service (ksvc), configuration (cfg), route (rt),
    /// revision (rev), domainmapping (dm), gateway, activity, kpa or sks.
    pub kind: GetKind,
    /// Only the object with this name.
    pub name: Option<String>,
    /// Namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Every namespace (adds a NAMESPACE column).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GetKind {
    /// Knative Services (also `ksvc`): URL, latest revisions, readiness.
    #[value(alias = "ksvc", alias = "services", alias = "kservice")]
    Service,
    /// Configurations (also `cfg`): latest created and ready revision.
    #[value(alias = "cfg", alias = "configurations", alias = "config")]
    Configuration,
    /// Routes (also `rt`): URL and the traffic split, target by target.
    #[value(alias = "rt", alias = "routes")]
    Route,
    /// Revisions (also `rev`): readiness and replicas.
    #[value(alias = "rev", alias = "revisions")]
    Revision,
    /// DomainMappings (also `dm`): the domain's URL and readiness.
    #[value(alias = "dm", alias = "domainmappings")]
    Domainmapping,
    /// The gateways connected over xDS and what they accepted or rejected.
    #[value(alias = "gateways")]
    Gateway,
    /// Per revision: concurrency, requests and activations the gateways report.
    #[value(alias = "metrics")]
    Activity,
    /// Knative PodAutoscalers (also `pa`): the KPA's desired and actual scale per revision.
    #[value(alias = "podautoscaler", alias = "podautoscalers", alias = "pa")]
    Kpa,
    /// Knative ServerlessServices: whether the gateway holds a revision's
    /// requests (`Proxy`) or sends them to its instances (`Serve`).
    #[value(alias = "serverlessservice", alias = "serverlessservices")]
    Sks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Yaml,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum RenderCommand {
    /// An Envoy bootstrap: static resources for the given manifests, or an
    /// ADS bootstrap that connects Envoy to `revgate serve`.
    Envoy(RenderEnvoyArgs),
    /// Every Kubernetes object cluster mode writes for the given manifests on
    /// an Istio mesh: revision Deployments and Services, VirtualServices per
    /// Route (net-istio's shape) and the gateway's WasmPlugin.
    Istio(RenderIstioArgs),
}

#[derive(Debug, Args)]
pub struct RenderIstioArgs {
    /// Knative manifests (files or directories, applied in order).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Refuse files with documents of kinds revgate does not manage
    /// (Deployments, Kubernetes Services…) instead of skipping each with a
    /// warning; nothing is applied.
    #[arg(long)]
    pub strict: bool,
    /// The Istio Gateway for external traffic, `namespace/name`.
    #[arg(long, default_value = "knative-serving/knative-ingress-gateway")]
    pub gateway: String,
    /// Where the gateway pulls the filter from (see scripts/build-filter-oci.sh).
    #[arg(long)]
    pub wasm_url: Option<String>,
    /// The filter's sha256, pinned in the WasmPlugin.
    #[arg(long)]
    pub wasm_sha256: Option<String>,
    /// Show the `-mesh` VirtualServices as the controller writes them while
    /// the revisions are at zero: calls from inside the mesh go through the
    /// local gateway, whose filter holds them. Without it, every revision is
    /// warm and sidecars call it directly.
    #[arg(long)]
    pub at_zero: bool,
    /// Put the gateway token in this file into the WasmPlugin's pluginConfig
    /// (without it, the controller adds its token when it installs the plugin).
    #[arg(long)]
    pub gateway_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RenderEnvoyArgs {
    /// Manifests to render as static resources (as xDS would serve them).
    #[arg(short = 'f', long = "filename", num_args = 1.., required_unless_present = "ads", conflicts_with = "ads")]
    pub files: Vec<PathBuf>,
    /// Refuse files with documents of kinds revgate does not manage
    /// (Deployments, Kubernetes Services…) instead of skipping each with a
    /// warning; nothing is applied.
    #[arg(long)]
    pub strict: bool,

    /// Print a bootstrap that fetches everything from `revgate serve` over ADS instead.
    #[arg(long)]
    pub ads: bool,
    /// With --ads: the control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds_addr: SocketAddr,
    /// With --ads: use delta xDS (`DELTA_GRPC`) instead of state-of-the-world.
    #[arg(long)]
    pub delta: bool,
    /// With --ads: the Envoy node id.
    #[arg(long, default_value = "revgate-gateway")]
    pub node_id: String,
    /// Port of Envoy's HTTP listener (static resources only).
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Port of Envoy's admin interface (0 = any).
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// With --ads: file holding the gateway token Envoy presents to the xDS
    /// server. Default: REVGATE_GATEWAY_TOKEN (the token itself), else
    /// `<state-dir>/gateway-token` if it exists.
    #[arg(long)]
    pub gateway_token_file: Option<PathBuf>,
    /// With --ads: the state directory of the `revgate serve` to connect to.
    #[arg(long, default_value = ".revgate")]
    pub state_dir: PathBuf,
    /// With --ads: mutual TLS to xDS; the PEM CA that signed the xDS
    /// server's certificate (needs --tls-cert and --tls-key).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// With --tls-ca: Envoy's PEM client certificate chain.
    #[arg(long, requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// With --tls-ca: the PEM key of --tls-cert.
    #[arg(long, requires = "tls_ca")]
    pub tls_key: Option<PathBuf>,
    /// With --tls-ca: the DNS name the server's certificate carries (also
    /// sent as SNI); default: the certificate must carry the --xds-addr IP.
    #[arg(long, requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}
