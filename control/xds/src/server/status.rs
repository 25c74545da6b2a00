//! What each Envoy has been sent and has accepted: the server's one
//! observability path.
//!
//! Stream tasks report protocol events to a [`StatusRecorder`]; it logs them,
//! folds them into a [`GatewayStatus`] published through a `watch` channel,
//! and broadcasts every ACK as an [`AckEvent`]. Nothing else in the server
//! logs protocol events.
//!
//! Per node and type:
//!
//! | event            | `sent_version` | `acked_version` / `acked_at` | `nack`        |
//! |------------------|----------------|------------------------------|---------------|
//! | response sent    | its version    | unchanged                    | unchanged     |
//! | ACK of version v | unchanged      | v / now                      | cleared       |
//! | NACK of version v| unchanged      | unchanged (last good config) | v, text, now  |
//!
//! Per node, presence follows its ADS streams:
//!
//! | event                                  | `connected` | `disconnected_at` | in [`GatewayStatus`] |
//! |----------------------------------------|-------------|-------------------|----------------------|
//! | a stream opens                         | true        | cleared           | yes                  |
//! | its last stream closes                 | false       | now               | yes, for the grace   |
//! | a stream opens within the grace        | true        | cleared           | yes (no flap)        |
//! | [`DISCONNECT_GRACE`] passes, no stream | —           | —                 | removed              |
//!
//! A node that left therefore stops counting towards Services' status (and
//! disappears from `revgate get gateway`) once the grace has passed: a
//! client that connects, rejects everything and leaves cannot hold every
//! Service at `GatewayRejected`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use envoy_types::pb::google::protobuf::Any;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::XdsCallbacks;
use crate::snapshot::ResourceType;

/// Which ADS variant a node's stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// State of the world (`StreamAggregatedResources`, `api_type: GRPC`).
    Sotw,
    /// Incremental (`DeltaAggregatedResources`, `api_type: DELTA_GRPC`).
    Delta,
}

/// How long a node whose last ADS stream closed is still shown and still
/// counts towards status. Envoy reconnects a broken stream within about a
/// second (its gRPC retry backoff starts at 500 ms), so an Envoy that
/// reconnects does not make Services flap; a node that is gone stops
/// counting a few seconds later.
pub const DISCONNECT_GRACE: Duration = Duration::from_secs(5);

