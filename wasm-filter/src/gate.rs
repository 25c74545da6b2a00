//! The state of one filter VM and every decision it makes: hold, release,
//! admit, refuse, expire. Pure: time comes in as `now_ns`, shared data
//! through [`SharedStore`], and decisions go out as values ([`Decision`],
//! [`Effect`]) that the proxy-wasm glue carries out. Nothing here calls the
//! host, so every path is unit-tested.
//!
//! A tracked request moves through these phases:
//!
//! | phase | entered when | left when |
//! |---|---|---|
//! | waiting | cold revision, or not yet confirmed by a probe (`release_gate: probe`), or its capacity is full, or others wait before it | released ([`Effect::Resume`]), expired ([`Effect::Reply`]) or aborted (`on_log`) |
//! | admitted | sent upstream, with or without a breaker slot | the stream ends (`on_log`), giving its slot back |
//! | refused | its revision's queue was full, or it expired | the stream ends (`on_log`) |
//!
//! How the oldest waiting request of a revision may proceed, by the view and
//! the release gate (every other waiting request queues behind it):
//!
//! | view of the revision | `control-plane` gate | `probe` gate, route's cluster not confirmed | `probe` gate, confirmed |
//! |---|---|---|---|
//! | no view (after the startup hold), or not listed | go, untracked | go, untracked | go, untracked |
//! | cold (`ready_endpoints == 0`) | wait; activation | wait; activation | (cold forgets confirmations) |
//! | ready, capacity left | go | wait; probe the cluster ([`probe`]) | go |
//! | ready, at capacity | wait | wait; probe the cluster | wait |

use std::collections::HashMap;

use crate::breaker::{self, SharedStore};
use crate::config::{FilterConfig, ReleaseGate};
use crate::deadline::{Limits, Timers};
use crate::hold::{Held, HoldQueue};
use crate::metrics::{Finished, Metrics};
use crate::probe::{self, Confirmed, ProbeCall, Probes};
use crate::readiness::{self, Partial, Readiness, ReadinessTable, WrongBase};
use crate::reply::LocalReply;
use crate::revision::{RevisionKey, Target};

const NS_PER_MS: u64 = 1_000_000;

/// What to do with a request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through.
    Continue,
    /// Hold it. `activate` is set for the first request held for a cold
    /// revision in this VM: the glue sends an `ActivationRequest` at once.
    Pause { activate: Option<Activation> },
    /// Answer it with a local reply.
    Refuse(LocalReply),
}

/// Demand for a cold revision, to send to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub key: RevisionKey,
    pub held: u64,
}

/// Something the glue must do to a held or in-flight request (by HTTP
/// context id). A reply to a request whose response already started makes
/// Envoy end its stream instead (it cannot answer twice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Let the held request continue upstream.
    Resume(u32),
    /// Answer the held request.
    Reply(u32, LocalReply),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Admitted { slot: bool },
    Refused { status: u32, reason: &'static str },
}

#[derive(Debug, Clone)]
struct Tracked {
    key: RevisionKey,
    /// The cluster the route picked, which a probe goes through.
    cluster: String,
    metadata_cc: Option<u32>,
    started_ns: u64,
    /// How long it was held, once it stopped waiting (released or refused).
    held_ns: Option<u64>,
    phase: Phase,
}

/// How a waiting request at the head of its queue may proceed.
enum Admission {
    /// No view, or the revision is not in it: pass it on.
    Untracked,
    /// Cold, at capacity, or not yet confirmed by a probe: keep waiting.
    Wait,
    /// Go, holding a breaker slot or not.
    Go { slot: bool },
}

/// One VM's view of readiness, its held requests, its in-flight requests and
/// its metrics.
#[derive(Debug)]
pub struct Gate {
    config: FilterConfig,
    view: Option<ReadinessTable>,
    view_at_ns: u64,
    /// The stale-view warning was logged since the last answer.
    stale_warned: bool,
    /// When this VM started: requests wait for the first view until
    /// `startup_hold_ms` after it.
    started_ns: u64,
    /// Activations decided outside a request (a view showed held requests
    /// to be for a cold revision), for the root to send.
    pending_activations: Vec<Activation>,
    queue: HoldQueue,
    requests: HashMap<u32, Tracked>,
    /// `release_gate: probe`: which clusters this VM confirmed.
    probes: Probes,
    /// Knative's response timers of the requests sent on to a listed revision.
    timers: Timers,
    metrics: Metrics,
}

impl Gate {
    pub fn new(config: FilterConfig, now_ns: u64) -> Self {
        let queue = HoldQueue::new(config.max_held_per_revision);
        Self {
            config,
            view: None,
            view_at_ns: now_ns,
            stale_warned: false,
            started_ns: now_ns,
            pending_activations: Vec::new(),
            queue,
            requests: HashMap::new(),
            probes: Probes::default(),
            timers: Timers::default(),
            metrics: Metrics::new(now_ns),
        }
    }

    /// Applies a new configuration, keeping held requests and the view.
    /// Requests that waited only for a probe go at the next tick if the
    /// gate is no longer `probe`.
    pub fn reconfigure(&mut self, config: FilterConfig) {
        self.queue.set_limit(config.max_held_per_revision);
        if config.release_gate != ReleaseGate::Probe {
            self.probes.clear();
        }
        self.config = config;
    }

    pub fn config(&self) -> &FilterConfig {
        &self.config
    }

    /// The version of the current view, if any.
    pub fn view_version(&self) -> Option<u64> {
        self.view.as_ref().map(|v| v.version)
    }

    /// Requests held in this VM, all revisions.
    pub fn held_total(&self) -> usize {
        self.queue.total()
    }

    fn line(&self, key: &RevisionKey) -> Option<Readiness> {
        self.view.as_ref().and_then(|view| view.get(key)).copied()
    }

