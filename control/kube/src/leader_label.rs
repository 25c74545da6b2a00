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

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;

/// The label the activation Service selects: the pod of the leading replica.
pub const LEADER_LABEL: &str = "revgate.dev/leader";

/// The first wait before a failed label patch is tried again.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);

/// The longest wait between two tries of a failed label patch.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

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
    /// until its sender is gone. A failed patch is retried with backoff
    /// (from [`RETRY_FIRST`] doubling to [`RETRY_MAX`]) until it succeeds or
    /// leadership changes again: while the new leader's label is missing,
    /// the activation Service selects no pod and no gateway filter reaches
    /// the autoscaler, so scaling from zero would stop cluster-wide.
    pub async fn follow(&self, mut leading: watch::Receiver<bool>) {
        loop {
            let lead = *leading.borrow_and_update();
            match self.set_until_done(lead, &mut leading).await {
                Outcome::Applied => {
                    if leading.changed().await.is_err() {
                        return;
                    }
                }
                // The new value is read at the top of the loop.
                Outcome::Superseded => {}
                Outcome::Closed => return,
            }
        }
    }

    /// Sets the label to `lead`, trying again with backoff, until it is set
    /// or `leading` changes.
    async fn set_until_done(&self, lead: bool, leading: &mut watch::Receiver<bool>) -> Outcome {
        let mut delay = RETRY_FIRST;
        let mut failures = 0_u32;
        loop {
            match self.set(lead).await {
                Ok(()) => {
                    tracing::info!(pod = %self.name, lead, failures, "leader label updated");
                    return Outcome::Applied;
                }
                Err(e) => {
                    // One line per streak of failures; the count ends it.
                    if failures == 0 {
                        tracing::warn!(error = %e, "cannot update the leader label; retrying with backoff");
                    }
                    failures += 1;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => delay = (delay * 2).min(RETRY_MAX),
                changed = leading.changed() => {
                    return if changed.is_ok() { Outcome::Superseded } else { Outcome::Closed };
                }
            }
        }
    }
}

/// How one attempt to follow a value of `leading` ended.
enum Outcome {
    Applied,
    /// Leadership changed before the label could be set.
    Superseded,
    /// The sender of `leading` is gone.
    Closed,
}
