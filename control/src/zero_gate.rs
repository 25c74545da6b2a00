//! The one seam that orders going to zero: the gateway filters hear that a
//! revision is cold before its endpoints leave.
//!
//! A request that passes a filter which still believes a revision warm, and
//! then meets a gateway whose endpoints are gone, fails with Envoy's "no
//! healthy upstream"; one held by a filter that knows the revision is cold
//! waits for its activation instead. So, as Knative puts the activator in
//! the path before removing a revision's last pod, every change that would
//! take a revision to zero endpoints goes through a [`ZeroGate`]:
//!
//! | input for revision R | shown before | the gate shows | R cold? |
//! |---|---|---|---|
//! | not zero | anything | the input, at once | no (a pending withdrawal is superseded) |
//! | zero | not zero | what was shown, until every filter heard R is cold or [`COLD_NOTICE_TIMEOUT`] passed; then the input | yes, while it waits |
//! | zero | zero | the input | no |
//! | zero | nothing (only where [`Withdrawal::HOLD_UNSEEN`], as cluster mode's scales) | nothing, until every filter heard R is cold or [`COLD_NOTICE_TIMEOUT`] passed; then the input | yes, while it waits |
//! | absent (the revision is gone) | anything | nothing, at once | no |
//!
//! "Cold" is what the filters are told: the revisions in [`Gated::cold`]
//! are wanted at zero endpoints in the readiness table, which is what every
//! filter's [`ColdNotice`] waits for them to hear.
//!
//! The same gate serves both modes:
//! - standalone (`serve`, `up`), between the runtime's states and the
//!   control plane's owner task: [`gate_states`]. The owner takes the gated
//!   states as its one input for endpoints, and folds `cold` into the
//!   counts it wants; nothing is ever sent back into it.
//! - cluster mode, where Kubernetes removes a Deployment's endpoints by
//!   itself once it is scaled: [`GatedRuntime`] holds a scale to zero until
//!   the filters heard, and [`desired_counts`] tells them.
//!
//! The gate is a task that owns the pending withdrawals; it reads its input
//! from a `watch` and publishes what it lets through on another.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use revgate_model::plan::ObjectKey;
use revgate_model::replaced::{Differing, differing};
use revgate_runtime::{RevisionState, RevisionStates, Runtime, Workload};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::activation::{ActivationService, COLD_NOTICE_TIMEOUT};
use crate::publish::replace_if_changed;

/// Waits until every live gateway filter heard that a revision is cold
/// (wanted at zero endpoints). It need not give up by itself: the gate stops
/// waiting after its timeout.
pub trait ColdNotice: Send + Sync + 'static {
    fn heard_cold(&self, revision: ObjectKey) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
}

impl ColdNotice for ActivationService {
    fn heard_cold(&self, revision: ObjectKey) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let service = self.clone();
        Box::pin(async move { service.until_cold_everywhere(&revision).await })
    }
}

/// A per-revision value the gate can hold back while it asks for zero.
pub trait Withdrawal: Clone + PartialEq + Send + Sync + 'static {
    /// Whether a first value that is already zero is held too: where the
    /// gate cannot see what the gateways have (a Deployment may still run
    /// pods from before a restart), nothing is taken to zero unheard.
    const HOLD_UNSEEN: bool = false;

    /// Whether this value takes the revision to zero endpoints.
    fn is_zero(&self) -> bool;

    /// What is shown while the move from `self` (shown) to `next` (zero)
    /// waits for the filters: by default, `self` unchanged.
    fn held(&self, _next: &Self) -> Self {
        self.clone()
    }
}

impl Withdrawal for RevisionState {
    fn is_zero(&self) -> bool {
        self.ready.is_empty()
    }

    /// The runtime's latest view of the revision (instances, desired count)
    /// with the endpoints the gateways keep meanwhile: only the withdrawal
    /// of the last endpoints is held, never the rest of the news.
    fn held(&self, next: &Self) -> Self {
        RevisionState { ready: self.ready.clone(), reason: None, message: None, ..next.clone() }
    }
}

