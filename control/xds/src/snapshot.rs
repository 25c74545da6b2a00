//! Immutable, versioned sets of Envoy resources: *what* the ADS server sends.
//!
//! A [`Snapshot`] holds, per resource type, every resource encoded as an
//! `Any` together with a resource version and a type version. Streams only
//! compare these versions, so an unchanged resource keeps its version across
//! snapshots and is never resent by delta xDS, and a type whose resources
//! did not change keeps its version and is not resent by SotW either.
//!
//! - A resource's version is a hash of its encoded bytes; `encode`
//!   makes those bytes deterministic (protobuf maps in key order).
//! - A type's version is the wrapping sum of one 64-bit digest per
//!   `(name, resource version)`: order-free, so adding, changing or removing
//!   one resource updates it in constant time, and a SotW stream serving a
//!   subset of a type versions that subset with the same function
//!   ([`version_of`]).
//! - Types are shared (`Arc`) between successive snapshots: a change copies
//!   only the types it touches, so an endpoint change leaves clusters,
//!   listeners and routes the very same values ([`SnapshotBuilder`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::encode;
use crate::translate::Resources;

/// The five xDS resource types revgate serves, in the order ADS must send
/// them when a snapshot changes: clusters before their endpoints, listeners
/// before the scopes they load, scopes before their routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    ScopedRoute,
    Route,
}

impl ResourceType {
    /// All types, in ADS send order.
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::ScopedRoute,
        ResourceType::Route,
    ];

    /// The type URL, e.g. `type.googleapis.com/envoy.config.cluster.v3.Cluster`.
    pub fn type_url(self) -> String {
        match self {
            ResourceType::Cluster => Cluster::type_url(),
            ResourceType::Endpoint => ClusterLoadAssignment::type_url(),
            ResourceType::Listener => Listener::type_url(),
            ResourceType::ScopedRoute => ScopedRouteConfiguration::type_url(),
            ResourceType::Route => RouteConfiguration::type_url(),
        }
    }

    /// The short name used in logs and status: `CDS`, `EDS`, `LDS`, `SRDS`, `RDS`.
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "CDS",
            ResourceType::Endpoint => "EDS",
            ResourceType::Listener => "LDS",
            ResourceType::ScopedRoute => "SRDS",
            ResourceType::Route => "RDS",
        }
    }

    pub fn from_type_url(type_url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == type_url)
    }

    /// Clusters, listeners and route scopes are subscribed to as a whole
    /// (wildcard); endpoints and routes by the names the former reference.
    pub fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener | ResourceType::ScopedRoute)
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
    /// Digest of `(name, version)`, summed into type versions.
    digest: u64,
    /// Resources this one loads by name (an EDS cluster's assignment, a
    /// listener's scopes, a scope's route configuration), for the
    /// consistency check.
    references: Vec<(ResourceType, String)>,
}

impl VersionedResource {
    /// Encodes a resource and versions it by its bytes.
    pub fn new<M: Message + Name>(name: &str, message: &M, references: Vec<(ResourceType, String)>) -> Self {
        Self::from_bytes(name, M::type_url(), message.encode_to_vec(), references)
    }

    /// A cluster, encoded deterministically (its metadata is a map).
    pub fn cluster(cluster: &Cluster) -> Self {
        let references = eds_name(cluster).map(|e| vec![(ResourceType::Endpoint, e)]).unwrap_or_default();
        Self::from_bytes(&cluster.name, Cluster::type_url(), encode::cluster(cluster), references)
    }

    fn from_bytes(name: &str, type_url: String, value: Vec<u8>, references: Vec<(ResourceType, String)>) -> Self {
        let version = short_hex(&Sha256::digest(&value));
        let digest = pair_digest(name, &version);
        Self { version, resource: Any { type_url, value }, digest, references }
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        self.resource.value.len()
    }

    /// What this resource loads by name: `(type, name)` pairs.
    pub fn references(&self) -> &[(ResourceType, String)] {
        &self.references
    }
}

