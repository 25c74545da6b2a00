//! Every name and host the Istio objects use, in one place.
//!
//! | object | name | where the convention comes from |
//! |---|---|---|
//! | VirtualService for gateways | `<route>-ingress` | net-istio `names.IngressVirtualService` |
//! | VirtualService for sidecars | `<route>-mesh` | net-istio `names.MeshVirtualService` |
//! | revision Deployment | `<revision>-deployment` | Knative `names.Deployment` |
//! | revision Service | `<revision>` | Knative's public revision Service (the SKS name) |
//! | route Service | `<route>`, `<tag>-<route>` (`tag-template`) | Knative's route Services |
//! | destination host | `<revision>.<namespace>.svc.cluster.local` | `network.GetServiceHostname` |
//! | WasmPlugin | `revgate` | revgate |
//!
//! Child names longer than a Kubernetes name allows are shortened exactly as
//! Knative's `kmeta.ChildName` does (MD5 of the parent), so a long route name
//! still yields the names net-istio would have used.

use std::collections::BTreeSet;

use revgate_model::Settings;
use revgate_model::meta::{VISIBILITY_CLUSTER_LOCAL, VISIBILITY_LABEL};
use revgate_model::names::{self as model_names, RouteNaming};
use revgate_model::plan::ObjectKey;

use crate::md5;

/// The Kubernetes cluster domain. Knative reads it from `/etc/resolv.conf`;
/// revgate, like its model, assumes the default.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Longest Kubernetes object name (a DNS label).
pub const MAX_NAME_LENGTH: usize = 63;

/// Name of the WasmPlugin that installs revgate's filter.
pub const WASM_PLUGIN: &str = "revgate";

/// The gateway name Istio reserves for sidecars.
pub const MESH_GATEWAY: &str = "mesh";

/// The VirtualService that programs the ingress (and local) gateways for a route.
pub fn ingress_virtual_service(route: &str) -> String {
    child_name(route, "-ingress")
}

/// The VirtualService that programs sidecars for a route's in-cluster hosts.
pub fn mesh_virtual_service(route: &str) -> String {
    child_name(route, "-mesh")
}

/// The Deployment that runs a revision's pods.
pub fn deployment(revision: &str) -> String {
    child_name(revision, "-deployment")
}

/// The Kubernetes Service in front of a revision's pods. It carries the
/// revision's own name because that is the host net-istio routes to.
pub fn revision_service(revision: &str) -> String {
    revision.to_string()
}

