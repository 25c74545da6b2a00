//! The leader's pod label, which routes the gateways' activation calls to
//! the replica that scales.
//!
//! Only the leader scales, so only the leader's autoscaler may count the
//! gateways' reports: the leading replica labels its own pod
//! [`LEADER_LABEL`]` = "true"`, and the activation Service selects that
//! label, so every filter reaches the leader. When leadership moves, the
//! replica that lost it removes its label and the new leader adds its own;
//! the filters' next poll (within a second) reaches the new one.
//!
//! | `leading` | the pod's label |
//! |---|---|
//! | `true` | `revgate.dev/leader: "true"` |
//! | `false` | absent |

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;

/// The label the activation Service selects: the pod of the leading replica.
pub const LEADER_LABEL: &str = "revgate.dev/leader";

/// Why the label could not be set or removed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderLabelError {
    #[error(
        "{action} the label {LEADER_LABEL} on pod {namespace}/{name}: {source}; check that the controller's \
         ServiceAccount may patch pods in {namespace}"
    )]
    Patch {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// This replica's pod, as the leader label marks it.
#[derive(Debug, Clone)]
pub struct LeaderLabel {
    pods: Api<Pod>,
    namespace: String,
    name: String,
}

impl LeaderLabel {
    /// The label of pod `namespace/name` (this replica's own, from the
    /// downward API's `POD_NAMESPACE` and `POD_NAME`).
    pub fn new(client: Client, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        let namespace = namespace.into();
        Self { pods: Api::namespaced(client, &namespace), namespace, name: name.into() }
    }

    /// Sets the label (`lead`) or removes it, with a merge patch that
    /// touches no other label.
    pub async fn set(&self, lead: bool) -> Result<(), LeaderLabelError> {
        let value = if lead { serde_json::json!("true") } else { serde_json::Value::Null };
        let patch = serde_json::json!({ "metadata": { "labels": { LEADER_LABEL: value } } });
        match self.pods.patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(source) => Err(LeaderLabelError::Patch {
                action: if lead { "setting" } else { "removing" },
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// Keeps the label exactly while `leading` says this replica leads,
    /// until its sender is gone. A failed patch is logged and not retried:
    /// the filters keep reaching the previous replica until the next change.
    pub async fn follow(&self, mut leading: watch::Receiver<bool>) {
        loop {
            let lead = *leading.borrow_and_update();
            match self.set(lead).await {
                Ok(()) => tracing::info!(pod = %self.name, lead, "leader label updated"),
                Err(e) => tracing::warn!(error = %e, "cannot update the leader label"),
            }
            if leading.changed().await.is_err() {
                return;
            }
        }
    }
}
