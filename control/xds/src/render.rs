//! Envoy bootstrap YAML, rendered from the same protos the ADS server sends.
//!
//! There is no hand-written YAML: a `Bootstrap` message is built, converted
//! to proto3 JSON through envoy-types' descriptors (which also resolves the
//! `Any`s inside), then written as YAML. What Envoy validates is exactly what
//! revgate would serve.
//!
//! - [`static_bootstrap_yaml`]: a self-contained config (no control plane):
//!   the translated listeners with their route configuration inlined, and
//!   the clusters with their endpoints inlined as STATIC load assignments.
//! - [`ads_bootstrap_yaml`]: a config that fetches everything from revgate's
//!   ADS server, presenting the gateway token and, optionally, a client
//!   certificate (mutual TLS), and streaming its statistics back to the
//!   control plane's stats sink ([`crate::stats`]) every second.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, DataSource, GrpcService, HeaderValue, Node, TransportSocket, api_config_source,
    data_source, grpc_service, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::metrics::v3::{
    HistogramBucketSettings, HistogramEmitMode, MetricsServiceConfig, StatsConfig, StatsMatcher, StatsSink,
    stats_matcher, stats_sink,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
    common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{ListStringMatcher, RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::BoolValue;
use prost::{Message, Name};
use prost_reflect::SerializeOptions;
use revgate_model::plan::{Endpoint, ObjectKey};
use revgate_proto::DURATION_BOUNDS_SECONDS;

use crate::descriptors::{self, DescriptorError};
use crate::names;
use crate::server::{Api, GatewayToken, auth};
use crate::translate::{
    HTTP_PROTOCOL_OPTIONS, Resources, ads_config_source, http2_protocol_options, pb_duration, socket_address, to_any,
};

const ADMIN_ADDRESS: &str = "127.0.0.1";
/// The statistic of a revision cluster's response times, before tag
/// extraction (`cluster.<namespace>/<revision>.upstream_rq_time`).
const REVISION_RQ_TIME_STAT: &str = r"^cluster\.[^./]+/[^./]+\.upstream_rq_time$";
/// Envoy's own statistics: every one but a revision cluster's and a route
/// shard's (see [`revision_stats_config`]).
const ENVOY_WIDE_STAT: &str = r"^[^/|]*$";
/// A revision cluster's request and connection statistics (Envoy matches
/// a safe regex against the whole name).
const REVISION_UPSTREAM_STATS: &str = r"^cluster\.[^./]+/[^./]+\.upstream_.*$";
/// Envoy's name for the `MetricsService` stats sink.
const METRICS_SERVICE_SINK: &str = "envoy.stat_sinks.metrics_service";
const XDS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a bootstrap could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("listener {listener} loads route configuration {route}, which is not among the translated routes")]
    MissingRoute { listener: String, route: String },
    #[error("cluster {cluster} loads endpoints over EDS, but there is no cluster load assignment named {cluster}")]
    MissingEndpoints { cluster: String },
    #[error("decoding the HTTP connection manager of listener {listener}: {source}")]
    Hcm { listener: String, source: prost::DecodeError },
    #[error("converting the bootstrap to proto3 JSON: {0}")]
    Descriptors(#[from] DescriptorError),
    #[error("converting the bootstrap to proto3 JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("writing the bootstrap as YAML: {0}")]
    Yaml(#[source] serde_yaml_ng::Error),
}

/// Options of a static (control-plane-less) bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapOptions {
    pub node_id: String,
    pub cluster: String,
    /// Envoy's admin interface listens on `127.0.0.1:admin_port`.
    pub admin_port: u16,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        Self { node_id: "revgate-gateway".to_owned(), cluster: "revgate".to_owned(), admin_port: 9901 }
    }
}

/// Options of a bootstrap that takes its configuration from revgate's ADS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsBootstrapOptions {
    pub node_id: String,
    pub cluster: String,
    /// Where revgate's ADS gRPC server listens.
    pub xds_address: SocketAddr,
    /// `GRPC` (state of the world) or `DELTA_GRPC`.
    pub api: Api,
    /// Envoy's admin interface listens on `127.0.0.1:admin_port`.
    pub admin_port: u16,
    /// The gateway token, presented on the ADS stream as
    /// `authorization: Bearer <token>` (the `grpc_service`'s
    /// `initial_metadata`); required by a server bound beyond loopback.
    pub token: Option<GatewayToken>,
    /// Mutual TLS to the ADS server; plaintext when absent.
    pub tls: Option<AdsTls>,
}

