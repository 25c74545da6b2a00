//! `serving.knative.dev/v1beta1` DomainMapping: a domain of the user's own
//! (the mapping's name) served with the traffic of a Knative Service or
//! Route in the same namespace.
//!
//! Knative's reconciler does, in order: claim the domain (a cluster-wide
//! `ClusterDomainClaim` named after it, holding the namespace that owns
//! it), provision a certificate, resolve `spec.ref` to an address, then
//! write an Ingress for the domain that rewrites the host to that address.
//! revgate does the same steps at apply time and in status:
//!
//! - Claims are kept in the world ([`World::domain_claims`]), made when a
//!   mapping is applied and removed with it, as Knative does with
//!   `autocreate-cluster-domain-claims: "true"`: the first mapping of a
//!   domain holds it; another one for the same domain in another namespace
//!   is stored but reports `DomainClaimed=False` (`DomainAlreadyClaimed`)
//!   and serves nothing. When the holder is deleted the claim passes to the
//!   oldest remaining mapping of the domain, as its next reconcile would
//!   take it.
//! - A reference resolves while the Service or Route it names exists; the
//!   gateway serves the domain only then (see [`World::mapped_hosts`]).
//!
//! Conditions, as Knative's `domainmapping_lifecycle.go` sets them:
//!
//! | step fails | DomainClaimed | CertificateProvisioned | ReferenceResolved | IngressReady | Ready |
//! |---|---|---|---|---|---|
//! | claim held elsewhere | False `DomainAlreadyClaimed` | Unknown | Unknown | Unknown `IngressNotConfigured` | False `DomainAlreadyClaimed` |
//! | reference missing | True | True `TLSNotEnabled` | False `ResolveFailed` | Unknown `IngressNotConfigured` | False `ResolveFailed` |
//! | Route serves nothing yet, or gateway not programmed | True | True | True | Unknown `IngressNotConfigured` | Unknown |
//! | gateway rejected | True | True | True | False `GatewayRejected` | False |
//! | none | True | True | True | True | True |
//!
//! With `spec.tls`, `CertificateProvisioned` is True `CertificateExternallyProvided`
//! and the URL's scheme is `https`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Problems;
use crate::meta::{Condition, ConditionStatus, ObjectMeta, SERVING_API_VERSION};
use crate::names;
use crate::observed::{IngressState, Observed};
use crate::plan::{MappedHost, ObjectKey};
use crate::resources::Addressable;
use crate::status::{resolve, serves};
use crate::validation;
use crate::world::{ChangeKind, Changes, World, change, stamp};

/// API group and version of DomainMapping.
pub const DOMAIN_MAPPING_API_VERSION: &str = "serving.knative.dev/v1beta1";
/// As `kubectl apply` names it in its output.
pub const DOMAIN_MAPPING_RESOURCE: &str = "domainmapping.serving.knative.dev";
/// Knative's cluster domain; a mapping may not claim a name under it.
const CLUSTER_LOCAL_DOMAIN: &str = "cluster.local";

/// Condition types and reasons of a DomainMapping, Knative's words.
pub mod reason {
    pub const DOMAIN_CLAIMED: &str = "DomainClaimed";
    pub const REFERENCE_RESOLVED: &str = "ReferenceResolved";
    pub const CERTIFICATE_PROVISIONED: &str = "CertificateProvisioned";

    pub const DOMAIN_ALREADY_CLAIMED: &str = "DomainAlreadyClaimed";
    pub const RESOLVE_FAILED: &str = "ResolveFailed";
    pub const TLS_NOT_ENABLED: &str = "TLSNotEnabled";
    pub const CERTIFICATE_EXTERNALLY_PROVIDED: &str = "CertificateExternallyProvided";

    pub const DOMAIN_ALREADY_CLAIMED_MESSAGE: &str = "The domain name is already in use by another DomainMapping";
    pub const TLS_NOT_ENABLED_MESSAGE: &str = "external-domain-tls is not enabled";
    pub const CERTIFICATE_EXTERNALLY_PROVIDED_MESSAGE: &str = "TLS certificate was provided externally";
    pub const INGRESS_NOT_CONFIGURED_MESSAGE: &str = "Ingress has not yet been reconciled.";
}

