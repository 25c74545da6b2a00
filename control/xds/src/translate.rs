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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HeaderValue, HeaderValueOption, Http2ProtocolOptions,
    Locality, Metadata, SocketAddress, address, config_source, header_value_option::HeaderAppendAction, socket_address,
};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, ScopedRouteConfiguration, VirtualHost,
    WeightedCluster, header_matcher, route, route_action, route_match, scoped_route_configuration, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::common::matching::v3::ExtensionWithMatcher;
use envoy_types::pb::envoy::extensions::filters::common::matcher::action::v3::SkipFilter;
use envoy_types::pb::envoy::extensions::filters::http::lua::v3::Lua;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, ScopedRds, ScopedRoutes, http_connection_manager, http_filter, scoped_routes,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::envoy::r#type::matcher::v3::HttpRequestHeaderMatchInput;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, Struct, UInt32Value, Value, value};
use envoy_types::pb::xds::core::v3::TypedExtensionConfig as XdsTypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3 as xds_matcher;
use prost::Name;
use revgate_model::plan::{
    Endpoint, EndpointMap, GatewayPlan, MappedHost, ObjectKey, RevisionBackend, RoutePlan, UpstreamProtocol,
};

use crate::filter::FilterSettings;
use crate::names;

/// Knative's default `revision-timeout-seconds`, used for a split whose
/// revision is missing from the plan (the model never produces one).
const DEFAULT_REVISION_TIMEOUT: Duration = Duration::from_secs(300);
/// How much longer than the longest revision timeout a stream may stay idle.
/// Requests held by the data-path filter are cut by the idle timeout, not the
/// route timeout, so it must leave room for the whole revision timeout.
const IDLE_TIMEOUT_MARGIN: Duration = Duration::from_secs(60);
/// TCP connect timeout towards revision endpoints.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Locality given to every endpoint. Strict xDS clients (gRPC) reject
/// endpoints without a locality and ignore localities without a weight.
const LOCALITY_REGION: &str = "revgate";

/// Envoy's well-known filter and extension names.
const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
const ROUTER_FILTER: &str = "envoy.filters.http.router";
const LUA_FILTER: &str = "envoy.filters.http.lua";

/// Lowercases a `:authority` that has an ASCII capital and has Envoy pick
/// the route again. Scope keys are compared byte for byte, while hosts are
/// case-insensitive (RFC 9110 §4.2.3): without this, `Host: Hello.example.com`
/// finds no scope and gets 404. Hosts already in lowercase (what browsers and
/// most clients send) pass untouched, so the common path only runs `find`.
/// Lua patterns and `string.lower` are ASCII-only, as hosts are. Clearing
/// the route cache also clears the route the gateway filter reads (it reads
/// `xds.cluster_name`, which does not pick a route again), so the script
/// asks for the route's metadata, which does: without it, a cold revision's
/// request passed the filter unheld and got 503.
const LOWERCASE_HOST_LUA: &str = r#"function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local host = headers:get(":authority")
  if host ~= nil and host:find("%u") ~= nil then
    headers:replace(":authority", host:lower())
    request_handle:clearRouteCache()
    request_handle:metadata()
  end
end
"#;
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
        let timeouts = route_timeouts(route, |key| revisions.get(key).map(|r| r.timeout_seconds));
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

/// Per split, then per tag: the timeout of the revision it sends to, in
/// seconds, as `timeout_of` knows it (Knative's default for a revision
/// missing from the plan).
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

/// The HCM `stream_idle_timeout` for a plan: the configured one, raised to
/// the longest revision timeout plus 60 s when that is longer.
pub fn effective_stream_idle_timeout(plan: &GatewayPlan, settings: &XdsSettings) -> Duration {
    plan.revisions
        .iter()
        .map(|r| Duration::from_secs(r.timeout_seconds).saturating_add(IDLE_TIMEOUT_MARGIN))
        .fold(settings.stream_idle_timeout, Duration::max)
}

