//! Immutable, versioned sets of Envoy resources: *what* the ADS server sends.
//!
//! A [`Snapshot`] holds, per resource type, every resource encoded as an
//! `Any` together with a resource version (a hash of the resource's
//! content) and a type version (a hash over all `(name, resource version)`
//! pairs). Streams only compare these versions, so an unchanged resource
//! keeps its version across snapshots and is never resent by delta xDS.
//!
//! Hashing the encoded bytes directly would not do: protobuf map fields
//! (`Struct` metadata, `typed_extension_protocol_options`) are `HashMap`s whose
//! encoding order changes from one value to the next. Resources are hashed
//! canonically instead: fields by number, map entries by key, and `Any`
//! payloads through their own descriptors.

use std::collections::BTreeMap;
use std::fmt;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::descriptors;
use crate::translate::Resources;

/// The four xDS resource types revgate serves, in the order ADS must send
/// them when a snapshot changes: clusters before their endpoints, listeners
/// before their routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl ResourceType {
    /// All types, in ADS send order.
    pub const ALL: [ResourceType; 4] =
        [ResourceType::Cluster, ResourceType::Endpoint, ResourceType::Listener, ResourceType::Route];

    /// The type URL, e.g. `type.googleapis.com/envoy.config.cluster.v3.Cluster`.
    pub fn type_url(self) -> String {
        match self {
            ResourceType::Cluster => Cluster::type_url(),
            ResourceType::Endpoint => ClusterLoadAssignment::type_url(),
            ResourceType::Listener => Listener::type_url(),
            ResourceType::Route => RouteConfiguration::type_url(),
        }
    }

    /// The short name used in logs and status: `CDS`, `EDS`, `LDS`, `RDS`.
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "CDS",
            ResourceType::Endpoint => "EDS",
            ResourceType::Listener => "LDS",
            ResourceType::Route => "RDS",
        }
    }

    pub fn from_type_url(type_url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == type_url)
    }

    /// Clusters and listeners are subscribed to as a whole (wildcard);
    /// endpoints and routes by the names the former reference.
    pub fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    fn full_name(self) -> String {
        match self {
            ResourceType::Cluster => Cluster::full_name(),
            ResourceType::Endpoint => ClusterLoadAssignment::full_name(),
            ResourceType::Listener => Listener::full_name(),
            ResourceType::Route => RouteConfiguration::full_name(),
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// One resource as sent: its content version and its encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedResource {
    pub version: String,
    pub resource: Any,
}

/// All resources of one type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeSnapshot {
    /// Hash over the `(name, version)` pairs of `resources`.
    pub version: String,
    pub resources: BTreeMap<String, VersionedResource>,
}

impl TypeSnapshot {
    fn new(resources: BTreeMap<String, VersionedResource>) -> Self {
        let version = version_of(resources.iter().map(|(n, r)| (n.as_str(), r.version.as_str())));
        Self { version, resources }
    }
}

/// The version of a set of resources given as `(name, resource version)`
/// pairs in name order. SotW streams serving a subset of a type use it to
/// version exactly what they send.
pub fn version_of<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut hasher = Sha256::new();
    for (name, version) in pairs {
        update_str(&mut hasher, name);
        update_str(&mut hasher, version);
    }
    short_hex(&hasher.finalize())
}

/// Why a snapshot would leave Envoy with dangling references.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "listener {listener} loads route configuration {route} over RDS, but the snapshot has no such route configuration"
    )]
    MissingRoute { listener: String, route: String },
    #[error(
        "cluster {cluster} loads endpoints {endpoints} over EDS, but the snapshot has no such cluster load assignment"
    )]
    MissingEndpoints { cluster: String, endpoints: String },
    #[error("{resource_type} resource {name} appears more than once; resource names must be unique per type")]
    DuplicateName { resource_type: ResourceType, name: String },
    #[error("listener {listener} has an HTTP connection manager that cannot be decoded: {message}")]
    UndecodableListener { listener: String, message: String },
}

/// An immutable set of resources of every type. Build it once, share it as
/// `Arc<Snapshot>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<ResourceType, TypeSnapshot>,
    /// Problems found while building, reported by [`Snapshot::consistency_check`].
    problems: Vec<SnapshotError>,
    /// `(listener, route configuration)` pairs referenced over RDS.
    rds_refs: Vec<(String, String)>,
    /// `(cluster, assignment)` pairs referenced over EDS.
    eds_refs: Vec<(String, String)>,
}

