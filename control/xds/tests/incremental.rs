//! What one change costs on the wire, among 1,000 Services: a split change
//! sends one route configuration, an endpoint change one load assignment,
//! over both protocols. An in-process server fed by the `Translator`, as
//! `revgate serve` feeds it, and a tonic client.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;
use revgate_model::plan::{Endpoint, EndpointMap, GatewayPlan, ObjectKey, RoutePlan, Split};
use revgate_xds::{SnapshotCache, Translator, XdsSettings};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;

const SERVICES: usize = 1_000;
/// The Service whose split or endpoints change.
const CHANGED: usize = 7;

fn service(i: usize) -> ObjectKey {
    key(&format!("s-{i}"))
}

fn revision_key(i: usize, n: u32) -> ObjectKey {
    key(&format!("s-{i}-0000{n}"))
}

/// 1,000 Services, each split 50/50 (or `percent` for [`CHANGED`]) between two revisions.
fn world(percent: u32) -> GatewayPlan {
    let mut plan = GatewayPlan::default();
    for i in 0..SERVICES {
        let first = if i == CHANGED { percent } else { 50 };
        plan.routes.push(Arc::new(RoutePlan {
            key: service(i),
            host: format!("s-{i}.default.example.com"),
            splits: vec![
                Split { revision: revision_key(i, 1), percent: first },
                Split { revision: revision_key(i, 2), percent: 100 - first },
            ],
            tags: Vec::new(),
            mappings: Vec::new(),
        }));
        for n in [1, 2] {
            plan.revisions.push(Arc::new(revision(&format!("s-{i}-0000{n}"))));
        }
    }
    // In key order, as the planner lists them.
    plan.routes.sort_by(|a, b| a.key.cmp(&b.key));
    plan.revisions.sort_by(|a, b| a.key.cmp(&b.key));
    plan
}

fn endpoints(changed_port: u16) -> EndpointMap {
    (0..SERVICES)
        .flat_map(|i| [revision_key(i, 1), revision_key(i, 2)])
        .map(|k| {
            let port = if k == revision_key(CHANGED, 1) { changed_port } else { 8080 };
            (k, vec![Endpoint { host: "10.0.0.1".into(), port }])
        })
        .collect()
}

fn cluster_names() -> Vec<String> {
    (0..SERVICES).flat_map(|i| [1, 2].map(|n| format!("rev|default|s-{i}-0000{n}"))).collect()
}

/// The route configurations: one per shard that holds a Route.
fn route_names() -> Vec<String> {
    let shards: BTreeSet<String> = (0..SERVICES).map(changed_route_configuration_of).collect();
    shards.into_iter().collect()
}

fn changed_route_configuration_of(i: usize) -> String {
    revgate_xds::names::route_configuration(&ObjectKey::new("default", format!("s-{i}")))
}

/// A control plane as `revgate serve` runs it: the translator publishes
/// into the cache the server reads.
struct Plane {
    translator: Translator,
    cache: SnapshotCache,
}

impl Plane {
    fn new() -> Plane {
        let mut plane = Plane { translator: Translator::new(XdsSettings::default()), cache: SnapshotCache::new() };
        plane.publish(&world(50), &endpoints(8080));
        plane
    }

    fn publish(&mut self, plan: &GatewayPlan, endpoints: &EndpointMap) {
        let snapshot = self.translator.update(plan, endpoints).unwrap();
        snapshot.consistency_check().unwrap();
        self.cache.set_snapshot(snapshot);
    }
}

/// One response as seen on the wire: its type, resource names, removed
/// names and encoded size.
#[derive(Debug)]
struct Seen {
    type_url: String,
    names: Vec<String>,
    removed: Vec<String>,
    bytes: usize,
}

/// An ADS client that ACKs every response, over either protocol.
trait Client {
    /// Subscribes to `type_url` (wildcard when `names` is empty).
    async fn subscribe(&mut self, type_url: &str, names: &[String]);

    /// The next response, ACKed; `None` once the server stays quiet.
    async fn recv_and_ack(&mut self) -> Option<Seen>;

    /// Subscribes, ACKs the answer and returns it.
    async fn sync(&mut self, type_url: &str, names: &[String]) -> Seen {
        self.subscribe(type_url, names).await;
        self.recv_and_ack().await.unwrap()
    }

    /// Subscribes to everything in ADS order; returns the bytes received.
    async fn full_sync(&mut self) -> usize {
        let mut bytes = 0;
        for (type_url, names) in
            [(CDS, vec![]), (EDS, cluster_names()), (LDS, vec![]), (SRDS, vec![]), (RDS, route_names())]
        {
            let seen = self.sync(type_url, &names).await;
            assert!(!seen.names.is_empty(), "{type_url}: {seen:?}");
            bytes += seen.bytes;
        }
        bytes
    }

    /// Every response until the server is quiet.
    async fn drain(&mut self) -> Vec<Seen> {
        let mut seen = Vec::new();
        while let Some(response) = self.recv_and_ack().await {
            seen.push(response);
        }
        seen
    }
}

struct DeltaClient {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let (requests, rx) = mpsc::channel(16);
        let responses =
            client(addr).await.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Self { requests, responses }
    }
}

