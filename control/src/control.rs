//! The control plane's single owner of the applied world.
//!
//! One task owns the [`World`] and the [`Store`]. Data flows one way
//! through it: the admin API's commands (over a channel, through [`Handle`])
//! and the runtime's endpoint states (a `watch`, through the zero gate) go
//! in; snapshots leave, on `watch` channels and into the [`SnapshotCache`].
//! Nothing calls back into it to finish a step it started: going to zero is
//! ordered by the zero gate before the states arrive here. Every accepted
//! change is persisted first, then turned into a gateway plan and,
//! translating only the objects that changed, one immutable xDS snapshot
//! that the ADS streams pick up.
//!
//! A change costs what it changes: a world shares every object an apply
//! left equal with its predecessor (so comparing and saving two worlds
//! compares pointers), the plan reuses the entries of unchanged objects
//! ([`PlanMemo`]), and the translator re-encodes only the entries that are
//! new. Endpoint states do not change the plan: they are translated against
//! the last one, which touches only endpoint assignments.
//!
//! ```text
//! admin API ──Command──▶ ControlPlane::run ──save──▶ Store (redb)
//! runtime ─states─▶ ZeroGate ─gated states─▶ │
//!                              ├─ world.plan_with(memo) ─ Translator::update ─ Snapshot ──▶ SnapshotCache ──▶ ADS streams
//!                              └─ watch<Arc<World>>, plan, desired, watch<Published> ──▶ readers
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use revgate_model::decode::Budget;
use revgate_model::gc::Collector;
use revgate_model::plan::{EndpointMap, GatewayPlan, ObjectKey};
use revgate_model::rollout::Rollouts;
use revgate_model::{
    ApplyError, Document, Manifest, ManifestError, OtherKinds, PlanMemo, Reference, RevisionReadiness, Skipped, World,
    parse_documents_within, parse_references,
    world::{Change, IngressState, Observed},
};
use revgate_runtime::RevisionState;
use revgate_xds::Translator;
use revgate_xds::server::{GatewayStatus, SnapshotCache};
use revgate_xds::snapshot::ResourceType;
use revgate_xds::translate::XdsSettings;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::activation::warm::WarmView;
pub use crate::external::{EndpointsOrigin, EndpointsSource};
use crate::faults::Fault;
use crate::manifests::ManifestFile;
use crate::publish::{replace_if_changed, unix_now};
use crate::store::{Store, StoreError, UnreadableObject, delete_unreadable};
use crate::zero_gate::Gated;

mod handle;
use handle::Command;
pub use handle::Handle;

/// Why a request to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Invalid(#[from] ApplyError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The files held no object at all (only comments, or nothing).
    #[error("no objects passed to {verb}")]
    NoObjects { verb: &'static str },
    #[error("the control plane is shutting down")]
    ShuttingDown,
}

/// What the gateway is being sent right now.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Published {
    /// Increments with every snapshot.
    pub generation: u64,
    /// Version per xDS type (`CDS`, `EDS`, `LDS`, `SRDS`, `RDS`).
    pub versions: BTreeMap<String, String>,
    /// Seconds spent building every snapshot so far (for `/metrics`).
    #[serde(skip)]
    pub build_seconds_total: f64,
}

/// The result of an apply or delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub changes: Vec<String>,
    pub published: Published,
    /// What was accepted but is not (yet) in effect, one line each, such as
    /// traffic naming a revision that does not exist. The CLI prints them
    /// as `kubectl` prints an API server's warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Manifests read and checked, ready for the owner task to apply: parsing
/// happens before the command is sent, so that a large (or hostile) file
/// never holds up the owner and the applies queued behind it.
#[derive(Debug)]
pub enum Parsed {
    Apply(Vec<Document>),
    /// `delete -f` reads only what identifies each object.
    Delete(Vec<Reference>),
}

