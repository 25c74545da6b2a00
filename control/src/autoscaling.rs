//! The autoscaler: Knative's KPA (`revgate-autoscaler`) driving a runtime.
//!
//! One task owns a [`RevisionAutoscaler`] per revision the runtime runs
//! (revisions with static `revgate.dev/endpoints` run elsewhere and are left
//! alone). Like Knative's collector, it records the gateways' reported totals
//! into each revision's metric windows every second; like Knative's
//! multiscaler, it runs every decider every 2 s and applies the result
//! through the scale-to-zero rules to the runtime. An activation request (a
//! request held for a revision at zero) decides for the revision at once,
//! with the held request as demand — Knative's "poke" — so a cold start does
//! not wait for the next tick.
//!
//! Only revisions of Knative's KPA class are scaled. A revision of another
//! class (`hpa.autoscaling.knative.dev`) runs at its initial or min scale,
//! whichever is higher, and its PodAutoscaler says so.
//!
//! ```text
//! activation service ──totals (1 s)──▶ windows ──(every 2 s | poke)──▶ Decider ─▶ Scaler ─▶ Runtime::scale
//! ```
//!
//! The statuses it publishes are shown as Knative PodAutoscalers
//! (`revgate get kpa`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use revgate_autoscaler::{Decider, DeciderSpec, Recommendation, RevisionWindows, Scaler, ScalerSpec};
use revgate_model::World;
use revgate_model::autoscaling::{KPA_CLASS, RevisionScaling};
use revgate_model::meta::ENDPOINTS_ANNOTATION;
use revgate_model::plan::{GatewayPlan, ObjectKey};
use revgate_runtime::{Runtime, Workload};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::activation::{Activation, ActivationService};
use crate::control::replace_if_changed;

/// Knative's bucket size: the collector records one stat per second.
const COLLECT_INTERVAL: Duration = Duration::from_secs(1);
/// Knative's multiscaler tick (2 s), in collections: every other collection
/// is followed at once by a decision, so the newest bucket is never empty
/// when it is read (which matters for panic windows of a second or two).
const COLLECTIONS_PER_TICK: u64 = 2;

/// What the KPA decided for one revision, shown as a PodAutoscaler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KpaStatus {
    pub configuration: String,
    pub service: Option<String>,
    pub metric: String,
    /// Per-instance target of the metric.
    pub target: f64,
    pub reachable: bool,
    /// The scale the KPA wants; `None` before any metric arrived.
    pub desired_scale: Option<i64>,
    /// Ready instances.
    pub actual_scale: u32,
    /// Instances the runtime was asked for.
    pub requested_scale: Option<u32>,
    pub observed_stable_value: f64,
    pub observed_panic_value: f64,
    pub panicking: bool,
    pub excess_burst_capacity: i64,
    /// Knative's `Active` condition: `True`, `False` or `Unknown`.
    pub active: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// Readers of the KPA statuses.
pub type KpaStatuses = watch::Receiver<Arc<BTreeMap<ObjectKey, KpaStatus>>>;

/// The KPA of one revision.
#[derive(Debug)]
struct RevisionAutoscaler {
    workload: Workload,
    scaling: RevisionScaling,
    reachable: bool,
    windows: RevisionWindows,
    decider: Decider,
    /// The decider's latest valid recommendation (a tick without metrics
    /// keeps the previous one, as Knative's PodAutoscaler status does).
    recommendation: Recommendation,
    scaler: Scaler,
    requested: Option<u32>,
    status: KpaStatus,
}

/// The task that owns every revision's KPA.
#[derive(Debug)]
pub struct Autoscaler {
    world: watch::Receiver<Arc<World>>,
    plan: watch::Receiver<Arc<GatewayPlan>>,
    activation: ActivationService,
    runtime: Arc<dyn Runtime>,
    revisions: BTreeMap<ObjectKey, RevisionAutoscaler>,
    statuses: watch::Sender<Arc<BTreeMap<ObjectKey, KpaStatus>>>,
    /// Subscribed at creation so that no activation is missed before `run`
    /// (which takes it).
    activations: Option<broadcast::Receiver<Activation>>,
    /// Whether the revisions stored before this start were taken over.
    resumed: bool,
    epoch: Instant,
}