/// Every node connected now or within [`DISCONNECT_GRACE`], by node id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GatewayStatus {
    pub nodes: BTreeMap<String, NodeStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// At least one ADS stream of this node is open.
    pub connected: bool,
    /// When the node's last stream closed, while it is disconnected; it is
    /// forgotten [`DISCONNECT_GRACE`] later unless it reconnects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_at: Option<SystemTime>,
    /// The API of the most recent stream.
    pub api: Api,
    /// By short type name: `CDS`, `EDS`, `LDS`, `RDS`.
    pub types: BTreeMap<String, TypeStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeStatus {
    /// Version of the latest response sent.
    pub sent_version: Option<String>,
    /// Version of the latest response the node accepted; after a NACK this
    /// is still the configuration Envoy is running.
    pub acked_version: Option<String>,
    pub acked_at: Option<SystemTime>,
    /// The latest rejection, until a later ACK.
    pub nack: Option<Nack>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nack {
    /// The rejected version.
    pub version: String,
    /// Envoy's `error_detail` message.
    pub message: String,
    pub at: SystemTime,
}

/// A node accepted a response.
#[derive(Debug, Clone, PartialEq)]
pub struct AckEvent {
    pub node: String,
    pub type_url: String,
    /// The acknowledged version (SotW `version_info`, delta `system_version_info`).
    pub version: String,
    /// Resources carried by the acknowledged response: every resource for
    /// SotW, only the added or changed ones for delta. The content is
    /// included so that a caller can tell what the node now runs (for
    /// example how many endpoints a cluster has) without keeping history.
    pub resources: Vec<AckedResource>,
    /// Names the acknowledged response removed (delta only).
    pub removed: Vec<String>,
}

/// One resource of an acknowledged response.
#[derive(Debug, Clone, PartialEq)]
pub struct AckedResource {
    pub name: String,
    /// The resource's own version (its content hash).
    pub version: String,
    pub resource: Any,
}

/// Capacity of the ACK broadcast; a receiver lagging further loses the
/// oldest events (and is told so by `RecvError::Lagged`).
const ACK_EVENTS_CAPACITY: usize = 1024;

/// Records protocol events from stream tasks. Shared behind an `Arc`.
#[derive(Debug)]
pub(crate) struct StatusRecorder {
    status: watch::Sender<GatewayStatus>,
    acks: broadcast::Sender<AckEvent>,
    /// Open streams per node. A plain mutex: held only for a counter update
    /// and the status change that goes with it (so that a reconnect and the
    /// end of a grace cannot interleave), never across `.await`.
    presence: Mutex<BTreeMap<String, Presence>>,
    /// [`DISCONNECT_GRACE`] unless a test shortens it.
    grace: Duration,
    callbacks: Arc<dyn XdsCallbacks>,
}

/// A node's streams, as the recorder counts them.
#[derive(Debug, Default)]
struct Presence {
    open: usize,
    /// Bumped whenever a stream opens: a grace started before it must not
    /// forget the node.
    epoch: u64,
}

impl StatusRecorder {
    pub(crate) fn new(grace: Duration, callbacks: Arc<dyn XdsCallbacks>) -> Self {
        Self {
            status: watch::Sender::new(GatewayStatus::default()),
            acks: broadcast::Sender::new(ACK_EVENTS_CAPACITY),
            presence: Mutex::new(BTreeMap::new()),
            grace,
            callbacks,
        }
    }

    pub(crate) fn status(&self) -> watch::Receiver<GatewayStatus> {
        self.status.subscribe()
    }

    pub(crate) fn subscribe_acks(&self) -> broadcast::Receiver<AckEvent> {
        self.acks.subscribe()
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Presence>> {
        self.presence.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn stream_opened(&self, node: &str, api: Api) {
        let mut presence = self.presence();
        let entry = presence.entry(node.to_owned()).or_default();
        entry.open += 1;
        entry.epoch += 1;
        tracing::info!(node, ?api, "ADS stream opened");
        self.status.send_modify(|status| {
            let entry = status.nodes.entry(node.to_owned()).or_insert_with(|| NodeStatus {
                connected: true,
                disconnected_at: None,
                api,
                types: BTreeMap::new(),
            });
            entry.connected = true;
            entry.disconnected_at = None;
            entry.api = api;
        });
    }

    /// A stream of `node` ended. When it was the node's last, the node is
    /// forgotten after the grace unless a stream opens meanwhile.
    pub(crate) fn stream_closed(self: &Arc<Self>, node: &str) {
        let mut presence = self.presence();
        let Some(entry) = presence.get_mut(node) else { return };
        entry.open = entry.open.saturating_sub(1);
        let remaining = entry.open;
        let epoch = entry.epoch;
        tracing::info!(node, remaining, "ADS stream closed");
        if remaining > 0 {
            return;
        }
        let now = SystemTime::now();
        self.status.send_modify(|status| {
            if let Some(entry) = status.nodes.get_mut(node) {
                entry.connected = false;
                entry.disconnected_at = Some(now);
            }
        });
        drop(presence);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let recorder = Arc::clone(self);
                let node = node.to_owned();
                // The grace counts from the close, not from when the task first runs.
                let deadline = tokio::time::Instant::now() + self.grace;
                runtime.spawn(async move {
                    tokio::time::sleep_until(deadline).await;
                    recorder.forget_if_gone(&node, epoch);
                });
            }
            // Streams run on a runtime; should one end outside it (a runtime
            // shutting down), nothing would ever forget the node: do it now.
            Err(_) => self.forget_if_gone(node, epoch),
        }
    }

    /// Forgets `node` if no stream opened since the one that ended at `epoch`.
    fn forget_if_gone(&self, node: &str, epoch: u64) {
        let mut presence = self.presence();
        if !presence.get(node).is_some_and(|p| p.open == 0 && p.epoch == epoch) {
            return;
        }
        presence.remove(node);
        tracing::info!(node, grace = ?self.grace, "gateway node gone: no ADS stream within the grace; forgotten");
        self.status.send_modify(|status| {
            status.nodes.remove(node);
        });
    }

    pub(crate) fn response_sent(
        &self,
        node: &str,
        resource_type: ResourceType,
        version: &str,
        resources: usize,
        removed: usize,
    ) {
        tracing::debug!(node, %resource_type, version, resources, removed, "xDS response sent");
        self.callbacks.response_sent(node, resource_type.short_name());
        self.update_type(node, resource_type, |t| t.sent_version = Some(version.to_owned()));
    }

    pub(crate) fn ack(
        &self,
        node: &str,
        resource_type: ResourceType,
        version: &str,
        resources: Vec<AckedResource>,
        removed: Vec<String>,
        elapsed: Duration,
    ) {
        tracing::debug!(node, %resource_type, version, "xDS ACK");
        self.callbacks.acked(node, resource_type.short_name(), elapsed);
        let now = SystemTime::now();
        self.update_type(node, resource_type, |t| {
            t.acked_version = Some(version.to_owned());
            t.acked_at = Some(now);
            t.nack = None;
        });
        // No receiver is not an error: nobody is waiting for this ACK.
        let _ = self.acks.send(AckEvent {
            node: node.to_owned(),
            type_url: resource_type.type_url(),
            version: version.to_owned(),
            resources,
            removed,
        });
    }

    pub(crate) fn nack(&self, node: &str, resource_type: ResourceType, version: &str, message: &str) {
        tracing::warn!(
            node,
            %resource_type,
            version,
            error = message,
            "Envoy rejected the configuration (NACK); it keeps serving the last accepted version"
        );
        self.callbacks.nacked(node, resource_type.short_name());
        let now = SystemTime::now();
        self.update_type(node, resource_type, |t| {
            t.nack = Some(Nack { version: version.to_owned(), message: message.to_owned(), at: now });
        });
    }

    fn update_type(&self, node: &str, resource_type: ResourceType, update: impl FnOnce(&mut TypeStatus)) {
        self.status.send_modify(|status| {
            if let Some(entry) = status.nodes.get_mut(node) {
                update(entry.types.entry(resource_type.short_name().to_owned()).or_default());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(5);

    fn node(recorder: &StatusRecorder) -> Option<NodeStatus> {
        recorder.status().borrow().nodes.get("gw").cloned()
    }

    /// Lets spawned grace timers run up to the current (paused) time.
    async fn settle(by: Duration) {
        tokio::time::advance(by).await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_is_forgotten_only_after_a_full_grace_without_streams() {
        let recorder = Arc::new(StatusRecorder::new(GRACE, Arc::new(crate::server::NoCallbacks)));
        recorder.stream_opened("gw", Api::Sotw);
        recorder.stream_closed("gw");
        let left = node(&recorder).expect("shown during the grace");
        assert!(!left.connected && left.disconnected_at.is_some());

        // Back before the grace ends: the first grace must not forget it.
        settle(GRACE / 2).await;
        recorder.stream_opened("gw", Api::Delta);
        settle(GRACE).await;
        let back = node(&recorder).expect("kept");
        assert!(back.connected && back.disconnected_at.is_none());

        // Two streams, one closes: still connected, no grace starts.
        recorder.stream_opened("gw", Api::Delta);
        recorder.stream_closed("gw");
        settle(GRACE * 2).await;
        assert!(node(&recorder).is_some_and(|n| n.connected));

        // The last one closes: gone after the grace, not before.
        recorder.stream_closed("gw");
        settle(GRACE - Duration::from_millis(1)).await;
        assert!(node(&recorder).is_some());
        settle(Duration::from_millis(1)).await;
        assert_eq!(node(&recorder), None);
    }
}
