//! Every name revgate derives: revision names, the children of a Service,
//! and route hosts (Knative's `domain-template` and `tag-template`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::host_template::TemplateVars;
use crate::meta::{LEGACY_VISIBILITY_LABEL, VISIBILITY_CLUSTER_LOCAL, VISIBILITY_LABEL};
use crate::plan::ObjectKey;

/// Longest Kubernetes object name that is also a DNS label.
pub const MAX_NAME_LENGTH: usize = 63;

/// Name of the Configuration a Service owns.
pub fn service_configuration(service: &str) -> String {
    service.to_string()
}

/// Name of the Route a Service owns.
pub fn service_route(service: &str) -> String {
    service.to_string()
}

/// Name of the revision created for a Configuration generation without a
/// template name: `hello-00001`, `hello-00002`…
pub fn revision_name(configuration: &str, generation: i64) -> String {
    child_name(configuration, &format!("-{generation:05}"))
}

/// `parent + suffix`, shortened to a valid name when too long: the parent is
/// cut and a hash of it keeps shortened names distinct.
pub fn child_name(parent: &str, suffix: &str) -> String {
    if parent.len() + suffix.len() <= MAX_NAME_LENGTH {
        return format!("{parent}{suffix}");
    }
    let digest = Sha256::digest(parent.as_bytes());
    let mut hash = String::new();
    for byte in &digest[..4] {
        let _ = write!(hash, "{byte:02x}");
    }
    let keep = MAX_NAME_LENGTH.saturating_sub(suffix.len() + hash.len());
    let cut: String = parent.chars().take(keep).collect();
    format!("{cut}{hash}{suffix}")
}

/// Whether labels keep a route off the public domain.
pub fn is_cluster_local(labels: &BTreeMap<String, String>) -> bool {
    [VISIBILITY_LABEL, LEGACY_VISIBILITY_LABEL]
        .iter()
        .any(|k| labels.get(*k).map(String::as_str) == Some(VISIBILITY_CLUSTER_LOCAL))
}

/// The in-cluster host of a route: `{name}.{namespace}.svc.cluster.local`.
pub fn cluster_local_host(route: &ObjectKey) -> String {
    format!("{}.{}.svc.cluster.local", route.name, route.namespace)
}

/// What a route's host is computed from.
#[derive(Debug, Clone, Copy)]
pub struct RouteNaming<'a> {
    pub key: &'a ObjectKey,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
}

/// The main host of a route. Cluster-local routes, and routes no
/// `config-domain` entry selects, get the in-cluster host.
pub fn route_host(route: RouteNaming<'_>, settings: &Settings) -> String {
    host_for_name(route, &route.key.name, settings)
}

/// The host of one tag of a route: `tag-template` gives the name, which then
/// goes through `domain-template` like a route name.
pub fn tag_host(route: RouteNaming<'_>, tag: &str, settings: &Settings) -> String {
    let name = settings.network.tag_template.render(&TemplateVars {
        name: &route.key.name,
        namespace: &route.key.namespace,
        tag,
        domain: "",
        labels: route.labels,
        annotations: route.annotations,
    });
    host_for_name(route, &name, settings)
}

fn host_for_name(route: RouteNaming<'_>, name: &str, settings: &Settings) -> String {
    let domain = if is_cluster_local(route.labels) { None } else { settings.domain.domain_for(route.labels) };
    match domain {
        None => cluster_local_host(&ObjectKey::new(route.key.namespace.clone(), name)),
        Some(domain) => settings.network.domain_template.render(&TemplateVars {
            name,
            namespace: &route.key.namespace,
            tag: "",
            domain,
            labels: route.labels,
            annotations: route.annotations,
        }),
    }
}

/// `http://{host}`.
pub fn url(host: &str) -> String {
    format!("http://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_names_are_numbered_by_generation() {
        for (config, generation, want) in
            [("hello", 1, "hello-00001"), ("hello", 42, "hello-00042"), ("hello", 123_456, "hello-123456")]
        {
            assert_eq!(revision_name(config, generation), want);
        }
    }

    #[test]
    fn long_child_names_are_shortened_and_stay_distinct() {
        let a = "a".repeat(60);
        let b = format!("{}b", "a".repeat(59));
        let (ra, rb) = (revision_name(&a, 1), revision_name(&b, 1));
        assert_eq!(ra.len(), MAX_NAME_LENGTH);
        assert!(ra.ends_with("-00001"));
        assert_ne!(ra, rb);
    }
}
