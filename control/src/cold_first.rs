//! Going to zero the way the standalone control plane does, for a runtime
//! that removes endpoints by itself (Kubernetes): the gateway filters hear
//! that the revision is cold first, and only then is it scaled to zero.
//! Otherwise a request could pass a filter that still believes the revision
//! warm and meet a gateway whose endpoints are already gone.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use revgate_model::plan::ObjectKey;
use revgate_runtime::{RevisionStates, Runtime, Workload};
use tokio::sync::watch;

use crate::control::replace_if_changed;

/// Waits until every gateway filter heard that a revision is cold.
pub type ColdNotice = Arc<dyn Fn(ObjectKey) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A runtime whose scale-to-zero waits for the filters; see the module docs.
pub struct ColdFirst<R> {
    inner: Arc<R>,
    notice: ColdNotice,
    /// Revisions the filters are being told are cold, with the wish that
    /// started it (a later wish cancels a pending scale to zero).
    cold: watch::Sender<BTreeSet<ObjectKey>>,
    wishes: Arc<Mutex<BTreeMap<ObjectKey, u64>>>,
}

impl<R: std::fmt::Debug> std::fmt::Debug for ColdFirst<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdFirst").field("inner", &self.inner).field("cold", &*self.cold.borrow()).finish()
    }
}

impl<R: Runtime> ColdFirst<R> {
    /// Wraps `inner`. `cold` carries the revisions being taken to zero;
    /// [`desired_counts`] folds it into what the filters are told.
    pub fn new(inner: R, notice: ColdNotice, cold: watch::Sender<BTreeSet<ObjectKey>>) -> Self {
        Self { inner: Arc::new(inner), notice, cold, wishes: Arc::new(Mutex::new(BTreeMap::new())) }
    }

    /// Counts this wish for `key` and returns its number.
    fn wish(&self, key: &ObjectKey) -> u64 {
        let mut wishes = self.wishes.lock().unwrap_or_else(|e| e.into_inner());
        let wish = wishes.entry(key.clone()).or_default();
        *wish += 1;
        *wish
    }
}

impl<R: Runtime> Runtime for ColdFirst<R> {
    fn scale(&self, workload: &Workload, replicas: u32) {
        let key = workload.key.clone();
        let wish = self.wish(&key);
        if replicas > 0 {
            self.cold.send_if_modified(|cold| cold.remove(&key));
            self.inner.scale(workload, replicas);
            return;
        }
        self.cold.send_if_modified(|cold| cold.insert(key.clone()));
        let (inner, notice, wishes, workload) =
            (self.inner.clone(), self.notice.clone(), self.wishes.clone(), workload.clone());
        tokio::spawn(async move {
            notice(key.clone()).await;
            let current = wishes.lock().unwrap_or_else(|e| e.into_inner()).get(&key) == Some(&wish);
            if current {
                inner.scale(&workload, 0);
            }
        });
    }

    fn remove(&self, key: &ObjectKey) {
        self.wish(key);
        self.cold.send_if_modified(|cold| cold.remove(key));
        self.inner.remove(key);
    }

    fn states(&self) -> watch::Receiver<Arc<RevisionStates>> {
        self.inner.states()
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.inner.shutdown()
    }
}

/// The endpoint count the filters are told per revision: its ready
/// instances, or zero while it is being taken to zero.
pub fn desired_counts(
    mut states: watch::Receiver<Arc<RevisionStates>>,
    mut cold: watch::Receiver<BTreeSet<ObjectKey>>,
) -> watch::Receiver<Arc<BTreeMap<ObjectKey, u32>>> {
    let counts = |states: &RevisionStates, cold: &BTreeSet<ObjectKey>| -> BTreeMap<ObjectKey, u32> {
        states
            .iter()
            .map(|(key, state)| {
                let ready = if cold.contains(key) { 0 } else { u32::try_from(state.ready.len()).unwrap_or(u32::MAX) };
                (key.clone(), ready)
            })
            .collect()
    };
    let first = counts(&states.borrow_and_update(), &cold.borrow_and_update());
    let (tx, rx) = watch::channel(Arc::new(first));
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
    rx
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use revgate_model::plan::Endpoint;
    use revgate_runtime::RevisionState;
    use tokio::sync::Notify;

    use super::*;

    /// A runtime that records what it is asked.
    #[derive(Debug, Default)]
    struct Recorder {
        asked: Mutex<Vec<u32>>,
        states: Option<watch::Sender<Arc<RevisionStates>>>,
    }

    impl Runtime for Recorder {
        fn scale(&self, _: &Workload, replicas: u32) {
            self.asked.lock().expect("recorder").push(replicas);
        }
        fn remove(&self, _: &ObjectKey) {}
        fn states(&self) -> watch::Receiver<Arc<RevisionStates>> {
            self.states.as_ref().expect("states").subscribe()
        }
        fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async {})
        }
    }

    fn workload() -> Workload {
        Workload {
            key: ObjectKey::new("default", "hello-00001"),
            service: None,
            configuration: "hello".into(),
            spec: Default::default(),
        }
    }

    /// A cold notice that completes when the test says so.
    fn gated() -> (ColdNotice, Arc<Notify>) {
        let open = Arc::new(Notify::new());
        let gate = open.clone();
        let notice: ColdNotice = Arc::new(move |_| {
            let gate = gate.clone();
            Box::pin(async move { gate.notified().await })
        });
        (notice, open)
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    #[tokio::test]
    async fn zero_waits_for_the_filters_and_a_newer_wish_wins() {
        let (notice, open) = gated();
        let (cold_tx, cold) = watch::channel(BTreeSet::new());
        let runtime = ColdFirst::new(Recorder::default(), notice, cold_tx);
        let w = workload();

        runtime.scale(&w, 0);
        settle().await;
        assert!(runtime.inner.asked.lock().expect("recorder").is_empty(), "not scaled before the filters know");
        assert!(cold.borrow().contains(&w.key), "the filters are being told it is cold");
        open.notify_waiters();
        settle().await;
        assert_eq!(*runtime.inner.asked.lock().expect("recorder"), [0]);

        runtime.scale(&w, 0);
        settle().await;
        runtime.scale(&w, 2);
        open.notify_waiters();
        settle().await;
        assert_eq!(*runtime.inner.asked.lock().expect("recorder"), [0, 2], "the pending zero was cancelled");
        assert!(!cold.borrow().contains(&w.key));
    }

    #[tokio::test]
    async fn the_filters_hear_zero_while_the_revision_is_taken_to_zero() {
        let key = ObjectKey::new("default", "hello-00001");
        let ready =
            RevisionState { ready: vec![Endpoint { host: "10.0.0.1".into(), port: 8080 }], ..RevisionState::default() };
        let (states_tx, states) = watch::channel(Arc::new(RevisionStates::from([(key.clone(), ready)])));
        let (cold_tx, cold) = watch::channel(BTreeSet::new());
        let mut counts = desired_counts(states, cold);
        assert_eq!(counts.borrow_and_update().get(&key), Some(&1));
        cold_tx.send_modify(|cold| {
            cold.insert(key.clone());
        });
        counts.changed().await.expect("counts follow");
        assert_eq!(counts.borrow_and_update().get(&key), Some(&0));
        drop(states_tx);
    }
}
