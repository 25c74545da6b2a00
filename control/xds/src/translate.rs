//! Pure translation of a [`GatewayPlan`] into Envoy resources.
//!
//! No I/O and no clock: equal inputs give equal (and equally ordered)
//! resources, so snapshot versions only move when the plan or the endpoints
//! do. Every name comes from [`crate::names`]. Each input object has its own
//! builder ([`revision_resources`], [`route_resources`], [`http_listener`]),
//! so [`crate::incremental::Translator`] can translate only what changed;
//! [`translate`] runs them all for a whole plan.
//!
//! | Plan                      | Envoy                                                                   |
//! |---------------------------|-------------------------------------------------------------------------|
//! | (always)                  | listener `revgate-http` → HCM → scoped routes `revgate-routes` over ADS, |
//! |                           | keyed on the host of `:authority` (before any `:port`)                  |
//! | `RoutePlan`               | route configuration `route|ns|name` over RDS, one scope `host|<host>`   |
//! |                           | per host it owns (main and tags) selecting it                           |
//! | `RoutePlan.host`          | virtual host `route|ns|name`, weighted clusters by percent              |
//! | revisions' timeouts       | see [Timeouts](#timeouts): no route timeout, a per-try timeout, the     |
//! |                           | filter for what one route cannot say per revision                      |
//! | `TagPlan`                 | virtual host `tag|ns|name|tag`, 100% to the tagged revision             |
//! | `tag_header_routing`      | on the main host, one route per tag matching `Knative-Serving-Tag`      |
//! | `MappedHost` (mappings)   | virtual host `mapping|ns|name|domain`: the main host's routes, the host |
//! |                           | rewritten to the Route's address, `K-Original-Host: <domain>` added     |
//! | `RevisionBackend`         | EDS cluster `rev|ns|revision` + its `ClusterLoadAssignment`             |
//! | `alias_domain` (settings) | each owned host also as `<name>.<namespace>.<alias>`: a domain of its   |
//! |                           | virtual host and a scope of its own (`revgate up`: `localhost`)         |
//!
//! A Route is one route configuration, so changing it sends that one
//! resource, not every host's. A host named by no route has no scope and
//! gets Envoy's 404.
//!
//! # Protocols
//!
//! The HCM accepts WebSocket upgrades (`upgrade_configs`), on every route:
//! without it Envoy answers an upgrade `403`. HTTP/2 cleartext (gRPC) comes
//! in on the same listener (`codec_type: AUTO` tells HTTP/2's preface from
//! HTTP/1) and goes to a revision whose port is named `h2c` over HTTP/2.
//!
//! # Timeouts
//!
//! Knative's queue-proxy starts three timers when a request reaches the
//! revision (knative/serving `pkg/http/handler/timeout.go`):
//! `timeoutSeconds` and `responseStartTimeoutSeconds` fire only while the
//! response has not started (no byte written), each answering 504; once the
//! response started neither ever cuts it (a WebSocket after its `101`, a
//! gRPC stream after its headers). `idleTimeoutSeconds` (0: none) fires when
//! no response byte was written for that long, before or after the start.
//! What revgate's Envoy does with them, verified against Envoy 1.40:
//!
//! | Knative | Envoy |
//! |---|---|
//! | `timeoutSeconds`, `responseStartTimeoutSeconds` | the route's `timeout` is 0 (off): Envoy's route timeout runs until the response *ends* and would cut a long stream. The route's `retry_policy.per_try_timeout` is the shorter of the two (the *response-start deadline*): it starts when the router has the whole request (never on an upgraded WebSocket, whose request never ends; on a bidirectional stream only once the client half-closes) and Envoy ignores it once the response started. Its 504 carries the response flag `UT`, which a `local_reply_config` mapper turns into revgate's answer: `x-revgate-reason` and a body naming the limit and the revision, read from the revision cluster's metadata |
//! | a split whose revisions have different deadlines | one route has one per-try timeout: the longest; the gateway filter answers the same 504 at each revision's own deadline |
//! | `idleTimeoutSeconds` | the gateway filter: Envoy's idle timeouts count request bytes too and run while the filter holds a request for a cold revision |
//!
//! No retry is configured (`retry_on` empty), so a per-try timeout is final.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderValue, HeaderValueOption, Http2ProtocolOptions, Locality, Metadata, SocketAddress, address,
    header_value_option::HeaderAppendAction, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, ScopedRouteConfiguration,
    VirtualHost, WeightedCluster, header_matcher, route, route_action, route_match, scoped_route_configuration,
    weighted_cluster,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, Struct, UInt32Value, Value, value};
