//! Kubernetes object metadata as revgate writes it, and the owner references
//! that let Kubernetes delete a revision's objects with the revision.

use std::collections::BTreeMap;

use revgate_model::plan::ObjectKey;
use serde::Serialize;

/// `metadata` of a generated object: only what revgate sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
}

/// A controller reference, as Knative's `kmeta.NewControllerRef` makes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub controller: bool,
    pub block_owner_deletion: bool,
}

/// The Knative objects that own generated objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OwnerKind {
    /// Owns its VirtualServices. (net-istio's owner is the route's
    /// networking Ingress; revgate writes no Ingress, so the Route itself
    /// owns them.)
    Route,
    /// Owns its Deployment and Service.
    Revision,
}

impl OwnerKind {
    pub fn kind(self) -> &'static str {
        match self {
            OwnerKind::Route => "Route",
            OwnerKind::Revision => "Revision",
        }
    }
}

/// The UIDs the API server gave the owners, when the caller knows them.
///
/// An owner reference needs the owner's UID, and a wrong one is worse than
/// none: Kubernetes' garbage collector deletes an object whose owner UID
/// does not exist. So a generated object gets an owner reference only when
/// its owner's UID is known (a controller reads it from the cluster; an
/// offline `render` knows none, and the objects are then unowned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerUids {
    uids: BTreeMap<(OwnerKind, ObjectKey), String>,
}

impl OwnerUids {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the UID of a Route or Revision.
    pub fn insert(&mut self, kind: OwnerKind, key: ObjectKey, uid: impl Into<String>) {
        self.uids.insert((kind, key), uid.into());
    }

    /// Builder form of [`OwnerUids::insert`].
    pub fn with(mut self, kind: OwnerKind, key: ObjectKey, uid: impl Into<String>) -> Self {
        self.insert(kind, key, uid);
        self
    }

    pub fn get(&self, kind: OwnerKind, key: &ObjectKey) -> Option<&str> {
        self.uids.get(&(kind, key.clone())).map(String::as_str)
    }

    /// The controller reference to an owner, if its UID is known.
    pub fn controller_ref(&self, kind: OwnerKind, key: &ObjectKey) -> Option<OwnerReference> {
        self.get(kind, key).map(|uid| OwnerReference {
            api_version: revgate_model::meta::SERVING_API_VERSION.to_string(),
            kind: kind.kind().to_string(),
            name: key.name.clone(),
            uid: uid.to_string(),
            controller: true,
            block_owner_deletion: true,
        })
    }
}
