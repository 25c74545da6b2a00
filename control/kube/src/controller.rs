//! The controller process: watches and stores on every replica, the
//! election, and the reconciler on the leader only.
//!
//! ```text
//! watchers ─▶ reflector stores (one writer each; the reconciler and the views read them)
//!     │ touched objects
//!     ▼
//! dispatcher (owns the namespace scope) ──broadcast<namespace>──▶ applier(reconcile, error_policy)   [leader only]
//!     │ changed                                                      └─ SSA / delete / status ─▶ API server
//!     ▼
//! views (debounced) ──watch<Arc<ClusterView>>──▶ xDS, activation API, autoscaler   [every replica]
//!                    └─observe(states)─▶ KubeRuntime ──scale subresource──▶ API server   [writes on the leader only]
//! election (Lease) ──watch<bool> leading──▶ applier, KubeRuntime
//! ```
//!
//! The unit of reconciliation is a namespace (see [`mod@crate::reconcile`]).
//! kube-rs' `applier` queues namespaces, never runs one twice at once,
//! debounces bursts of events and applies the error policy's backoff. Its
//! store of "objects" is a store of namespaces the dispatcher fills as it
//! sees them, so the controller needs no permission on Namespace objects.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DynamicObject, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{self, applier};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use revgate_istio::RenderOptions;
use revgate_model::meta::SYSTEM_NAMESPACE;
use revgate_model::plan::GatewayPlan;
use revgate_model::{ConfigMap, Observed, World};
use revgate_runtime_api::RevisionStates;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{ConfigError, ControllerConfig};
use crate::desired::{self, Problems};
use crate::kinds::{FIELD_MANAGER, Kind, typed};
use crate::leader::{self, LeaseElector};
use crate::readiness;
use crate::reconcile::{self, Context};
use crate::scale::{KubeRuntime, retry_delay};
use crate::snapshot::{ClusterReader, Snapshot};

/// How long the views wait for a burst of watch events to end.
const VIEW_DEBOUNCE: Duration = Duration::from_millis(200);
/// How long the applier waits for a burst of events on one namespace.
const RECONCILE_DEBOUNCE: Duration = Duration::from_millis(100);

/// The controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(
        "cannot reach the Kubernetes API: {0}; run inside a cluster with a ServiceAccount, or point KUBECONFIG at \
         a cluster"
    )]
    Connect(#[source] kube::Error),
    #[error("waiting for a shutdown signal: {0}")]
    Signal(#[source] std::io::Error),
}

/// The cluster as every replica sees it: the applied Knative objects, what
/// was observed of their pods, and the plan for the gateway.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub world: World,
    pub observed: Observed,
    pub plan: GatewayPlan,
}

