//! Incremental ADS against an in-process server and a tonic client.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::*;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use envoy_types::pb::google::rpc;
use revgate_xds::{Api, SnapshotCache};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

struct Delta {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(addr: std::net::SocketAddr) -> Delta {
        let (requests, rx) = mpsc::channel(16);
        let responses =
            client(addr).await.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Delta { requests, responses }
    }

    async fn send(&self, request: DeltaDiscoveryRequest) {
        self.requests.send(request).await.unwrap();
    }

    async fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            node: node("gw-1"),
            type_url: type_url.into(),
            resource_names_subscribe: names.iter().map(|n| (*n).into()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        timeout(TIMEOUT, self.responses.message()).await.expect("a response in time").unwrap().unwrap()
    }

    async fn assert_quiet(&mut self) {
        if let Ok(response) = timeout(QUIET, self.responses.message()).await {
            panic!("unexpected response: {response:?}");
        }
    }
}

fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}

fn versions(response: &DeltaDiscoveryResponse) -> HashMap<String, String> {
    response.resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect()
}

#[tokio::test]
async fn wildcard_clusters_and_named_endpoints() {
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let (server, addr) = start(cache).await;
    let mut ads = Delta::open(addr).await;

    ads.subscribe(CDS, &[]).await;
    let cds = ads.recv().await;
    assert_eq!(cds.type_url, CDS);
    assert_eq!(names(&cds), [CLUSTER_1, CLUSTER_2]);
    assert!(cds.resources.iter().all(|r| !r.version.is_empty() && r.resource.is_some()));

    ads.subscribe(EDS, &[CLUSTER_1]).await;
    let eds = ads.recv().await;
    assert_eq!(names(&eds), [CLUSTER_1], "only the subscribed name");
    ads.ack(&cds).await;
    ads.ack(&eds).await;

    ads.subscribe(EDS, &[CLUSTER_2]).await;
    let eds2 = ads.recv().await;
    assert_eq!(names(&eds2), [CLUSTER_2], "only the newly subscribed name");
    ads.ack(&eds2).await;

    ads.subscribe(LDS, &[]).await;
    let lds = ads.recv().await;
    assert_eq!(names(&lds), ["revgate-http"]);
    ads.subscribe(SRDS, &[]).await;
    assert_eq!(
        names(&ads.recv().await),
        ["host|candidate-hello.default.example.com", "host|hello.default.example.com"]
    );
    ads.subscribe(RDS, &[HELLO_ROUTES]).await;
    assert_eq!(names(&ads.recv().await), [HELLO_ROUTES]);
    ads.assert_quiet().await;

    let mut status = server.status();
    let status = timeout(
        TIMEOUT,
        status.wait_for(|s| {
            s.nodes.get("gw-1").is_some_and(|n| n.types.get("EDS").is_some_and(|t| t.acked_version.is_some()))
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_eq!(status.nodes["gw-1"].api, Api::Delta);
    assert_eq!(status.nodes["gw-1"].types["CDS"].acked_version.as_deref(), Some(cds.system_version_info.as_str()));
}

#[tokio::test]
async fn only_changed_resources_are_sent_and_removals_are_announced() {
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let (server, addr) = start(cache.clone()).await;
    let mut acks = server.subscribe_acks();
    let mut ads = Delta::open(addr).await;

    ads.subscribe(CDS, &[]).await;
    let cds = ads.recv().await;
    ads.subscribe(EDS, &[CLUSTER_1, CLUSTER_2]).await;
    let eds = ads.recv().await;
    assert_eq!(names(&eds), [CLUSTER_1, CLUSTER_2]);
    ads.ack(&cds).await;
    ads.ack(&eds).await;

    // One revision's endpoints move: one EDS resource, nothing else.
    cache.set_snapshot(snapshot(&plan(), &endpoints_moved()));
    let changed = ads.recv().await;
    assert_eq!(changed.type_url, EDS);
    assert_eq!(names(&changed), [CLUSTER_1]);
    assert!(changed.removed_resources.is_empty());
    ads.ack(&changed).await;
    ads.assert_quiet().await;
    // The ACK names what it acknowledged, so a caller can wait for "EDS with X".
    let event = loop {
        let event = timeout(TIMEOUT, acks.recv()).await.unwrap().unwrap();
        if event.version == changed.system_version_info {
            break event;
        }
    };
    let names: Vec<&str> = event.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!((event.type_url.as_str(), names.as_slice()), (EDS, [CLUSTER_1].as_slice()));

    // The second revision disappears: CDS removes it, then EDS does.
    cache.set_snapshot(snapshot(&plan_without_second_revision(), &endpoints_moved()));
    let cds = ads.recv().await;
    assert_eq!(cds.type_url, CDS);
    assert!(cds.resources.is_empty());
    assert_eq!(cds.removed_resources, [CLUSTER_2]);
    let eds = ads.recv().await;
    assert_eq!(eds.type_url, EDS);
    assert!(eds.resources.is_empty());
    assert_eq!(eds.removed_resources, [CLUSTER_2]);
}

#[tokio::test]
async fn a_nack_is_recorded_and_the_rejected_resource_not_resent() {
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let (server, addr) = start(cache.clone()).await;
    let mut ads = Delta::open(addr).await;

    ads.subscribe(EDS, &[CLUSTER_1]).await;
    let good = ads.recv().await;
    ads.ack(&good).await;
    cache.set_snapshot(snapshot(&plan(), &endpoints_moved()));
    let rejected = ads.recv().await;
    ads.send(DeltaDiscoveryRequest {
        type_url: EDS.into(),
        response_nonce: rejected.nonce.clone(),
        error_detail: Some(rpc::Status { code: 3, message: "endpoint rejected".into(), details: vec![] }),
        ..Default::default()
    })
    .await;

    let mut status = server.status();
    let status = timeout(
        TIMEOUT,
        status.wait_for(|s| s.nodes.get("gw-1").is_some_and(|n| n.types.get("EDS").is_some_and(|t| t.nack.is_some()))),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    let eds = &status.nodes["gw-1"].types["EDS"];
    assert_eq!(eds.nack.as_ref().unwrap().message, "endpoint rejected");
    assert_eq!(eds.acked_version.as_deref(), Some(good.system_version_info.as_str()));
    ads.assert_quiet().await;
}

#[tokio::test]
async fn reconnect_with_initial_versions_sends_only_what_changed() {
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let (_server, addr) = start(cache.clone()).await;

    let mut ads = Delta::open(addr).await;
    ads.subscribe(CDS, &[]).await;
    let cds = ads.recv().await;
    ads.subscribe(EDS, &[CLUSTER_1, CLUSTER_2]).await;
    let eds = ads.recv().await;
    drop(ads);

    // While disconnected, hello-00001's endpoints move and hello-00002 goes away.
    cache.set_snapshot(snapshot(&plan_without_second_revision(), &endpoints_moved()));

    let mut ads = Delta::open(addr).await;
    ads.send(DeltaDiscoveryRequest {
        node: node("gw-1"),
        type_url: CDS.into(),
        initial_resource_versions: versions(&cds),
        ..Default::default()
    })
    .await;
    let cds = ads.recv().await;
    assert!(cds.resources.is_empty(), "hello-00001's cluster is unchanged");
    assert_eq!(cds.removed_resources, [CLUSTER_2]);

    ads.send(DeltaDiscoveryRequest {
        type_url: EDS.into(),
        resource_names_subscribe: vec![CLUSTER_1.into()],
        initial_resource_versions: versions(&eds),
        ..Default::default()
    })
    .await;
    let eds = ads.recv().await;
    assert_eq!(names(&eds), [CLUSTER_1], "moved endpoints");

    // Reconnecting with everything current: an empty answer, so Envoy's
    // initialisation completes, and nothing else.
    let current_cds = HashMap::from([(CLUSTER_1.to_owned(), cds_version(&cache))]);
    let mut ads = Delta::open(addr).await;
    ads.send(DeltaDiscoveryRequest {
        node: node("gw-1"),
        type_url: CDS.into(),
        initial_resource_versions: current_cds,
        ..Default::default()
    })
    .await;
    let cds = ads.recv().await;
    assert!(cds.resources.is_empty() && cds.removed_resources.is_empty());
    ads.assert_quiet().await;
}

/// A control plane that restarts knows nothing of what a reconnecting node
/// runs: the ACK of its first answer names the resources the node already
/// held at the current version, though none were sent again.
#[tokio::test]
async fn the_first_ack_after_a_reconnect_names_what_the_node_already_holds() {
    let cache = SnapshotCache::new();
    cache.set_snapshot(snapshot(&plan(), &endpoints()));
    let (_server, addr) = start(cache.clone()).await;
    let mut ads = Delta::open(addr).await;
    ads.subscribe(EDS, &[CLUSTER_1, CLUSTER_2]).await;
    let eds = ads.recv().await;
    drop(ads);

    // A new server on the same snapshot, as after a restart.
    let (server, addr) = start(cache.clone()).await;
    let mut acks = server.subscribe_acks();
    let mut ads = Delta::open(addr).await;
    ads.send(DeltaDiscoveryRequest {
        node: node("gw-1"),
        type_url: EDS.into(),
        resource_names_subscribe: vec![CLUSTER_1.into(), CLUSTER_2.into()],
        initial_resource_versions: versions(&eds),
        ..Default::default()
    })
    .await;
    let first = ads.recv().await;
    assert!(first.resources.is_empty(), "nothing changed, nothing is sent again");
    ads.ack(&first).await;
    let event = timeout(TIMEOUT, acks.recv()).await.unwrap().unwrap();
    let mut names: Vec<&str> = event.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!((event.type_url.as_str(), names.as_slice()), (EDS, [CLUSTER_1, CLUSTER_2].as_slice()));
}

fn cds_version(cache: &SnapshotCache) -> String {
    let snapshot = cache.snapshot_for("gw-1").unwrap();
    snapshot.get(revgate_xds::ResourceType::Cluster).resources[CLUSTER_1].version.clone()
}