impl Autoscaler {
    /// An autoscaler for the revisions of `world` (routed as `plan` says),
    /// fed by `activation`, scaling through `runtime`.
    pub fn new(
        world: watch::Receiver<Arc<World>>,
        plan: watch::Receiver<Arc<GatewayPlan>>,
        activation: ActivationService,
        runtime: Arc<dyn Runtime>,
    ) -> (Self, KpaStatuses) {
        let (statuses, readers) = watch::channel(Arc::new(BTreeMap::new()));
        let activations = activation.subscribe_activations();
        let autoscaler = Self {
            world,
            plan,
            activation,
            runtime,
            revisions: BTreeMap::new(),
            statuses,
            activations: Some(activations),
            resumed: false,
            epoch: Instant::now(),
        };
        (autoscaler, readers)
    }

    /// Milliseconds since the autoscaler started: the deciders' clock.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub async fn run(mut self) {
        let mut world = self.world.clone();
        let mut plan = self.plan.clone();
        let mut states = self.runtime.states();
        let Some(mut activations) = self.activations.take() else { return };
        let mut collect = tokio::time::interval(COLLECT_INTERVAL);
        collect.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut collections: u64 = 0;
        // Each watch value is cloned out first: a read guard held through
        // `sync` would block the control plane's next publication.
        let (current_world, current_plan) = (world.borrow_and_update().clone(), plan.borrow_and_update().clone());
        self.sync(&current_world, &current_plan);
        loop {
            tokio::select! {
                _ = collect.tick() => {
                    self.collect();
                    collections += 1;
                    if collections.is_multiple_of(COLLECTIONS_PER_TICK) {
                        self.tick();
                    }
                }
                changed = world.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let (current_world, current_plan) = (world.borrow_and_update().clone(), plan.borrow().clone());
                    self.sync(&current_world, &current_plan);
                }
                changed = plan.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let (current_world, current_plan) = (world.borrow().clone(), plan.borrow_and_update().clone());
                    self.sync(&current_world, &current_plan);
                }
                changed = states.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    states.borrow_and_update();
                    self.refresh_actual();
                    self.publish();
                }
                activation = activations.recv() => match activation {
                    Ok(activation) => self.poke(&activation),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Follows the applied world: a KPA per runtime-run revision, with specs
    /// from its annotations and `config-autoscaler`; deleted revisions are
    /// removed from the runtime.
    fn sync(&mut self, world: &World, plan: &GatewayPlan) {
        let now = self.now_ms();
        let routed: Vec<&ObjectKey> = plan
            .routes
            .iter()
            .flat_map(|route| route.splits.iter().map(|s| &s.revision).chain(route.tags.iter().map(|t| &t.revision)))
            .collect();
        let runs_here = |key: &ObjectKey| {
            world.revisions.get(key).is_some_and(|r| !r.metadata.annotations.contains_key(ENDPOINTS_ANNOTATION))
        };
        let gone: Vec<ObjectKey> = self.revisions.keys().filter(|key| !runs_here(key)).cloned().collect();
        for key in gone {
            tracing::info!(revision = %key, "revision deleted: stopping its instances");
            self.revisions.remove(&key);
            self.runtime.remove(&key);
        }
        for (key, revision) in &world.revisions {
            if !runs_here(key) {
                continue;
            }
            let Some(scaling) = world.revision_scaling(key) else { continue };
            let reachable = routed.contains(&key);
            match self.revisions.get_mut(key) {
                Some(existing) => existing.update(scaling, reachable),
                None => {
                    let workload = Workload {
                        key: key.clone(),
                        service: revision.metadata.labels.get("serving.knative.dev/service").cloned(),
                        configuration: revision
                            .metadata
                            .labels
                            .get("serving.knative.dev/configuration")
                            .cloned()
                            .unwrap_or_default(),
                        spec: revision.spec.clone(),
                    };
                    let ready = self.ready(key);
                    let mut created = RevisionAutoscaler::new(workload, scaling, reachable, ready, now);
                    // A new revision starts at its initial scale, as Knative
                    // creates the Deployment with that many replicas. One
                    // stored before this start that no route reaches stays
                    // at zero, as it was (Knative keeps its replicas).
                    let initial =
                        if self.resumed || reachable { created.scaler.spec().effective_initial_scale() } else { 0 };
                    if created.scaling.class == KPA_CLASS {
                        created.request(&*self.runtime, initial);
                    } else {
                        created.hold_fixed(&*self.runtime);
                    }
                    self.revisions.insert(key.clone(), created);
                }
            }
        }
        self.resumed = true;
        self.publish();
    }

    fn ready(&self, key: &ObjectKey) -> u32 {
        let states = self.runtime.states();
        let states = states.borrow();
        states.get(key).map_or(0, |s| u32::try_from(s.ready.len()).unwrap_or(u32::MAX))
    }

    /// Records each revision's current totals (zero when nothing was reported).
    fn collect(&mut self) {
        let now = self.now_ms();
        let activity = self.activation.activity();
        for (key, revision) in &mut self.revisions {
            let totals = activity.get(key).map(|a| &a.totals);
            let concurrency = totals.map_or(0.0, |t| t.concurrency + t.held_concurrency);
            let rps = totals.map_or(0.0, |t| t.rps);
            revision.windows.record(now, concurrency, rps);
        }
    }

    /// Decides for every revision.
    fn tick(&mut self) {
        let held = self.held_revisions();
        let keys: Vec<ObjectKey> = self.revisions.keys().cloned().collect();
        for key in keys {
            let requests_held = held.contains(&key);
            self.decide(&key, requests_held);
        }
        self.publish();
    }

    /// Revisions whose requests the gateways hold right now.
    fn held_revisions(&self) -> Vec<ObjectKey> {
        self.activation.activity().into_iter().filter(|(_, a)| a.totals.held > 0).map(|(key, _)| key).collect()
    }

    /// Knative's poke: a request held for a revision at zero is decided on
    /// at once. The held request itself counts as demand (the scaler brings
    /// the revision to at least one instance); the gateways' next reports
    /// carry it into the metric windows.
    fn poke(&mut self, activation: &Activation) {
        let Some(revision) = self.revisions.get(&activation.revision) else { return };
        if revision.requested.unwrap_or(0) == 0 || revision.recommendation.desired <= 0 {
            tracing::info!(revision = %activation.revision, held = activation.held, "activation: deciding now");
            self.decide(&activation.revision.clone(), true);
            self.publish();
        }
    }

    fn decide(&mut self, key: &ObjectKey, requests_held: bool) {
        let now = self.now_ms();
        let ready = self.ready(key);
        if let Some(revision) = self.revisions.get_mut(key) {
            revision.decide(now, ready, requests_held, &*self.runtime);
        }
    }

    fn refresh_actual(&mut self) {
        let states = self.runtime.states();
        let states = states.borrow();
        for (key, revision) in &mut self.revisions {
            let state = states.get(key);
            revision.status.actual_scale = state.map_or(0, |s| u32::try_from(s.ready.len()).unwrap_or(u32::MAX));
        }
    }

    fn publish(&self) {
        let statuses: BTreeMap<ObjectKey, KpaStatus> =
            self.revisions.iter().map(|(key, revision)| (key.clone(), revision.status.clone())).collect();
        replace_if_changed(&self.statuses, statuses);
    }
}

