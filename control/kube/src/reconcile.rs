//! The reconciler: one pass over one namespace, a thin layer of I/O around
//! the pure steps of [`crate::desired`].
//!
//! ```text
//! snapshot ─▶ service_children ─apply─▶ revisions ─apply─▶ world ─▶ revision_children ─apply─▶
//!            routing ─apply/delete─▶ statuses ─patch status─▶ gc ─label/delete─▶ Action (or an error: back off)
//! ```
//!
//! The last step is Knative's labeler and revision GC ([`crate::gc`]): the
//! Revisions' routing state, under a field manager of its own, and the
//! deletion of the Revisions `config-gc` collects (their Deployments and
//! Services go by owner reference). A namespace with a revision about to
//! turn stale is looked at again when it does.
//!
//! Every write is a server-side apply under the one field manager
//! [`FIELD_MANAGER`], forced: revgate is the only intended writer of the
//! fields it sets, and a user's `kubectl edit` of a generated object is
//! undone as Knative undoes it. The object the API server returns goes back
//! into the snapshot, so the next step sees the generation, UID and
//! resourceVersion the write produced.
//!
//! A failed write does not stop the pass: the other objects of the
//! namespace still converge, the failure becomes a condition on the
//! Knative object it concerns (`Ready=False`, with the API server's reason
//! and message), and the pass returns an error so that [`error_policy`]
//! retries the namespace with a growing delay.
//!
//! Why per namespace: the model resolves routes, services and revisions
//! against each other (a Route names a Configuration, whose latest ready
//! Revision decides the split), and none of that crosses a namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use revgate_istio::RenderOptions;
use revgate_model::plan::ObjectKey;

use crate::desired::{self, Apply, Delete, Problems, StatusWrite, Step};
use crate::gc::{self, LABELER_FIELD_MANAGER};
use crate::kinds::{FIELD_MANAGER, Kind};
use crate::rollouts::{self, CandidateFigures, ROLLOUT_REQUEUE};
use crate::scale::KubeRuntime;
use crate::snapshot::{ClusterReader, Snapshot};

/// How often a namespace is reconciled without any change, to repair
/// drift a missed watch event would leave.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);
/// The first retry delay after a failed pass; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Seconds since the Unix epoch; tests pin it.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What every pass needs.
pub struct Context {
    client: Client,
    reader: Arc<dyn ClusterReader>,
    options: RenderOptions,
    runtime: Option<KubeRuntime>,
    clock: Clock,
    resync: Duration,
    /// Consecutive failed passes per namespace. Only touched between
    /// awaits, so a plain mutex is enough (never held across `.await`).
    attempts: Mutex<BTreeMap<String, u32>>,
    /// What the gateways measured of each rollout's candidate, for the gates.
    figures: Option<CandidateFigures>,
    /// Namespaces with a rollout in progress, reconciled again soon.
    rolling: Mutex<BTreeSet<String>>,
    /// Per namespace, when a kept revision turns stale (Unix seconds).
    gc_due: Mutex<BTreeMap<String, u64>>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("reader", &self.reader)
            .field("options", &self.options)
            .field("runtime", &self.runtime)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, reader: Arc<dyn ClusterReader>, options: RenderOptions) -> Self {
        Self {
            client,
            reader,
            options,
            runtime: None,
            clock: Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())),
            resync: DEFAULT_RESYNC,
            attempts: Mutex::new(BTreeMap::new()),
            figures: None,
            rolling: Mutex::new(BTreeSet::new()),
            gc_due: Mutex::new(BTreeMap::new()),
        }
    }

    /// Where the rollout gates read the candidates' figures.
    pub fn with_candidate_figures(mut self, figures: CandidateFigures) -> Self {
        self.figures = Some(figures);
        self
    }

    fn set_rolling(&self, namespace: &str, rolling: bool) {
        let mut set = self.rolling.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if rolling {
            set.insert(namespace.to_string());
        } else {
            set.remove(namespace);
        }
    }

    /// The runtime whose scale wishes new Deployments and applies carry.
    pub fn with_runtime(mut self, runtime: KubeRuntime) -> Self {
        self.runtime = Some(runtime);
        self
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    /// Counts a failed pass of a namespace; returns how many came before it.
    fn failed(&self, namespace: &str) -> u32 {
        let mut attempts = self.attempts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = attempts.entry(namespace.to_string()).or_insert(0);
        let before = *count;
        *count = count.saturating_add(1);
        before
    }

    fn succeeded(&self, namespace: &str) {
        self.attempts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(namespace);
    }

    fn set_gc_due(&self, namespace: &str, due: Option<u64>) {
        let mut map = self.gc_due.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match due {
            Some(at) => map.insert(namespace.to_string(), at),
            None => map.remove(namespace),
        };
    }

    /// The resync, or sooner when a revision of the namespace turns stale.
    fn requeue_after(&self, namespace: &str) -> Duration {
        let resync = if self.rolling(namespace) { self.resync.min(ROLLOUT_REQUEUE) } else { self.resync };
        let due = self.gc_due.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(namespace).copied();
        match due {
            Some(at) => resync.min(Duration::from_secs(at.saturating_sub((self.clock)()).max(1))),
            None => resync,
        }
    }

    fn rolling(&self, namespace: &str) -> bool {
        self.rolling.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(namespace)
    }

    fn wishes(&self) -> Arc<BTreeMap<ObjectKey, u32>> {
        self.runtime.as_ref().map(KubeRuntime::wishes).unwrap_or_default()
    }

    /// The counts applied Deployments carry: the wishes, less the zeros
    /// that wait for the mesh ([`crate::mesh`]).
    fn replicas(&self) -> BTreeMap<ObjectKey, u32> {
        self.runtime.as_ref().map(KubeRuntime::replicas).unwrap_or_default()
    }
}