/// `serving.knative.dev/v1beta1` DomainMapping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainMapping {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: DomainMappingSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DomainMappingStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainMappingSpec {
    /// What the domain serves: a Knative Service or Route of the namespace.
    #[serde(rename = "ref")]
    pub reference: KReference,
    /// A TLS secret of the user's for the domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SecretTls>,
}

/// Knative's `KReference`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KReference {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// Defaulted to the mapping's namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretTls {
    pub secret_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainMappingStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
}

/// Knative's `ClusterDomainClaim`: which namespace may map a domain. Kept
/// under the key `("", domain)`, being cluster-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainClaim {
    pub namespace: String,
}

/// The key a domain's claim is kept under.
pub fn claim_key(domain: &str) -> ObjectKey {
    ObjectKey::new("", domain)
}

/// The Route whose traffic a reference names, if it names a Knative
/// Service or Route (a Service's Route has its name).
fn referenced_route(reference: &KReference, namespace: &str) -> Option<ObjectKey> {
    if reference.api_version != SERVING_API_VERSION {
        return None;
    }
    match reference.kind.as_str() {
        "Service" => Some(ObjectKey::new(namespace, names::service_route(&reference.name))),
        "Route" => Some(ObjectKey::new(namespace, reference.name.clone())),
        _ => None,
    }
}

/// Defaults a mapping as Knative's webhook does: the reference's namespace
/// is the mapping's.
pub fn set_defaults(mapping: &mut DomainMapping) {
    if mapping.spec.reference.namespace.is_empty() {
        mapping.spec.reference.namespace.clone_from(&mapping.metadata.namespace);
    }
}

/// Knative's `DomainMapping.Validate`: the name is a fully qualified domain
/// outside the cluster's own, and the reference names a kind, an API
/// version and a name in the mapping's namespace.
pub fn validate(mapping: &DomainMapping, problems: &mut Problems) {
    let name = &mapping.metadata.name;
    if let Err(e) = check_fully_qualified(name) {
        problems.push(("metadata.name".to_string(), format!("invalid name {name:?}: {e}")));
    } else if name.ends_with(&format!(".{CLUSTER_LOCAL_DOMAIN}")) {
        problems.push((
            "metadata.name".to_string(),
            format!("invalid name {name:?}: must not be a subdomain of cluster local domain {CLUSTER_LOCAL_DOMAIN:?}"),
        ));
    }
    if let Err(e) = validation::check_dns1123(&mapping.metadata.namespace) {
        problems.push(("metadata.namespace".to_string(), e));
    }
    let reference = &mapping.spec.reference;
    for (field, value) in [("name", &reference.name), ("kind", &reference.kind), ("apiVersion", &reference.api_version)]
    {
        if value.is_empty() {
            problems.push((format!("spec.ref.{field}"), "missing field(s)".to_string()));
        }
    }
    if reference.namespace != mapping.metadata.namespace {
        problems.push((
            "spec.ref.namespace".to_string(),
            format!(
                "mismatched namespaces: parent {:?}, reference {:?}; a DomainMapping maps to objects of its own \
                 namespace",
                mapping.metadata.namespace, reference.namespace
            ),
        ));
    }
}

/// Kubernetes' `IsFullyQualifiedDomainName`: at least two labels, a
/// DNS-1123 subdomain.
fn check_fully_qualified(name: &str) -> Result<(), String> {
    validation::check_dns1123_subdomain(name)?;
    if !name.contains('.') {
        return Err("should be a domain with at least two segments separated by dots".to_string());
    }
    Ok(())
}