/// What the gate lets through.
#[derive(Debug, Clone, PartialEq)]
pub struct Gated<T> {
    /// The input, except revisions whose withdrawal waits, which keep
    /// what was shown before.
    pub items: BTreeMap<ObjectKey, T>,
    /// The revisions whose withdrawal waits for the filters: tell the
    /// filters they are wanted at zero.
    pub cold: BTreeSet<ObjectKey>,
}

impl<T> Default for Gated<T> {
    fn default() -> Self {
        Self { items: BTreeMap::new(), cold: BTreeSet::new() }
    }
}

/// The gate's rules (the table in the module docs), without I/O or clock.
///
/// What it shows lives with its readers (the output `watch`), and is
/// changed in place, revision by revision: a change of one revision costs
/// that revision, not the world. Each input is compared with what is shown,
/// which is the input but for the revisions that wait; so the gate keeps
/// only their inputs, never a reference to the whole input, which would make
/// its sender copy the whole map at its next change.
#[derive(Debug, Clone)]
pub struct ZeroGate<T> {
    /// The latest input of each revision whose withdrawal waits (those in
    /// the shown `cold`): what is shown once the filters heard.
    waiting: BTreeMap<ObjectKey, T>,
}

impl<T> Default for ZeroGate<T> {
    fn default() -> Self {
        Self { waiting: BTreeMap::new() }
    }
}

/// What one input did at the gate.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// Revisions that just became cold: wait for their filters.
    pub started: Vec<ObjectKey>,
    /// Revisions that left `cold` before their filters heard: a newer
    /// change won, and their waits are over.
    pub superseded: Vec<ObjectKey>,
    /// Whether what is shown changed.
    pub changed: bool,
}

impl<T: Withdrawal> ZeroGate<T> {
    /// Takes the latest input and updates `shown` for the revisions whose
    /// input changed. `shown` is copied only if a reader still holds it.
    pub fn take(&mut self, shown: &mut Arc<Gated<T>>, input: Arc<BTreeMap<ObjectKey, T>>) -> Step {
        let mut step = Step::default();
        // A waiting revision's input stands for what it shows.
        let Differing { gone, changed } = differing(&shown.items, input.iter());
        let gone: Vec<ObjectKey> = gone.into_iter().cloned().collect();
        let changed: Vec<(&ObjectKey, &T)> =
            changed.into_iter().filter(|(key, next)| self.waiting.get(*key) != Some(*next)).collect();
        let unseen_gone: Vec<ObjectKey> =
            self.waiting.keys().filter(|key| !input.contains_key(*key)).cloned().collect();
        if gone.is_empty() && changed.is_empty() && unseen_gone.is_empty() {
            return step;
        }
        let shown = Arc::make_mut(shown);
        for key in gone.into_iter().chain(unseen_gone) {
            shown.items.remove(&key);
            self.waiting.remove(&key);
            if shown.cold.remove(&key) {
                step.superseded.push(key);
            }
        }
        for (key, next) in changed {
            match shown.items.get(key) {
                Some(current) if next.is_zero() && !current.is_zero() => {
                    let held = current.held(next);
                    shown.items.insert(key.clone(), held);
                    self.wait(shown, key, next, &mut step);
                }
                None if next.is_zero() && T::HOLD_UNSEEN => {
                    // Nothing shown yet: nothing is let through until heard.
                    self.wait(shown, key, next, &mut step);
                }
                _ => {
                    shown.items.insert(key.clone(), next.clone());
                    self.waiting.remove(key);
                    if shown.cold.remove(key) {
                        step.superseded.push(key.clone());
                    }
                }
            }
        }
        step.changed = true;
        step
    }

    /// `key`'s withdrawal (to `next`) waits for the filters.
    fn wait(&mut self, shown: &mut Gated<T>, key: &ObjectKey, next: &T, step: &mut Step) {
        self.waiting.insert(key.clone(), next.clone());
        if shown.cold.insert(key.clone()) {
            step.started.push(key.clone());
        }
    }