use prost::Name;
use revgate_model::plan::{
    Endpoint, EndpointMap, GatewayPlan, MappedHost, ObjectKey, RevisionBackend, RoutePlan, UpstreamProtocol,
};

use crate::filter::FilterSettings;
use crate::names;

mod listener;

pub use listener::{ads_config_source, effective_stream_idle_timeout, http_listener, router_filter};

/// Knative's default `revision-timeout-seconds`, used for a split whose
/// revision is missing from the plan (the model never produces one).
const DEFAULT_REVISION_TIMEOUT: Duration = Duration::from_secs(300);
/// Keys of a revision cluster's metadata (under [`names::METADATA_NAMESPACE`])
/// that the local reply of a response-start timeout reads.
const START_TIMEOUT_REASON_KEY: &str = "start_timeout_reason";
const START_TIMEOUT_FIELD_KEY: &str = "start_timeout_field";
const START_TIMEOUT_SECONDS_KEY: &str = "start_timeout_seconds";
/// `x-revgate-reason` of a request whose revision did not start its
/// response within `timeoutSeconds`.
pub const REQUEST_TIMEOUT_REASON: &str = "request-timeout";
/// `x-revgate-reason` of a request whose revision did not start its
/// response within `responseStartTimeoutSeconds`.
pub const RESPONSE_START_TIMEOUT_REASON: &str = "response-start-timeout";
/// TCP connect timeout towards revision endpoints.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Locality given to every endpoint. Strict xDS clients (gRPC) reject
/// endpoints without a locality and ignore localities without a weight.
const LOCALITY_REGION: &str = "revgate";

pub(crate) const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Knobs of the generated listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsSettings {
    /// Address the HTTP listener binds (default `0.0.0.0`).
    pub listener_address: String,
    /// Port the HTTP listener binds (default 8080).
    pub listener_port: u16,
    /// HCM `stream_idle_timeout` (default 5 min). [`translate`] raises it to
    /// the longest revision timeout plus 60 s when that is longer, because a
    /// request held before the router is cut by this timer.
    pub stream_idle_timeout: Duration,
    /// The data-path filter, when the gateway runs it.
    pub filter: Option<FilterSettings>,
    /// Also serve each host `<name>.<namespace>.<domain>` as
    /// `<name>.<namespace>.<alias_domain>` (see [`alias_host`]). `revgate up`
    /// sets `localhost`, whose names resolve to loopback by standard
    /// (RFC 6761), so that a browser or a plain `curl` opens a service without
    /// a Host header while the Knative domain keeps working.
    pub alias_domain: Option<String>,
}

impl Default for XdsSettings {
    fn default() -> Self {
        Self {
            listener_address: "0.0.0.0".to_owned(),
            listener_port: 8080,
            stream_idle_timeout: Duration::from_secs(5 * 60),
            filter: None,
            alias_domain: None,
        }
    }
}

/// Envoy resources for one plan, each list in a deterministic order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub listeners: Vec<Listener>,
    pub scoped_routes: Vec<ScopedRouteConfiguration>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
}

/// Translates a plan and the live endpoints into Envoy resources.
///
/// Endpoints come from `endpoints`, falling back to a revision's
/// `static_endpoints`; a revision with neither still gets its cluster and an
/// empty assignment, so routing to it never waits for cluster warming.
pub fn translate(plan: &GatewayPlan, endpoints: &EndpointMap, settings: &XdsSettings) -> Resources {
    translate_bypassing(plan, endpoints, settings, &BTreeSet::new())
}

