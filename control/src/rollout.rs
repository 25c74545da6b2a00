//! The rollout driver: the one owner of every Route's rollout state in the
//! standalone control plane.
//!
//! ```text
//! watch<Arc<World>> ─┐                                 ┌─▶ watch<Arc<Rollouts>> ─▶ ControlPlane (plan_with_rollouts)
//! observed (ACKs) ───┼─▶ Driver::run (tick, 1 s) ──────┤                          └▶ views, `revgate rollout status`
//! gateway figures ───┤    goal ▸ step ▸ record ▸ judge └─▶ RolloutStore (one row per Route)
//! controls (mpsc) ───┘
//! ```
//!
//! Each tick computes, per Route, Knative's goal and merges it with the
//! previous state (`revgate_model::rollout::orchestrator`), adds what the
//! gateways measured of each candidate since the last tick, lets the gates
//! judge, stores what changed and publishes the states. The owner task
//! turns them into the plan it sends to Envoy; nothing calls back.
//!
//! Figures come from the activation service: the cumulative counters of
//! the filters' reports, from every worker of every gateway. A
//! [`StepSampler`] keeps each candidate's counters as they were when its
//! step began; the step's measurement is the difference — exact request and
//! 5xx counts, and the p99 of all the step's requests (from the merged
//! histograms, as Prometheus's `histogram_quantile` computes it) of their
//! time without the hold, so time held before a cold start is not counted
//! as the candidate's latency. A restarted control plane counts the step
//! from its own start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use revgate_model::meta::Condition;
use revgate_model::plan::ObjectKey;
use revgate_model::rollout::controls::{self, Control, ControlRefused};
use revgate_model::rollout::orchestrator::{advance, goal, measure, observe_ready, step, step_index};
use revgate_model::rollout::served::{condition, overlay_route_status};
use revgate_model::rollout::{AbortCause, Phase, RolloutSpec, Rollouts, RouteRollout, StepMeasurement};
use revgate_model::{IngressState, Observed, Route, Service, World};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::activation::ActivationService;
use crate::metrics::{CountersSnapshot, RevisionCounters, RolloutMetrics};
use crate::store::{RolloutStore, StoreError};

/// How often rollouts are judged and stepped: a breach is acted on within
/// one tick of being measured.
pub const TICK: Duration = Duration::from_secs(1);

/// The annotation a Route's view carries with its rollout in one line
/// (`37% → hello-00002`, `aborted: 5xx 0.31 > 0.05`, `completed`); the
/// `ROLLOUT` column of `revgate get route`. Shown, never stored.
pub const ROLLOUT_SUMMARY_ANNOTATION: &str = "revgate.dev/rollout";

/// Why a rollout control failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("route {0} not found; `revgate get route -A` lists the routes")]
    NotFound(ObjectKey),
    #[error(
        "route {0} has no rollout: without a `serving.knative.dev/rollout-duration` annotation (or the \
         config-network key `rollout-duration`) a new revision takes its traffic at once"
    )]
    NoRollout(ObjectKey),
    #[error("{0}")]
    Refused(#[from] ControlRefused),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the rollout driver is not running (the control plane is shutting down, or runs in cluster mode)")]
    ShuttingDown,
}

/// Where the driver reads the gateways' per-revision counters.
pub trait Figures: Send + Sync + 'static {
    fn counters(&self) -> CountersSnapshot;
}

impl Figures for ActivationService {
    fn counters(&self) -> CountersSnapshot {
        ActivationService::counters(self)
    }
}

/// Measures each rollout candidate's current step from the gateways'
/// cumulative counters: what was counted since the step began.
#[derive(Debug, Default)]
pub struct StepSampler {
    /// Per candidate: the step it is in and its counters when it began.
    baselines: BTreeMap<ObjectKey, (usize, Arc<RevisionCounters>)>,
}

impl StepSampler {
    /// `revision`'s measurement in step `step` so far, given its counters
    /// `now`. A step seen for the first time begins now.
    pub fn measure(&mut self, revision: &ObjectKey, step: usize, now: &Arc<RevisionCounters>) -> StepMeasurement {
        self.begin(revision, step, now);
        let Some((_, baseline)) = self.baselines.get(revision) else { return StepMeasurement::default() };
        let step = now.saturating_sub(baseline);
        StepMeasurement {
            requests: step.requests(),
            errors_5xx: step.errors_5xx(),
            p99_ms: step.duration.quantile(0.99).map(|seconds| seconds * 1e3),
        }
    }

