//! `revgate-activation`: the activation service, the control plane's side of the gateway filter's
//! contract (`revgate-proto`), served on its own address.
//!
//! | call | what revgate does |
//! |---|---|
//! | `POST /activation/v1/report` | keeps the reporter's latest metrics ([`crate::metrics::Aggregator`]) |
//! | `POST /activation/v1/activate` | records the demand for a cold revision |
//! | `GET /activation/v1/readiness?after=V&node=N[&gate=probe][&partial=1]` | long-poll: answers when the [`ReadinessTable`] version differs from `V`; `gate=probe` (a filter that confirms endpoints itself, e.g. in Istio) is told the registered endpoints instead of the ACKed ones; `partial=1` gets only the revisions changed since `V` when the table still remembers `V` |
//!
//! One task owns the readiness table: it follows the published gateway plan,
//! the endpoint counts the control plane wants and the xDS ACKs, and
//! publishes the table through a `watch` channel, which every long-poll
//! reads. Every answer is recorded per filter VM (node and reporter) and
//! published on another `watch`, which the control plane's zero gate
//! follows to wait until all filters know a revision is cold before its
//! endpoints leave Envoy. Metrics and activations are small, synchronous
//! updates behind a mutex never held across an `.await`.
//!
//! Whatever clients send, what the service keeps stays bounded
//! (`bookkeeping`): activations and metrics for revisions not in the
//! gateway plan are answered `404` and kept nowhere; at most
//! [`MAX_FILTER_VMS`] filter VMs are tracked (per table: pollers, reporters),
//! a new one beyond is answered `429`; VMs and reports expire when idle;
//! messages are at most [`MAX_MESSAGE_BYTES`], ids at most [`MAX_ID_BYTES`];
//! and each kind of log line is written at most once per `LOG_INTERVAL`,
//! with the count of those left out.
//!
//! # Layout
//! - `readiness`: the readiness table: which revisions each Envoy can
//!   serve, from the plan, the wanted counts and the xDS ACKs (pure).
//! - `metrics`: the filters' reports, summed per revision (pure).
//! - `counters`: the reports added up since the start, per revision —
//!   requests by status code, duration histograms, refusals (pure); read
//!   with [`ActivationService::counters`].
//! - `bookkeeping`: pollers and activation records, with their expiry (pure).
//! - `log_throttle`: one log line per kind of event and interval (pure).
#![forbid(unsafe_code)]

mod bookkeeping;
pub mod bypassed;
pub mod counters;
mod gateways;
mod log_throttle;
pub mod metrics;
pub mod readiness;
pub mod warm;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
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
use tokio::time::Instant;

use self::bookkeeping::{
    ActivationRecords, FilterVm, MAX_POLLS_PER_VM, POLLER_IDLE_TIMEOUT, PollRefused, Pollers, Waiting,
};
use self::log_throttle::{LOG_INTERVAL, LogThrottle};
use crate::counters::CountersSnapshot;
use crate::metrics::{Aggregator, ReportError, RevisionTotals};
use crate::readiness::ReadinessTable;
use crate::warm::WarmView;

/// The most filter VMs the service tracks, in each of its tables (readiness
/// pollers, metrics reporters). Every Envoy worker thread runs one VM, and
/// the main thread one more: 1024 covers, say, 60 gateway replicas of 16
/// workers. A new VM beyond it is answered `429` until an idle one expires.
pub const MAX_FILTER_VMS: usize = 1024;

/// The largest message body the service reads. A report lists at most the
/// revisions of the plan, about 100 bytes each.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The longest node id or reporter id taken. Istio's node ids, the longest
/// seen, are about 100 bytes; a reporter id adds about 20.
pub const MAX_ID_BYTES: usize = 512;

