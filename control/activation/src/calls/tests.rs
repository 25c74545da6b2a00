//! The activation service with its readiness owner and the filters' calls,
//! in-process.

use revgate_model::plan::{RevisionBackend, UpstreamProtocol};
use revgate_proto::ReadinessUpdate;

use super::*;
use crate::*;

fn key() -> ObjectKey {
    ObjectKey::new("default", "hello-00001")
}

fn plan() -> GatewayPlan {
    let revision = RevisionBackend {
        key: key(),
        configuration: "hello".into(),
        service: Some("hello".into()),
        protocol: UpstreamProtocol::Http1,
        container_concurrency: 0,
        timeout_seconds: 300,
        response_start_timeout_seconds: 300,
        idle_timeout_seconds: 0,
        static_endpoints: None,
    };
    GatewayPlan { revisions: vec![std::sync::Arc::new(revision)], ..Default::default() }
}

/// What the readiness owner follows; dropping it ends the owner.
struct Inputs {
    _plan: watch::Sender<Arc<GatewayPlan>>,
    desired: watch::Sender<Arc<BTreeMap<ObjectKey, u32>>>,
    _acks: broadcast::Sender<AckEvent>,
}

/// A service whose plan has one revision wanted at one endpoint, and
/// the version of its readiness view.
async fn start() -> (ActivationService, Inputs, u64) {
    let (plan_tx, plan) = watch::channel(Arc::new(plan()));
    let (desired_tx, desired) = watch::channel(Arc::new(BTreeMap::from([(key(), 1)])));
    let (acks_tx, acks) = broadcast::channel(1);
    let service = ActivationService::start(plan, desired, acks);
    let mut readiness = service.readiness.clone();
    let version = readiness.wait_for(|t| t.desired(&key()) == Some(1)).await.expect("readiness owner").version();
    (service, Inputs { _plan: plan_tx, desired: desired_tx, _acks: acks_tx }, version)
}

fn query(reporter: &str, after: u64) -> ReadinessQuery {
    ReadinessQuery { after, node: "gw".into(), reporter: reporter.into(), gate: String::new(), partial: String::new() }
}

/// A readiness poll from filter VM `reporter`, as the filter sends it.
async fn poll(service: &ActivationService, reporter: &str, after: u64) -> ReadinessUpdate {
    let response = readiness(State(service.clone()), Ok(Query(query(reporter, after)))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), MAX_MESSAGE_BYTES).await.expect("body");
    ReadinessUpdate::decode(body).expect("a readiness update")
}

/// A filter VM that was answered `version` and then went silent.
fn went_silent(service: &ActivationService, reporter: &str, version: u64) {
    drop(service.begin_poll(&query(reporter, version)).expect("room for the VM"));
}

async fn go_to_zero(inputs: &Inputs) {
    inputs.desired.send_replace(Arc::new(BTreeMap::from([(key(), 0)])));
    tokio::task::yield_now().await;
}

