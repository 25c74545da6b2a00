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
//! `Restored`. A deleted revision's registration leaves with it, from the
//! store as from what is published, so that a revision created again under
//! the same name starts with none.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use revgate_model::World;
use revgate_model::plan::{Endpoint, ObjectKey};
use revgate_runtime::{RevisionState, RevisionStates};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::publish::{replace_if_changed, unix_now};
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
    #[error("the endpoints of revision {revision} were not registered: revgate is shutting down")]
    ShuttingDown { revision: ObjectKey },
}

/// The registrations and what they publish. Behind a mutex because the
/// admin API's handlers register concurrently, and the world's deletes drop
/// registrations meanwhile; every update is a store write and two `watch`
/// sends, made on a blocking thread and never held across an `.await`.
///
/// Whether a revision exists is read from the world under the lock: a
/// registration then either precedes the delete that removes it, or sees
/// the revision gone.
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
        let sources: BTreeMap<_, _> = self
            .entries
            .iter()
            .map(|(key, (registration, origin))| (key.clone(), EndpointsSource::new(registration, *origin)))
            .collect();
        // Sources first: whoever sees the states change finds their sources current.
        replace_if_changed(&self.sources, sources);
        replace_if_changed(&self.states, states);
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
    /// revisions. Stored registrations of revisions no longer stored are
    /// removed first.
    pub fn start(store: RegistrationStore, world: watch::Receiver<Arc<World>>) -> Result<Self, StoreError> {
        let current = world.borrow().clone();
        let orphans = store.remove_orphans(&current)?;
        if !orphans.is_empty() {
            tracing::info!(revisions = orphans.len(), "removed the stored endpoints of revisions that no longer exist");
        }
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
    pub async fn register(&self, revision: ObjectKey, endpoints: Vec<Endpoint>) -> Result<(), RegistrationError> {
        let (registry, world) = (self.registry.clone(), self.world.clone());
        let key = revision.clone();
        // A durable store commit under a lock: on a blocking thread, not an async worker.
        match tokio::task::spawn_blocking(move || register(&registry, &world, revision, endpoints)).await {
            Ok(registered) => registered,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(RegistrationError::ShuttingDown { revision: key }),
        }
    }

    /// Every revision's registered endpoints, as ready endpoints.
    pub fn states(&self) -> watch::Receiver<Arc<RevisionStates>> {
        self.states.clone()
    }

    /// Per revision with registered endpoints: where they come from.
    pub fn sources(&self) -> Arc<BTreeMap<ObjectKey, EndpointsSource>> {
        self.sources.borrow().clone()
    }
}

/// Stores and publishes a registration, if its revision is in the world
/// when the registry is locked. Blocks on the store.
fn register(
    registry: &Mutex<Registry>,
    world: &watch::Receiver<Arc<World>>,
    revision: ObjectKey,
    endpoints: Vec<Endpoint>,
) -> Result<(), RegistrationError> {
    let mut registry = lock(registry);
    if !world.borrow().revisions.contains_key(&revision) {
        return Err(RegistrationError::UnknownRevision { revision });
    }
    let registration = Registration { endpoints, registered_at: unix_now() };
    if let Err(source) = registry.store.save(&revision, &registration) {
        return Err(RegistrationError::Store { revision, source });
    }
    registry.entries.insert(revision, (registration, EndpointsOrigin::Registered));
    registry.publish();
    Ok(())
}

/// Drops the registrations of revisions that left the world, with their
/// rows; ends with the runtime.
async fn forget_deleted(registry: Weak<Mutex<Registry>>, mut world: watch::Receiver<Arc<World>>) {
    while world.changed().await.is_ok() {
        let Some(registry) = registry.upgrade() else { return };
        match tokio::task::spawn_blocking(move || {
            forget(&registry, &mut world);
            world
        })
        .await
        {
            Ok(following) => world = following,
            Err(_) => return,
        }
    }
}

/// Drops the registrations of revisions not in the latest world, read under
/// the registry's lock so that a registration made since is judged by the
/// world it was made in. Blocks on the store.
fn forget(registry: &Mutex<Registry>, world: &mut watch::Receiver<Arc<World>>) {
    let mut registry = lock(registry);
    let current = world.borrow_and_update().clone();
    let gone: Vec<ObjectKey> =
        registry.entries.keys().filter(|key| !current.revisions.contains_key(*key)).cloned().collect();
    if gone.is_empty() {
        return;
    }
    // The world's delete removed their rows, unless a registration was
    // stored after it and before the world showed it.
    if let Err(e) = registry.store.remove(&gone) {
        tracing::warn!(error = %e, "removing the stored endpoints of deleted revisions failed; the next start removes them");
    }
    for key in &gone {
        registry.entries.remove(key);
    }
    registry.publish();
}

