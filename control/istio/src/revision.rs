//! What the Deployment and the Service of a revision share: its port, its
//! protocol, its labels.

use std::collections::BTreeMap;

use revgate_model::meta::{CONFIGURATION_LABEL, SERVICE_LABEL};
use revgate_model::plan::UpstreamProtocol;
use revgate_model::resources::{Revision, RevisionSpec};

use crate::meta::{OwnerKind, OwnerUids};

/// Label naming the revision on its Deployment, pods and Service.
pub const REVISION_LABEL: &str = "serving.knative.dev/revision";
/// Label carrying the revision's UID, when known.
pub const REVISION_UID_LABEL: &str = "serving.knative.dev/revisionUID";
/// Label Knative fills with the revision name unless the user set it.
pub const APP_LABEL: &str = "app";
/// Revision labels Knative keeps off its pods: they change as routes change,
/// and a changed pod template would roll the Deployment.
pub const EXCLUDED_LABELS: [&str; 2] = ["serving.knative.dev/route", "serving.knative.dev/routingState"];

/// The port the user container listens on when it declares none (Knative's `DefaultUserPort`).
pub const DEFAULT_USER_PORT: u16 = 8080;

/// The port the serving container listens on: its declared `containerPort`, else 8080.
pub fn user_port(spec: &RevisionSpec) -> u16 {
    spec.serving_container()
        .and_then(|c| c.ports.first())
        .and_then(|p| p.container_port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_USER_PORT)
}

/// The protocol the serving container speaks: h2c when its port is named `h2c`
/// (the same rule as the model's gateway plan).
pub fn protocol(spec: &RevisionSpec) -> UpstreamProtocol {
    let h2c = spec.serving_container().and_then(|c| c.ports.first()).is_some_and(|p| p.name == "h2c");
    if h2c { UpstreamProtocol::H2c } else { UpstreamProtocol::Http1 }
}

/// Labels of everything that runs a revision (Knative's `makeLabels`): the
/// revision's labels (configuration, service, the template's own) without
/// the routing ones, plus the revision's name, its UID when known, and
/// `app: <revision>` unless the template chose an `app`.
pub fn labels(revision: &Revision, owner_uids: &OwnerUids) -> BTreeMap<String, String> {
    let meta = &revision.metadata;
    let mut labels: BTreeMap<String, String> = meta
        .labels
        .iter()
        .filter(|(k, _)| !EXCLUDED_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(REVISION_LABEL.to_string(), meta.name.clone());
    if let Some(uid) = owner_uids.get(OwnerKind::Revision, &meta.key()) {
        labels.insert(REVISION_UID_LABEL.to_string(), uid.to_string());
    }
    labels.entry(APP_LABEL.to_string()).or_insert_with(|| meta.name.clone());
    labels
}

/// The selector of a revision's pods. Knative selects on the revision UID;
/// revgate selects on the revision name, which is just as unique in a
/// namespace and known without a cluster. A Deployment's selector can never
/// change, so it must not depend on whether the UID was known at render time.
pub fn selector(revision: &Revision) -> BTreeMap<String, String> {
    BTreeMap::from([(REVISION_LABEL.to_string(), revision.metadata.name.clone())])
}

/// `K_REVISION`, `K_CONFIGURATION`, `K_SERVICE`: what Knative tells every container.
pub fn knative_env(revision: &Revision) -> [(&'static str, String); 3] {
    let label = |key: &str| revision.metadata.labels.get(key).cloned().unwrap_or_default();
    [
        ("K_REVISION", revision.metadata.name.clone()),
        ("K_CONFIGURATION", label(CONFIGURATION_LABEL)),
        ("K_SERVICE", label(SERVICE_LABEL)),
    ]
}
