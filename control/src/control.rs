//! The control plane's single owner of the applied world.
//!
//! One task owns the [`World`] and the [`Store`]; the admin API talks to it
//! through [`Handle`] (commands over a channel), and everyone else reads
//! cheap snapshots from `watch` channels. Every accepted change is persisted
//! first, then turned into a gateway plan, Envoy resources and one immutable
//! xDS snapshot that the ADS streams pick up.
//!
//! ```text
//! admin API ──Command──▶ ControlPlane::run ──save──▶ Store (redb)
//!                              │
//!                              ├─ world.plan() ─ translate() ─ Snapshot ──▶ SnapshotCache ──▶ ADS streams
//!                              └─ watch<Arc<World>>, watch<Published> ──▶ admin API readers
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use revgate_model::decode::Budget;
use revgate_model::plan::{Endpoint, EndpointMap, GatewayPlan, ObjectKey};
use revgate_model::{
    ApplyError, Document, ManifestError, Reference, RevisionReadiness, World, parse_documents_within, parse_references,
    world::{Change, IngressState, Observed},
};
use revgate_runtime::RevisionState;
use revgate_xds::server::{GatewayStatus, SnapshotCache};
use revgate_xds::snapshot::{ResourceType, Snapshot};
use revgate_xds::translate::{XdsSettings, translate};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::activation::ActivationService;
use crate::faults::Fault;
use crate::manifests::ManifestFile;
use crate::store::{Registration, Store, StoreError, UnreadableObject, delete_unreadable};

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
    /// Version per xDS type (`CDS`, `EDS`, `LDS`, `RDS`).
    pub versions: BTreeMap<String, String>,
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
/// blocking thread. Files without any object are an error, as in `kubectl`.
pub fn parse_manifests(files: &[ManifestFile], delete: bool) -> Result<Parsed, ControlError> {
    let mut budget = Budget::default();
    if delete {
        let mut references = Vec::new();
        for file in files {
            references.extend(parse_references(&file.name, &file.content, &mut budget)?);
        }
        if references.is_empty() {
            return Err(ControlError::NoObjects { verb: "delete" });
        }
        Ok(Parsed::Delete(references))
    } else {
        let mut documents = Vec::new();
        for file in files {
            documents.extend(parse_documents_within(&file.name, &file.content, &mut budget)?);
        }
        if documents.is_empty() {
            return Err(ControlError::NoObjects { verb: "apply" });
        }
        Ok(Parsed::Apply(documents))
    }
}

enum Command {
    Apply {
        parsed: Parsed,
        reply: oneshot::Sender<Result<Applied, ControlError>>,
    },
    SetFault {
        fault: Option<Fault>,
        reply: oneshot::Sender<Published>,
    },
    SetEndpoints {
        revision: ObjectKey,
        endpoints: Vec<Endpoint>,
        reply: oneshot::Sender<Result<Published, ControlError>>,
    },
    /// Endpoints whose publication waited for the filters to hear that the
    /// revision is cold; applied only if no newer change came meanwhile.
    CommitEndpoints {
        revision: ObjectKey,
        endpoints: Vec<Endpoint>,
        generation: u64,
        reply: Option<oneshot::Sender<Result<Published, ControlError>>>,
    },
}

/// What the runtime reports of every revision it runs.
pub type RuntimeStates = watch::Receiver<Arc<BTreeMap<ObjectKey, RevisionState>>>;

/// Cheap, clonable access to the control plane.
#[derive(Debug, Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    world: watch::Receiver<Arc<World>>,
    plan: watch::Receiver<Arc<GatewayPlan>>,
    desired: watch::Receiver<Arc<BTreeMap<ObjectKey, u32>>>,
    published: watch::Receiver<Published>,
    gateway: watch::Receiver<GatewayStatus>,
    verdicts: watch::Receiver<Arc<BTreeMap<ObjectKey, RevisionReadiness>>>,
    registrations: watch::Receiver<Arc<BTreeMap<ObjectKey, EndpointsSource>>>,
    unreadable: watch::Receiver<Arc<Vec<UnreadableObject>>>,
}

/// Where a revision's endpoints come from when they are registered through
/// the admin API: shown in its status so that a user can tell endpoints a
/// registrar just confirmed from ones restored after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsSource {
    /// `Registered` (through the admin API since this control plane
    /// started) or `Restored` (from the state store at start).
    pub source: EndpointsOrigin,
    /// When they were last registered (RFC 3339).
    pub registered_at: String,
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointsOrigin {
    Registered,
    Restored,
}

