//! Fixtures shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use revgate_model::plan::{
    Endpoint, EndpointMap, GatewayPlan, ObjectKey, RevisionBackend, RoutePlan, Split, TagPlan, UpstreamProtocol,
};
use revgate_xds::{GatewayAuth, Snapshot, SnapshotCache, XdsServer, XdsSettings, translate};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

pub fn key(name: &str) -> ObjectKey {
    ObjectKey::new("default", name)
}

pub fn revision(name: &str) -> RevisionBackend {
    RevisionBackend {
        key: key(name),
        configuration: "hello".into(),
        service: Some("hello".into()),
        protocol: UpstreamProtocol::Http1,
        container_concurrency: 0,
        timeout_seconds: 300,
        response_start_timeout_seconds: 300,
        idle_timeout_seconds: 0,
        static_endpoints: None,
    }
}

/// Route `hello` split 90/10 between two revisions, tag `candidate` on the second.
pub fn plan() -> GatewayPlan {
    GatewayPlan {
        routes: vec![Arc::new(RoutePlan {
            key: key("hello"),
            host: "hello.default.example.com".into(),
            splits: vec![
                Split { revision: key("hello-00001"), percent: 90 },
                Split { revision: key("hello-00002"), percent: 10 },
            ],
            tags: vec![TagPlan {
                tag: "candidate".into(),
                host: "candidate-hello.default.example.com".into(),
                revision: key("hello-00002"),
            }],
            mappings: Vec::new(),
        })],
        revisions: [
            revision("hello-00001"),
            RevisionBackend { protocol: UpstreamProtocol::H2c, container_concurrency: 10, ..revision("hello-00002") },
        ]
        .map(Arc::new)
        .to_vec(),
        tag_header_routing: true,
    }
}

/// The same route after `hello-00002` is gone: 100% to `hello-00001`, no tags.
pub fn plan_without_second_revision() -> GatewayPlan {
    let mut plan = plan();
    Arc::make_mut(&mut plan.routes[0]).splits = vec![Split { revision: key("hello-00001"), percent: 100 }];
    Arc::make_mut(&mut plan.routes[0]).tags.clear();
    plan.revisions.truncate(1);
    plan
}

pub fn endpoints() -> EndpointMap {
    EndpointMap::from([(key("hello-00001"), vec![Endpoint { host: "10.0.0.1".into(), port: 8080 }])])
}

pub fn endpoints_moved() -> EndpointMap {
    EndpointMap::from([(key("hello-00001"), vec![Endpoint { host: "10.0.0.7".into(), port: 8080 }])])
}

pub fn snapshot(plan: &GatewayPlan, endpoints: &EndpointMap) -> std::sync::Arc<Snapshot> {
    let snapshot = Snapshot::new(&translate(plan, endpoints, &XdsSettings::default()));
    snapshot.consistency_check().unwrap();
    std::sync::Arc::new(snapshot)
}

pub fn node(id: &str) -> Option<Node> {
    Some(Node { id: id.into(), cluster: "test".into(), ..Default::default() })
}

/// A gateway token for tests.
pub const TOKEN: &str = "test-gateway-token-0123456789";

/// An ADS server on `127.0.0.1:0`, running until the test ends.
pub async fn start(cache: SnapshotCache) -> (XdsServer, SocketAddr) {
    start_with(cache, GatewayAuth::open()).await
}

/// An ADS server on `127.0.0.1:0` behind `auth`, running until the test ends.
pub async fn start_with(cache: SnapshotCache, auth: GatewayAuth) -> (XdsServer, SocketAddr) {
    serve(XdsServer::new(cache), auth).await
}

/// `server` on `127.0.0.1:0` behind `auth`, running until the test ends.
pub async fn serve(server: XdsServer, auth: GatewayAuth) -> (XdsServer, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = server.clone().into_authenticated_service(auth);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (server, addr)
}

pub async fn client(addr: SocketAddr) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap()
}

/// Bounds every wait so a protocol bug fails the test instead of hanging it.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait to conclude that nothing more is coming.
pub const QUIET: Duration = Duration::from_millis(300);

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const SRDS: &str = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// The route configuration of Route `hello`, which its hosts' scopes select.
/// The route configuration of the shard `default/hello` is in.
pub const HELLO_ROUTES: &str = "routes|193";

pub const CLUSTER_1: &str = "rev|default|hello-00001";
pub const CLUSTER_2: &str = "rev|default|hello-00002";
