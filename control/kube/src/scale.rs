//! [`KubeRuntime`]: revgate's [`Runtime`] on Kubernetes. The KPA asks for
//! N pods of a revision; the runtime sets the revision Deployment's
//! `replicas` through the scale subresource, and reports the ready pods
//! Kubernetes lists in the revision Service's EndpointSlices.
//!
//! ```text
//! Runtime::scale ──Command──▶ actor (owns the wishes) ──PATCH …/deployments/<rev>-deployment/scale──▶ API server
//! controller's stores ──observe(states)──┘   └──watch<Arc<RevisionStates>> (ready endpoints, desired)──▶ readers
//! ```
//!
//! Only the leader writes. Every replica records the wishes of its
//! autoscaler; a follower writes none of them, and when it becomes leader
//! it writes every wish the Deployments do not already match, so a change
//! of leader never leaves a revision at the old leader's last count. A
//! failed write is retried with a growing delay (and the newest wish wins).
//!
//! The reconciler reads the wishes too ([`KubeRuntime::wishes`]): a
//! Deployment it applies carries the wished count, so an apply can never
//! undo a scale that its stale snapshot has not seen yet.
//!
//! A scale to zero also waits for the mesh ([`crate::mesh`]): while a
//! `-mesh` VirtualService in the cluster still sends sidecars straight to
//! the revision, the zero is recorded (the reconciler reads it and points
//! those destinations at the local gateway) but not written; it is written
//! [`MESH_SWITCH_SETTLE`] after the cluster shows no such destination left,
//! so that sidecars route through the gateway before the last pod goes.
//! Scales above zero are never held: the gateway holds the calls meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use revgate_model::plan::ObjectKey;
use revgate_runtime_api::{RevisionStates, Runtime, Workload};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::kinds::FIELD_MANAGER;

/// First retry delay of a failed scale write; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// How long a scale to zero waits after the cluster shows the revision's
/// `-mesh` destinations switched to the local gateway. Istio reports no
/// moment when every sidecar has a configuration; istiod pushes a change
/// after 100 ms without further changes (`PILOT_DEBOUNCE_AFTER`), so a few
/// seconds cover a quiet mesh many times over, and add little to a scale to
/// zero that already waited out the stable window.
pub const MESH_SWITCH_SETTLE: Duration = Duration::from_secs(5);

/// Scales revision Deployments; see the module docs.
#[derive(Debug, Clone)]
pub struct KubeRuntime {
    commands: mpsc::UnboundedSender<Command>,
    states: watch::Receiver<Arc<RevisionStates>>,
    wishes: watch::Receiver<Arc<BTreeMap<ObjectKey, u32>>>,
    held: watch::Receiver<Arc<BTreeSet<ObjectKey>>>,
}

#[derive(Debug)]
enum Command {
    Scale {
        key: ObjectKey,
        replicas: u32,
    },
    Remove(ObjectKey),
    /// What the cluster shows now (from the controller's stores).
    Observed(RevisionStates),
    /// The revisions the cluster's `-mesh` VirtualServices route to directly.
    MeshDirect(BTreeSet<ObjectKey>),
}

impl KubeRuntime {
    /// Starts the actor. `leading` says whether this replica may write.
    pub fn start(client: Client, leading: watch::Receiver<bool>) -> Self {
        let (commands, inbox) = mpsc::unbounded_channel();
        let (states_tx, states) = watch::channel(Arc::new(RevisionStates::new()));
        let (wishes_tx, wishes) = watch::channel(Arc::new(BTreeMap::new()));
        let (held_tx, held) = watch::channel(Arc::new(BTreeSet::new()));
        let actor = Actor {
            client,
            leading,
            inbox,
            states: states_tx,
            wishes: wishes_tx,
            observed: RevisionStates::new(),
            pending: BTreeSet::new(),
            failures: 0,
            retry_at: None,
            mesh: MeshGate::default(),
            held: held_tx,
        };
        tokio::spawn(actor.run());
        Self { commands, states, wishes, held }
    }

    /// Hands the runtime what the cluster shows now: ready endpoints and
    /// the replicas of every Deployment.
    pub fn observe(&self, states: RevisionStates) {
        let _ = self.commands.send(Command::Observed(states));
    }

    /// Hands the runtime the revisions the cluster's `-mesh`
    /// VirtualServices route to directly: their scales to zero wait.
    pub fn observe_mesh(&self, direct: BTreeSet<ObjectKey>) {
        let _ = self.commands.send(Command::MeshDirect(direct));
    }

    /// The latest count the autoscaler asked for, per revision.
    pub fn wishes(&self) -> Arc<BTreeMap<ObjectKey, u32>> {
        self.wishes.borrow().clone()
    }

