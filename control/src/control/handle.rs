//! The owner's mailbox and windows: a [`Handle`] sends [`Command`]s to the
//! owner task and reads what it publishes on `watch` channels, so callers
//! (the admin API, `up`, the autoscaler) never touch the world themselves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use revgate_model::plan::{Endpoint, EndpointMap, GatewayPlan, ObjectKey};
use revgate_model::rollout::Rollouts;
use revgate_model::world::Observed;
use revgate_model::{OtherKinds, RevisionReadiness, World};
use revgate_xds::server::GatewayStatus;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Applied, Collected, ControlError, Parsed, Published, observed, parse_manifests};
use crate::external::{EndpointsSource, ExternalRuntime, RegistrationError};
use crate::faults::Fault;
use crate::manifests::ManifestFile;
use crate::rollout::RolloutHandle;
use crate::store::UnreadableObject;

/// What the owner is asked to do, each with where its answer goes.
pub(super) enum Command {
    Apply {
        parsed: Parsed,
        reply: oneshot::Sender<Result<Applied, ControlError>>,
    },
    SetFault {
        fault: Option<Fault>,
        reply: oneshot::Sender<Published>,
    },
    /// One garbage-collection pass at `now` (Unix seconds), see [`crate::gc`].
    Collect {
        now: u64,
        reply: oneshot::Sender<Result<Collected, ControlError>>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Apply { parsed, .. } => match parsed {
                Parsed::Apply(documents) => f.debug_struct("Apply").field("documents", &documents.len()).finish(),
                Parsed::Delete(references) => f.debug_struct("Delete").field("references", &references.len()).finish(),
            },
            Command::SetFault { fault, .. } => f.debug_struct("SetFault").field("fault", fault).finish(),
            Command::Collect { now, .. } => f.debug_struct("Collect").field("now", now).finish(),
        }
    }
}

/// The longest a registration waits for the owner to publish it before
/// answering anyway: going to zero waits for the filters (at most the zero
/// gate's timeout), then one publication; a newer registration of the same
/// revision may also replace it meanwhile.
const REGISTRATION_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Cheap, clonable access to the control plane.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) world: watch::Receiver<Arc<World>>,
    pub(super) plan: watch::Receiver<Arc<GatewayPlan>>,
    pub(super) desired: watch::Receiver<Arc<BTreeMap<ObjectKey, u32>>>,
    pub(super) published: watch::Receiver<Published>,
    pub(super) gateway: watch::Receiver<GatewayStatus>,
    pub(super) verdicts: watch::Receiver<Arc<BTreeMap<ObjectKey, RevisionReadiness>>>,
    pub(super) endpoints: watch::Receiver<Arc<EndpointMap>>,
    pub(super) unreadable: watch::Receiver<Arc<Vec<UnreadableObject>>>,
    /// The runtime that takes registered endpoints, when revisions run
    /// outside revgate (`serve --runtime external`).
    pub(super) external: Option<ExternalRuntime>,
    /// The rollout driver, when one runs (`serve`, `up`).
    pub(super) rollouts: Option<RolloutHandle>,
}

impl Handle {
    /// Applies (or deletes) manifests; all-or-nothing. Documents of kinds
    /// revgate does not manage are skipped, each with a warning.
    pub async fn apply(&self, files: Vec<ManifestFile>, delete: bool) -> Result<Applied, ControlError> {
        self.apply_with(files, delete, OtherKinds::Skip).await
    }

