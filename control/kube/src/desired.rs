//! What a namespace should look like: pure functions from a [`Snapshot`] to
//! the objects to apply, the objects to delete and the statuses to write.
//!
//! The model ([`revgate_model`]) does what Knative's webhooks and
//! reconcilers do: defaulting, validation, a Service's Configuration and
//! Route, revision names, readiness-driven routing and status. In cluster
//! mode one thing differs: *generations belong to the API server*. A
//! Configuration's revision is named after the generation the API server
//! gave it (`hello-00003`), and [`World::apply`] stamps generations of its
//! own. So the model is used object by object, never to decide a number:
//!
//! 1. [`service_children`]: each Service is applied alone to a world that
//!    holds only the settings; the Configuration and Route the model makes
//!    for it are the children to write (and its errors, the Service's).
//! 2. [`revisions`]: each Configuration, defaulted and validated the same
//!    way, needs the Revision of its *current* generation; it is created if
//!    it does not exist.
//! 3. [`world`]: the cluster's objects (after the writes of steps 1 and 2)
//!    are assembled into a [`World`] as they are, generations included.
//!    From it: each revision's Deployment and Service
//!    ([`revision_children`]), the routes' VirtualServices ([`routing`]),
//!    and every object's status ([`statuses`]), all through the model and
//!    `revgate-istio`.
//!
//! The reconciler runs the steps in this order and feeds each one the
//! objects the API server returned from the previous one's writes.
//!
//! Writes are skipped when the cluster already holds what would be written
//! ([`is_subset`]): server-side apply would be a no-op, but each request
//! still costs a round trip, and a quiet reconcile keeps the audit log quiet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::api::DynamicObject;
use revgate_istio::{OwnerKind, RenderOptions};
use revgate_model::gc;
use revgate_model::meta::{
    CONFIGURATION_GENERATION_LABEL, CONFIGURATION_LABEL, LAST_APPLIED_ANNOTATION, SERVICE_LABEL, rfc3339,
};
use revgate_model::plan::{GatewayPlan, ObjectKey};
use revgate_model::status::reason;
use revgate_model::{
    ApplyError, Configuration, Document, IngressState, Observed, Resource, Revision, RevisionReadiness, Route, Service,
    SourceRef, World, names, validation,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::kinds::{Kind, ROUTE_LABEL};
use crate::readiness;
use crate::snapshot::{Snapshot, controller_owner};

mod status;
pub use status::{StatusWrite, statuses};

/// Reason of a status condition when an object that revgate would write
/// exists and belongs to someone else (Knative's word).
pub const NOT_OWNED: &str = "NotOwned";
/// Reason when a manifest fails the checks Knative's webhooks would make.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// One object to write with server-side apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Apply {
    pub kind: Kind,
    pub name: String,
    /// The whole applied configuration: `apiVersion`, `kind`, `metadata`, `spec`.
    pub body: Value,
    /// The Knative object whose status reports a failure to write this one.
    pub subject: Subject,
}

/// One object to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub kind: Kind,
    pub name: String,
    pub subject: Subject,
}

/// A Knative object whose status carries the outcome of a write.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subject {
    pub kind: Kind,
    pub name: String,
    /// The condition a failure turns False: `ConfigurationsReady` or
    /// `RoutesReady` on a Service, `Ready` elsewhere.
    pub condition: &'static str,
}

impl Subject {
    pub fn new(kind: Kind, name: impl Into<String>, condition: &'static str) -> Self {
        Self { kind, name: name.into(), condition }
    }
}

/// Something wrong with one Knative object, shown in its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub condition: &'static str,
    pub reason: String,
    pub message: String,
}

/// Problems by object; the first problem of an object is the one shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(BTreeMap<(Kind, String), Problem>);