/// Locks the registry; its data stays consistent even if a holder panicked
/// (every update is one insert or removal followed by a publish).
fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use revgate_model::decode::Budget;
    use revgate_model::parse_documents_within;

    use super::*;
    use crate::store::Store;
    use crate::testing::{HELLO_SERVICE as SERVICE, hello_revision as key};

    fn world() -> Arc<World> {
        let documents =
            parse_documents_within("hello.yaml", SERVICE, &mut Budget::default(), revgate_model::OtherKinds::Reject)
                .expect("manifest")
                .objects;
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
        let refused = runtime.register(unknown.clone(), vec![endpoint(8081)]).await.expect_err("unknown revision");
        assert!(refused.to_string().contains("revision default/made-up-00001 does not exist"), "{refused}");
        assert!(runtime.states().borrow().is_empty() && store.registrations().load().expect("read").is_empty());

        runtime.register(key(), vec![endpoint(8081)]).await.expect("register");
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
        runtime.register(key(), Vec::new()).await.expect("register");
        assert_eq!(ready(&runtime), Some(Vec::new()));

        // A deleted revision's registration is forgotten.
        world_tx.send_replace(Arc::new(World::default()));
        let mut states = runtime.states();
        states.wait_for(|states| states.is_empty()).await.expect("runtime");
        assert!(runtime.sources().is_empty());
    }

    #[tokio::test]
    async fn a_registration_racing_the_delete_of_its_revision_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut store = Store::open(dir.path()).expect("store");
        store.save(&World::default(), &world()).expect("save");
        let (world_tx, world_rx) = watch::channel(world());
        let runtime = ExternalRuntime::start(store.registrations(), world_rx).expect("start");

        // The owner stores the delete; the registration lands before the
        // world shows it.
        store.save(&world(), &World::default()).expect("delete");
        runtime.register(key(), vec![endpoint(8081)]).await.expect("registered while the revision is shown");
        world_tx.send_replace(Arc::new(World::default()));
        let mut states = runtime.states();
        states.wait_for(|states| states.is_empty()).await.expect("runtime");
        assert!(runtime.sources().is_empty());
        assert!(store.registrations().load().expect("read").is_empty(), "its row left with it");

        // Once the world shows the delete, a registration is refused.
        let refused = runtime.register(key(), vec![endpoint(8081)]).await.expect_err("deleted revision");
        assert!(matches!(refused, RegistrationError::UnknownRevision { .. }), "{refused}");
        assert!(store.registrations().load().expect("read").is_empty());

        // A revision created again under the same name starts with no endpoints.
        world_tx.send_replace(world());
        let restarted = ExternalRuntime::start(store.registrations(), watch::channel(world()).1).expect("restart");
        assert_eq!(ready(&runtime), None);
        assert_eq!(ready(&restarted), None);
    }

    #[tokio::test]
    async fn stored_endpoints_of_revisions_that_are_gone_are_removed_at_start() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let unreadable = ObjectKey::new("default", "damaged-00001");
        crate::store::tests::write_raw_row(dir.path(), "revisions", "default/damaged-00001", b"{not json");
        let mut store = Store::open(dir.path()).expect("store");
        let current = store.load().expect("load");
        assert_eq!(store.unreadable().len(), 1);
        store.save(&current, &world()).expect("save");
        let registered = Registration { endpoints: vec![endpoint(8081)], registered_at: 1 };
        let gone = ObjectKey::new("default", "gone-00001");
        for revision in [key(), gone.clone(), unreadable.clone()] {
            store.registrations().save(&revision, &registered).expect("stored registration");
        }

        let runtime = ExternalRuntime::start(store.registrations(), watch::channel(world()).1).expect("start");
        assert_eq!(ready(&runtime), Some(vec![endpoint(8081)]));
        let stored = store.registrations().load().expect("read");
        assert_eq!(
            stored.keys().cloned().collect::<Vec<_>>(),
            [unreadable, key()],
            "the revision that is gone lost its row; the unreadable one kept it"
        );
    }
}
