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
//! | admitted | sent upstream, with or without a breaker slot; a listed revision's response timers start ([`crate::deadline`]) | the stream ends (`on_log`), giving its slot back; a timer that passes answers it 504 first ([`Effect::Reply`]) |
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

use crate::breaker::{self, BreakerError, SharedStore};
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
            Some(line) => self.admission(&tracked.key, &tracked.cluster, &line, metadata_cc, now_ns, store),
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
        now_ns: u64,
        store: &dyn SharedStore,
    ) -> Admission {
        if !line.is_ready() || !self.confirmed(cluster) {
            return Admission::Wait;
        }
        let Some(capacity) = line.capacity(metadata_cc) else { return Admission::Go { slot: false } };
        match breaker::try_acquire(store, key, capacity, now_ns) {
            Ok(true) => Admission::Go { slot: true },
            // Another VM is creating the revision's counter: the next pump
            // (at the latest the root's tick) asks again.
            Ok(false) | Err(BreakerError::Busy { .. }) => Admission::Wait,
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
                Some(line) => self.admission(key, &cluster, line, metadata_cc, now_ns, store),
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
                    if let Err(e) = breaker::give_back(store, key, now_ns) {
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
mod tests;