    /// Marks that `revision` is in step `step`: if that is a new step, it
    /// begins with the counters `now`.
    pub fn begin(&mut self, revision: &ObjectKey, step: usize, now: &Arc<RevisionCounters>) {
        match self.baselines.get_mut(revision) {
            Some((seen, _)) if *seen == step => {}
            _ => {
                self.baselines.insert(revision.clone(), (step, now.clone()));
            }
        }
    }

    /// Forgets the revisions that are no longer candidates.
    pub fn retain(&mut self, candidate: impl Fn(&ObjectKey) -> bool) {
        self.baselines.retain(|revision, _| candidate(revision));
    }
}

enum Command {
    Control { route: ObjectKey, control: Control, reply: oneshot::Sender<Result<RouteRollout, RolloutError>> },
}

/// Cheap, clonable access to the driver: its states and its controls.
#[derive(Debug, Clone)]
pub struct RolloutHandle {
    commands: mpsc::Sender<Command>,
    states: watch::Receiver<Arc<Rollouts>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Command::Control { route, control, .. } = self;
        f.debug_struct("Control").field("route", route).field("control", control).finish()
    }
}

impl RolloutHandle {
    /// Every Route's rollout state, for readers that follow it.
    pub fn states(&self) -> watch::Receiver<Arc<Rollouts>> {
        self.states.clone()
    }

    /// Promotes, aborts or retries the rollout of `route`; answers with its
    /// state once stored.
    pub async fn control(&self, route: ObjectKey, control: Control) -> Result<RouteRollout, RolloutError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Control { route, control, reply }).await.map_err(|_| RolloutError::ShuttingDown)?;
        answer.await.map_err(|_| RolloutError::ShuttingDown)?
    }
}

/// The driver's state; see the module docs.
pub struct Driver {
    store: RolloutStore,
    states: Arc<Rollouts>,
    states_tx: watch::Sender<Arc<Rollouts>>,
    world: watch::Receiver<Arc<World>>,
    observed: Box<dyn Fn() -> Observed + Send>,
    figures: Arc<dyn Figures>,
    sampler: StepSampler,
    metrics: RolloutMetrics,
    commands: mpsc::Receiver<Command>,
    /// Unix milliseconds at `started`: ticks count from tokio's clock, so
    /// tests run the driver on paused time.
    unix_ms_at_start: u64,
    started: Instant,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("routes", &self.states.len()).finish_non_exhaustive()
    }
}

impl Driver {
    /// Loads the stored rollouts and returns the driver with its handle;
    /// the states are published at once, so the first plan serves them.
    pub fn start(
        store: RolloutStore,
        world: watch::Receiver<Arc<World>>,
        observed: impl Fn() -> Observed + Send + 'static,
        figures: Arc<dyn Figures>,
    ) -> Result<(Self, RolloutHandle), StoreError> {
        let states = Arc::new(store.load()?);
        let (states_tx, states_rx) = watch::channel(states.clone());
        let (commands_tx, commands) = mpsc::channel(16);
        let unix_ms_at_start = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let now = Instant::now();
        let driver = Self {
            store,
            states,
            states_tx,
            world,
            observed: Box::new(observed),
            figures,
            sampler: StepSampler::default(),
            metrics: RolloutMetrics::default(),
            commands,
            unix_ms_at_start,
            started: now,
        };
        Ok((driver, RolloutHandle { commands: commands_tx, states: states_rx }))
    }

