//! Every Envoy resource name revgate derives, in one place.
//!
//! Names are part of the contract with the data plane: the proxy-wasm filter
//! reads `xds.cluster_name` and `xds.virtual_host_name` to learn which
//! revision and route a request belongs to, so formats here are stable and
//! each has a parser next to its builder. Kubernetes names never contain `|`,
//! which makes it an unambiguous separator.

use revgate_model::plan::ObjectKey;

/// The single HTTP listener.
pub const LISTENER: &str = "revgate-http";

/// The listener's scoped routes (one scope per host, each selecting its
/// Route's route configuration); also the one route configuration of a
/// rendered static bootstrap, which holds every virtual host.
pub const ROUTE_CONFIGURATION: &str = "revgate-routes";

/// The request header whose host (before any `:port`) selects a scope.
pub const SCOPE_KEY_HEADER: &str = ":authority";

/// `stat_prefix` of the HTTP connection manager (Envoy stats `http.revgate_http.*`).
pub const HTTP_STAT_PREFIX: &str = "revgate_http";

/// The cluster Envoy's bootstrap uses to reach revgate's ADS server.
pub const XDS_CLUSTER: &str = "revgate-xds";

/// The cluster through which the gateway filter reaches the control plane's
/// activation service (the filter's `control_cluster` default).
pub const CONTROL_CLUSTER: &str = "revgate-control";

/// Key under `metadata.filter_metadata` holding a revision cluster's facts.
pub const METADATA_NAMESPACE: &str = "revgate";

/// Header Knative uses to pick a tag on the main host (`tag-header-based-routing`).
pub const TAG_HEADER: &str = "Knative-Serving-Tag";
/// Request header naming the revision a request was routed to.
pub const REVISION_HEADER: &str = "Knative-Serving-Revision";
/// Request header naming the namespace of that revision.
pub const NAMESPACE_HEADER: &str = "Knative-Serving-Namespace";

const REVISION_CLUSTER_PREFIX: &str = "rev";
const ROUTE_VHOST_PREFIX: &str = "route";
const TAG_VHOST_PREFIX: &str = "tag";
const SCOPE_PREFIX: &str = "host";
const SHARD_PREFIX: &str = "routes";
const SEPARATOR: char = '|';

/// The EDS cluster of one revision: `rev|<namespace>|<revision>`.
pub fn revision_cluster(revision: &ObjectKey) -> String {
    format!("{REVISION_CLUSTER_PREFIX}{SEPARATOR}{}{SEPARATOR}{}", revision.namespace, revision.name)
}

/// The name a revision's cluster has in Envoy's statistics:
/// `<namespace>/<revision>`, so `/stats/prometheus` labels its series
/// `envoy_cluster_name="default/hello-00001"`, as Flagger's Knative
/// provider queries them (`envoy_cluster_upstream_rq`,
/// `envoy_cluster_upstream_rq_time_bucket`).
pub fn revision_stat_name(revision: &ObjectKey) -> String {
    format!("{}/{}", revision.namespace, revision.name)
}

/// Inverse of [`revision_cluster`]; `None` for any other cluster name.
pub fn parse_revision_cluster(cluster: &str) -> Option<ObjectKey> {
    let mut parts = cluster.split(SEPARATOR);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(REVISION_CLUSTER_PREFIX), Some(namespace), Some(name), None)
            if !namespace.is_empty() && !name.is_empty() =>
        {
            Some(ObjectKey::new(namespace, name))
        }
        _ => None,
    }
}

/// The virtual host of a Route's main host: `route|<namespace>|<route>`.
pub fn route_virtual_host(route: &ObjectKey) -> String {
    format!("{ROUTE_VHOST_PREFIX}{SEPARATOR}{}{SEPARATOR}{}", route.namespace, route.name)
}

/// The virtual host of one tag of a Route: `tag|<namespace>|<route>|<tag>`.
pub fn tag_virtual_host(route: &ObjectKey, tag: &str) -> String {
    format!("{TAG_VHOST_PREFIX}{SEPARATOR}{}{SEPARATOR}{}{SEPARATOR}{tag}", route.namespace, route.name)
}