/// [`translate`], serving the Routes whose revisions are all in `bypass`
/// without the gateway filter (see [`crate::warm`]).
pub fn translate_bypassing(
    plan: &GatewayPlan,
    endpoints: &EndpointMap,
    settings: &XdsSettings,
    bypass: &BTreeSet<ObjectKey>,
) -> Resources {
    let revisions: HashMap<&ObjectKey, &RevisionBackend> = plan.revisions.iter().map(|r| (&r.key, &**r)).collect();

    let mut clusters = Vec::with_capacity(plan.revisions.len());
    let mut assignments = Vec::with_capacity(plan.revisions.len());
    for revision in &plan.revisions {
        let (cluster, assignment) = revision_resources(revision, revision_endpoints(revision, endpoints));
        clusters.push(cluster);
        assignments.extend(assignment);
    }

    let mut filters = Vec::new();
    if let Some(filter) = &settings.filter {
        filters.push(crate::filter::wasm_http_filter(filter));
        clusters.push(crate::filter::control_cluster(filter));
    }
    let idle_timeout = effective_stream_idle_timeout(plan, settings);
    let mut shards: BTreeMap<u32, BTreeMap<&ObjectKey, Vec<VirtualHost>>> = BTreeMap::new();
    let mut scoped_routes = Vec::new();
    for (route, owned) in plan.routes.iter().zip(claim_hosts(plan)) {
        let timeouts = route_timeouts(route, |key| revisions.get(key).map(|r| response_start_deadline(r)));
        if let Some((mut virtual_hosts, scopes)) =
            route_resources(route, &owned, plan.tag_header_routing, &timeouts, settings.alias_domain.as_deref())
        {
            if settings.filter.is_some() && crate::warm::bypasses_filter(route, bypass) {
                virtual_hosts.iter_mut().for_each(crate::warm::disable_filter);
            }
            shards.entry(names::route_shard(&route.key)).or_default().insert(&route.key, virtual_hosts);
            scoped_routes.extend(scopes);
        }
    }
    let routes = shards
        .into_iter()
        .map(|(shard, members)| shard_configuration(shard, members.into_values().flatten(), None))
        .collect();
    Resources {
        listeners: vec![http_listener(settings, idle_timeout, filters)],
        scoped_routes,
        routes,
        clusters,
        endpoints: assignments,
    }
}

/// The endpoints a revision is served by: live ones, else its static ones.
pub fn revision_endpoints<'a>(revision: &'a RevisionBackend, endpoints: &'a EndpointMap) -> &'a [Endpoint] {
    endpoints.get(&revision.key).map(Vec::as_slice).or(revision.static_endpoints.as_deref()).unwrap_or_default()
}

/// A revision's cluster and, when it uses EDS, its load assignment.
///
/// A revision with no endpoints still gets its cluster and an empty
/// assignment, so routing to it never waits for cluster warming.
pub fn revision_resources(
    revision: &RevisionBackend,
    endpoints: &[Endpoint],
) -> (Cluster, Option<ClusterLoadAssignment>) {
    let assignment = load_assignment(&revision.key, endpoints);
    if endpoints.iter().all(|e| e.host.parse::<IpAddr>().is_ok()) {
        (revision_cluster(revision), Some(assignment))
    } else {
        (dns_revision_cluster(revision, assignment), None)
    }
}

/// Which hosts of each route (main host first, then its tags) the route
/// owns. Envoy rejects two scopes with one key (and two virtual hosts with
/// one domain); the model keeps hosts unique, and should two routes ever
/// collide, the first (in plan order) keeps the host.
pub fn claim_hosts(plan: &GatewayPlan) -> Vec<Vec<bool>> {
    let mut claimed = std::collections::HashSet::new();
    plan.routes
        .iter()
        .map(|route| {
            std::iter::once(route.host.as_str())
                .chain(route.tags.iter().map(|t| t.host.as_str()))
                .chain(route.mappings.iter().map(|m| m.host.as_str()))
                .map(|host| claimed.insert(host))
                .collect()
        })
        .collect()
}

