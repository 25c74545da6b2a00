//! State-of-the-world ADS (`StreamAggregatedResources`).
//!
//! Per type, a stream keeps a *watch*: the names asked for (or wildcard), the
//! last response sent, and whether the client has a request outstanding.
//! As in every SotW server, a response only ever answers an outstanding
//! request, so at most one response per type is in flight:
//!
//! | request                                    | meaning    | effect                                         |
//! |--------------------------------------------|------------|------------------------------------------------|
//! | no `response_nonce`                        | subscribe  | always answered with the current resources     |
//! | nonce of last response, no `error_detail`  | ACK        | recorded; answered when the version changes     |
//! | nonce of last response, `error_detail`     | NACK       | recorded; the rejected version is not resent,  |
//! |                                            |            | the next different version is                  |
//! | any other nonce                            | stale      | ignored (a newer response is on its way)       |
//!
//! The version of a response is the type version for wildcard types and a
//! hash over the selected `(name, version)` pairs for named ones, so an EDS
//! stream is only answered when one of *its* clusters changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::Status;

use super::{
    StreamClosed, StreamGuard, node_id,
    status::{AckedResource, Api, StatusRecorder},
};
use crate::server::cache::SnapshotCache;
use crate::snapshot::{ResourceType, Snapshot, version_of};

#[derive(Debug, Default)]
struct Watch {
    wildcard: bool,
    names: BTreeSet<String>,
    /// The client has a request we have not answered yet.
    pending: bool,
    sent: Option<Sent>,
}

#[derive(Debug)]
struct Sent {
    nonce: String,
    version: String,
    resources: Vec<AckedResource>,
}

struct SotwStream {
    node: String,
    snapshot: Option<Arc<Snapshot>>,
    watches: BTreeMap<ResourceType, Watch>,
    nonce: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    recorder: Arc<StatusRecorder>,
}

pub(crate) async fn run<S>(
    mut requests: S,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    cache: SnapshotCache,
    recorder: Arc<StatusRecorder>,
) where
    S: Stream<Item = Result<DiscoveryRequest, Status>> + Unpin,
{
    let first = match requests.next().await {
        Some(Ok(request)) => request,
        _ => return,
    };
    let node = node_id(first.node.as_ref());
    recorder.stream_opened(&node, Api::Sotw);
    let _guard = StreamGuard::new(recorder.clone(), node.clone());

    let mut cache_rx = cache.watch();
    let snapshot = cache_rx.borrow_and_update().snapshot_for(&node);
    let mut stream = SotwStream { node, snapshot, watches: BTreeMap::new(), nonce: 0, tx: tx.clone(), recorder };
    if stream.handle_request(first).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            request = requests.next() => match request {
                Some(Ok(request)) => {
                    if stream.handle_request(request).await.is_err() {
                        return;
                    }
                }
                Some(Err(status)) => {
                    tracing::debug!(node = stream.node, %status, "ADS stream ended by the client");
                    return;
                }
                None => return,
            },
            changed = cache_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = cache_rx.borrow_and_update().snapshot_for(&stream.node);
                if stream.set_snapshot(snapshot).await.is_err() {
                    return;
                }
            }
            () = tx.closed() => return,
        }
    }
}

impl SotwStream {
    async fn handle_request(&mut self, request: DiscoveryRequest) -> Result<(), StreamClosed> {
        let Some(resource_type) = ResourceType::from_type_url(&request.type_url) else {
            tracing::debug!(
                node = self.node,
                type_url = request.type_url,
                "ignoring request for a type revgate does not serve"
            );
            return Ok(());
        };
        let watch = self.watches.entry(resource_type).or_default();
        let subscribe = request.response_nonce.is_empty();
        if !subscribe {
            let Some(sent) = watch.sent.as_ref().filter(|s| s.nonce == request.response_nonce) else {
                tracing::trace!(node = self.node, %resource_type, nonce = request.response_nonce, "stale nonce");
                return Ok(());
            };
            match &request.error_detail {
                Some(error) => self.recorder.nack(&self.node, resource_type, &sent.version, &error.message),
                None => self.recorder.ack(&self.node, resource_type, &sent.version, sent.resources.clone(), Vec::new()),
            }
        }
        watch.wildcard = resource_type.is_wildcard()
            && (request.resource_names.is_empty() || request.resource_names.iter().any(|n| n == "*"));
        watch.names = request.resource_names.into_iter().filter(|n| n != "*").collect();
        watch.pending = true;
        self.respond(resource_type, subscribe).await
    }

    async fn set_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>) -> Result<(), StreamClosed> {
        let unchanged = match (&snapshot, &self.snapshot) {
            (Some(new), Some(old)) => Arc::ptr_eq(new, old),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return Ok(());
        }
        self.snapshot = snapshot;
        // ADS order: clusters before endpoints, listeners before routes.
        for resource_type in ResourceType::ALL {
            self.respond(resource_type, false).await?;
        }
        Ok(())
    }

    /// Answers the outstanding request of a type if there is something new
    /// (or always, when `force`d by a fresh subscription).
    async fn respond(&mut self, resource_type: ResourceType, force: bool) -> Result<(), StreamClosed> {
        let Some(snapshot) = self.snapshot.clone() else {
            return Ok(());
        };
        let Some(watch) = self.watches.get_mut(&resource_type) else {
            return Ok(());
        };
        if !watch.pending {
            return Ok(());
        }
        let resources = snapshot.get(resource_type);
        let selected: Vec<_> = if watch.wildcard {
            resources.resources.iter().collect()
        } else {
            watch.names.iter().filter_map(|n| resources.resources.get_key_value(n)).collect()
        };
        let version = if watch.wildcard {
            resources.version.clone()
        } else {
            version_of(selected.iter().map(|(n, r)| (n.as_str(), r.version.as_str())))
        };
        if !force && watch.sent.as_ref().is_some_and(|s| s.version == version) {
            return Ok(());
        }

        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let acked: Vec<AckedResource> = selected
            .iter()
            .map(|(n, r)| AckedResource {
                name: (*n).clone(),
                version: r.version.clone(),
                resource: r.resource.clone(),
            })
            .collect();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: selected.iter().map(|(_, r)| r.resource.clone()).collect(),
            type_url: resource_type.type_url(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        self.recorder.response_sent(&self.node, resource_type, &version, acked.len(), 0);
        watch.pending = false;
        watch.sent = Some(Sent { nonce, version, resources: acked });
        self.tx.send(Ok(response)).await.map_err(|_| StreamClosed)
    }
}