    /// Every filter heard `revision` is cold (or the wait timed out): its
    /// withdrawal goes through. Returns whether what is shown changed.
    pub fn heard(&mut self, shown: &mut Arc<Gated<T>>, revision: &ObjectKey) -> bool {
        if !shown.cold.contains(revision) {
            return false;
        }
        let shown = Arc::make_mut(shown);
        shown.cold.remove(revision);
        match self.waiting.remove(revision) {
            Some(next) => shown.items.insert(revision.clone(), next),
            None => shown.items.remove(revision),
        };
        true
    }
}

/// Runs a [`ZeroGate`] over `input` until the input's sender or every
/// reader of the output is gone. Each withdrawal waits for `notice`, at
/// most `timeout`; a newer change for the revision cancels its wait.
pub fn start<T: Withdrawal + std::fmt::Debug>(
    mut input: watch::Receiver<Arc<BTreeMap<ObjectKey, T>>>,
    notice: Arc<dyn ColdNotice>,
    timeout: Duration,
) -> watch::Receiver<Arc<Gated<T>>> {
    let mut gate = ZeroGate::default();
    let mut waits = Waits { tasks: JoinSet::new(), pending: BTreeMap::new(), notice, timeout };
    let mut first = Arc::new(Gated::default());
    waits.follow(gate.take(&mut first, input.borrow_and_update().clone()));
    let (output, gated) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = input.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = input.borrow_and_update().clone();
                    let mut step = Step::default();
                    output.send_if_modified(|shown| {
                        step = gate.take(shown, next);
                        step.changed
                    });
                    waits.follow(step);
                }
                Some(done) = waits.tasks.join_next_with_id(), if !waits.tasks.is_empty() => {
                    // A cancelled wait, or one superseded after it finished, lets nothing through;
                    // a wait that panicked lets its withdrawal through, as on timeout, rather than
                    // leave the revision cold for good.
                    let (id, revision) = match done {
                        Ok(done) => done,
                        Err(e) if e.is_panic() => {
                            let id = e.id();
                            let waiting = waits.pending.iter().find(|(_, wait)| wait.id() == id);
                            let Some(revision) = waiting.map(|(key, _)| key.clone()) else { continue };
                            tracing::warn!(%revision, "waiting for the gateway filters to hear the revision is cold \
                                failed; removing its endpoints anyway");
                            (id, revision)
                        }
                        Err(_) => continue,
                    };
                    if waits.pending.get(&revision).map(AbortHandle::id) != Some(id) {
                        continue;
                    }
                    waits.pending.remove(&revision);
                    output.send_if_modified(|shown| gate.heard(shown, &revision));
                }
                () = output.closed() => return,
            }
        }
    });
    gated
}

/// The gate task's waits for the filters, one per cold revision.
struct Waits {
    tasks: JoinSet<ObjectKey>,
    pending: BTreeMap<ObjectKey, AbortHandle>,
    notice: Arc<dyn ColdNotice>,
    timeout: Duration,
}

impl Waits {
    /// Cancels the waits a step superseded and starts those it began.
    fn follow(&mut self, step: Step) {
        for revision in step.superseded {
            if let Some(wait) = self.pending.remove(&revision) {
                wait.abort();
            }
        }
        for revision in step.started {
            let (heard, timeout, key) = (self.notice.heard_cold(revision.clone()), self.timeout, revision.clone());
            let task = self.tasks.spawn(async move {
                if tokio::time::timeout(timeout, heard).await.is_err() {
                    tracing::warn!(%key, "not every gateway filter heard the revision is cold in time; removing its endpoints anyway");
                }
                key
            });
            if let Some(superseded) = self.pending.insert(revision, task) {
                superseded.abort();
            }
        }
    }
}