/// Why the service refused a call; each answers its own status with a body
/// that names the input or the limit.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("revgate: the {what} is not a valid protobuf message: {source}")]
    BadMessage { what: &'static str, source: prost::DecodeError },
    #[error("revgate: the {what} could not be read: {detail}")]
    BadBody { what: &'static str, detail: String },
    #[error(
        "revgate: the {what} is larger than the activation service takes (MAX_MESSAGE_BYTES = {MAX_MESSAGE_BYTES})"
    )]
    TooLarge { what: &'static str },
    #[error("revgate: the readiness query is not valid: {detail}")]
    BadQuery { detail: String },
    #[error(
        "revgate: {field} is {len} bytes, longer than the activation service takes (MAX_ID_BYTES = {MAX_ID_BYTES})"
    )]
    IdTooLong { field: &'static str, len: usize },
    #[error(
        "revgate: revision {revision} is not in the gateway plan, so the activation was not recorded \
         (a filter activates the revisions its readiness view lists; check the revision's name, or wait for the next view)"
    )]
    UnknownRevision { revision: ObjectKey },
    #[error("revgate: {0}")]
    Report(ReportError),
    #[error(
        "revgate: the activation service already tracks {MAX_FILTER_VMS} filter VMs polling readiness \
         (MAX_FILTER_VMS = {MAX_FILTER_VMS}), so filter VM {reporter:?} of node {node:?} was refused; \
         a VM that stops polling is forgotten after {}s, then a new one is taken",
        POLLER_IDLE_TIMEOUT.as_secs()
    )]
    TooManyPollers { node: String, reporter: String },
    #[error(
        "revgate: filter VM {reporter:?} of node {node:?} already has {MAX_POLLS_PER_VM} readiness polls held \
         (MAX_POLLS_PER_VM = {MAX_POLLS_PER_VM}); each of its root contexts polls once at a time"
    )]
    TooManyPolls { node: String, reporter: String },
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadMessage { .. } | Self::BadBody { .. } | Self::BadQuery { .. } | Self::IdTooLong { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::Report(ReportError::RepeatedRevision { .. } | ReportError::BadEntry { .. }) => {
                StatusCode::BAD_REQUEST
            }
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownRevision { .. } | Self::Report(ReportError::UnknownRevision { .. }) => StatusCode::NOT_FOUND,
            Self::TooManyPollers { .. }
            | Self::TooManyPolls { .. }
            | Self::Report(ReportError::TooManyReporters { .. }) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The kind of event, for the log's rate limit.
    fn kind(&self) -> &'static str {
        match self {
            Self::BadMessage { .. } | Self::BadBody { .. } | Self::BadQuery { .. } | Self::IdTooLong { .. } => {
                "bad request"
            }
            Self::Report(ReportError::RepeatedRevision { .. } | ReportError::BadEntry { .. }) => "bad request",
            Self::TooLarge { .. } => "message too large",
            Self::UnknownRevision { .. } => "activation of an unknown revision",
            Self::Report(ReportError::UnknownRevision { .. }) => "metrics of an unknown revision",
            Self::TooManyPollers { .. } => "too many filter VMs polling",
            Self::TooManyPolls { .. } => "too many polls of one filter VM",
            Self::Report(ReportError::TooManyReporters { .. }) => "too many filter VMs reporting",
        }
    }
}

fn check_id(field: &'static str, value: &str) -> Result<(), Refusal> {
    if value.len() > MAX_ID_BYTES { Err(Refusal::IdTooLong { field, len: value.len() }) } else { Ok(()) }
}

/// The message body, or the refusal that names what was wrong with it.
fn body(what: &'static str, body: Result<Bytes, BytesRejection>) -> Result<Bytes, Refusal> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::TooLarge { what }
        } else {
            Refusal::BadBody { what, detail: rejection.body_text() }
        }
    })
}

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

#[derive(Debug)]
struct Demand {
    aggregator: Aggregator,
    activations: ActivationRecords,
    /// When each gateway's statistics last arrived (Unix ms): a gateway
    /// whose stats sink is silent keeps the filter on every route.
    stats_seen: BTreeMap<String, u64>,
}

