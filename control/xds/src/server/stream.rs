//! One ADS stream, state of the world (`StreamAggregatedResources`) or
//! incremental (`DeltaAggregatedResources`): one driver, one state machine.
//!
//! The two protocols differ only at the edges, so a [`Protocol`] turns its
//! requests into a [`Request`] and a [`Response`] into its messages; the
//! [`Session`] (no I/O) decides what to send and [`run`] moves messages.
//!
//! Per type, a session tracks what the client has: `name → version`,
//! updated with every response sent (a rejected response counts as sent, so
//! only a later change of a rejected resource is sent again), seeded from
//! `initial_resource_versions` when a delta client reconnects.
//!
//! | request                                      | SotW                                   | delta                                   |
//! |----------------------------------------------|----------------------------------------|-----------------------------------------|
//! | names (SotW) / (un)subscribe (delta)         | the set asked for; `*` or none = all   | names added / dropped; `*` = all        |
//! | for CDS, LDS, SRDS                           | (wildcard types)                       | first request without names = all       |
//! | no nonce                                     | a (re)subscription: answered with      | answered, even if nothing differs, so a |
//! |                                              | everything asked for                   | reconnecting Envoy finishes init        |
//! | nonce of the latest response, no error       | ACK; answered when the version changes | ACK of that response                    |
//! | nonce + `error_detail`                       | NACK, recorded                         | NACK, recorded                          |
//! | any other nonce                              | stale: ignored                         | ACK/NACK unknown; names still apply     |
//!
//! What a response carries:
//!
//! | type                    | SotW                                                         | delta                              |
//! |-------------------------|--------------------------------------------------------------|------------------------------------|
//! | CDS, LDS, SRDS          | every resource (the protocol's rule), when any changed       | resources whose version the client |
//! | EDS, RDS (by name)      | only asked-for resources whose version the client lacks:     | lacks, and names removed           |
//! |                         | Envoy applies each named resource on its own                 |                                    |
//!
//! A SotW response only answers an outstanding request (one in flight per
//! type) and is versioned by the set asked for, so its version equals the
//! snapshot's type version when the client asks for everything. A delta
//! response is sent whenever something differs and carries the snapshot's
//! type version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use futures::{Stream, StreamExt};
use revgate_model::replaced::replaced;
use tokio::sync::mpsc;
use tonic::Status;

use super::cache::SnapshotCache;
use super::status::{AckedResource, Api, StatusRecorder};
use crate::snapshot::{ResourceType, Snapshot, TypeSnapshot, VersionedResource, subset_version};

/// A request, whichever protocol it came in.
#[derive(Debug, Default)]
pub(crate) struct Request {
    pub node: Option<Node>,
    pub type_url: String,
    pub response_nonce: String,
    pub error: Option<String>,
    /// SotW: every name asked for.
    pub names: Vec<String>,
    /// Delta: names added and dropped, and what the client already has.
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_versions: HashMap<String, String>,
}

/// A response, whichever protocol it goes out in.
#[derive(Debug)]
pub(crate) struct Response {
    pub resource_type: ResourceType,
    pub version: String,
    pub nonce: String,
    pub resources: Vec<(String, Arc<VersionedResource>)>,
    pub removed: Vec<String>,
}

/// The edges of one protocol.
pub(crate) trait Protocol {
    type In;
    type Out;
    const API: Api;
    fn request(message: Self::In) -> Request;
    fn response(response: Response) -> Self::Out;
}

pub(crate) struct Sotw;

impl Protocol for Sotw {
    type In = DiscoveryRequest;
    type Out = DiscoveryResponse;
    const API: Api = Api::Sotw;

    fn request(r: DiscoveryRequest) -> Request {
        Request {
            node: r.node,
            type_url: r.type_url,
            response_nonce: r.response_nonce,
            error: r.error_detail.map(|e| e.message),
            names: r.resource_names,
            ..Default::default()
        }
    }