/// Standalone: the runtime's states as the control plane's owner takes
/// them, each revision's last endpoints held until the filters heard it is
/// cold.
pub fn gate_states(
    states: watch::Receiver<Arc<RevisionStates>>,
    notice: Arc<dyn ColdNotice>,
) -> watch::Receiver<Arc<Gated<RevisionState>>> {
    start(states, notice, COLD_NOTICE_TIMEOUT)
}

/// A scale the autoscaler asked for, as cluster mode's gate holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wish {
    pub workload: Workload,
    pub replicas: u32,
}

impl Withdrawal for Wish {
    const HOLD_UNSEEN: bool = true;

    fn is_zero(&self) -> bool {
        self.replicas == 0
    }
}

/// Cluster mode's runtime: Kubernetes withdraws a Deployment's endpoints
/// itself once it is scaled to zero, so the scale to zero is what waits at
/// the gate; every other call goes through at once.
#[derive(Debug)]
pub struct GatedRuntime {
    inner: Arc<dyn Runtime>,
    wishes: watch::Sender<Arc<BTreeMap<ObjectKey, Wish>>>,
    cold: watch::Receiver<Arc<BTreeSet<ObjectKey>>>,
}

impl GatedRuntime {
    /// Wraps `inner`; its scales to zero wait for `notice`.
    pub fn start(inner: Arc<dyn Runtime>, notice: Arc<dyn ColdNotice>) -> Self {
        let (wishes, input) = watch::channel(Arc::new(BTreeMap::new()));
        let mut gated = start(input, notice, COLD_NOTICE_TIMEOUT);
        let (cold_tx, cold) = watch::channel(Arc::new(BTreeSet::new()));
        let applier = inner.clone();
        tokio::spawn(async move {
            let mut applied: BTreeMap<ObjectKey, Wish> = BTreeMap::new();
            loop {
                let current = gated.borrow_and_update().clone();
                for (key, wish) in &current.items {
                    if applied.get(key) != Some(wish) {
                        applier.scale(&wish.workload, wish.replicas);
                    }
                }
                applied.clone_from(&current.items);
                replace_if_changed(&cold_tx, current.cold.clone());
                if gated.changed().await.is_err() {
                    return;
                }
            }
        });
        Self { inner, wishes, cold }
    }

    /// The revisions being taken to zero, for [`desired_counts`].
    pub fn cold(&self) -> watch::Receiver<Arc<BTreeSet<ObjectKey>>> {
        self.cold.clone()
    }
}

impl Runtime for GatedRuntime {
    fn scale(&self, workload: &Workload, replicas: u32) {
        let wish = Wish { workload: workload.clone(), replicas };
        self.wishes.send_if_modified(|wishes| {
            if wishes.get(&workload.key) == Some(&wish) {
                return false;
            }
            Arc::make_mut(wishes).insert(workload.key.clone(), wish);
            true
        });
    }

    fn remove(&self, key: &ObjectKey) {
        self.wishes.send_if_modified(|wishes| Arc::make_mut(wishes).remove(key).is_some());
        self.inner.remove(key);
    }

    fn states(&self) -> watch::Receiver<Arc<RevisionStates>> {
        self.inner.states()
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.inner.shutdown()
    }
}

