//! Where the owner of the gateway's configuration publishes snapshots and
//! where ADS streams read them.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::snapshot::Snapshot;

/// Snapshots by node: a default for every node plus per-node overrides.
///
/// A cheap handle (`Clone`): the one owner of the configuration keeps a
/// clone to write, the server hands clones to streams, which wait on a
/// `watch` channel and read the `Arc<Snapshot>` meant for their node.
#[derive(Debug, Clone, Default)]
pub struct SnapshotCache {
    state: Arc<watch::Sender<CacheState>>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct CacheState {
    default: Option<Arc<Snapshot>>,
    nodes: BTreeMap<String, Arc<Snapshot>>,
}

impl CacheState {
    pub(crate) fn snapshot_for(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        self.nodes.get(node_id).or(self.default.as_ref()).cloned()
    }
}

impl SnapshotCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the snapshot served to every node without an override.
    pub fn set_snapshot(&self, snapshot: Arc<Snapshot>) {
        self.state.send_modify(|state| state.default = Some(snapshot));
    }

    /// Sets the snapshot served to one node, overriding the default.
    pub fn set_node_snapshot(&self, node_id: impl Into<String>, snapshot: Arc<Snapshot>) {
        let node_id = node_id.into();
        self.state.send_modify(|state| {
            state.nodes.insert(node_id, snapshot);
        });
    }

    /// Removes a node's override; the node falls back to the default.
    pub fn clear_node_snapshot(&self, node_id: &str) {
        self.state.send_modify(|state| {
            state.nodes.remove(node_id);
        });
    }

    /// The snapshot a node is served now, if any.
    pub fn snapshot_for(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        self.state.borrow().snapshot_for(node_id)
    }

    pub(crate) fn watch(&self) -> watch::Receiver<CacheState> {
        self.state.subscribe()
    }
}