impl Problems {
    /// Records a problem unless the object already has one.
    pub fn add(&mut self, subject: &Subject, reason: impl Into<String>, message: impl Into<String>) {
        self.0.entry((subject.kind, subject.name.clone())).or_insert_with(|| Problem {
            condition: subject.condition,
            reason: reason.into(),
            message: message.into(),
        });
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<&Problem> {
        self.0.get(&(kind, name.to_string()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn extend(&mut self, other: Problems) {
        for (key, problem) in other.0 {
            self.0.entry(key).or_insert(problem);
        }
    }

    fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&str, &Problem)> {
        self.0.iter().filter(move |((k, _), _)| *k == kind).map(|((_, name), p)| (name.as_str(), p))
    }
}

/// The outcome of one step: writes, and problems found without writing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    pub applies: Vec<Apply>,
    pub deletes: Vec<Delete>,
    pub problems: Problems,
}

impl Step {
    /// Queues `body` unless the cluster already holds it, or holds an
    /// object of that name that the subject's owner does not control.
    pub(crate) fn apply_child(&mut self, snapshot: &Snapshot, body: Value, owner: (Kind, &str), subject: Subject) {
        let Some(kind) = body_kind(&body) else { return };
        let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string) else { return };
        if let Some(existing) = snapshot.get(kind, &name) {
            if !snapshot.controlled_by(existing, owner.0, owner.1) {
                self.problems.add(
                    &subject,
                    NOT_OWNED,
                    format!(
                        "there is an existing {kind} {name:?} that {} {:?} does not own; delete it, or rename the {}",
                        owner.0.name(),
                        owner.1,
                        owner.0.name()
                    ),
                );
                return;
            }
            if serde_json::to_value(existing).is_ok_and(|have| is_subset(&body, &have)) {
                return;
            }
        }
        self.applies.push(Apply { kind, name, body, subject });
    }
}

fn body_kind(body: &Value) -> Option<Kind> {
    Kind::of(body.get("apiVersion")?.as_str()?, body.get("kind")?.as_str()?)
}

// ----- 1. a Service's Configuration and Route --------------------------------------

/// The Configuration and Route of every live Service, as the model makes them.
pub fn service_children(snapshot: &Snapshot, now_unix_secs: u64) -> Step {
    let base = settings_world(snapshot);
    let mut step = Step::default();
    for object in snapshot.live(Kind::KnativeService) {
        let Some(name) = object.metadata.name.clone() else { continue };
        let subject = Subject::new(Kind::KnativeService, &name, reason::READY);
        let applied =
            model_object::<Service>(object).map_err(|e| format!("cannot read the service: {e}")).and_then(|service| {
                base.apply(&[document(Resource::Service(service))], now_unix_secs).map_err(|e| field_errors(&e))
            });
        let world = match applied {
            Ok((world, _)) => world,
            Err(message) => {
                step.problems.add(&subject, INVALID_SPEC, message);
                continue;
            }
        };
        let owner = owner_reference(Kind::KnativeService, object);
        let key = ObjectKey::new(snapshot.namespace.clone(), name.clone());
        let config_key = ObjectKey::new(key.namespace.clone(), names::service_configuration(&key.name));
        if let Some(configuration) = world.configurations.get(&config_key) {
            let body = knative_body(
                Kind::Configuration,
                &configuration.metadata,
                &owner,
                json!({
                    "template": configuration.spec.template,
                }),
            );
            let subject = Subject::new(Kind::KnativeService, &name, reason::CONFIGURATIONS_READY);
            step.apply_child(snapshot, body, (Kind::KnativeService, &name), subject);
        }
        let route_key = ObjectKey::new(key.namespace.clone(), names::service_route(&key.name));
        if let Some(route) = world.routes.get(&route_key) {
            let body = knative_body(Kind::Route, &route.metadata, &owner, json!({ "traffic": route.spec.traffic }));
            let subject = Subject::new(Kind::KnativeService, &name, reason::ROUTES_READY);
            step.apply_child(snapshot, body, (Kind::KnativeService, &name), subject);
        }
    }
    step
}

// ----- 2. a Configuration's revision ------------------------------------------------

/// The name of the revision a Configuration's generation gets: the
/// template's name, else `<configuration>-<generation, 5 digits>`.
pub fn revision_name(configuration: &Configuration, generation: i64) -> String {
    configuration
        .spec
        .template
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| names::revision_name(&configuration.metadata.name, generation))
}