/// The HTTP listener. `filters_before_router` are inserted, in order, ahead
/// of the router filter (the data-path wasm filter goes there).
pub fn http_listener(
    settings: &XdsSettings,
    stream_idle_timeout: Duration,
    filters_before_router: Vec<HttpFilter>,
) -> Listener {
    let mut http_filters = vec![lowercase_host_filter()];
    http_filters.extend(filters_before_router);
    http_filters.push(router_filter());
    let hcm = HttpConnectionManager {
        stat_prefix: names::HTTP_STAT_PREFIX.to_owned(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stream_idle_timeout: Some(pb_duration(stream_idle_timeout)),
        route_specifier: Some(http_connection_manager::RouteSpecifier::ScopedRoutes(scoped_routes_by_host())),
        http_filters,
        ..Default::default()
    };
    Listener {
        name: names::LISTENER.to_owned(),
        address: Some(socket_address(&settings.listener_address, settings.listener_port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: HCM_FILTER.to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(to_any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The first HTTP filter: makes scope selection case-insensitive by
/// lowercasing a host that is not (see [`LOWERCASE_HOST_LUA`]). It runs
/// before the data-path filter, which reads the route Envoy picks. A
/// matcher skips it unless `:authority` has a capital, so the common
/// request pays one regular-expression match, not a Lua call (measured on
/// direct responses: about 2 µs per request either way, within the noise,
/// but no Lua coroutine for requests that need none).
fn lowercase_host_filter() -> HttpFilter {
    use xds_matcher::matcher::{OnMatch, matcher_list, on_match};
    use xds_matcher::{RegexMatcher, StringMatcher, regex_matcher, string_matcher};
    let lua = Lua {
        default_source_code: Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(LOWERCASE_HOST_LUA.to_owned())),
            ..Default::default()
        }),
        ..Default::default()
    };
    let no_capital = matcher_list::predicate::SinglePredicate {
        input: Some(XdsTypedExtensionConfig {
            name: "authority".to_owned(),
            typed_config: Some(to_any(&HttpRequestHeaderMatchInput { header_name: ":authority".to_owned() })),
        }),
        matcher: Some(matcher_list::predicate::single_predicate::Matcher::ValueMatch(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                regex: "^[^A-Z]*$".to_owned(),
                engine_type: Some(regex_matcher::EngineType::GoogleRe2(regex_matcher::GoogleRe2 {})),
            })),
            ..Default::default()
        })),
    };
    let matcher = xds_matcher::Matcher {
        matcher_type: Some(xds_matcher::matcher::MatcherType::MatcherList(xds_matcher::matcher::MatcherList {
            matchers: vec![matcher_list::FieldMatcher {
                predicate: Some(matcher_list::Predicate {
                    match_type: Some(matcher_list::predicate::MatchType::SinglePredicate(no_capital)),
                }),
                on_match: Some(OnMatch {
                    on_match: Some(on_match::OnMatch::Action(XdsTypedExtensionConfig {
                        name: "skip".to_owned(),
                        typed_config: Some(to_any(&SkipFilter {})),
                    })),
                    ..Default::default()
                }),
            }],
        })),
        ..Default::default()
    };
    let filter = ExtensionWithMatcher {
        xds_matcher: Some(matcher),
        extension_config: Some(TypedExtensionConfig { name: LUA_FILTER.to_owned(), typed_config: Some(to_any(&lua)) }),
        ..Default::default()
    };
    HttpFilter {
        name: LUA_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(to_any(&filter))),
        ..Default::default()
    }
}

/// The terminal router filter; it must stay last in `http_filters`.
pub fn router_filter() -> HttpFilter {
    HttpFilter {
        name: ROUTER_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(to_any(&Router::default()))),
        ..Default::default()
    }
}

/// Config source meaning "over the same ADS stream", xDS v3.
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource::default())),
        ..Default::default()
    }
}