/// The longest a request sent to `revision` may wait for its response to
/// start, in seconds: the shorter of `timeoutSeconds` and
/// `responseStartTimeoutSeconds` (see [Timeouts](self#timeouts)).
pub fn response_start_deadline(revision: &RevisionBackend) -> u64 {
    start_timeout(revision).2
}

/// Which of a revision's two response-start limits applies, as
/// (`x-revgate-reason`, Knative field, seconds): `responseStartTimeoutSeconds`
/// when it is shorter than `timeoutSeconds`, else `timeoutSeconds`.
fn start_timeout(revision: &RevisionBackend) -> (&'static str, &'static str, u64) {
    let start = revision.response_start_timeout_seconds;
    if start > 0 && start < revision.timeout_seconds {
        (RESPONSE_START_TIMEOUT_REASON, "responseStartTimeoutSeconds", start)
    } else {
        (REQUEST_TIMEOUT_REASON, "timeoutSeconds", revision.timeout_seconds)
    }
}

/// Per split, then per tag: the response-start deadline of the revision it
/// sends to ([`response_start_deadline`]), in seconds, as `timeout_of` knows
/// it (Knative's default for a revision missing from the plan).
pub fn route_timeouts(route: &RoutePlan, timeout_of: impl Fn(&ObjectKey) -> Option<u64>) -> Vec<u64> {
    route
        .splits
        .iter()
        .map(|s| &s.revision)
        .chain(route.tags.iter().map(|t| &t.revision))
        .map(|key| timeout_of(key).unwrap_or(DEFAULT_REVISION_TIMEOUT.as_secs()))
        .collect()
}

/// A Route's virtual hosts and one scope per host it owns (`owned`, from
/// [`claim_hosts`]), each scope selecting the route configuration of the
/// Route's shard; `None` when it owns no host. `timeouts` come from
/// [`route_timeouts`]. With `alias_domain`, each owned host's alias (see
/// [`alias_host`]) gets a scope too and is a domain of the same virtual host.
pub fn route_resources(
    route: &RoutePlan,
    owned: &[bool],
    tag_header_routing: bool,
    timeouts: &[u64],
    alias_domain: Option<&str>,
) -> Option<(Vec<VirtualHost>, Vec<ScopedRouteConfiguration>)> {
    let name = names::route_configuration(&route.key);
    let hosts = || {
        std::iter::once((&route.host, true))
            .chain(route.tags.iter().map(|t| (&t.host, true)))
            // A mapped domain is the user's own: it has no alias.
            .chain(route.mappings.iter().map(|m| (&m.host, false)))
    };
    let owned_hosts: Vec<(&String, bool)> = hosts().zip(owned).filter(|(_, owned)| **owned).map(|(h, _)| h).collect();
    if owned_hosts.is_empty() {
        return None;
    }
    let alias = |host: &str, aliased: bool| {
        alias_domain.filter(|_| aliased).and_then(|domain| alias_host(host, &route.key.namespace, domain))
    };
    let mut virtual_hosts = route_virtual_hosts(route, tag_header_routing, timeouts);
    if let Some(main) = virtual_hosts.first().cloned() {
        virtual_hosts.extend(route.mappings.iter().map(|mapped| mapping_virtual_host(route, &main, mapped)));
    }
    let virtual_hosts: Vec<VirtualHost> = virtual_hosts
        .into_iter()
        .zip(hosts())
        .zip(owned)
        .filter(|(_, owned)| **owned)
        .map(|((mut vhost, (host, aliased)), _)| {
            if let Some(alias) = alias(host, aliased) {
                vhost.domains.extend(names::host_domains(&alias));
            }
            vhost
        })
        .collect();
    let scopes = owned_hosts
        .into_iter()
        .flat_map(|(host, aliased)| std::iter::once(host.clone()).chain(alias(host, aliased)))
        .map(|host| ScopedRouteConfiguration {
            name: names::host_scope(&host),
            route_configuration_name: name.clone(),
            key: Some(scoped_route_configuration::Key {
                fragments: vec![scoped_route_configuration::key::Fragment {
                    r#type: Some(scoped_route_configuration::key::fragment::Type::StringKey(host)),
                }],
            }),
            ..Default::default()
        })
        .collect();
    Some((virtual_hosts, scopes))
}