/// All resources of one type.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeSnapshot {
    /// The sum of the resources' `(name, version)` digests, as hex.
    pub version: String,
    pub resources: BTreeMap<String, Arc<VersionedResource>>,
    digest: u64,
}

impl Default for TypeSnapshot {
    fn default() -> Self {
        Self { version: hex_digest(0), resources: BTreeMap::new(), digest: 0 }
    }
}

impl TypeSnapshot {
    fn insert(&mut self, name: String, resource: Arc<VersionedResource>) -> Option<Arc<VersionedResource>> {
        self.digest = self.digest.wrapping_add(resource.digest);
        let old = self.resources.insert(name, resource);
        if let Some(old) = &old {
            self.digest = self.digest.wrapping_sub(old.digest);
        }
        self.version = hex_digest(self.digest);
        old
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.resources.remove(name) {
            self.digest = self.digest.wrapping_sub(old.digest);
            self.version = hex_digest(self.digest);
        }
    }

    /// The digest of the subset of this type named by `names` (absent names
    /// count 0); [`subset_version`] of it is the version a SotW stream
    /// asking for those names has. A sum, so that a stream can keep it and
    /// move it by what one change replaced ([`Self::digest_of`] before and
    /// after) instead of summing every name.
    pub fn digest_of_names<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> u64 {
        names.into_iter().fold(0u64, |sum, name| sum.wrapping_add(self.digest_of(name)))
    }

    /// One resource's share of a subset's digest (0 when absent).
    pub fn digest_of(&self, name: &str) -> u64 {
        self.resources.get(name).map_or(0, |r| r.digest)
    }
}

/// The version of a set of resources given as `(name, resource version)`
/// pairs, in any order: the same function as a [`TypeSnapshot`]'s version.
pub fn version_of<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    hex_digest(pairs.into_iter().fold(0u64, |sum, (name, version)| sum.wrapping_add(pair_digest(name, version))))
}

/// Why a snapshot would leave Envoy with dangling references.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "{resource_type} resource {name} loads {referenced_type} resource {referenced}, but the snapshot has no such \
         resource"
    )]
    Missing { resource_type: ResourceType, name: String, referenced_type: ResourceType, referenced: String },
    #[error("{resource_type} resource {name} appears more than once; resource names must be unique per type")]
    DuplicateName { resource_type: ResourceType, name: String },
    #[error("listener {listener} has an HTTP connection manager that cannot be decoded: {message}")]
    UndecodableListener { listener: String, message: String },
}

/// An immutable set of resources of every type. Build it once, share it as
/// `Arc<Snapshot>`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    types: BTreeMap<ResourceType, Arc<TypeSnapshot>>,
    /// Problems found while building, reported by [`Snapshot::consistency_check`].
    problems: Vec<SnapshotError>,
}

impl Snapshot {
    /// A snapshot of a whole translation (every resource encoded afresh).
    pub fn new(resources: &Resources) -> Snapshot {
        let mut builder = SnapshotBuilder::default();
        for c in &resources.clusters {
            builder.insert_new(ResourceType::Cluster, &c.name, VersionedResource::cluster(c));
        }
        for e in &resources.endpoints {
            builder.insert_new(
                ResourceType::Endpoint,
                &e.cluster_name,
                VersionedResource::new(&e.cluster_name, e, vec![]),
            );
        }
        for l in &resources.listeners {
            match listener_references(l) {
                Ok(references) => {
                    builder.insert_new(ResourceType::Listener, &l.name, VersionedResource::new(&l.name, l, references))
                }
                Err(message) => {
                    builder.problems.push(SnapshotError::UndecodableListener { listener: l.name.clone(), message })
                }
            }
        }
        for s in &resources.scoped_routes {
            builder.insert_new(ResourceType::ScopedRoute, &s.name, scope_resource(s));
        }
        for r in &resources.routes {
            builder.insert_new(ResourceType::Route, &r.name, VersionedResource::new(&r.name, r, vec![]));
        }
        builder.build()
    }