/// Mutual TLS between Envoy and the ADS server: PEM files on the gateway's
/// file system (Envoy reads them; nothing is inlined into the bootstrap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsTls {
    /// The CA that signed the xDS server's certificate.
    pub ca: String,
    /// Envoy's client certificate chain, signed by the CA the server trusts.
    pub cert: String,
    /// The key of `cert`.
    pub key: String,
    /// The DNS name the server's certificate must carry, also sent as SNI;
    /// when absent, the certificate must carry the xDS address' IP.
    pub server_name: Option<String>,
}

/// Envoy's TLS transport socket.
const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// A bootstrap whose `static_resources` are exactly `resources`, with routes
/// and endpoints inlined.
pub fn static_bootstrap_yaml(resources: &Resources, opts: &BootstrapOptions) -> Result<String, RenderError> {
    let listeners = resources.listeners.iter().map(|l| inline_routes(l, resources)).collect::<Result<Vec<_>, _>>()?;
    let clusters =
        resources.clusters.iter().map(|c| inline_endpoints(c, &resources.endpoints)).collect::<Result<Vec<_>, _>>()?;
    let bootstrap = Bootstrap {
        node: Some(node(&opts.node_id, &opts.cluster)),
        admin: Some(admin(opts.admin_port)),
        static_resources: Some(bootstrap::StaticResources { listeners, clusters, ..Default::default() }),
        ..Default::default()
    };
    to_yaml(&bootstrap)
}

