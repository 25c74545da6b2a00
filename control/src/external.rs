//! The runtime of `revgate serve --runtime external`: revisions run outside
//! revgate, and whoever runs them registers their live endpoints through the
//! admin API (`PUT /v1/revisions/{namespace}/{name}/endpoints`).
//!
//! It is a runtime like the process runtime: it publishes every revision's
//! ready endpoints as [`RevisionStates`] on a `watch`, which the control
//! plane takes through the zero gate, so a registration of no endpoints
//! withdraws them only once the filters heard the revision is cold.
//!
//! Registrations are stored before they are published (what Envoy is sent is
//! always what a restart restores), restored at start, and shown in each
//! revision's status as `registeredEndpoints` with `source: Registered` or
//! `Restored`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use revgate_model::World;
use revgate_model::plan::{Endpoint, ObjectKey};
use revgate_runtime::{RevisionState, RevisionStates, Runtime, Workload};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::control::replace_if_changed;
use crate::store::{Registration, RegistrationStore, StoreError};

/// Where a revision's endpoints come from when they are registered through
/// the admin API: shown in its status so that a user can tell endpoints a
/// registrar just confirmed from ones restored after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsSource {
    /// `Registered` (through the admin API since this control plane
    /// started) or `Restored` (from the state store at start).
    pub source: EndpointsOrigin,
    /// When they were last registered (RFC 3339).
    pub registered_at: String,
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointsOrigin {
    Registered,
    Restored,
}