impl Client for DeltaClient {
    async fn subscribe(&mut self, type_url: &str, names: &[String]) {
        let request = DeltaDiscoveryRequest {
            node: node("gw-1"),
            type_url: type_url.into(),
            resource_names_subscribe: names.to_vec(),
            ..Default::default()
        };
        self.requests.send(request).await.unwrap();
    }

    async fn recv_and_ack(&mut self) -> Option<Seen> {
        let response = timeout(QUIET, self.responses.message()).await.ok()?.unwrap().unwrap();
        self.requests
            .send(DeltaDiscoveryRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        Some(Seen {
            names: response.resources.iter().map(|r| r.name.clone()).collect(),
            removed: response.removed_resources.clone(),
            bytes: response.encoded_len(),
            type_url: response.type_url,
        })
    }
}

struct SotwClient {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
    /// Names asked for, per type URL, repeated in every ACK as SotW requires.
    names: std::collections::BTreeMap<String, Vec<String>>,
}

impl SotwClient {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let (requests, rx) = mpsc::channel(16);
        let responses =
            client(addr).await.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Self { requests, responses, names: Default::default() }
    }
}

impl Client for SotwClient {
    async fn subscribe(&mut self, type_url: &str, names: &[String]) {
        self.names.insert(type_url.to_owned(), names.to_vec());
        let request = DiscoveryRequest {
            node: node("gw-1"),
            type_url: type_url.into(),
            resource_names: names.to_vec(),
            ..Default::default()
        };
        self.requests.send(request).await.unwrap();
    }

    async fn recv_and_ack(&mut self) -> Option<Seen> {
        let response = timeout(QUIET, self.responses.message()).await.ok()?.unwrap().unwrap();
        self.requests
            .send(DiscoveryRequest {
                type_url: response.type_url.clone(),
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                resource_names: self.names.get(&response.type_url).cloned().unwrap_or_default(),
                ..Default::default()
            })
            .await
            .unwrap();
        let names = response
            .resources
            .iter()
            .map(|any| match any.type_url.as_str() {
                t if t == RDS => {
                    envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(any.value.as_slice())
                        .unwrap()
                        .name
                }
                t if t == EDS => {
                    envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(any.value.as_slice())
                        .unwrap()
                        .cluster_name
                }
                other => other.to_owned(),
            })
            .collect();
        Some(Seen { names, removed: Vec::new(), bytes: response.encoded_len(), type_url: response.type_url })
    }
}

/// Asserts that `seen` is exactly one response of `type_url` carrying only
/// `name`, and returns its size.
fn only(seen: &[Seen], type_url: &str, name: &str) -> usize {
    let types: BTreeSet<&str> = seen.iter().map(|s| s.type_url.as_str()).collect();
    assert_eq!(types, BTreeSet::from([type_url]), "only {type_url} is pushed: {seen:?}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].names, [name], "only the changed resource is sent");
    assert!(seen[0].removed.is_empty(), "{seen:?}");
    seen[0].bytes
}

#[tokio::test]
async fn delta_sends_only_the_changed_route_among_1000_services() {
    let mut plane = Plane::new();
    let (_server, addr) = start(plane.cache.clone()).await;
    let mut ads = DeltaClient::open(addr).await;
    let whole = ads.full_sync().await;
    assert!(ads.drain().await.is_empty(), "nothing more after the initial sync");

    plane.publish(&world(40), &endpoints(8080));
    let bytes = only(&ads.drain().await, RDS, &changed_route_configuration_of(7));
    let ten_services = whole * 10 / SERVICES;
    assert!(bytes <= ten_services, "{bytes} bytes for one change; 10 Services' share is {ten_services}");
    println!("delta, one route change among {SERVICES} Services: {bytes} bytes (whole configuration {whole})");
}

#[tokio::test]
async fn delta_pushes_an_endpoint_change_as_eds_only() {
    let mut plane = Plane::new();
    let (_server, addr) = start(plane.cache.clone()).await;
    let mut ads = DeltaClient::open(addr).await;
    ads.full_sync().await;

    plane.publish(&world(50), &endpoints(9090));
    only(&ads.drain().await, EDS, "rev|default|s-7-00001");
}

#[tokio::test]
async fn sotw_sends_only_the_changed_route_among_1000_services() {
    let mut plane = Plane::new();
    let (_server, addr) = start(plane.cache.clone()).await;
    let mut ads = SotwClient::open(addr).await;
    let whole = ads.full_sync().await;
    assert!(ads.drain().await.is_empty(), "nothing more after the initial sync");

    plane.publish(&world(40), &endpoints(8080));
    let bytes = only(&ads.drain().await, RDS, &changed_route_configuration_of(7));
    let ten_services = whole * 10 / SERVICES;
    assert!(bytes <= ten_services, "{bytes} bytes for one change; 10 Services' share is {ten_services}");
}

#[tokio::test]
async fn sotw_pushes_an_endpoint_change_as_eds_only() {
    let mut plane = Plane::new();
    let (_server, addr) = start(plane.cache.clone()).await;
    let mut ads = SotwClient::open(addr).await;
    ads.full_sync().await;

    plane.publish(&world(50), &endpoints(9090));
    only(&ads.drain().await, EDS, "rev|default|s-7-00001");
}