    fn response(r: Response) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: r.version,
            resources: r.resources.into_iter().map(|(_, resource)| resource.resource.clone()).collect(),
            type_url: r.resource_type.type_url(),
            nonce: r.nonce,
            ..Default::default()
        }
    }
}

pub(crate) struct Delta;

impl Protocol for Delta {
    type In = DeltaDiscoveryRequest;
    type Out = DeltaDiscoveryResponse;
    const API: Api = Api::Delta;

    fn request(r: DeltaDiscoveryRequest) -> Request {
        Request {
            node: r.node,
            type_url: r.type_url,
            response_nonce: r.response_nonce,
            error: r.error_detail.map(|e| e.message),
            subscribe: r.resource_names_subscribe,
            unsubscribe: r.resource_names_unsubscribe,
            initial_versions: r.initial_resource_versions,
            ..Default::default()
        }
    }

    fn response(r: Response) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: r.version,
            resources: r
                .resources
                .into_iter()
                .map(|(name, resource)| Resource {
                    name,
                    version: resource.version.clone(),
                    resource: Some(resource.resource.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: r.resource_type.type_url(),
            removed_resources: r.removed,
            nonce: r.nonce,
            ..Default::default()
        }
    }
}

/// Drives one stream until the client hangs up: requests in, snapshot
/// changes in, responses out.
pub(crate) async fn run<P, S>(
    mut requests: S,
    tx: mpsc::Sender<Result<P::Out, Status>>,
    cache: SnapshotCache,
    recorder: Arc<StatusRecorder>,
) where
    P: Protocol,
    S: Stream<Item = Result<P::In, Status>> + Unpin,
{
    let first = match requests.next().await {
        Some(Ok(request)) => P::request(request),
        _ => return,
    };
    let node = super::node_id(first.node.as_ref());
    recorder.stream_opened(&node, P::API);
    let _guard = super::StreamGuard::new(recorder.clone(), node.clone());

    let mut cache_rx = cache.watch();
    let snapshot = cache_rx.borrow_and_update().snapshot_for(&node);
    let mut session = Session::new(P::API, node, snapshot, recorder);
    let mut next = Some(first);
    loop {
        let responses = match next.take() {
            Some(request) => session.on_request(request).into_iter().collect(),
            None => tokio::select! {
                request = requests.next() => match request {
                    Some(Ok(request)) => { next = Some(P::request(request)); continue; }
                    Some(Err(status)) => {
                        tracing::debug!(node = session.node, %status, "ADS stream ended by the client");
                        return;
                    }
                    None => return,
                },
                changed = cache_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let snapshot = cache_rx.borrow_and_update().snapshot_for(&session.node);
                    session.on_snapshot(snapshot)
                }
                () = tx.closed() => return,
            },
        };
        for response in responses {
            if tx.send(Ok(P::response(response))).await.is_err() {
                return;
            }
        }
    }
}

/// What one stream knows, and what it decides to send. No I/O.
pub(crate) struct Session {
    api: Api,
    node: String,
    snapshot: Option<Arc<Snapshot>>,
    watches: BTreeMap<ResourceType, Watch>,
    nonce: u64,
    recorder: Arc<StatusRecorder>,
}

#[derive(Debug, Default)]
struct Watch {
    wildcard: bool,
    subscribed: BTreeSet<String>,
    /// SotW: the names of the last request as sent. Envoy repeats them in
    /// the same order while its subscription stays, so comparing the list
    /// tells an unchanged scope apart without building a set.
    requested: Vec<String>,
    /// What the client has (or has been sent): name → resource version.
    client: HashMap<String, String>,
    /// Names subscribed since the last response, to report missing ones as removed (delta).
    newly_subscribed: BTreeSet<String>,
    /// Responses not yet acknowledged, by nonce.
    in_flight: BTreeMap<u64, InFlight>,
    /// SotW: the client has a request not yet answered.
    pending: bool,
    /// SotW: the next response goes out even if its version was sent.
    force: bool,
    /// SotW: the version and nonce of the latest response.
    sent_version: Option<String>,
    last_nonce: Option<u64>,
    /// The type's resources the last response was computed from, so a
    /// snapshot that shares them is skipped at once. Reset when the scope
    /// (wildcard, subscribed names) changes.
    seen: Option<Arc<TypeSnapshot>>,
    /// SotW, named subscriptions: the digest of the subscribed names in
    /// `seen` (see `TypeSnapshot::digest_of_names`), moved by each change
    /// rather than summed again over every name.
    seen_digest: Option<u64>,
    /// The first request has been answered (delta).
    answered: bool,
}