/// The alias of a Route's `host` under `alias_domain`: the host up to and
/// including its namespace label, then `alias_domain`
/// (`hello.default.example.com` → `hello.default.localhost`, a tag's
/// `candidate-hello.default.example.com` → `candidate-hello.default.localhost`).
/// `None` for a host without a `.<namespace>.` label (a custom
/// `domain-template`) or already under `alias_domain`.
pub fn alias_host(host: &str, namespace: &str, alias_domain: &str) -> Option<String> {
    if host.ends_with(&format!(".{alias_domain}")) {
        return None;
    }
    let label = format!(".{namespace}.");
    let end = host.find(&label)? + label.len();
    let prefix = host.get(..end)?;
    Some(format!("{prefix}{alias_domain}"))
}

/// The route configuration of one shard: the virtual hosts of its Routes,
/// in key order, then `extra` (fault injection in tests). Every scope of a
/// host in the shard selects it; a virtual host matches its domains as
/// Envoy always does, so sharing a configuration routes as one per Route
/// did.
pub fn shard_configuration(
    shard: u32,
    virtual_hosts: impl IntoIterator<Item = VirtualHost>,
    extra: Option<&VirtualHost>,
) -> RouteConfiguration {
    RouteConfiguration {
        name: names::shard_route_configuration(shard),
        virtual_hosts: virtual_hosts.into_iter().chain(extra.cloned()).collect(),
        ..Default::default()
    }
}

/// The main virtual host, then one per tag.
fn route_virtual_hosts(route: &RoutePlan, tag_header_routing: bool, timeouts: &[u64]) -> Vec<VirtualHost> {
    let (split_timeouts, tag_timeouts) = timeouts.split_at(route.splits.len().min(timeouts.len()));
    let tag_timeout = |i: usize| tag_timeouts.get(i).copied().unwrap_or(DEFAULT_REVISION_TIMEOUT.as_secs());
    let mut main_routes = Vec::new();
    if tag_header_routing {
        // As net-istio does: a request naming a tag in the header goes to that
        // tag's revision; an unknown or missing tag falls through to the split.
        for (i, tag) in route.tags.iter().enumerate() {
            let mut matcher = prefix_match("/");
            matcher.headers.push(HeaderMatcher {
                name: names::TAG_HEADER.to_owned(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(tag.tag.clone())),
                    ..Default::default()
                })),
                ..Default::default()
            });
            main_routes.push(weighted_route(matcher, &[(&tag.revision, 100)], &[tag_timeout(i)]));
        }
    }
    let splits: Vec<(&ObjectKey, u32)> = route.splits.iter().map(|s| (&s.revision, s.percent)).collect();
    main_routes.push(weighted_route(prefix_match("/"), &splits, split_timeouts));

    let mut vhosts = vec![VirtualHost {
        name: names::route_virtual_host(&route.key),
        domains: names::host_domains(&route.host).into(),
        routes: main_routes,
        ..Default::default()
    }];
    for (i, tag) in route.tags.iter().enumerate() {
        vhosts.push(VirtualHost {
            name: names::tag_virtual_host(&route.key, &tag.tag),
            domains: names::host_domains(&tag.host).into(),
            routes: vec![weighted_route(prefix_match("/"), &[(&tag.revision, 100)], &[tag_timeout(i)])],
            ..Default::default()
        });
    }
    vhosts
}

