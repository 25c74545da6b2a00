//! The HTTP listener: one HCM for every host, the filters ahead of the
//! router, WebSocket upgrades, and the local reply that names a revision's
//! response-start limit (see the parent module's
//! [Protocols](super#protocols) and [Timeouts](super#timeouts)).

use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLogFilter, ResponseFlagFilter, access_log_filter};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, SubstitutionFormatString, TypedExtensionConfig,
    config_source, data_source, substitution_format_string,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::common::matching::v3::ExtensionWithMatcher;
use envoy_types::pb::envoy::extensions::filters::common::matcher::action::v3::SkipFilter;
use envoy_types::pb::envoy::extensions::filters::http::lua::v3::Lua;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, LocalReplyConfig, ResponseMapper, ScopedRds, ScopedRoutes,
    http_connection_manager, http_filter, scoped_routes,
};
use envoy_types::pb::envoy::r#type::matcher::v3::HttpRequestHeaderMatchInput;
use envoy_types::pb::xds::core::v3::TypedExtensionConfig as XdsTypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3 as xds_matcher;
use revgate_model::plan::GatewayPlan;

use super::{
    START_TIMEOUT_FIELD_KEY, START_TIMEOUT_REASON_KEY, START_TIMEOUT_SECONDS_KEY, XdsSettings, overwrite_header,
    pb_duration, socket_address, to_any,
};
use crate::names;

/// How much longer than the longest revision timeout a stream may stay idle.
/// Requests held by the data-path filter are cut by the idle timeout, not the
/// route timeout, so it must leave room for the whole revision timeout.
const IDLE_TIMEOUT_MARGIN: Duration = Duration::from_secs(60);

/// WebSocket, the one upgrade Envoy needs to be told to accept.
const WEBSOCKET_UPGRADE: &str = "websocket";
/// Envoy's response flag for an upstream request timeout (route or per-try).
const UPSTREAM_TIMEOUT_FLAG: &str = "UT";

/// The header naming the limit behind an answer revgate gives itself (as
/// the gateway filter's own answers do).
const REASON_HEADER: &str = "x-revgate-reason";

/// Envoy's well-known filter and extension names.
const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
pub(super) const ROUTER_FILTER: &str = "envoy.filters.http.router";
pub(super) const LUA_FILTER: &str = "envoy.filters.http.lua";

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

/// The HCM `stream_idle_timeout` for a plan: the configured one, raised to
/// the longest revision timeout or `idleTimeoutSeconds` plus 60 s when that
/// is longer, so that Envoy's own idle timer never ends a stream before the
/// revision's limits do.
pub fn effective_stream_idle_timeout(plan: &GatewayPlan, settings: &XdsSettings) -> Duration {
    plan.revisions
        .iter()
        .map(|r| Duration::from_secs(r.timeout_seconds.max(r.idle_timeout_seconds)).saturating_add(IDLE_TIMEOUT_MARGIN))
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
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: WEBSOCKET_UPGRADE.to_owned(),
            ..Default::default()
        }],
        local_reply_config: Some(start_timeout_reply()),
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

/// Envoy's 504 for a response that did not start within the per-try
/// timeout (flag `UT`) becomes revgate's answer: `x-revgate-reason` and a
/// body naming the limit and the revision, from the revision cluster's
/// metadata (`%CLUSTER_METADATA%` reads the cluster the request went to),
/// the same answer the gateway filter gives at a revision's own deadline.
fn start_timeout_reply() -> LocalReplyConfig {
    let meta = |key: &str| format!("%CLUSTER_METADATA({}:{key})%", names::METADATA_NAMESPACE);
    let body = format!(
        "revgate: revision {}/{} did not start its response within {} s (limit {} of the revision)\n",
        meta("namespace"),
        meta("revision"),
        meta(START_TIMEOUT_SECONDS_KEY),
        meta(START_TIMEOUT_FIELD_KEY),
    );
    LocalReplyConfig {
        mappers: vec![ResponseMapper {
            filter: Some(AccessLogFilter {
                filter_specifier: Some(access_log_filter::FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter {
                    flags: vec![UPSTREAM_TIMEOUT_FLAG.to_owned()],
                })),
            }),
            headers_to_add: vec![overwrite_header(REASON_HEADER, &meta(START_TIMEOUT_REASON_KEY))],
            body_format_override: Some(SubstitutionFormatString {
                format: Some(substitution_format_string::Format::TextFormatSource(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(body)),
                    ..Default::default()
                })),
                content_type: "text/plain; charset=utf-8".to_owned(),
                ..Default::default()
            }),
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
