//! The activation service: the control plane's side of the gateway filter's
//! contract (`revgate-proto`), served on its own address.
//!
//! | call | what revgate does |
//! |---|---|
//! | `POST /activation/v1/report` | keeps the reporter's latest metrics ([`crate::metrics::Aggregator`]) |
//! | `POST /activation/v1/activate` | records the demand for a cold revision |
//! | `GET /activation/v1/readiness?after=V&node=N[&gate=probe]` | long-poll: answers when the [`ReadinessTable`] version differs from `V`; `gate=probe` (a filter that confirms endpoints itself, e.g. in Istio) is told the registered endpoints instead of the ACKed ones |
//!
//! One task owns the readiness table: it follows the published gateway plan,
//! the endpoint counts the control plane wants and the xDS ACKs, and
//! publishes the table through a `watch` channel, which every long-poll
//! reads. Every answer is recorded per filter VM (node and reporter), so the
//! control plane can wait until all filters know a revision is cold before
//! its endpoints leave Envoy. Metrics and activations are small, synchronous
//! updates behind a mutex never held across an `.await`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prost::Message;
use revgate_model::plan::{GatewayPlan, ObjectKey};
use revgate_proto::paths;
use revgate_proto::{ActivationRequest, MetricsReport};
use revgate_xds::AckEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::metrics::{Aggregator, RevisionTotals};
use crate::readiness::ReadinessTable;

/// Demand for a revision with no ready endpoints, as the filter reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub revision: ObjectKey,
    pub node: String,
    /// Requests held for it in the reporting worker.
    pub held: u64,
    pub at_unix_ms: u64,
}

/// Per revision: what the gateways report, and the last activation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RevisionActivity {
    #[serde(flatten)]
    pub totals: RevisionTotals,
    pub activations: u64,
    pub last_activation: Option<Activation>,
}

#[derive(Debug, Default)]
struct Demand {
    aggregator: Aggregator,
    activations: BTreeMap<ObjectKey, (u64, Activation)>,
}

/// The longest a revision going to zero waits for every filter to hear that
/// it is cold; a filter VM that does not poll meanwhile is gone or cut off.
pub const COLD_NOTICE_TIMEOUT: Duration = Duration::from_secs(2);

/// A filter VM not heard from for this long no longer counts as a poller
/// (a live one always has a poll outstanding, renewed every 25 s at most).
const POLLER_TTL: Duration = Duration::from_millis(paths::READINESS_MAX_HOLD_MS + 5_000);

/// What each filter VM (node, reporter) was last told, and when it asked.
#[derive(Debug, Default)]
struct Pollers {
    answered: BTreeMap<(String, String), (u64, Instant)>,
}

impl Pollers {
    /// Pollers heard from within [`POLLER_TTL`], with the version each was answered.
    fn live(&self, now: Instant) -> impl Iterator<Item = (&(String, String), u64)> {
        self.answered
            .iter()
            .filter(move |(_, (_, seen))| now.duration_since(*seen) < POLLER_TTL)
            .map(|(key, (version, _))| (key, *version))
    }

    /// Whether every live poller has been answered `version` or later.
    fn all_have(&self, version: u64, now: Instant) -> bool {
        self.live(now).all(|(_, answered)| answered >= version)
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every update under it is a single insert or count).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Shared by the HTTP handlers and the admin API.
#[derive(Debug, Clone)]
pub struct ActivationService {
    readiness: watch::Receiver<Arc<ReadinessTable>>,
    plan: watch::Receiver<Arc<GatewayPlan>>,
    demand: Arc<Mutex<Demand>>,
    pollers: Arc<Mutex<Pollers>>,
    /// Ticks whenever a poller is answered.
    answered: watch::Sender<()>,
    /// Every activation request, for the autoscaler to act on at once.
    activations: broadcast::Sender<Activation>,
}

impl ActivationService {
    /// Starts the task that owns the readiness table, following the plan,
    /// the endpoint counts the control plane wants, and the xDS ACKs.
    pub fn start(
        plan: watch::Receiver<Arc<GatewayPlan>>,
        desired: watch::Receiver<Arc<BTreeMap<ObjectKey, u32>>>,
        acks: broadcast::Receiver<AckEvent>,
    ) -> Self {
        let (readiness_tx, readiness) = watch::channel(Arc::new(ReadinessTable::new(unix_ms())));
        tokio::spawn(own_readiness(plan.clone(), desired, acks, readiness_tx));
        Self {
            readiness,
            plan,
            demand: Arc::new(Mutex::new(Demand::default())),
            pollers: Arc::new(Mutex::new(Pollers::default())),
            answered: watch::Sender::new(()),
            activations: broadcast::Sender::new(256),
        }
    }