impl RevisionAutoscaler {
    fn new(workload: Workload, scaling: RevisionScaling, reachable: bool, ready: u32, now_ms: u64) -> Self {
        let windows = windows(&scaling);
        let spec = decider_spec(&scaling, reachable);
        let recommendation = Recommendation::before_first_tick(&spec, scaling.initial_scale);
        let decider = Decider::new(spec, ready, now_ms);
        let scaler = Scaler::new(scaler_spec(&scaling, reachable), now_ms);
        let status = KpaStatus {
            configuration: workload.configuration.clone(),
            service: workload.service.clone(),
            metric: scaling.metric.as_str().to_owned(),
            target: scaling.target,
            reachable,
            actual_scale: ready,
            active: "Unknown".to_owned(),
            ..KpaStatus::default()
        };
        Self { workload, scaling, reachable, windows, decider, recommendation, scaler, requested: None, status }
    }

    /// Takes new settings (a changed `config-autoscaler`, or a route change
    /// that makes the revision reachable or not).
    fn update(&mut self, scaling: RevisionScaling, reachable: bool) {
        if scaling == self.scaling && reachable == self.reachable {
            return;
        }
        if scaling.stable_window != self.scaling.stable_window
            || scaling.panic_window != self.scaling.panic_window
            || scaling.aggregation != self.scaling.aggregation
        {
            self.windows = windows(&scaling);
        }
        self.decider.set_spec(decider_spec(&scaling, reachable));
        self.scaler.set_spec(scaler_spec(&scaling, reachable));
        self.status.metric = scaling.metric.as_str().to_owned();
        self.status.target = scaling.target;
        self.status.reachable = reachable;
        self.scaling = scaling;
        self.reachable = reachable;
    }