    /// [`Handle::apply`], with documents of other kinds skipped or refused
    /// as `other_kinds` says (`--strict` refuses). The files are parsed
    /// here, on a blocking thread, and only parsed documents reach the owner.
    pub async fn apply_with(
        &self,
        files: Vec<ManifestFile>,
        delete: bool,
        other_kinds: OtherKinds,
    ) -> Result<Applied, ControlError> {
        let (parsed, skipped) = tokio::task::spawn_blocking(move || parse_manifests(&files, delete, other_kinds))
            .await
            .map_err(|_| ControlError::ShuttingDown)??;
        let skipped: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        if matches!(&parsed, Parsed::Apply(d) if d.is_empty()) || matches!(&parsed, Parsed::Delete(r) if r.is_empty()) {
            // Only skipped documents: nothing for the owner to do.
            return Ok(Applied { changes: Vec::new(), published: self.published(), warnings: skipped });
        }
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Apply { parsed, reply }).await.map_err(|_| ControlError::ShuttingDown)?;
        let mut applied = answer.await.map_err(|_| ControlError::ShuttingDown)??;
        applied.warnings.splice(0..0, skipped);
        Ok(applied)
    }

    /// Arms or clears a fault in the resources sent to gateways.
    pub async fn set_fault(&self, fault: Option<Fault>) -> Result<Published, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::SetFault { fault, reply }).await.map_err(|_| ControlError::ShuttingDown)?;
        answer.await.map_err(|_| ControlError::ShuttingDown)
    }

    /// Marks every revision's routing state as the served traffic makes it
    /// and deletes the revisions `config-gc` collects at `now` (Unix
    /// seconds), as `revgate delete` would, in one stored change.
    pub async fn collect(&self, now: u64) -> Result<Collected, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Collect { now, reply }).await.map_err(|_| ControlError::ShuttingDown)?;
        answer.await.map_err(|_| ControlError::ShuttingDown)?
    }

    /// Takes the rollout driver whose states the views show and whose
    /// controls the admin API serves.
    pub fn with_rollouts(mut self, rollouts: RolloutHandle) -> Self {
        self.rollouts = Some(rollouts);
        self
    }

    /// The rollout driver, if one runs.
    pub fn rollouts(&self) -> Option<&RolloutHandle> {
        self.rollouts.as_ref()
    }

    /// Every Route's rollout state (none without a driver).
    pub fn rollout_states(&self) -> Arc<Rollouts> {
        self.rollouts.as_ref().map(|r| r.states().borrow().clone()).unwrap_or_default()
    }

    /// Takes `external` as the runtime that registered endpoints go to.
    pub fn with_external(mut self, external: ExternalRuntime) -> Self {
        self.external = Some(external);
        self
    }

    /// Registers the live endpoints of a revision whose instances run outside
    /// revgate (replacing earlier ones; empty means scaled to zero). Answers
    /// once the owner published them — going to zero, once every filter
    /// heard and the endpoints left — with what is published. A revision
    /// deleted meanwhile takes its registration with it, stored or not.
    pub async fn set_endpoints(
        &self,
        revision: ObjectKey,
        endpoints: Vec<Endpoint>,
    ) -> Result<Published, ControlError> {
        let Some(external) = &self.external else {
            return Err(ControlError::Conflict(format!(
                "revision {revision} is run by revgate's runtime, which sets its endpoints; \
                 start `revgate serve --runtime external` to register endpoints yourself"
            )));
        };
        external.register(revision.clone(), endpoints.clone()).await.map_err(|e| match e {
            RegistrationError::UnknownRevision { .. } => ControlError::NotFound(e.to_string()),
            RegistrationError::Store { source, .. } => ControlError::Store(source),
            RegistrationError::ShuttingDown { .. } => ControlError::ShuttingDown,
        })?;
        let mut applied = self.endpoints.clone();
        let published =
            applied.wait_for(|applied| applied.get(&revision).map_or(&[][..], Vec::as_slice) == endpoints.as_slice());
        // Registered either way; a slow publication only delays the answer.
        let _ = tokio::time::timeout(REGISTRATION_ANSWER_WAIT, published).await;
        Ok(self.published())
    }

    /// Per revision whose endpoints are registered through the admin API:
    /// where they come from and when they were registered.
    pub fn registrations(&self) -> Arc<BTreeMap<ObjectKey, EndpointsSource>> {
        self.external.as_ref().map(ExternalRuntime::sources).unwrap_or_default()
    }

    /// Stored objects that could not be read at start and were not deleted since.
    pub fn unreadable(&self) -> Arc<Vec<UnreadableObject>> {
        self.unreadable.borrow().clone()
    }

    /// The gateway plan being published, for readers that follow it.
    pub fn plan(&self) -> watch::Receiver<Arc<GatewayPlan>> {
        self.plan.clone()
    }

    /// The endpoints in the published snapshot, per revision: the runtime's,
    /// as the zero gate lets them through.
    pub fn endpoints(&self) -> watch::Receiver<Arc<EndpointMap>> {
        self.endpoints.clone()
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
