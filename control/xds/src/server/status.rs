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

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use envoy_types::pb::google::protobuf::Any;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

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

/// Every node that has ever connected, by node id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GatewayStatus {
    pub nodes: BTreeMap<String, NodeStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// At least one ADS stream of this node is open.
    pub connected: bool,
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
    /// Open streams per node. A plain mutex: held only for a counter update,
    /// never across `.await`.
    open_streams: Mutex<BTreeMap<String, usize>>,
}

impl StatusRecorder {
    pub(crate) fn new() -> Self {
        Self {
            status: watch::Sender::new(GatewayStatus::default()),
            acks: broadcast::Sender::new(ACK_EVENTS_CAPACITY),
            open_streams: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn status(&self) -> watch::Receiver<GatewayStatus> {
        self.status.subscribe()
    }

    pub(crate) fn subscribe_acks(&self) -> broadcast::Receiver<AckEvent> {
        self.acks.subscribe()
    }

    fn open_stream_count(&self, node: &str, delta: isize) -> usize {
        let mut open = self.open_streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(node.to_owned()).or_default();
        *count = count.saturating_add_signed(delta);
        *count
    }

    pub(crate) fn stream_opened(&self, node: &str, api: Api) {
        self.open_stream_count(node, 1);
        tracing::info!(node, ?api, "ADS stream opened");
        self.status.send_modify(|status| {
            let entry = status.nodes.entry(node.to_owned()).or_insert_with(|| NodeStatus {
                connected: true,
                api,
                types: BTreeMap::new(),
            });
            entry.connected = true;
            entry.api = api;
        });
    }

    pub(crate) fn stream_closed(&self, node: &str) {
        let remaining = self.open_stream_count(node, -1);
        tracing::info!(node, remaining, "ADS stream closed");
        self.status.send_modify(|status| {
            if let Some(entry) = status.nodes.get_mut(node) {
                entry.connected = remaining > 0;
            }
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
        self.update_type(node, resource_type, |t| t.sent_version = Some(version.to_owned()));
    }

    pub(crate) fn ack(
        &self,
        node: &str,
        resource_type: ResourceType,
        version: &str,
        resources: Vec<AckedResource>,
        removed: Vec<String>,
    ) {
        tracing::debug!(node, %resource_type, version, "xDS ACK");
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