impl EndpointsSource {
    fn new(registration: &Registration, source: EndpointsOrigin) -> Self {
        Self {
            source,
            registered_at: revgate_model::meta::rfc3339(registration.registered_at),
            endpoints: registration.endpoints.iter().map(ToString::to_string).collect(),
        }
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Apply { parsed, .. } => match parsed {
                Parsed::Apply(documents) => f.debug_struct("Apply").field("documents", &documents.len()).finish(),
                Parsed::Delete(references) => f.debug_struct("Delete").field("references", &references.len()).finish(),
            },
            Command::SetFault { fault, .. } => f.debug_struct("SetFault").field("fault", fault).finish(),
            Command::SetEndpoints { revision, endpoints, .. } => {
                f.debug_struct("SetEndpoints").field("revision", revision).field("endpoints", endpoints).finish()
            }
            Command::CommitEndpoints { revision, generation, .. } => {
                f.debug_struct("CommitEndpoints").field("revision", revision).field("generation", generation).finish()
            }
        }
    }
}

impl Handle {
    /// Applies (or deletes) manifests; all-or-nothing. The files are parsed
    /// here, on a blocking thread, and only parsed documents reach the owner.
    pub async fn apply(&self, files: Vec<ManifestFile>, delete: bool) -> Result<Applied, ControlError> {
        let parsed = tokio::task::spawn_blocking(move || parse_manifests(&files, delete))
            .await
            .map_err(|_| ControlError::ShuttingDown)??;
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Apply { parsed, reply }).await.map_err(|_| ControlError::ShuttingDown)?;
        answer.await.map_err(|_| ControlError::ShuttingDown)?
    }

    /// Arms or clears a fault in the resources sent to gateways.
    pub async fn set_fault(&self, fault: Option<Fault>) -> Result<Published, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::SetFault { fault, reply }).await.map_err(|_| ControlError::ShuttingDown)?;
        answer.await.map_err(|_| ControlError::ShuttingDown)
    }

    /// Registers the live endpoints of a revision whose instances run outside
    /// revgate (replacing earlier ones; empty means scaled to zero).
    pub async fn set_endpoints(
        &self,
        revision: ObjectKey,
        endpoints: Vec<Endpoint>,
    ) -> Result<Published, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::SetEndpoints { revision, endpoints, reply })
            .await
            .map_err(|_| ControlError::ShuttingDown)?;
        answer.await.map_err(|_| ControlError::ShuttingDown)?
    }

    /// Per revision whose endpoints are registered through the admin API:
    /// where they come from and when they were registered.
    pub fn registrations(&self) -> Arc<BTreeMap<ObjectKey, EndpointsSource>> {
        self.registrations.borrow().clone()
    }

    /// Stored objects that could not be read at start and were not deleted since.
    pub fn unreadable(&self) -> Arc<Vec<UnreadableObject>> {
        self.unreadable.borrow().clone()
    }

    /// The gateway plan being published, for readers that follow it.
    pub fn plan(&self) -> watch::Receiver<Arc<GatewayPlan>> {
        self.plan.clone()
    }

    /// The endpoint count wanted per revision. It drops to zero before a
    /// revision's endpoints are withdrawn from the gateways.
    pub fn desired(&self) -> watch::Receiver<Arc<BTreeMap<ObjectKey, u32>>> {
        self.desired.clone()
    }

    pub fn world(&self) -> Arc<World> {
        self.world.borrow().clone()
    }

    /// The applied world, for readers that follow it.
    pub fn world_updates(&self) -> watch::Receiver<Arc<World>> {
        self.world.clone()
    }

    pub fn published(&self) -> Published {
        self.published.borrow().clone()
    }

    pub fn gateway(&self) -> GatewayStatus {
        self.gateway.borrow().clone()
    }

    /// What the model needs to compute status: which routes the gateways
    /// took, and which revisions the runtime cannot run.
    pub fn observed(&self) -> Observed {
        let mut observed = observed(&self.world(), &self.gateway(), &self.published());
        observed.revisions = (**self.verdicts.borrow()).clone();
        observed
    }
}

