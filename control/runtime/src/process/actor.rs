//! The one owner of every instance.
//!
//! The actor handles one message at a time — a command from the handle or
//! an event from a supervisor or a restart timer — then converges each
//! touched revision towards its desired count and republishes the states if
//! they changed. Nothing here blocks or awaits except the receive itself;
//! the slow parts (spawning, probing, signalling, waiting) belong to the
//! supervisors.
//!
//! The actor also keeps the runtime record: a process is recorded when its
//! supervisor reports it spawned and forgotten when it reports it reaped,
//! so that the record lists exactly the processes that may run.
//!
//! Events carry a [`ProcessId`]: an instance's `run` grows with every
//! process it starts, so an event of a process that was replaced meanwhile
//! cannot touch its successor.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use revgate_model::plan::{Endpoint, ObjectKey};
use tokio::sync::{mpsc, oneshot, watch};

use super::supervisor::{self, Exit, Stop, Supervised, seconds};
use super::{InstanceCounts, InstanceCountsByRevision, ProcessConfig};
use crate::backoff::Backoff;
use crate::images::ImageMap;
use crate::launch::{self, Launch, NotRunnable};
use crate::record::{self, ProcessRecord, RecordedProcess};
use crate::{InstanceStatus, Phase, RevisionState, RevisionStates, Workload, reason};

/// What the handle asks for.
#[derive(Debug)]
pub(super) enum Command {
    Scale { workload: Workload, replicas: u32 },
    Remove { key: ObjectKey },
    Shutdown { reply: oneshot::Sender<()> },
}

/// One process of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProcessId {
    pub(super) revision: ObjectKey,
    pub(super) instance: u64,
    pub(super) run: u64,
}

/// What supervisors and timers report. `start_time` in `Spawned` tells the
/// process apart in the runtime record (`None` if it exited before it could be read).
#[derive(Debug)]
pub(super) enum Event {
    Spawned { process: ProcessId, pid: Option<u32>, start_time: Option<u64>, at_unix_ms: u64 },
    Readiness { process: ProcessId, ready: bool, at_unix_ms: u64 },
    Exited { process: ProcessId, exit: Exit },
    RestartDue { process: ProcessId },
}

struct Actor {
    ctx: Context,
    revisions: BTreeMap<ObjectKey, Revision>,
    states: watch::Sender<Arc<RevisionStates>>,
    /// Revisions a command or event touched since the last publish: only
    /// their states are recomputed, so a change costs what it changes.
    dirty: BTreeSet<ObjectKey>,
    /// Set once shutdown began: nothing starts any more.
    shutting_down: bool,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
}

/// What starting and stopping instances needs, apart from the revisions.
struct Context {
    config: ProcessConfig,
    events: mpsc::UnboundedSender<Event>,
    /// Ports handed to instances whose process has not been reaped; a port is
    /// free between our probe bind and the process's own bind, so without this
    /// two instances started together could be handed the same one.
    ports: BTreeSet<u16>,
    /// Every process that may run, for the next start should this one be killed.
    record: ProcessRecord,
    /// Starts, crashes and restarts per revision; only the actor writes.
    counts: watch::Sender<Arc<InstanceCountsByRevision>>,
}

impl Context {
    /// Bumps one of `key`'s instance counters.
    fn count(&self, key: &ObjectKey, bump: impl FnOnce(&mut InstanceCounts)) {
        self.counts.send_modify(|counts| bump(Arc::make_mut(counts).entry(key.clone()).or_default()));
    }
}

struct Revision {
    workload: Workload,
    launch: Result<Arc<Launch>, NotRunnable>,
    desired: u32,
    /// Deleted: stopping what runs, then forgotten.
    removed: bool,
    /// By sequence number, oldest first.
    instances: BTreeMap<u64, Instance>,
    next_instance: u64,
}