    /// Activation requests from now on (Knative's "poke" of the autoscaler
    /// when a request arrives for a revision at zero).
    pub fn subscribe_activations(&self) -> broadcast::Receiver<Activation> {
        self.activations.subscribe()
    }

    /// Per gateway node, the live filter VMs that have the current
    /// readiness view (were answered its version).
    pub fn filters_in_sync(&self) -> BTreeMap<String, usize> {
        let current = self.readiness.borrow().version();
        let mut filters = BTreeMap::new();
        for ((node, _), version) in lock(&self.pollers).live(Instant::now()) {
            if version == current {
                *filters.entry(node.clone()).or_insert(0) += 1;
            }
        }
        filters
    }

    /// Waits until every filter has been told that `revision` is cold (the
    /// control plane wants it at zero), so that its endpoints can leave
    /// Envoy without a request meeting an empty cluster. Gives up after
    /// [`COLD_NOTICE_TIMEOUT`], logging which wait was cut short.
    pub async fn until_cold_everywhere(&self, revision: &ObjectKey) {
        let deadline = tokio::time::Instant::now() + COLD_NOTICE_TIMEOUT;
        let mut readiness = self.readiness.clone();
        let mut answered = self.answered.subscribe();
        let version = loop {
            let table = readiness.borrow_and_update().clone();
            if table.desired(revision) == Some(0) {
                break table.version();
            }
            tokio::select! {
                changed = readiness.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(%revision, "the readiness table did not take the revision to zero in time");
                    return;
                }
            }
        };
        loop {
            let done = lock(&self.pollers).all_have(version, Instant::now());
            if done {
                return;
            }
            tokio::select! {
                changed = answered.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(%revision, "not every gateway filter heard the revision is cold in time; removing its endpoints anyway");
                    return;
                }
            }
        }
    }

    /// Current activity of every revision that has any.
    pub fn activity(&self) -> BTreeMap<ObjectKey, RevisionActivity> {
        let plan = self.plan.borrow().clone();
        let known = |key: &ObjectKey| plan.revisions.iter().any(|r| &r.key == key);
        let mut demand = lock(&self.demand);
        let mut activity: BTreeMap<ObjectKey, RevisionActivity> = demand
            .aggregator
            .totals(&known, unix_ms())
            .into_iter()
            .map(|(key, totals)| (key, RevisionActivity { totals, ..Default::default() }))
            .collect();
        for (key, (count, last)) in &demand.activations {
            if known(key) {
                let entry = activity.entry(key.clone()).or_default();
                entry.activations = *count;
                entry.last_activation = Some(last.clone());
            }
        }
        activity
    }

    pub fn router(self) -> Router {
        Router::new()
            .route(paths::REPORT, post(report))
            .route(paths::ACTIVATE, post(activate))
            .route(paths::READINESS, get(readiness))
            .with_state(self)
    }
}