/// The longest a revision going to zero waits (at the zero gate) for every
/// filter to hear that it is cold; a filter VM that does not poll meanwhile
/// is gone or cut off.
pub const COLD_NOTICE_TIMEOUT: Duration = Duration::from_secs(2);

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every update under it is a single insert or count).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Shared by the HTTP handlers and the admin API.
///
/// What others follow is published on `watch` channels: the readiness
/// table (owned by one task, and the index of the plan the handlers look
/// revisions up in), the filter VMs' polls, and
/// activations on a broadcast. The rest of the handlers' bookkeeping
/// (`demand`, `log`) stays behind small locks instead of an owner task:
/// every call makes one synchronous insert or count, and readers (the admin
/// API, the autoscaler once a second, the zero gate) compute their copy at
/// the time they read, because what has expired depends on that time. A
/// task would add a channel hop to every report and poll and gain nothing.
/// No guard is ever held across an `.await`.
#[derive(Debug, Clone)]
pub struct ActivationService {
    readiness: watch::Receiver<Arc<ReadinessTable>>,
    demand: Arc<Mutex<Demand>>,
    /// Every filter VM's polls: written by the readiness handlers, followed
    /// by the zero gate (which waits until every live VM heard a version)
    /// and read by the admin API. Published on a `watch`, which notifies on
    /// every poll begun and answered.
    pollers: Arc<watch::Sender<Pollers>>,
    log: Arc<Mutex<LogThrottle>>,
    /// Every activation request, for the autoscaler to act on at once.
    activations: broadcast::Sender<Activation>,
    /// The warm path (see [`warm`]): owned by the task
    /// [`ActivationService::follow_gateways`] starts; until then, nothing
    /// is served without the filter.
    warm: Arc<watch::Sender<WarmView>>,
}

impl ActivationService {
    /// Starts the task that owns the readiness table, following the plan,
    /// the endpoint counts the control plane wants, and the xDS ACKs.
    pub fn start(
        plan: watch::Receiver<Arc<GatewayPlan>>,
        desired: watch::Receiver<Arc<BTreeMap<ObjectKey, u32>>>,
        acks: broadcast::Receiver<AckEvent>,
    ) -> Self {
        // The first table already follows the plan, so the handlers know its
        // revisions from the start.
        let mut table = ReadinessTable::new(unix_ms());
        table.set_plan(&plan.borrow());
        let (readiness_tx, readiness) = watch::channel(Arc::new(table));
        tokio::spawn(own_readiness(plan, desired, acks, readiness_tx));
        let log = Arc::new(Mutex::new(LogThrottle::default()));
        tokio::spawn(count_unlogged(Arc::downgrade(&log)));
        let demand = Arc::new(Mutex::new(Demand {
            aggregator: Aggregator::new(MAX_FILTER_VMS),
            activations: ActivationRecords::default(),
            stats_seen: BTreeMap::new(),
        }));
        tokio::spawn(time_cold_starts(readiness.clone(), Arc::downgrade(&demand)));
        Self {
            readiness,
            demand,
            pollers: Arc::new(watch::Sender::new(Pollers::new(MAX_FILTER_VMS))),
            log,
            activations: broadcast::Sender::new(256),
            warm: Arc::new(watch::Sender::new(WarmView::default())),
        }
    }

    /// Follows the gateways' own statistics (their stats sink), their
    /// status and their ACKs, and from them owns the warm path: the
    /// revisions served without the filter, and what each gateway serves so.
    /// Without this, every route keeps the filter.
    pub fn follow_gateways(
        &self,
        stats: tokio::sync::mpsc::Receiver<revgate_xds::stats::EnvoyStats>,
        status: watch::Receiver<revgate_xds::GatewayStatus>,
        acks: broadcast::Receiver<AckEvent>,
    ) {
        tokio::spawn(gateways::ingest_stats(stats, self.readiness.clone(), Arc::downgrade(&self.demand)));
        tokio::spawn(gateways::own_warm_path(
            self.readiness.clone(),
            status,
            acks,
            Arc::downgrade(&self.demand),
            self.warm.clone(),
        ));
    }

    /// The warm path as it stands: the translation follows its bypass set.
    pub fn warm(&self) -> watch::Receiver<WarmView> {
        self.warm.subscribe()
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
        for ((node, _), version) in self.pollers.borrow().live(now()) {
            if version == current {
                *filters.entry(node.clone()).or_insert(0) += 1;
            }
        }
        filters
    }