    /// A request's headers arrived for `target` (HTTP context `id`).
    pub fn on_request(&mut self, id: u32, target: Target, now_ns: u64, store: &dyn SharedStore) -> Decision {
        let Target { key, cluster, metadata_container_concurrency: metadata_cc } = target;
        let mut tracked =
            Tracked { key, cluster, metadata_cc, started_ns: now_ns, held_ns: None, phase: Phase::Waiting };
        let line = self.line(&tracked.key);
        // Nobody jumps the queue: with requests already waiting, a new one waits too.
        let admission = match line {
            _ if self.queue.len(&tracked.key) > 0 => Admission::Wait,
            None => self.unlisted(now_ns),
            Some(line) => self.admission(&tracked.key, &tracked.cluster, &line, metadata_cc, store),
        };
        let decision = match admission {
            Admission::Untracked => {
                tracked.phase = Phase::Admitted { slot: false };
                self.metrics.admitted(&tracked.key, now_ns);
                Decision::Continue
            }
            Admission::Go { slot } => {
                tracked.phase = Phase::Admitted { slot };
                self.metrics.admitted(&tracked.key, now_ns);
                if let Some(line) = &line {
                    self.timers.start(id, &tracked.key, Limits::of(line), now_ns);
                }
                Decision::Continue
            }
            Admission::Wait => match self.queue.push(&tracked.key, Held { id, since_ns: now_ns }) {
                Ok(held) => {
                    self.metrics.held(&tracked.key, now_ns);
                    let cold = line.is_some_and(|line| !line.is_ready());
                    let activate =
                        (cold && held == 1).then(|| Activation { key: tracked.key.clone(), held: held as u64 });
                    Decision::Pause { activate }
                }
                Err(full) => {
                    let reply = LocalReply::held_requests_limit(&tracked.key, full.held);
                    tracked.phase = Phase::Refused { status: reply.status, reason: reply.reason };
                    Decision::Refuse(reply)
                }
            },
        };
        self.requests.insert(id, tracked);
        decision
    }

    /// A request for a revision the view does not list: it waits while a
    /// new VM expects its first view, and passes otherwise.
    fn unlisted(&self, now_ns: u64) -> Admission {
        let starting = now_ns.saturating_sub(self.started_ns) < self.config.startup_hold_ms.saturating_mul(NS_PER_MS);
        if self.view.is_none() && starting { Admission::Wait } else { Admission::Untracked }
    }

    /// Whether requests through `cluster` may go on the control plane's word
    /// alone, or were confirmed by a probe. A request whose cluster is
    /// unknown cannot be probed and goes on the control plane's word.
    fn confirmed(&self, cluster: &str) -> bool {
        self.config.release_gate != ReleaseGate::Probe || cluster.is_empty() || self.probes.is_confirmed(cluster)
    }

    /// Whether a request for a listed revision, routed to `cluster`, may go now.
    fn admission(
        &self,
        key: &RevisionKey,
        cluster: &str,
        line: &Readiness,
        metadata_cc: Option<u32>,
        store: &dyn SharedStore,
    ) -> Admission {
        if !line.is_ready() || !self.confirmed(cluster) {
            return Admission::Wait;
        }
        let Some(capacity) = line.capacity(metadata_cc) else { return Admission::Go { slot: false } };
        match breaker::try_acquire(store, key, capacity) {
            Ok(true) => Admission::Go { slot: true },
            Ok(false) => Admission::Wait,
            Err(e) => {
                // Failing open: an uncounted request beats one held forever.
                log::warn!("revgate: admitting a request for {key} without the breaker: {e}");
                Admission::Go { slot: false }
            }
        }
    }