impl World {
    /// Applies one mapping: defaulted and validated as Knative's webhook
    /// does, stamped, stored, and its domain claimed if nobody holds it.
    pub(crate) fn apply_domain_mapping(
        &mut self,
        input: &DomainMapping,
        now: &str,
        changes: &mut Changes,
    ) -> Result<(), Problems> {
        let mut mapping = input.clone();
        mapping.status = None;
        set_defaults(&mut mapping);
        let mut problems = Vec::new();
        validate(&mapping, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        let key = mapping.metadata.key();
        let existing = self.domain_mappings.get(&key);
        let kind = stamp(&mut mapping.metadata, existing.map(|m| (&m.metadata, m.spec == mapping.spec)), now);
        let unchanged = self.store_domain_mapping(mapping);
        changes.push(change(DOMAIN_MAPPING_RESOURCE, key, if unchanged { ChangeKind::Unchanged } else { kind }));
        Ok(())
    }

    /// Stores a mapping (validated and defaulted by the caller) and takes
    /// the claim on its domain if nobody holds it. Returns whether the
    /// stored mapping was already equal (the apply then reports it unchanged).
    fn store_domain_mapping(&mut self, mapping: DomainMapping) -> bool {
        let key = mapping.metadata.key();
        let claim = claim_key(&key.name);
        self.domain_claims.entry(claim).or_insert_with(|| Arc::new(DomainClaim { namespace: key.namespace.clone() }));
        let unchanged = self.domain_mappings.get(&key).map(Arc::as_ref) == Some(&mapping);
        if !unchanged {
            self.domain_mappings.insert(key, Arc::new(mapping));
        }
        unchanged
    }

    /// Removes a mapping and, if it held its domain's claim, the claim,
    /// which passes to the oldest remaining mapping of the domain.
    pub(crate) fn remove_domain_mapping(&mut self, key: &ObjectKey) -> bool {
        if self.domain_mappings.remove(key).is_none() {
            return false;
        }
        let claim = claim_key(&key.name);
        if self.domain_claims.get(&claim).is_some_and(|c| c.namespace == key.namespace) {
            self.domain_claims.remove(&claim);
            let next = self
                .domain_mappings
                .values()
                .filter(|m| m.metadata.name == key.name)
                .min_by_key(|m| (m.metadata.creation_timestamp.clone(), m.metadata.namespace.clone()));
            if let Some(next) = next {
                let namespace = next.metadata.namespace.clone();
                self.domain_claims.insert(claim, Arc::new(DomainClaim { namespace }));
            }
        }
        true
    }

    /// Whether `mapping` holds the claim on its domain.
    fn holds_claim(&self, mapping: &DomainMapping) -> bool {
        self.domain_claims
            .get(&claim_key(&mapping.metadata.name))
            .is_some_and(|c| c.namespace == mapping.metadata.namespace)
    }

    /// The Route a mapping serves, if its reference resolves: it names a
    /// Knative Service or Route that exists.
    fn resolved_route(&self, mapping: &DomainMapping) -> Result<ObjectKey, String> {
        let reference = &mapping.spec.reference;
        let namespace = &mapping.metadata.namespace;
        let Some(route) = referenced_route(reference, namespace) else {
            return Err(format!(
                "revgate resolves references to {SERVING_API_VERSION} Service and Route only, not {} {}",
                reference.api_version, reference.kind
            ));
        };
        let exists = match reference.kind.as_str() {
            "Service" => self.services.contains_key(&ObjectKey::new(namespace.clone(), reference.name.clone())),
            _ => self.routes.contains_key(&route),
        };
        if exists {
            Ok(route)
        } else {
            let resource = if reference.kind == "Service" { "services" } else { "routes" };
            Err(format!(
                "failed to get object {namespace}/{name}: {resource}.serving.knative.dev {name:?} not found",
                name = reference.name
            ))
        }
    }

    /// The extra hosts each Route serves for the mappings that hold their
    /// domain and resolve to it, sorted by host; what the gateway plan
    /// adds to each Route's entry.
    pub(crate) fn mapped_hosts(&self) -> BTreeMap<ObjectKey, Vec<MappedHost>> {
        let mut hosts: BTreeMap<ObjectKey, Vec<MappedHost>> = BTreeMap::new();
        for mapping in self.domain_mappings.values() {
            if !self.holds_claim(mapping) {
                continue;
            }
            let Ok(route) = self.resolved_route(mapping) else { continue };
            let rewrite_host = names::cluster_local_host(&route);
            hosts.entry(route).or_default().push(MappedHost { host: mapping.metadata.name.clone(), rewrite_host });
        }
        for list in hosts.values_mut() {
            list.sort_by(|a, b| a.host.cmp(&b.host));
        }
        hosts
    }

    /// DomainMappings, with status.
    pub fn domain_mapping_views(&self, observed: &Observed) -> Vec<DomainMapping> {
        self.domain_mappings
            .values()
            .map(|m| DomainMapping { status: Some(self.domain_mapping_status(m, observed)), ..m.as_ref().clone() })
            .collect()
    }

    fn domain_mapping_status(&self, mapping: &DomainMapping, observed: &Observed) -> DomainMappingStatus {
        let tls = mapping.spec.tls.is_some();
        let url = format!("{}://{}", if tls { "https" } else { "http" }, mapping.metadata.name);
        let condition = |type_: &str, status, reason: Option<&str>, message: Option<String>| {
            Condition::new(type_, status, reason, message)
        };
        let ingress_not_configured = || {
            condition(
                crate::status::reason::INGRESS_READY,
                ConditionStatus::Unknown,
                Some(crate::status::reason::INGRESS_NOT_CONFIGURED),
                Some(reason::INGRESS_NOT_CONFIGURED_MESSAGE.to_string()),
            )
        };
        let mut conditions = Vec::new();
        if self.holds_claim(mapping) {
            conditions.push(condition(reason::DOMAIN_CLAIMED, ConditionStatus::True, None, None));
            conditions.push(if tls {
                condition(
                    reason::CERTIFICATE_PROVISIONED,
                    ConditionStatus::True,
                    Some(reason::CERTIFICATE_EXTERNALLY_PROVIDED),
                    Some(reason::CERTIFICATE_EXTERNALLY_PROVIDED_MESSAGE.to_string()),
                )
            } else {
                condition(
                    reason::CERTIFICATE_PROVISIONED,
                    ConditionStatus::True,
                    Some(reason::TLS_NOT_ENABLED),
                    Some(reason::TLS_NOT_ENABLED_MESSAGE.to_string()),
                )
            });
            match self.resolved_route(mapping) {
                Err(message) => {
                    conditions.push(condition(
                        reason::REFERENCE_RESOLVED,
                        ConditionStatus::False,
                        Some(reason::RESOLVE_FAILED),
                        Some(message),
                    ));
                    conditions.push(ingress_not_configured());
                }
                Ok(route) => {
                    conditions.push(condition(reason::REFERENCE_RESOLVED, ConditionStatus::True, None, None));
                    conditions.push(self.mapping_ingress(&route, observed).unwrap_or_else(ingress_not_configured));
                }
            }
        } else {
            conditions.push(condition(
                reason::DOMAIN_CLAIMED,
                ConditionStatus::False,
                Some(reason::DOMAIN_ALREADY_CLAIMED),
                Some(reason::DOMAIN_ALREADY_CLAIMED_MESSAGE.to_string()),
            ));
            conditions.push(condition(reason::CERTIFICATE_PROVISIONED, ConditionStatus::Unknown, None, None));
            conditions.push(condition(reason::REFERENCE_RESOLVED, ConditionStatus::Unknown, None, None));
            conditions.push(ingress_not_configured());
        }
        let ready = crate::status::ready_from(crate::status::reason::READY, &conditions.iter().collect::<Vec<_>>());
        conditions.push(ready);
        conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        DomainMappingStatus {
            observed_generation: mapping.metadata.generation,
            conditions,
            url: Some(url.clone()),
            address: Some(Addressable { url }),
        }
    }

    /// `IngressReady` of a mapping to `route`: `None` while the gateway
    /// serves nothing for the Route (the mapping's host is served with it).
    fn mapping_ingress(&self, route: &ObjectKey, observed: &Observed) -> Option<Condition> {
        use crate::status::reason::{GATEWAY_REJECTED, INGRESS_READY};
        let stored = self.routes.get(route)?;
        let traffic = self.traffic_in_effect(stored)?;
        if !serves(&resolve(self, &route.namespace, traffic, observed), traffic) {
            return None;
        }
        match observed.ingress.get(route)? {
            IngressState::Ready => Some(Condition::new(INGRESS_READY, ConditionStatus::True, None, None)),
            IngressState::Rejected { message } => Some(Condition::new(
                INGRESS_READY,
                ConditionStatus::False,
                Some(GATEWAY_REJECTED),
                Some(message.clone()),
            )),
            IngressState::NotConfigured => None,
        }
    }
}