    /// Ticks every [`TICK`] and on every change of the world, and serves
    /// controls, until the control plane stops.
    pub async fn run(mut self) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut open, mut following) = (true, true);
        loop {
            let next_step = self.next_step();
            tokio::select! {
                _ = ticks.tick() => self.tick(),
                // Knative requeues a Route for its next step time; so does this.
                () = sleep_until(next_step) => self.tick(),
                // A change is merged at once, as Knative reconciles a Route on
                // every change: a revision created within a tick of the one
                // before it still rolls out from the state that served it.
                changed = self.world.changed(), if following => match changed {
                    Ok(()) => self.tick(),
                    Err(_) => following = false,
                },
                command = self.commands.recv(), if open => match command {
                    Some(Command::Control { route, control, reply }) => {
                        let _ = reply.send(self.control(&route, control));
                    }
                    None => open = false,
                },
            }
        }
    }

    /// When the next step of a progressing rollout is due, if after now.
    fn next_step(&self) -> Option<Instant> {
        let now_ms = self.now_ms();
        let due_ms = self
            .states
            .values()
            .flat_map(|state| &state.configurations)
            .filter(|c| c.in_progress() && c.step.step_duration_ms > 0 && c.step.next_step_ms > now_ms)
            .map(|c| c.step.next_step_ms)
            .min()?;
        Some(Instant::now() + Duration::from_millis(due_ms - now_ms))
    }

    fn now_ms(&self) -> u64 {
        self.unix_ms_at_start + self.started.elapsed().as_millis() as u64
    }

    fn control(&mut self, route: &ObjectKey, control: Control) -> Result<RouteRollout, RolloutError> {
        let Some(mut rollout) = self.states.get(route).cloned() else {
            let exists = self.world.borrow().routes.contains_key(route);
            return Err(if exists {
                RolloutError::NoRollout(route.clone())
            } else {
                RolloutError::NotFound(route.clone())
            });
        };
        controls::apply(&mut rollout, route, control, self.now_ms())?;
        self.store.save(&[(route, &rollout)], &[])?;
        let mut states = (*self.states).clone();
        states.insert(route.clone(), rollout.clone());
        self.publish(states);
        // A retry starts over at the next tick; do it now.
        if control == Control::Retry {
            self.tick();
        }
        Ok(self.states.get(route).cloned().unwrap_or(rollout))
    }

    fn tick(&mut self) {
        let now_ms = self.now_ms();
        let world = self.world.borrow_and_update().clone();
        let settings = world.settings();
        // Only Routes with a rollout duration roll out (Knative's default,
        // 0, switches at once): the others get no state, and a tick among
        // thousands of them costs an annotation lookup each.
        let rolling: Vec<_> = world
            .routes
            .iter()
            .map(|(key, route)| (key, route, RolloutSpec::from_annotations(&route.metadata.annotations, &settings)))
            .filter(|(_, _, spec)| spec.duration_secs > 0)
            .collect();
        let (observed, counters) =
            if rolling.is_empty() { Default::default() } else { ((self.observed)(), self.figures.counters()) };
        let counters_of = |revision: &ObjectKey| counters.get(revision).cloned().unwrap_or_default();
        let mut next = Rollouts::new();
        for (key, route, spec) in rolling {
            let mut state = step(goal(&world, route, &observed), self.states.get(key), spec.duration_secs, now_ms);
            for candidate in candidates(&state) {
                let revision = ObjectKey::new(key.namespace.clone(), candidate.clone());
                let Some(index) = step_index(&state, &candidate) else { continue };
                let measured = self.sampler.measure(&revision, index, &counters_of(&revision));
                measure(&mut state, &candidate, &measured);
            }
            // Knative computes the steps once the gateway serves the first
            // 1%: not in the tick that started the rollout.
            let started_now = state.configurations.iter().any(|c| c.step.start_ms == now_ms);
            if !started_now && observed.ingress.get(key) == Some(&IngressState::Ready) {
                observe_ready(&mut state, now_ms, spec.duration_secs);
            }
            advance(&mut state, &spec.gates, now_ms);
            // A step taken now begins with what was counted until now.
            for candidate in candidates(&state) {
                let revision = ObjectKey::new(key.namespace.clone(), candidate.clone());
                if let Some(index) = step_index(&state, &candidate) {
                    self.sampler.begin(&revision, index, &counters_of(&revision));
                }
            }
            next.insert(key.clone(), state);
        }
        let candidates: Vec<ObjectKey> = next
            .iter()
            .flat_map(|(key, state)| candidates(state).into_iter().map(|c| ObjectKey::new(key.namespace.clone(), c)))
            .collect();
        self.sampler.retain(|revision| candidates.contains(revision));
        if next == *self.states {
            return;
        }
        let changed: Vec<(&ObjectKey, &RouteRollout)> =
            next.iter().filter(|(key, state)| self.states.get(*key) != Some(*state)).collect();
        let gone: Vec<&ObjectKey> = self.states.keys().filter(|key| !next.contains_key(*key)).collect();
        for (key, state) in &changed {
            let (old, new) = (self.states.get(*key).and_then(RouteRollout::summary), state.summary());
            if old != new
                && let Some(summary) = new
            {
                tracing::info!(route = %key, rollout = %summary, "rollout");
            }
        }
        if let Err(e) = self.store.save(&changed, &gone) {
            // Served anyway: losing the row costs a restart its progress, not traffic.
            tracing::error!(error = %e, "storing the rollouts");
        }
        self.publish(next);
    }

    fn publish(&mut self, states: Rollouts) {
        for (route, state) in &states {
            count_events(&self.metrics, route, self.states.get(route), state);
        }
        self.states = Arc::new(states);
        self.states_tx.send_replace(self.states.clone());
    }

    /// Counts the steps and aborts of the rollouts into `metrics`.
    pub fn with_metrics(mut self, metrics: RolloutMetrics) -> Self {
        self.metrics = metrics;
        self
    }
}