/// The virtual host of a DomainMapping's domain on its Route:
/// `mapping|<namespace>|<route>|<domain>`.
pub fn mapping_virtual_host(route: &ObjectKey, domain: &str) -> String {
    format!("mapping{SEPARATOR}{}{SEPARATOR}{}{SEPARATOR}{domain}", route.namespace, route.name)
}

/// Header carrying a mapped domain to the revision, whose host is rewritten
/// to the Route's address (Knative's `K-Original-Host`).
pub const ORIGINAL_HOST_HEADER: &str = "K-Original-Host";

/// How many route configurations the Routes are spread over. Envoy opens
/// one RDS subscription per route configuration the scopes name, and loading
/// 10,000 of them (one per Route) took Envoy half again as long as loading
/// one configuration from a file. A change resends its shard, and a large
/// apply touches nearly every shard, so shards stay small: two or three
/// Routes each at 10,000 (1,024 larger shards loaded slower than one
/// configuration per Route, BENCHMARKS.md).
pub const ROUTE_SHARDS: u32 = 4096;

/// The shard of a Route: FNV-1a of its key, so it is the same in every
/// process and release (Envoy keeps what it has across control-plane
/// restarts).
pub fn route_shard(route: &ObjectKey) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = route.namespace.bytes().chain(std::iter::once(b'/')).chain(route.name.bytes());
    let hash = bytes.fold(OFFSET, |hash, b| (hash ^ u64::from(b)).wrapping_mul(PRIME));
    u32::try_from(hash % u64::from(ROUTE_SHARDS)).unwrap_or_default()
}

/// The route configuration holding the virtual hosts (main and tag hosts)
/// of every Route in one shard, loaded over RDS: `routes|<shard>`.
pub fn shard_route_configuration(shard: u32) -> String {
    format!("{SHARD_PREFIX}{SEPARATOR}{shard}")
}

/// The route configuration a Route's virtual hosts are in.
pub fn route_configuration(route: &ObjectKey) -> String {
    shard_route_configuration(route_shard(route))
}

/// The route scope of one host: `host|<host>`.
pub fn host_scope(host: &str) -> String {
    format!("{SCOPE_PREFIX}{SEPARATOR}{host}")
}

/// What a virtual host name produced here refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtualHostRef {
    /// The main host of a Route.
    Route(ObjectKey),
    /// The host of one tag of a Route.
    Tag { route: ObjectKey, tag: String },
}

/// Inverse of [`route_virtual_host`] and [`tag_virtual_host`].
pub fn parse_virtual_host(name: &str) -> Option<VirtualHostRef> {
    let parts: Vec<&str> = name.split(SEPARATOR).collect();
    if parts.iter().skip(1).any(|p| p.is_empty()) {
        return None;
    }
    match parts.as_slice() {
        [ROUTE_VHOST_PREFIX, namespace, route] => Some(VirtualHostRef::Route(ObjectKey::new(*namespace, *route))),
        [TAG_VHOST_PREFIX, namespace, route, tag] => {
            Some(VirtualHostRef::Tag { route: ObjectKey::new(*namespace, *route), tag: (*tag).to_owned() })
        }
        _ => None,
    }
}

/// Domains a host is matched under: the bare host and the host with any port,
/// so `Host: hello.default.example.com:8080` matches too.
pub fn host_domains(host: &str) -> [String; 2] {
    [host.to_owned(), format!("{host}:*")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_cluster_round_trips() {
        let key = ObjectKey::new("default", "hello-00001");
        let name = revision_cluster(&key);
        assert_eq!(name, "rev|default|hello-00001");
        assert_eq!(parse_revision_cluster(&name), Some(key));
    }

    #[test]
    fn foreign_cluster_names_do_not_parse() {
        for name in ["revgate-xds", "rev|default", "rev|default|a|b", "rev||a", "route|a|b", ""] {
            assert_eq!(parse_revision_cluster(name), None, "{name}");
        }
    }

    #[test]
    fn virtual_host_names_round_trip() {
        let route = ObjectKey::new("ns", "hello");
        assert_eq!(parse_virtual_host(&route_virtual_host(&route)), Some(VirtualHostRef::Route(route.clone())));
        assert_eq!(
            parse_virtual_host(&tag_virtual_host(&route, "candidate")),
            Some(VirtualHostRef::Tag { route, tag: "candidate".into() })
        );
        assert_eq!(parse_virtual_host("tag|ns|hello|"), None);
    }
}
