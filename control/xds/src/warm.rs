//! The warm path: Routes whose requests need nothing of the gateway filter
//! are served with the filter disabled, so a warm request costs what it
//! costs in a bare Envoy.
//!
//! The filter holds requests for revisions at zero, throttles revisions
//! with `containerConcurrency` and measures what it passes. A Route whose
//! revisions are all warm in every gateway, unthrottled, and which sends
//! all its main traffic to one revision (a split or a rollout keeps the
//! filter: the rollout gates read the filter's per-step p99 and 5xx rate)
//! needs none of it while it stays so; its concurrency and request rate come
//! from Envoy's own statistics instead (the stats sink, see
//! the stats sink). Envoy reads the route's
//! `typed_per_filter_config` (`envoy.config.route.v3.FilterConfig`,
//! `disabled: true`) when it creates a stream's filter chain, and with the
//! filter disabled there never creates its wasm HTTP context: the request
//! never enters the VM.
//!
//! Which revisions qualify (the *bypass set*) is decided outside this crate,
//! from what the gateways ACKed; the order that keeps requests from meeting
//! "no healthy upstream" lives there too (a revision enters the set only
//! once every gateway runs its endpoints, and leaves it, with its endpoints
//! withdrawn only after every gateway ACKed the routes that turn the filter
//! back on). This module is pure: the per-Route decision, the route marker,
//! and reading the marker back from an ACKed route configuration.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::route::v3::{
    FilterConfig, RouteConfiguration, VirtualHost, route, route_action, weighted_cluster,
};
use prost::{Message, Name};
use revgate_model::plan::{ObjectKey, RoutePlan};

use crate::filter::WASM_FILTER;
use crate::names;
use crate::translate::to_any;

/// Whether `route` can be served without the gateway filter: every
/// revision it sends to (splits and tags) is in `bypass`, and its main
/// traffic goes to one revision.
pub fn bypasses_filter(route: &RoutePlan, bypass: &BTreeSet<ObjectKey>) -> bool {
    route.splits.len() == 1
        && route
            .splits
            .iter()
            .map(|s| &s.revision)
            .chain(route.tags.iter().map(|t| &t.revision))
            .all(|revision| bypass.contains(revision))
}

/// Disables the gateway filter for every request `vhost` routes.
pub fn disable_filter(vhost: &mut VirtualHost) {
    let disabled = FilterConfig { disabled: true, ..Default::default() };
    vhost.typed_per_filter_config.insert(WASM_FILTER.to_owned(), to_any(&disabled));
}

/// Whether `vhost` has the gateway filter disabled.
pub fn filter_disabled(vhost: &VirtualHost) -> bool {
    vhost.typed_per_filter_config.get(WASM_FILTER).is_some_and(|any| {
        any.type_url == FilterConfig::type_url()
            && FilterConfig::decode(any.value.as_slice()).is_ok_and(|config| config.disabled)
    })
}

/// The revisions a route configuration routes to with the filter disabled:
/// what a gateway that ACKed it serves without holding.
pub fn filter_off_revisions(configuration: &RouteConfiguration) -> BTreeSet<ObjectKey> {
    let mut revisions = BTreeSet::new();
    for vhost in configuration.virtual_hosts.iter().filter(|v| filter_disabled(v)) {
        for action in vhost.routes.iter().filter_map(|r| match &r.action {
            Some(route::Action::Route(action)) => Some(action),
            _ => None,
        }) {
            match &action.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(name)) => {
                    revisions.extend(names::parse_revision_cluster(name));
                }
                Some(route_action::ClusterSpecifier::WeightedClusters(weighted)) => {
                    revisions.extend(
                        weighted
                            .clusters
                            .iter()
                            .filter_map(|c: &weighted_cluster::ClusterWeight| names::parse_revision_cluster(&c.name)),
                    );
                }
                _ => {}
            }
        }
    }
    revisions
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use revgate_model::plan::{EndpointMap, GatewayPlan, Split};

    use super::*;
    use crate::translate::tests::{key, plan};
    use crate::translate::{XdsSettings, translate_bypassing};

    /// The test plan with `hello` sending all its main traffic to 00001
    /// (its tag `candidate` still goes to 00002).
    fn single() -> GatewayPlan {
        let mut plan = plan();
        let mut route = (*plan.routes[0]).clone();
        route.splits = vec![Split { revision: key("hello-00001"), percent: 100 }];
        plan.routes[0] = Arc::new(route);
        plan
    }

    fn with_filter() -> XdsSettings {
        let filter = crate::filter::FilterSettings {
            wasm_path: "/filter.wasm".to_owned(),
            control_address: std::net::SocketAddr::from(([127, 0, 0, 1], 9091)),
            configuration: "{}".to_owned(),
        };
        XdsSettings { filter: Some(filter), ..XdsSettings::default() }
    }

    fn both() -> BTreeSet<ObjectKey> {
        [key("hello-00001"), key("hello-00002")].into()
    }

    #[test]
    fn a_route_bypasses_only_with_one_main_revision_and_all_its_revisions_bypassed() {
        assert!(bypasses_filter(&single().routes[0], &both()));
        assert!(!bypasses_filter(&plan().routes[0], &both()), "a split (or a rollout) keeps the filter");
        let tag_left_out = BTreeSet::from([key("hello-00001")]);
        assert!(!bypasses_filter(&single().routes[0], &tag_left_out), "the tag's revision is not warm");
        assert!(!bypasses_filter(&single().routes[0], &BTreeSet::new()));
    }

    #[test]
    fn every_virtual_host_of_a_bypassing_route_carries_the_marker_and_reads_back() {
        let on = translate_bypassing(&single(), &EndpointMap::new(), &with_filter(), &BTreeSet::new());
        assert!(on.routes.iter().flat_map(|c| &c.virtual_hosts).all(|v| !filter_disabled(v)));
        assert!(on.routes.iter().all(|c| filter_off_revisions(c).is_empty()));

        let off = translate_bypassing(&single(), &EndpointMap::new(), &with_filter(), &both());
        assert!(off.routes.iter().flat_map(|c| &c.virtual_hosts).all(filter_disabled));
        let revisions: BTreeSet<ObjectKey> = off.routes.iter().flat_map(filter_off_revisions).collect();
        assert_eq!(revisions, both());

        let without = translate_bypassing(&single(), &EndpointMap::new(), &XdsSettings::default(), &both());
        assert!(without.routes.iter().all(|c| filter_off_revisions(c).is_empty()), "no filter, nothing to disable");
    }
}