/// Counts what changed from `before` to `after` of one Route's rollouts:
/// the steps each candidate took and the rollouts that were aborted.
fn count_events(metrics: &RolloutMetrics, route: &ObjectKey, before: Option<&RouteRollout>, after: &RouteRollout) {
    for c in &after.configurations {
        let was =
            before.and_then(|b| b.configurations.iter().find(|p| p.configuration == c.configuration && p.tag == c.tag));
        if let Some(candidate) = c.candidate() {
            let same_candidate = was.and_then(|p| p.candidate()).is_some_and(|p| p.revision == candidate.revision);
            let before_steps = if same_candidate { was.map_or(0, |p| p.history.len()) } else { 0 };
            let steps = c.history.len().saturating_sub(before_steps);
            if steps > 0 {
                metrics.stepped(route, &candidate.revision, steps as u64);
            }
        }
        let newly_aborted = !matches!(was.map(|p| &p.phase), Some(Phase::Aborted { .. }));
        if let (Phase::Aborted { revision, cause }, true) = (&c.phase, newly_aborted) {
            let cause = match cause {
                AbortCause::Gate { breach } => breach.metric.short(),
                AbortCause::Operator => "operator",
            };
            metrics.aborted(route, revision, cause);
        }
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The revisions being rolled out in a Route's state.
fn candidates(state: &RouteRollout) -> Vec<String> {
    state
        .configurations
        .iter()
        .filter(|c| c.in_progress())
        .filter_map(|c| c.candidate().map(|r| r.revision.clone()))
        .collect()
}

/// One Route's rollout as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    pub namespace: String,
    pub route: String,
    /// `37% → hello-00002`, `aborted: 5xx 0.31 > 0.05`, `completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The Route's `Rollout` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    pub rollout: RouteRollout,
}

impl RolloutView {
    pub fn new(route: &ObjectKey, rollout: &RouteRollout) -> Self {
        Self {
            namespace: route.namespace.clone(),
            route: route.name.clone(),
            summary: rollout.summary(),
            condition: condition(rollout),
            rollout: rollout.clone(),
        }
    }
}

/// Routes as `revgate get route` shows them: their status with the split
/// the rollout serves and the `Rollout` condition, and the rollout in one
/// line under [`ROLLOUT_SUMMARY_ANNOTATION`].
pub fn route_views(world: &World, observed: &Observed, rollouts: &Rollouts) -> Vec<Route> {
    let mut views = world.route_views(observed);
    for view in &mut views {
        let key = view.metadata.key();
        let (Some(rollout), Some(route)) = (rollouts.get(&key), world.routes.get(&key)) else { continue };
        if let Some(status) = &mut view.status {
            overlay_route_status(world, route, status, rollout);
        }
        if let Some(summary) = rollout.summary() {
            view.metadata.annotations.insert(ROLLOUT_SUMMARY_ANNOTATION.to_string(), summary);
        }
    }
    views
}

/// Services with the traffic their Route serves during a rollout, from
/// the [`route_views`] of the same world.
pub fn service_views(world: &World, observed: &Observed, route_views: &[Route]) -> Vec<Service> {
    let routes: BTreeMap<ObjectKey, &Route> = route_views.iter().map(|r| (r.metadata.key(), r)).collect();
    let mut views = world.service_views(observed);
    for view in &mut views {
        let key = view.metadata.key();
        let route_key = ObjectKey::new(key.namespace.clone(), revgate_model::names::service_route(&key.name));
        let traffic = routes.get(&route_key).and_then(|r| r.status.as_ref()).map(|s| s.traffic.clone());
        if let (Some(status), Some(traffic)) = (&mut view.status, traffic) {
            status.traffic = traffic;
        }
    }
    views
}

#[cfg(test)]
mod tests;