    /// A revision of another autoscaler class: a fixed scale, since only the
    /// KPA runs here.
    fn hold_fixed(&mut self, runtime: &dyn Runtime) {
        let scale = self.scaling.min_scale.max(self.scaler.spec().effective_initial_scale()).max(1);
        self.request(runtime, scale);
        self.status.desired_scale = Some(i64::from(scale));
        self.status.active = "True".to_owned();
        self.status.reason = Some("UnsupportedClass".to_owned());
        self.status.message = Some(format!(
            "autoscaling class {:?} is not run by revgate, which scales with the KPA ({KPA_CLASS}); \
             running {scale} instance(s): the higher of min-scale and initial-scale",
            self.scaling.class
        ));
    }

    /// One KPA tick: the decider on the windows' averages, then the
    /// scale-to-zero rules, then the runtime.
    fn decide(&mut self, now_ms: u64, ready: u32, requests_held: bool, runtime: &dyn Runtime) {
        if self.scaling.class != KPA_CLASS {
            self.status.actual_scale = ready;
            return;
        }
        if let Some((stable, panic)) = self.windows.averages(now_ms, self.scaling.metric) {
            self.status.observed_stable_value = stable;
            self.status.observed_panic_value = panic;
            self.recommendation = self.decider.scale(now_ms, ready, stable, panic);
        }
        let decision = self.scaler.step(now_ms, &self.recommendation, ready, requests_held);
        self.status.desired_scale = (decision.want >= 0).then_some(i64::from(decision.want));
        self.status.panicking = self.recommendation.panicking;
        self.status.excess_burst_capacity = i64::from(self.recommendation.excess_burst_capacity);
        self.status.active = decision.phase.condition_status().to_owned();
        self.status.reason = decision.reason.map(|r| r.as_str().to_owned());
        self.status.message = decision.reason.map(|r| r.message().to_owned());
        self.status.actual_scale = ready;
        if let Some(scale) = decision.apply {
            self.request(runtime, scale);
        }
    }

    fn request(&mut self, runtime: &dyn Runtime, scale: u32) {
        if self.requested != Some(scale) {
            tracing::info!(revision = %self.workload.key, from = ?self.requested, to = scale, "scaling");
            runtime.scale(&self.workload, scale);
            self.requested = Some(scale);
            self.status.requested_scale = Some(scale);
        }
    }
}

fn windows(scaling: &RevisionScaling) -> RevisionWindows {
    RevisionWindows::from_windows(scaling.stable_window, scaling.panic_window, scaling.aggregation)
}

/// The decider's spec for a revision (Knative's `MakeDecider`).
pub fn decider_spec(scaling: &RevisionScaling, reachable: bool) -> DeciderSpec {
    DeciderSpec {
        metric: scaling.metric,
        target_value: scaling.target,
        total_value: scaling.total_value,
        target_burst_capacity: scaling.target_burst_capacity,
        panic_threshold: scaling.panic_threshold,
        max_scale_up_rate: scaling.max_scale_up_rate,
        max_scale_down_rate: scaling.max_scale_down_rate,
        stable_window: scaling.stable_window,
        scale_down_delay: scaling.scale_down_delay,
        activation_scale: scaling.activation_scale,
        reachable,
    }
}

/// The scale-to-zero rules' spec for a revision.
pub fn scaler_spec(scaling: &RevisionScaling, reachable: bool) -> ScalerSpec {
    ScalerSpec {
        min_scale: scaling.min_scale,
        max_scale: scaling.max_scale,
        initial_scale: scaling.initial_scale,
        allow_zero_initial_scale: scaling.allow_zero_initial_scale,
        enable_scale_to_zero: scaling.enable_scale_to_zero,
        stable_window: scaling.stable_window,
        scale_to_zero_grace_period: scaling.scale_to_zero_grace_period,
        scale_to_zero_pod_retention_period: scaling.scale_to_zero_pod_retention_period,
        reachable,
        activation_scale: scaling.activation_scale,
        ..ScalerSpec::default()
    }
}