/// A DomainMapping's domain: the Route's main virtual host under the
/// domain, each route rewriting the host to the Route's address and adding
/// `K-Original-Host`, as the Ingress Knative writes for a mapping does.
fn mapping_virtual_host(route: &RoutePlan, main: &VirtualHost, mapped: &MappedHost) -> VirtualHost {
    let mut routes = main.routes.clone();
    for r in &mut routes {
        if let Some(route::Action::Route(action)) = &mut r.action {
            action.host_rewrite_specifier =
                Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(mapped.rewrite_host.clone()));
        }
    }
    VirtualHost {
        name: names::mapping_virtual_host(&route.key, &mapped.host),
        domains: names::host_domains(&mapped.host).into(),
        routes,
        request_headers_to_add: vec![overwrite_header(names::ORIGINAL_HOST_HEADER, &mapped.host)],
        ..Default::default()
    }
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch { path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_owned())), ..Default::default() }
}

/// A route splitting traffic by weight; weights are Knative percents, so
/// they total 100. No route timeout (it would cut a response that started);
/// the per-try timeout is the longest response-start deadline of the
/// revisions it sends to (see [Timeouts](self#timeouts)).
fn weighted_route(matcher: RouteMatch, splits: &[(&ObjectKey, u32)], timeouts: &[u64]) -> Route {
    let deadline = timeouts.iter().copied().max().map_or(DEFAULT_REVISION_TIMEOUT, Duration::from_secs);
    let clusters = splits
        .iter()
        .map(|(key, percent)| weighted_cluster::ClusterWeight {
            name: names::revision_cluster(key),
            weight: Some(UInt32Value { value: *percent }),
            request_headers_to_add: vec![
                overwrite_header(names::REVISION_HEADER, &key.name),
                overwrite_header(names::NAMESPACE_HEADER, &key.namespace),
            ],
            ..Default::default()
        })
        .collect();
    Route {
        r#match: Some(matcher),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters,
                ..Default::default()
            })),
            timeout: Some(pb_duration(Duration::ZERO)),
            retry_policy: Some(RetryPolicy { per_try_timeout: Some(pb_duration(deadline)), ..Default::default() }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A request header set by the gateway; a client-sent value is replaced so
/// it cannot impersonate another revision.
fn overwrite_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_owned(), value: value.to_owned(), ..Default::default() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The EDS cluster of a revision.
fn revision_cluster(revision: &RevisionBackend) -> Cluster {
    Cluster {
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        }),
        ..base_cluster(revision)
    }
}

/// A revision whose endpoints include a DNS name cannot use EDS (Envoy only
/// accepts IP addresses there), so it gets a STRICT_DNS cluster with its
/// endpoints inlined.
fn dns_revision_cluster(revision: &RevisionBackend, assignment: ClusterLoadAssignment) -> Cluster {
    Cluster {
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32)),
        load_assignment: Some(assignment),
        ..base_cluster(revision)
    }
}

fn base_cluster(revision: &RevisionBackend) -> Cluster {
    let mut facts = vec![
        ("namespace", string_value(&revision.key.namespace)),
        ("revision", string_value(&revision.key.name)),
        ("configuration", string_value(&revision.configuration)),
        (
            "container_concurrency",
            Value { kind: Some(value::Kind::NumberValue(f64::from(revision.container_concurrency))) },
        ),
    ];
    if let Some(service) = &revision.service {
        facts.push(("service", string_value(service)));
    }
    let (reason, field, seconds) = start_timeout(revision);
    facts.push((START_TIMEOUT_REASON_KEY, string_value(reason)));
    facts.push((START_TIMEOUT_FIELD_KEY, string_value(field)));
    facts.push((START_TIMEOUT_SECONDS_KEY, string_value(&seconds.to_string())));
    let metadata = Metadata {
        filter_metadata: HashMap::from([(
            names::METADATA_NAMESPACE.to_owned(),
            Struct { fields: facts.into_iter().map(|(k, v)| (k.to_owned(), v)).collect() },
        )]),
        ..Default::default()
    };

    let mut typed_extension_protocol_options = HashMap::new();
    if revision.protocol == UpstreamProtocol::H2c {
        typed_extension_protocol_options.insert(HTTP_PROTOCOL_OPTIONS.to_owned(), to_any(&http2_protocol_options()));
    }

    Cluster {
        name: names::revision_cluster(&revision.key),
        alt_stat_name: names::revision_stat_name(&revision.key),
        connect_timeout: Some(pb_duration(CONNECT_TIMEOUT)),
        metadata: Some(metadata),
        typed_extension_protocol_options,
        circuit_breakers: Some(revision_circuit_breakers()),
        ..Default::default()
    }
}