/// Reads every file of one apply (or delete), charging what all of them
/// expand to against one [`Budget`]. Pure CPU work: callers run it on a
/// blocking thread. Files without any document are an error, as in
/// `kubectl`; documents of kinds revgate does not manage are skipped (and
/// returned, to be shown as warnings) or refused, as `other_kinds` says.
pub fn parse_manifests(
    files: &[ManifestFile],
    delete: bool,
    other_kinds: OtherKinds,
) -> Result<(Parsed, Vec<Skipped>), ControlError> {
    let mut budget = Budget::default();
    if delete {
        let mut references = Manifest::default();
        for file in files {
            references.extend(parse_references(&file.name, &file.content, &mut budget, other_kinds)?);
        }
        if references.objects.is_empty() && references.skipped.is_empty() {
            return Err(ControlError::NoObjects { verb: "delete" });
        }
        Ok((Parsed::Delete(references.objects), references.skipped))
    } else {
        let mut documents = Manifest::default();
        for file in files {
            documents.extend(parse_documents_within(&file.name, &file.content, &mut budget, other_kinds)?);
        }
        if documents.objects.is_empty() && documents.skipped.is_empty() {
            return Err(ControlError::NoObjects { verb: "apply" });
        }
        Ok((Parsed::Apply(documents.objects), documents.skipped))
    }
}

/// Whether a snapshot needs a new plan: only a changed world or rollout
/// does; endpoints and the debug fault are translated against the last plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replan {
    Yes,
    No,
}

/// What a garbage-collection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// The revisions deleted.
    pub deleted: Vec<ObjectKey>,
    /// When a kept revision turns stale (Unix seconds): the next pass that
    /// may collect more if nothing else changes first.
    pub next_check: Option<u64>,
}

/// What the runtime reports of every revision it runs.
pub type RuntimeStates = watch::Receiver<Arc<BTreeMap<ObjectKey, RevisionState>>>;

/// The runtime's states as the zero gate lets them through: the owner
/// task's one input for endpoints.
pub type GatedStates = watch::Receiver<Arc<Gated<RevisionState>>>;

/// The owner task's state.
#[derive(Debug)]
pub struct ControlPlane {
    store: Store,
    world: Arc<World>,
    /// Endpoints of revisions, as the runtime reports them through the zero
    /// gate (registered ones come from the external runtime); shared with
    /// readers of [`Handle::endpoints`] once published.
    endpoints: Arc<EndpointMap>,
    endpoints_tx: watch::Sender<Arc<EndpointMap>>,
    /// Revisions whose endpoints the zero gate keeps while the filters are
    /// told they are cold: wanted at zero.
    cold: BTreeSet<ObjectKey>,
    cache: SnapshotCache,
    /// Turns the plan into the next snapshot, translating only what changed.
    translator: Translator,
    /// The last plan's entries, reused for the objects a change left alone.
    plan_memo: PlanMemo,
    fault: Option<Fault>,
    commands: mpsc::Receiver<Command>,
    world_tx: watch::Sender<Arc<World>>,
    plan_tx: watch::Sender<Arc<GatewayPlan>>,
    desired_tx: watch::Sender<Arc<BTreeMap<ObjectKey, u32>>>,
    published_tx: watch::Sender<Published>,
    verdicts_tx: watch::Sender<Arc<BTreeMap<ObjectKey, RevisionReadiness>>>,
    /// The runtime's latest verdicts on revisions it cannot run.
    last_states_verdicts: BTreeMap<ObjectKey, RevisionReadiness>,
    unreadable_tx: watch::Sender<Arc<Vec<UnreadableObject>>>,
    /// The rollout driver's states: the split each Route in rollout serves.
    rollouts: Option<watch::Receiver<Arc<Rollouts>>>,
    /// The warm path: the revisions served without the gateway filter.
    warm: Option<watch::Receiver<WarmView>>,
    /// Revision garbage collection's memory between passes.
    gc: Collector,
}