/// The Revision every live Configuration needs for its current generation,
/// where it does not exist yet (Knative's `MakeRevision`).
pub fn revisions(snapshot: &Snapshot, now_unix_secs: u64) -> Step {
    let mut step = Step::default();
    for object in snapshot.live(Kind::Configuration) {
        let Some(name) = object.metadata.name.clone() else { continue };
        let subject = Subject::new(Kind::Configuration, &name, reason::READY);
        let configuration = match defaulted_configuration(snapshot, object, now_unix_secs) {
            Ok(c) => c,
            Err(message) => {
                step.problems.add(&subject, INVALID_SPEC, message);
                continue;
            }
        };
        let generation = object.metadata.generation.unwrap_or(1);
        let revision = revision_name(&configuration, generation);
        let template = &configuration.spec.template;
        if let Some(existing) = snapshot.get(Kind::Revision, &revision) {
            if !snapshot.controlled_by(existing, Kind::Configuration, &name) {
                step.problems.add(
                    &subject,
                    NOT_OWNED,
                    format!(
                        "revision {revision:?} exists and was not created by configuration {name:?}; \
                         give the template another name"
                    ),
                );
            } else if !existing.data.get("spec").is_some_and(|have| is_subset(&to_value(&template.spec), have)) {
                // Knative's webhook refuses this at admission; without one,
                // the status says it. (Revisions are immutable.)
                step.problems.add(
                    &subject,
                    INVALID_SPEC,
                    format!(
                        "spec.template.metadata.name: the template changed but its name {revision:?} did not; \
                         revisions are immutable, so give the changed template a new name (or remove the name)"
                    ),
                );
            }
            continue;
        }
        let mut labels = template.metadata.labels.clone();
        labels.insert(CONFIGURATION_LABEL.to_string(), name.clone());
        labels.insert(CONFIGURATION_GENERATION_LABEL.to_string(), generation.to_string());
        if let Some(service) = configuration.metadata.labels.get(SERVICE_LABEL) {
            labels.insert(SERVICE_LABEL.to_string(), service.clone());
        }
        let mut annotations = template.metadata.annotations.clone();
        annotations.remove(LAST_APPLIED_ANNOTATION);
        // Created never routed, as Knative's `MakeRevision` marks it.
        labels.insert(gc::ROUTING_STATE_LABEL.to_string(), gc::RoutingState::Pending.as_str().to_string());
        annotations.insert(gc::ROUTING_STATE_MODIFIED_ANNOTATION.to_string(), rfc3339(now_unix_secs));
        let body = json!({
            "apiVersion": Kind::Revision.api_version(),
            "kind": Kind::Revision.name(),
            "metadata": {
                "name": revision,
                "namespace": snapshot.namespace,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [owner_reference(Kind::Configuration, object)],
            },
            "spec": template.spec,
        });
        step.applies.push(Apply { kind: Kind::Revision, name: revision, body, subject });
    }
    step
}

/// A Configuration as the model defaults and validates it.
fn defaulted_configuration(snapshot: &Snapshot, object: &DynamicObject, now: u64) -> Result<Configuration, String> {
    let configuration =
        model_object::<Configuration>(object).map_err(|e| format!("cannot read the configuration: {e}"))?;
    let key = configuration.metadata.key();
    let (world, _) = settings_world(snapshot)
        .apply(&[document(Resource::Configuration(configuration))], now)
        .map_err(|e| field_errors(&e))?;
    world
        .configurations
        .get(&key)
        .map(|c| c.as_ref().clone())
        .ok_or_else(|| "the model dropped the configuration".to_string())
}

