//! State-of-the-world ADS against an in-process server and a tonic client.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc;
use prost::Message;
use revgate_xds::{Api, GatewayAuth, GatewayToken, SnapshotCache, XdsServer};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

struct Sotw {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(addr: std::net::SocketAddr) -> Sotw {
        Sotw::open_with(addr, None).await.unwrap()
    }

    /// A stream presenting `authorization` as metadata, or the server's refusal.
    async fn open_with(addr: std::net::SocketAddr, authorization: Option<&str>) -> Result<Sotw, tonic::Status> {
        let (requests, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(value) = authorization {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        let responses = client(addr).await.stream_aggregated_resources(request).await?.into_inner();
        Ok(Sotw { requests, responses })
    }

    async fn send(&self, request: DiscoveryRequest) {
        self.requests.send(request).await.unwrap();
    }

    async fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.send(DiscoveryRequest {
            node: node("gw-1"),
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| (*n).into()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            resource_names: names.iter().map(|n| (*n).into()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn nack(&self, response: &DiscoveryResponse, last_good: &str, names: &[&str], message: &str) {
        self.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            version_info: last_good.into(),
            response_nonce: response.nonce.clone(),
            resource_names: names.iter().map(|n| (*n).into()).collect(),
            error_detail: Some(rpc::Status { code: 3, message: message.into(), details: vec![] }),
            ..Default::default()
        })
        .await;
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        timeout(TIMEOUT, self.responses.message()).await.expect("a response in time").unwrap().unwrap()
    }

    async fn assert_quiet(&mut self) {
        if let Ok(response) = timeout(QUIET, self.responses.message()).await {
            panic!("unexpected response: {response:?}");
        }
    }
}

fn cluster_names(response: &DiscoveryResponse) -> Vec<String> {
    response.resources.iter().map(|any| Cluster::decode(any.value.as_slice()).unwrap().name).collect()
}

/// Wait until the status satisfies `f`.
async fn status_until(
    server: &revgate_xds::XdsServer,
    f: impl Fn(&revgate_xds::GatewayStatus) -> bool,
) -> revgate_xds::GatewayStatus {
    let mut rx = server.status();
    timeout(TIMEOUT, rx.wait_for(|s| f(s))).await.expect("status in time").unwrap().clone()
}

#[tokio::test]
async fn initial_sync_follows_the_ads_order() {
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let (server, addr) = start(cache).await;
    let mut ads = Sotw::open(addr).await;

    ads.subscribe(CDS, &[]).await;
    let cds = ads.recv().await;
    assert_eq!(cds.type_url, CDS);
    assert_eq!(cluster_names(&cds), [CLUSTER_1, CLUSTER_2]);
    assert!(!cds.nonce.is_empty() && !cds.version_info.is_empty());

    ads.subscribe(EDS, &[CLUSTER_1, CLUSTER_2]).await;
    let eds = ads.recv().await;
    assert_eq!((eds.type_url.as_str(), eds.resources.len()), (EDS, 2));
    ads.ack(&cds, &[]).await;

    ads.subscribe(LDS, &[]).await;
    let lds = ads.recv().await;
    assert_eq!((lds.type_url.as_str(), lds.resources.len()), (LDS, 1));
    ads.ack(&eds, &[CLUSTER_1, CLUSTER_2]).await;

    ads.subscribe(SRDS, &[]).await;
    let srds = ads.recv().await;
    assert_eq!((srds.type_url.as_str(), srds.resources.len()), (SRDS, 2), "one scope per host");
    ads.ack(&lds, &[]).await;

    ads.subscribe(RDS, &[HELLO_ROUTES]).await;
    let rds = ads.recv().await;
    assert_eq!((rds.type_url.as_str(), rds.resources.len()), (RDS, 1));
    ads.ack(&srds, &[]).await;
    ads.ack(&rds, &[HELLO_ROUTES]).await;
    ads.assert_quiet().await;

    let status = status_until(&server, |s| {
        s.nodes.get("gw-1").is_some_and(|n| n.types.values().filter(|t| t.acked_version.is_some()).count() == 5)
    })
    .await;
    let node = &status.nodes["gw-1"];
    assert!(node.connected);
    assert_eq!(node.api, Api::Sotw);
    assert_eq!(node.types["CDS"].acked_version.as_deref(), Some(cds.version_info.as_str()));
    assert_eq!(node.types["RDS"].sent_version.as_deref(), Some(rds.version_info.as_str()));
    assert!(node.types.values().all(|t| t.nack.is_none()));

    drop(ads);
    status_until(&server, |s| s.nodes.get("gw-1").is_some_and(|n| !n.connected)).await;
}

#[tokio::test]
async fn acks_are_broadcast_with_the_acknowledged_resources() {
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let (server, addr) = start(cache).await;
    let mut acks = server.subscribe_acks();
    let mut ads = Sotw::open(addr).await;

    ads.subscribe(EDS, &[CLUSTER_1]).await;
    let eds = ads.recv().await;
    assert_eq!(eds.resources.len(), 1, "only the requested cluster");
    ads.ack(&eds, &[CLUSTER_1]).await;

    let event = timeout(TIMEOUT, acks.recv()).await.unwrap().unwrap();
    assert_eq!(event.node, "gw-1");
    assert_eq!(event.type_url, EDS);
    assert_eq!(event.version, eds.version_info);
    let names: Vec<&str> = event.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, [CLUSTER_1]);
    assert!(event.removed.is_empty());
}

#[tokio::test]
async fn a_nack_keeps_the_last_good_version_until_the_next_snapshot() {
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let (server, addr) = start(cache.clone()).await;
    let mut ads = Sotw::open(addr).await;
    let names = [CLUSTER_1, CLUSTER_2];

    ads.subscribe(EDS, &names).await;
    let good = ads.recv().await;
    ads.ack(&good, &names).await;

    // A change the client rejects.
    cache.set_snapshot(snapshot(&plan(), &endpoints_moved()));
    let rejected = ads.recv().await;
    assert_ne!(rejected.version_info, good.version_info);
    let envoy_text = "Proto constraint validation failed (ClusterLoadAssignmentValidationError.Endpoints[0]: bad)";
    ads.nack(&rejected, &good.version_info, &names, envoy_text).await;

    let status = status_until(&server, |s| s.nodes.get("gw-1").is_some_and(|n| n.types["EDS"].nack.is_some())).await;
    let eds = &status.nodes["gw-1"].types["EDS"];
    let nack = eds.nack.as_ref().unwrap();
    assert_eq!(nack.message, envoy_text);
    assert_eq!(nack.version, rejected.version_info);
    assert_eq!(eds.acked_version.as_deref(), Some(good.version_info.as_str()), "Envoy still runs the last good one");
    assert_eq!(eds.sent_version.as_deref(), Some(rejected.version_info.as_str()));

    // The rejected version is not sent again, even when an equal snapshot is set.
    cache.set_snapshot(snapshot(&plan(), &endpoints_moved()));
    ads.assert_quiet().await;

    // The next different snapshot is sent, and its ACK clears the NACK.
    let mut third = endpoints();
    third.insert(key("hello-00002"), vec![revgate_model::plan::Endpoint { host: "10.0.0.3".into(), port: 8080 }]);
    cache.set_snapshot(snapshot(&plan(), &third));
    let next = ads.recv().await;
    assert_ne!(next.version_info, rejected.version_info);
    assert_ne!(next.version_info, good.version_info);
    ads.ack(&next, &names).await;
    let status = status_until(&server, |s| {
        s.nodes.get("gw-1").is_some_and(|n| n.types["EDS"].acked_version.as_deref() == Some(next.version_info.as_str()))
    })
    .await;
    assert!(status.nodes["gw-1"].types["EDS"].nack.is_none());
}

#[tokio::test]
async fn unchanged_content_and_stale_nonces_send_nothing() {
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let (_server, addr) = start(cache.clone()).await;
    let mut ads = Sotw::open(addr).await;

    ads.subscribe(CDS, &[]).await;
    let first = ads.recv().await;
    ads.ack(&first, &[]).await;
    // Rebuilt from equal inputs: same versions, nothing to send.
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    ads.assert_quiet().await;

    // Endpoints changed: CDS is untouched.
    cache.set_snapshot(snapshot(&plan(), &endpoints_moved()));
    ads.assert_quiet().await;

    // A cluster went away: new CDS.
    cache.set_snapshot(snapshot(&plan_without_second_revision(), &endpoints()));
    let second = ads.recv().await;
    assert_eq!(cluster_names(&second), [CLUSTER_1]);
    // A request carrying the first (stale) nonce is ignored.
    ads.ack(&first, &[]).await;
    ads.assert_quiet().await;
}

#[tokio::test]
async fn a_subscribed_subsets_version_follows_each_change_as_a_fresh_subscription_would_see_it() {
    // What a new stream asking for `names` is answered: the reference.
    async fn fresh_version(addr: std::net::SocketAddr, names: &[&str]) -> String {
        let mut fresh = Sotw::open(addr).await;
        fresh.subscribe(EDS, names).await;
        fresh.recv().await.version_info
    }
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let (_server, addr) = start(cache.clone()).await;
    let mut ads = Sotw::open(addr).await;

    ads.subscribe(EDS, &[CLUSTER_1]).await;
    let first = ads.recv().await;
    ads.ack(&first, &[CLUSTER_1]).await;

    // The subscribed assignment changes: its version moves with it.
    cache.set_snapshot(snapshot(&plan(), &endpoints_moved()));
    let moved = ads.recv().await;
    assert_eq!(moved.resources.len(), 1);
    assert_eq!(moved.version_info, fresh_version(addr, &[CLUSTER_1]).await);
    ads.ack(&moved, &[CLUSTER_1]).await;

    // An assignment the stream did not ask for changes: nothing is sent.
    let mut second = endpoints_moved();
    second.insert(key("hello-00002"), vec![revgate_model::plan::Endpoint { host: "10.0.0.3".into(), port: 8080 }]);
    cache.set_snapshot(snapshot(&plan(), &second));
    ads.assert_quiet().await;

    // The stream widens its scope in an ACK: the assignment it lacks, at the
    // version a new stream asking for both sees.
    ads.ack(&moved, &[CLUSTER_1, CLUSTER_2]).await;
    let widened = ads.recv().await;
    assert_eq!(widened.resources.len(), 1, "only what the client does not have yet");
    assert_eq!(widened.version_info, fresh_version(addr, &[CLUSTER_1, CLUSTER_2]).await);
    ads.ack(&widened, &[CLUSTER_1, CLUSTER_2]).await;

    // And keeps following changes within it.
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let back = ads.recv().await;
    assert_eq!(back.version_info, fresh_version(addr, &[CLUSTER_1, CLUSTER_2]).await);
}

#[tokio::test]
async fn per_node_snapshots_override_the_default() {
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    cache.set_node_snapshot("gw-1", snapshot(&plan_without_second_revision(), &endpoints()));
    let (_server, addr) = start(cache).await;
    let mut ads = Sotw::open(addr).await;
    ads.subscribe(CDS, &[]).await;
    assert_eq!(cluster_names(&ads.recv().await), [CLUSTER_1]);
}

#[tokio::test]
async fn a_stream_waits_for_the_first_snapshot() {
    let cache = SnapshotCache::new();
    let (_server, addr) = start(cache.clone()).await;
    let mut ads = Sotw::open(addr).await;
    ads.subscribe(CDS, &[]).await;
    ads.assert_quiet().await;
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    assert_eq!(cluster_names(&ads.recv().await), [CLUSTER_1, CLUSTER_2]);
}

/// A client that subscribes, rejects everything and hangs up is shown as
/// disconnected, then forgotten once the grace passes (a node that comes
/// back within the grace is kept: see the recorder's unit tests).
#[tokio::test]
async fn a_node_that_leaves_is_forgotten_after_the_grace() {
    let grace = std::time::Duration::from_millis(400);
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let (server, addr) = serve(XdsServer::with_disconnect_grace(cache, grace), GatewayAuth::open()).await;

    let mut ads = Sotw::open(addr).await;
    ads.subscribe(CDS, &[]).await;
    let clusters = ads.recv().await;
    ads.nack(&clusters, "", &[], "stray rejection").await;
    status_until(&server, |s| s.nodes.get("gw-1").is_some_and(|n| n.types["CDS"].nack.is_some())).await;
    drop(ads);
    let gone = status_until(&server, |s| s.nodes.get("gw-1").is_some_and(|n| !n.connected)).await;
    assert!(gone.nodes["gw-1"].disconnected_at.is_some(), "{gone:#?}");
    status_until(&server, |s| !s.nodes.contains_key("gw-1")).await;
}

/// Behind a token, streams without it or with another one are refused with
/// `UNAUTHENTICATED` and a message naming what is missing; with it, served.
#[tokio::test]
async fn only_streams_presenting_the_gateway_token_are_served() {
    let token = GatewayToken::new(TOKEN).unwrap();
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let (server, addr) = start_with(cache, GatewayAuth::require(token.clone())).await;

    let refused = Sotw::open_with(addr, None).await.err().expect("refused without a token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(refused.message().contains("authorization: Bearer"), "{}", refused.message());
    let refused = Sotw::open_with(addr, Some("Bearer not-the-gateway-token")).await.err().expect("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(refused.message().contains("does not match"), "{}", refused.message());
    assert!(server.status().borrow().nodes.is_empty(), "a refused client never shows as a gateway");

    let mut ads = Sotw::open_with(addr, Some(&token.bearer())).await.unwrap();
    ads.subscribe(CDS, &[]).await;
    assert_eq!(cluster_names(&ads.recv().await).len(), 2);
}