    /// Waits until every live filter VM has been told that `revision` is
    /// cold (the control plane wants it at zero), so that its endpoints can
    /// leave Envoy without a request meeting an empty cluster. A VM that
    /// stays silent past its idle timeout counts as gone. It does not give
    /// up by itself: the zero gate bounds the wait ([`COLD_NOTICE_TIMEOUT`]).
    ///
    /// Then, as the filter holds only where it runs, it waits until no
    /// gateway still routes `revision` without the filter (the warm path):
    /// the routes that turn it back on were ACKed everywhere.
    pub async fn until_cold_everywhere(&self, revision: &ObjectKey) {
        self.until_filters_heard_cold(revision).await;
        let mut warm = self.warm.subscribe();
        let _ = warm.wait_for(|view| !view.filter_off_anywhere(revision)).await;
    }

    async fn until_filters_heard_cold(&self, revision: &ObjectKey) {
        let mut readiness = self.readiness.clone();
        let mut polls = self.pollers.subscribe();
        let version = match readiness.wait_for(|table| table.desired(revision) == Some(0)).await {
            Ok(table) => table.version(),
            Err(_) => return,
        };
        loop {
            // A lagging VM that stays silent is gone, and not waited for.
            let gone_at = match polls.borrow_and_update().waiting_for(version, now()) {
                Waiting::Done => return,
                Waiting::Lagging { gone_at } => gone_at.map(Instant::from_std),
            };
            let recheck = async {
                match gone_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = polls.changed() => if changed.is_err() { return },
                () = recheck => {}
            }
        }
    }

    /// Current activity of every revision that has any. Forgets the
    /// activations of revisions that left the plan or were idle too long.
    pub fn activity(&self) -> BTreeMap<ObjectKey, RevisionActivity> {
        let table = self.readiness.borrow().clone();
        let known = |key: &ObjectKey| table.knows(key);
        let now_ms = unix_ms();
        let mut demand = lock(&self.demand);
        let mut activity: BTreeMap<ObjectKey, RevisionActivity> = demand
            .aggregator
            .totals(&known, now_ms)
            .into_iter()
            .map(|(key, totals)| (key, RevisionActivity { totals, ..Default::default() }))
            .collect();
        demand.activations.forget(known, now_ms);
        for (key, (count, last)) in demand.activations.iter() {
            let entry = activity.entry(key.clone()).or_default();
            entry.activations = *count;
            entry.last_activation = Some(last.clone());
        }
        activity
    }

    /// The cumulative counters of every revision in the plan: requests by
    /// status code, their durations, held time and refusals. A cheap copy
    /// (shared until the next report), for `/metrics` and for comparing two
    /// moments ([`counters::RevisionCounters::saturating_sub`]).
    pub fn counters(&self) -> CountersSnapshot {
        let table = self.readiness.borrow().clone();
        let known = |key: &ObjectKey| table.knows(key);
        lock(&self.demand).aggregator.counters(&known)
    }

    pub fn router(self) -> Router {
        Router::new()
            .route(paths::REPORT, post(report))
            .route(paths::ACTIVATE, post(activate))
            .route(paths::READINESS, get(readiness))
            .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
            .with_state(self)
    }

    /// Whether `revision` is in the gateway plan the readiness table
    /// follows. The filter learns revisions only from readiness views, so a
    /// revision a filter knows is here unless it was deleted since. A map
    /// lookup: an activation must not cost a walk over every revision.
    fn knows(&self, revision: &ObjectKey) -> bool {
        self.readiness.borrow().knows(revision)
    }

    /// Logs `message` unless a line of the same kind was written within
    /// [`LOG_INTERVAL`]; the next line says how many were left out.
    fn log(&self, kind: &'static str, warn: bool, message: impl FnOnce() -> String) {
        let Some(suppressed) = lock(&self.log).admit(kind, now()) else { return };
        let message = message();
        if warn {
            tracing::warn!(suppressed, "{message}");
        } else {
            tracing::info!(suppressed, "{message}");
        }
    }