// ----- 3. the namespace as a world --------------------------------------------------

/// The live Knative objects of a snapshot as a [`World`], with the API
/// server's generations, each Configuration's latest created revision, and
/// the Revisions' status (their past readiness is an input, see
/// [`crate::readiness`]).
pub fn world(snapshot: &Snapshot) -> World {
    let mut world = settings_world(snapshot);
    let settings = world.settings();
    for object in snapshot.live(Kind::KnativeService) {
        if let Ok(mut service) = model_object::<Service>(object) {
            validation::default_template(&mut service.spec.template, &settings);
            validation::default_traffic(&mut service.spec.traffic, true);
            world.services.insert(service.metadata.key(), Arc::new(service));
        }
    }
    for object in snapshot.live(Kind::Configuration) {
        let Ok(mut configuration) = model_object::<Configuration>(object) else { continue };
        validation::default_template(&mut configuration.spec.template, &settings);
        let name = configuration.metadata.name.clone();
        let current = revision_name(&configuration, configuration.metadata.generation());
        let recorded = configuration.status.as_ref().and_then(|s| s.latest_created_revision_name.clone());
        let owned = |revision: &str| {
            snapshot
                .get(Kind::Revision, revision)
                .is_some_and(|r| snapshot.controlled_by(r, Kind::Configuration, &name))
        };
        let latest = if owned(&current) { Some(current) } else { recorded.filter(|r| owned(r)) };
        let status = configuration.status.get_or_insert_with(Default::default);
        status.latest_created_revision_name = latest;
        world.configurations.insert(configuration.metadata.key(), Arc::new(configuration));
    }
    for object in snapshot.live(Kind::Route) {
        if let Ok(mut route) = model_object::<Route>(object) {
            validation::default_traffic(&mut route.spec.traffic, false);
            world.routes.insert(route.metadata.key(), Arc::new(route));
        }
    }
    for object in snapshot.live(Kind::Revision) {
        if let Ok(revision) = model_object::<Revision>(object) {
            world.revisions.insert(revision.metadata.key(), Arc::new(revision));
        }
    }
    crate::domain_mappings::add_to_world(snapshot, &mut world);
    world
}

/// The render options for a snapshot: `base` with the UIDs of its Routes
/// and Revisions, so the generated objects get owner references.
pub fn render_options(snapshot: &Snapshot, base: &RenderOptions) -> RenderOptions {
    let mut options = base.clone();
    for (kind, owner) in [(Kind::Route, OwnerKind::Route), (Kind::Revision, OwnerKind::Revision)] {
        for object in snapshot.live(kind) {
            if let (Some(name), Some(uid)) = (&object.metadata.name, &object.metadata.uid) {
                options.owner_uids.insert(owner, ObjectKey::new(snapshot.namespace.clone(), name.clone()), uid.clone());
            }
        }
    }
    options
}

/// Each revision's Service and Deployment.
///
/// `replicas` decides the Deployment's `spec.replicas`: the autoscaler's
/// latest wish, else what the Deployment has now, else the revision's
/// initial scale (a new Deployment). Server-side apply must always carry
/// the field: leaving it out would give up revgate's ownership of it, and
/// Kubernetes would reset it to 1. Carrying the current value never moves
/// it; only the scale subresource does ([`crate::scale`]).
pub fn revision_children(
    snapshot: &Snapshot,
    world: &World,
    options: &RenderOptions,
    replicas: &BTreeMap<ObjectKey, u32>,
) -> Step {
    let pods = readiness::pods(snapshot);
    let mut step = Step::default();
    for (key, revision) in &world.revisions {
        let Some(scaling) = world.revision_scaling(key) else { continue };
        let owner = (Kind::Revision, key.name.as_str());
        let subject = || Subject::new(Kind::Revision, &key.name, reason::READY);
        if let Ok(service) = serde_json::to_value(revgate_istio::revision_service(revision, options)) {
            step.apply_child(snapshot, service, owner, subject());
        }
        if let Ok(mut deployment) = serde_json::to_value(revgate_istio::deployment(revision, &scaling, options)) {
            let current = pods.get(&key.name).and_then(|p| p.replicas);
            if let Some(n) = replicas.get(key).copied().or(current)
                && let Some(spec) = deployment.get_mut("spec").and_then(Value::as_object_mut)
            {
                spec.insert("replicas".to_string(), json!(n));
            }
            step.apply_child(snapshot, deployment, owner, subject());
        }
    }
    step
}