/// A bootstrap with ADS (`GRPC` or `DELTA_GRPC`, transport v3) for clusters
/// and listeners, and one static HTTP/2 cluster to reach the ADS server.
pub fn ads_bootstrap_yaml(opts: &AdsBootstrapOptions) -> Result<String, RenderError> {
    let api_type = match opts.api {
        Api::Sotw => api_config_source::ApiType::Grpc,
        Api::Delta => api_config_source::ApiType::DeltaGrpc,
    };
    let control_plane = GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
            cluster_name: names::XDS_CLUSTER.to_owned(),
            ..Default::default()
        })),
        initial_metadata: opts
            .token
            .iter()
            .map(|token| HeaderValue {
                key: auth::AUTHORIZATION.to_owned(),
                value: token.bearer(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let ads_config = ApiConfigSource {
        api_type: api_type as i32,
        transport_api_version: ApiVersion::V3 as i32,
        grpc_services: vec![control_plane.clone()],
        set_node_on_first_message_only: true,
        ..Default::default()
    };

    let xds_endpoint = Endpoint { host: opts.xds_address.ip().to_string(), port: opts.xds_address.port() };
    let mut xds_assignment = crate::translate::load_assignment(&ObjectKey::new("", ""), &[xds_endpoint]);
    xds_assignment.cluster_name = names::XDS_CLUSTER.to_owned();
    let xds_cluster = Cluster {
        name: names::XDS_CLUSTER.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
        connect_timeout: Some(pb_duration(XDS_CONNECT_TIMEOUT)),
        load_assignment: Some(xds_assignment),
        typed_extension_protocol_options: [(HTTP_PROTOCOL_OPTIONS.to_owned(), to_any(&http2_protocol_options()))]
            .into_iter()
            .collect(),
        transport_socket: opts.tls.as_ref().map(|tls| xds_tls_socket(tls, opts.xds_address)),
        ..Default::default()
    };

    let bootstrap = Bootstrap {
        node: Some(node(&opts.node_id, &opts.cluster)),
        admin: Some(admin(opts.admin_port)),
        dynamic_resources: Some(bootstrap::DynamicResources {
            lds_config: Some(ads_config_source()),
            cds_config: Some(ads_config_source()),
            ads_config: Some(ads_config),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources { clusters: vec![xds_cluster], ..Default::default() }),
        stats_sinks: vec![metrics_service_sink(control_plane)],
        stats_config: Some(revision_stats_config()),
        stats_flush_interval: Some(pb_duration(crate::stats::FLUSH_INTERVAL)),
        deferred_stat_options: Some(deferred_stats()),
        ..Default::default()
    };
    to_yaml(&bootstrap)
}

/// Envoy creates a cluster's traffic statistics (`upstream_rq_*`,
/// `upstream_cx_*`) when the cluster first uses them rather than when it
/// loads. Every revision, at zero or not, has a cluster, and most never
/// serve a request in a given Envoy's life: at 10,000 Services (20,000
/// clusters) an idle Envoy spent 12% of a core on them (their histograms
/// merged at every one-second flush, on the main thread that also applies
/// xDS) and 1.3 GB of memory; created on first use, 0.7% and 0.9 GB. What
/// the control plane reads of them is unchanged: a cluster that served
/// nothing has nothing to report.
fn deferred_stats() -> bootstrap::DeferredStatOptions {
    bootstrap::DeferredStatOptions { enable_deferred_creation_stats: true }
}

/// Envoy keeps the revision clusters' response times (`upstream_rq_time`)
/// in Knative's latency buckets, so that the control plane can count the
/// requests no filter saw into its own Knative histograms, and Prometheus
/// reads Envoy's with the same bounds.
///
/// Of a revision cluster's statistics, Envoy keeps only the `upstream_*`
/// families (requests and connections: what the control plane, Flagger and
/// an operator's diagnosis read); Envoy's own are all kept. Envoy
/// flushes each statistic ever set to the stats sink every second, and the
/// rest of a cluster's (membership, update and circuit-breaker gauges,
/// versions) is set as soon as the cluster loads: with 10,000 Services,
/// flushing them kept Envoy's main thread, which also applies xDS, busy
/// all the time, and held twice the memory. A revision cluster that served
/// nothing now has nothing to flush. The RDS statistics of each route
/// shard (`http.<prefix>.rds.routes|<shard>.*`, eight per shard, set when
/// the shard loads) go too: 4,096 shards made 32,000 of them, which Envoy
/// flushed and the control plane decoded every second.
fn revision_stats_config() -> StatsConfig {
    let regex = |regex: &str| StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: regex.to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    };
    StatsConfig {
        stats_matcher: Some(StatsMatcher {
            stats_matcher: Some(stats_matcher::StatsMatcher::InclusionList(ListStringMatcher {
                // A revision cluster's statistics are the only ones whose
                // names hold a `/` (`alt_stat_name`: `<namespace>/<revision>`),
                // a route shard's the only ones with a `|` (`routes|<shard>`).
                patterns: vec![regex(ENVOY_WIDE_STAT), regex(REVISION_UPSTREAM_STATS)],
            })),
        }),
        histogram_bucket_settings: vec![HistogramBucketSettings {
            r#match: Some(regex(REVISION_RQ_TIME_STAT)),
            buckets: DURATION_BOUNDS_SECONDS.iter().map(|seconds| seconds * 1000.0).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Envoy's `MetricsService` stats sink towards the control plane (see
/// [`crate::stats`]): counters as deltas since the previous flush, tags as
/// labels, histograms as buckets (the control plane reads the revision
/// clusters' response times).
/// Envoy flushes only statistics that were ever used, so clusters that
/// never served a request cost nothing.
fn metrics_service_sink(control_plane: GrpcService) -> StatsSink {
    let config = MetricsServiceConfig {
        grpc_service: Some(control_plane),
        transport_api_version: ApiVersion::V3 as i32,
        report_counters_as_deltas: Some(BoolValue { value: true }),
        emit_tags_as_labels: true,
        histogram_emit_mode: HistogramEmitMode::Histogram as i32,
        ..Default::default()
    };
    StatsSink {
        name: METRICS_SERVICE_SINK.to_owned(),
        config_type: Some(stats_sink::ConfigType::TypedConfig(to_any(&config))),
    }
}

/// The xDS cluster's TLS: Envoy's certificate, and the server's verified
/// against the CA and the expected name (Envoy checks no name unless told).
fn xds_tls_socket(tls: &AdsTls, xds_address: SocketAddr) -> TransportSocket {
    let file = |path: &str| DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    };
    let (san_type, name) = match &tls.server_name {
        Some(name) => (subject_alt_name_matcher::SanType::Dns, name.clone()),
        None => (subject_alt_name_matcher::SanType::IpAddress, xds_address.ip().to_string()),
    };
    let validation = CertificateValidationContext {
        trusted_ca: Some(file(&tls.ca)),
        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
            san_type: san_type as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(name)),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: Some(file(&tls.cert)),
                private_key: Some(file(&tls.key)),
                ..Default::default()
            }],
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContext(validation)),
            ..Default::default()
        }),
        sni: tls.server_name.clone().unwrap_or_default(),
        ..Default::default()
    };
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(to_any(&context))),
    }
}