impl ControlPlane {
    /// Loads the stored world and returns the owner together with a handle
    /// for readers and writers; the owner publishes its first snapshot once
    /// it runs, with the runtime's endpoints. Stored objects that cannot be
    /// read are left out and reported.
    pub fn start(
        mut store: Store,
        cache: SnapshotCache,
        settings: XdsSettings,
        gateway: watch::Receiver<GatewayStatus>,
    ) -> Result<(Self, Handle), ControlError> {
        let world = Arc::new(store.load()?);
        let (unreadable_tx, unreadable_rx) = watch::channel(Arc::new(store.unreadable().to_vec()));
        let (commands_tx, commands) = mpsc::channel(64);
        let (world_tx, world_rx) = watch::channel(world.clone());
        let (published_tx, published_rx) = watch::channel(Published::default());
        let (plan_tx, plan_rx) = watch::channel(Arc::new(GatewayPlan::default()));
        let (desired_tx, desired_rx) = watch::channel(Arc::new(BTreeMap::new()));
        let (verdicts_tx, verdicts_rx) = watch::channel(Arc::new(BTreeMap::new()));
        let (endpoints_tx, endpoints_rx) = watch::channel(Arc::default());
        let plane = Self {
            store,
            world,
            endpoints: Arc::default(),
            endpoints_tx,
            cold: BTreeSet::new(),
            cache,
            translator: Translator::new(settings),
            plan_memo: PlanMemo::default(),
            fault: None,
            commands,
            world_tx,
            plan_tx,
            desired_tx,
            published_tx,
            verdicts_tx,
            last_states_verdicts: BTreeMap::new(),
            unreadable_tx,
            rollouts: None,
            warm: None,
            gc: Collector::default(),
        };
        let handle = Handle {
            commands: commands_tx,
            world: world_rx,
            plan: plan_rx,
            desired: desired_rx,
            published: published_rx,
            gateway,
            verdicts: verdicts_rx,
            endpoints: endpoints_rx,
            unreadable: unreadable_rx,
            external: None,
            rollouts: None,
        };
        Ok((plane, handle))
    }

    /// Serves each Route in rollout with the split the rollout driver gives
    /// it, and publishes again whenever that changes.
    pub fn follow_rollouts(&mut self, rollouts: watch::Receiver<Arc<Rollouts>>) {
        self.rollouts = Some(rollouts);
    }

    /// Serves the Routes whose revisions are all in the warm path's bypass
    /// set without the gateway filter, and publishes again whenever the set
    /// changes (see `revgate_activation::warm`).
    pub fn follow_warm_path(&mut self, warm: watch::Receiver<WarmView>) {
        self.warm = Some(warm);
    }

