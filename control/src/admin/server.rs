//! The admin API's server side.
//!
//! Limits, each answered in the API's error shape (`{"errors": [...]}`):
//!
//! | limit | value | answer |
//! |---|---|---|
//! | request body | [`BODY_LIMIT`] (32 MiB) | 413, naming the limit |
//! | request head (line and headers) | all of it within [`HEADER_READ_TIMEOUT`](crate::http::HEADER_READ_TIMEOUT) (10 s), also while a kept-alive connection waits for its next request | the connection is closed |
//! | request body, between two reads | [`BODY_IDLE_TIMEOUT`] (10 s) | 408, naming the limit |
//! | request body, in all | [`BODY_READ_TIMEOUT`] (120 s) | 408, naming the limit |

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use revgate_model::OtherKinds;
use revgate_model::plan::ObjectKey;
use revgate_model::rollout::Control;
use revgate_xds::BearerToken;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

use super::{ApplyRequest, ErrorBody};
use crate::activation::{ActivationService, RevisionActivity};
use crate::autoscaling::KpaStatuses;
use crate::control::{ControlError, Handle, RuntimeStates};
use crate::dashboard;
use crate::faults::Fault;
use crate::rollout::{self, RolloutError, RolloutView};
use crate::views;

/// The largest request body the admin API reads: an apply of a few
/// thousand Services fits several times over, and nothing larger is held in
/// memory.
pub const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// How long a request body may pause between two reads.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a whole request body may take: a full 32 MiB needs about
/// 280 KB/s, and reading (or discarding) one body cannot go on forever.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// At most this many unreadable stored objects are named in `Warning`
/// headers of one answer; `GET /v1/unreadable` lists them all.
const MAX_WARNINGS: usize = 10;

/// What the admin API serves from.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub control: Handle,
    pub activation: ActivationService,
    /// The KPA's statuses, when revgate runs the revisions.
    pub kpa: Option<KpaStatuses>,
    /// The runtime's instances, when revgate runs the revisions.
    pub instances: Option<RuntimeStates>,
    /// Required bearer token, when the API is bound beyond loopback.
    pub token: Option<BearerToken>,
    pub test_hooks: bool,
    /// What `GET /metrics` serves (under the same token rules).
    pub metrics: std::sync::Arc<crate::metrics::Exporter>,
}

pub fn router(state: AdminState) -> Router {
    let mut v1 = Router::new()
        .route("/v1/apply", post(apply))
        .route("/v1/delete", post(delete))
        .route("/v1/services", get(services))
        .route("/v1/configurations", get(configurations))
        .route("/v1/routes", get(routes))
        .route("/v1/revisions", get(revisions))
        .route("/v1/domainmappings", get(domain_mappings))
        .route("/v1/gateway", get(gateway))
        .route("/v1/activity", get(activity))
        .route("/v1/podautoscalers", get(pod_autoscalers))
        .route("/v1/instances", get(instances))
        .route("/v1/serverlessservices", get(serverless_services))
        .route("/v1/unreadable", get(unreadable))
        .route("/v1/rollouts", get(rollouts))
        .route("/v1/rollouts/{namespace}/{name}/{control}", post(control_rollout))
        .route("/v1/revisions/{namespace}/{name}/endpoints", put(set_endpoints))
        .route(
            "/metrics",
            get(|State(state): State<AdminState>, headers| crate::metrics::scrape(State(state.metrics), headers)),
        );
    if state.test_hooks {
        v1 = v1.route("/v1/debug/fault", put(set_fault));
    }
    // Layers run outside in: the token is checked before a body is read.
    let v1 = v1
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .route_layer(middleware::from_fn(read_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), warn_unreadable))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    // The dashboard reads the same sources under the same token rule, and
    // lets a browser present the token in a cookie (see `dashboard`).
    let dashboard = dashboard::router(
        dashboard::Sources {
            control: state.control.clone(),
            activation: state.activation.clone(),
            kpa: state.kpa.clone(),
            instances: state.instances.clone(),
        },
        state.token.clone(),
    );
    Router::new().route("/healthz", get(|| async { "ok" })).merge(v1).with_state(state).merge(dashboard)
}

/// Reads a request's body within [`BODY_LIMIT`] and the body timeouts
/// before any handler sees it, so that every handler gets these limits and
/// their answers in the API's error shape. A body over the limit is read to
/// its end (within the timeouts) and discarded before the answer: a client
/// still sending when the server closes would see a reset, not the 413.
async fn read_body(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = match read_limited(body).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge { size }) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                vec![format!(
                    "the request body ({}) is larger than the admin API's request body limit of {}: \
                     apply the manifests in several smaller parts",
                    size_text(size),
                    size_text(BODY_LIMIT as u64)
                )],
            );
        }
        Err(BodyError::Timeout(limit)) => return error(StatusCode::REQUEST_TIMEOUT, vec![limit]),
        Err(BodyError::Read(e)) => {
            return error(StatusCode::BAD_REQUEST, vec![format!("reading the request body: {e}")]);
        }
    };
    next.run(Request::from_parts(parts, Body::from(body))).await
}