struct Instance {
    /// Numbers the instances of a revision in start order.
    seq: u64,
    id: String,
    log: PathBuf,
    phase: Phase,
    port: u16,
    pid: Option<u32>,
    restarts: u32,
    started_unix_ms: Option<u64>,
    ready_unix_ms: Option<u64>,
    /// Since when it has been ready without interruption (for the backoff reset).
    ready_since: Option<Instant>,
    /// Incremented with every process started for this instance.
    run: u64,
    backoff: Backoff,
    /// Tells the supervisor to stop; `Some` exactly while a supervisor runs.
    stop: Option<watch::Sender<Option<Stop>>>,
    /// Why the last process ended unexpectedly: `(reason, message)`, until it is ready again.
    failure: Option<(&'static str, String)>,
}

/// Stops what `leftovers` lists (processes a killed runtime left running),
/// then owns every instance until shutdown completes (or every handle is
/// dropped and every process has stopped).
pub(super) async fn run(
    config: ProcessConfig,
    mut record: ProcessRecord,
    leftovers: Vec<RecordedProcess>,
    states: watch::Sender<Arc<RevisionStates>>,
    counts: watch::Sender<Arc<InstanceCountsByRevision>>,
    commands: mpsc::UnboundedReceiver<Command>,
) {
    // Before anything starts: a new instance must not be mistaken for an old one,
    // and the old ones must not keep running next to it.
    if !leftovers.is_empty() {
        let reaped = record::reap(leftovers, record::REAP_GRACE).await;
        tracing::info!(
            record = %record.path().display(),
            reaped = reaped.len(),
            "process runtime: stopped the instances a killed revgate left running"
        );
    }
    record.clear();
    let (events, events_rx) = mpsc::unbounded_channel();
    let actor = Actor {
        ctx: Context { config, events, ports: BTreeSet::new(), record, counts },
        revisions: BTreeMap::new(),
        states,
        dirty: BTreeSet::new(),
        shutting_down: false,
        shutdown_waiters: Vec::new(),
    };
    actor.run(commands, events_rx).await;
}

impl Actor {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, mut events: mpsc::UnboundedReceiver<Event>) {
        let mut commands_open = true;
        loop {
            tokio::select! {
                command = commands.recv(), if commands_open => match command {
                    Some(command) => self.on_command(command),
                    None => {
                        // Every handle was dropped: stop what runs, nobody waits for it.
                        commands_open = false;
                        self.begin_shutdown();
                    }
                },
                // Never `None`: `self.ctx.events` is a sender.
                Some(event) = events.recv() => self.on_event(event),
            }
            // What else is already queued joins this publish: at start, one
            // scale per revision arrives at once.
            for _ in 0..MAX_BATCH {
                if let Ok(event) = events.try_recv() {
                    self.on_event(event);
                } else if let (true, Ok(command)) = (commands_open, commands.try_recv()) {
                    self.on_command(command);
                } else {
                    break;
                }
            }
            self.publish();
            if self.shutting_down && self.revisions.values().all(|r| r.instances.is_empty()) {
                self.ctx.record.clear();
                for waiter in self.shutdown_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                tracing::info!("process runtime: every instance stopped");
                return;
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match &command {
            Command::Scale { workload, .. } => {
                self.dirty.insert(workload.key.clone());
            }
            Command::Remove { key } => {
                self.dirty.insert(key.clone());
            }
            Command::Shutdown { .. } => {}
        }
        match command {
            Command::Scale { workload, replicas } => {
                if self.shutting_down {
                    tracing::debug!(revision = %workload.key, replicas, "process runtime: shutting down, not scaling");
                    return;
                }
                let key = workload.key.clone();
                let images = &self.ctx.config.images;
                match self.revisions.get_mut(&key) {
                    // Revisions are immutable, so this plans once per revision; should a spec
                    // change anyway, it applies to processes started from now on.
                    Some(revision) if revision.workload != workload => revision.replan(workload, images),
                    Some(_) => {}
                    None => {
                        self.revisions.insert(key.clone(), Revision::new(workload, images));
                    }
                }
                let Some(revision) = self.revisions.get_mut(&key) else { return };
                revision.removed = false;
                revision.desired = replicas;
                self.converge(&key);
            }
            Command::Remove { key } => {
                if let Some(revision) = self.revisions.get_mut(&key) {
                    revision.removed = true;
                    revision.desired = 0;
                    self.converge(&key);
                }
            }
            Command::Shutdown { reply } => {
                self.shutdown_waiters.push(reply);
                self.begin_shutdown();
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if !self.shutting_down {
            tracing::info!("process runtime: stopping every instance");
        }
        self.shutting_down = true;
        self.dirty.extend(self.revisions.keys().cloned());
        let now = Instant::now();
        for (key, revision) in &mut self.revisions {
            let all: Vec<u64> = revision.instances.keys().copied().collect();
            for seq in all {
                // No drain: the gateway goes away too. Repeated for instances already
                // draining, so that they skip the rest of their drain.
                revision.stop(key, seq, now, &self.ctx);
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        let process = match &event {
            Event::Spawned { process, .. }
            | Event::Readiness { process, .. }
            | Event::Exited { process, .. }
            | Event::RestartDue { process } => process.clone(),
        };
        self.dirty.insert(process.revision.clone());
        let Some(revision) = self.revisions.get_mut(&process.revision) else { return };
        let key = &process.revision;
        let Some(instance) = revision.instances.get_mut(&process.instance).filter(|i| i.run == process.run) else {
            return;
        };
        match event {
            Event::Spawned { pid, start_time, at_unix_ms, .. } => {
                if let (Some(pid), Some(start_time)) = (pid, start_time) {
                    let what = format!("instance {} of {key}", instance.id);
                    self.ctx.record.insert(RecordedProcess { what, pid, pgid: pid, start_time });
                }
                instance.pid = pid;
                instance.started_unix_ms = Some(at_unix_ms);
            }
            Event::Readiness { ready, at_unix_ms, .. } => {
                if !matches!(instance.phase, Phase::Starting | Phase::Ready) {
                    return;
                }
                if ready {
                    instance.phase = Phase::Ready;
                    instance.ready_since = Some(Instant::now());
                    instance.failure = None;
                    if instance.ready_unix_ms.is_none() {
                        instance.ready_unix_ms = Some(at_unix_ms);
                        let cold_start = instance.started_unix_ms.map(|started| at_unix_ms.saturating_sub(started));
                        tracing::info!(revision = %key, instance = %instance.id, port = instance.port, cold_start_ms = cold_start, "instance ready");
                    } else {
                        tracing::info!(revision = %key, instance = %instance.id, "instance ready again");
                    }
                } else {
                    instance.phase = Phase::Starting;
                    instance.ready_since = None;
                    tracing::warn!(revision = %key, instance = %instance.id, "instance failed its readiness probe");
                }
            }
            Event::Exited { exit, .. } => {
                self.ctx.ports.remove(&instance.port);
                if let Some(pid) = instance.pid {
                    self.ctx.record.remove(pid);
                }
                instance.stop = None;
                instance.pid = None;
                if instance.phase == Phase::Draining || self.shutting_down {
                    tracing::info!(revision = %key, instance = %instance.id, exit = %exit.description, "instance stopped");
                    revision.instances.remove(&process.instance);
                } else {
                    instance.crashed(key, &exit, &self.ctx);
                }
            }
            Event::RestartDue { .. } => {
                if instance.phase == Phase::CrashLoop
                    && !self.shutting_down
                    && let Ok(launch) = &revision.launch
                {
                    instance.restarts += 1;
                    self.ctx.count(key, |c| c.restarts = c.restarts.saturating_add(1));
                    instance.spawn(key, Arc::clone(launch), &mut self.ctx);
                }
            }
        }
        let key = process.revision;
        self.converge(&key);
    }

    /// Starts or stops instances of `key` until its desired count runs, and
    /// forgets it once removed and empty.
    fn converge(&mut self, key: &ObjectKey) {
        let Some(revision) = self.revisions.get_mut(key) else { return };
        if !self.shutting_down {
            let wanted = if revision.launch.is_ok() { revision.desired as usize } else { 0 };
            let live: Vec<&Instance> = revision.instances.values().filter(|i| i.phase != Phase::Draining).collect();
            if live.len() > wanted {
                let victims = victims(&live, live.len() - wanted);
                let drain_until = Instant::now() + self.ctx.config.drain;
                for seq in victims {
                    revision.stop(key, seq, drain_until, &self.ctx);
                }
            } else if let Some(launch) = revision.launch.as_ref().ok().cloned() {
                for _ in live.len()..wanted {
                    revision.add_instance(key, Arc::clone(&launch), &mut self.ctx);
                }
            }
        }
        if revision.removed && revision.instances.is_empty() {
            self.revisions.remove(key);
            self.ctx.counts.send_if_modified(|counts| Arc::make_mut(counts).remove(key).is_some());
        }
    }

    /// Publishes the states of the revisions touched since the last time.
    fn publish(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let host = self.ctx.config.host.to_string();
        let dirty = std::mem::take(&mut self.dirty);
        let revisions = &self.revisions;
        self.states.send_if_modified(|current| {
            let mut changed = false;
            for key in dirty {
                let state = revisions.get(&key).filter(|r| !r.removed).map(|r| r.state(&host));
                if current.get(&key) == state.as_ref() {
                    continue;
                }
                // Readers hold the last value: the first change copies it once.
                let states = Arc::make_mut(current);
                match state {
                    Some(state) => states.insert(key, state),
                    None => states.remove(&key),
                };
                changed = true;
            }
            changed
        });
    }
}

/// The most commands and events handled together before their states are
/// published.
const MAX_BATCH: usize = 4096;

/// How to start instances of `workload`, logging what was ignored or is wrong.
fn plan(workload: &Workload, images: &ImageMap) -> Result<Arc<Launch>, NotRunnable> {
    let launch = launch::plan(workload, images).map(Arc::new);
    match &launch {
        Ok(launch) => {
            for warning in &launch.warnings {
                tracing::warn!(revision = %workload.key, "{warning}");
            }
        }
        Err(not_runnable) => {
            tracing::warn!(revision = %workload.key, reason = not_runnable.reason, "{}", not_runnable.message);
        }
    }
    launch
}

/// Which `count` of the running instances to stop: those doing the least
/// good first — crashed, then not ready yet — and among equals the newest,
/// so that the long-running, warmed-up ones stay.
fn victims(live: &[&Instance], count: usize) -> Vec<u64> {
    let rank = |phase: Phase| match phase {
        Phase::CrashLoop => 0,
        Phase::Starting => 1,
        _ => 2,
    };
    let mut ordered: Vec<(u8, Reverse<u64>)> =
        live.iter().map(|instance| (rank(instance.phase), Reverse(instance.seq))).collect();
    ordered.sort();
    ordered.into_iter().take(count).map(|(_, Reverse(seq))| seq).collect()
}

impl Revision {
    fn new(workload: Workload, images: &ImageMap) -> Self {
        let launch = plan(&workload, images);
        Self { workload, launch, desired: 0, removed: false, instances: BTreeMap::new(), next_instance: 0 }
    }

    fn replan(&mut self, workload: Workload, images: &ImageMap) {
        self.launch = plan(&workload, images);
        self.workload = workload;
    }

    fn add_instance(&mut self, key: &ObjectKey, launch: Arc<Launch>, ctx: &mut Context) {
        self.next_instance += 1;
        let seq = self.next_instance;
        let id = format!("{}-{seq}", key.name);
        let log = ctx.config.log_dir.join(&key.namespace).join(&key.name).join(format!("{id}.log"));
        let mut instance = Instance {
            seq,
            id,
            log,
            phase: Phase::Starting,
            port: 0,
            pid: None,
            restarts: 0,
            started_unix_ms: None,
            ready_unix_ms: None,
            ready_since: None,
            run: 0,
            backoff: Backoff::default(),
            stop: None,
            failure: None,
        };
        instance.spawn(key, launch, ctx);
        self.instances.insert(seq, instance);
    }

    /// Takes instance `seq` out of rotation now and has its process stopped
    /// at `drain_until`; an instance without a process is forgotten at once.
    fn stop(&mut self, key: &ObjectKey, seq: u64, drain_until: Instant, ctx: &Context) {
        let Some(instance) = self.instances.get_mut(&seq) else { return };
        match &instance.stop {
            Some(stop) => {
                if instance.phase != Phase::Draining {
                    tracing::info!(revision = %key, instance = %instance.id, "instance draining");
                }
                instance.phase = Phase::Draining;
                instance.ready_since = None;
                let grace = ctx.config.termination_grace;
                stop.send_modify(|current| {
                    // A later request can only hurry a stop, never delay it.
                    let drain_until = current.map_or(drain_until, |earlier| earlier.drain_until.min(drain_until));
                    *current = Some(Stop { drain_until, grace });
                });
            }
            // Its port went back when its last process was reaped.
            None => {
                self.instances.remove(&seq);
            }
        }
    }

    fn state(&self, host: &str) -> RevisionState {
        let instances: Vec<InstanceStatus> = self.instances.values().map(Instance::status).collect();
        let mut ready: Vec<Endpoint> = instances
            .iter()
            .filter(|i| i.phase == Phase::Ready)
            .map(|i| Endpoint { host: host.to_string(), port: i.port })
            .collect();
        ready.sort();
        let (reason, message) = match &self.launch {
            Err(not_runnable) => (Some(not_runnable.reason.to_string()), Some(not_runnable.message.clone())),
            Ok(_) => match self.instances.values().find_map(|i| i.failure.as_ref()) {
                Some((reason, message)) => (Some(reason.to_string()), Some(message.clone())),
                None => (None, None),
            },
        };
        RevisionState { desired: self.desired, ready, instances, reason, message }
    }
}

impl Instance {
    /// Starts a new process for this instance on a fresh port.
    fn spawn(&mut self, key: &ObjectKey, launch: Arc<Launch>, ctx: &mut Context) {
        self.run += 1;
        ctx.count(key, |c| c.starts = c.starts.saturating_add(1));
        self.phase = Phase::Starting;
        self.pid = None;
        self.started_unix_ms = None;
        self.ready_unix_ms = None;
        self.ready_since = None;
        let process = ProcessId { revision: key.clone(), instance: self.seq, run: self.run };
        let port = match free_port(ctx) {
            Ok(port) => port,
            Err(e) => {
                // Handled like any failed start: retried with backoff.
                let description = format!(
                    "no free port on {}: {e}; the runtime's host must be an address of this machine",
                    ctx.config.host
                );
                self.crashed(key, &Exit { description, started: false }, ctx);
                return;
            }
        };
        self.port = port;
        let (stop, stop_rx) = watch::channel(None);
        self.stop = Some(stop);
        tracing::debug!(revision = %key, instance = %self.id, port, "starting instance");
        tokio::spawn(supervisor::supervise(Supervised {
            process,
            launch,
            addr: SocketAddr::new(ctx.config.host, port),
            log: self.log.clone(),
            events: ctx.events.clone(),
            stop: stop_rx,
        }));
    }

    /// The process ended while wanted: wait, then start it again.
    fn crashed(&mut self, key: &ObjectKey, exit: &Exit, ctx: &Context) {
        ctx.count(key, |c| c.crashes = c.crashes.saturating_add(1));
        let ready_for = self.ready_since.map(|since| since.elapsed());
        let delay = self.backoff.on_crash(ready_for);
        self.phase = Phase::CrashLoop;
        self.ready_since = None;
        let log = self.log.display();
        let restart = self.restarts + 1;
        let (reason, message) = if exit.started {
            (
                reason::CRASH_LOOP_BACK_OFF,
                format!(
                    "revision {key}: instance {} exited with {}; restart {restart} in {}; its output is in {log}",
                    self.id,
                    exit.description,
                    seconds(delay),
                ),
            )
        } else {
            (
                reason::START_ERROR,
                format!(
                    "revision {key}: instance {} could not start: {}; retrying in {} (details in {log})",
                    self.id,
                    exit.description,
                    seconds(delay),
                ),
            )
        };
        tracing::warn!(revision = %key, instance = %self.id, reason, "{message}");
        self.failure = Some((reason, message));

        let events = ctx.events.clone();
        let process = ProcessId { revision: key.clone(), instance: self.seq, run: self.run };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::RestartDue { process });
        });
    }

    fn status(&self) -> InstanceStatus {
        InstanceStatus {
            id: self.id.clone(),
            port: self.port,
            pid: self.pid,
            phase: self.phase,
            restarts: self.restarts,
            started_unix_ms: self.started_unix_ms,
            ready_unix_ms: self.ready_unix_ms,
            log: self.log.clone(),
        }
    }
}

/// A port that nothing listens on right now: bind port 0, read it, release it.
fn free_port(ctx: &mut Context) -> std::io::Result<u16> {
    for _ in 0..16 {
        let port = std::net::TcpListener::bind(SocketAddr::new(ctx.config.host, 0))?.local_addr()?.port();
        if ctx.ports.insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "the system keeps handing out ports already in use"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(seq: u64, phase: Phase) -> Instance {
        Instance {
            seq,
            id: format!("r-{seq}"),
            log: PathBuf::new(),
            phase,
            port: 0,
            pid: None,
            restarts: 0,
            started_unix_ms: None,
            ready_unix_ms: None,
            ready_since: None,
            run: 1,
            backoff: Backoff::default(),
            stop: None,
            failure: None,
        }
    }

    #[test]
    fn scale_down_stops_crashed_then_unready_then_newest() {
        let instances = [
            instance(1, Phase::Ready),
            instance(2, Phase::Starting),
            instance(3, Phase::Ready),
            instance(4, Phase::CrashLoop),
            instance(5, Phase::Starting),
        ];
        let live: Vec<&Instance> = instances.iter().collect();
        // (how many to stop, which)
        let cases: [(usize, &[u64]); 6] =
            [(0, &[]), (1, &[4]), (2, &[4, 5]), (3, &[4, 5, 2]), (4, &[4, 5, 2, 3]), (9, &[4, 5, 2, 3, 1])];
        for (count, want) in cases {
            assert_eq!(victims(&live, count), want, "stopping {count}");
        }
    }
}
