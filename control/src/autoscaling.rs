//! The autoscaler: Knative's KPA (`revgate-autoscaler`) driving a runtime.
//!
//! One task owns a [`RevisionAutoscaler`] per revision the runtime runs
//! (revisions with static `revgate.dev/endpoints` run elsewhere and are left
//! alone). Every piece of scaling state and every rule is in that pure type
//! (`revgate-autoscaler`); this task is the wiring around it: the clock, the
//! world it follows, the gateways' reports, and the runtime it asks. Like Knative's collector, it records the gateways' reported totals
//! into each revision's metric windows every second; like Knative's
//! multiscaler, it runs every decider every 2 s and applies the result
//! through the scale-to-zero rules to the runtime. An activation request (a
//! request held for a revision at zero) decides for the revision at once,
//! with the held request as demand — Knative's "poke" — so a cold start does
//! not wait for the next tick.
//!
//! In cluster mode the revisions' pods' sidecars are a second source
//! ([`Autoscaler::with_sidecar_figures`]): calls from inside the mesh go
//! sidecar to pod, past every gateway, and only the pod's sidecar sees them
//! (as Knative's autoscaler scrapes each pod's queue-proxy). The two are
//! combined without counting a request twice (`revgate_kube::scrape::combine`).
//!
//! Only revisions of Knative's KPA class are scaled; a revision of another
//! class runs at a fixed scale, and its PodAutoscaler says so.
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

use revgate_autoscaler::RevisionAutoscaler;
pub use revgate_autoscaler::{KpaStatus, decider_spec, scaler_spec};
use revgate_kube::scrape::{GatewayFigures, combine};
use revgate_kube::scraper::SidecarFigures;
use revgate_model::World;
use revgate_model::meta::ENDPOINTS_ANNOTATION;
use revgate_model::plan::{GatewayPlan, ObjectKey};
use revgate_model::replaced::{Differing, differing, ordered_lookup};
use revgate_runtime::{Runtime, Workload};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::activation::{Activation, ActivationService};

/// Knative's bucket size: the collector records one stat per second.
const COLLECT_INTERVAL: Duration = Duration::from_secs(1);
/// Knative's multiscaler tick (2 s), in collections: every other collection
/// is followed at once by a decision, so the newest bucket is never empty
/// when it is read (which matters for panic windows of a second or two).
const COLLECTIONS_PER_TICK: u64 = 2;
/// The KPA statuses are views (`get kpa`, `/metrics`, the dashboard),
/// computed for every revision when published (only those that differ are
/// written): what changes within this long is published once. A cold start
/// among 10,000 revisions (the poke, the instance's spawn and readiness)
/// then computes them once, after the request was served, rather than
/// three times while it waits.
const PUBLISH_COALESCE: Duration = Duration::from_millis(100);

/// Readers of the KPA statuses.
pub type KpaStatuses = watch::Receiver<Arc<BTreeMap<ObjectKey, KpaStatus>>>;

/// One revision the runtime runs: what to ask the runtime for, and its KPA.
#[derive(Debug)]
struct Scaled {
    workload: Workload,
    kpa: RevisionAutoscaler,
}