/// Cluster mode: publishes on `tx` the endpoint count the filters are told
/// per revision: its ready instances, or zero while it is being taken to
/// zero. Follows until `states` or `cold` ends.
pub fn desired_counts(
    mut states: watch::Receiver<Arc<RevisionStates>>,
    mut cold: watch::Receiver<Arc<BTreeSet<ObjectKey>>>,
    tx: watch::Sender<Arc<BTreeMap<ObjectKey, u32>>>,
) {
    let counts = |states: &RevisionStates, cold: &BTreeSet<ObjectKey>| -> BTreeMap<ObjectKey, u32> {
        states
            .iter()
            .map(|(key, state)| {
                let ready = if cold.contains(key) { 0 } else { u32::try_from(state.ready.len()).unwrap_or(u32::MAX) };
                (key.clone(), ready)
            })
            .collect()
    };
    replace_if_changed(&tx, counts(&states.borrow_and_update(), &cold.borrow_and_update()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = states.changed() => if changed.is_err() { return },
                changed = cold.changed() => if changed.is_err() { return },
            }
            let current = counts(&states.borrow_and_update(), &cold.borrow_and_update());
            replace_if_changed(&tx, current);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use revgate_model::plan::Endpoint;

    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::new("default", "hello-00001")
    }

    fn endpoints(ports: &[u16]) -> Vec<Endpoint> {
        ports.iter().map(|port| Endpoint { host: "127.0.0.1".into(), port: *port }).collect()
    }

    /// The runtime's states: `hello-00001` with these ready ports.
    fn states(ports: &[u16]) -> Arc<RevisionStates> {
        Arc::new(RevisionStates::from([(key(), RevisionState { ready: endpoints(ports), ..RevisionState::default() })]))
    }

    /// Gateway filters that hear a revision is cold when the test says so.
    #[derive(Debug, Default)]
    struct Filters {
        heard: watch::Sender<u32>,
    }

    impl Filters {
        fn hear(&self) {
            self.heard.send_modify(|heard| *heard += 1);
        }
    }

    impl ColdNotice for Filters {
        fn heard_cold(&self, _: ObjectKey) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
            let mut heard = self.heard.subscribe();
            let asked = *heard.borrow_and_update();
            Box::pin(async move {
                let _ = heard.wait_for(|heard| *heard > asked).await;
            })
        }
    }

    /// Lets the gate task run whatever it can without time passing.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    struct Setup {
        runtime: watch::Sender<Arc<RevisionStates>>,
        filters: Arc<Filters>,
        gated: watch::Receiver<Arc<Gated<RevisionState>>>,
    }

    impl Setup {
        /// A gate over a revision serving on port 8081.
        fn start() -> Self {
            let (runtime, states_rx) = watch::channel(states(&[8081]));
            let filters = Arc::new(Filters::default());
            let gated = start(states_rx, filters.clone(), COLD_NOTICE_TIMEOUT);
            Self { runtime, filters, gated }
        }

        fn shown(&self) -> (Vec<Endpoint>, bool) {
            let gated = self.gated.borrow();
            (gated.items.get(&key()).map(|state| state.ready.clone()).unwrap_or_default(), gated.cold.contains(&key()))
        }

        /// The runtime reports the revision's last instance gone; returns
        /// once the gate has taken it.
        async fn goes_to_zero(&mut self) {
            self.runtime.send_replace(states(&[]));
            self.gated.wait_for(|gated| gated.cold.contains(&key())).await.expect("gate task");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_endpoints_leave_only_once_every_filter_heard_the_revision_is_cold() {
        let mut s = Setup::start();
        assert_eq!(s.shown(), (endpoints(&[8081]), false));

        s.goes_to_zero().await;
        assert_eq!(s.shown(), (endpoints(&[8081]), true), "kept while the filters are told it is cold");
        tokio::time::advance(COLD_NOTICE_TIMEOUT / 2).await;
        settle().await;
        assert_eq!(s.shown(), (endpoints(&[8081]), true), "still kept: no filter has heard yet");

        s.filters.hear();
        s.gated.wait_for(|gated| gated.cold.is_empty()).await.expect("gate task");
        assert_eq!(s.shown(), (Vec::new(), false), "withdrawn once every filter heard");
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_change_supersedes_a_pending_withdrawal() {
        let mut s = Setup::start();
        s.goes_to_zero().await;

        s.runtime.send_replace(states(&[8082]));
        s.gated.wait_for(|gated| gated.cold.is_empty()).await.expect("gate task");
        assert_eq!(s.shown(), (endpoints(&[8082]), false), "the new instance is let through at once");

        s.filters.hear();
        tokio::time::advance(COLD_NOTICE_TIMEOUT * 2).await;
        settle().await;
        assert_eq!(s.shown(), (endpoints(&[8082]), false), "the superseded withdrawal never goes through");

        // A later withdrawal waits for the filters anew.
        s.goes_to_zero().await;
        assert_eq!(s.shown(), (endpoints(&[8082]), true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_withdrawal_goes_through_after_the_timeout_when_a_filter_never_hears() {
        let mut s = Setup::start();
        s.goes_to_zero().await;

        tokio::time::advance(COLD_NOTICE_TIMEOUT - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(s.shown(), (endpoints(&[8081]), true), "kept until the timeout");
        tokio::time::advance(Duration::from_millis(1)).await;
        s.gated.wait_for(|gated| gated.cold.is_empty()).await.expect("gate task");
        assert_eq!(s.shown(), (Vec::new(), false), "withdrawn at the timeout");
    }

    /// Filters whose wait for a revision to be heard cold fails.
    #[derive(Debug)]
    struct Broken;

    impl ColdNotice for Broken {
        fn heard_cold(&self, _: ObjectKey) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
            Box::pin(async {
                tokio::task::yield_now().await;
                panic!("the wait for the filters failed");
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_withdrawal_goes_through_when_the_wait_for_the_filters_panics() {
        let (runtime, states_rx) = watch::channel(states(&[8081]));
        let mut gated = start(states_rx, Arc::new(Broken), COLD_NOTICE_TIMEOUT);

        runtime.send_replace(states(&[]));
        let withdrawn = gated.wait_for(|gated| gated.items.get(&key()).is_some_and(|state| state.ready.is_empty()));
        let shown =
            tokio::time::timeout(COLD_NOTICE_TIMEOUT / 2, withdrawn).await.expect("withdrawn before the timeout");
        assert!(shown.expect("gate task").cold.is_empty(), "no longer cold");
    }

    /// Knative-style steps of the gate's rules alone: (input, filters heard
    /// before it) → (shown endpoints, cold).
    #[test]
    fn the_gate_rules_step_by_step() {
        /// (step, the runtime's ready ports, the filters then heard, shown ports, cold)
        type Step = (&'static str, &'static [u16], bool, &'static [u16], bool);
        let steps: &[Step] = &[
            ("first endpoints go through", &[8081], false, &[8081], false),
            ("scaling down, not to zero, goes through", &[8081], false, &[8081], false),
            ("going to zero is held", &[], false, &[8081], true),
            ("still zero: still held", &[], false, &[8081], true),
            ("heard: withdrawn", &[], true, &[], false),
            ("zero again: nothing to withdraw", &[], false, &[], false),
            ("back up at once", &[8082], false, &[8082], false),
            ("to zero again: held", &[], false, &[8082], true),
            ("superseded by a new instance", &[8083], false, &[8083], false),
            ("a late hearing changes nothing", &[8083], true, &[8083], false),
        ];
        let (mut gate, mut got) = (ZeroGate::default(), Arc::new(Gated::default()));
        for (step, input, heard, shown, cold) in steps {
            gate.take(&mut got, states(input));
            if *heard {
                gate.heard(&mut got, &key());
            }
            assert_eq!(got.items[&key()].ready, endpoints(shown), "{step}");
            assert_eq!(got.cold.contains(&key()), *cold, "{step}");
        }
    }

    #[test]
    fn a_waiting_revision_reports_its_wait_once_and_leaves_with_its_input() {
        let (mut gate, mut got) = (ZeroGate::default(), Arc::new(Gated::default()));
        gate.take(&mut got, states(&[8081]));
        let started = gate.take(&mut got, states(&[]));
        assert_eq!((started.started, started.changed), (vec![key()], true));

        // The same input again, or another revision's change, starts nothing
        // and leaves what is shown alone.
        assert_eq!(gate.take(&mut got, states(&[])), Step::default());
        let mut other = (*states(&[])).clone();
        other.insert(ObjectKey::new("default", "other"), RevisionState::default());
        let step = gate.take(&mut got, Arc::new(other));
        assert!(step.started.is_empty() && step.superseded.is_empty() && step.changed);
        assert_eq!(got.items[&key()].ready, endpoints(&[8081]), "still held");

        // The revision is deleted while it waits: gone at once, its wait over.
        let gone = gate.take(&mut got, Arc::new(RevisionStates::new()));
        assert_eq!(gone.superseded, vec![key()]);
        assert!(got.items.is_empty() && got.cold.is_empty());
        assert!(!gate.heard(&mut got, &key()), "a late hearing changes nothing");
    }

    #[test]
    fn an_unseen_revision_held_at_zero_leaves_with_its_input() {
        let wish = |replicas| Wish { workload: workload(), replicas };
        let (mut gate, mut got) = (ZeroGate::default(), Arc::new(Gated::default()));
        let held = gate.take(&mut got, Arc::new(BTreeMap::from([(key(), wish(0))])));
        assert_eq!(held.started, vec![key()]);
        assert!(got.items.is_empty(), "nothing let through until heard");
        assert_eq!(gate.take(&mut got, Arc::new(BTreeMap::from([(key(), wish(0))]))), Step::default());
        let gone = gate.take(&mut got, Arc::new(BTreeMap::new()));
        assert_eq!(gone.superseded, vec![key()]);
        assert!(got.cold.is_empty());
    }

    /// A runtime that records the scales it is asked for.
    #[derive(Debug)]
    struct Recorder {
        asked: Mutex<Vec<u32>>,
        states: watch::Sender<Arc<RevisionStates>>,
    }

    impl Recorder {
        fn asked(&self) -> Vec<u32> {
            self.asked.lock().expect("recorder").clone()
        }
    }

    impl Runtime for Recorder {
        fn scale(&self, _: &Workload, replicas: u32) {
            self.asked.lock().expect("recorder").push(replicas);
        }
        fn remove(&self, _: &ObjectKey) {}
        fn states(&self) -> watch::Receiver<Arc<RevisionStates>> {
            self.states.subscribe()
        }
        fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async {})
        }
    }

    fn workload() -> Workload {
        Workload { key: key(), service: None, configuration: "hello".into(), spec: Default::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn cluster_mode_scales_to_zero_only_once_the_filters_heard_and_a_newer_scale_wins() {
        let recorder =
            Arc::new(Recorder { asked: Mutex::new(Vec::new()), states: watch::Sender::new(states(&[8081])) });
        let filters = Arc::new(Filters::default());
        let runtime = GatedRuntime::start(recorder.clone(), filters.clone());
        let mut cold = runtime.cold();
        let (desired_tx, mut desired) = watch::channel(Arc::default());
        desired_counts(runtime.states(), runtime.cold(), desired_tx);
        assert_eq!(desired.borrow_and_update().get(&key()), Some(&1));

        runtime.scale(&workload(), 1);
        settle().await;
        assert_eq!(recorder.asked(), [1]);

        runtime.scale(&workload(), 0);
        cold.wait_for(|cold| cold.contains(&key())).await.expect("gate task");
        desired.wait_for(|desired| desired.get(&key()) == Some(&0)).await.expect("counts follow");
        assert_eq!(recorder.asked(), [1], "not scaled to zero before the filters heard");
        filters.hear();
        cold.wait_for(|cold| cold.is_empty()).await.expect("gate task");
        settle().await;
        assert_eq!(recorder.asked(), [1, 0]);

        runtime.scale(&workload(), 2);
        settle().await;
        runtime.scale(&workload(), 0);
        cold.wait_for(|cold| cold.contains(&key())).await.expect("gate task");
        runtime.scale(&workload(), 3);
        cold.wait_for(|cold| cold.is_empty()).await.expect("gate task");
        filters.hear();
        settle().await;
        assert_eq!(recorder.asked(), [1, 0, 2, 3], "the pending zero was superseded");
    }
}