    /// Answers a refused call, logging it within the rate limit.
    fn refuse(&self, refusal: Refusal) -> Response {
        let status = refusal.status();
        self.log(refusal.kind(), true, || format!("refused ({status}): {refusal}"));
        (status, refusal.to_string()).into_response()
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

/// Follows the readiness table and ends the cold starts being timed as
/// their revisions become ready on some gateway; ends with the service.
async fn time_cold_starts(mut readiness: watch::Receiver<Arc<ReadinessTable>>, demand: Weak<Mutex<Demand>>) {
    while readiness.changed().await.is_ok() {
        let table = readiness.borrow_and_update().clone();
        let Some(demand) = demand.upgrade() else { return };
        let ready = |key: &ObjectKey| table.ready_anywhere(key);
        let known = |key: &ObjectKey| table.knows(key);
        lock(&demand).aggregator.observe_ready(&ready, &known, unix_ms());
    }
}

/// Every [`LOG_INTERVAL`], logs how many events of each kind were left out
/// of the log and not counted in a line since; ends with the service.
async fn count_unlogged(log: Weak<Mutex<LogThrottle>>) {
    let mut tick = tokio::time::interval(LOG_INTERVAL);
    loop {
        tick.tick().await;
        let Some(log) = log.upgrade() else { return };
        let flushed = lock(&log).flush(now());
        for (kind, count) in flushed {
            tracing::info!(
                count,
                "{count} more events \"{kind}\" in the last {}s (one line per kind of event every {}s)",
                LOG_INTERVAL.as_secs(),
                LOG_INTERVAL.as_secs()
            );
        }
    }
}

/// The bookkeeping's clock: tokio's, so that tests with paused time step
/// the pollers' expiry and the waits on it together.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

async fn report(State(service): State<ActivationService>, bytes: Result<Bytes, BytesRejection>) -> Response {
    match record_report(&service, bytes) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(refusal) => service.refuse(refusal),
    }
}

fn record_report(service: &ActivationService, bytes: Result<Bytes, BytesRejection>) -> Result<(), Refusal> {
    let what = "metrics report";
    let report = MetricsReport::decode(body(what, bytes)?).map_err(|source| Refusal::BadMessage { what, source })?;
    check_id("node_id", &report.node_id)?;
    check_id("reporter", &report.reporter)?;
    // A report lists the few revisions with traffic: a lookup each in the
    // readiness table's index of the plan, never a walk over the plan.
    let table = service.readiness.borrow().clone();
    let known = |key: &ObjectKey| table.knows(key);
    lock(&service.demand).aggregator.record(report, &known, unix_ms()).map_err(Refusal::Report)
}

async fn activate(State(service): State<ActivationService>, bytes: Result<Bytes, BytesRejection>) -> Response {
    let activation = match activation(&service, bytes) {
        Ok(activation) => activation,
        Err(refusal) => return service.refuse(refusal),
    };
    service.log("activation requested", false, || {
        format!(
            "activation requested: revision {}, node {:?}, {} held",
            activation.revision, activation.node, activation.held
        )
    });
    {
        let ready = service.readiness.borrow().ready_anywhere(&activation.revision);
        let mut demand = lock(&service.demand);
        demand.aggregator.activated(&activation.revision, ready, activation.at_unix_ms);
        demand.activations.record(activation.clone());
    }
    // Nobody listening (no autoscaler) is fine: the activation is recorded.
    let _ = service.activations.send(activation);
    StatusCode::OK.into_response()
}

/// The activation a request asks for, if it names a revision of the plan.
fn activation(service: &ActivationService, bytes: Result<Bytes, BytesRejection>) -> Result<Activation, Refusal> {
    let what = "activation request";
    let request =
        ActivationRequest::decode(body(what, bytes)?).map_err(|source| Refusal::BadMessage { what, source })?;
    check_id("node_id", &request.node_id)?;
    let revision = ObjectKey::new(request.namespace, request.revision);
    if !service.knows(&revision) {
        return Err(Refusal::UnknownRevision { revision });
    }
    Ok(Activation { revision, node: request.node_id, held: request.held, at_unix_ms: unix_ms() })
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
    /// Whether the filter applies partial views ([`paths::READINESS_PARTIAL_PARAM`]).
    #[serde(default)]
    partial: String,
}

impl ReadinessQuery {
    /// The filter confirms endpoints in its own Envoy (`gate=probe`).
    fn probes(&self) -> bool {
        self.gate == paths::READINESS_GATE_PROBE
    }

