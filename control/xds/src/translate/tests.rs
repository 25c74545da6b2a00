use std::sync::Arc;

use envoy_types::pb::envoy::config::accesslog::v3::access_log_filter;
use envoy_types::pb::envoy::config::listener::v3::filter;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, scoped_routes,
};
use prost::Message;
use revgate_model::plan::{RevisionBackend, RoutePlan, Split, TagPlan};

use super::listener::{LUA_FILTER, ROUTER_FILTER};
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
        response_start_timeout_seconds: 300,
        idle_timeout_seconds: 0,
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
                response_start_timeout_seconds: 600,
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
            let header = c
                .request_headers_to_add
                .iter()
                .find_map(|h| h.header.as_ref().filter(|h| h.key == names::REVISION_HEADER).map(|h| h.value.clone()));
            (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value), header.unwrap_or_default())
        })
        .collect()
}

/// (route timeout, per-try timeout) in seconds.
fn timeout(route: &Route) -> (i64, i64) {
    let Some(route::Action::Route(action)) = &route.action else { panic!("not a route action") };
    let per_try = action.retry_policy.as_ref().and_then(|p| p.per_try_timeout.as_ref());
    (action.timeout.as_ref().map_or(-1, |t| t.seconds), per_try.map_or(-1, |t| t.seconds))
}

fn hcm(resources: &Resources) -> HttpConnectionManager {
    let Some(filter::ConfigType::TypedConfig(any)) = &resources.listeners[0].filter_chains[0].filters[0].config_type
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
    assert_eq!(timeout(&main.routes[0]), (0, 600), "no route timeout; the longest response-start deadline");
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
fn websockets_upgrade_and_a_late_response_start_is_answered_naming_the_limit_and_revision() {
    let hcm = hcm(&translate(&plan(), &endpoints(), &XdsSettings::default()));
    let upgrades: Vec<_> = hcm.upgrade_configs.iter().map(|u| u.upgrade_type.as_str()).collect();
    assert_eq!(upgrades, ["websocket"], "without it Envoy answers an upgrade 403");
    let mapper = &hcm.local_reply_config.as_ref().expect("local replies").mappers[0];
    assert!(matches!(
        &mapper.filter.as_ref().and_then(|f| f.filter_specifier.as_ref()),
        Some(access_log_filter::FilterSpecifier::ResponseFlagFilter(f)) if f.flags == ["UT"]
    ));
    let header = mapper.headers_to_add[0].header.as_ref().expect("header");
    assert_eq!(
        (header.key.as_str(), header.value.as_str()),
        ("x-revgate-reason", "%CLUSTER_METADATA(revgate:start_timeout_reason)%")
    );
}

#[test]
fn each_revision_cluster_names_its_response_start_limit() {
    let mut plan = plan();
    Arc::make_mut(&mut plan.revisions[1]).response_start_timeout_seconds = 20;
    let r = translate(&plan, &endpoints(), &XdsSettings::default());
    let facts = |i: usize| {
        let fields = &r.clusters[i].metadata.as_ref().expect("metadata").filter_metadata["revgate"].fields;
        [START_TIMEOUT_REASON_KEY, START_TIMEOUT_FIELD_KEY, START_TIMEOUT_SECONDS_KEY].map(|k| fields[k].clone())
    };
    let strings = |values: [&str; 3]| values.map(string_value);
    assert_eq!(facts(0), strings(["request-timeout", "timeoutSeconds", "300"]), "equal: timeoutSeconds");
    assert_eq!(facts(1), strings(["response-start-timeout", "responseStartTimeoutSeconds", "20"]));
    // The split's route waits for the longest deadline: 300 s (hello-00001); the tag's for its own.
    assert_eq!(timeout(&vhost(&r, "route|default|hello").routes[0]), (0, 300));
    assert_eq!(timeout(&vhost(&r, "tag|default|hello|candidate").routes[0]), (0, 20));
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