impl Snapshot {
    pub fn new(resources: &Resources) -> Snapshot {
        let mut problems = Vec::new();
        let mut types = BTreeMap::new();
        types.insert(
            ResourceType::Cluster,
            type_snapshot(ResourceType::Cluster, resources.clusters.iter().map(|c| (c.name.clone(), c)), &mut problems),
        );
        types.insert(
            ResourceType::Endpoint,
            type_snapshot(
                ResourceType::Endpoint,
                resources.endpoints.iter().map(|e| (e.cluster_name.clone(), e)),
                &mut problems,
            ),
        );
        types.insert(
            ResourceType::Listener,
            type_snapshot(
                ResourceType::Listener,
                resources.listeners.iter().map(|l| (l.name.clone(), l)),
                &mut problems,
            ),
        );
        types.insert(
            ResourceType::Route,
            type_snapshot(ResourceType::Route, resources.routes.iter().map(|r| (r.name.clone(), r)), &mut problems),
        );

        let mut rds_refs = Vec::new();
        for listener in &resources.listeners {
            match rds_names(listener) {
                Ok(names) => rds_refs.extend(names.into_iter().map(|r| (listener.name.clone(), r))),
                Err(message) => {
                    problems.push(SnapshotError::UndecodableListener { listener: listener.name.clone(), message })
                }
            }
        }
        let eds_refs = resources.clusters.iter().filter_map(|c| eds_name(c).map(|e| (c.name.clone(), e))).collect();

        Snapshot { types, problems, rds_refs, eds_refs }
    }

    /// An empty snapshot (no resources of any type).
    pub fn empty() -> Snapshot {
        Snapshot::new(&Resources::default())
    }

    /// Every RDS name a listener references and every EDS name a cluster
    /// references exists, and names are unique per type.
    pub fn consistency_check(&self) -> Result<(), SnapshotError> {
        if let Some(problem) = self.problems.first() {
            return Err(problem.clone());
        }
        for (listener, route) in &self.rds_refs {
            if !self.contains(ResourceType::Route, route) {
                return Err(SnapshotError::MissingRoute { listener: listener.clone(), route: route.clone() });
            }
        }
        for (cluster, endpoints) in &self.eds_refs {
            if !self.contains(ResourceType::Endpoint, endpoints) {
                return Err(SnapshotError::MissingEndpoints { cluster: cluster.clone(), endpoints: endpoints.clone() });
            }
        }
        Ok(())
    }

    /// The resources of one type.
    pub fn get(&self, resource_type: ResourceType) -> &TypeSnapshot {
        static EMPTY: std::sync::OnceLock<TypeSnapshot> = std::sync::OnceLock::new();
        self.types.get(&resource_type).unwrap_or_else(|| EMPTY.get_or_init(|| TypeSnapshot::new(BTreeMap::new())))
    }

    /// The type version of one type.
    pub fn version(&self, resource_type: ResourceType) -> &str {
        &self.get(resource_type).version
    }

    /// The resources of a type by type URL; `None` for types revgate does not serve.
    pub fn by_type_url(&self, type_url: &str) -> Option<&TypeSnapshot> {
        ResourceType::from_type_url(type_url).map(|t| self.get(t))
    }

    fn contains(&self, resource_type: ResourceType, name: &str) -> bool {
        self.get(resource_type).resources.contains_key(name)
    }
}

fn type_snapshot<'a, M: Message + Name + 'a>(
    resource_type: ResourceType,
    items: impl Iterator<Item = (String, &'a M)>,
    problems: &mut Vec<SnapshotError>,
) -> TypeSnapshot {
    let mut resources = BTreeMap::new();
    for (name, message) in items {
        let resource = Any { type_url: M::type_url(), value: message.encode_to_vec() };
        let version = content_version(resource_type, &resource.value);
        if resources.insert(name.clone(), VersionedResource { version, resource }).is_some() {
            problems.push(SnapshotError::DuplicateName { resource_type, name });
        }
    }
    TypeSnapshot::new(resources)
}

/// RDS route configuration names a listener's HTTP connection managers load.
fn rds_names(listener: &Listener) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let hcm_url = HttpConnectionManager::type_url();
    for chain in listener.filter_chains.iter().chain(listener.default_filter_chain.iter()) {
        for f in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if any.type_url != hcm_url {
                continue;
            }
            let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
            if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                names.push(rds.route_config_name);
            }
        }
    }
    Ok(names)
}