/// A pass that could not write everything.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(
        "{} write(s) failed in namespace {namespace}, first: {}; the objects' status shows each error and the \
         namespace is retried with backoff",
        failures.len(),
        failures.first().map(ToString::to_string).unwrap_or_default()
    )]
    Writes { namespace: String, failures: Vec<WriteFailure> },
}

/// One write the API server refused (or did not answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{action} {kind} {namespace}/{name}: {message}")]
pub struct WriteFailure {
    /// `applying`, `deleting`, `writing the status of`.
    pub action: &'static str,
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The HTTP status, when the API server answered.
    pub code: Option<u16>,
    /// The API server's reason (`Conflict`, `Forbidden`…), if it gave one.
    pub reason: Option<String>,
    pub message: String,
}

/// One pass over the namespace; see the module docs.
pub async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let name = namespace.name_any();
    let failures = pass(&ctx, &name).await;
    if failures.is_empty() {
        ctx.succeeded(&name);
        Ok(Action::requeue(ctx.requeue_after(&name)))
    } else {
        Err(ReconcileError::Writes { namespace: name, failures })
    }
}

/// After a failed pass: retry after [`backoff`] of the failures so far.
pub fn error_policy(namespace: Arc<Namespace>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let name = namespace.name_any();
    let delay = backoff(ctx.failed(&name));
    tracing::warn!(namespace = %name, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// `FIRST_BACKOFF × 2^failures_before`, at most [`MAX_BACKOFF`].
pub fn backoff(failures_before: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1u32.checked_shl(failures_before.min(16)).unwrap_or(u32::MAX)).min(MAX_BACKOFF)
}

/// The steps of a pass, in order; returns the writes that failed.
pub async fn pass(ctx: &Context, namespace: &str) -> Vec<WriteFailure> {
    let now = (ctx.clock)();
    let mut snapshot = ctx.reader.snapshot(namespace);
    let mut writer = Writer::new(&ctx.client, namespace);

    let children = desired::service_children(&snapshot, now);
    writer.run(&mut snapshot, children).await;
    let revisions = desired::revisions(&snapshot, now);
    writer.run(&mut snapshot, revisions).await;

    let world = desired::world(&snapshot);
    let options = desired::render_options(&snapshot, &ctx.options);
    let children = desired::revision_children(&snapshot, &world, &options, &ctx.replicas());
    writer.run(&mut snapshot, children).await;

    let mut observed = desired::observe(&snapshot, &world, &writer.problems);
    let rollouts = rollouts::step_all(&snapshot, &world, &observed, now.saturating_mul(1000), ctx.figures.as_ref());
    ctx.set_rolling(namespace, rollouts::in_progress(&rollouts));
    let through_gateway = crate::mesh::through_gateway(&snapshot, &ctx.wishes(), &options);
    let (routing, plan) = desired::routing(&snapshot, &world, &observed, &options, &rollouts, &through_gateway);
    writer.run(&mut snapshot, routing).await;
    desired::ingress(&mut observed, &plan, &writer.problems);

    for status in desired::statuses(&snapshot, &world, &observed, &writer.problems, &rollouts, now) {
        writer.status(status).await;
    }

    let collection = gc::collect(&snapshot, &world, &plan, now);
    ctx.set_gc_due(namespace, collection.next_check);
    for apply in collection.labels {
        writer.apply_as(&mut snapshot, apply, LABELER_FIELD_MANAGER).await;
    }
    for delete in collection.deletes {
        tracing::info!(%namespace, revision = %delete.name, "garbage-collecting a revision no longer routed (config-gc)");
        writer.delete(&mut snapshot, delete).await;
    }
    writer.failures
}

/// Carries out a step's writes and keeps what went wrong.
struct Writer<'a> {
    client: &'a Client,
    namespace: &'a str,
    problems: Problems,
    failures: Vec<WriteFailure>,
}

