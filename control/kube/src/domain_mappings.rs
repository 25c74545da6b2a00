//! DomainMappings in cluster mode: read from the cluster into the world,
//! their VirtualServices written, their status reported.
//!
//! The model does Knative's part (validation, defaults, claims, conditions,
//! the hosts each Route gains; see `revgate_model::domainmapping`) and
//! `revgate-istio` writes the VirtualService net-istio would write for the
//! mapping's Ingress. Here, three hooks of a reconcile pass:
//!
//! | step | what |
//! |---|---|
//! | [`add_to_world`] (from `desired::world`) | each live, valid mapping into the world; the claims of its domains |
//! | [`routing`] (from `desired::routing`) | each mapped domain's `<domain>-ingress` VirtualService, owned by its DomainMapping; those of mappings that no longer serve deleted |
//! | [`status_views`] (from `desired::statuses`) | each mapping's status; an invalid one `Ready=False`, reason `InvalidSpec` |
//!
//! Claims span namespaces while a pass sees one: the controller's reader
//! computes them over every mapping it watches ([`claims`], as if Knative's
//! `autocreate-cluster-domain-claims` were on): the oldest mapping of a
//! domain holds it, and the others report `DomainAlreadyClaimed`. revgate
//! writes no `ClusterDomainClaim` objects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::api::DynamicObject;
use revgate_istio::RenderOptions;
use revgate_model::domainmapping::{self, DomainClaim, DomainMapping, claim_key};
use revgate_model::meta::{Condition, ConditionStatus};
use revgate_model::plan::GatewayPlan;
use revgate_model::status::reason;
use revgate_model::{Observed, World};
use serde_json::{Value, json};

use crate::desired::{INVALID_SPEC, Step, Subject, model_object, owner_reference};
use crate::kinds::Kind;
use crate::snapshot::{Snapshot, controller_owner};

/// Which namespace holds each domain, given every DomainMapping watched:
/// the oldest mapping of a domain (by creation time, then namespace).
pub fn claims<'a>(mappings: impl IntoIterator<Item = &'a DynamicObject>) -> BTreeMap<String, String> {
    let mut oldest: BTreeMap<String, (String, String)> = BTreeMap::new();
    for object in mappings {
        let (Some(domain), Some(namespace)) = (&object.metadata.name, &object.metadata.namespace) else { continue };
        if object.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let created = object.metadata.creation_timestamp.as_ref().map(|t| t.0.to_rfc3339()).unwrap_or_default();
        let candidate = (created, namespace.clone());
        let entry = oldest.entry(domain.clone()).or_insert_with(|| candidate.clone());
        if candidate < *entry {
            *entry = candidate;
        }
    }
    oldest.into_iter().map(|(domain, (_, namespace))| (domain, namespace)).collect()
}

/// A mapping as the cluster holds it, defaulted and validated as Knative's
/// webhook would; the problems found, joined, otherwise.
fn mapping(object: &DynamicObject) -> Result<DomainMapping, String> {
    let mut mapping: DomainMapping =
        model_object(object).map_err(|e| format!("cannot read the domain mapping: {e}"))?;
    domainmapping::set_defaults(&mut mapping);
    let mut problems = Vec::new();
    domainmapping::validate(&mapping, &mut problems);
    if problems.is_empty() {
        Ok(mapping)
    } else {
        Err(problems.into_iter().map(|(path, message)| format!("{path}: {message}")).collect::<Vec<_>>().join("; "))
    }
}

/// Adds the namespace's live, valid mappings to `world`, with the claims
/// of their domains: as the reader computed them, else to the namespace.
pub fn add_to_world(snapshot: &Snapshot, world: &mut World) {
    for object in snapshot.live(Kind::DomainMapping) {
        let Ok(mapping) = mapping(object) else { continue };
        let domain = mapping.metadata.name.clone();
        let holder = snapshot.domain_claims.get(&domain).cloned().unwrap_or_else(|| snapshot.namespace.clone());
        world.domain_claims.entry(claim_key(&domain)).or_insert_with(|| Arc::new(DomainClaim { namespace: holder }));
        world.domain_mappings.insert(mapping.metadata.key(), Arc::new(mapping));
    }
}