    /// The scales to zero not written yet because sidecars may still call
    /// the revision directly (see the module docs).
    pub fn held_for_mesh(&self) -> watch::Receiver<Arc<BTreeSet<ObjectKey>>> {
        self.held.clone()
    }

    /// The counts a Deployment the reconciler applies may carry: the
    /// wishes, except zeros held for the mesh (an apply must not take the
    /// last pods away before the sidecars stopped calling them).
    pub fn replicas(&self) -> BTreeMap<ObjectKey, u32> {
        // Wishes first: the actor publishes a held zero before the zero
        // itself, so a zero read here is never missing from `held` below.
        let wishes = self.wishes.borrow().clone();
        let held = self.held.borrow().clone();
        wishes.iter().filter(|(key, _)| !held.contains(*key)).map(|(k, n)| (k.clone(), *n)).collect()
    }
}

impl Runtime for KubeRuntime {
    fn scale(&self, workload: &Workload, replicas: u32) {
        let _ = self.commands.send(Command::Scale { key: workload.key.clone(), replicas });
    }

    /// The Deployment goes with its Revision (owner references); only the wish is forgotten.
    fn remove(&self, key: &ObjectKey) {
        let _ = self.commands.send(Command::Remove(key.clone()));
    }

    fn states(&self) -> watch::Receiver<Arc<RevisionStates>> {
        self.states.clone()
    }

    /// Pods belong to the cluster and outlive the controller: nothing to stop.
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// The one owner of the wishes.
struct Actor {
    client: Client,
    leading: watch::Receiver<bool>,
    inbox: mpsc::UnboundedReceiver<Command>,
    states: watch::Sender<Arc<RevisionStates>>,
    wishes: watch::Sender<Arc<BTreeMap<ObjectKey, u32>>>,
    observed: RevisionStates,
    /// Wishes not yet written.
    pending: BTreeSet<ObjectKey>,
    /// Consecutive failed writes, for the retry delay.
    failures: u32,
    retry_at: Option<Instant>,
    mesh: MeshGate,
    /// Zero wishes waiting for the mesh, for the reconciler.
    held: watch::Sender<Arc<BTreeSet<ObjectKey>>>,
}

/// When a scale to zero may be written, as far as sidecars are concerned.
#[derive(Debug, Default)]
struct MeshGate {
    /// Revisions the cluster's `-mesh` VirtualServices route to directly.
    direct: BTreeSet<ObjectKey>,
    /// When each revision left `direct` (forgotten once settled).
    left: BTreeMap<ObjectKey, Instant>,
}

impl MeshGate {
    fn observe(&mut self, direct: BTreeSet<ObjectKey>, now: Instant) {
        for key in self.direct.difference(&direct) {
            self.left.insert(key.clone(), now);
        }
        for key in &direct {
            self.left.remove(key);
        }
        self.left.retain(|_, at| now < *at + MESH_SWITCH_SETTLE);
        self.direct = direct;
    }

    /// `None` if a scale of `key` to zero may be written at `now`, else
    /// the time to look again (`Some(None)`: when the mesh changes).
    fn wait(&self, key: &ObjectKey, now: Instant) -> Option<Option<Instant>> {
        if self.direct.contains(key) {
            return Some(None);
        }
        let settled = *self.left.get(key)? + MESH_SWITCH_SETTLE;
        (now < settled).then_some(Some(settled))
    }
}

impl Actor {
    async fn run(mut self) {
        loop {
            let retry = self.retry_at;
            let settle = self.mesh_settle();
            tokio::select! {
                command = self.inbox.recv() => match command {
                    None => return,
                    Some(command) => self.handle(command),
                },
                changed = self.leading.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *self.leading.borrow_and_update() {
                        // A new leader writes every wish the cluster does not show.
                        let wishes = self.wishes.borrow().clone();
                        let stale = wishes
                            .iter()
                            .filter(|(key, n)| self.observed.get(*key).map(|s| s.desired) != Some(**n))
                            .map(|(key, _)| key.clone());
                        self.pending.extend(stale);
                        self.retry_at = None;
                    }
                }
                () = sleep_until(retry), if retry.is_some() => self.retry_at = None,
                () = sleep_until(settle), if settle.is_some() => {}
            }
            if *self.leading.borrow() && self.retry_at.is_none() {
                self.write_pending().await;
            }
            self.publish_held();
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Scale { key, replicas } => {
                if replicas == 0 && self.mesh.wait(&key, Instant::now()).is_some() {
                    self.held.send_if_modified(|held| Arc::make_mut(held).insert(key.clone()));
                }
                self.wishes.send_modify(|w| {
                    Arc::make_mut(w).insert(key.clone(), replicas);
                });
                self.pending.insert(key);
            }
            Command::Remove(key) => {
                self.wishes.send_modify(|w| {
                    Arc::make_mut(w).remove(&key);
                });
                self.pending.remove(&key);
            }
            Command::Observed(states) => self.observed = states,
            Command::MeshDirect(direct) => self.mesh.observe(direct, Instant::now()),
        }
        self.publish();
    }