fn node(id: &str, cluster: &str) -> Node {
    Node { id: id.to_owned(), cluster: cluster.to_owned(), ..Default::default() }
}

fn admin(port: u16) -> Admin {
    Admin { address: Some(socket_address(ADMIN_ADDRESS, port)), ..Default::default() }
}

/// The listener with its routes inline: an RDS reference becomes that route
/// configuration, and scoped routes become one route configuration holding
/// every Route's virtual hosts (a static file has no scopes to load; hosts
/// are unique, so the virtual hosts route exactly as the scopes do).
fn inline_routes(listener: &Listener, resources: &Resources) -> Result<Listener, RenderError> {
    let mut listener = listener.clone();
    let hcm_url = HttpConnectionManager::type_url();
    let name = listener.name.clone();
    for chain in listener.filter_chains.iter_mut().chain(listener.default_filter_chain.iter_mut()) {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            if any.type_url != hcm_url {
                continue;
            }
            let mut hcm = HttpConnectionManager::decode(any.value.as_slice())
                .map_err(|source| RenderError::Hcm { listener: name.clone(), source })?;
            let inline = match &hcm.route_specifier {
                Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                    resources.routes.iter().find(|r| r.name == rds.route_config_name).cloned().ok_or_else(|| {
                        RenderError::MissingRoute { listener: name.clone(), route: rds.route_config_name.clone() }
                    })?
                }
                Some(http_connection_manager::RouteSpecifier::ScopedRoutes(scoped)) => RouteConfiguration {
                    name: scoped.name.clone(),
                    virtual_hosts: resources.routes.iter().flat_map(|r| r.virtual_hosts.iter().cloned()).collect(),
                    ..Default::default()
                },
                _ => continue,
            };
            hcm.route_specifier = Some(http_connection_manager::RouteSpecifier::RouteConfig(inline));
            *any = to_any(&hcm);
        }
    }
    Ok(listener)
}

/// An EDS cluster becomes a STATIC cluster carrying its assignment.
fn inline_endpoints(c: &Cluster, assignments: &[ClusterLoadAssignment]) -> Result<Cluster, RenderError> {
    let eds = cluster::DiscoveryType::Eds as i32;
    let is_eds = matches!(c.cluster_discovery_type, Some(cluster::ClusterDiscoveryType::Type(t)) if t == eds);
    if !is_eds {
        return Ok(c.clone());
    }
    let service_name = c
        .eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| c.name.clone());
    let assignment = assignments
        .iter()
        .find(|a| a.cluster_name == service_name)
        .ok_or_else(|| RenderError::MissingEndpoints { cluster: c.name.clone() })?;
    Ok(Cluster {
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
        eds_cluster_config: None,
        load_assignment: Some(assignment.clone()),
        ..c.clone()
    })
}

/// proto3 JSON (field names as in the .proto files, like Envoy's docs), then YAML.
fn to_yaml(bootstrap: &Bootstrap) -> Result<String, RenderError> {
    let message = descriptors::decode_dynamic(&Bootstrap::full_name(), &bootstrap.encode_to_vec())?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    let json = message.serialize_with_options(serde_json::value::Serializer, &options).map_err(RenderError::Json)?;
    serde_yaml_ng::to_string(&json).map_err(RenderError::Yaml)
}