    /// Publishes the first snapshot, then serves commands until every handle
    /// is dropped. `runtime`, when given, is the source of every revision's
    /// endpoints, already through the zero gate.
    pub async fn run(mut self, mut runtime: Option<GatedStates>) {
        match &mut runtime {
            Some(states) => {
                let current = states.borrow_and_update().clone();
                self.take_states(&current, true);
            }
            None => {
                self.publish(Replan::Yes);
            }
        }
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.serve(command),
                    None => return,
                },
                changed = changed(&mut runtime) => match changed {
                    Some(states) => self.take_states(&states, false),
                    None => runtime = None,
                },
                rolled = changed(&mut self.rollouts) => match rolled {
                    // Most changes are the candidates' figures: only a new split publishes.
                    Some(_) => {
                        let started = std::time::Instant::now();
                        let plan = self.current_plan();
                        if **self.plan_tx.borrow() != plan {
                            self.publish_plan(Arc::new(plan), started);
                        }
                    }
                    None => self.rollouts = None,
                },
                view = changed(&mut self.warm) => match view {
                    Some(view) => {
                        if self.translator.set_bypass(view.bypass) {
                            self.publish(Replan::No);
                        }
                    }
                    None => self.warm = None,
                },
            }
        }
    }

    fn serve(&mut self, command: Command) {
        match command {
            Command::Apply { parsed, reply } => {
                let result = self.apply(&parsed);
                if result.is_ok() {
                    self.publish_verdicts();
                    replace_if_changed(&self.unreadable_tx, self.store.unreadable().to_vec());
                }
                // The requester may have gone away; the change stands either way.
                let _ = reply.send(result);
            }
            Command::SetFault { fault, reply } => {
                self.fault = fault;
                let _ = reply.send(self.publish(Replan::No));
            }
            Command::Collect { now, reply } => {
                let result = self.collect(now);
                if result.is_ok() {
                    self.publish_verdicts();
                }
                let _ = reply.send(result);
            }
        }
    }

    /// One garbage-collection pass against the plan being served: the
    /// routing states first (so a revision that just left the traffic is
    /// stamped now), then the deletions, committed as one change.
    fn collect(&mut self, now: u64) -> Result<Collected, ControlError> {
        let plan = self.plan_tx.borrow().clone();
        let pass = self.gc.pass(&self.world, &plan, now);
        if pass.marked.is_some() || !pass.delete.is_empty() {
            let base = pass.marked.as_ref().unwrap_or(&self.world);
            let (next, changes) = base.without_revisions(&pass.delete);
            for change in &changes {
                tracing::info!(revision = %change.key, "garbage-collected a revision no longer routed (config-gc)");
            }
            self.commit(next)?;
        }
        self.gc.settle(self.world.clone(), self.plan_tx.borrow().clone());
        Ok(Collected { deleted: pass.delete, next_check: self.gc.next_check() })
    }

    /// Follows the runtime through the zero gate: each revision's ready
    /// instances become its endpoints, a revision the gate holds is wanted
    /// at zero, and a revision that has none and a reason is not ready.
    fn take_states(&mut self, gated: &Gated<RevisionState>, first: bool) {
        // Endpoints of revisions not (or no longer) in the world are kept
        // out by the translation, which follows the plan.
        let endpoints: EndpointMap = gated
            .items
            .iter()
            .filter(|(_, state)| !state.ready.is_empty())
            .map(|(key, state)| (key.clone(), state.ready.clone()))
            .collect();
        let cold_changed = self.cold != gated.cold;
        self.cold.clone_from(&gated.cold);
        if first || endpoints != *self.endpoints {
            self.endpoints = Arc::new(endpoints);
            // Endpoints are not part of the plan; the first snapshot is.
            self.publish(if first { Replan::Yes } else { Replan::No });
            self.endpoints_tx.send_replace(self.endpoints.clone());
        } else if cold_changed {
            // The snapshot is unchanged: only the wanted counts are not.
            let plan = self.plan_tx.borrow().clone();
            self.publish_desired(&plan);
        }
        self.runtime_verdicts(&gated.items);
    }

    fn runtime_verdicts(&mut self, states: &BTreeMap<ObjectKey, RevisionState>) {
        let verdicts: BTreeMap<ObjectKey, RevisionReadiness> = states
            .iter()
            .filter(|(key, state)| {
                state.ready.is_empty() && state.reason.is_some() && self.world.revisions.contains_key(*key)
            })
            .filter_map(|(key, state)| {
                let reason = state.reason.clone()?;
                let message = state.message.clone().unwrap_or_default();
                Some((key.clone(), RevisionReadiness::NotReady { reason, message }))
            })
            .collect();
        self.last_states_verdicts = verdicts;
        self.publish_verdicts();
    }

    fn publish_verdicts(&self) {
        let verdicts: BTreeMap<ObjectKey, RevisionReadiness> = self
            .last_states_verdicts
            .iter()
            .filter(|(key, _)| self.world.revisions.contains_key(*key))
            .map(|(key, verdict)| (key.clone(), verdict.clone()))
            .collect();
        replace_if_changed(&self.verdicts_tx, verdicts);
    }

    fn apply(&mut self, parsed: &Parsed) -> Result<Applied, ControlError> {
        let (next, changes, warnings) = match parsed {
            Parsed::Delete(references) => {
                let (next, changes) = self.delete(references)?;
                (next, changes, Vec::new())
            }
            Parsed::Apply(documents) => {
                let (next, changes) = self.world.apply(documents, unix_now())?;
                let warnings = next.traffic_warnings(documents);
                (next, changes, warnings)
            }
        };
        let published = self.commit(next)?;
        Ok(Applied { changes: changes.iter().map(Change::to_string).collect(), published, warnings })
    }

    /// Stores `next` as the world and publishes it: the one path of every
    /// change, applied, deleted or collected.
    fn commit(&mut self, next: World) -> Result<Published, ControlError> {
        let changed = *self.world != next;
        // An apply that changes nothing writes nothing (a write transaction
        // is a durable commit), unless unreadable rows leave with it.
        if changed || self.store.forgets_on_save() {
            self.store.save(&self.world, &next)?;
        }
        self.world = Arc::new(next);
        Ok(if changed {
            self.world_tx.send_replace(self.world.clone());
            self.publish(Replan::Yes)
        } else {
            self.published_tx.borrow().clone()
        })
    }

    /// The plan for the current world, reusing the last plan's unchanged
    /// entries, each Route in rollout serving the rollout driver's split.
    fn current_plan(&mut self) -> GatewayPlan {
        match &self.rollouts {
            Some(rollouts) => {
                self.world.plan_with_rollouts(&Observed::default(), &rollouts.borrow(), &mut self.plan_memo)
            }
            None => self.world.plan_with(&Observed::default(), &mut self.plan_memo),
        }
    }

    /// Builds and publishes the snapshot for the current world and
    /// endpoints; `replan` when the world or the rollouts changed since the
    /// last plan.
    fn publish(&mut self, replan: Replan) -> Published {
        let started = std::time::Instant::now();
        let plan = match replan {
            Replan::Yes => Arc::new(self.current_plan()),
            Replan::No => self.plan_tx.borrow().clone(),
        };
        self.publish_plan(plan, started)
    }

    /// Translates `plan` (built since `started`) with the current endpoints
    /// and publishes the snapshot.
    fn publish_plan(&mut self, plan: Arc<GatewayPlan>, started: std::time::Instant) -> Published {
        self.translator.set_route_fault(self.fault.map(Fault::virtual_host));
        // The translator checks what changed for dangling references.
        let snapshot = match self.translator.update(&plan, &self.endpoints) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                // The translation guarantees consistency; an inconsistent snapshot
                // is a bug, and sending it would make Envoy wait forever.
                tracing::error!(error = %e, "not publishing an inconsistent snapshot");
                return self.published_tx.borrow().clone();
            }
        };
        let published = Published {
            generation: self.published_tx.borrow().generation + 1,
            versions: ResourceType::ALL
                .iter()
                .map(|kind| (kind.short_name().to_owned(), snapshot.version(*kind).to_owned()))
                .collect(),
            build_seconds_total: self.published_tx.borrow().build_seconds_total + started.elapsed().as_secs_f64(),
        };
        self.cache.set_snapshot(snapshot);
        self.publish_desired(&plan);
        replace_if_changed(&self.plan_tx, plan);
        tracing::info!(generation = published.generation, versions = ?published.versions, "published xDS snapshot");
        self.published_tx.send_replace(published.clone());
        published
    }
}

