//! Knative's labeler and revision garbage collector for one namespace, the
//! last step of a pass (pure; see `revgate_model::gc` for the rules).
//!
//! - Routing state: every live Revision carries the label
//!   `serving.knative.dev/routingState`, the annotation
//!   `serving.knative.dev/routingStateModified` stamped when the label
//!   changes, and `serving.knative.dev/routes`, exactly as Knative's route
//!   reconciler writes them. They are written with server-side apply under
//!   a field manager of their own ([`LABELER_FIELD_MANAGER`]), so the
//!   write holds only those three fields and never touches the spec that
//!   revgate applied when it created the Revision. Being on the Revision,
//!   they survive any restart of the controller.
//! - Collection: the Revisions `config-gc` collects are deleted; their
//!   Deployment and Service follow through their controller owner
//!   reference (Kubernetes' garbage collector, background propagation).
//!
//! The step also says when a kept revision turns stale, so the namespace
//! is looked at again then rather than at the next resync.

use kube::api::DynamicObject;
use revgate_model::World;
use revgate_model::gc::{RoutingMeta, routes_by_revision, routing_meta};
use revgate_model::plan::GatewayPlan;
use revgate_model::status::reason;
use serde_json::{Value, json};

use crate::desired::{Apply, Delete, Subject};
use crate::kinds::Kind;
use crate::snapshot::Snapshot;

/// The field manager of the routing-state writes (see the module docs).
pub const LABELER_FIELD_MANAGER: &str = "revgate-labeler";

/// What the step writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collection {
    /// Routing-state writes, to apply under [`LABELER_FIELD_MANAGER`].
    pub labels: Vec<Apply>,
    /// Revisions to delete.
    pub deletes: Vec<Delete>,
    /// When a kept revision turns stale (Unix seconds).
    pub next_check: Option<u64>,
}

/// The routing-state writes and deletions for a namespace, given the plan
/// this pass served.
pub fn collect(snapshot: &Snapshot, world: &World, plan: &GatewayPlan, now_unix_secs: u64) -> Collection {
    let routes = routes_by_revision(world, plan);
    let none = Default::default();
    let mut collection = Collection::default();
    let (due, next_check) = world.collectable_revisions(plan, now_unix_secs);
    collection.next_check = next_check;
    for (key, revision) in &world.revisions {
        if !snapshot.is_live_named(Kind::Revision, &key.name) || due.contains(key) {
            continue;
        }
        if let Some(meta) = routing_meta(&revision.metadata, routes.get(key).unwrap_or(&none), now_unix_secs) {
            collection.labels.push(Apply {
                kind: Kind::Revision,
                name: key.name.clone(),
                body: body(&snapshot.namespace, &key.name, &meta),
                subject: Subject::new(Kind::Revision, &key.name, reason::READY),
            });
        }
    }
    for key in due {
        if let Some(configuration) = owner(snapshot.get(Kind::Revision, &key.name)) {
            collection.deletes.push(Delete {
                kind: Kind::Revision,
                name: key.name.clone(),
                subject: Subject::new(Kind::Configuration, configuration, reason::READY),
            });
        }
    }
    collection
}

/// The Configuration that controls a revision.
fn owner(revision: Option<&DynamicObject>) -> Option<String> {
    let (kind, name, _) = crate::snapshot::controller_owner(&revision?.metadata)?;
    (kind == Kind::Configuration).then(|| name.to_string())
}

/// The applied configuration of the labeler's fields.
fn body(namespace: &str, name: &str, meta: &RoutingMeta) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(modified) = &meta.modified {
        annotations.insert(revgate_model::gc::ROUTING_STATE_MODIFIED_ANNOTATION.to_string(), json!(modified));
    }
    if !meta.routes.is_empty() {
        annotations.insert(revgate_model::gc::ROUTES_ANNOTATION.to_string(), json!(meta.routes));
    }
    json!({
        "apiVersion": Kind::Revision.api_version(),
        "kind": Kind::Revision.name(),
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {revgate_model::gc::ROUTING_STATE_LABEL: meta.state.as_str()},
            "annotations": annotations,
        },
    })
}