    /// An empty snapshot (no resources of any type).
    pub fn empty() -> Snapshot {
        Snapshot::default()
    }

    /// A builder starting from this snapshot's resources; types it does not
    /// touch stay shared with this snapshot.
    pub fn to_builder(&self) -> SnapshotBuilder {
        SnapshotBuilder { types: self.types.clone(), problems: self.problems.clone() }
    }

    /// Every name a resource loads (an EDS assignment, a scope, a route
    /// configuration) exists, and names are unique per type.
    pub fn consistency_check(&self) -> Result<(), SnapshotError> {
        if let Some(problem) = self.problems.first() {
            return Err(problem.clone());
        }
        for (resource_type, resources) in &self.types {
            for (name, resource) in &resources.resources {
                for (referenced_type, referenced) in &resource.references {
                    if !self.contains(*referenced_type, referenced) {
                        return Err(SnapshotError::Missing {
                            resource_type: *resource_type,
                            name: name.clone(),
                            referenced_type: *referenced_type,
                            referenced: referenced.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The resources of one type.
    pub fn get(&self, resource_type: ResourceType) -> &TypeSnapshot {
        static EMPTY: std::sync::OnceLock<TypeSnapshot> = std::sync::OnceLock::new();
        self.types.get(&resource_type).map_or_else(|| EMPTY.get_or_init(TypeSnapshot::default), |t| t.as_ref())
    }

    /// The resources of one type, shared: two snapshots whose types are the
    /// same `Arc` have the same resources of that type.
    pub fn shared(&self, resource_type: ResourceType) -> Option<&Arc<TypeSnapshot>> {
        self.types.get(&resource_type)
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

/// What [`SnapshotBuilder::upsert`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Upserted {
    /// An equal resource was there already.
    Unchanged,
    Added,
    /// The resource replaced this one.
    Replaced(Arc<VersionedResource>),
}

/// The next snapshot, built from the previous one by adding, replacing and
/// removing resources; each change costs what it changes.
#[derive(Debug, Clone, Default)]
pub struct SnapshotBuilder {
    types: BTreeMap<ResourceType, Arc<TypeSnapshot>>,
    problems: Vec<SnapshotError>,
}

impl SnapshotBuilder {
    /// Adds or replaces a resource. A resource equal to the one it replaces
    /// leaves the type untouched (and shared with the previous snapshot).
    pub fn upsert(&mut self, resource_type: ResourceType, name: &str, resource: Arc<VersionedResource>) -> Upserted {
        let current = self.types.entry(resource_type).or_default();
        if current.resources.get(name).is_some_and(|r| r.version == resource.version) {
            return Upserted::Unchanged;
        }
        match Arc::make_mut(current).insert(name.to_owned(), resource) {
            Some(old) => Upserted::Replaced(old),
            None => Upserted::Added,
        }
    }

    /// Removes a resource, if present, and returns it.
    pub fn remove(&mut self, resource_type: ResourceType, name: &str) -> Option<Arc<VersionedResource>> {
        let current = self.types.get_mut(&resource_type)?;
        let old = current.resources.get(name).cloned()?;
        Arc::make_mut(current).remove(name);
        Some(old)
    }

    pub fn contains(&self, resource_type: ResourceType, name: &str) -> bool {
        self.types.get(&resource_type).is_some_and(|t| t.resources.contains_key(name))
    }

    /// Some resource that loads `(resource_type, name)`: a full scan, for
    /// explaining an inconsistency.
    pub fn referrer_of(&self, resource_type: ResourceType, name: &str) -> Option<(ResourceType, String)> {
        self.types.iter().find_map(|(t, resources)| {
            resources
                .resources
                .iter()
                .find(|(_, r)| r.references.iter().any(|(rt, rn)| *rt == resource_type && rn == name))
                .map(|(n, _)| (*t, n.clone()))
        })
    }

    pub fn build(self) -> Snapshot {
        Snapshot { types: self.types, problems: self.problems }
    }

    fn insert_new(&mut self, resource_type: ResourceType, name: &str, resource: VersionedResource) {
        let current = Arc::make_mut(self.types.entry(resource_type).or_default());
        if current.insert(name.to_owned(), Arc::new(resource)).is_some() {
            self.problems.push(SnapshotError::DuplicateName { resource_type, name: name.to_owned() });
        }
    }
}

/// A route scope, referencing the route configuration it selects.
pub fn scope_resource(scope: &ScopedRouteConfiguration) -> VersionedResource {
    let references = if scope.route_configuration_name.is_empty() {
        Vec::new()
    } else {
        vec![(ResourceType::Route, scope.route_configuration_name.clone())]
    };
    VersionedResource::new(&scope.name, scope, references)
}

/// A listener, referencing what its HTTP connection managers load over
/// (scoped) RDS.
pub fn listener_resource(listener: &Listener) -> Result<VersionedResource, SnapshotError> {
    let references = listener_references(listener)
        .map_err(|message| SnapshotError::UndecodableListener { listener: listener.name.clone(), message })?;
    Ok(VersionedResource::new(&listener.name, listener, references))
}

/// What a listener's HTTP connection managers load: a route configuration
/// over RDS. Scoped routes load their scopes by wildcard, so those
/// references are the scopes' own.
fn listener_references(listener: &Listener) -> Result<Vec<(ResourceType, String)>, String> {
    let mut references = Vec::new();
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
                references.push((ResourceType::Route, rds.route_config_name));
            }
        }
    }
    Ok(references)
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

fn pair_digest(name: &str, version: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update((name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update(version.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// The version of a subset whose digest is `digest` (see
/// [`TypeSnapshot::digest_of_names`]): the same function as a whole type's.
pub fn subset_version(digest: u64) -> String {
    hex_digest(digest)
}

fn hex_digest(digest: u64) -> String {
    format!("{digest:016x}")
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

        for t in [ResourceType::Cluster, ResourceType::Listener, ResourceType::ScopedRoute, ResourceType::Route] {
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
    fn type_versions_are_the_version_of_their_pairs() {
        let s = snapshot(&endpoints());
        for t in ResourceType::ALL {
            let resources = &s.get(t).resources;
            assert_eq!(s.version(t), version_of(resources.iter().map(|(n, r)| (n.as_str(), r.version.as_str()))));
            assert_eq!(s.version(t), subset_version(s.get(t).digest_of_names(resources.keys())));
        }
    }

    #[test]
    fn dangling_references_are_found() {
        let mut resources = translate(&plan(), &endpoints(), &XdsSettings::default());
        resources.endpoints.pop();
        assert_eq!(
            Snapshot::new(&resources).consistency_check(),
            Err(SnapshotError::Missing {
                resource_type: ResourceType::Cluster,
                name: "rev|default|hello-00002".into(),
                referenced_type: ResourceType::Endpoint,
                referenced: "rev|default|hello-00002".into(),
            })
        );

        let mut resources = translate(&plan(), &endpoints(), &XdsSettings::default());
        resources.routes.clear();
        assert_eq!(
            Snapshot::new(&resources).consistency_check(),
            Err(SnapshotError::Missing {
                resource_type: ResourceType::ScopedRoute,
                name: "host|candidate-hello.default.example.com".into(),
                referenced_type: ResourceType::Route,
                referenced: "routes|193".into(),
            })
        );

        let mut resources = translate(&plan(), &endpoints(), &XdsSettings::default());
        resources.clusters.push(resources.clusters[0].clone());
        assert!(matches!(
            Snapshot::new(&resources).consistency_check(),
            Err(SnapshotError::DuplicateName { resource_type: ResourceType::Cluster, .. })
        ));
    }
}