impl ControlPlane {
    /// Deletes the objects `documents` name, including objects whose stored
    /// rows could not be read: their rows (and the unreadable rows of what
    /// they own) leave in the same transaction as the rest of the delete.
    fn delete(&mut self, references: &[Reference]) -> Result<(World, Vec<Change>), ControlError> {
        if self.store.unreadable().is_empty() {
            return Ok(self.world.delete(references)?);
        }
        let recovery = delete_unreadable(&self.world, self.store.unreadable(), references);
        let (next, changes) = recovery.world.delete(&recovery.readable)?;
        self.store.forget_on_save(recovery.rows);
        Ok((next, recovery.changes.into_iter().chain(changes).collect()))
    }

    /// Publishes the endpoint count wanted per revision: the runtime's, else
    /// static, and zero while the zero gate holds its withdrawal.
    fn publish_desired(&self, plan: &GatewayPlan) {
        let desired: BTreeMap<ObjectKey, u32> = plan
            .revisions
            .iter()
            .map(|revision| {
                let count = if self.cold.contains(&revision.key) {
                    0
                } else {
                    let endpoints = self.endpoints.get(&revision.key).or(revision.static_endpoints.as_ref());
                    endpoints.map_or(0, |e| u32::try_from(e.len()).unwrap_or(u32::MAX))
                };
                (revision.key.clone(), count)
            })
            .collect();
        replace_if_changed(&self.desired_tx, desired);
    }
}

