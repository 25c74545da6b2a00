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
//! - `calls`: the three calls as the service answers them: decoding, the
//!   limits and the refusals that name them, the long-poll; the router.
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
mod calls;
pub mod counters;
mod gateways;
mod log_throttle;
pub mod metrics;
pub mod readiness;
pub mod warm;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use revgate_model::plan::{GatewayPlan, ObjectKey};
use revgate_xds::AckEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use self::bookkeeping::{ActivationRecords, Pollers, Waiting};
use self::log_throttle::{LOG_INTERVAL, LogThrottle};
use crate::counters::CountersSnapshot;
use crate::metrics::{Aggregator, RevisionTotals};
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
