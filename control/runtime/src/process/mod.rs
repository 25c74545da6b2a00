//! The local process runtime: every instance of a revision is a process on
//! this machine, the default of `revgate up` when there is no Kubernetes.
//!
//! [`ProcessRuntime`] is a cheap handle. One task, the actor (`actor`), owns
//! every instance and is the only writer of the published states; `scale`
//! and `remove` send it commands. Each running process has a supervisor task
//! (`supervisor`) that spawns it, probes its readiness, signals and reaps
//! it, and reports back to the actor as events; it owns the OS process
//! handle and nothing else.
//!
//! The actor keeps the runtime record (`<log_dir>/instances.json`, see
//! [`crate::record`]) in step with the processes that run, and its first
//! act is to stop whatever an earlier runtime on the same directory left
//! running when it was killed.

mod actor;
mod supervisor;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use revgate_model::plan::ObjectKey;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::RuntimeError;
use crate::images::ImageMap;
use crate::record::ProcessRecord;
use crate::{RevisionStates, Runtime, Workload};

use actor::Command;

/// What happened to one revision's instances since the runtime started (or
/// since the revision came back after a removal): counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceCounts {
    /// Processes started, restarts included.
    pub starts: u64,
    /// Processes that ended, or failed to start, while wanted.
    pub crashes: u64,
    /// Crashed instances started again.
    pub restarts: u64,
}

/// [`InstanceCounts`] of every revision the runtime knows.
pub type InstanceCountsByRevision = std::collections::BTreeMap<ObjectKey, InstanceCounts>;

/// How long a stopping instance keeps running, out of rotation, before SIGTERM.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(2);
/// The runtime record's file name in the log directory. Namespaces are DNS
/// labels, without dots, so it never meets a namespace's log directory.
pub const RECORD_FILE: &str = "instances.json";

/// How long a process may take to exit after SIGTERM before SIGKILL
/// (Kubernetes' `terminationGracePeriodSeconds` default).
pub const DEFAULT_TERMINATION_GRACE: Duration = Duration::from_secs(30);

/// Settings of the process runtime, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Which program stands for which image.
    pub images: ImageMap,
    /// Instance logs go to `<log_dir>/<namespace>/<revision>/<instance>.log`,
    /// and the runtime record to `<log_dir>/instances.json` ([`RECORD_FILE`]).
    pub log_dir: PathBuf,
    /// Time between leaving the ready endpoints and SIGTERM, for the gateway to
    /// stop sending (skipped at shutdown).
    pub drain: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub termination_grace: Duration,
    /// Where instances listen and are probed; endpoints name this address.
    pub host: IpAddr,
}

impl ProcessConfig {
    /// The defaults, with these images and logs.
    pub fn new(images: ImageMap, log_dir: impl Into<PathBuf>) -> Self {
        Self { images, log_dir: log_dir.into(), ..Self::default() }
    }
}

impl Default for ProcessConfig {
    /// No image mapped, logs under the system's temporary directory, drain 2 s,
    /// grace 30 s, instances on 127.0.0.1.
    fn default() -> Self {
        Self {
            images: ImageMap::empty(),
            log_dir: std::env::temp_dir().join("revgate-logs"),
            drain: DEFAULT_DRAIN,
            termination_grace: DEFAULT_TERMINATION_GRACE,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// Runs revisions as local processes: a cheap handle to the task that owns
/// them (see the crate docs for what each process gets and where its output goes).
///
/// Dropping the handle without [`Runtime::shutdown`] still stops every
/// process gracefully in the background, as long as the Tokio runtime lives;
/// if it does not, each process is killed when its supervisor is dropped.
/// If revgate itself is killed (SIGKILL), nothing of it runs to stop them:
/// the next runtime started on the same log directory stops them first,
/// from the runtime record.
#[derive(Debug)]
pub struct ProcessRuntime {
    commands: mpsc::UnboundedSender<Command>,
    states: watch::Receiver<Arc<RevisionStates>>,
    counts: watch::Receiver<Arc<InstanceCountsByRevision>>,
}

impl ProcessRuntime {
    /// Starts the actor on the current Tokio runtime. It first stops what a
    /// killed runtime on the same log directory left running; commands sent
    /// meanwhile wait for it.
    ///
    /// Fails if another runtime, in this process or another, uses the same
    /// log directory.
    pub fn start(mut config: ProcessConfig) -> Result<Self, RuntimeError> {
        let tokio = tokio::runtime::Handle::try_current().map_err(|_| RuntimeError::NoAsyncRuntime)?;
        let log_dir_error = |source| RuntimeError::LogDir { path: config.log_dir.clone(), source };
        // Absolute, so that the log paths in states and messages can be opened from anywhere.
        let log_dir = std::path::absolute(&config.log_dir).map_err(log_dir_error)?;
        std::fs::create_dir_all(&log_dir).map_err(log_dir_error)?;
        let (record, leftovers) = ProcessRecord::open(&log_dir.join(RECORD_FILE))?;
        config.log_dir = log_dir;

        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (states_tx, states) = watch::channel(Arc::default());
        let (counts_tx, counts) = watch::channel(Arc::default());
        tokio.spawn(actor::run(config, record, leftovers, states_tx, counts_tx, commands_rx));
        Ok(Self { commands, states, counts })
    }

    /// Starts, crashes and restarts per revision, published by the actor.
    pub fn instance_counts(&self) -> watch::Receiver<Arc<InstanceCountsByRevision>> {
        self.counts.clone()
    }

    fn send(&self, command: Command) {
        if self.commands.send(command).is_err() {
            tracing::debug!("process runtime: ignoring a request after shutdown");
        }
    }
}

impl Runtime for ProcessRuntime {
    fn scale(&self, workload: &Workload, replicas: u32) {
        self.send(Command::Scale { workload: workload.clone(), replicas });
    }

    fn remove(&self, key: &ObjectKey) {
        self.send(Command::Remove { key: key.clone() });
    }

    fn states(&self) -> watch::Receiver<Arc<RevisionStates>> {
        self.states.clone()
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let (reply, done) = oneshot::channel();
        let sent = self.commands.send(Command::Shutdown { reply }).is_ok();
        Box::pin(async move {
            // An error means the actor is gone, and with it every process.
            if sent {
                let _ = done.await;
            }
        })
    }
}