/// The owner task's state.
#[derive(Debug)]
pub struct ControlPlane {
    store: Store,
    world: Arc<World>,
    /// Endpoints of revisions: from the runtime, or registered through the
    /// admin API when revisions run elsewhere. Registered ones are stored and
    /// restored at start: a restarted control plane has no reason to take
    /// instances that still run out of the gateway.
    endpoints: EndpointMap,
    /// Where registered endpoints come from, for status.
    registrations: BTreeMap<ObjectKey, EndpointsSource>,
    /// Whether a runtime owns the endpoints (then the admin API may not set them).
    runtime_managed: bool,
    /// Revisions going to zero whose endpoints are still published while the
    /// filters learn to hold their requests.
    draining: BTreeSet<ObjectKey>,
    /// Per revision, bumped by every endpoint change; a delayed commit
    /// applies only if it is still the latest.
    endpoint_generations: BTreeMap<ObjectKey, u64>,
    cache: SnapshotCache,
    settings: XdsSettings,
    fault: Option<Fault>,
    commands: mpsc::Receiver<Command>,
    /// For commits sent back by drain tasks; weak so that the loop still ends
    /// when every handle is gone.
    commands_back: mpsc::WeakSender<Command>,
    world_tx: watch::Sender<Arc<World>>,
    plan_tx: watch::Sender<Arc<GatewayPlan>>,
    desired_tx: watch::Sender<Arc<BTreeMap<ObjectKey, u32>>>,
    published_tx: watch::Sender<Published>,
    verdicts_tx: watch::Sender<Arc<BTreeMap<ObjectKey, RevisionReadiness>>>,
    /// The runtime's latest verdicts on revisions it cannot run.
    last_states_verdicts: BTreeMap<ObjectKey, RevisionReadiness>,
    registrations_tx: watch::Sender<Arc<BTreeMap<ObjectKey, EndpointsSource>>>,
    unreadable_tx: watch::Sender<Arc<Vec<UnreadableObject>>>,
}

impl ControlPlane {
    /// Loads the stored world and registered endpoints, publishes its first
    /// snapshot and returns the owner together with a handle for readers and
    /// writers. Stored objects that cannot be read are left out and reported.
    pub fn start(
        mut store: Store,
        cache: SnapshotCache,
        settings: XdsSettings,
        gateway: watch::Receiver<GatewayStatus>,
    ) -> Result<(Self, Handle), ControlError> {
        let world = Arc::new(store.load()?);
        let restored: BTreeMap<ObjectKey, Registration> =
            store.registrations()?.into_iter().filter(|(key, _)| world.revisions.contains_key(key)).collect();
        let endpoints: EndpointMap =
            restored.iter().map(|(key, registration)| (key.clone(), registration.endpoints.clone())).collect();
        let registrations: BTreeMap<ObjectKey, EndpointsSource> = restored
            .iter()
            .map(|(key, registration)| (key.clone(), EndpointsSource::new(registration, EndpointsOrigin::Restored)))
            .collect();
        let (registrations_tx, registrations_rx) = watch::channel(Arc::new(registrations.clone()));
        let (unreadable_tx, unreadable_rx) = watch::channel(Arc::new(store.unreadable().to_vec()));
        let (commands_tx, commands) = mpsc::channel(64);
        let (world_tx, world_rx) = watch::channel(world.clone());
        let (published_tx, published_rx) = watch::channel(Published::default());
        let (plan_tx, plan_rx) = watch::channel(Arc::new(GatewayPlan::default()));
        let (desired_tx, desired_rx) = watch::channel(Arc::new(BTreeMap::new()));
        let (verdicts_tx, verdicts_rx) = watch::channel(Arc::new(BTreeMap::new()));
        let mut plane = Self {
            store,
            world,
            endpoints,
            registrations,
            runtime_managed: false,
            draining: BTreeSet::new(),
            endpoint_generations: BTreeMap::new(),
            cache,
            settings,
            fault: None,
            commands,
            commands_back: commands_tx.downgrade(),
            world_tx,
            plan_tx,
            desired_tx,
            published_tx,
            verdicts_tx,
            last_states_verdicts: BTreeMap::new(),
            registrations_tx,
            unreadable_tx,
        };
        plane.publish();
        let handle = Handle {
            commands: commands_tx,
            world: world_rx,
            plan: plan_rx,
            desired: desired_rx,
            published: published_rx,
            gateway,
            verdicts: verdicts_rx,
            registrations: registrations_rx,
            unreadable: unreadable_rx,
        };
        Ok((plane, handle))
    }