/// What the cluster says about each revision, with the problems of this
/// pass: a revision whose Deployment or Service could not be written is
/// not ready, for the reason the write failed.
pub fn observe(snapshot: &Snapshot, world: &World, problems: &Problems) -> Observed {
    let pods = readiness::pods(snapshot);
    let mut observed = Observed::default();
    for (key, revision) in &world.revisions {
        let verdict = match problems.get(Kind::Revision, &key.name) {
            Some(p) => RevisionReadiness::NotReady { reason: p.reason.clone(), message: p.message.clone() },
            None => readiness::readiness(revision, pods.get(&key.name)),
        };
        observed.revisions.insert(key.clone(), verdict);
    }
    observed
}

/// The VirtualServices of every route that can serve, and the ones to delete.
///
/// A route that cannot serve right now (a target revision is missing) keeps
/// the VirtualServices it has: the last working routing stays, as Knative
/// leaves the last Ingress in place, rather than taking the route down.
///
/// Routes in rollout serve the rollout's split, and their VirtualServices
/// carry its state for the next pass (see [`crate::rollouts`]). The
/// `-mesh` destinations of the revisions in `through_gateway` point at the
/// local gateway (see [`crate::mesh`]).
pub fn routing(
    snapshot: &Snapshot,
    world: &World,
    observed: &Observed,
    options: &RenderOptions,
    rollouts: &revgate_model::rollout::Rollouts,
    through_gateway: &BTreeSet<ObjectKey>,
) -> (Step, GatewayPlan) {
    let plan = world.plan_with_rollouts(observed, rollouts, &mut revgate_model::PlanMemo::default());
    let mut step = Step::default();
    let mut wanted = BTreeSet::new();
    for mut vs in revgate_istio::virtual_services(world, &plan, options) {
        // In-mesh calls to revisions at zero go through the local gateway (`crate::mesh`).
        revgate_istio::mesh::route_through_local_gateway(&mut vs, through_gateway, options);
        let Some(route) = vs.metadata.labels.get(ROUTE_LABEL).cloned() else { continue };
        if let Some(state) =
            crate::rollouts::annotation(rollouts, &ObjectKey::new(snapshot.namespace.clone(), route.clone()))
        {
            vs.metadata.annotations.insert(crate::rollouts::ROLLOUT_STATE_ANNOTATION.to_string(), state);
        }
        let Ok(body) = serde_json::to_value(&vs) else { continue };
        wanted.insert(vs.metadata.name.clone());
        step.apply_child(snapshot, body, (Kind::Route, &route), Subject::new(Kind::Route, &route, reason::READY));
    }
    crate::domain_mappings::routing(snapshot, world, &plan, options, &mut step);
    let serving: BTreeSet<&str> = plan.routes.iter().map(|r| r.key.name.as_str()).collect();
    for object in snapshot.live(Kind::VirtualService) {
        let Some(name) = &object.metadata.name else { continue };
        if let Some((Kind::Route, route, _)) = controller_owner(&object.metadata)
            && serving.contains(route)
            && !wanted.contains(name)
        {
            step.deletes.push(Delete {
                kind: Kind::VirtualService,
                name: name.clone(),
                subject: Subject::new(Kind::Route, route, reason::READY),
            });
        }
    }
    (step, plan)
}

