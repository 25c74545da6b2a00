//! The warm path's two facts, from what the gateways ACKed (pure):
//!
//! - the *bypass set*: the revisions the translation may serve without the
//!   gateway filter (`revgate_xds::warm`). A revision enters it only once
//!   every gateway ACKed its endpoints (so no request that skips the filter
//!   meets an empty cluster) and while every gateway streams its statistics
//!   (so what the filter would have measured is still measured: a gateway
//!   without the stats sink, as Istio's, keeps the filter on every route);
//!   it leaves as soon as the control plane wants it at zero, or throttled.
//! - per gateway, the revisions its ACKed route configurations serve with
//!   the filter disabled: the zero gate withdraws a revision's endpoints
//!   only once no gateway still does ([`WarmView::filter_off_anywhere`]),
//!   so that every request for it from then on meets a filter that holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::{Message, Name};
use revgate_model::plan::ObjectKey;
use revgate_xds::AckEvent;

use crate::readiness::ReadinessTable;

/// What the warm path knows; published on a `watch` by its owner task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WarmView {
    /// The revisions served without the filter (what the translation reads).
    pub bypass: Arc<BTreeSet<ObjectKey>>,
    /// Per node, per route configuration it ACKed, the revisions it routes
    /// to with the filter disabled (only non-empty entries are kept).
    filter_off: BTreeMap<String, BTreeMap<String, BTreeSet<ObjectKey>>>,
    /// Per node, the version (content hash) of each route configuration it
    /// ACKed: a state-of-the-world ACK carries every configuration, and only
    /// the changed ones are decoded again.
    versions: BTreeMap<String, BTreeMap<String, String>>,
}

impl WarmView {
    /// Takes an ACK (route configurations only); returns whether what some
    /// node serves without the filter changed.
    pub fn record_ack(&mut self, ack: &AckEvent) -> bool {
        if ack.type_url != RouteConfiguration::type_url() {
            return false;
        }
        let node = self.filter_off.entry(ack.node.clone()).or_default();
        let versions = self.versions.entry(ack.node.clone()).or_default();
        let mut changed = false;
        for resource in &ack.resources {
            if versions.get(&resource.name) == Some(&resource.version) {
                continue;
            }
            versions.insert(resource.name.clone(), resource.version.clone());
            let Ok(configuration) = RouteConfiguration::decode(resource.resource.value.as_slice()) else { continue };
            let off = revgate_xds::warm::filter_off_revisions(&configuration);
            let before = if off.is_empty() {
                node.remove(&resource.name)
            } else {
                node.insert(resource.name.clone(), off.clone())
            };
            changed |= before.unwrap_or_default() != off;
        }
        for name in &ack.removed {
            versions.remove(name);
            changed |= node.remove(name).is_some();
        }
        if node.is_empty() {
            self.filter_off.remove(&ack.node);
        }
        changed
    }

    /// Forgets the route configurations of nodes `keep` rejects (gone
    /// gateways); returns whether any were kept.
    pub fn retain_nodes(&mut self, keep: impl Fn(&str) -> bool) -> bool {
        let before = self.filter_off.len();
        self.filter_off.retain(|node, _| keep(node));
        self.versions.retain(|node, _| keep(node));
        before != self.filter_off.len()
    }

    /// Whether gateway `node` serves `revision` without the filter.
    pub fn filter_off_in(&self, node: &str, revision: &ObjectKey) -> bool {
        self.filter_off.get(node).is_some_and(|configs| configs.values().any(|revisions| revisions.contains(revision)))
    }

    /// Whether some gateway still serves `revision` without the filter.
    pub fn filter_off_anywhere(&self, revision: &ObjectKey) -> bool {
        self.filter_off.values().flat_map(BTreeMap::values).any(|revisions| revisions.contains(revision))
    }

    /// Sets the bypass set; returns whether it changed.
    pub fn set_bypass(&mut self, bypass: BTreeSet<ObjectKey>) -> bool {
        if *self.bypass == bypass {
            return false;
        }
        self.bypass = Arc::new(bypass);
        true
    }
}

/// How long a revision stays warm in every gateway before it is served
/// without the filter. A revision just back from zero keeps the filter
/// through its first burst, and a switch (whose window Envoy's statistics
/// leave to the filter, see `crate::bypassed`) happens once traffic has
/// settled rather than at every cold start.
pub const WARM_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// The revisions warm in every gateway of `nodes`, provided every one of
/// them streams its statistics (`streams_stats`).
pub fn warm_everywhere(
    table: &ReadinessTable,
    nodes: &BTreeSet<String>,
    streams_stats: impl Fn(&str) -> bool,
) -> BTreeSet<ObjectKey> {
    if !nodes.iter().all(|node| streams_stats(node)) {
        return BTreeSet::new();
    }
    table.warm_in_every(nodes)
}