    /// The answer to this poll from `table`: partial when the filter takes
    /// one and the table remembers its version.
    fn answer(&self, table: &ReadinessTable) -> Response {
        let partial = self.partial == paths::READINESS_PARTIAL_YES;
        protobuf(table.update_after(&self.node, self.probes(), self.after, partial).encode_to_vec())
    }
}

async fn readiness(
    State(service): State<ActivationService>,
    query: Result<Query<ReadinessQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return service.refuse(Refusal::BadQuery { detail: rejection.body_text() }),
    };
    // The poller already has `after`: record that, so a wait for every
    // filter to hear a version counts it from now on.
    let poll = match service.begin_poll(&query) {
        Ok(poll) => poll,
        Err(refusal) => return service.refuse(refusal),
    };
    let mut readiness = service.readiness.clone();
    let hold = tokio::time::sleep(Duration::from_millis(paths::READINESS_MAX_HOLD_MS));
    tokio::pin!(hold);
    loop {
        let table = readiness.borrow_and_update().clone();
        if table.version() != query.after {
            poll.answered(table.version());
            return query.answer(&table);
        }
        tokio::select! {
            changed = readiness.changed() => {
                if changed.is_err() {
                    return (StatusCode::SERVICE_UNAVAILABLE, "revgate: the control plane is shutting down").into_response();
                }
            }
            () = &mut hold => {
                poll.answered(table.version());
                return query.answer(&table);
            }
        }
    }
}

/// One readiness poll being held for a filter VM. Dropping it (answered, or
/// the client left and the handler was dropped) ends the poll, so a VM
/// that stops polling is recognised as gone.
struct Poll {
    service: ActivationService,
    vm: FilterVm,
}

impl ActivationService {
    fn begin_poll(&self, query: &ReadinessQuery) -> Result<Poll, Refusal> {
        check_id("node", &query.node)?;
        check_id("reporter", &query.reporter)?;
        let vm = (query.node.clone(), query.reporter.clone());
        let mut begun = Ok(());
        self.pollers.send_if_modified(|pollers| {
            begun = pollers.begin(&vm, query.after, now());
            begun.is_ok()
        });
        begun.map_err(|refused| {
            let (node, reporter) = (query.node.clone(), query.reporter.clone());
            match refused {
                PollRefused::TooManyVms { .. } => Refusal::TooManyPollers { node, reporter },
                PollRefused::TooManyPolls => Refusal::TooManyPolls { node, reporter },
            }
        })?;
        Ok(Poll { service: self.clone(), vm })
    }
}

impl Poll {
    fn answered(&self, version: u64) {
        self.service.pollers.send_modify(|pollers| pollers.answered(&self.vm, version, now()));
    }
}

impl Drop for Poll {
    fn drop(&mut self) {
        // Nobody waits for a poll to end: a VM between polls is only gone
        // once its idle timeout passes, which waiters check by the clock.
        self.service.pollers.send_if_modified(|pollers| {
            pollers.end(&self.vm, now());
            false
        });
    }
}

fn protobuf(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, paths::CONTENT_TYPE)], body).into_response()
}