/// `<name>.<namespace>.svc.cluster.local`: a Service's in-cluster host.
pub fn service_host(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// The host VirtualServices route a revision's traffic to.
pub fn revision_host(revision: &ObjectKey) -> String {
    service_host(&revision_service(&revision.name), &revision.namespace)
}

/// Istio's name for the Envoy cluster of a Service port:
/// `outbound|<service port>||<host>` (empty subset). Envoy-side code that
/// calls a Service by cluster name (`dispatch_http_call`) must use this.
pub fn istio_outbound_cluster(port: u16, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

/// Knative's `kmeta.ChildName`: `parent + suffix`, or, when that is longer
/// than a name may be, the parent cut short and followed by the MD5 of the
/// parent, so distinct parents keep distinct children.
pub fn child_name(parent: &str, suffix: &str) -> String {
    const HASH_LENGTH: usize = 32;
    const HEAD: usize = MAX_NAME_LENGTH - HASH_LENGTH;
    if parent.len() + suffix.len() <= MAX_NAME_LENGTH {
        return format!("{parent}{suffix}");
    }
    if suffix.len() >= HEAD {
        // The suffix alone leaves no room: hash everything, keep what fits.
        let hash = md5::hex_digest(format!("{parent}{suffix}").as_bytes());
        let mut name = format!("{}{hash}", prefix(parent, HEAD));
        let room = MAX_NAME_LENGTH.saturating_sub(name.len());
        name.push_str(prefix(suffix, room));
        let valid_len = name.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).len();
        name.truncate(valid_len);
        return name;
    }
    format!("{}{}{suffix}", prefix(parent, HEAD - suffix.len()), md5::hex_digest(parent.as_bytes()))
}

/// The first `len` bytes of a name (names are ASCII; a multi-byte character
/// at the cut is dropped rather than split).
fn prefix(text: &str, len: usize) -> &str {
    let mut end = len.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The in-cluster host of a route's default traffic (`tag: None`) or of one
/// of its tags: `<name>.<namespace>.svc.cluster.local`, where a tag's name
/// comes from `tag-template` (`<tag>-<route>` by default), whatever the
/// route's public domain.
pub fn target_local_host(route: RouteNaming<'_>, tag: Option<&str>, settings: &Settings) -> String {
    match tag {
        None => model_names::cluster_local_host(route.key),
        Some(tag) => {
            let mut labels = route.labels.clone();
            labels.insert(VISIBILITY_LABEL.to_string(), VISIBILITY_CLUSTER_LOCAL.to_string());
            model_names::tag_host(RouteNaming { labels: &labels, ..route }, tag, settings)
        }
    }
}

/// The Kubernetes Service that makes a target's in-cluster host resolve:
/// the host's name part (`hello`, `canary-hello`).
pub fn route_service(route: RouteNaming<'_>, tag: Option<&str>, settings: &Settings) -> String {
    let host = target_local_host(route, tag, settings);
    let suffix = format!(".{}{}", route.key.namespace, local_host_suffix());
    host.strip_suffix(&suffix).map_or_else(|| route.key.name.clone(), str::to_string)
}

// ----- hosts -----------------------------------------------------------------

/// `.svc.cluster.local`: what in-cluster hosts end in.
pub fn local_host_suffix() -> String {
    format!(".svc.{CLUSTER_DOMAIN}")
}

/// Whether a host is an in-cluster Service host (`….svc.cluster.local`).
pub fn is_local_host(host: &str) -> bool {
    host.ends_with(&local_host_suffix())
}

/// Every spelling of the given hosts a client may use: the host itself and,
/// for in-cluster hosts, the forms without `.cluster.local` and without
/// `.svc.cluster.local` (knative/networking `ingress.ExpandedHosts`).
/// A form whose last label would be all digits or longer than 63 bytes is
/// not a host name and is left out.
pub fn expanded_hosts<'a>(hosts: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    let suffixes = [String::new(), format!(".{CLUSTER_DOMAIN}"), local_host_suffix()];
    let mut expanded = BTreeSet::new();
    for host in hosts {
        for suffix in &suffixes {
            let Some(trimmed) = host.strip_suffix(suffix.as_str()) else {
                continue;
            };
            if suffix.is_empty() || trimmed.len() < host.len() {
                let top_level = trimmed.rsplit('.').next().unwrap_or(trimmed);
                let valid = top_level.len() <= MAX_NAME_LENGTH && !top_level.bytes().all(|b| b.is_ascii_digit());
                if valid {
                    expanded.insert(trimmed.to_string());
                }
            }
        }
    }
    expanded
}

/// The authority prefix that matches a host and `host:port`: in-cluster
/// hosts lose `.svc.cluster.local`, so the prefix also matches their short
/// forms (net-istio `hostPrefix`).
pub fn host_prefix(host: &str) -> &str {
    host.strip_suffix(&local_host_suffix()).unwrap_or(host)
}

/// The fewest authority prefixes that match all the given hosts: hosts are
/// taken in order, cut to their [`host_prefix`], and dropped when a prefix
/// already kept matches them (net-istio `getDistinctHostPrefixes`). The
/// three spellings of an in-cluster host collapse into one match.
pub fn distinct_host_prefixes(hosts: &BTreeSet<String>) -> BTreeSet<String> {
    let mut kept: BTreeSet<String> = BTreeSet::new();
    for host in hosts {
        let prefix = host_prefix(host);
        if !kept.iter().any(|k| prefix.starts_with(k.as_str())) {
            kept.insert(prefix.to_string());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_children_are_parent_and_suffix() {
        assert_eq!(ingress_virtual_service("hello"), "hello-ingress");
        assert_eq!(mesh_virtual_service("hello"), "hello-mesh");
        assert_eq!(deployment("hello-00001"), "hello-00001-deployment");
        assert_eq!(revision_service("hello-00001"), "hello-00001");
        assert_eq!(revision_host(&ObjectKey::new("default", "hello-00001")), "hello-00001.default.svc.cluster.local");
        assert_eq!(
            istio_outbound_cluster(9091, &service_host("revgate", "revgate-system")),
            "outbound|9091||revgate.revgate-system.svc.cluster.local"
        );
    }

    #[test]
    fn long_children_match_kmeta_child_name() {
        // Expected values computed independently with Knative's algorithm
        // (parent cut to 31 - len(suffix) bytes, then md5(parent) in hex).
        let route = "a-very-long-route-name-that-fills-the-kubernetes-name-limit-xyz";
        assert_eq!(ingress_virtual_service(route), "a-very-long-route-name-a8245c9e9b759a7465cf6b8a0294bc53-ingress");
        let revision = "stock-service-example-a-rather-long-revision-name-00001";
        assert_eq!(deployment(revision), "stock-service-exampl6481b0d4f1ed53dfa076305b69ce6314-deployment");
        // Exactly at the limit: no hashing.
        let fits = "r".repeat(MAX_NAME_LENGTH - "-deployment".len());
        assert_eq!(deployment(&fits), format!("{fits}-deployment"));
        // A suffix of 31 bytes or more: parent (at most 31 bytes), md5(parent + suffix), then
        // what still fits of the suffix, without trailing non-alphanumerics.
        let long_suffix = format!("-{}", "s".repeat(40));
        assert_eq!(child_name("parent", &long_suffix), format!("parent{long_suffix}"), "fits: no hashing");
        assert_eq!(
            child_name(&"p".repeat(30), &long_suffix),
            "ppppppppppppppppppppppppppppppe9d8cba9a61c5c57d95a562bf39fe66e"
        );
        assert_eq!(
            child_name(&"q".repeat(40), &long_suffix),
            "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqd5d67c0726a40ac1e6aa2c195b732fe2"
        );
    }

    #[test]
    fn hosts_expand_like_knative() {
        let hosts = [String::from("hello.default.svc.cluster.local"), String::from("hello.default.example.com")];
        let got: Vec<String> = expanded_hosts(&hosts).into_iter().collect();
        assert_eq!(
            got,
            ["hello.default", "hello.default.example.com", "hello.default.svc", "hello.default.svc.cluster.local"]
        );
        let numeric = [String::from("a.123.svc.cluster.local")];
        assert_eq!(expanded_hosts(&numeric).len(), 2, "a.123 is not a host name: {:?}", expanded_hosts(&numeric));
    }

    #[test]
    fn in_cluster_spellings_collapse_into_one_prefix() {
        let hosts: BTreeSet<String> =
            ["hello.default", "hello.default.svc", "hello.default.svc.cluster.local"].map(String::from).into();
        assert_eq!(distinct_host_prefixes(&hosts), BTreeSet::from(["hello.default".to_string()]));
        let external: BTreeSet<String> = [String::from("hello.default.example.com")].into();
        assert_eq!(distinct_host_prefixes(&external), external);
    }
}