/// The next value of `receiver`, or `None` once its sender is gone; never
/// completes without a receiver.
async fn changed<T: Clone>(receiver: &mut Option<watch::Receiver<T>>) -> Option<T> {
    match receiver {
        Some(receiver) => match receiver.changed().await {
            Ok(()) => Some(receiver.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

/// Derives each route's ingress state from what the connected gateways
/// acknowledged: a route is programmed once some gateway ACKed the versions
/// currently published, and rejected while a gateway NACKs them.
///
/// "Connected" is what the xDS server lists: nodes with an open stream and
/// nodes that left less than `DISCONNECT_GRACE` ago. Counting the latter
/// as they were keeps an Envoy that reconnects from making Services flap;
/// the server forgets a node once its grace passes, so a client that
/// rejected everything and left stops holding Services at `GatewayRejected`.
pub fn observed(world: &World, gateway: &GatewayStatus, published: &Published) -> Observed {
    let mut rejection = None;
    let mut programmed = false;
    for (node, status) in &gateway.nodes {
        let mut all_acked = !status.types.is_empty();
        for (kind, current) in &published.versions {
            let Some(type_status) = status.types.get(kind) else {
                all_acked = false;
                continue;
            };
            if let Some(nack) = &type_status.nack
                && &nack.version == current
            {
                rejection.get_or_insert_with(|| {
                    format!("gateway {node} rejected {kind} version {}: {}", nack.version, nack.message)
                });
            }
            if type_status.acked_version.as_deref() != Some(current.as_str()) {
                all_acked = false;
            }
        }
        programmed |= all_acked;
    }
    let state = match (rejection, programmed) {
        (Some(message), _) => IngressState::Rejected { message },
        (None, true) => IngressState::Ready,
        (None, false) => IngressState::NotConfigured,
    };
    Observed {
        revisions: BTreeMap::new(),
        ingress: world.routes.keys().map(|key| (key.clone(), state.clone())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    use revgate_model::plan::Endpoint;
    use revgate_runtime::RevisionStates;

    use super::*;
    use crate::testing::{HELLO_SERVICE as SERVICE, hello_revision as key};
    use crate::zero_gate::{self, ColdNotice};

    fn ready(port: Option<u16>) -> Arc<RevisionStates> {
        let ready = port.map(|port| Endpoint { host: "127.0.0.1".into(), port }).into_iter().collect();
        Arc::new(RevisionStates::from([(key(), RevisionState { ready, ..RevisionState::default() })]))
    }

    /// Gateway filters that hear a revision is cold when the test says so.
    #[derive(Debug, Default)]
    struct Filters {
        heard: watch::Sender<bool>,
    }

    impl ColdNotice for Filters {
        fn heard_cold(&self, _: ObjectKey) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
            let mut heard = self.heard.subscribe();
            Box::pin(async move {
                let _ = heard.wait_for(|heard| *heard).await;
            })
        }
    }

    /// The owner task, the zero gate and a runtime, in-process: going to
    /// zero, the owner wants the revision at zero (the filters are told)
    /// while Envoy keeps its endpoints, and withdraws them only once the
    /// gate lets the change through; the owner is never called back.
    #[tokio::test]
    async fn the_owner_withdraws_the_last_endpoints_only_after_the_filters_heard() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("store");
        let (_gateway, gateway) = watch::channel(GatewayStatus::default());
        let (plane, handle) =
            ControlPlane::start(store, SnapshotCache::default(), XdsSettings::default(), gateway).expect("start");
        let (runtime, states) = watch::channel(Arc::new(RevisionStates::new()));
        let filters = Arc::new(Filters::default());
        // Long enough that only the filters can let the withdrawal through.
        let gated = zero_gate::start(states, filters.clone(), Duration::from_secs(3600));
        tokio::spawn(plane.run(Some(gated)));
        let file = ManifestFile { name: "hello.yaml".into(), content: SERVICE.into() };
        handle.apply(vec![file], false).await.expect("apply");
        let (mut endpoints, mut desired) = (handle.endpoints(), handle.desired());

        runtime.send_replace(ready(Some(8081)));
        endpoints.wait_for(|endpoints| endpoints.contains_key(&key())).await.expect("owner");
        desired.wait_for(|desired| desired.get(&key()) == Some(&1)).await.expect("owner");

        runtime.send_replace(ready(None));
        desired.wait_for(|desired| desired.get(&key()) == Some(&0)).await.expect("owner");
        assert!(endpoints.borrow().contains_key(&key()), "Envoy keeps the endpoints while the filters are told");

        filters.heard.send_replace(true);
        endpoints.wait_for(|endpoints| !endpoints.contains_key(&key())).await.expect("owner");
        assert_eq!(desired.borrow().get(&key()), Some(&0));
    }
}