/// Scoped routes over ADS, keyed on the host of `:authority`: the part
/// before the first `:`, so `hello.example.com:8080` selects the scope of
/// `hello.example.com`. A host with no scope finds no route (404).
fn scoped_routes_by_host() -> ScopedRoutes {
    use scoped_routes::scope_key_builder::fragment_builder::{self, header_value_extractor};
    ScopedRoutes {
        name: names::ROUTE_CONFIGURATION.to_owned(),
        scope_key_builder: Some(scoped_routes::ScopeKeyBuilder {
            fragments: vec![scoped_routes::scope_key_builder::FragmentBuilder {
                r#type: Some(fragment_builder::Type::HeaderValueExtractor(fragment_builder::HeaderValueExtractor {
                    name: names::SCOPE_KEY_HEADER.to_owned(),
                    element_separator: ":".to_owned(),
                    extract_type: Some(header_value_extractor::ExtractType::Index(0)),
                })),
            }],
        }),
        rds_config_source: Some(ads_config_source()),
        config_specifier: Some(scoped_routes::ConfigSpecifier::ScopedRds(ScopedRds {
            scoped_rds_config_source: Some(ads_config_source()),
            ..Default::default()
        })),
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
/// they total 100. The timeout is the longest of the reachable revisions'.
fn weighted_route(matcher: RouteMatch, splits: &[(&ObjectKey, u32)], timeouts: &[u64]) -> Route {
    let timeout = timeouts.iter().copied().max().map_or(DEFAULT_REVISION_TIMEOUT, Duration::from_secs);
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
            timeout: Some(pb_duration(timeout)),
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
pub(crate) mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    use prost::Message;
    use revgate_model::plan::{RevisionBackend, RoutePlan, Split, TagPlan};

    use super::*;

    pub(crate) fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    fn revision(name: &str) -> RevisionBackend {
        RevisionBackend {
            key: key(name),
            configuration: "hello".into(),
            service: Some("hello".into()),
            protocol: UpstreamProtocol::Http1,
            container_concurrency: 0,
            timeout_seconds: 300,
            static_endpoints: None,
        }
    }

    /// `hello`: 90% to 00001, 10% to 00002, tag `candidate` → 00002.
    pub(crate) fn plan() -> GatewayPlan {
        GatewayPlan {
            routes: vec![Arc::new(RoutePlan {
                key: key("hello"),
                host: "hello.default.example.com".into(),
                splits: vec![
                    Split { revision: key("hello-00001"), percent: 90 },
                    Split { revision: key("hello-00002"), percent: 10 },
                ],
                tags: vec![TagPlan {
                    tag: "candidate".into(),
                    host: "candidate-hello.default.example.com".into(),
                    revision: key("hello-00002"),
                }],
                mappings: Vec::new(),
            })],
            revisions: [
                revision("hello-00001"),
                RevisionBackend {
                    protocol: UpstreamProtocol::H2c,
                    container_concurrency: 10,
                    timeout_seconds: 600,
                    ..revision("hello-00002")
                },
            ]
            .map(Arc::new)
            .to_vec(),
            tag_header_routing: false,
        }
    }

    pub(crate) fn endpoints() -> EndpointMap {
        EndpointMap::from([(
            key("hello-00001"),
            vec![Endpoint { host: "10.0.0.2".into(), port: 8080 }, Endpoint { host: "10.0.0.1".into(), port: 8080 }],
        )])
    }

    fn vhost<'a>(resources: &'a Resources, name: &str) -> &'a VirtualHost {
        resources.routes.iter().flat_map(|r| &r.virtual_hosts).find(|v| v.name == name).expect("virtual host")
    }

    /// (cluster, weight, revision header) per route of a virtual host.
    fn weights(route: &Route) -> Vec<(String, u32, String)> {
        let Some(route::Action::Route(action)) = &route.action else { panic!("not a route action") };
        let Some(ClusterSpecifier::WeightedClusters(w)) = &action.cluster_specifier else { panic!("not weighted") };
        w.clusters
            .iter()
            .map(|c| {
                let header = c.request_headers_to_add.iter().find_map(|h| {
                    h.header.as_ref().filter(|h| h.key == names::REVISION_HEADER).map(|h| h.value.clone())
                });
                (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value), header.unwrap_or_default())
            })
            .collect()
    }

    fn timeout(route: &Route) -> i64 {
        let Some(route::Action::Route(action)) = &route.action else { panic!("not a route action") };
        action.timeout.as_ref().map_or(0, |t| t.seconds)
    }

    fn hcm(resources: &Resources) -> HttpConnectionManager {
        let Some(filter::ConfigType::TypedConfig(any)) =
            &resources.listeners[0].filter_chains[0].filters[0].config_type
        else {
            panic!("no typed config")
        };
        HttpConnectionManager::decode(any.value.as_slice()).expect("hcm")
    }

    #[test]
    fn main_host_splits_by_percent() {
        let r = translate(&plan(), &endpoints(), &XdsSettings::default());
        let main = vhost(&r, "route|default|hello");
        assert_eq!(main.domains, ["hello.default.example.com", "hello.default.example.com:*"]);
        assert_eq!(main.routes.len(), 1, "no tag header routes unless enabled");
        assert_eq!(
            weights(&main.routes[0]),
            [
                ("rev|default|hello-00001".into(), 90, "hello-00001".into()),
                ("rev|default|hello-00002".into(), 10, "hello-00002".into()),
            ]
        );
        assert_eq!(timeout(&main.routes[0]), 600, "longest timeout of the reachable revisions");
    }

    #[test]
    fn tag_host_goes_to_the_tagged_revision() {
        let r = translate(&plan(), &endpoints(), &XdsSettings::default());
        let tag = vhost(&r, "tag|default|hello|candidate");
        assert_eq!(tag.domains, ["candidate-hello.default.example.com", "candidate-hello.default.example.com:*"]);
        assert_eq!(weights(&tag.routes[0]), [("rev|default|hello-00002".into(), 100, "hello-00002".into())]);
    }

    #[test]
    fn an_alias_domain_serves_every_host_under_it_too() {
        let settings = XdsSettings { alias_domain: Some("localhost".into()), ..XdsSettings::default() };
        let r = translate(&plan(), &endpoints(), &settings);
        let main = vhost(&r, "route|default|hello");
        assert_eq!(
            main.domains,
            [
                "hello.default.example.com",
                "hello.default.example.com:*",
                "hello.default.localhost",
                "hello.default.localhost:*"
            ]
        );
        let tag = vhost(&r, "tag|default|hello|candidate");
        assert!(tag.domains.iter().any(|d| d == "candidate-hello.default.localhost"), "{:?}", tag.domains);
        let keys: Vec<&str> = r.scoped_routes.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            keys,
            [
                "host|hello.default.example.com",
                "host|hello.default.localhost",
                "host|candidate-hello.default.example.com",
                "host|candidate-hello.default.localhost"
            ]
        );
        let plain = translate(&plan(), &endpoints(), &XdsSettings::default());
        assert_eq!(plain.scoped_routes.len(), 2, "no alias unless asked for");
    }

    #[test]
    fn a_mapped_domain_gets_the_main_split_with_the_host_rewritten_and_no_alias() {
        let mut plan = plan();
        Arc::make_mut(&mut plan.routes[0]).mappings =
            vec![MappedHost { host: "example.org".into(), rewrite_host: "hello.default.svc.cluster.local".into() }];
        let settings = XdsSettings { alias_domain: Some("localhost".into()), ..XdsSettings::default() };
        let r = translate(&plan, &endpoints(), &settings);
        let mapped = vhost(&r, "mapping|default|hello|example.org");
        assert_eq!(mapped.domains, ["example.org", "example.org:*"]);
        let header = mapped.request_headers_to_add[0].header.as_ref().expect("a header");
        assert_eq!((header.key.as_str(), header.value.as_str()), ("K-Original-Host", "example.org"));
        let main = vhost(&r, "route|default|hello");
        for (route, main_route) in mapped.routes.iter().zip(&main.routes) {
            let (Some(route::Action::Route(action)), Some(route::Action::Route(main_action))) =
                (&route.action, &main_route.action)
            else {
                panic!("route actions")
            };
            assert_eq!(action.cluster_specifier, main_action.cluster_specifier, "the main host's split");
            assert_eq!(
                action.host_rewrite_specifier,
                Some(route_action::HostRewriteSpecifier::HostRewriteLiteral("hello.default.svc.cluster.local".into()))
            );
        }
        let keys: Vec<&str> = r.scoped_routes.iter().map(|s| s.name.as_str()).collect();
        assert!(keys.contains(&"host|example.org"), "{keys:?}");
        assert_eq!(keys.len(), 5, "main and tag with their aliases, and the domain alone: {keys:?}");
    }

    #[test]
    fn alias_hosts_keep_the_name_and_namespace_labels() {
        assert_eq!(
            alias_host("hello.default.example.com", "default", "localhost").as_deref(),
            Some("hello.default.localhost")
        );
        assert_eq!(alias_host("a-b.team.svc.example.org", "team", "localhost").as_deref(), Some("a-b.team.localhost"));
        assert_eq!(alias_host("hello.default.localhost", "default", "localhost"), None, "already under the alias");
        assert_eq!(alias_host("hello-default.example.com", "default", "localhost"), None, "no namespace label");
    }

    #[test]
    fn tag_header_routes_come_first_when_enabled() {
        let plan = GatewayPlan { tag_header_routing: true, ..plan() };
        let r = translate(&plan, &endpoints(), &XdsSettings::default());
        let main = vhost(&r, "route|default|hello");
        assert_eq!(main.routes.len(), 2);
        let header = &main.routes[0].r#match.as_ref().expect("match").headers[0];
        assert_eq!(header.name, names::TAG_HEADER);
        assert!(matches!(
            &header.header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(t)), ..
            })) if t == "candidate"
        ));
        assert_eq!(weights(&main.routes[0]), [("rev|default|hello-00002".into(), 100, "hello-00002".into())]);
        assert!(main.routes[1].r#match.as_ref().expect("match").headers.is_empty(), "fallback to the split");
        assert_eq!(weights(&main.routes[1]).len(), 2);
    }

    #[test]
    fn clusters_are_eds_with_metadata_and_h2c_options() {
        let r = translate(&plan(), &endpoints(), &XdsSettings::default());
        let names: Vec<_> = r.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["rev|default|hello-00001", "rev|default|hello-00002"]);
        let stat_names: Vec<_> = r.clusters.iter().map(|c| c.alt_stat_name.as_str()).collect();
        assert_eq!(stat_names, ["default/hello-00001", "default/hello-00002"], "as Flagger queries Envoy's stats");
        for c in &r.clusters {
            assert_eq!(
                c.cluster_discovery_type,
                Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32))
            );
        }
        assert!(r.clusters[0].typed_extension_protocol_options.is_empty(), "http1 revision");
        let h2 = &r.clusters[1].typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS];
        let options = HttpProtocolOptions::decode(h2.value.as_slice()).expect("options");
        assert_eq!(options, http2_protocol_options());

        let facts = &r.clusters[1].metadata.as_ref().expect("metadata").filter_metadata["revgate"].fields;
        assert_eq!(facts["revision"], string_value("hello-00002"));
        assert_eq!(facts["namespace"], string_value("default"));
        assert_eq!(facts["configuration"], string_value("hello"));
        assert_eq!(facts["container_concurrency"].kind, Some(value::Kind::NumberValue(10.0)));
    }

    #[test]
    fn envoy_limits_do_not_cut_a_released_burst() {
        // The filter holds up to 10,000 requests per revision per worker and
        // releases them together; Envoy's default breakers (1024) would 503 most.
        let r = translate(&plan(), &endpoints(), &XdsSettings::default());
        for c in &r.clusters {
            let thresholds = &c.circuit_breakers.as_ref().expect("circuit breakers").thresholds[0];
            for limit in [thresholds.max_connections, thresholds.max_pending_requests, thresholds.max_requests] {
                assert!(limit.is_some_and(|l| l.value >= 2 * 10_000), "{}: {limit:?}", c.name);
            }
            // ...while the connections they open stay within a file budget.
            let per_host = &c.circuit_breakers.as_ref().expect("circuit breakers").per_host_thresholds[0];
            assert_eq!(per_host.max_connections.map(|l| l.value), Some(ENDPOINT_MAX_CONNECTIONS), "{}", c.name);
        }
    }

    #[test]
    fn endpoints_are_sorted_with_a_locality_and_empty_revisions_get_empty_assignments() {
        let r = translate(&plan(), &endpoints(), &XdsSettings::default());
        assert_eq!(r.endpoints.len(), 2);
        let first = &r.endpoints[0];
        assert_eq!(first.cluster_name, "rev|default|hello-00001");
        let locality = &first.endpoints[0];
        assert_eq!(locality.locality.as_ref().map(|l| l.region.as_str()), Some(LOCALITY_REGION));
        assert_eq!(locality.load_balancing_weight, Some(UInt32Value { value: 1 }));
        let hosts: Vec<_> = locality
            .lb_endpoints
            .iter()
            .map(|e| match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(e)) => match &e.address.as_ref().expect("address").address {
                    Some(address::Address::SocketAddress(s)) => s.address.clone(),
                    _ => panic!("not a socket address"),
                },
                _ => panic!("not an endpoint"),
            })
            .collect();
        assert_eq!(hosts, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(r.endpoints[1].cluster_name, "rev|default|hello-00002");
        assert!(r.endpoints[1].endpoints.is_empty());
    }

    #[test]
    fn static_endpoints_are_the_fallback() {
        let mut plan = plan();
        Arc::make_mut(&mut plan.revisions[1]).static_endpoints =
            Some(vec![Endpoint { host: "127.0.0.1".into(), port: 9000 }]);
        let r = translate(&plan, &endpoints(), &XdsSettings::default());
        assert_eq!(r.endpoints[1].endpoints[0].lb_endpoints.len(), 1);
        // Live endpoints win over static ones.
        Arc::make_mut(&mut plan.revisions[0]).static_endpoints =
            Some(vec![Endpoint { host: "127.0.0.1".into(), port: 9000 }]);
        let r = translate(&plan, &endpoints(), &XdsSettings::default());
        assert_eq!(r.endpoints[0].endpoints[0].lb_endpoints.len(), 2);
    }

    #[test]
    fn dns_endpoints_make_a_strict_dns_cluster() {
        let mut plan = plan();
        Arc::make_mut(&mut plan.revisions[1]).static_endpoints =
            Some(vec![Endpoint { host: "localhost".into(), port: 9000 }]);
        let r = translate(&plan, &EndpointMap::new(), &XdsSettings::default());
        assert_eq!(
            r.clusters[1].cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32))
        );
        assert!(r.clusters[1].load_assignment.is_some());
        assert_eq!(r.endpoints.len(), 1, "no EDS resource for a DNS cluster");
    }

    #[test]
    fn listener_uses_rds_over_ads_and_a_long_enough_idle_timeout() {
        let r = translate(&plan(), &endpoints(), &XdsSettings::default());
        assert_eq!(r.listeners[0].name, names::LISTENER);
        let hcm = hcm(&r);
        assert_eq!(hcm.stat_prefix, names::HTTP_STAT_PREFIX);
        let Some(http_connection_manager::RouteSpecifier::ScopedRoutes(scoped)) = &hcm.route_specifier else {
            panic!("not scoped routes")
        };
        assert_eq!(scoped.name, names::ROUTE_CONFIGURATION);
        assert!(matches!(scoped.config_specifier, Some(scoped_routes::ConfigSpecifier::ScopedRds(_))));
        assert_eq!(scoped.rds_config_source, Some(ads_config_source()));
        assert_eq!(hcm.http_filters.last().map(|f| f.name.as_str()), Some(ROUTER_FILTER));
        // 600 s revision timeout + 60 s beats the 300 s default.
        assert_eq!(hcm.stream_idle_timeout.map(|d| d.seconds), Some(660));

        let short = GatewayPlan { revisions: vec![Arc::new(revision("a"))], ..GatewayPlan::default() };
        let settings = XdsSettings { stream_idle_timeout: Duration::from_secs(900), ..XdsSettings::default() };
        assert_eq!(effective_stream_idle_timeout(&short, &settings), Duration::from_secs(900));
    }

    #[test]
    fn filters_go_before_the_router() {
        let extra = HttpFilter { name: "revgate.hold".into(), ..Default::default() };
        let l = http_listener(&XdsSettings::default(), Duration::from_secs(300), vec![extra]);
        let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else {
            panic!("no typed config")
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
        let names: Vec<_> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [LUA_FILTER, "revgate.hold", ROUTER_FILTER]);
    }

    #[test]
    fn output_is_deterministic() {
        let a = translate(&plan(), &endpoints(), &XdsSettings::default());
        let mut reordered = endpoints();
        reordered.values_mut().for_each(|v| v.reverse());
        let b = translate(&plan(), &reordered, &XdsSettings::default());
        assert_eq!(a.routes, b.routes);
        assert_eq!(a.listeners, b.listeners);
        assert_eq!(a.endpoints, b.endpoints);
        assert_eq!(a.clusters, b.clusters);
    }

    #[test]
    fn empty_plan_still_has_a_listener() {
        let r = translate(&GatewayPlan::default(), &EndpointMap::new(), &XdsSettings::default());
        assert_eq!(r.listeners.len(), 1);
        assert!(r.scoped_routes.is_empty() && r.routes.is_empty(), "every host gets Envoy's 404");
        assert!(r.clusters.is_empty() && r.endpoints.is_empty());
    }

    #[test]
    fn each_route_is_in_its_shards_route_configuration_selected_by_a_scope_per_host() {
        let r = translate(&plan(), &endpoints(), &XdsSettings::default());
        let names: Vec<_> = r.routes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["routes|193"]);
        let scopes: Vec<_> = r
            .scoped_routes
            .iter()
            .map(|s| {
                let key = s.key.as_ref().expect("key");
                let Some(scoped_route_configuration::key::fragment::Type::StringKey(host)) = &key.fragments[0].r#type
                else {
                    panic!("not a string key")
                };
                (s.name.as_str(), host.as_str(), s.route_configuration_name.as_str())
            })
            .collect();
        assert_eq!(
            scopes,
            [
                ("host|hello.default.example.com", "hello.default.example.com", "routes|193"),
                ("host|candidate-hello.default.example.com", "candidate-hello.default.example.com", "routes|193"),
            ]
        );
    }

    #[test]
    fn colliding_hosts_keep_the_first_claim() {
        let mut plan = plan();
        let mut other = (*plan.routes[0]).clone();
        other.key = key("other");
        other.tags.clear();
        plan.routes.push(Arc::new(other));
        let r = translate(&plan, &endpoints(), &XdsSettings::default());
        assert!(r.routes.iter().flat_map(|c| &c.virtual_hosts).all(|v| v.name != "route|default|other"));
        assert_eq!(r.routes.len(), 1, "a Route owning no host adds no route configuration");
        assert_eq!(r.scoped_routes.len(), 2, "one scope per host");
    }

    #[test]
    fn routes_of_one_shard_share_its_route_configuration() {
        let mut plan = plan();
        let shard = names::route_shard(&key("hello"));
        let twin = (0..)
            .map(|i| key(&format!("twin-{i}")))
            .find(|k| names::route_shard(k) == shard)
            .expect("every shard is reached");
        let mut other = (*plan.routes[0]).clone();
        other.key = twin.clone();
        other.host = format!("{}.default.example.com", twin.name);
        other.tags.clear();
        plan.routes.push(Arc::new(other));
        let r = translate(&plan, &endpoints(), &XdsSettings::default());
        assert_eq!(r.routes.len(), 1, "one configuration for the shard");
        let vhosts: Vec<_> = r.routes[0].virtual_hosts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(vhosts, ["route|default|hello", "tag|default|hello|candidate", &names::route_virtual_host(&twin)]);
        assert!(r.scoped_routes.iter().all(|s| s.route_configuration_name == r.routes[0].name));
    }
}