#[derive(Debug)]
enum BodyError {
    /// `size` bytes were sent (or as many as arrived before a timeout).
    TooLarge {
        size: u64,
    },
    Timeout(String),
    Read(axum::Error),
}

async fn read_limited(body: Body) -> Result<Bytes, BodyError> {
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    let mut stream = body.into_data_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut size: u64 = 0;
    loop {
        let next = tokio::time::timeout(BODY_IDLE_TIMEOUT, stream.next());
        let chunk = match tokio::time::timeout_at(deadline, next).await {
            Err(_) if size > BODY_LIMIT as u64 => return Err(BodyError::TooLarge { size }),
            Err(_) => {
                return Err(BodyError::Timeout(format!(
                    "the request body took longer than the admin API's body read timeout of {} s",
                    BODY_READ_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(_)) if size > BODY_LIMIT as u64 => return Err(BodyError::TooLarge { size }),
            Ok(Err(_)) => {
                return Err(BodyError::Timeout(format!(
                    "the request body stalled for longer than the admin API's body idle timeout of {} s",
                    BODY_IDLE_TIMEOUT.as_secs()
                )));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk.map_err(BodyError::Read)?,
        };
        size += chunk.len() as u64;
        if size <= BODY_LIMIT as u64 {
            buffer.extend_from_slice(&chunk);
        } else {
            buffer = Vec::new();
        }
    }
    if size > BODY_LIMIT as u64 { Err(BodyError::TooLarge { size }) } else { Ok(Bytes::from(buffer)) }
}

/// `33554432` as `32 MiB`, `1536` as `1.5 KiB`.
fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Names the stored objects that could not be read in `Warning` headers of
/// every answer (as the Kubernetes API server warns and `kubectl` prints),
/// so that whoever uses the CLI learns of them and how to remove them.
async fn warn_unreadable(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let unreadable = state.control.unreadable();
    for object in unreadable.iter().take(MAX_WARNINGS) {
        if let Ok(value) = HeaderValue::from_str(&warning(&object.to_string())) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    if unreadable.len() > MAX_WARNINGS {
        let more = format!(
            "{} more unreadable stored objects: GET /v1/unreadable lists them",
            unreadable.len() - MAX_WARNINGS
        );
        if let Ok(value) = HeaderValue::from_str(&warning(&more)) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// A `Warning` header value (`299 - "text"`) with `text` made printable ASCII.
fn warning(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect();
    format!("299 - \"{text}\"")
}

/// `GET /v1/unreadable`: stored objects that could not be read at start.
async fn unreadable(State(state): State<AdminState>) -> Response {
    Json(state.control.unreadable().as_ref().clone()).into_response()
}

/// True when `addr` can only be reached from this machine.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

async fn require_token(State(state): State<AdminState>, headers: HeaderMap, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        // The same check as the gateway ports': constant time, any case of `Bearer`.
        let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !presented.is_some_and(|value| token.is_presented_by(value)) {
            return error(
                StatusCode::UNAUTHORIZED,
                vec!["this admin API requires `Authorization: Bearer <token>`; the token is in <state-dir>/admin-token (pass it with --token or REVGATE_TOKEN)".to_owned()],
            );
        }
    }
    next.run(request).await
}

fn error(status: StatusCode, errors: Vec<String>) -> Response {
    (status, Json(ErrorBody { errors })).into_response()
}

fn control_error(e: ControlError) -> Response {
    match e {
        ControlError::Manifest(e) => error(StatusCode::UNPROCESSABLE_ENTITY, vec![e.to_string()]),
        ControlError::Invalid(e) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.errors.iter().map(ToString::to_string).collect())
        }
        ControlError::Store(e) => error(StatusCode::INTERNAL_SERVER_ERROR, vec![e.to_string()]),
        ControlError::NotFound(_) => error(StatusCode::NOT_FOUND, vec![e.to_string()]),
        ControlError::Conflict(_) => error(StatusCode::CONFLICT, vec![e.to_string()]),
        ControlError::NoObjects { .. } => error(StatusCode::UNPROCESSABLE_ENTITY, vec![e.to_string()]),
        ControlError::ShuttingDown => error(StatusCode::SERVICE_UNAVAILABLE, vec![e.to_string()]),
    }
}

/// Whether documents of other kinds are refused or skipped.
fn other_kinds(request: &ApplyRequest) -> OtherKinds {
    if request.strict { OtherKinds::Reject } else { OtherKinds::Skip }
}

async fn apply(State(state): State<AdminState>, Json(request): Json<ApplyRequest>) -> Response {
    let other_kinds = other_kinds(&request);
    match state.control.apply_with(request.files, false, other_kinds).await {
        Ok(applied) => Json(applied).into_response(),
        Err(e) => control_error(e),
    }
}

async fn delete(State(state): State<AdminState>, Json(request): Json<ApplyRequest>) -> Response {
    let other_kinds = other_kinds(&request);
    match state.control.apply_with(request.files, true, other_kinds).await {
        Ok(applied) => Json(applied).into_response(),
        Err(e) => control_error(e),
    }
}

/// `?namespace=&name=` filters of the list endpoints.
#[derive(Debug, Deserialize)]
pub struct Filter {
    namespace: Option<String>,
    name: Option<String>,
}

impl Filter {
    fn keeps(&self, key: &ObjectKey) -> bool {
        self.namespace.as_ref().is_none_or(|ns| ns == &key.namespace)
            && self.name.as_ref().is_none_or(|name| name == &key.name)
    }
}

fn list<T: Serialize>(filter: &Filter, objects: Vec<T>, key: impl Fn(&T) -> ObjectKey) -> Response {
    let kept: Vec<T> = objects.into_iter().filter(|object| filter.keeps(&key(object))).collect();
    Json(kept).into_response()
}

async fn services(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let world = state.control.world();
    let observed = state.control.observed();
    let routes = rollout::route_views(&world, &observed, &state.control.rollout_states());
    let views = rollout::service_views(&world, &observed, &routes);
    list(&filter, views, |o| o.metadata.key())
}

async fn domain_mappings(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let views = state.control.world().domain_mapping_views(&state.control.observed());
    list(&filter, views, |o| o.metadata.key())
}

async fn configurations(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let world = state.control.world();
    list(&filter, world.configuration_views(&state.control.observed()), |o| o.metadata.key())
}

async fn routes(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let world = state.control.world();
    let views = rollout::route_views(&world, &state.control.observed(), &state.control.rollout_states());
    list(&filter, views, |o| o.metadata.key())
}

/// `GET /v1/rollouts`: every Route's rollout.
async fn rollouts(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let views: Vec<RolloutView> =
        state.control.rollout_states().iter().map(|(key, rollout)| RolloutView::new(key, rollout)).collect();
    list(&filter, views, |v| ObjectKey::new(v.namespace.clone(), v.route.clone()))
}

/// `POST /v1/rollouts/{namespace}/{name}/{control}`: promote, abort or retry.
async fn control_rollout(
    State(state): State<AdminState>,
    Path((namespace, name, control)): Path<(String, String, String)>,
) -> Response {
    let control = match control.as_str() {
        "promote" => Control::Promote,
        "abort" => Control::Abort,
        "retry" => Control::Retry,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                vec![format!("{other:?} is not a rollout control; use promote, abort or retry")],
            );
        }
    };
    let Some(driver) = state.control.rollouts() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, vec![RolloutError::ShuttingDown.to_string()]);
    };
    let key = ObjectKey::new(namespace, name);
    match driver.control(key.clone(), control).await {
        Ok(rollout) => Json(RolloutView::new(&key, &rollout)).into_response(),
        Err(e @ RolloutError::NotFound(_)) => error(StatusCode::NOT_FOUND, vec![e.to_string()]),
        Err(e @ (RolloutError::Refused(_) | RolloutError::NoRollout(_))) => {
            error(StatusCode::CONFLICT, vec![e.to_string()])
        }
        Err(e @ RolloutError::Store(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, vec![e.to_string()]),
        Err(e @ RolloutError::ShuttingDown) => error(StatusCode::SERVICE_UNAVAILABLE, vec![e.to_string()]),
    }
}

async fn revisions(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let world = state.control.world();
    let states = state.instances.as_ref().map(|states| states.borrow().clone()).unwrap_or_default();
    let registrations = state.control.registrations();
    let views: Vec<serde_json::Value> = world
        .revision_views(&state.control.observed())
        .into_iter()
        .filter(|revision| filter.keeps(&revision.metadata.key()))
        .map(|revision| {
            let key = revision.metadata.key();
            let runtime = states.get(&key);
            let mut view = serde_json::to_value(revision).unwrap_or_default();
            // Knative's replica counts, from the runtime that runs the revision.
            if let (Some(runtime), Some(status)) = (runtime, view.get_mut("status")) {
                status["actualReplicas"] = serde_json::json!(runtime.ready.len());
                status["desiredReplicas"] = serde_json::json!(runtime.desired);
            }
            // Endpoints registered by whoever runs the revision: how many,
            // and whether they were registered to this control plane or
            // restored from the store after a restart.
            if let (Some(registered), Some(status)) = (registrations.get(&key), view.get_mut("status")) {
                status["actualReplicas"] = serde_json::json!(registered.endpoints.len());
                status["registeredEndpoints"] = serde_json::to_value(registered).unwrap_or_default();
            }
            view
        })
        .collect();
    Json(views).into_response()
}

/// Body of `/v1/gateway`.
#[derive(Debug, Serialize, Deserialize)]
pub struct GatewayView {
    pub published: serde_json::Value,
    pub status: serde_json::Value,
    /// Per node, the live filter VMs that have the current readiness view.
    pub filters: serde_json::Value,
}

async fn gateway(State(state): State<AdminState>) -> Response {
    let published = serde_json::to_value(state.control.published()).unwrap_or_default();
    let status = serde_json::to_value(state.control.gateway()).unwrap_or_default();
    let filters = serde_json::to_value(state.activation.filters_in_sync()).unwrap_or_default();
    Json(GatewayView { published, status, filters }).into_response()
}

#[derive(Debug, Deserialize)]
struct FaultRequest {
    fault: Option<Fault>,
}

async fn set_fault(State(state): State<AdminState>, Json(request): Json<FaultRequest>) -> Response {
    match state.control.set_fault(request.fault).await {
        Ok(published) => Json(published).into_response(),
        Err(e) => control_error(e),
    }
}

/// Body of `PUT /v1/revisions/{namespace}/{name}/endpoints`.
#[derive(Debug, Deserialize)]
struct EndpointsRequest {
    /// `host:port` strings; empty means no ready instance.
    endpoints: Vec<String>,
}

async fn set_endpoints(
    State(state): State<AdminState>,
    Path((namespace, name)): Path<(String, String)>,
    Json(request): Json<EndpointsRequest>,
) -> Response {
    let endpoints = if request.endpoints.is_empty() {
        Vec::new()
    } else {
        match revgate_model::plan::parse_endpoints(&request.endpoints.join(",")) {
            Ok(endpoints) => endpoints,
            Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, vec![format!("endpoints: {e}")]),
        }
    };
    match state.control.set_endpoints(ObjectKey::new(namespace, name), endpoints).await {
        Ok(published) => Json(published).into_response(),
        Err(e) => control_error(e),
    }
}