/// The gateway's verdict on each served route: programmed once its
/// VirtualServices are written, rejected with the API server's answer if a
/// write failed (an Istio validating webhook refusing one, say).
pub fn ingress(observed: &mut Observed, plan: &GatewayPlan, problems: &Problems) {
    for route in &plan.routes {
        let state = match problems.get(Kind::Route, &route.key.name) {
            Some(p) => IngressState::Rejected { message: p.message.clone() },
            None => IngressState::Ready,
        };
        observed.ingress.insert(route.key.clone(), state);
    }
}

// ----- helpers -------------------------------------------------------------------------

/// A world holding only the `knative-serving` ConfigMaps: the settings
/// every object is defaulted and validated with.
fn settings_world(snapshot: &Snapshot) -> World {
    World {
        config_maps: snapshot.config_maps.iter().map(|m| (m.metadata.key(), Arc::new(m.clone()))).collect(),
        ..World::default()
    }
}

/// A cluster object as a model type. `key: null` entries are dropped
/// first: Kubernetes treats them as absent, and the model would otherwise
/// keep them in its open pod-spec maps and write them back.
pub(crate) fn model_object<T: DeserializeOwned>(object: &DynamicObject) -> Result<T, serde_json::Error> {
    let mut value = serde_json::to_value(object)?;
    strip_nulls(&mut value);
    serde_json::from_value(value)
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn document(resource: Resource) -> Document {
    let key = resource.key();
    let source = SourceRef::new(format!("{}/{}/{}", resource.kind().to_ascii_lowercase(), key.namespace, key.name), 0);
    Document { source, resource }
}

/// The model's field errors as one line per field, without the source (the
/// object is the one whose status shows them).
fn field_errors(error: &ApplyError) -> String {
    error
        .errors
        .iter()
        .map(|e| if e.path.is_empty() { e.message.clone() } else { format!("{}: {}", e.path, e.message) })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The controller reference to a cluster object.
pub(crate) fn owner_reference(kind: Kind, owner: &DynamicObject) -> Value {
    json!({
        "apiVersion": kind.api_version(),
        "kind": kind.name(),
        "name": owner.metadata.name,
        "uid": owner.metadata.uid,
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A Knative object revgate writes: the model's metadata, with the owner
/// reference (which needs the API server's UID, unknown to the model).
fn knative_body(kind: Kind, meta: &revgate_model::meta::ObjectMeta, owner: &Value, spec: Value) -> Value {
    let mut annotations = meta.annotations.clone();
    annotations.remove(LAST_APPLIED_ANNOTATION);
    json!({
        "apiVersion": kind.api_version(),
        "kind": kind.name(),
        "metadata": {
            "name": meta.name,
            "namespace": meta.namespace,
            "labels": meta.labels,
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": spec,
    })
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Whether the cluster's object `have` already holds everything in `want`:
/// every field of `want` is in `have` with an equal value (extra fields in
/// `have`, the API server's defaults and status, do not matter), arrays
/// match element by element, and empty objects, arrays or nulls in `want`
/// match an absent field (the API server drops some of them).
pub fn is_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, v)| match h.get(k) {
            Some(hv) => is_subset(v, hv),
            None => is_empty(v),
        }),
        (Value::Array(w), Value::Array(h)) => w.len() == h.len() && w.iter().zip(h).all(|(a, b)| is_subset(a, b)),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => want == have,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_ignores_server_fields_but_not_changes() {
        let want = json!({"spec": {"replicas": 1, "ports": [{"port": 80}], "empty": {}}});
        let have = json!({"spec": {"replicas": 1.0, "ports": [{"port": 80, "protocol": "TCP"}]}, "status": {}});
        assert!(is_subset(&want, &have));
        assert!(!is_subset(&json!({"spec": {"replicas": 2}}), &have));
        assert!(!is_subset(&json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}}), &have));
    }
}
