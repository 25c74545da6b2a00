//! The ADS gRPC service: *how* snapshots reach Envoy.
//!
//! [`XdsServer`] implements `AggregatedDiscoveryService` for both the
//! state-of-the-world and the incremental protocol, with one stream driver
//! (`stream`). Each stream runs in its own task, reads its node's snapshot
//! from the [`SnapshotCache`] and compares versions; it never builds content.
//! Protocol events go to one `status` recorder, which publishes a
//! [`GatewayStatus`] and broadcasts [`AckEvent`]s; a node whose streams are
//! gone is forgotten after [`DISCONNECT_GRACE`]. The same events go to
//! [`XdsCallbacks`] (counted as metrics). Off loopback, [`auth`]'s
//! interceptor admits only gateways that present the token.

pub mod auth;
mod cache;
mod callbacks;
mod status;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub use auth::{BearerToken, GatewayAuth, GatewayToken};
pub use cache::SnapshotCache;
pub use callbacks::{NoCallbacks, XdsCallbacks};
use status::StatusRecorder;
pub use status::{AckEvent, AckedResource, Api, DISCONNECT_GRACE, GatewayStatus, Nack, NodeStatus, TypeStatus};
use tonic::service::interceptor::InterceptedService;

/// Responses buffered per stream before a slow client applies backpressure.
const RESPONSE_BUFFER: usize = 16;

/// The ADS server. Cheap to clone; every clone serves the same cache and
/// reports to the same status.
#[derive(Debug, Clone)]
pub struct XdsServer {
    cache: SnapshotCache,
    recorder: Arc<StatusRecorder>,
}

impl XdsServer {
    pub fn new(cache: SnapshotCache) -> XdsServer {
        Self::with_disconnect_grace(cache, DISCONNECT_GRACE)
    }

    /// A server that forgets a disconnected node after `grace` rather than
    /// [`DISCONNECT_GRACE`] (tests that watch a node go).
    pub fn with_disconnect_grace(cache: SnapshotCache, grace: Duration) -> XdsServer {
        XdsServer { cache, recorder: Arc::new(StatusRecorder::new(grace, Arc::new(NoCallbacks))) }
    }

    /// A server that also reports every response, ACK and NACK to `callbacks`.
    pub fn with_callbacks(cache: SnapshotCache, callbacks: Arc<dyn XdsCallbacks>) -> XdsServer {
        XdsServer { cache, recorder: Arc::new(StatusRecorder::new(DISCONNECT_GRACE, callbacks)) }
    }

    /// Per node and type: what was sent, accepted and rejected.
    pub fn status(&self) -> watch::Receiver<GatewayStatus> {
        self.recorder.status()
    }

    /// Every ACK from now on.
    pub fn subscribe_acks(&self) -> broadcast::Receiver<AckEvent> {
        self.recorder.subscribe_acks()
    }

    /// The cache this server reads.
    pub fn cache(&self) -> &SnapshotCache {
        &self.cache
    }

    /// The tonic service to add to a `tonic::transport::Server`, behind
    /// `auth`: streams that do not present the token it requires end with
    /// `UNAUTHENTICATED` before they start. It is the only way to serve ADS,
    /// so that no server can forget the check ([`GatewayAuth::open`] says
    /// so explicitly where none is needed).
    pub fn into_authenticated_service(
        self,
        auth: GatewayAuth,
    ) -> InterceptedService<AggregatedDiscoveryServiceServer<XdsServer>, GatewayAuth> {
        AggregatedDiscoveryServiceServer::with_interceptor(self, auth)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(stream::run::<stream::Sotw, _>(
            request.into_inner(),
            tx,
            self.cache.clone(),
            self.recorder.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(stream::run::<stream::Delta, _>(
            request.into_inner(),
            tx,
            self.cache.clone(),
            self.recorder.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Marks a node's stream closed however its task ends.
struct StreamGuard {
    recorder: Arc<StatusRecorder>,
    node: String,
}

impl StreamGuard {
    fn new(recorder: Arc<StatusRecorder>, node: String) -> Self {
        Self { recorder, node }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.recorder.stream_closed(&self.node);
    }
}

/// Envoy sends its node only on the first request of a stream
/// (`set_node_on_first_message_only`); streams remember it.
fn node_id(node: Option<&Node>) -> String {
    node.map(|n| n.id.clone()).unwrap_or_default()
}