/// The task that owns every revision's KPA.
#[derive(Debug)]
pub struct Autoscaler {
    world: watch::Receiver<Arc<World>>,
    plan: watch::Receiver<Arc<GatewayPlan>>,
    activation: ActivationService,
    runtime: Arc<dyn Runtime>,
    revisions: BTreeMap<ObjectKey, Scaled>,
    statuses: watch::Sender<Arc<BTreeMap<ObjectKey, KpaStatus>>>,
    /// Subscribed at creation so that no activation is missed before `run`
    /// (which takes it).
    activations: Option<broadcast::Receiver<Activation>>,
    /// Cluster mode's revision sidecars' figures; `None` in standalone
    /// mode, where the gateway sees every call.
    sidecars: Option<SidecarFigures>,
    /// Whether the revisions stored before this start were taken over.
    resumed: bool,
    epoch: Instant,
    /// When the statuses are next published (see [`PUBLISH_COALESCE`]).
    publish_due: Option<Instant>,
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
            sidecars: None,
            resumed: false,
            epoch: Instant::now(),
            publish_due: None,
        };
        (autoscaler, readers)
    }

    /// Counts what the revisions' sidecars see too (cluster mode on a
    /// mesh): a revision with sidecar figures is sized on those plus the
    /// requests the gateways hold; one without falls back to the gateways'
    /// reports alone.
    #[must_use]
    pub fn with_sidecar_figures(mut self, figures: SidecarFigures) -> Self {
        self.sidecars = Some(figures);
        self
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
        self.publish();
        loop {
            let publish_due = self.publish_due;
            tokio::select! {
                () = sleep_or_pending(publish_due) => self.publish(),
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
                    self.schedule_publish();
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
                Some(existing) => existing.kpa.update(scaling, reachable),
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
                    let mut kpa = RevisionAutoscaler::new(scaling, reachable, self.ready(key), now);
                    let scale = kpa.first_request(!self.resumed);
                    tracing::info!(revision = %key, to = scale, "scaling a new revision");
                    self.runtime.scale(&workload, scale);
                    self.revisions.insert(key.clone(), Scaled { workload, kpa });
                }
            }
        }
        self.resumed = true;
        self.schedule_publish();
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
        // Cloned out: the scraper's next publication must not wait on this.
        let sidecars = self.sidecars.as_ref().map(|figures| figures.borrow().clone());
        for (key, revision) in &mut self.revisions {
            let totals = activity.get(key).map(|a| &a.totals);
            let (concurrency, rps) = match &sidecars {
                Some(sidecars) => {
                    let gateway = totals.map_or_else(GatewayFigures::default, |t| GatewayFigures {
                        concurrency: t.concurrency,
                        held_concurrency: t.held_concurrency,
                        rps: t.rps,
                    });
                    combine(gateway, sidecars.get(key))
                }
                None => (totals.map_or(0.0, |t| t.concurrency + t.held_concurrency), totals.map_or(0.0, |t| t.rps)),
            };
            revision.kpa.record(now, concurrency, rps);
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
        self.schedule_publish();
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
        if revision.kpa.is_at_zero() {
            tracing::info!(revision = %activation.revision, held = activation.held, "activation: deciding now");
            self.decide(&activation.revision.clone(), true);
            self.schedule_publish();
        }
    }

    fn decide(&mut self, key: &ObjectKey, requests_held: bool) {
        let now = self.now_ms();
        let ready = self.ready(key);
        let Some(revision) = self.revisions.get_mut(key) else { return };
        let from = revision.kpa.requested();
        if let Some(scale) = revision.kpa.tick(now, ready, requests_held) {
            tracing::info!(revision = %key, from = ?from, to = scale, "scaling");
            self.runtime.scale(&revision.workload, scale);
        }
    }

    fn refresh_actual(&mut self) {
        let now = self.now_ms();
        let states = self.runtime.states();
        let states = states.borrow();
        // Both maps are in key order: one walk over both, no lookups.
        let mut state_of = ordered_lookup(&states);
        for (key, revision) in &mut self.revisions {
            let ready = state_of(key).map_or(0, |s| s.ready.len());
            revision.kpa.observe_ready(now, u32::try_from(ready).unwrap_or(u32::MAX));
        }
    }

    /// Publishes the statuses within [`PUBLISH_COALESCE`], with whatever
    /// else changes until then.
    fn schedule_publish(&mut self) {
        self.publish_due.get_or_insert_with(|| Instant::now() + PUBLISH_COALESCE);
    }

    fn publish(&mut self) {
        self.publish_due = None;
        // One ordered walk over the revisions and what was published: only
        // what differs is written, and the readers' map is copied only then.
        let (gone, changed): (Vec<ObjectKey>, Vec<(ObjectKey, KpaStatus)>) = {
            let published = self.statuses.borrow();
            let Differing { gone, changed } =
                differing(&published, self.revisions.iter().map(|(key, revision)| (key, revision.status())));
            (gone.into_iter().cloned().collect(), changed.into_iter().map(|(key, s)| (key.clone(), s)).collect())
        };
        if gone.is_empty() && changed.is_empty() {
            return;
        }
        self.statuses.send_modify(|published| {
            let published = Arc::make_mut(published);
            for key in &gone {
                published.remove(key);
            }
            published.extend(changed);
        });
    }
}

/// Sleeps until `due`; never returns without one.
async fn sleep_or_pending(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Scaled {
    /// The KPA's status with the workload's names.
    fn status(&self) -> KpaStatus {
        KpaStatus {
            configuration: self.workload.configuration.clone(),
            service: self.workload.service.clone(),
            ..self.kpa.status()
        }
    }
}