    /// Releases, oldest first, the requests held for `key` that may go now.
    fn pump(&mut self, key: &RevisionKey, now_ns: u64, store: &dyn SharedStore) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some(front) = self.queue.front(key) {
            let (cluster, metadata_cc) =
                self.requests.get(&front.id).map_or((String::new(), None), |t| (t.cluster.clone(), t.metadata_cc));
            let line = self.line(key);
            let admission = match &line {
                None => self.unlisted(now_ns),
                Some(line) => self.admission(key, &cluster, line, metadata_cc, store),
            };
            let slot = match admission {
                Admission::Wait => break,
                Admission::Untracked => false,
                Admission::Go { slot } => slot,
            };
            self.queue.pop_front(key);
            self.metrics.unheld(key, now_ns);
            self.metrics.admitted(key, now_ns);
            if let Some(tracked) = self.requests.get_mut(&front.id) {
                tracked.phase = Phase::Admitted { slot };
                tracked.held_ns = Some(now_ns.saturating_sub(tracked.started_ns));
            }
            if let Some(line) = &line {
                self.timers.start(front.id, key, Limits::of(line), now_ns);
            }
            effects.push(Effect::Resume(front.id));
        }
        effects
    }

    /// A new view arrived from the control plane.
    pub fn on_view(&mut self, view: ReadinessTable, now_ns: u64, store: &dyn SharedStore) -> Vec<Effect> {
        let changes = readiness::diff(self.view.as_ref(), Some(&view));
        // Requests held before this view knew their revision was cold (while
        // the VM waited for its first view) now ask for an activation.
        for key in self.queue.revisions() {
            let cold_now = view.get(&key).is_some_and(|line| !line.is_ready());
            let cold_before = self.line(&key).is_some_and(|line| !line.is_ready());
            if cold_now && !cold_before {
                let held = self.queue.len(&key) as u64;
                self.pending_activations.push(Activation { key, held });
            }
        }
        // A revision that went cold or left the view must be probed again
        // before its next release: Envoy may lose its endpoints meanwhile.
        self.probes.retain_revisions(|key| view.get(key).is_some_and(Readiness::is_ready));
        self.view = Some(view);
        self.view_at_ns = now_ns;
        let mut keys: Vec<RevisionKey> = changes.into_iter().map(|(key, _)| key).collect();
        // Requests held while waiting for the first view may go if their
        // revision is ready or unlisted, even when nothing "changed" for it.
        keys.extend(self.queue.revisions());
        keys.sort();
        keys.dedup();
        self.release(keys.into_iter(), now_ns, store)
    }

    /// A partial view arrived: applied onto the view it names as its base,
    /// costing what it changes. Held requests move exactly as with a
    /// complete view of the same content; on another base nothing changes.
    pub fn on_partial(
        &mut self,
        partial: &Partial,
        now_ns: u64,
        store: &dyn SharedStore,
    ) -> Result<Vec<Effect>, WrongBase> {
        let held = self.view_version();
        if held != Some(partial.after) {
            return Err(WrongBase { base: partial.after, held });
        }
        let touched: HashMap<&RevisionKey, Option<&Readiness>> = partial.touched().collect();
        for key in self.queue.revisions() {
            let Some(after) = touched.get(&key) else { continue };
            let cold_now = after.is_some_and(|line| !line.is_ready());
            let cold_before = self.line(&key).is_some_and(|line| !line.is_ready());
            if cold_now && !cold_before {
                let held = self.queue.len(&key) as u64;
                self.pending_activations.push(Activation { key, held });
            }
        }
        self.probes.retain_revisions(|key| touched.get(key).is_none_or(|line| line.is_some_and(Readiness::is_ready)));
        if let Some(view) = self.view.as_mut() {
            view.apply(partial)?;
        }
        self.view_at_ns = now_ns;
        // Only held requests can move; their revisions come sorted.
        let keys = self.queue.revisions();
        Ok(self.release(keys.into_iter(), now_ns, store))
    }

    /// Activations to send that no request context carried.
    pub fn take_activations(&mut self) -> Vec<Activation> {
        std::mem::take(&mut self.pending_activations)
    }

    /// The probes to send now (`release_gate: probe`): for each revision
    /// whose oldest waiting request waits only for its cluster to be
    /// confirmed, one probe through that cluster unless one is in flight or
    /// backing off. The glue dispatches each and reports the outcome with
    /// [`Gate::probe_dispatched`] or [`Gate::probe_dispatch_failed`].
    pub fn take_probes(&mut self, now_ns: u64) -> Vec<ProbeCall> {
        if self.config.release_gate != ReleaseGate::Probe {
            return Vec::new();
        }
        let mut waiting: Vec<(String, RevisionKey)> = Vec::new();
        for key in self.queue.revisions() {
            let Some(front) = self.queue.front(&key) else { continue };
            let Some(tracked) = self.requests.get(&front.id) else { continue };
            let ready = self.line(&key).is_some_and(|line| line.is_ready());
            let blocked = ready && !self.confirmed(&tracked.cluster);
            if blocked && !waiting.iter().any(|(cluster, _)| cluster == &tracked.cluster) {
                waiting.push((tracked.cluster.clone(), key));
            }
        }
        self.probes.due(&waiting, now_ns)
    }

    /// Whether a probe is due now (see [`Gate::take_probes`]), without
    /// dispatching it: the probes stay due for the root to send.
    pub fn probes_due(&mut self, now_ns: u64) -> bool {
        !self.take_probes(now_ns).is_empty()
    }

    /// The probe through `cluster` was dispatched as call `token`.
    pub fn probe_dispatched(&mut self, cluster: &str, token: u32) {
        self.probes.dispatched(cluster, token);
    }

    /// The probe through `cluster` could not be dispatched; it is retried
    /// after a backoff. Returns the consecutive failures of that cluster.
    pub fn probe_dispatch_failed(&mut self, cluster: &str, now_ns: u64) -> u32 {
        self.probes.dispatch_failed(cluster, now_ns);
        self.probes.failures(cluster)
    }

    /// Whether call `token` is one of this VM's probes in flight.
    pub fn is_probe(&self, token: u32) -> bool {
        self.probes.is_probe(token)
    }

    /// A probe is backing off: the root should tick often enough to retry it.
    pub fn probe_retry_pending(&self) -> bool {
        self.probes.retry_pending()
    }

    /// The answer to probe `token`, classified with [`probe::classify`].
    /// When it confirms the cluster, the requests waiting on it are released
    /// (oldest first, through the breaker as usual).
    pub fn on_probe_answer(
        &mut self,
        token: u32,
        outcome: &probe::Outcome,
        now_ns: u64,
        store: &dyn SharedStore,
    ) -> (Option<Confirmed>, Vec<Effect>) {
        let confirmed = self.probes.answered(token, outcome, now_ns);
        let effects = match &confirmed {
            Some(confirmed) if self.queue.len(&confirmed.key) > 0 => self.pump(&confirmed.key.clone(), now_ns, store),
            _ => Vec::new(),
        };
        (confirmed, effects)
    }

    fn release(
        &mut self,
        keys: impl Iterator<Item = RevisionKey>,
        now_ns: u64,
        store: &dyn SharedStore,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        for key in keys {
            if self.queue.len(&key) > 0 {
                effects.extend(self.pump(&key, now_ns, store));
            }
        }
        effects
    }

    /// The root's timer: warns about a stale view, expires held requests past
    /// their activation timeout, and admits queued requests into capacity
    /// that other VMs freed.
    pub fn on_tick(&mut self, now_ns: u64, store: &dyn SharedStore) -> Vec<Effect> {
        let mut effects = Vec::new();
        let stale_after_ns = self.config.readiness_stale_after_ms().saturating_mul(NS_PER_MS);
        let stale = self.view.is_some() && now_ns.saturating_sub(self.view_at_ns) > stale_after_ns;
        if stale && !self.stale_warned {
            // The view is kept: warm revisions keep passing, and requests for
            // cold ones stay held until their activation timeout answers them
            // clearly, rather than being released into "no healthy upstream".
            log::warn!(
                "revgate: no readiness answer from the control plane for {} ms; keeping the last view \
                 (is cluster `{}` reachable?)",
                self.config.readiness_stale_after_ms(),
                self.config.control_cluster
            );
        }
        self.stale_warned = stale;
        for key in self.queue.revisions() {
            let timeout_ms = self.line(&key).map_or(self.config.default_activation_timeout_ms, |line| {
                line.activation_timeout_ms(self.config.default_activation_timeout_ms)
            });
            for held in self.queue.expire(&key, now_ns, timeout_ms.saturating_mul(NS_PER_MS)) {
                let reply = LocalReply::activation_timeout(&key, timeout_ms);
                self.metrics.unheld(&key, now_ns);
                if let Some(tracked) = self.requests.get_mut(&held.id) {
                    tracked.phase = Phase::Refused { status: reply.status, reason: reply.reason };
                    tracked.held_ns = Some(now_ns.saturating_sub(tracked.started_ns));
                }
                effects.push(Effect::Reply(held.id, reply));
            }
            effects.extend(self.pump(&key, now_ns, store));
        }
        effects.extend(self.timers.expired(now_ns).into_iter().map(|(id, reply)| Effect::Reply(id, reply)));
        effects
    }

    /// The response to request `id` started (its headers, a WebSocket's
    /// `101` too): its response-start deadline no longer applies.
    pub fn on_response_headers(&mut self, id: u32, now_ns: u64) {
        self.timers.response_started(id, now_ns);
    }

    /// Response bytes of request `id` arrived: its idle timer starts over.
    pub fn on_response_data(&mut self, id: u32, now_ns: u64) {
        self.timers.response_data(id, now_ns);
    }

    /// Requests in flight whose response timers run (see [`crate::deadline`]).
    pub fn timed(&self) -> usize {
        self.timers.len()
    }

    /// The stream of HTTP context `id` ended (answered, refused, aborted or
    /// timed out), with the response status Envoy recorded, if any. Cleans
    /// up, counts it, and admits the next request its breaker slot allows.
    pub fn on_log(&mut self, id: u32, status: Option<u32>, now_ns: u64, store: &dyn SharedStore) -> Vec<Effect> {
        self.timers.remove(id);
        let Some(tracked) = self.requests.remove(&id) else { return Vec::new() };
        let key = &tracked.key;
        let mut freed_slot = false;
        let mut held_ns = tracked.held_ns;
        let mut refused = None;
        let status = match tracked.phase {
            Phase::Waiting => {
                self.queue.remove(key, id);
                self.metrics.unheld(key, now_ns);
                held_ns = Some(now_ns.saturating_sub(tracked.started_ns));
                status.unwrap_or(0)
            }
            Phase::Admitted { slot } => {
                self.metrics.left(key, now_ns);
                if slot {
                    if let Err(e) = breaker::give_back(store, key) {
                        log::warn!("revgate: could not give back a breaker slot of {key}: {e}");
                    }
                    freed_slot = true;
                }
                status.unwrap_or(0)
            }
            Phase::Refused { status: ours, reason } => {
                refused = Some(reason);
                status.unwrap_or(ours)
            }
        };
        let duration_ns = now_ns.saturating_sub(tracked.started_ns);
        self.metrics.finished(key, Finished { status, duration_ns, held_ns, refused });
        if freed_slot && self.queue.len(key) > 0 { self.pump(key, now_ns, store) } else { Vec::new() }
    }

    /// The report of the window ending now, if there was traffic.
    pub fn take_report(&mut self, now_ns: u64, node_id: &str, reporter: &str) -> Option<revgate_proto::MetricsReport> {
        self.metrics.take_report(now_ns, node_id, reporter)
    }

    /// The metrics window started this long ago.
    pub fn report_due(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.metrics.window_start_ns())
            >= self.config.report_interval_ms.saturating_mul(NS_PER_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::fake::FakeStore;
    use crate::reply::{ACTIVATION_TIMEOUT, HELD_REQUESTS_LIMIT};

    const MS: u64 = NS_PER_MS;
    const T0: u64 = 1_700_000_000_000 * MS;

    fn target(rev: &str) -> Target {
        Target { key: RevisionKey::new("default", rev), cluster: String::new(), metadata_container_concurrency: None }
    }

    fn key(rev: &str) -> RevisionKey {
        RevisionKey::new("default", rev)
    }

    fn view(version: u64, entries: &[(&str, u32, u32)]) -> ReadinessTable {
        let entries: Vec<(&str, &str, u32, u32)> =
            entries.iter().map(|&(rev, ready, cc)| ("default", rev, ready, cc)).collect();
        ReadinessTable::of(version, &entries)
    }

    fn gate() -> Gate {
        Gate::new(FilterConfig { max_held_per_revision: 3, ..FilterConfig::default() }, T0)
    }

    fn pause(activate: Option<(&str, u64)>) -> Decision {
        Decision::Pause { activate: activate.map(|(rev, held)| Activation { key: key(rev), held }) }
    }

    #[test]
    fn without_a_view_everything_passes_after_the_startup_hold() {
        let (mut g, store) = (gate(), FakeStore::default());
        let now = T0 + g.config().startup_hold_ms * MS;
        assert_eq!(g.on_request(1, target("hello"), now, &store), Decision::Continue);
        assert_eq!(g.on_log(1, Some(200), now + MS, &store), vec![]);
        let report = g.take_report(now + 1000 * MS, "gw", "r").unwrap();
        assert_eq!(report.revisions[0].requests, 1);
    }

    fn partial(after: u64, version: u64, lines: &[(&str, u32, u32)], removed: &[&str]) -> Partial {
        let lines = lines
            .iter()
            .map(|&(rev, ready, cc)| {
                (
                    key(rev),
                    Readiness {
                        ready_endpoints: ready,
                        container_concurrency: cc,
                        activation_timeout_ms: 0,
                        ..Readiness::default()
                    },
                )
            })
            .collect();
        Partial { after, version, lines, removed: removed.iter().map(|rev| key(rev)).collect() }
    }

    #[test]
    fn a_partial_view_releases_held_requests_as_a_complete_one_would() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 0, 0), ("other", 0, 0), ("warm", 1, 0)]), T0, &store);
        assert_eq!(g.on_request(1, target("hello"), T0, &store), pause(Some(("hello", 1))));
        assert_eq!(g.on_request(2, target("other"), T0, &store), pause(Some(("other", 1))));
        assert_eq!(g.on_request(3, target("hello"), T0 + MS, &store), pause(None));

        let wrong = partial(5, 6, &[("hello", 1, 0)], &[]);
        assert_eq!(g.on_partial(&wrong, T0 + 2 * MS, &store), Err(WrongBase { base: 5, held: Some(1) }));
        assert_eq!((g.view_version(), g.held_total()), (Some(1), 3), "a partial on another base changes nothing");

        let ready = partial(1, 2, &[("hello", 1, 0)], &[]);
        assert_eq!(g.on_partial(&ready, T0 + 3 * MS, &store), Ok(vec![Effect::Resume(1), Effect::Resume(3)]));
        assert_eq!(g.view_version(), Some(2));
        assert_eq!(g.held_total(), 1, "other is still cold");
        assert_eq!(g.on_request(4, target("warm"), T0 + 4 * MS, &store), Decision::Continue, "untouched lines stay");

        let removed = partial(2, 3, &[], &["other"]);
        assert_eq!(g.on_partial(&removed, T0 + 5 * MS, &store), Ok(vec![Effect::Resume(2)]), "forgotten: released");
        assert_eq!(g.on_request(5, target("other"), T0 + 6 * MS, &store), Decision::Continue, "unknown now");

        let mut fresh = gate();
        let held = fresh.on_partial(&ready, T0, &store);
        assert_eq!(held, Err(WrongBase { base: 1, held: None }), "no view: only a complete one applies");
    }

    #[test]
    fn unknown_and_warm_revisions_pass() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_view(view(1, &[("warm", 2, 0)]), T0, &store);
        assert_eq!(g.on_request(1, target("warm"), T0, &store), Decision::Continue);
        assert_eq!(g.on_request(2, target("unknown"), T0, &store), Decision::Continue);
        assert_eq!(g.held_total(), 0);
    }

    #[test]
    fn cold_revision_holds_activates_once_and_releases_in_order() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 0, 0)]), T0, &store);
        assert_eq!(g.on_request(1, target("hello"), T0, &store), pause(Some(("hello", 1))));
        assert_eq!(g.on_request(2, target("hello"), T0 + MS, &store), pause(None));
        assert_eq!(g.held_total(), 2);
        // A timeout answer with the same view changes nothing.
        assert_eq!(g.on_view(view(1, &[("hello", 0, 0)]), T0 + 2 * MS, &store), vec![]);
        // Ready: both go, oldest first.
        assert_eq!(
            g.on_view(view(2, &[("hello", 1, 0)]), T0 + 3 * MS, &store),
            vec![Effect::Resume(1), Effect::Resume(2)]
        );
        assert_eq!(g.held_total(), 0);
        assert_eq!(g.on_request(3, target("hello"), T0 + 4 * MS, &store), Decision::Continue);
        g.on_log(1, Some(200), T0 + 10 * MS, &store);
        let report = g.take_report(T0 + 1000 * MS, "gw", "r").unwrap();
        let rev = &report.revisions[0];
        assert_eq!((rev.requests, rev.held), (1, 0));
        assert!(rev.average_held_concurrency.unwrap() > 0.0);
        // Held 3 ms, then 7 ms upstream: 10 ms as the client saw it.
        let seconds = |h: &Option<revgate_proto::DurationHistogram>| h.as_ref().map(|h| (h.count, h.sum_seconds));
        assert_eq!(rev.durations[0].status_code, 200);
        assert_eq!(seconds(&rev.durations[0].duration), Some((1, 0.010)));
        assert_eq!(seconds(&rev.held_duration), Some((1, 0.003)));
        assert_eq!(seconds(&rev.upstream_duration), Some((1, 0.007)));
    }

    #[test]
    fn a_full_queue_refuses_with_a_named_limit() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 0, 0)]), T0, &store);
        for id in 1..=3 {
            assert!(matches!(g.on_request(id, target("hello"), T0, &store), Decision::Pause { .. }));
        }
        let Decision::Refuse(reply) = g.on_request(4, target("hello"), T0, &store) else { panic!() };
        assert_eq!((reply.status, reply.reason), (503, HELD_REQUESTS_LIMIT));
        assert!(reply.body.contains("default/hello has 3 requests held"), "{}", reply.body);
        // The refused request is counted as a 503 when its stream ends.
        assert_eq!(g.on_log(4, None, T0 + MS, &store), vec![]);
        let report = g.take_report(T0 + 1000 * MS, "gw", "r").unwrap();
        assert_eq!(
            (report.revisions[0].requests, report.revisions[0].responses_5xx, report.revisions[0].held),
            (1, 1, 3)
        );
        assert_eq!(
            report.revisions[0].refusals,
            vec![revgate_proto::ReasonCount { reason: HELD_REQUESTS_LIMIT.into(), count: 1 }],
            "counted by x-revgate-reason"
        );
        assert_eq!(report.revisions[0].durations[0].status_code, 503, "no status from Envoy: the filter's own");
    }

    #[test]
    fn held_requests_expire_at_the_revisions_timeout() {
        let (mut g, store) = (gate(), FakeStore::default());
        let update = revgate_proto::ReadinessUpdate {
            version: 1,
            revisions: vec![revgate_proto::RevisionReadiness {
                namespace: "default".into(),
                revision: "hello".into(),
                activation_timeout_ms: 1_000,
                ..Default::default()
            }],
            ..Default::default()
        };
        let line = ReadinessTable::complete(ReadinessTable::from_update(update).unwrap());
        g.on_view(line, T0, &store);
        g.on_request(1, target("hello"), T0, &store);
        g.on_request(2, target("hello"), T0 + 600 * MS, &store);
        assert_eq!(g.on_tick(T0 + 999 * MS, &store), vec![]);
        let effects = g.on_tick(T0 + 1000 * MS, &store);
        let [Effect::Reply(1, reply)] = effects.as_slice() else { panic!("{effects:?}") };
        assert_eq!((reply.status, reply.reason), (503, ACTIVATION_TIMEOUT));
        assert!(reply.body.contains("within 1000 ms"));
        assert_eq!(g.held_total(), 1);
        assert_eq!(g.on_log(1, Some(503), T0 + 1001 * MS, &store), vec![]);
    }

    #[test]
    fn a_released_request_whose_response_does_not_start_in_time_gets_504_and_frees_its_slot() {
        let (mut g, store) = (gate(), FakeStore::default());
        let line = |ready: u32| {
            let update = revgate_proto::ReadinessUpdate {
                version: u64::from(ready) + 1,
                revisions: vec![revgate_proto::RevisionReadiness {
                    namespace: "default".into(),
                    revision: "hello".into(),
                    ready_endpoints: ready,
                    container_concurrency: 1,
                    activation_timeout_ms: 2_000,
                    response_start_timeout_ms: 1_000,
                    idle_timeout_ms: 0,
                }],
                ..Default::default()
            };
            ReadinessTable::complete(ReadinessTable::from_update(update).unwrap())
        };
        g.on_view(line(0), T0, &store);
        g.on_request(1, target("hello"), T0, &store);
        // Held for 5 s: the timers start only when the request goes upstream.
        assert_eq!(g.on_view(line(1), T0 + 5_000 * MS, &store), vec![Effect::Resume(1)]);
        assert_eq!(g.on_tick(T0 + 5_999 * MS, &store), vec![]);
        let effects = g.on_tick(T0 + 6_000 * MS, &store);
        let [Effect::Reply(1, reply)] = effects.as_slice() else { panic!("{effects:?}") };
        assert_eq!((reply.status, reply.reason), (504, "response-start-timeout"));
        assert_eq!(g.on_log(1, Some(504), T0 + 6_001 * MS, &store), vec![]);
        assert_eq!(store.count(&key("hello")), 0, "the breaker slot is given back");

        // A response that started in time is not cut afterwards.
        g.on_request(2, target("hello"), T0 + 7_000 * MS, &store);
        g.on_response_headers(2, T0 + 7_500 * MS);
        assert_eq!(g.on_tick(T0 + 60_000 * MS, &store), vec![]);
        assert_eq!(g.timed(), 0);
    }

    #[test]
    fn client_abort_while_held_is_cleaned_up() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 0, 0)]), T0, &store);
        g.on_request(1, target("hello"), T0, &store);
        g.on_request(2, target("hello"), T0, &store);
        assert_eq!(g.on_log(1, None, T0 + 5 * MS, &store), vec![]);
        assert_eq!(g.held_total(), 1);
        assert_eq!(g.on_view(view(2, &[("hello", 1, 0)]), T0 + 10 * MS, &store), vec![Effect::Resume(2)]);
        // A late log for an id already gone is harmless.
        assert_eq!(g.on_log(1, None, T0 + 11 * MS, &store), vec![]);
    }

    #[test]
    fn breaker_admits_up_to_cc_times_ready_and_releases_as_requests_finish() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 2, 1)]), T0, &store);
        assert_eq!(g.on_request(1, target("hello"), T0, &store), Decision::Continue);
        assert_eq!(g.on_request(2, target("hello"), T0, &store), Decision::Continue);
        assert_eq!(g.on_request(3, target("hello"), T0, &store), pause(None), "warm: no activation");
        assert_eq!(g.on_request(4, target("hello"), T0, &store), pause(None));
        assert_eq!(store.count(&key("hello")), 2);
        // One finishes: its slot goes to the oldest waiting request at once.
        assert_eq!(g.on_log(1, Some(200), T0 + MS, &store), vec![Effect::Resume(3)]);
        assert_eq!(store.count(&key("hello")), 2);
        // Scaling up frees capacity.
        assert_eq!(g.on_view(view(2, &[("hello", 3, 1)]), T0 + 2 * MS, &store), vec![Effect::Resume(4)]);
        assert_eq!(store.count(&key("hello")), 3);
        for id in [2, 3, 4] {
            g.on_log(id, Some(200), T0 + 3 * MS, &store);
        }
        assert_eq!(store.count(&key("hello")), 0);
    }

    #[test]
    fn metadata_concurrency_applies_when_the_view_has_none() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 1, 0)]), T0, &store);
        let limited = Target { metadata_container_concurrency: Some(1), ..target("hello") };
        assert_eq!(g.on_request(1, limited.clone(), T0, &store), Decision::Continue);
        assert_eq!(g.on_request(2, limited, T0, &store), pause(None));
    }

    #[test]
    fn capacity_is_shared_across_vms() {
        let store = FakeStore::default();
        let (mut a, mut b) = (gate(), gate());
        for g in [&mut a, &mut b] {
            g.on_view(view(1, &[("hello", 1, 1)]), T0, &store);
        }
        assert_eq!(a.on_request(1, target("hello"), T0, &store), Decision::Continue);
        assert_eq!(b.on_request(1, target("hello"), T0, &store), pause(None));
        assert_eq!(b.on_tick(T0 + 100 * MS, &store), vec![], "still full");
        assert_eq!(a.on_log(1, Some(200), T0 + 150 * MS, &store), vec![], "nothing waits in VM a");
        assert_eq!(b.on_tick(T0 + 200 * MS, &store), vec![Effect::Resume(1)], "VM b notices on its tick");
        assert_eq!(store.count(&key("hello")), 1);
    }

    #[test]
    fn breaker_failure_fails_open() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 1, 1)]), T0, &store);
        store.fail.set(true);
        assert_eq!(g.on_request(1, target("hello"), T0, &store), Decision::Continue);
        assert_eq!(g.on_request(2, target("hello"), T0, &store), Decision::Continue);
        assert_eq!(g.on_log(1, Some(200), T0, &store), vec![], "no slot was taken, none given back");
    }

    #[test]
    fn a_new_vm_holds_requests_until_its_first_view_then_activates_cold_ones() {
        let (mut g, store) = (gate(), FakeStore::default());
        assert!(matches!(g.on_request(1, target("hello"), T0, &store), Decision::Pause { activate: None }));
        assert!(matches!(g.on_request(2, target("warm"), T0, &store), Decision::Pause { activate: None }));
        assert!(g.take_activations().is_empty());

        let effects = g.on_view(view(1, &[("hello", 0, 0), ("warm", 1, 0)]), T0 + MS, &store);
        assert_eq!(effects, vec![Effect::Resume(2)], "the ready revision's request goes");
        let activations = g.take_activations();
        assert_eq!(activations.len(), 1);
        assert_eq!((activations[0].key.revision.as_str(), activations[0].held), ("hello", 1));
        assert!(g.take_activations().is_empty(), "sent once");
    }

    #[test]
    fn without_a_first_view_held_requests_pass_once_the_startup_hold_ends() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_request(1, target("hello"), T0, &store);
        let hold_ns = g.config().startup_hold_ms * MS;
        assert_eq!(g.on_tick(T0 + hold_ns - MS, &store), vec![]);
        assert_eq!(g.on_tick(T0 + hold_ns, &store), vec![Effect::Resume(1)]);
        assert_eq!(g.on_request(2, target("hello"), T0 + hold_ns, &store), Decision::Continue);
    }

    #[test]
    fn a_stale_view_is_kept_so_held_requests_end_at_their_timeout_and_warm_ones_pass() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 0, 0), ("warm", 1, 0)]), T0, &store);
        g.on_request(1, target("hello"), T0, &store);
        let stale_ns = g.config().readiness_stale_after_ms() * MS;
        assert_eq!(g.on_tick(T0 + stale_ns + MS, &store), vec![], "nothing is released into a cold revision");
        assert_eq!(g.view_version(), Some(1));
        assert_eq!(g.on_request(2, target("warm"), T0 + stale_ns + MS, &store), Decision::Continue);
        assert!(matches!(g.on_request(3, target("hello"), T0 + stale_ns + MS, &store), Decision::Pause { .. }));
    }

    #[test]
    fn a_revision_dropped_from_the_view_releases_its_held_requests() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 0, 0), ("other", 0, 0)]), T0, &store);
        g.on_request(1, target("hello"), T0, &store);
        g.on_request(2, target("other"), T0, &store);
        assert_eq!(g.on_view(view(2, &[("other", 0, 0)]), T0 + MS, &store), vec![Effect::Resume(1)]);
        assert_eq!(g.held_total(), 1);
    }

    #[test]
    fn newcomers_queue_behind_waiting_requests() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 1, 1)]), T0, &store);
        g.on_request(1, target("hello"), T0, &store);
        g.on_request(2, target("hello"), T0, &store);
        // Another VM's request finished (simulated): capacity is free, but 2 waits first.
        store.set_count(&key("hello"), 0);
        assert_eq!(g.on_request(3, target("hello"), T0, &store), pause(None));
        assert_eq!(g.on_tick(T0 + MS, &store), vec![Effect::Resume(2)]);
    }

    const ISTIO: &str = "outbound|80||hello.default.svc.cluster.local";

    fn probe_gate() -> Gate {
        let config =
            FilterConfig { release_gate: ReleaseGate::Probe, max_held_per_revision: 3, ..FilterConfig::default() };
        Gate::new(config, T0)
    }

    fn routed(rev: &str, cluster: &str) -> Target {
        Target { cluster: cluster.to_owned(), ..target(rev) }
    }

    fn probe_call(rev: &str, cluster: &str) -> ProbeCall {
        ProbeCall { cluster: cluster.to_owned(), key: key(rev) }
    }

    const NO_HEALTHY_UPSTREAM: (&str, &[u8]) = ("503", b"no healthy upstream");

    fn answer(g: &mut Gate, token: u32, (status, body): (&str, &[u8]), now: u64, store: &FakeStore) -> Vec<Effect> {
        g.on_probe_answer(token, &probe::classify(Some(status), body), now, store).1
    }

    #[test]
    fn probe_gate_releases_a_cold_start_only_once_the_cluster_answers() {
        let (mut g, store) = (probe_gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 0, 0)]), T0, &store);
        assert_eq!(g.on_request(1, routed("hello", ISTIO), T0, &store), pause(Some(("hello", 1))));
        assert_eq!(g.on_request(2, routed("hello", ISTIO), T0, &store), pause(None));
        assert_eq!(g.take_probes(T0), vec![], "cold: nothing to probe yet");

        // The control plane says ready; this Envoy may not have the endpoints yet.
        assert_eq!(g.on_view(view(2, &[("hello", 1, 0)]), T0 + MS, &store), vec![], "held until a probe answers");
        assert_eq!(g.take_probes(T0 + MS), vec![probe_call("hello", ISTIO)]);
        g.probe_dispatched(ISTIO, 100);
        assert!(g.is_probe(100));
        assert_eq!(g.take_probes(T0 + MS), vec![], "one probe in flight");
        assert_eq!(g.on_tick(T0 + 2 * MS, &store), vec![], "ticks release nothing unconfirmed");

        // Envoy answers for itself: not yet; retried after 10 ms.
        assert_eq!(answer(&mut g, 100, NO_HEALTHY_UPSTREAM, T0 + 3 * MS, &store), vec![]);
        assert!(g.probe_retry_pending());
        assert_eq!(g.take_probes(T0 + 12 * MS), vec![]);
        assert_eq!(g.take_probes(T0 + 13 * MS), vec![probe_call("hello", ISTIO)]);
        g.probe_dispatched(ISTIO, 101);

        // The app answers (anything): both go, oldest first.
        assert_eq!(
            answer(&mut g, 101, ("404", b"not found"), T0 + 14 * MS, &store),
            vec![Effect::Resume(1), Effect::Resume(2)]
        );
        assert!(!g.probe_retry_pending());
        assert_eq!(g.on_request(3, routed("hello", ISTIO), T0 + 15 * MS, &store), Decision::Continue);
        assert_eq!(g.take_probes(T0 + 15 * MS), vec![]);
    }

    #[test]
    fn probes_a_request_makes_due_stay_due_for_the_root_to_send() {
        let (mut g, store) = (probe_gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 1, 0)]), T0, &store);
        assert_eq!(g.on_request(1, routed("hello", ISTIO), T0, &store), pause(None));
        assert!(g.probes_due(T0));
        assert!(g.probe_retry_pending(), "the root ticks at the retry step until it sends them");
        assert_eq!(g.take_probes(T0 + MS), vec![probe_call("hello", ISTIO)], "still due for the root");
        g.probe_dispatched(ISTIO, 9);
        assert!(!g.probes_due(T0 + 2 * MS) && !g.probe_retry_pending());
    }

    #[test]
    fn probe_gate_probes_again_after_the_revision_went_cold() {
        let (mut g, store) = (probe_gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 1, 0)]), T0, &store);
        // A ready revision this VM never confirmed: its first request waits for a probe.
        assert_eq!(g.on_request(1, routed("hello", ISTIO), T0, &store), pause(None));
        assert_eq!(g.take_probes(T0), vec![probe_call("hello", ISTIO)]);
        g.probe_dispatched(ISTIO, 7);
        assert_eq!(answer(&mut g, 7, ("200", b"hi"), T0 + MS, &store), vec![Effect::Resume(1)]);

        g.on_view(view(2, &[("hello", 0, 0)]), T0 + 2 * MS, &store);
        assert_eq!(g.on_request(2, routed("hello", ISTIO), T0 + 3 * MS, &store), pause(Some(("hello", 1))));
        assert_eq!(g.on_view(view(3, &[("hello", 1, 0)]), T0 + 4 * MS, &store), vec![], "confirmation was forgotten");
        assert_eq!(g.take_probes(T0 + 4 * MS), vec![probe_call("hello", ISTIO)]);
        g.probe_dispatched(ISTIO, 8);
        // Cold again while the probe is out: its answer counts for nothing.
        g.on_view(view(4, &[("hello", 0, 0)]), T0 + 5 * MS, &store);
        let (confirmed, effects) = g.on_probe_answer(8, &probe::classify(Some("200"), b""), T0 + 6 * MS, &store);
        assert_eq!((confirmed, effects), (None, vec![]));
        assert_eq!(g.held_total(), 1);
    }

    #[test]
    fn probe_gate_stops_probing_when_nobody_waits_and_still_expires_held_requests() {
        let (mut g, store) = (probe_gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 1, 0)]), T0, &store);
        g.on_request(1, routed("hello", ISTIO), T0, &store);
        assert_eq!(g.take_probes(T0).len(), 1);
        assert_eq!(g.probe_dispatch_failed(ISTIO, T0), 1, "e.g. the cluster is not in this Envoy");
        assert_eq!(g.take_probes(T0 + 10 * MS).len(), 1, "retried");
        g.probe_dispatch_failed(ISTIO, T0 + 10 * MS);
        g.on_log(1, None, T0 + 11 * MS, &store);
        assert_eq!(g.take_probes(T0 + 100 * MS), vec![], "the client left: no more probes");
        assert!(!g.probe_retry_pending());

        // Never confirmed: the request ends at its activation timeout.
        g.on_request(2, routed("hello", ISTIO), T0 + 200 * MS, &store);
        let timeout = g.config().default_activation_timeout_ms * MS;
        let effects = g.on_tick(T0 + 200 * MS + timeout, &store);
        assert!(
            matches!(effects.as_slice(), [Effect::Reply(2, reply)] if reply.reason == ACTIVATION_TIMEOUT),
            "{effects:?}"
        );
    }

    #[test]
    fn probe_gate_confirms_each_cluster_of_a_revision_and_respects_the_breaker() {
        let (mut g, store) = (probe_gate(), FakeStore::default());
        let h2c = "outbound|81||hello.default.svc.cluster.local";
        g.on_view(view(1, &[("hello", 1, 1)]), T0, &store);
        g.on_request(1, routed("hello", ISTIO), T0, &store);
        g.on_request(2, routed("hello", h2c), T0, &store);
        assert_eq!(g.take_probes(T0), vec![probe_call("hello", ISTIO)], "the oldest request's cluster");
        g.probe_dispatched(ISTIO, 1);
        assert_eq!(answer(&mut g, 1, ("200", b""), T0 + MS, &store), vec![Effect::Resume(1)]);
        assert_eq!(store.count(&key("hello")), 1, "the released request holds the breaker's only slot");
        assert_eq!(g.take_probes(T0 + MS), vec![probe_call("hello", h2c)], "the next request's own cluster");
        g.probe_dispatched(h2c, 2);
        assert_eq!(answer(&mut g, 2, ("200", b""), T0 + 2 * MS, &store), vec![], "confirmed, but at capacity");
        assert_eq!(g.on_log(1, Some(200), T0 + 3 * MS, &store), vec![Effect::Resume(2)]);
    }

    #[test]
    fn probe_gate_lets_unlisted_and_unprobeable_requests_go_on_the_control_planes_word() {
        let (mut g, store) = (probe_gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 1, 0)]), T0, &store);
        assert_eq!(
            g.on_request(1, routed("other", "outbound|80||other.default.svc.cluster.local"), T0, &store),
            Decision::Continue
        );
        assert_eq!(g.on_request(2, target("hello"), T0, &store), Decision::Continue, "no cluster to probe through");
        assert_eq!(g.take_probes(T0), vec![]);
    }

    #[test]
    fn control_plane_gate_never_probes() {
        let (mut g, store) = (gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 0, 0)]), T0, &store);
        g.on_request(1, routed("hello", ISTIO), T0, &store);
        assert_eq!(g.on_view(view(2, &[("hello", 1, 0)]), T0 + MS, &store), vec![Effect::Resume(1)]);
        assert_eq!(g.take_probes(T0 + MS), vec![]);

        // Switching the gate off releases requests that waited only for a probe.
        let (mut g, store) = (probe_gate(), FakeStore::default());
        g.on_view(view(1, &[("hello", 1, 0)]), T0, &store);
        g.on_request(1, routed("hello", ISTIO), T0, &store);
        g.reconfigure(FilterConfig::default());
        assert_eq!(g.on_tick(T0 + MS, &store), vec![Effect::Resume(1)]);
    }

    #[test]
    fn reports_are_due_every_interval() {
        let g = gate();
        assert!(!g.report_due(T0 + 999 * MS));
        assert!(g.report_due(T0 + 1000 * MS));
    }
}