async fn own_readiness(
    mut plan: watch::Receiver<Arc<GatewayPlan>>,
    mut desired: watch::Receiver<Arc<BTreeMap<ObjectKey, u32>>>,
    mut acks: broadcast::Receiver<AckEvent>,
    readiness: watch::Sender<Arc<ReadinessTable>>,
) {
    let mut table = (**readiness.borrow()).clone();
    table.set_plan(&plan.borrow_and_update());
    table.set_desired(&desired.borrow_and_update());
    readiness.send_replace(Arc::new(table.clone()));
    loop {
        let changed = tokio::select! {
            changed = plan.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = plan.borrow_and_update().clone();
                table.set_plan(&current)
            }
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = desired.borrow_and_update().clone();
                table.set_desired(&current)
            }
            ack = acks.recv() => match ack {
                Ok(ack) => table.record_ack(&ack),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Missed ACKs only delay readiness: the next ACK of each
                    // cluster carries its full assignment again.
                    tracing::warn!(missed, "readiness fell behind the xDS ACKs");
                    false
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if changed {
            readiness.send_replace(Arc::new(table.clone()));
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

fn bad_request(what: &str, e: prost::DecodeError) -> Response {
    (StatusCode::BAD_REQUEST, format!("revgate: the {what} is not a valid protobuf message: {e}")).into_response()
}

async fn report(State(service): State<ActivationService>, body: Bytes) -> Response {
    match MetricsReport::decode(body) {
        Ok(report) => {
            let mut demand = lock(&service.demand);
            demand.aggregator.record(report, unix_ms());
            StatusCode::OK.into_response()
        }
        Err(e) => bad_request("metrics report", e),
    }
}

async fn activate(State(service): State<ActivationService>, body: Bytes) -> Response {
    let request = match ActivationRequest::decode(body) {
        Ok(request) => request,
        Err(e) => return bad_request("activation request", e),
    };
    let activation = Activation {
        revision: ObjectKey::new(request.namespace, request.revision),
        node: request.node_id,
        held: request.held,
        at_unix_ms: unix_ms(),
    };
    tracing::info!(revision = %activation.revision, node = activation.node, held = activation.held, "activation requested");
    {
        let mut demand = lock(&service.demand);
        let entry = demand.activations.entry(activation.revision.clone()).or_insert((0, activation.clone()));
        entry.0 += 1;
        entry.1 = activation.clone();
    }
    // Nobody listening (no autoscaler) is fine: the activation is recorded.
    let _ = service.activations.send(activation);
    StatusCode::OK.into_response()
}

#[derive(Debug, Deserialize)]
struct ReadinessQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    node: String,
    #[serde(default)]
    reporter: String,
    /// The filter's release gate ([`paths::READINESS_GATE_PARAM`]).
    #[serde(default)]
    gate: String,
}

impl ReadinessQuery {
    /// The filter confirms endpoints in its own Envoy (`gate=probe`).
    fn probes(&self) -> bool {
        self.gate == paths::READINESS_GATE_PROBE
    }
}

async fn readiness(State(service): State<ActivationService>, Query(query): Query<ReadinessQuery>) -> Response {
    let mut readiness = service.readiness.clone();
    let hold = tokio::time::sleep(Duration::from_millis(paths::READINESS_MAX_HOLD_MS));
    tokio::pin!(hold);
    // The poller already has `after`: record that, so a wait for every
    // filter to hear a version counts it from now on.
    service.answered_poller(&query, query.after);
    loop {
        let table = readiness.borrow_and_update().clone();
        if table.version() != query.after {
            service.answered_poller(&query, table.version());
            return protobuf(table.update_for(&query.node, query.probes()).encode_to_vec());
        }
        tokio::select! {
            changed = readiness.changed() => {
                if changed.is_err() {
                    return (StatusCode::SERVICE_UNAVAILABLE, "revgate: the control plane is shutting down").into_response();
                }
            }
            () = &mut hold => {
                service.answered_poller(&query, table.version());
                return protobuf(table.update_for(&query.node, query.probes()).encode_to_vec());
            }
        }
    }
}

impl ActivationService {
    fn answered_poller(&self, query: &ReadinessQuery, version: u64) {
        let key = (query.node.clone(), query.reporter.clone());
        lock(&self.pollers).answered.insert(key, (version, Instant::now()));
        self.answered.send_replace(());
    }
}

fn protobuf(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, paths::CONTENT_TYPE)], body).into_response()
}
