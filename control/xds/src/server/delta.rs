//! Incremental ADS (`DeltaAggregatedResources`).
//!
//! Per type, a stream tracks what the client has: `name → version`, seeded
//! from `initial_resource_versions` on (re)connect and updated with every
//! response sent. A response carries only resources whose version differs
//! from the client's, plus `removed_resources` for names the client has that
//! the snapshot no longer does.
//!
//! | request                                  | effect                                                  |
//! |------------------------------------------|---------------------------------------------------------|
//! | first for a type, CDS/LDS, no names      | wildcard subscription                                   |
//! | `resource_names_subscribe` (`*` = all)    | names added; new or changed resources sent              |
//! | `resource_names_unsubscribe`             | names dropped, nothing sent                             |
//! | `response_nonce` of a response, no error | ACK of that response's `system_version_info`            |
//! | `response_nonce` + `error_detail`        | NACK: recorded; the rejected resources count as sent,   |
//! |                                          | so only a later change of them is sent                  |
//!
//! The first request of every type is answered even if nothing differs, so a
//! reconnecting Envoy finishes initialisation without waiting for a timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::Status;

use super::{
    StreamClosed, StreamGuard, node_id,
    status::{AckedResource, Api, StatusRecorder},
};
use crate::server::cache::SnapshotCache;
use crate::snapshot::{ResourceType, Snapshot};

#[derive(Debug, Default)]
struct Watch {
    wildcard: bool,
    subscribed: BTreeSet<String>,
    /// What the client has (or has been sent): name → resource version.
    client: BTreeMap<String, String>,
    /// Responses not yet acknowledged, by nonce.
    in_flight: BTreeMap<u64, InFlight>,
    /// Names subscribed since the last response, to report missing ones as removed.
    newly_subscribed: BTreeSet<String>,
    /// The first request has been answered.
    answered: bool,
}

#[derive(Debug)]
struct InFlight {
    version: String,
    resources: Vec<AckedResource>,
    removed: Vec<String>,
}

struct DeltaStream {
    node: String,
    snapshot: Option<Arc<Snapshot>>,
    watches: BTreeMap<ResourceType, Watch>,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    recorder: Arc<StatusRecorder>,
}