#[cfg(test)]
mod tests {
    use revgate_model::plan::{RevisionBackend, UpstreamProtocol};
    use revgate_proto::ReadinessUpdate;

    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::new("default", "hello-00001")
    }

    fn plan() -> GatewayPlan {
        let revision = RevisionBackend {
            key: key(),
            configuration: "hello".into(),
            service: Some("hello".into()),
            protocol: UpstreamProtocol::Http1,
            container_concurrency: 0,
            timeout_seconds: 300,
            response_start_timeout_seconds: 300,
            idle_timeout_seconds: 0,
            static_endpoints: None,
        };
        GatewayPlan { revisions: vec![std::sync::Arc::new(revision)], ..Default::default() }
    }

    /// What the readiness owner follows; dropping it ends the owner.
    struct Inputs {
        _plan: watch::Sender<Arc<GatewayPlan>>,
        desired: watch::Sender<Arc<BTreeMap<ObjectKey, u32>>>,
        _acks: broadcast::Sender<AckEvent>,
    }

    /// A service whose plan has one revision wanted at one endpoint, and
    /// the version of its readiness view.
    async fn start() -> (ActivationService, Inputs, u64) {
        let (plan_tx, plan) = watch::channel(Arc::new(plan()));
        let (desired_tx, desired) = watch::channel(Arc::new(BTreeMap::from([(key(), 1)])));
        let (acks_tx, acks) = broadcast::channel(1);
        let service = ActivationService::start(plan, desired, acks);
        let mut readiness = service.readiness.clone();
        let version = readiness.wait_for(|t| t.desired(&key()) == Some(1)).await.expect("readiness owner").version();
        (service, Inputs { _plan: plan_tx, desired: desired_tx, _acks: acks_tx }, version)
    }

    fn query(reporter: &str, after: u64) -> ReadinessQuery {
        ReadinessQuery {
            after,
            node: "gw".into(),
            reporter: reporter.into(),
            gate: String::new(),
            partial: String::new(),
        }
    }

    /// A readiness poll from filter VM `reporter`, as the filter sends it.
    async fn poll(service: &ActivationService, reporter: &str, after: u64) -> ReadinessUpdate {
        let response = readiness(State(service.clone()), Ok(Query(query(reporter, after)))).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), MAX_MESSAGE_BYTES).await.expect("body");
        ReadinessUpdate::decode(body).expect("a readiness update")
    }

    /// A filter VM that was answered `version` and then went silent.
    fn went_silent(service: &ActivationService, reporter: &str, version: u64) {
        drop(service.begin_poll(&query(reporter, version)).expect("room for the VM"));
    }

    async fn go_to_zero(inputs: &Inputs) {
        inputs.desired.send_replace(Arc::new(BTreeMap::from([(key(), 0)])));
        tokio::task::yield_now().await;
    }

    /// An RDS ACK of `node` routing to the test revision, the filter
    /// disabled on the route when `filter_off`.
    fn routes_ack(node: &str, filter_off: bool) -> AckEvent {
        use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteConfiguration, VirtualHost};
        use envoy_types::pb::envoy::config::route::v3::{route, route_action};
        use prost::Name;
        let action = RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(revgate_xds::names::revision_cluster(
                &key(),
            ))),
            ..Default::default()
        };
        let mut vhost = VirtualHost {
            routes: vec![Route { action: Some(route::Action::Route(action)), ..Default::default() }],
            ..Default::default()
        };
        if filter_off {
            revgate_xds::warm::disable_filter(&mut vhost);
        }
        let configuration =
            RouteConfiguration { name: "routes|1".into(), virtual_hosts: vec![vhost], ..Default::default() };
        AckEvent {
            node: node.into(),
            type_url: RouteConfiguration::type_url(),
            version: "1".into(),
            resources: vec![revgate_xds::AckedResource {
                name: "routes|1".into(),
                // A content hash: the two contents get two versions.
                version: if filter_off { "off" } else { "on" }.into(),
                resource: envoy_types::pb::google::protobuf::Any {
                    type_url: RouteConfiguration::type_url(),
                    value: configuration.encode_to_vec(),
                },
            }],
            removed: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn going_to_zero_waits_until_no_gateway_serves_the_revision_without_the_filter() {
        let (service, inputs, version) = start().await;
        let live = tokio::spawn({
            let service = service.clone();
            async move { poll(&service, "live", version).await }
        });
        tokio::task::yield_now().await;
        service.warm.send_modify(|view| {
            view.record_ack(&routes_ack("gw", true));
        });
        go_to_zero(&inputs).await;
        let cold = tokio::spawn({
            let service = service.clone();
            async move { service.until_cold_everywhere(&key()).await }
        });
        live.await.expect("poll task");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!cold.is_finished(), "the gateway still routes the revision past the filter");
        service.warm.send_modify(|view| {
            view.record_ack(&routes_ack("gw", false));
        });
        cold.await.expect("wait task");
    }

    #[tokio::test(start_paused = true)]
    async fn going_to_zero_stops_waiting_for_a_silent_filter_vm_once_it_counts_as_gone() {
        let (service, inputs, version) = start().await;
        went_silent(&service, "gone", version);
        tokio::time::advance(POLLER_IDLE_TIMEOUT - Duration::from_secs(1)).await;
        let live = tokio::spawn({
            let service = service.clone();
            async move { poll(&service, "live", version).await }
        });
        tokio::task::yield_now().await;

        let started = Instant::now();
        go_to_zero(&inputs).await;
        service.until_cold_everywhere(&key()).await;
        let waited = started.elapsed();
        assert!(waited < COLD_NOTICE_TIMEOUT, "waited {waited:?}: the whole timeout for a VM that is gone");
        let told = live.await.expect("poll task");
        assert!(told.version > version && told.revisions[0].ready_endpoints == 0, "the live VM heard it is cold");
    }

    #[tokio::test(start_paused = true)]
    async fn a_filter_vm_silent_for_the_idle_timeout_is_not_waited_for_at_all() {
        let (service, inputs, version) = start().await;
        went_silent(&service, "gone", version);
        tokio::time::advance(POLLER_IDLE_TIMEOUT).await;
        let started = Instant::now();
        go_to_zero(&inputs).await;
        service.until_cold_everywhere(&key()).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn going_to_zero_waits_for_a_live_filter_vm_between_two_polls() {
        let (service, inputs, version) = start().await;
        went_silent(&service, "between-polls", version);
        go_to_zero(&inputs).await;
        let cold = tokio::spawn({
            let service = service.clone();
            async move { service.until_cold_everywhere(&key()).await }
        });
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!cold.is_finished(), "the VM has not heard yet");
        let told = poll(&service, "between-polls", version).await;
        assert_eq!(told.revisions[0].ready_endpoints, 0);
        cold.await.expect("wait task");
    }

    #[tokio::test(start_paused = true)]
    async fn an_activation_for_a_revision_not_in_the_plan_is_refused_and_kept_nowhere() {
        let (service, _inputs, _) = start().await;
        let mut activations = service.subscribe_activations();
        let request = ActivationRequest {
            namespace: "default".into(),
            revision: "made-up-00001".into(),
            held: 1,
            ..Default::default()
        };
        let response = activate(State(service.clone()), Ok(Bytes::from(request.encode_to_vec()))).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(response.into_body(), MAX_MESSAGE_BYTES).await.expect("body");
        assert!(String::from_utf8_lossy(&body).contains("revision default/made-up-00001 is not in the gateway plan"));
        assert!(service.activity().is_empty());
        assert!(activations.try_recv().is_err(), "the autoscaler is not poked");

        let request = ActivationRequest { revision: key().name, ..request };
        let response = activate(State(service.clone()), Ok(Bytes::from(request.encode_to_vec()))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(service.activity()[&key()].activations, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn filter_vms_beyond_the_limit_are_answered_429_naming_it() {
        let (service, _inputs, version) = start().await;
        let polls: Vec<Poll> = (0..MAX_FILTER_VMS)
            .map(|n| service.begin_poll(&query(&format!("vm-{n}"), version)).expect("room"))
            .collect();
        let response = readiness(State(service.clone()), Ok(Query(query("one-more", version)))).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let body = axum::body::to_bytes(response.into_body(), MAX_MESSAGE_BYTES).await.expect("body");
        assert!(String::from_utf8_lossy(&body).contains("MAX_FILTER_VMS = 1024"));
        drop(polls);
        tokio::time::advance(POLLER_IDLE_TIMEOUT).await;
        assert_eq!(poll(&service, "one-more", 0).await.version, version, "the silent VMs are gone: room again");
    }
}
