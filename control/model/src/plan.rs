//! The gateway plan: what the data plane must do, independent of any proxy.
//!
//! The model computes a [`GatewayPlan`] from the applied resources (see
//! `World::plan`); the xDS crate translates it into Envoy resources and the
//! Istio renderer into VirtualServices. Keeping this contract free of Envoy
//! and Kubernetes types lets both translations stay pure and lets the model
//! be tested without either.
//!
//! Everything here is sorted deterministically (routes by namespace and name,
//! revisions likewise, splits by revision name) so that equal inputs produce
//! byte-identical translations and therefore identical xDS versions.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Identifies a namespaced object: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything the gateway needs for every Route that can serve traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayPlan {
    /// Routes whose traffic resolves to at least one existing revision, sorted by key.
    pub routes: Vec<Arc<RoutePlan>>,
    /// Every revision that exists (routed or not), sorted by key. Each gets
    /// a cluster so that a later route change never waits for cluster warming.
    pub revisions: Vec<Arc<RevisionBackend>>,
    /// Knative `config-features` `tag-header-based-routing: Enabled`.
    pub tag_header_routing: bool,
}

/// One Route: its main host split by percent, and one host per tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePlan {
    pub key: ObjectKey,
    /// `{name}.{namespace}.{domain}` (Knative's `domain-template`).
    pub host: String,
    /// Revisions with percent > 0 on the main host; percents sum to 100.
    /// Several traffic entries resolving to the same revision are merged.
    pub splits: Vec<Split>,
    /// One entry per `tag`, sorted by tag.
    pub tags: Vec<TagPlan>,
    /// The domains DomainMappings map to this Route, sorted by host: each
    /// served with the main host's split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<MappedHost>,
}

/// A DomainMapping's domain, served with its Route's traffic. As Knative's
/// mapping Ingress does, the request reaches the revision with the host
/// rewritten to the Route's cluster-local address and the domain in
/// `K-Original-Host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedHost {
    /// The mapping's name: the domain.
    pub host: String,
    /// `{route}.{namespace}.svc.cluster.local`, the referenced object's address.
    pub rewrite_host: String,
}

/// A share of a route's traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub revision: ObjectKey,
    /// 1..=100.
    pub percent: u32,
}

/// A tag's own host, always 100% to the tagged revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagPlan {
    pub tag: String,
    /// `{tag}-{name}.{namespace}.{domain}` (Knative's `tag-template`).
    pub host: String,
    pub revision: ObjectKey,
}

/// What the gateway needs to know about one revision's backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionBackend {
    pub key: ObjectKey,
    /// The Configuration that created it (Knative label `serving.knative.dev/configuration`).
    pub configuration: String,
    /// The Service that owns it, if any (label `serving.knative.dev/service`).
    pub service: Option<String>,
    /// Upstream protocol, from the serving container's port name (`h2c` means HTTP/2 cleartext).
    pub protocol: UpstreamProtocol,
    /// `spec.containerConcurrency` (0 = unlimited).
    pub container_concurrency: u32,
    /// `spec.timeoutSeconds`, defaulted from `config-defaults`
    /// (`revision-timeout-seconds`). As Knative's queue-proxy applies it: the
    /// time a request sent to the revision may wait for its response to
    /// start; a response that started (a WebSocket's `101`, a gRPC stream's
    /// headers) is never cut by it. It also bounds how long the gateway
    /// holds a request for the revision while it activates.
    pub timeout_seconds: u64,
    /// `spec.responseStartTimeoutSeconds`, defaulted from `config-defaults`
    /// (`revision-response-start-timeout-seconds`, at most `timeout_seconds`):
    /// the same wait as `timeout_seconds`, named apart so that the answer
    /// says which limit the revision hit.
    pub response_start_timeout_seconds: u64,
    /// `spec.idleTimeoutSeconds`, defaulted from `config-defaults`
    /// (`revision-idle-timeout-seconds`); 0 means none. The longest a request
    /// may go without a byte of response from the revision, before and after
    /// its response started.
    pub idle_timeout_seconds: u64,
    /// Static endpoints from the `revgate.dev/endpoints` annotation, if given.
    /// Runtimes supply the live endpoints otherwise.
    pub static_endpoints: Option<Vec<Endpoint>>,
}

/// HTTP version spoken to a revision's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2c,
}

/// One address a revision's traffic can be sent to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// An IP address or a host name.
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Live endpoints per revision, as reported by a runtime (or static annotations).
/// A revision absent from the map has no ready endpoints.
pub type EndpointMap = BTreeMap<ObjectKey, Vec<Endpoint>>;

/// Parses the `revgate.dev/endpoints` annotation: `host:port` entries
/// separated by commas, IPv6 hosts in brackets (`[::1]:8080`).
pub fn parse_endpoints(value: &str) -> Result<Vec<Endpoint>, String> {
    let mut endpoints = Vec::new();
    for entry in value.split(',').map(str::trim) {
        let bad =
            |why: &str| format!("{entry:?} is not host:port ({why}); expected e.g. \"127.0.0.1:8081,127.0.0.1:8082\"");
        if entry.is_empty() {
            return Err(format!("empty entry in {value:?}; expected e.g. \"127.0.0.1:8081,127.0.0.1:8082\""));
        }
        let (host, port) = entry.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?,
            None if host.contains(':') => return Err(bad("IPv6 addresses go in brackets")),
            None => host,
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/' || c == '[' || c == ']') {
            return Err(bad("invalid host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("port must be 1-65535"))?;
        if port == 0 {
            return Err(bad("port must be 1-65535"));
        }
        endpoints.push(Endpoint { host: host.to_string(), port });
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_annotation_round_trips() {
        let got = parse_endpoints("127.0.0.1:8081, [::1]:8082,backend.local:80").expect("valid");
        let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["127.0.0.1:8081", "[::1]:8082", "backend.local:80"]);
        for bad in ["", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "::1:80", "a:1,,b:2", ":80"] {
            assert!(parse_endpoints(bad).is_err(), "{bad:?}");
        }
    }
}