/// The VirtualService of every domain mapped in this namespace, owned by
/// its DomainMapping; and the deletion of those whose mapping serves no
/// longer (its reference is gone, or another namespace holds the domain).
pub fn routing(snapshot: &Snapshot, world: &World, plan: &GatewayPlan, options: &RenderOptions, step: &mut Step) {
    let mut wanted = BTreeSet::new();
    for vs in revgate_istio::domain_mapping::virtual_services(world, plan, options) {
        if vs.metadata.namespace != snapshot.namespace {
            continue;
        }
        let Some(domain) = vs.spec.hosts.first().cloned() else { continue };
        let Some(owner) = snapshot.get(Kind::DomainMapping, &domain) else { continue };
        let Ok(mut body) = serde_json::to_value(&vs) else { continue };
        body["metadata"]["ownerReferences"] = json!([owner_reference(Kind::DomainMapping, owner)]);
        wanted.insert(vs.metadata.name.clone());
        let subject = Subject::new(Kind::DomainMapping, &domain, reason::READY);
        step.apply_child(snapshot, body, (Kind::DomainMapping, &domain), subject);
    }
    for object in snapshot.live(Kind::VirtualService) {
        let Some(name) = &object.metadata.name else { continue };
        if let Some((Kind::DomainMapping, domain, _)) = controller_owner(&object.metadata)
            && !wanted.contains(name)
        {
            step.deletes.push(crate::desired::Delete {
                kind: Kind::VirtualService,
                name: name.clone(),
                subject: Subject::new(Kind::DomainMapping, domain, reason::READY),
            });
        }
    }
}