    /// Serves commands until every handle is dropped. `activation` tells when
    /// every gateway filter knows a revision is cold; `runtime`, when given,
    /// is the source of every revision's endpoints.
    pub async fn run(mut self, activation: ActivationService, mut runtime: Option<RuntimeStates>) {
        self.runtime_managed = runtime.is_some();
        if self.runtime_managed && !self.registrations.is_empty() {
            // Registered by an earlier `serve --runtime external`; this
            // runtime starts its own instances and reports their endpoints.
            tracing::warn!(
                revisions = self.registrations.len(),
                "ignoring stored endpoints registered for another runtime"
            );
            self.registrations.clear();
            self.endpoints.clear();
            self.publish_registrations();
            self.publish();
        }
        if let Some(states) = &mut runtime {
            let current = states.borrow_and_update().clone();
            self.take_runtime_states(&current, &activation);
        }
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.serve(command, &activation),
                    None => return,
                },
                changed = changed(&mut runtime) => match changed {
                    Some(states) => self.take_runtime_states(&states, &activation),
                    None => runtime = None,
                },
            }
        }
    }

    fn serve(&mut self, command: Command, activation: &ActivationService) {
        match command {
            Command::Apply { parsed, reply } => {
                let result = self.apply(&parsed);
                if result.is_ok() {
                    self.publish_verdicts();
                    self.publish_registrations();
                    replace_if_changed(&self.unreadable_tx, self.store.unreadable().to_vec());
                }
                // The requester may have gone away; the change stands either way.
                let _ = reply.send(result);
            }
            Command::SetFault { fault, reply } => {
                self.fault = fault;
                let _ = reply.send(self.publish());
            }
            Command::SetEndpoints { revision, endpoints, reply } => {
                if self.runtime_managed {
                    let _ = reply.send(Err(ControlError::Conflict(format!(
                        "revision {revision} is run by revgate's runtime, which sets its endpoints; \
                         start `revgate serve --runtime external` to register endpoints yourself"
                    ))));
                } else {
                    self.set_endpoints(revision, endpoints, Some(reply), activation);
                }
            }
            Command::CommitEndpoints { revision, endpoints, generation, reply } => {
                let current = self.endpoint_generations.get(&revision) == Some(&generation);
                if current {
                    self.draining.remove(&revision);
                    self.endpoints.insert(revision, endpoints);
                }
                // A newer change superseded this one and answers for itself.
                let published = if current { self.publish() } else { self.published_tx.borrow().clone() };
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(published));
                }
            }
        }
    }

    /// Follows the runtime: each revision's ready instances become its
    /// endpoints, and a revision that has none and a reason is not ready.
    fn take_runtime_states(&mut self, states: &BTreeMap<ObjectKey, RevisionState>, activation: &ActivationService) {
        let revisions: Vec<ObjectKey> = self.world.revisions.keys().cloned().collect();
        for revision in revisions {
            let ready = states.get(&revision).map(|state| state.ready.clone()).unwrap_or_default();
            // A revision going to zero keeps its endpoints until the filters
            // know; its pending target is already "none".
            let pending_zero = ready.is_empty() && self.draining.contains(&revision);
            let current = self.endpoints.get(&revision).map_or(&[][..], Vec::as_slice);
            if current != ready.as_slice() && !pending_zero {
                self.set_endpoints(revision, ready, None, activation);
            }
        }
        self.runtime_verdicts(states);
    }

    fn runtime_verdicts(&mut self, states: &BTreeMap<ObjectKey, RevisionState>) {
        let verdicts: BTreeMap<ObjectKey, RevisionReadiness> = states
            .iter()
            .filter(|(key, state)| self.world.revisions.contains_key(*key) && state.ready.is_empty())
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

    /// Takes a revision's new endpoints. Going to zero is two steps, as
    /// Knative puts the activator in the path before removing the last pod:
    /// first the filters are told to hold the revision's requests, and only
    /// once they all know are the endpoints withdrawn from Envoy.
    fn set_endpoints(
        &mut self,
        revision: ObjectKey,
        endpoints: Vec<Endpoint>,
        reply: Option<oneshot::Sender<Result<Published, ControlError>>>,
        activation: &ActivationService,
    ) {
        if !self.world.revisions.contains_key(&revision) {
            if let Some(reply) = reply {
                let _ = reply.send(Err(ControlError::NotFound(format!("revision {revision} does not exist"))));
            }
            return;
        }
        if !self.runtime_managed {
            // Stored before anything is published: what Envoy is sent is
            // always what a restart restores.
            let registration = Registration { endpoints: endpoints.clone(), registered_at: unix_now() };
            if let Err(e) = self.store.save_registration(&revision, &registration) {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e.into()));
                }
                return;
            }
            self.registrations
                .insert(revision.clone(), EndpointsSource::new(&registration, EndpointsOrigin::Registered));
            self.publish_registrations();
        }
        let generation = {
            let generation = self.endpoint_generations.entry(revision.clone()).or_default();
            *generation += 1;
            *generation
        };
        let has_endpoints = self.endpoints.get(&revision).is_some_and(|e| !e.is_empty());
        if !endpoints.is_empty() || !has_endpoints {
            self.draining.remove(&revision);
            self.endpoints.insert(revision, endpoints);
            let published = self.publish();
            if let Some(reply) = reply {
                let _ = reply.send(Ok(published));
            }
            return;
        }
        self.draining.insert(revision.clone());
        // The plan itself is unchanged: only the wanted count drops to zero.
        let plan = self.plan_tx.borrow().clone();
        self.publish_desired(&plan);
        let (activation, commands) = (activation.clone(), self.commands_back.clone());
        tokio::spawn(async move {
            activation.until_cold_everywhere(&revision).await;
            if let Some(commands) = commands.upgrade() {
                let _ = commands.send(Command::CommitEndpoints { revision, endpoints, generation, reply }).await;
            }
        });
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
        self.store.save(&self.world, &next)?;
        let changed = *self.world != next;
        self.world = Arc::new(next);
        let published = if changed {
            self.world_tx.send_replace(self.world.clone());
            self.publish()
        } else {
            self.published_tx.borrow().clone()
        };
        Ok(Applied { changes: changes.iter().map(Change::to_string).collect(), published, warnings })
    }

    /// Builds and publishes the snapshot for the current world.
    fn publish(&mut self) -> Published {
        let plan = self.world.plan(&Observed::default());
        let revisions = &self.world.revisions;
        self.endpoints.retain(|revision, _| revisions.contains_key(revision));
        self.draining.retain(|revision| revisions.contains_key(revision));
        self.endpoint_generations.retain(|revision, _| revisions.contains_key(revision));
        let mut resources = translate(&plan, &self.endpoints, &self.settings);
        if let Some(fault) = self.fault {
            fault.inject(&mut resources);
        }
        let snapshot = Snapshot::new(&resources);
        if let Err(e) = snapshot.consistency_check() {
            // The translation guarantees consistency; an inconsistent snapshot
            // is a bug, and sending it would make Envoy wait forever.
            tracing::error!(error = %e, "not publishing an inconsistent snapshot");
            return self.published_tx.borrow().clone();
        }
        let published = Published {
            generation: self.published_tx.borrow().generation + 1,
            versions: ResourceType::ALL
                .iter()
                .map(|kind| (kind.short_name().to_owned(), snapshot.version(*kind).to_owned()))
                .collect(),
        };
        self.cache.set_snapshot(Arc::new(snapshot));
        self.publish_desired(&plan);
        replace_if_changed(&self.plan_tx, plan);
        tracing::info!(generation = published.generation, versions = ?published.versions, "published xDS snapshot");
        self.published_tx.send_replace(published.clone());
        published
    }
}

impl ControlPlane {
    fn publish_registrations(&mut self) {
        let revisions = &self.world.revisions;
        self.registrations.retain(|revision, _| revisions.contains_key(revision));
        replace_if_changed(&self.registrations_tx, self.registrations.clone());
    }

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

    /// Publishes the endpoint count wanted per revision: registered, else
    /// static, and zero while draining.
    fn publish_desired(&self, plan: &GatewayPlan) {
        let desired: BTreeMap<ObjectKey, u32> = plan
            .revisions
            .iter()
            .map(|revision| {
                let count = if self.draining.contains(&revision.key) {
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

/// Publishes `value` unless it equals what readers have, so they wake only
/// for real changes.
pub fn replace_if_changed<T: PartialEq>(tx: &watch::Sender<Arc<T>>, value: T) {
    tx.send_if_modified(|current| {
        let changed = **current != value;
        if changed {
            *current = Arc::new(value);
        }
        changed
    });
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
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