#[derive(Debug)]
struct InFlight {
    version: String,
    resources: Vec<(String, Arc<VersionedResource>)>,
    /// Delta, first answer: what the client already held at the current
    /// version and was therefore not sent; its ACK confirms those too.
    held: Vec<(String, Arc<VersionedResource>)>,
    removed: Vec<String>,
    /// When it was sent, for the time to its ACK.
    sent_at: std::time::Instant,
}

impl Session {
    pub(crate) fn new(api: Api, node: String, snapshot: Option<Arc<Snapshot>>, recorder: Arc<StatusRecorder>) -> Self {
        Self { api, node, snapshot, watches: BTreeMap::new(), nonce: 0, recorder }
    }

    pub(crate) fn on_request(&mut self, request: Request) -> Option<Response> {
        let Some(resource_type) = ResourceType::from_type_url(&request.type_url) else {
            tracing::debug!(
                node = self.node,
                type_url = request.type_url,
                "ignoring request for a type revgate does not serve"
            );
            return None;
        };
        let first = !self.watches.contains_key(&resource_type);
        let watch = self.watches.entry(resource_type).or_default();

        if !request.response_nonce.is_empty() {
            let nonce = request.response_nonce.parse::<u64>().ok();
            if self.api == Api::Sotw && nonce != watch.last_nonce {
                // A newer response is on its way; it answers this request.
                tracing::trace!(node = self.node, %resource_type, nonce = request.response_nonce, "stale nonce");
                return None;
            }
            let acked = nonce.and_then(|n| {
                let sent = watch.in_flight.remove(&n)?;
                // Older responses were superseded; the client saw them before this one.
                watch.in_flight.retain(|older, _| *older > n);
                Some(sent)
            });
            match (acked, &request.error) {
                (Some(sent), Some(error)) => self.recorder.nack(&self.node, resource_type, &sent.version, error),
                (Some(sent), None) => {
                    let resources = sent
                        .resources
                        .into_iter()
                        .chain(sent.held)
                        .map(|(name, r)| AckedResource {
                            name,
                            version: r.version.clone(),
                            resource: r.resource.clone(),
                        })
                        .collect();
                    self.recorder.ack(
                        &self.node,
                        resource_type,
                        &sent.version,
                        resources,
                        sent.removed,
                        sent.sent_at.elapsed(),
                    )
                }
                // SotW: a request that changes names after its ACK carries the same nonce.
                (None, _) => {
                    tracing::trace!(node = self.node, %resource_type, nonce = request.response_nonce, "nonce already answered")
                }
            }
        }

        let wildcard_before = watch.wildcard;
        let scope_changed = match self.api {
            Api::Sotw => {
                watch.wildcard =
                    resource_type.is_wildcard() && (request.names.is_empty() || request.names.iter().any(|n| n == "*"));
                watch.pending = true;
                let resubscribed = request.response_nonce.is_empty();
                // Most requests ACK a response and name what the last one did:
                // with 20,000 endpoint assignments, rebuilding the scope for each
                // would cost more than the response.
                if resubscribed || watch.wildcard != wildcard_before || request.names != watch.requested {
                    let names: BTreeSet<String> = request.names.iter().filter(|n| *n != "*").cloned().collect();
                    watch.requested = request.names;
                    if resubscribed {
                        // A (re)subscription: send everything asked for.
                        watch.client.clear();
                        watch.force = true;
                    } else if !watch.wildcard {
                        watch.client.retain(|name, _| names.contains(name));
                    }
                    watch.subscribed = names;
                    true
                } else {
                    false
                }
            }
            Api::Delta => {
                if first {
                    watch.wildcard = resource_type.is_wildcard() && request.subscribe.is_empty();
                    watch.client = request.initial_versions;
                }
                let mut changed = first || watch.wildcard != wildcard_before;
                for name in request.subscribe {
                    if name == "*" {
                        changed |= !watch.wildcard;
                        watch.wildcard = true;
                    } else if watch.subscribed.insert(name.clone()) {
                        watch.newly_subscribed.insert(name);
                        changed = true;
                    }
                }
                for name in request.unsubscribe {
                    if name == "*" {
                        changed |= watch.wildcard;
                        watch.wildcard = false;
                    } else {
                        changed |= watch.subscribed.remove(&name);
                        watch.newly_subscribed.remove(&name);
                        if !watch.wildcard {
                            watch.client.remove(&name);
                        }
                    }
                }
                changed
            }
        };
        if scope_changed {
            watch.seen = None;
            watch.seen_digest = None;
        }
        self.respond(resource_type)
    }