/// The EDS service name an EDS cluster loads (its own name unless set).
fn eds_name(c: &Cluster) -> Option<String> {
    let eds = cluster::DiscoveryType::Eds as i32;
    match c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) if t == eds => {
            let service_name = c.eds_cluster_config.as_ref().map(|e| e.service_name.as_str()).unwrap_or_default();
            Some(if service_name.is_empty() { c.name.clone() } else { service_name.to_owned() })
        }
        _ => None,
    }
}

/// Content version of an encoded resource. Falls back to hashing the raw
/// bytes if reflection is unavailable: still correct, only possibly
/// changing versions for resources with several map entries.
fn content_version(resource_type: ResourceType, encoded: &[u8]) -> String {
    let mut hasher = Sha256::new();
    match descriptors::decode_dynamic(&resource_type.full_name(), encoded) {
        Ok(message) => hash_message(&mut hasher, &message),
        Err(err) => {
            tracing::debug!(%err, "hashing {resource_type} bytes without reflection");
            hasher.update(b"raw");
            hasher.update(encoded);
        }
    }
    short_hex(&hasher.finalize())
}

fn hash_message(hasher: &mut Sha256, message: &DynamicMessage) {
    if message.descriptor().full_name() == "google.protobuf.Any"
        && let Some(inner) = decode_any(message)
    {
        hasher.update(b"A");
        update_str(hasher, inner.descriptor().full_name());
        hash_message(hasher, &inner);
        return;
    }
    let mut fields: Vec<_> = message.fields().collect();
    fields.sort_by_key(|(field, _)| field.number());
    hasher.update(b"{");
    for (field, value) in fields {
        hasher.update(field.number().to_le_bytes());
        hash_value(hasher, value);
    }
    hasher.update(b"}");
}

fn decode_any(message: &DynamicMessage) -> Option<DynamicMessage> {
    let type_url = message.get_field_by_name("type_url")?;
    let value = message.get_field_by_name("value")?;
    let full_name = type_url.as_str()?.rsplit('/').next()?.to_owned();
    let bytes = value.as_bytes()?;
    descriptors::decode_dynamic(&full_name, bytes).ok()
}

fn hash_value(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Bool(b) => hasher.update([b'b', u8::from(*b)]),
        Value::I32(v) => {
            hasher.update(b"i");
            hasher.update(i64::from(*v).to_le_bytes());
        }
        Value::I64(v) => {
            hasher.update(b"i");
            hasher.update(v.to_le_bytes());
        }
        Value::U32(v) => {
            hasher.update(b"u");
            hasher.update(u64::from(*v).to_le_bytes());
        }
        Value::U64(v) => {
            hasher.update(b"u");
            hasher.update(v.to_le_bytes());
        }
        Value::F32(v) => {
            hasher.update(b"f");
            hasher.update(f64::from(*v).to_bits().to_le_bytes());
        }
        Value::F64(v) => {
            hasher.update(b"f");
            hasher.update(v.to_bits().to_le_bytes());
        }
        Value::String(s) => {
            hasher.update(b"s");
            update_str(hasher, s);
        }
        Value::Bytes(b) => {
            hasher.update(b"y");
            hasher.update((b.len() as u64).to_le_bytes());
            hasher.update(b);
        }
        Value::EnumNumber(v) => {
            hasher.update(b"e");
            hasher.update(v.to_le_bytes());
        }
        Value::Message(m) => hash_message(hasher, m),
        Value::List(items) => {
            hasher.update(b"[");
            hasher.update((items.len() as u64).to_le_bytes());
            for item in items {
                hash_value(hasher, item);
            }
        }
        Value::Map(entries) => {
            let sorted: BTreeMap<&MapKey, &Value> = entries.iter().collect();
            hasher.update(b"m");
            hasher.update((sorted.len() as u64).to_le_bytes());
            for (key, value) in sorted {
                hash_value(hasher, &Value::from(key.clone()));
                hash_value(hasher, value);
            }
        }
    }
}

