//! What the controller knows of one namespace: every object of the watched
//! kinds, as the reflector stores hold them, plus the `knative-serving`
//! ConfigMaps that configure every namespace.
//!
//! A [`Snapshot`] is a plain value. The reconciler takes one at the start
//! of a pass, updates it with the objects the API server returns from its
//! own writes (so a Revision created early in the pass has a UID its
//! Deployment can point at), and never looks at the stores again; tests
//! build one from fixtures.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use kube::core::ObjectMeta;
use revgate_model::ConfigMap;

use crate::kinds::Kind;

/// Objects of one namespace, by kind and name.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub namespace: String,
    objects: BTreeMap<Kind, BTreeMap<String, DynamicObject>>,
    /// The ConfigMaps of `knative-serving` (`config-domain`, `config-autoscaler`…).
    pub config_maps: Vec<ConfigMap>,
    /// Which namespace holds each mapped domain, over every namespace the
    /// controller sees (see [`crate::domain_mappings::claims`]); a domain
    /// missing here goes to this namespace's first mapping of it.
    pub domain_claims: BTreeMap<String, String>,
}

/// Reads snapshots. The controller's implementation reads its reflector
/// stores; tests hand the reconciler a fixed snapshot.
pub trait ClusterReader: Send + Sync + std::fmt::Debug + 'static {
    /// Everything the controller knows of a namespace, now.
    fn snapshot(&self, namespace: &str) -> Snapshot;
}

impl ClusterReader for Snapshot {
    fn snapshot(&self, namespace: &str) -> Snapshot {
        if namespace == self.namespace { self.clone() } else { Snapshot::new(namespace) }
    }
}

impl Snapshot {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), ..Self::default() }
    }

    /// Adds (or replaces) an object. Objects of kinds the controller does
    /// not handle, or without a name, are ignored.
    pub fn insert(&mut self, object: DynamicObject) {
        let (Some(kind), Some(name)) = (Kind::of_object(&object), object.metadata.name.clone()) else { return };
        self.objects.entry(kind).or_default().insert(name, object);
    }

    /// Adds an object known to be of `kind`. Objects listed by a watch may
    /// lack their type metadata (list items carry none), so the kind of the
    /// store they come from is stamped on them.
    pub fn insert_as(&mut self, kind: Kind, mut object: DynamicObject) {
        object.types = Some(kind.type_meta());
        self.insert(object);
    }

    /// Builder form of [`Snapshot::insert`].
    pub fn with(mut self, object: DynamicObject) -> Self {
        self.insert(object);
        self
    }

    /// Builder form for the `knative-serving` ConfigMaps.
    pub fn with_config_map(mut self, map: ConfigMap) -> Self {
        self.config_maps.push(map);
        self
    }

    pub fn remove(&mut self, kind: Kind, name: &str) -> Option<DynamicObject> {
        self.objects.get_mut(&kind).and_then(|objects| objects.remove(name))
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<&DynamicObject> {
        self.objects.get(&kind).and_then(|objects| objects.get(name))
    }

    /// Every object of a kind, by name.
    pub fn all(&self, kind: Kind) -> impl Iterator<Item = &DynamicObject> {
        self.objects.get(&kind).into_iter().flat_map(BTreeMap::values)
    }

    /// The objects of a kind that the controller should act on: not being
    /// deleted, and not the child of an owner that is gone (the garbage
    /// collector is about to delete those; recreating their children would
    /// fight it).
    pub fn live(&self, kind: Kind) -> impl Iterator<Item = &DynamicObject> {
        self.all(kind).filter(move |o| self.is_live(o, 0))
    }

    /// Whether the object exists and is live (see [`Snapshot::live`]).
    pub fn is_live_named(&self, kind: Kind, name: &str) -> bool {
        self.get(kind, name).is_some_and(|o| self.is_live(o, 0))
    }

    /// The UID of a live object.
    pub fn uid(&self, kind: Kind, name: &str) -> Option<&str> {
        self.get(kind, name).filter(|o| self.is_live(o, 0)).and_then(|o| o.metadata.uid.as_deref())
    }

    fn is_live(&self, object: &DynamicObject, depth: usize) -> bool {
        if object.metadata.deletion_timestamp.is_some() {
            return false;
        }
        // Owner chains are at most Service → Configuration → Revision → Deployment.
        if depth > 8 {
            return true;
        }
        match controller_owner(&object.metadata) {
            Some((kind, name, uid)) => self
                .get(kind, name)
                .is_some_and(|owner| owner.metadata.uid.as_deref() == Some(uid) && self.is_live(owner, depth + 1)),
            None => true,
        }
    }

    /// Whether `child` is controlled by the live object `owner` of kind `kind`.
    pub fn controlled_by(&self, child: &DynamicObject, kind: Kind, owner: &str) -> bool {
        let Some(uid) = self.uid(kind, owner) else { return false };
        controller_owner(&child.metadata) == Some((kind, owner, uid))
    }
}

/// The controlling owner of an object, if it is a kind the controller handles.
pub fn controller_owner(meta: &ObjectMeta) -> Option<(Kind, &str, &str)> {
    let owner = meta.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))?;
    let kind = Kind::of(&owner.api_version, &owner.kind)?;
    Some((kind, owner.name.as_str(), owner.uid.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, ksvc};

    #[test]
    fn children_of_a_deleted_owner_are_not_live() {
        let service = ksvc("hello").uid("svc-1");
        let configuration = Fixture::configuration("hello").uid("cfg-1").owned_by(&service);
        let revision = Fixture::revision("hello-00001").uid("rev-1").owned_by(&configuration);
        let snapshot =
            Snapshot::new("default").with(service.object()).with(configuration.object()).with(revision.object());
        assert!(snapshot.is_live_named(Kind::Revision, "hello-00001"));

        let mut gone = snapshot.clone();
        gone.remove(Kind::KnativeService, "hello");
        assert!(!gone.is_live_named(Kind::Configuration, "hello"));
        assert!(!gone.is_live_named(Kind::Revision, "hello-00001"), "grandchildren go too");

        let recreated = gone.with(ksvc("hello").uid("svc-2").object());
        assert!(
            !recreated.is_live_named(Kind::Configuration, "hello"),
            "a new owner with the same name is not the owner"
        );

        let deleting = snapshot.with(ksvc("hello").uid("svc-1").deleting().object());
        assert!(!deleting.is_live_named(Kind::KnativeService, "hello"));
        assert!(!deleting.is_live_named(Kind::Revision, "hello-00001"));
    }
}