    /// A new snapshot: what changed goes out, in ADS order (clusters before
    /// endpoints, listeners before scopes before routes).
    pub(crate) fn on_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>) -> Vec<Response> {
        let unchanged = match (&snapshot, &self.snapshot) {
            (Some(new), Some(old)) => Arc::ptr_eq(new, old),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return Vec::new();
        }
        self.snapshot = snapshot;
        ResourceType::ALL.into_iter().filter_map(|t| self.respond(t)).collect()
    }

    /// Answers what differs between the snapshot and what the client has, if
    /// the protocol allows a response now.
    fn respond(&mut self, resource_type: ResourceType) -> Option<Response> {
        let snapshot = self.snapshot.clone()?;
        let watch = self.watches.get_mut(&resource_type)?;
        if self.api == Api::Sotw && !watch.pending {
            return None;
        }
        let shared = snapshot.shared(resource_type);
        if let (Some(seen), Some(now)) = (&watch.seen, shared)
            && Arc::ptr_eq(seen, now)
            && !watch.force
        {
            // Nothing of this type changed since the last look.
            return None;
        }
        let available = snapshot.get(resource_type);
        let last_seen = std::mem::replace(&mut watch.seen, shared.cloned());
        let sotw_all = self.api == Api::Sotw && watch.wildcard;

        // After a response computed from `last_seen`, the client has every
        // resource of it in scope (the scope changing resets `seen`): only
        // the resources replaced since can differ from what it has. With
        // 20,000 endpoint assignments, one changing costs a pointer
        // comparison per resource instead of a lookup per subscribed name.
        let last_seen = last_seen.filter(|_| !sotw_all && !watch.force);
        let changed = last_seen
            .as_ref()
            .map(|seen| replaced(&seen.resources, &available.resources).into_iter().cloned().collect::<Vec<String>>());
        let (wildcard, subscribed) = (watch.wildcard, &watch.subscribed);
        let in_scope: Box<dyn Iterator<Item = (&String, &Arc<VersionedResource>)>> = match &changed {
            Some(names) => Box::new(
                names
                    .iter()
                    .filter(move |n| wildcard || subscribed.contains(*n))
                    .filter_map(|n| available.resources.get_key_value(n)),
            ),
            None if wildcard => Box::new(available.resources.iter()),
            None => Box::new(subscribed.iter().filter_map(|n| available.resources.get_key_value(n))),
        };
        let client = &watch.client;
        let resources: Vec<(String, Arc<VersionedResource>)> = in_scope
            .filter(|(name, r)| sotw_all || client.get(*name) != Some(&r.version))
            .map(|(name, r)| (name.clone(), r.clone()))
            .collect();

        let (version, removed) = match self.api {
            Api::Sotw => {
                let version = if watch.wildcard {
                    available.version.clone()
                } else {
                    let digest = match (&changed, &last_seen, watch.seen_digest) {
                        (Some(names), Some(seen), Some(digest)) => {
                            names.iter().filter(|name| watch.subscribed.contains(*name)).fold(digest, |digest, name| {
                                digest.wrapping_sub(seen.digest_of(name)).wrapping_add(available.digest_of(name))
                            })
                        }
                        _ => available.digest_of_names(&watch.subscribed),
                    };
                    watch.seen_digest = Some(digest);
                    subset_version(digest)
                };
                if !watch.force && watch.sent_version.as_ref() == Some(&version) {
                    return None;
                }
                if watch.wildcard {
                    watch.client.clear();
                } else if let Some(names) = &changed {
                    for name in names.iter().filter(|n| !available.resources.contains_key(*n)) {
                        watch.client.remove(name);
                    }
                } else {
                    watch.client.retain(|name, _| available.resources.contains_key(name));
                }
                (version, Vec::new())
            }
            Api::Delta => {
                let in_scope_and_gone = |name: &&String| {
                    (watch.wildcard || watch.subscribed.contains(*name)) && !available.resources.contains_key(*name)
                };
                let mut removed: BTreeSet<String> = match &changed {
                    Some(names) => names
                        .iter()
                        .filter(|n| watch.client.contains_key(*n))
                        .filter(in_scope_and_gone)
                        .cloned()
                        .collect(),
                    None => watch.client.keys().filter(in_scope_and_gone).cloned().collect(),
                };
                // A name just subscribed that does not exist: say so, rather than let
                // the client wait for its initial fetch timeout.
                removed
                    .extend(watch.newly_subscribed.iter().filter(|n| !available.resources.contains_key(*n)).cloned());
                watch.newly_subscribed.clear();
                if resources.is_empty() && removed.is_empty() && watch.answered {
                    return None;
                }
                if changed.is_some() {
                    // The scope is the last answer's, which left only names in it.
                    for name in &removed {
                        watch.client.remove(name);
                    }
                } else {
                    // Forget names the client may hold but no longer asked for.
                    let (wildcard, subscribed) = (watch.wildcard, &watch.subscribed);
                    watch.client.retain(|name, _| (wildcard || subscribed.contains(name)) && !removed.contains(name));
                }
                (available.version.clone(), removed.into_iter().collect())
            }
        };
        // A reconnecting delta client already holds these at the current
        // version, so they are not sent; its ACK of this first answer still
        // says it runs them, for observers that start afresh (a restarted
        // control plane's readiness table).
        let held: Vec<(String, Arc<VersionedResource>)> = if self.api == Api::Delta && !watch.answered {
            let (wildcard, subscribed, client) = (watch.wildcard, &watch.subscribed, &watch.client);
            available
                .resources
                .iter()
                .filter(|(name, r)| (wildcard || subscribed.contains(*name)) && client.get(*name) == Some(&r.version))
                .map(|(name, r)| (name.clone(), r.clone()))
                .collect()
        } else {
            Vec::new()
        };
        for (name, r) in &resources {
            watch.client.insert(name.clone(), r.version.clone());
        }

        self.nonce += 1;
        watch.in_flight.insert(
            self.nonce,
            InFlight {
                version: version.clone(),
                resources: resources.clone(),
                held,
                removed: removed.clone(),
                sent_at: std::time::Instant::now(),
            },
        );
        watch.answered = true;
        watch.pending = false;
        watch.force = false;
        watch.sent_version = Some(version.clone());
        watch.last_nonce = Some(self.nonce);
        self.recorder.response_sent(&self.node, resource_type, &version, resources.len(), removed.len());
        Some(Response { resource_type, version, nonce: self.nonce.to_string(), resources, removed })
    }
}