    /// Writes every pending wish the cluster does not show yet.
    async fn write_pending(&mut self) {
        let wishes = self.wishes.borrow().clone();
        let keys: Vec<ObjectKey> = self.pending.iter().cloned().collect();
        for key in keys {
            let Some(&replicas) = wishes.get(&key) else {
                self.pending.remove(&key);
                continue;
            };
            if replicas == 0 && self.mesh.wait(&key, Instant::now()).is_some() {
                continue;
            }
            match scale(&self.client, &key, replicas).await {
                Ok(()) => {
                    self.pending.remove(&key);
                    self.failures = 0;
                }
                Err(e) => {
                    let delay = retry_delay(self.failures);
                    self.failures = self.failures.saturating_add(1);
                    tracing::warn!(revision = %key, replicas, error = %e, retry_in = ?delay, "scaling failed");
                    self.retry_at = Some(Instant::now() + delay);
                    return;
                }
            }
        }
    }

    /// The zero wishes waiting for the mesh, and the earliest time one of
    /// them settles.
    fn mesh_waits(&self) -> (BTreeSet<ObjectKey>, Option<Instant>) {
        let wishes = self.wishes.borrow();
        let now = Instant::now();
        let mut held = BTreeSet::new();
        let mut settle: Option<Instant> = None;
        for key in self.pending.iter().filter(|key| wishes.get(*key) == Some(&0)) {
            if let Some(at) = self.mesh.wait(key, now) {
                held.insert(key.clone());
                settle = match (settle, at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        (held, settle)
    }

    fn mesh_settle(&self) -> Option<Instant> {
        self.mesh_waits().1
    }

    fn publish_held(&self) {
        let (held, _) = self.mesh_waits();
        self.held.send_if_modified(|current| {
            let changed = **current != held;
            if changed {
                *current = Arc::new(held);
            }
            changed
        });
    }

    /// The cluster's states with the wishes as `desired`.
    fn publish(&self) {
        let wishes = self.wishes.borrow().clone();
        let mut states = self.observed.clone();
        for (key, replicas) in wishes.iter() {
            states.entry(key.clone()).or_default().desired = *replicas;
        }
        self.states.send_if_modified(|current| {
            let changed = **current != states;
            if changed {
                *current = Arc::new(states);
            }
            changed
        });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// 500 ms × 2^failures, at most 30 s.
pub fn retry_delay(failures: u32) -> Duration {
    FIRST_RETRY.saturating_mul(1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX)).min(MAX_RETRY)
}

/// Sets a revision Deployment's replicas through the scale subresource (a
/// merge patch, as `kubectl scale` does, under revgate's field manager).
pub async fn scale(client: &Client, revision: &ObjectKey, replicas: u32) -> Result<(), ScaleError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &revision.namespace);
    let name = revgate_istio::names::deployment(&revision.name);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PatchParams::default() };
    let patch = json!({ "spec": { "replicas": replicas } });
    api.patch_scale(&name, &params, &Patch::Merge(&patch)).await.map(drop).map_err(|source| ScaleError {
        namespace: revision.namespace.clone(),
        deployment: name,
        replicas,
        source,
    })
}

/// A scale write the API server refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "scaling Deployment {namespace}/{deployment} to {replicas}: {source}; the controller needs `patch` on \
     deployments/scale, and the Deployment must exist (the reconciler creates it with the Revision)"
)]
pub struct ScaleError {
    pub namespace: String,
    pub deployment: String,
    pub replicas: u32,
    #[source]
    pub source: kube::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zero waits while the mesh routes to the revision directly, then
    /// for the settle time after the switch, and not at all for a revision
    /// the mesh never routed to directly.
    #[test]
    fn a_zero_waits_for_the_mesh_switch_to_settle() {
        let (hello, other) = (ObjectKey::new("default", "hello-00001"), ObjectKey::new("default", "other-00001"));
        let start = Instant::now();
        let mut gate = MeshGate::default();
        gate.observe(BTreeSet::from([hello.clone()]), start);
        assert_eq!(gate.wait(&hello, start), Some(None), "direct: wait for the switch");
        assert_eq!(gate.wait(&other, start), None, "never direct: no wait");
        let switched = start + Duration::from_secs(1);
        gate.observe(BTreeSet::new(), switched);
        let settled = switched + MESH_SWITCH_SETTLE;
        assert_eq!(gate.wait(&hello, switched), Some(Some(settled)));
        assert_eq!(gate.wait(&hello, settled), None);
        gate.observe(BTreeSet::new(), settled);
        assert!(gate.left.is_empty(), "settled switches are forgotten");
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        let delays: Vec<u64> = (0..8).map(|n| retry_delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }
}