/// A running controller.
#[derive(Debug)]
pub struct ControllerHandle {
    /// Republished after every burst of changes.
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// Whether this replica leads (and so writes).
    pub leading: watch::Receiver<bool>,
    /// The runtime the KPA drives: wishes in, ready endpoints out.
    pub runtime: KubeRuntime,
    shutdown: watch::Sender<bool>,
    election: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl ControllerHandle {
    /// Stops every task; a leader releases the Lease first, so another
    /// replica takes over at once.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        if let Err(e) = self.election.await {
            tracing::warn!(error = %e, "the election task ended abnormally");
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

/// `revgate controller`: connects with the default client configuration
/// (in-cluster, else `KUBECONFIG`), runs until SIGTERM or Ctrl-C, then
/// releases the Lease.
pub async fn run(config: ControllerConfig) -> Result<(), ControllerError> {
    config.validate()?;
    let client = Client::try_default().await.map_err(ControllerError::Connect)?;
    let handle = start(client, config)?;
    let signal = shutdown_signal().await;
    handle.shutdown().await;
    signal
}

async fn shutdown_signal() -> Result<(), ControllerError> {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(ControllerError::Signal)?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map_err(ControllerError::Signal),
        _ = terminate.recv() => Ok(()),
    }
}

/// Starts every task on `client` and returns at once.
pub fn start(client: Client, config: ControllerConfig) -> Result<ControllerHandle, ControllerError> {
    config.validate()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (leading_tx, leading) = watch::channel(false);
    let (trigger_tx, trigger_rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();

    let mut stores = Stores::default();
    let scopes: Vec<Option<String>> =
        if config.namespaces.is_empty() { vec![None] } else { config.namespaces.iter().cloned().map(Some).collect() };
    for kind in Kind::NAMESPACED {
        for scope in &scopes {
            let (store, task) = watch_kind(&client, kind, scope.as_deref(), trigger_tx.clone());
            stores.kinds.entry(kind).or_default().push(store);
            tasks.push(task);
        }
    }
    let (config_maps, task) = watch_kind(&client, Kind::ConfigMap, Some(SYSTEM_NAMESPACE), trigger_tx);
    stores.config_maps = Some(config_maps);
    tasks.push(task);

    let runtime = KubeRuntime::start(client.clone(), leading.clone());
    let (namespaces, dispatcher) = Dispatcher::new(&config.namespaces);
    let reconciles = dispatcher.reconciles.clone();
    let (changed_tx, changed) = watch::channel(0u64);
    tasks.push(tokio::spawn(dispatcher.run(trigger_rx, changed_tx)));

    let (view_tx, view) = watch::channel(Arc::new(ClusterView::default()));
    tasks.push(tokio::spawn(publish_views(
        stores.clone(),
        namespaces.clone(),
        changed,
        view_tx,
        runtime.clone(),
        config.render.clone(),
    )));
    tasks.push(tokio::spawn(crate::mesh::reconcile_held(runtime.held_for_mesh(), reconciles.clone())));

    let lease = config.lease.clone();
    let (leading_rx, client_lead) = (leading.clone(), client.clone());
    let mut context = Context::new(client.clone(), Arc::new(stores.clone()), config.render.clone())
        .with_runtime(runtime.clone())
        .with_resync(config.resync);
    if let Some(figures) = config.figures.0.clone() {
        context = context.with_candidate_figures(figures);
    }
    let stores_ready = stores.clone();
    tasks.push(tokio::spawn(async move {
        stores_ready.wait_until_ready().await;
        lead(Arc::new(context), namespaces, reconciles, leading_rx, client_lead, config).await;
    }));

    let elector = LeaseElector::new(client, lease);
    let mut stop = shutdown_rx;
    let election = tokio::spawn(leader::run(elector, leading_tx, async move {
        let _ = stop.wait_for(|stop| *stop).await;
    }));
    Ok(ControllerHandle { view, leading, runtime, shutdown, election, tasks })
}

// ----- stores --------------------------------------------------------------------------

/// The reflector stores: one per watched kind and namespace scope.
#[derive(Debug, Clone, Default)]
pub struct Stores {
    kinds: BTreeMap<Kind, Vec<Store<DynamicObject>>>,
    config_maps: Option<Store<DynamicObject>>,
}

impl ClusterReader for Stores {
    fn snapshot(&self, namespace: &str) -> Snapshot {
        let mut snapshot = Snapshot::new(namespace);
        for (kind, stores) in &self.kinds {
            for object in stores.iter().flat_map(Store::state) {
                if object.metadata.namespace.as_deref() == Some(namespace) {
                    snapshot.insert_as(*kind, (*object).clone());
                }
            }
        }
        snapshot.config_maps = self.config_maps();
        let mappings: Vec<_> =
            self.kinds.get(&Kind::DomainMapping).into_iter().flatten().flat_map(Store::state).collect();
        snapshot.domain_claims = crate::domain_mappings::claims(mappings.iter().map(AsRef::as_ref));
        snapshot
    }
}

impl Stores {
    /// Waits until every watch has listed its objects once. Until then a
    /// snapshot would be partial: a pass would see Services without their
    /// Revisions and write statuses (or children) from half the truth.
    /// A kind that never lists (its CRD is missing, or RBAC forbids it) is
    /// named in a warning every half minute.
    pub async fn wait_until_ready(&self) {
        let mut stores: Vec<(String, Store<DynamicObject>)> = Vec::new();
        for (kind, list) in &self.kinds {
            stores.extend(list.iter().map(|s| (kind.to_string(), s.clone())));
        }
        if let Some(store) = &self.config_maps {
            stores.push((format!("{} in {SYSTEM_NAMESPACE}", Kind::ConfigMap), store.clone()));
        }
        for (kind, store) in stores {
            loop {
                match tokio::time::timeout(Duration::from_secs(30), store.wait_until_ready()).await {
                    Ok(_) => break,
                    Err(_) => tracing::warn!(
                        %kind,
                        "still waiting for the first list; is the CRD installed, and may the controller list and watch it?"
                    ),
                }
            }
        }
    }

    fn config_maps(&self) -> Vec<ConfigMap> {
        let Some(store) = &self.config_maps else { return Vec::new() };
        store
            .state()
            .iter()
            .filter_map(|object| {
                let mut object = (**object).clone();
                object.types = Some(Kind::ConfigMap.type_meta());
                typed::<ConfigMap>(&object).ok()
            })
            .collect()
    }
}

/// Why the controller looks at an object again.
#[derive(Debug, Clone)]
enum Trigger {
    Namespace(String),
    /// A `knative-serving` ConfigMap changed: every namespace's settings did.
    All,
}

/// A reflector for one kind in one namespace (or all), feeding triggers.
fn watch_kind(
    client: &Client,
    kind: Kind,
    namespace: Option<&str>,
    triggers: mpsc::UnboundedSender<Trigger>,
) -> (Store<DynamicObject>, JoinHandle<()>) {
    let resource = kind.api_resource();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let mut config = watcher::Config::default();
    if let Some(selector) = kind.watch_selector() {
        config = config.labels(selector);
    }
    let writer = reflector::store::Writer::new(resource);
    let store = writer.as_reader();
    let task = tokio::spawn(async move {
        let events = reflector::reflector(writer, watcher(api, config).default_backoff()).touched_objects();
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(object) => {
                    let trigger = match (kind, object.metadata.namespace) {
                        (Kind::ConfigMap, _) => Trigger::All,
                        (_, Some(ns)) => Trigger::Namespace(ns),
                        (_, None) => continue,
                    };
                    if triggers.send(trigger).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(%kind, error = %e, "watch failed; retrying with backoff"),
            }
        }
    });
    (store, task)
}

// ----- dispatch ------------------------------------------------------------------------

/// Owns the scope (the namespaces the controller has seen, or was given)
/// and turns triggers into reconcile requests and view refreshes.
struct Dispatcher {
    scope: reflector::store::Writer<Namespace>,
    selected: Vec<String>,
    reconciles: broadcast::Sender<ObjectRef<Namespace>>,
}

impl Dispatcher {
    fn new(selected: &[String]) -> (Store<Namespace>, Self) {
        let mut scope = reflector::store::Writer::default();
        scope.apply_watcher_event(&watcher::Event::Init);
        for name in selected {
            scope.apply_watcher_event(&watcher::Event::InitApply(namespace(name)));
        }
        scope.apply_watcher_event(&watcher::Event::InitDone);
        let (reconciles, _) = broadcast::channel(1024);
        let reader = scope.as_reader();
        (reader, Self { scope, selected: selected.to_vec(), reconciles })
    }