impl<'a> Writer<'a> {
    fn new(client: &'a Client, namespace: &'a str) -> Self {
        Self { client, namespace, problems: Problems::default(), failures: Vec::new() }
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), self.namespace, &kind.api_resource())
    }

    async fn run(&mut self, snapshot: &mut Snapshot, step: Step) {
        self.problems.extend(step.problems);
        for apply in step.applies {
            self.apply(snapshot, apply).await;
        }
        for delete in step.deletes {
            self.delete(snapshot, delete).await;
        }
    }

    async fn apply(&mut self, snapshot: &mut Snapshot, apply: Apply) {
        self.apply_as(snapshot, apply, FIELD_MANAGER).await;
    }

    async fn apply_as(&mut self, snapshot: &mut Snapshot, apply: Apply, field_manager: &str) {
        let params = PatchParams::apply(field_manager).force();
        match self.api(apply.kind).patch(&apply.name, &params, &Patch::Apply(&apply.body)).await {
            Ok(object) => snapshot.insert(object),
            Err(e) => {
                let failure = self.failure("applying", apply.kind, &apply.name, &e);
                let reason = failure.reason.clone().unwrap_or_else(|| "ApplyFailed".to_string());
                self.problems.add(&apply.subject, reason, format!("{failure}; revgate retries with backoff"));
                self.failures.push(failure);
            }
        }
    }

    async fn delete(&mut self, snapshot: &mut Snapshot, delete: Delete) {
        match self.api(delete.kind).delete(&delete.name, &DeleteParams::background()).await {
            Ok(_) => {
                snapshot.remove(delete.kind, &delete.name);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                snapshot.remove(delete.kind, &delete.name);
            }
            Err(e) => {
                let failure = self.failure("deleting", delete.kind, &delete.name, &e);
                let reason = failure.reason.clone().unwrap_or_else(|| "DeleteFailed".to_string());
                self.problems.add(&delete.subject, reason, format!("{failure}; revgate retries with backoff"));
                self.failures.push(failure);
            }
        }
    }

    async fn status(&mut self, status: StatusWrite) {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self.api(status.kind).patch_status(&status.name, &params, &Patch::Apply(&status.body)).await {
            Ok(_) => {}
            // Deleted since the snapshot was taken: nothing left to report on.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                let failure = self.failure("writing the status of", status.kind, &status.name, &e);
                self.failures.push(failure);
            }
        }
    }

    fn failure(&self, action: &'static str, kind: Kind, name: &str, error: &kube::Error) -> WriteFailure {
        let (code, reason, message) = match error {
            kube::Error::Api(e) => {
                let reason = (!e.reason.is_empty()).then(|| e.reason.clone());
                let message = match &reason {
                    Some(r) => format!("{} {r}: {}", e.code, e.message),
                    None => format!("{}: {}", e.code, e.message),
                };
                (Some(e.code), reason, message)
            }
            other => (None, None, format!("the API server did not answer: {other}")),
        };
        WriteFailure {
            action,
            kind,
            namespace: self.namespace.to_string(),
            name: name.to_string(),
            code,
            reason,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        let delays: Vec<u64> = (0..11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