/// An RDS ACK of `node` routing to the test revision, the filter
/// disabled on the route when `filter_off`.
fn routes_ack(node: &str, filter_off: bool) -> AckEvent {
    use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteConfiguration, VirtualHost};
    use envoy_types::pb::envoy::config::route::v3::{route, route_action};
    use prost::Name;
    let action = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(revgate_xds::names::revision_cluster(&key()))),
        ..Default::default()
    };
    let mut vhost = VirtualHost {
        routes: vec![Route { action: Some(route::Action::Route(action)), ..Default::default() }],
        ..Default::default()
    };
    if filter_off {
        revgate_xds::warm::disable_filter(&mut vhost);
    }
    let configuration =
        RouteConfiguration { name: "routes|1".into(), virtual_hosts: vec![vhost], ..Default::default() };
    AckEvent {
        node: node.into(),
        type_url: RouteConfiguration::type_url(),
        version: "1".into(),
        resources: vec![revgate_xds::AckedResource {
            name: "routes|1".into(),
            // A content hash: the two contents get two versions.
            version: if filter_off { "off" } else { "on" }.into(),
            resource: envoy_types::pb::google::protobuf::Any {
                type_url: RouteConfiguration::type_url(),
                value: configuration.encode_to_vec(),
            },
        }],
        removed: Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn going_to_zero_waits_until_no_gateway_serves_the_revision_without_the_filter() {
    let (service, inputs, version) = start().await;
    let live = tokio::spawn({
        let service = service.clone();
        async move { poll(&service, "live", version).await }
    });
    tokio::task::yield_now().await;
    service.warm.send_modify(|view| {
        view.record_ack(&routes_ack("gw", true));
    });
    go_to_zero(&inputs).await;
    let cold = tokio::spawn({
        let service = service.clone();
        async move { service.until_cold_everywhere(&key()).await }
    });
    live.await.expect("poll task");
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(!cold.is_finished(), "the gateway still routes the revision past the filter");
    service.warm.send_modify(|view| {
        view.record_ack(&routes_ack("gw", false));
    });
    cold.await.expect("wait task");
}

#[tokio::test(start_paused = true)]
async fn going_to_zero_stops_waiting_for_a_silent_filter_vm_once_it_counts_as_gone() {
    let (service, inputs, version) = start().await;
    went_silent(&service, "gone", version);
    tokio::time::advance(POLLER_IDLE_TIMEOUT - Duration::from_secs(1)).await;
    let live = tokio::spawn({
        let service = service.clone();
        async move { poll(&service, "live", version).await }
    });
    tokio::task::yield_now().await;

    let started = Instant::now();
    go_to_zero(&inputs).await;
    service.until_cold_everywhere(&key()).await;
    let waited = started.elapsed();
    assert!(waited < COLD_NOTICE_TIMEOUT, "waited {waited:?}: the whole timeout for a VM that is gone");
    let told = live.await.expect("poll task");
    assert!(told.version > version && told.revisions[0].ready_endpoints == 0, "the live VM heard it is cold");
}

#[tokio::test(start_paused = true)]
async fn a_filter_vm_silent_for_the_idle_timeout_is_not_waited_for_at_all() {
    let (service, inputs, version) = start().await;
    went_silent(&service, "gone", version);
    tokio::time::advance(POLLER_IDLE_TIMEOUT).await;
    let started = Instant::now();
    go_to_zero(&inputs).await;
    service.until_cold_everywhere(&key()).await;
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn going_to_zero_waits_for_a_live_filter_vm_between_two_polls() {
    let (service, inputs, version) = start().await;
    went_silent(&service, "between-polls", version);
    go_to_zero(&inputs).await;
    let cold = tokio::spawn({
        let service = service.clone();
        async move { service.until_cold_everywhere(&key()).await }
    });
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(!cold.is_finished(), "the VM has not heard yet");
    let told = poll(&service, "between-polls", version).await;
    assert_eq!(told.revisions[0].ready_endpoints, 0);
    cold.await.expect("wait task");
}

#[tokio::test(start_paused = true)]
async fn an_activation_for_a_revision_not_in_the_plan_is_refused_and_kept_nowhere() {
    let (service, _inputs, _) = start().await;
    let mut activations = service.subscribe_activations();
    let request = ActivationRequest {
        namespace: "default".into(),
        revision: "made-up-00001".into(),
        held: 1,
        ..Default::default()
    };
    let response = activate(State(service.clone()), Ok(Bytes::from(request.encode_to_vec()))).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = axum::body::to_bytes(response.into_body(), MAX_MESSAGE_BYTES).await.expect("body");
    assert!(String::from_utf8_lossy(&body).contains("revision default/made-up-00001 is not in the gateway plan"));
    assert!(service.activity().is_empty());
    assert!(activations.try_recv().is_err(), "the autoscaler is not poked");

    let request = ActivationRequest { revision: key().name, ..request };
    let response = activate(State(service.clone()), Ok(Bytes::from(request.encode_to_vec()))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(service.activity()[&key()].activations, 1);
}

#[tokio::test(start_paused = true)]
async fn filter_vms_beyond_the_limit_are_answered_429_naming_it() {
    let (service, _inputs, version) = start().await;
    let polls: Vec<Poll> =
        (0..MAX_FILTER_VMS).map(|n| service.begin_poll(&query(&format!("vm-{n}"), version)).expect("room")).collect();
    let response = readiness(State(service.clone()), Ok(Query(query("one-more", version)))).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = axum::body::to_bytes(response.into_body(), MAX_MESSAGE_BYTES).await.expect("body");
    assert!(String::from_utf8_lossy(&body).contains("MAX_FILTER_VMS = 1024"));
    drop(polls);
    tokio::time::advance(POLLER_IDLE_TIMEOUT).await;
    assert_eq!(poll(&service, "one-more", 0).await.version, version, "the silent VMs are gone: room again");
}