/// Envoy's own limits on a revision cluster. The cluster-wide ones are
/// raised out of the way: Envoy's defaults (1024 connections, pending and
/// active requests) would answer 503 to most of a burst the gateway filter
/// releases at once (Knative's activator queues up to 10,000 requests per
/// revision); the filter is what limits a revision: it holds, caps held
/// requests and throttles to `containerConcurrency`.
///
/// Connections are bounded per endpoint instead. A released burst of
/// HTTP/1.1 requests would otherwise open one upstream connection per
/// request, on top of the held downstream connection each one already
/// has, and run Envoy out of file descriptors: at 10,000 held requests
/// and a 20,000 open-files limit, half of the burst failed to connect,
/// and each failed connection also ejected the requests pending on it.
/// With the bound, the rest of a burst waits in the endpoint's pending
/// queue and reuses connections as answers come back.
fn revision_circuit_breakers() -> CircuitBreakers {
    use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
    let unlimited = Some(UInt32Value { value: REVISION_CIRCUIT_BREAKER_LIMIT });
    CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: unlimited,
            max_pending_requests: unlimited,
            max_requests: unlimited,
            ..Default::default()
        }],
        // Envoy honours only `max_connections` per host.
        per_host_thresholds: vec![Thresholds {
            max_connections: Some(UInt32Value { value: ENDPOINT_MAX_CONNECTIONS }),
            ..Default::default()
        }],
    }
}

/// Far above what any held burst reaches (10,000 per revision per worker).
const REVISION_CIRCUIT_BREAKER_LIMIT: u32 = 1_000_000;

/// Upstream connections Envoy opens to one revision endpoint at most:
/// Envoy's own default for a whole cluster, well under a usual open-files
/// budget even with a full hold queue's downstream connections.
pub const ENDPOINT_MAX_CONNECTIONS: u32 = 1024;

/// Upstream options that make a cluster speak HTTP/2 (cleartext unless the
/// cluster has TLS), keyed by [`HTTP_PROTOCOL_OPTIONS`] in
/// `typed_extension_protocol_options`.
pub(crate) fn http2_protocol_options() -> HttpProtocolOptions {
    use http_protocol_options::explicit_http_config::ProtocolConfig;
    HttpProtocolOptions {
        upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())),
            },
        )),
        ..Default::default()
    }
}

pub(crate) fn load_assignment(revision: &ObjectKey, endpoints: &[Endpoint]) -> ClusterLoadAssignment {
    // Sorted and deduplicated so that runtimes reporting the same set in a
    // different order do not produce a new version.
    let unique: BTreeSet<&Endpoint> = endpoints.iter().collect();
    let lb_endpoints: Vec<LbEndpoint> = unique
        .into_iter()
        .map(|e| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(socket_address(&e.host, e.port)),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    let endpoints = if lb_endpoints.is_empty() {
        Vec::new()
    } else {
        vec![LocalityLbEndpoints {
            locality: Some(Locality { region: LOCALITY_REGION.to_owned(), ..Default::default() }),
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            lb_endpoints,
            ..Default::default()
        }]
    };
    ClusterLoadAssignment { cluster_name: names::revision_cluster(revision), endpoints, ..Default::default() }
}

pub(crate) fn socket_address(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn string_value(s: &str) -> Value {
    Value { kind: Some(value::Kind::StringValue(s.to_owned())) }
}

pub(crate) fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Packs a message into an `Any` with its canonical type URL.
pub fn to_any<M: prost::Message + Name>(message: &M) -> Any {
    Any { type_url: M::type_url(), value: message.encode_to_vec() }
}

#[cfg(test)]
pub(crate) mod tests;
