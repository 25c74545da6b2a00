//! The contract between the control plane and the runtimes that run
//! revisions: the object-safe [`Runtime`] trait, the [`Workload`] it is asked
//! to run, and the [`RevisionStates`] it publishes.
//!
//! It lives apart from every implementation so that each side compiles only
//! what it uses: the process runtime (`revgate-runtime`, with its process
//! machinery) and the Kubernetes runtime (`revgate-kube`, with its API
//! client) both implement this trait, and the autoscaler drives either
//! through it, without one pulling in the other's dependencies.
//!
//! Asking is cheap and never blocks ([`Runtime::scale`], [`Runtime::remove`]
//! record a wish); a runtime converges in the background and publishes the
//! state of every revision it knows on a `watch` channel
//! ([`Runtime::states`]), which the control plane turns into endpoints and
//! Knative status.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use revgate_model::plan::{Endpoint, ObjectKey};
use revgate_model::resources::RevisionSpec;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What a runtime needs to run one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The revision's namespace and name.
    pub key: ObjectKey,
    /// The Service that owns the revision, if any (`K_SERVICE`).
    pub service: Option<String>,
    /// The Configuration that created the revision (`K_CONFIGURATION`).
    pub configuration: String,
    pub spec: RevisionSpec,
}

/// Every revision a runtime knows, by key; what [`Runtime::states`] publishes.
pub type RevisionStates = BTreeMap<ObjectKey, RevisionState>;

/// One revision as the runtime sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionState {
    /// The count last asked for with [`Runtime::scale`].
    pub desired: u32,
    /// Where traffic can go: instances whose readiness passed and that are
    /// not draining. Sorted.
    pub ready: Vec<Endpoint>,
    /// Every instance, running, draining or waiting for a restart, oldest first.
    pub instances: Vec<InstanceStatus>,
    /// Why the revision does not run as asked, in Knative's CamelCase style
    /// (see [`reason`]); `None` when nothing is wrong.
    pub reason: Option<String>,
    /// What is wrong, naming the revision and the fix.
    pub message: Option<String>,
}

/// One instance (one process at a time; a crashed instance is restarted in place).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// `<revision>-<n>`, unique within the runtime's lifetime.
    pub id: String,
    /// The `PORT` of the current (or last) process, on the runtime's host.
    pub port: u16,
    /// The current process, while one runs.
    pub pid: Option<u32>,
    pub phase: Phase,
    /// How many times the process was restarted after a crash.
    pub restarts: u32,
    /// When the current process started (milliseconds since the Unix epoch).
    pub started_unix_ms: Option<u64>,
    /// When the current process first passed readiness; minus `started_unix_ms`, its cold start.
    pub ready_unix_ms: Option<u64>,
    /// Where the process's stdout and stderr go.
    pub log: PathBuf,
}

/// Where an instance is in its life.
///
/// | phase | process | in `ready` | next |
/// |---|---|---|---|
/// | `Starting` | starting or running, readiness not passing (not yet, or no longer) | no | `Ready`, `CrashLoop`, `Draining` |
/// | `Ready` | running, readiness passing | yes | `Starting` (probe failures), `CrashLoop`, `Draining` |
/// | `Draining` | being stopped: out of rotation, then SIGTERM, then SIGKILL | no | gone once reaped |
/// | `CrashLoop` | exited unexpectedly; restarted after a backoff | no | `Starting`, or gone if scaled down |
/// | `Stopped` | exited after a stop | no | gone |
///
/// The process runtime forgets an instance as soon as its stopped process is
/// reaped, so it never publishes `Stopped`; the phase exists for runtimes
/// that keep stopped instances around for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    Starting,
    Ready,
    Draining,
    Stopped,
    CrashLoop,
}

/// The reasons a [`RevisionState`] can carry.
pub mod reason {
    /// The serving container has an image that the image map does not know, and no `command`.
    pub const IMAGE_NOT_MAPPED: &str = "ImageNotMapped";
    /// An `env` entry uses `valueFrom`, which has no meaning without Kubernetes.
    pub const UNSUPPORTED_ENV: &str = "UnsupportedEnv";
    /// The revision has no container at all.
    pub const CONTAINER_MISSING: &str = "ContainerMissing";
    /// A process exited while it was wanted; it is restarted after a growing delay.
    pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
    /// A process could not be started at all (missing program, no permission, no free port…);
    /// retried with the same backoff as a crash.
    pub const START_ERROR: &str = "StartError";
}

/// Runs revisions. Object safe: the control plane holds an `Arc<dyn Runtime>`.
pub trait Runtime: Send + Sync + std::fmt::Debug + 'static {
    /// Run `replicas` instances of the workload (0 stops them all).
    ///
    /// Non-blocking: it records the wish; the runtime converges in the background.
    fn scale(&self, workload: &Workload, replicas: u32);

    /// The revision was deleted: stop its instances and forget it.
    fn remove(&self, key: &ObjectKey);

    /// The current state of every revision the runtime knows, republished on
    /// every change (start, ready, drain, exit).
    fn states(&self) -> watch::Receiver<Arc<RevisionStates>>;

    /// Stop everything gracefully and wait until no instance process is left.
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}