impl EndpointsSource {
    fn new(registration: &Registration, source: EndpointsOrigin) -> Self {
        Self {
            source,
            registered_at: revgate_model::meta::rfc3339(registration.registered_at),
            endpoints: registration.endpoints.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(
        "revision {revision} does not exist, so its endpoints were not registered (apply its Service or Configuration first)"
    )]
    UnknownRevision { revision: ObjectKey },
    #[error("storing the endpoints of revision {revision}: {source}")]
    Store { revision: ObjectKey, source: StoreError },
}

/// The registrations and what they publish. Behind a mutex because the
/// admin API's handlers register concurrently; every update is a store write
/// and two `watch` sends, never held across an `.await`.
#[derive(Debug)]
struct Registry {
    store: RegistrationStore,
    entries: BTreeMap<ObjectKey, (Registration, EndpointsOrigin)>,
    states: watch::Sender<Arc<RevisionStates>>,
    sources: watch::Sender<Arc<BTreeMap<ObjectKey, EndpointsSource>>>,
}

impl Registry {
    fn publish(&self) {
        let states: RevisionStates = self
            .entries
            .iter()
            .map(|(key, (registration, _))| {
                let ready = registration.endpoints.clone();
                let desired = u32::try_from(ready.len()).unwrap_or(u32::MAX);
                (key.clone(), RevisionState { desired, ready, ..RevisionState::default() })
            })
            .collect();
        let sources = self
            .entries
            .iter()
            .map(|(key, (registration, origin))| (key.clone(), EndpointsSource::new(registration, *origin)))
            .collect();
        replace_if_changed(&self.states, states);
        replace_if_changed(&self.sources, sources);
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ExternalRuntime {
    registry: Arc<Mutex<Registry>>,
    world: watch::Receiver<Arc<World>>,
    states: watch::Receiver<Arc<RevisionStates>>,
    sources: watch::Receiver<Arc<BTreeMap<ObjectKey, EndpointsSource>>>,
}

impl ExternalRuntime {
    /// Restores the stored registrations of revisions in the world and
    /// starts following the world, forgetting the registrations of deleted
    /// revisions (the world's store removes their rows).
    pub fn start(store: RegistrationStore, world: watch::Receiver<Arc<World>>) -> Result<Self, StoreError> {
        let current = world.borrow().clone();
        let entries = store
            .load()?
            .into_iter()
            .filter(|(key, _)| current.revisions.contains_key(key))
            .map(|(key, registration)| (key, (registration, EndpointsOrigin::Restored)))
            .collect();
        let (states_tx, states) = watch::channel(Arc::default());
        let (sources_tx, sources) = watch::channel(Arc::default());
        let registry = Registry { store, entries, states: states_tx, sources: sources_tx };
        registry.publish();
        let registry = Arc::new(Mutex::new(registry));
        tokio::spawn(forget_deleted(Arc::downgrade(&registry), world.clone()));
        Ok(Self { registry, world, states, sources })
    }

    /// Registers the live endpoints of `revision` (replacing earlier ones;
    /// none means it has no ready instance), stored before they are
    /// published.
    pub fn register(&self, revision: ObjectKey, endpoints: Vec<Endpoint>) -> Result<(), RegistrationError> {
        if !self.world.borrow().revisions.contains_key(&revision) {
            return Err(RegistrationError::UnknownRevision { revision });
        }
        let registration = Registration { endpoints, registered_at: unix_now() };
        let mut registry = lock(&self.registry);
        if let Err(source) = registry.store.save(&revision, &registration) {
            return Err(RegistrationError::Store { revision, source });
        }
        registry.entries.insert(revision, (registration, EndpointsOrigin::Registered));
        registry.publish();
        Ok(())
    }

    /// Per revision with registered endpoints: where they come from.
    pub fn sources(&self) -> Arc<BTreeMap<ObjectKey, EndpointsSource>> {
        self.sources.borrow().clone()
    }
}

/// Drops the registrations of revisions that left the world; ends with the runtime.
async fn forget_deleted(registry: std::sync::Weak<Mutex<Registry>>, mut world: watch::Receiver<Arc<World>>) {
    while world.changed().await.is_ok() {
        let current = world.borrow_and_update().clone();
        let Some(registry) = registry.upgrade() else { return };
        let mut registry = lock(&registry);
        let before = registry.entries.len();
        registry.entries.retain(|key, _| current.revisions.contains_key(key));
        if registry.entries.len() != before {
            registry.publish();
        }
    }
}

impl Runtime for ExternalRuntime {
    /// The registrar decides how many instances run; nothing to do.
    fn scale(&self, _: &Workload, _: u32) {}

    fn remove(&self, key: &ObjectKey) {
        let mut registry = lock(&self.registry);
        if registry.entries.remove(key).is_some() {
            registry.publish();
        }
    }

    fn states(&self) -> watch::Receiver<Arc<RevisionStates>> {
        self.states.clone()
    }

    /// The instances belong to whoever registered them: nothing to stop.
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// Locks the registry; its data stays consistent even if a holder panicked
/// (every update is one insert or removal followed by a publish).
fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use revgate_model::decode::Budget;
    use revgate_model::parse_documents_within;

    use super::*;
    use crate::store::Store;

    const SERVICE: &str = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    spec:
      containers:
        - image: example.com/hello
";

    fn key() -> ObjectKey {
        ObjectKey::new("default", "hello-00001")
    }

    fn world() -> Arc<World> {
        let documents = parse_documents_within("hello.yaml", SERVICE, &mut Budget::default()).expect("manifest");
        let (world, _) = World::default().apply(&documents, 0).expect("apply");
        Arc::new(world)
    }

    fn endpoint(port: u16) -> Endpoint {
        Endpoint { host: "127.0.0.1".into(), port }
    }

    fn ready(runtime: &ExternalRuntime) -> Option<Vec<Endpoint>> {
        runtime.states().borrow().get(&key()).map(|state| state.ready.clone())
    }

    #[tokio::test]
    async fn registrations_are_stored_published_and_restored() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("store");
        let (world_tx, world_rx) = watch::channel(world());
        let runtime = ExternalRuntime::start(store.registrations(), world_rx.clone()).expect("start");

        let unknown = ObjectKey::new("default", "made-up-00001");
        let refused = runtime.register(unknown.clone(), vec![endpoint(8081)]).expect_err("unknown revision");
        assert!(refused.to_string().contains("revision default/made-up-00001 does not exist"), "{refused}");
        assert!(runtime.states().borrow().is_empty() && store.registrations().load().expect("read").is_empty());

        runtime.register(key(), vec![endpoint(8081)]).expect("register");
        assert_eq!(ready(&runtime), Some(vec![endpoint(8081)]));
        let registered = runtime.sources()[&key()].clone();
        assert_eq!(registered.source, EndpointsOrigin::Registered);

        // A restart on the same store: restored, with the time of the registration.
        drop(runtime);
        let runtime = ExternalRuntime::start(store.registrations(), world_rx).expect("restart");
        assert_eq!(ready(&runtime), Some(vec![endpoint(8081)]));
        let restored = runtime.sources()[&key()].clone();
        assert_eq!(restored.source, EndpointsOrigin::Restored);
        assert_eq!(restored.registered_at, registered.registered_at);

        // Registering none keeps the revision, at zero endpoints.
        runtime.register(key(), Vec::new()).expect("register");
        assert_eq!(ready(&runtime), Some(Vec::new()));

        // A deleted revision's registration is forgotten.
        world_tx.send_replace(Arc::new(World::default()));
        let mut states = runtime.states();
        states.wait_for(|states| states.is_empty()).await.expect("runtime");
        assert!(runtime.sources().is_empty());
    }
}