pub(crate) async fn run<S>(
    mut requests: S,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    cache: SnapshotCache,
    recorder: Arc<StatusRecorder>,
) where
    S: Stream<Item = Result<DeltaDiscoveryRequest, Status>> + Unpin,
{
    let first = match requests.next().await {
        Some(Ok(request)) => request,
        _ => return,
    };
    let node = node_id(first.node.as_ref());
    recorder.stream_opened(&node, Api::Delta);
    let _guard = StreamGuard::new(recorder.clone(), node.clone());

    let mut cache_rx = cache.watch();
    let snapshot = cache_rx.borrow_and_update().snapshot_for(&node);
    let mut stream = DeltaStream { node, snapshot, watches: BTreeMap::new(), nonce: 0, tx: tx.clone(), recorder };
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
                    tracing::debug!(node = stream.node, %status, "delta ADS stream ended by the client");
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

impl DeltaStream {
    async fn handle_request(&mut self, request: DeltaDiscoveryRequest) -> Result<(), StreamClosed> {
        let Some(resource_type) = ResourceType::from_type_url(&request.type_url) else {
            tracing::debug!(
                node = self.node,
                type_url = request.type_url,
                "ignoring request for a type revgate does not serve"
            );
            return Ok(());
        };
        let first = !self.watches.contains_key(&resource_type);
        let watch = self.watches.entry(resource_type).or_default();
        if first {
            watch.wildcard = resource_type.is_wildcard() && request.resource_names_subscribe.is_empty();
            watch.client = request.initial_resource_versions.into_iter().collect();
        }

        if !request.response_nonce.is_empty() {
            let acked = request.response_nonce.parse::<u64>().ok().and_then(|n| {
                let sent = watch.in_flight.remove(&n)?;
                // Older responses were superseded; the client saw them before this one.
                watch.in_flight.retain(|older, _| *older > n);
                Some(sent)
            });
            match (acked, &request.error_detail) {
                (Some(sent), Some(error)) => {
                    self.recorder.nack(&self.node, resource_type, &sent.version, &error.message)
                }
                (Some(sent), None) => {
                    self.recorder.ack(&self.node, resource_type, &sent.version, sent.resources, sent.removed)
                }
                (None, _) => {
                    tracing::trace!(node = self.node, %resource_type, nonce = request.response_nonce, "unknown or stale nonce");
                }
            }
        }

        for name in request.resource_names_subscribe {
            if name == "*" {
                watch.wildcard = true;
            } else if watch.subscribed.insert(name.clone()) {
                watch.newly_subscribed.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                watch.wildcard = false;
            } else {
                watch.subscribed.remove(&name);
                watch.newly_subscribed.remove(&name);
                if !watch.wildcard {
                    watch.client.remove(&name);
                }
            }
        }
        self.respond(resource_type).await
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
            self.respond(resource_type).await?;
        }
        Ok(())
    }

    /// Sends what differs between the snapshot and what the client has.
    async fn respond(&mut self, resource_type: ResourceType) -> Result<(), StreamClosed> {
        let Some(snapshot) = self.snapshot.clone() else {
            return Ok(());
        };
        let Some(watch) = self.watches.get_mut(&resource_type) else {
            return Ok(());
        };
        let available = snapshot.get(resource_type);

        // In scope: everything for a wildcard subscription, else the names asked for.
        let in_scope: Vec<&String> =
            if watch.wildcard { available.resources.keys().collect() } else { watch.subscribed.iter().collect() };
        let resources: Vec<Resource> = in_scope
            .into_iter()
            .filter_map(|name| available.resources.get(name).map(|r| (name, r)))
            .filter(|(name, r)| watch.client.get(*name) != Some(&r.version))
            .map(|(name, r)| Resource {
                name: name.clone(),
                version: r.version.clone(),
                resource: Some(r.resource.clone()),
                ..Default::default()
            })
            .collect();
        let mut removed: BTreeSet<String> = watch
            .client
            .keys()
            .filter(|name| {
                (watch.wildcard || watch.subscribed.contains(*name)) && !available.resources.contains_key(*name)
            })
            .cloned()
            .collect();
        // A name just subscribed that does not exist: say so, rather than let
        // the client wait for its initial fetch timeout.
        removed.extend(watch.newly_subscribed.iter().filter(|n| !available.resources.contains_key(*n)).cloned());
        watch.newly_subscribed.clear();

        if resources.is_empty() && removed.is_empty() && watch.answered {
            return Ok(());
        }

        // Forget names the client may hold but no longer asked for.
        let (wildcard, subscribed) = (watch.wildcard, &watch.subscribed);
        watch.client.retain(|name, _| (wildcard || subscribed.contains(name)) && !removed.contains(name));
        for r in &resources {
            watch.client.insert(r.name.clone(), r.version.clone());
        }

        self.nonce += 1;
        let mut acked: Vec<AckedResource> = resources
            .iter()
            .filter_map(|r| {
                let resource = r.resource.clone()?;
                Some(AckedResource { name: r.name.clone(), version: r.version.clone(), resource })
            })
            .collect();
        if !watch.answered {
            // A reconnecting client already holds these at the current
            // version, so they are not sent; its ACK of this first answer
            // still says it runs them, for observers that start afresh
            // (a restarted control plane's readiness table).
            acked.extend(
                available
                    .resources
                    .iter()
                    .filter(|(name, r)| {
                        (watch.wildcard || watch.subscribed.contains(*name))
                            && watch.client.get(*name) == Some(&r.version)
                            && !resources.iter().any(|sent| &sent.name == *name)
                    })
                    .map(|(name, r)| AckedResource {
                        name: name.clone(),
                        version: r.version.clone(),
                        resource: r.resource.clone(),
                    }),
            );
        }
        let removed: Vec<String> = removed.into_iter().collect();
        watch.in_flight.insert(
            self.nonce,
            InFlight { version: available.version.clone(), resources: acked, removed: removed.clone() },
        );
        watch.answered = true;
        self.recorder.response_sent(&self.node, resource_type, &available.version, resources.len(), removed.len());
        let response = DeltaDiscoveryResponse {
            system_version_info: available.version.clone(),
            resources,
            type_url: resource_type.type_url(),
            removed_resources: removed,
            nonce: self.nonce.to_string(),
            ..Default::default()
        };
        self.tx.send(Ok(response)).await.map_err(|_| StreamClosed)
    }
}