/// One row of `GET /v1/activity`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ActivityView {
    /// `namespace` and `name` of the revision, shaped like object metadata.
    pub metadata: ObjectKey,
    #[serde(flatten)]
    pub activity: RevisionActivity,
}

async fn activity(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let rows: Vec<ActivityView> = state
        .activation
        .activity()
        .into_iter()
        .filter(|(key, _)| filter.keeps(key))
        .map(|(key, activity)| ActivityView { metadata: key, activity })
        .collect();
    Json(rows).into_response()
}

async fn pod_autoscalers(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let statuses = state.kpa.as_ref().map(|kpa| kpa.borrow().clone()).unwrap_or_default();
    let objects: Vec<serde_json::Value> = statuses
        .iter()
        .filter(|(key, _)| filter.keeps(key))
        .map(|(key, status)| views::pod_autoscaler(key, status))
        .collect();
    Json(objects).into_response()
}

async fn serverless_services(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let world = state.control.world();
    let desired = state.control.desired().borrow().clone();
    let activity = state.activation.activity();
    let objects: Vec<serde_json::Value> = world
        .revisions
        .keys()
        .filter(|key| filter.keeps(key))
        .map(|key| {
            let endpoints = desired.get(key).copied().unwrap_or(0);
            let held = activity.get(key).map_or(0, |a| a.totals.held);
            views::serverless_service(key, endpoints, held)
        })
        .collect();
    Json(objects).into_response()
}

/// One row of `GET /v1/instances`: what the runtime runs for a revision.
#[derive(Debug, Serialize)]
pub struct InstancesView {
    pub metadata: ObjectKey,
    #[serde(flatten)]
    pub state: revgate_runtime::RevisionState,
}

async fn instances(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let states = state.instances.as_ref().map(|states| states.borrow().clone()).unwrap_or_default();
    let rows: Vec<InstancesView> = states
        .iter()
        .filter(|(key, _)| filter.keeps(key))
        .map(|(key, state)| InstancesView { metadata: key.clone(), state: state.clone() })
        .collect();
    Json(rows).into_response()
}