/// The bypass set at `now_ms`: of the revisions `warm` now, those warm
/// since at least [`WARM_SETTLE`] ago. `since` keeps when each became warm
/// (a revision that is not warm is forgotten). Also when the next of the
/// others settles: until then, and while nothing else changes, the set
/// stays what it is.
pub fn bypass_set(
    warm: BTreeSet<ObjectKey>,
    since: &mut BTreeMap<ObjectKey, u64>,
    now_ms: u64,
) -> (BTreeSet<ObjectKey>, Option<u64>) {
    since.retain(|key, _| warm.contains(key));
    let settle_ms = WARM_SETTLE.as_millis() as u64;
    let mut next_due: Option<u64> = None;
    let bypass = warm
        .into_iter()
        .filter(|key| {
            let settles_at = since.entry(key.clone()).or_insert(now_ms).saturating_add(settle_ms);
            if settles_at > now_ms {
                next_due = Some(next_due.map_or(settles_at, |due| due.min(settles_at)));
            }
            settles_at <= now_ms
        })
        .collect();
    (bypass, next_due)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints};
    use envoy_types::pb::envoy::config::route::v3::{
        Route, RouteAction, VirtualHost, WeightedCluster, route, route_action, weighted_cluster,
    };
    use envoy_types::pb::google::protobuf::Any;
    use revgate_model::plan::{GatewayPlan, RevisionBackend, UpstreamProtocol};
    use revgate_xds::AckedResource;

    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    fn revision(name: &str, container_concurrency: u32, idle_timeout_seconds: u64) -> Arc<RevisionBackend> {
        Arc::new(RevisionBackend {
            key: key(name),
            configuration: "hello".into(),
            service: Some("hello".into()),
            protocol: UpstreamProtocol::Http1,
            container_concurrency,
            timeout_seconds: 300,
            response_start_timeout_seconds: 300,
            idle_timeout_seconds,
            static_endpoints: None,
        })
    }

    fn any<M: Message + Name>(message: &M) -> Any {
        Any { type_url: M::type_url(), value: message.encode_to_vec() }
    }

    fn ack<M: Message + Name>(node: &str, name: &str, message: &M) -> AckEvent {
        AckEvent {
            node: node.into(),
            type_url: M::type_url(),
            version: "1".into(),
            resources: vec![AckedResource { name: name.into(), version: "1".into(), resource: any(message) }],
            removed: Vec::new(),
        }
    }

    fn eds(node: &str, name: &str, endpoints: usize) -> AckEvent {
        let cluster = revgate_xds::names::revision_cluster(&key(name));
        let assignment = ClusterLoadAssignment {
            cluster_name: cluster.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint::default(); endpoints],
                ..Default::default()
            }],
            ..Default::default()
        };
        ack(node, &cluster, &assignment)
    }

    fn routes(node: &str, revision: &str, filter_off: bool) -> AckEvent {
        let action = RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: vec![weighted_cluster::ClusterWeight {
                    name: revgate_xds::names::revision_cluster(&key(revision)),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut vhost = VirtualHost {
            name: "route|default|hello".into(),
            routes: vec![Route { action: Some(route::Action::Route(action)), ..Default::default() }],
            ..Default::default()
        };
        if filter_off {
            revgate_xds::warm::disable_filter(&mut vhost);
        }
        let configuration =
            RouteConfiguration { name: "routes|1".into(), virtual_hosts: vec![vhost], ..Default::default() };
        let mut ack = ack(node, "routes|1", &configuration);
        // The version is a content hash: the two contents get two versions.
        ack.resources[0].version = if filter_off { "off" } else { "on" }.into();
        ack
    }

    fn table() -> ReadinessTable {
        let mut table = ReadinessTable::new(1);
        let plan = GatewayPlan {
            revisions: vec![revision("warm", 0, 0), revision("throttled", 10, 0), revision("idle", 0, 60)],
            ..Default::default()
        };
        table.set_plan(&plan);
        let desired = [(key("warm"), 1), (key("throttled"), 1), (key("idle"), 1)];
        table.set_desired(&Arc::new(BTreeMap::from(desired)));
        table
    }

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn endpoints_by_name_need_no_ack_and_only_wanted_revisions_of_the_plan_are_warm() {
        let mut by_name = (*revision("by-name", 0, 0)).clone();
        by_name.static_endpoints = Some(vec![revgate_model::plan::Endpoint { host: "localhost".into(), port: 80 }]);
        let mut table = ReadinessTable::new(1);
        let plan = GatewayPlan {
            revisions: vec![Arc::new(by_name), revision("warm", 0, 0), revision("unwanted", 0, 0)],
            ..Default::default()
        };
        table.set_plan(&plan);
        let desired = [(key("by-name"), 1), (key("warm"), 1), (key("unwanted"), 0)];
        table.set_desired(&Arc::new(BTreeMap::from(desired)));
        let both = nodes(&["gw-1", "gw-2"]);
        assert_eq!(warm_everywhere(&table, &both, |_| true), BTreeSet::from([key("by-name")]), "no ACK needed");

        for node in ["gw-1", "gw-2"] {
            for name in ["warm", "unwanted", "not-in-the-plan"] {
                table.record_ack(&eds(node, name, 1));
            }
        }
        assert_eq!(warm_everywhere(&table, &both, |_| true), BTreeSet::from([key("by-name"), key("warm")]));
    }

    #[test]
    fn a_revision_is_bypassed_once_every_gateway_acked_its_endpoints_and_streams_stats() {
        let mut table = table();
        let both = nodes(&["gw-1", "gw-2"]);
        table.record_ack(&eds("gw-1", "warm", 1));
        table.record_ack(&eds("gw-1", "throttled", 1));
        assert!(warm_everywhere(&table, &both, |_| true).is_empty(), "gw-2 has no endpoints yet");
        table.record_ack(&eds("gw-2", "warm", 1));
        table.record_ack(&eds("gw-2", "throttled", 1));
        table.record_ack(&eds("gw-1", "idle", 1));
        table.record_ack(&eds("gw-2", "idle", 1));
        assert_eq!(
            warm_everywhere(&table, &both, |_| true),
            BTreeSet::from([key("warm")]),
            "throttled, or with an idle timeout, keeps the filter"
        );
        assert!(warm_everywhere(&table, &both, |node| node == "gw-1").is_empty(), "gw-2 streams no statistics");
        assert!(warm_everywhere(&table, &BTreeSet::new(), |_| true).is_empty(), "no gateway, nothing known warm");
    }

    #[test]
    fn a_revision_wanted_at_zero_leaves_the_bypass_set_at_once() {
        let mut table = table();
        table.record_ack(&eds("gw-1", "warm", 1));
        assert!(!warm_everywhere(&table, &nodes(&["gw-1"]), |_| true).is_empty());
        table.set_desired(&Arc::new(BTreeMap::from([(key("warm"), 0)])));
        assert!(warm_everywhere(&table, &nodes(&["gw-1"]), |_| true).is_empty(), "endpoints still ACKed, but cold");
    }

    #[test]
    fn a_revision_is_bypassed_only_once_it_stayed_warm_for_the_settle_time() {
        let settle = WARM_SETTLE.as_millis() as u64;
        let mut since = BTreeMap::new();
        let warm = || BTreeSet::from([key("warm")]);
        assert_eq!(bypass_set(warm(), &mut since, 1_000), (BTreeSet::new(), Some(1_000 + settle)), "just warm");
        assert!(bypass_set(warm(), &mut since, 1_000 + settle - 1).0.is_empty());
        assert_eq!(bypass_set(warm(), &mut since, 1_000 + settle), (warm(), None));
        assert!(bypass_set(BTreeSet::new(), &mut since, 2_000 + settle).0.is_empty(), "cold: out at once");
        assert!(bypass_set(warm(), &mut since, 3_000 + settle).0.is_empty(), "warm again: settles again");
    }

    #[test]
    fn filter_off_follows_each_gateways_acked_routes() {
        let mut view = WarmView::default();
        assert!(view.record_ack(&routes("gw-1", "warm", true)));
        assert!(view.record_ack(&routes("gw-2", "warm", true)));
        assert!(!view.record_ack(&eds("gw-1", "warm", 1)), "endpoints are not routes");
        assert!(view.filter_off_anywhere(&key("warm")));
        assert!(view.filter_off_in("gw-1", &key("warm")) && !view.filter_off_in("gw-3", &key("warm")));
        assert!(view.record_ack(&routes("gw-1", "warm", false)));
        assert!(view.filter_off_anywhere(&key("warm")), "gw-2 still serves it without the filter");
        assert!(!view.record_ack(&routes("gw-1", "warm", false)), "the same ACK changes nothing");
        let mut same_version_other_content = routes("gw-1", "warm", true);
        same_version_other_content.resources[0].version = "on".into();
        assert!(!view.record_ack(&same_version_other_content), "an unchanged version is not decoded again");
        let mut changed = routes("gw-1", "warm", false);
        changed.resources[0].version = "2".into();
        assert!(!view.record_ack(&changed), "a new version with the filter still on changes nothing served");
        assert!(view.record_ack(&routes("gw-2", "warm", false)));
        assert!(!view.filter_off_anywhere(&key("warm")));

        view.record_ack(&routes("gone", "warm", true));
        assert!(view.retain_nodes(|node| node != "gone"));
        assert!(!view.filter_off_anywhere(&key("warm")), "a gone gateway serves nothing");
    }
}