    async fn run(mut self, mut triggers: mpsc::UnboundedReceiver<Trigger>, changed: watch::Sender<u64>) {
        while let Some(trigger) = triggers.recv().await {
            match trigger {
                Trigger::Namespace(name) => {
                    if !self.selected.is_empty() && !self.selected.contains(&name) {
                        continue;
                    }
                    let reference = ObjectRef::new(&name);
                    if self.scope.as_reader().get(&reference).is_none() {
                        self.scope.apply_watcher_event(&watcher::Event::Apply(namespace(&name)));
                    }
                    let _ = self.reconciles.send(reference);
                }
                Trigger::All => {
                    for reference in in_scope(&self.scope.as_reader()) {
                        let _ = self.reconciles.send(reference);
                    }
                }
            }
            changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Every namespace in scope, by name.
fn in_scope(scope: &Store<Namespace>) -> Vec<ObjectRef<Namespace>> {
    let mut references: Vec<ObjectRef<Namespace>> = scope.state().iter().map(|ns| ObjectRef::from_obj(&**ns)).collect();
    references.sort_by(|a, b| a.name.cmp(&b.name));
    references
}

fn namespace(name: &str) -> Namespace {
    Namespace { metadata: ObjectMeta { name: Some(name.to_string()), ..ObjectMeta::default() }, ..Namespace::default() }
}

// ----- views (every replica) ---------------------------------------------------------

/// Recomputes the cluster view and the runtime's states after each burst of changes.
async fn publish_views(
    stores: Stores,
    scope: Store<Namespace>,
    mut changed: watch::Receiver<u64>,
    view: watch::Sender<Arc<ClusterView>>,
    runtime: KubeRuntime,
    options: RenderOptions,
) {
    stores.wait_until_ready().await;
    changed.mark_changed();
    while changed.changed().await.is_ok() {
        tokio::time::sleep(VIEW_DEBOUNCE).await;
        changed.borrow_and_update();
        let (next, states) = cluster_view(&stores, &scope);
        runtime.observe(states);
        runtime.observe_mesh(crate::mesh::direct_in_scope(&stores, &scope, &options));
        view.send_replace(Arc::new(next));
    }
}

/// The world, observations and plan of every namespace in scope, and the
/// revisions' states.
pub fn cluster_view(reader: &dyn ClusterReader, scope: &Store<Namespace>) -> (ClusterView, RevisionStates) {
    let mut view = ClusterView::default();
    let mut states = RevisionStates::new();
    for ns in scope.state() {
        let Some(name) = ns.metadata.name.as_deref() else { continue };
        let snapshot = reader.snapshot(name);
        let world = desired::world(&snapshot);
        let observed = desired::observe(&snapshot, &world, &Problems::default());
        states.extend(readiness::revision_states(&snapshot));
        view.observed.revisions.extend(observed.revisions);
        let World { services, configurations, routes, revisions, config_maps, domain_mappings, domain_claims } = world;
        view.world.services.extend(services);
        view.world.configurations.extend(configurations);
        view.world.routes.extend(routes);
        view.world.revisions.extend(revisions);
        view.world.config_maps = config_maps;
        view.world.domain_mappings.extend(domain_mappings);
        view.world.domain_claims.extend(domain_claims);
    }
    view.plan = view.world.plan(&view.observed);
    (view, states)
}

// ----- the leader --------------------------------------------------------------------

/// While this replica leads: install the WasmPlugin and reconcile every
/// namespace, then every namespace that changes; stop when leadership goes.
async fn lead(
    context: Arc<Context>,
    scope: Store<Namespace>,
    reconciles: broadcast::Sender<ObjectRef<Namespace>>,
    mut leading: watch::Receiver<bool>,
    client: Client,
    config: ControllerConfig,
) {
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        tracing::info!(identity = %config.lease.identity, "leading: reconciling every namespace");
        let plugin = tokio::spawn(install_wasm_plugin(client.clone(), config.clone()));
        let queue = requests(scope.clone(), reconciles.subscribe()).map(Ok::<_, Infallible>);
        let run = applier(
            |namespace, ctx| Box::pin(reconcile::reconcile(namespace, ctx)),
            reconcile::error_policy,
            context.clone(),
            scope.clone(),
            queue,
            controller::Config::default().debounce(RECONCILE_DEBOUNCE),
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not complete");
            }
        });
        tokio::select! {
            () = run => {}
            lost = leading.wait_for(|l| !*l) => {
                if lost.is_err() {
                    plugin.abort();
                    return;
                }
                tracing::info!("no longer leading: stopping writes");
            }
        }
        plugin.abort();
    }
}

/// Every namespace in scope, then every namespace a trigger names (all of
/// them again if the channel overflowed and triggers were lost).
fn requests(
    scope: Store<Namespace>,
    receiver: broadcast::Receiver<ObjectRef<Namespace>>,
) -> impl futures::Stream<Item = ObjectRef<Namespace>> {
    let initial = stream::iter(in_scope(&scope));
    let later = stream::unfold((scope, receiver), move |(scope, mut receiver)| async move {
        let batch = match receiver.recv().await {
            Ok(reference) => vec![reference],
            Err(broadcast::error::RecvError::Lagged(_)) => in_scope(&scope),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((batch, (scope, receiver)))
    })
    .flat_map(stream::iter);
    initial.chain(later)
}

/// Applies the WasmPlugin that installs the filter in the gateways,
/// retrying until it succeeds (or leadership ends and the task is aborted).
async fn install_wasm_plugin(client: Client, config: ControllerConfig) {
    let options = &config.render;
    let mut plugin = revgate_istio::wasm_plugin(options);
    if let Some(token) = &config.gateway_token {
        token.add_to(&mut plugin);
    }
    let Ok(body) = serde_json::to_value(plugin) else { return };
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, &options.gateway_namespace, &Kind::WasmPlugin.api_resource());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let name = revgate_istio::names::WASM_PLUGIN;
    let mut failures = 0;
    loop {
        match api.patch(name, &params, &Patch::Apply(&body)).await {
            Ok(_) => return,
            Err(e) => {
                let delay = retry_delay(failures);
                failures += 1;
                tracing::warn!(
                    namespace = %options.gateway_namespace, error = %e, retry_in = ?delay,
                    "applying the WasmPlugin failed; is Istio's extensions.istio.io CRD installed?"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use revgate_model::plan::ObjectKey;

    use super::*;
    use crate::testing::{Fixture, ksvc};

    fn names(refs: &[ObjectRef<Namespace>]) -> Vec<&str> {
        refs.iter().map(|r| r.name.as_str()).collect()
    }

    /// With selected namespaces, others are ignored; a ConfigMap change
    /// reconciles every namespace; in all-namespaces mode, a namespace
    /// joins the scope when its first object is seen.
    #[tokio::test]
    async fn the_dispatcher_scopes_and_fans_out() {
        for (selected, triggers, want) in [
            (
                vec!["a", "b"],
                vec![Trigger::Namespace("c".into()), Trigger::Namespace("b".into()), Trigger::All],
                vec!["b", "a", "b"],
            ),
            (vec![], vec![Trigger::Namespace("c".into()), Trigger::All], vec!["c", "c"]),
        ] {
            let selected: Vec<String> = selected.into_iter().map(String::from).collect();
            let (scope, dispatcher) = Dispatcher::new(&selected);
            let mut reconciles = dispatcher.reconciles.subscribe();
            let (tx, rx) = mpsc::unbounded_channel();
            let (changed_tx, _changed) = watch::channel(0);
            let task = tokio::spawn(dispatcher.run(rx, changed_tx));
            for trigger in triggers {
                tx.send(trigger).expect("the dispatcher runs");
            }
            drop(tx);
            task.await.expect("the dispatcher ends with its triggers");
            let mut got = Vec::new();
            while let Ok(r) = reconciles.try_recv() {
                got.push(r);
            }
            assert_eq!(names(&got), want, "selected {selected:?}");
            assert!(scope.state().len() >= selected.len());
        }
    }

    /// A leadership term starts with every namespace, then follows
    /// triggers; if triggers were lost (the channel overflowed), it
    /// reconciles every namespace again rather than miss one.
    #[tokio::test]
    async fn a_term_reconciles_everything_then_what_changes() {
        let (scope, _dispatcher) = Dispatcher::new(&["a".to_string(), "b".to_string()]);
        let (tx, rx) = broadcast::channel(2);
        let stream = requests(scope, rx);
        for name in ["b", "x", "y"] {
            tx.send(ObjectRef::new(name)).expect("a subscriber");
        }
        drop(tx);
        let got: Vec<ObjectRef<Namespace>> = stream.collect().await;
        assert_eq!(names(&got), ["a", "b", "a", "b", "x", "y"], "initial, lag → all, then the rest");
    }

    #[derive(Debug)]
    struct Namespaces(BTreeMap<String, Snapshot>);

    impl ClusterReader for Namespaces {
        fn snapshot(&self, namespace: &str) -> Snapshot {
            self.0.get(namespace).cloned().unwrap_or_else(|| Snapshot::new(namespace))
        }
    }

    /// Every replica's view merges the namespaces: one world, readiness
    /// and the runtime states of all revisions.
    #[test]
    fn the_view_merges_every_namespace() {
        let in_ns = |ns: &str, f: Fixture| f.set("/metadata/namespace", serde_json::json!(ns)).object();
        let snapshot = |ns: &str| {
            let mut s = Snapshot::new(ns);
            s.insert(in_ns(ns, ksvc("hello")));
            s.insert(in_ns(ns, Fixture::revision("hello-00001")));
            s.insert(in_ns(ns, Fixture::endpoint_slice("hello-00001", "a").endpoint("10.0.0.1", Some(true))));
            s
        };
        let reader = Namespaces(BTreeMap::from([("a".into(), snapshot("a")), ("b".into(), snapshot("b"))]));
        let (scope, _dispatcher) = Dispatcher::new(&["a".to_string(), "b".to_string()]);
        let (view, states) = cluster_view(&reader, &scope);
        assert_eq!(view.world.services.len(), 2);
        assert_eq!(view.observed.revisions.len(), 2);
        assert_eq!(states[&ObjectKey::new("b", "hello-00001")].ready.len(), 1);
    }
}

#[cfg(test)]
mod tls {
    /// kube's TLS needs a crypto provider compiled in (its `ring` feature);
    /// without one, the first HTTPS connection to a real API server panics.
    #[tokio::test]
    async fn an_https_client_can_be_built() {
        let config = kube::Config::new("https://127.0.0.1:6443".parse().expect("a URL"));
        assert!(kube::Client::try_from(config).is_ok());
    }
}