fn update_str(hasher: &mut Sha256, s: &str) {
    hasher.update((s.len() as u64).to_le_bytes());
    hasher.update(s.as_bytes());
}

/// First 8 bytes of a digest as 16 hex digits: plenty to tell versions apart.
fn short_hex(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use revgate_model::plan::{Endpoint, EndpointMap};

    use super::*;
    use crate::translate::tests::{endpoints, key, plan};
    use crate::translate::{XdsSettings, translate};

    fn snapshot(endpoints: &EndpointMap) -> Snapshot {
        Snapshot::new(&translate(&plan(), endpoints, &XdsSettings::default()))
    }

    fn resource_versions(s: &Snapshot, t: ResourceType) -> BTreeMap<String, String> {
        s.get(t).resources.iter().map(|(n, r)| (n.clone(), r.version.clone())).collect()
    }

    #[test]
    fn equal_inputs_give_equal_versions() {
        // Cluster metadata is a protobuf map (a HashMap): independent builds
        // encode it in different orders, yet versions must match.
        for _ in 0..20 {
            let (a, b) = (snapshot(&endpoints()), snapshot(&endpoints()));
            for t in ResourceType::ALL {
                assert_eq!(a.version(t), b.version(t), "{t}");
                assert_eq!(resource_versions(&a, t), resource_versions(&b, t), "{t}");
            }
        }
    }

    #[test]
    fn an_endpoint_change_moves_only_that_assignment() {
        let before = snapshot(&endpoints());
        let mut changed = endpoints();
        changed.insert(key("hello-00002"), vec![Endpoint { host: "10.0.0.9".into(), port: 8080 }]);
        let after = snapshot(&changed);

        for t in [ResourceType::Cluster, ResourceType::Listener, ResourceType::Route] {
            assert_eq!(before.version(t), after.version(t), "{t} unchanged");
        }
        assert_ne!(before.version(ResourceType::Endpoint), after.version(ResourceType::Endpoint));
        let (b, a) =
            (resource_versions(&before, ResourceType::Endpoint), resource_versions(&after, ResourceType::Endpoint));
        assert_eq!(b["rev|default|hello-00001"], a["rev|default|hello-00001"]);
        assert_ne!(b["rev|default|hello-00002"], a["rev|default|hello-00002"]);
    }

    #[test]
    fn resources_carry_their_type_urls() {
        let s = snapshot(&endpoints());
        for t in ResourceType::ALL {
            assert!(s.get(t).resources.values().all(|r| r.resource.type_url == t.type_url()));
            assert_eq!(ResourceType::from_type_url(&t.type_url()), Some(t));
        }
        assert_eq!(ResourceType::Cluster.type_url(), "type.googleapis.com/envoy.config.cluster.v3.Cluster");
    }

    #[test]
    fn translated_snapshots_are_consistent() {
        assert_eq!(snapshot(&endpoints()).consistency_check(), Ok(()));
        assert_eq!(Snapshot::empty().consistency_check(), Ok(()));
    }

    #[test]
    fn dangling_references_are_found() {
        let mut resources = translate(&plan(), &endpoints(), &XdsSettings::default());
        resources.endpoints.pop();
        assert_eq!(
            Snapshot::new(&resources).consistency_check(),
            Err(SnapshotError::MissingEndpoints {
                cluster: "rev|default|hello-00002".into(),
                endpoints: "rev|default|hello-00002".into(),
            })
        );

        let mut resources = translate(&plan(), &endpoints(), &XdsSettings::default());
        resources.routes.clear();
        assert_eq!(
            Snapshot::new(&resources).consistency_check(),
            Err(SnapshotError::MissingRoute { listener: "revgate-http".into(), route: "revgate-routes".into() })
        );

        let mut resources = translate(&plan(), &endpoints(), &XdsSettings::default());
        resources.clusters.push(resources.clusters[0].clone());
        assert!(matches!(
            Snapshot::new(&resources).consistency_check(),
            Err(SnapshotError::DuplicateName { resource_type: ResourceType::Cluster, .. })
        ));
    }
}