/// The status of every live mapping of the namespace, as the model computes
/// it; a mapping Knative's webhook would have refused says why.
pub fn status_views(snapshot: &Snapshot, world: &World, observed: &Observed) -> Vec<(Kind, String, Value)> {
    let mut views: Vec<(Kind, String, Value)> = world
        .domain_mapping_views(observed)
        .into_iter()
        .filter(|m| m.metadata.namespace == snapshot.namespace)
        .map(|m| (Kind::DomainMapping, m.metadata.name, serde_json::to_value(m.status).unwrap_or(Value::Null)))
        .collect();
    for object in snapshot.live(Kind::DomainMapping) {
        let (Some(name), Err(message)) = (&object.metadata.name, mapping(object)) else { continue };
        let invalid = Condition::new(reason::READY, ConditionStatus::False, Some(INVALID_SPEC), Some(message));
        views.push((Kind::DomainMapping, name.clone(), json!({ "conditions": [invalid] })));
    }
    views
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;
    use kube::core::TypeMeta;

    use super::*;
    use crate::desired;
    use crate::testing::{Fixture, ksvc};

    fn dm(domain: &str, namespace: &str, service: &str, created: &str) -> DynamicObject {
        let mut object = DynamicObject {
            types: Some(TypeMeta {
                api_version: "serving.knative.dev/v1beta1".to_string(),
                kind: "DomainMapping".to_string(),
            }),
            metadata: ObjectMeta {
                name: Some(domain.to_string()),
                namespace: Some(namespace.to_string()),
                uid: Some(format!("dm-{namespace}")),
                generation: Some(1),
                creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    created.parse().expect("a time"),
                )),
                ..Default::default()
            },
            data: json!({}),
        };
        object.data = json!({
            "spec": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": service}}
        });
        object
    }

    fn pass(snapshot: &Snapshot) -> (World, Step, Vec<desired::StatusWrite>) {
        let world = desired::world(snapshot);
        let options = desired::render_options(snapshot, &RenderOptions::default());
        let mut observed = desired::observe(snapshot, &world, &desired::Problems::default());
        let rollouts = Default::default();
        let (step, plan) = desired::routing(snapshot, &world, &observed, &options, &rollouts, &Default::default());
        desired::ingress(&mut observed, &plan, &desired::Problems::default());
        let statuses = desired::statuses(snapshot, &world, &observed, &step.problems, &rollouts, 0);
        (world, step, statuses)
    }

    fn condition(statuses: &[desired::StatusWrite], domain: &str, type_: &str) -> (String, String) {
        let status = statuses
            .iter()
            .find(|s| s.kind == Kind::DomainMapping && s.name == domain)
            .unwrap_or_else(|| panic!("no status for {domain}"));
        let found = status.body["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or_else(|| panic!("no {type_}: {:#}", status.body));
        (found["status"].as_str().unwrap_or_default().into(), found["reason"].as_str().unwrap_or_default().into())
    }

    #[test]
    fn a_mapping_gets_its_virtual_service_owned_by_it_and_knatives_status() {
        let service = ksvc("hello");
        let snapshot = Snapshot::new("default")
            .with(service.object())
            .with(Fixture::new(Kind::Route, "hello").owned_by(&service).traffic(&[("hello-00001", 100, None)]).object())
            .with(Fixture::revision("hello-00001").object())
            .with(Fixture::deployment("hello-00001").object())
            .with(Fixture::endpoint_slice("hello-00001", "a").endpoint("10.0.0.1", Some(true)).object())
            .with(dm("example.org", "default", "hello", "2024-05-01T12:00:00Z"));
        let (world, step, statuses) = pass(&snapshot);
        assert_eq!(world.domain_mappings.len(), 1);
        let vs = step
            .applies
            .iter()
            .find(|a| a.kind == Kind::VirtualService && a.name == "example.org-ingress")
            .expect("the mapping's VirtualService");
        assert_eq!(vs.body["metadata"]["ownerReferences"][0]["kind"], "DomainMapping");
        assert_eq!(vs.body["metadata"]["ownerReferences"][0]["uid"], "dm-default");
        assert_eq!(vs.body["spec"]["http"][0]["rewrite"]["authority"], "hello.default.svc.cluster.local");
        assert_eq!(condition(&statuses, "example.org", "DomainClaimed").0, "True");
        assert_eq!(condition(&statuses, "example.org", "ReferenceResolved").0, "True");
    }

    #[test]
    fn the_oldest_mapping_of_a_domain_holds_it_across_namespaces() {
        let first = dm("example.org", "a", "hello", "2024-05-01T12:00:00Z");
        let second = dm("example.org", "b", "hello", "2024-05-01T13:00:00Z");
        let claims = claims([&second, &first]);
        assert_eq!(claims.get("example.org").map(String::as_str), Some("a"));

        let mut snapshot = Snapshot::new("b").with(ksvc("hello").uid("svc-b").object()).with(second);
        snapshot.domain_claims = claims;
        let (_, step, statuses) = pass(&snapshot);
        assert_eq!(
            condition(&statuses, "example.org", "DomainClaimed"),
            ("False".into(), "DomainAlreadyClaimed".into())
        );
        assert!(
            !step.applies.iter().any(|a| a.name == "example.org-ingress"),
            "no VirtualService for a domain another namespace holds"
        );
    }

    #[test]
    fn a_missing_reference_and_an_invalid_mapping_say_why() {
        let mut invalid = dm("localhost", "default", "hello", "2024-05-01T12:00:00Z");
        invalid.metadata.uid = Some("dm-invalid".into());
        let snapshot = Snapshot::new("default")
            .with(dm("example.org", "default", "missing", "2024-05-01T12:00:00Z"))
            .with(invalid);
        let (_, step, statuses) = pass(&snapshot);
        assert_eq!(condition(&statuses, "example.org", "ReferenceResolved"), ("False".into(), "ResolveFailed".into()));
        assert_eq!(condition(&statuses, "localhost", "Ready"), ("False".into(), INVALID_SPEC.into()));
        assert!(step.applies.iter().all(|a| a.kind != Kind::VirtualService));
    }
}
