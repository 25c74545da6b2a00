//! The tasks that follow the gateways themselves rather than their filters:
//! their own statistics (for the KPA, see [`Aggregator::record_envoy_stats`])
//! and the warm path's owner (see [`crate::warm`]).
//!
//! [`Aggregator::record_envoy_stats`]: crate::metrics::Aggregator::record_envoy_stats

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, UNIX_EPOCH};

use revgate_proto::{MetricsReport, RevisionMetrics};
use revgate_xds::stats::{EnvoyStats, FLUSH_INTERVAL};
use revgate_xds::{AckEvent, GatewayStatus};
use tokio::sync::{broadcast, mpsc, watch};

use crate::readiness::ReadinessTable;
use crate::warm::{WarmView, bypass_set, warm_everywhere};
use crate::{Demand, lock, unix_ms};

/// A gateway whose statistics are older than this is not streaming them:
/// three flushes, as a filter's report stays current for three windows.
const STATS_FRESHNESS: Duration = Duration::from_secs(3);
/// How often the bypass set is checked against the statistics' freshness
/// and the revisions settling when nothing else changes. A check that finds
/// neither moved costs no walk over the revisions.
const RECHECK: Duration = Duration::from_secs(1);
/// At most this many gateways' statistics are tracked.
const MAX_GATEWAYS: usize = 1024;

/// Records every gateway's statistics as that gateway's report.
pub(crate) async fn ingest_stats(
    mut stats: mpsc::Receiver<EnvoyStats>,
    readiness: watch::Receiver<Arc<ReadinessTable>>,
    demand: Weak<Mutex<Demand>>,
) {
    while let Some(flush) = stats.recv().await {
        let Some(demand) = demand.upgrade() else { return };
        let now_ms = unix_ms();
        let received_ms = flush.received.duration_since(UNIX_EPOCH).map_or(now_ms, |d| d.as_millis() as u64);
        let table = readiness.borrow().clone();
        let known = |key: &revgate_model::plan::ObjectKey| table.knows(key);
        let mut demand = lock(&demand);
        if !demand.stats_seen.contains_key(&flush.node) && demand.stats_seen.len() >= MAX_GATEWAYS {
            let stale_before = now_ms.saturating_sub(STATS_FRESHNESS.as_millis() as u64);
            demand.stats_seen.retain(|_, seen| *seen >= stale_before);
            if demand.stats_seen.len() >= MAX_GATEWAYS {
                continue;
            }
        }
        let previous = demand.stats_seen.insert(flush.node.clone(), received_ms);
        // Counters are deltas since the previous flush; the first one's
        // window is the configured interval.
        let window_ms = previous
            .map(|at| received_ms.saturating_sub(at))
            .filter(|ms| (100..=10_000).contains(ms))
            .unwrap_or(FLUSH_INTERVAL.as_millis() as u64);
        demand.aggregator.record_envoy_stats(report(&flush, received_ms, window_ms), &known, now_ms);
        demand.aggregator.count_unfiltered(&flush, &known, received_ms);
    }
}

/// One flush as a report: requests in flight sampled at the flush stand
/// for the window's average concurrency.
fn report(flush: &EnvoyStats, received_ms: u64, window_ms: u64) -> MetricsReport {
    MetricsReport {
        node_id: flush.node.clone(),
        reporter: String::new(),
        window_start_unix_ms: received_ms.saturating_sub(window_ms),
        window_ms,
        revisions: flush
            .revisions
            .iter()
            .filter(|(_, s)| s.active > 0.0 || s.requests > 0)
            .map(|(key, s)| RevisionMetrics {
                namespace: key.namespace.clone(),
                revision: key.name.clone(),
                average_concurrency: s.active,
                requests: s.requests,
                responses_5xx: s.responses_5xx,
                in_flight: s.active.max(0.0) as u64,
                ..Default::default()
            })
            .collect(),
    }
}

/// Owns the warm path: the bypass set (from the readiness table, the
/// gateways listed and which of them stream statistics) and what each
/// gateway's ACKed routes serve without the filter.
pub(crate) async fn own_warm_path(
    mut readiness: watch::Receiver<Arc<ReadinessTable>>,
    mut status: watch::Receiver<GatewayStatus>,
    mut acks: broadcast::Receiver<AckEvent>,
    demand: Weak<Mutex<Demand>>,
    warm: Arc<watch::Sender<WarmView>>,
) {
    let mut view = warm.borrow().clone();
    let mut warm_since = BTreeMap::new();
    let mut recheck = tokio::time::interval(RECHECK);
    let mut nodes: BTreeSet<String> = status.borrow_and_update().nodes.keys().cloned().collect();
    // What the last recomputation saw of time: the nodes streaming
    // statistics then, and when the next warm revision settles.
    let mut streaming: BTreeSet<String> = BTreeSet::new();
    let mut next_settle: Option<u64> = None;
    loop {
        // ACKs change what the gateways serve; the rest may change the set.
        let (routes_changed, recompute) = tokio::select! {
            changed = readiness.changed() => if changed.is_err() { return } else { (false, true) },
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                // The status changes with every ACK; only its nodes matter here.
                let listed: BTreeSet<String> = status.borrow_and_update().nodes.keys().cloned().collect();
                if listed == nodes {
                    continue;
                }
                nodes = listed;
                (view.retain_nodes(|node| nodes.contains(node)), true)
            }
            ack = acks.recv() => match ack {
                Ok(ack) => (view.record_ack(&ack), false),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the warm path fell behind the xDS ACKs");
                    (false, false)
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = recheck.tick() => {
                let Some(demand) = demand.upgrade() else { return };
                let settled = next_settle.is_some_and(|at| at <= unix_ms());
                (false, settled || streaming_nodes(&demand, &nodes) != streaming)
            }
        };
        if !recompute {
            if routes_changed {
                warm.send_replace(view.clone());
            }
            continue;
        }
        let Some(demand) = demand.upgrade() else { return };
        streaming = streaming_nodes(&demand, &nodes);
        let table = readiness.borrow_and_update().clone();
        let warm_now = warm_everywhere(&table, &nodes, |node| streaming.contains(node));
        let (bypass, settles) = bypass_set(warm_now, &mut warm_since, unix_ms());
        next_settle = settles;
        let bypass_changed = view.set_bypass(bypass);
        if routes_changed || bypass_changed {
            warm.send_replace(view.clone());
        }
    }
}

/// The gateways of `nodes` whose statistics are current.
fn streaming_nodes(demand: &Mutex<Demand>, nodes: &BTreeSet<String>) -> BTreeSet<String> {
    let fresh_after = unix_ms().saturating_sub(STATS_FRESHNESS.as_millis() as u64);
    let demand = lock(demand);
    nodes.iter().filter(|node| demand.stats_seen.get(*node).is_some_and(|at| *at >= fresh_after)).cloned().collect()
}
