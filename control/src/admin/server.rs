//! The admin API's server side.

use std::net::SocketAddr;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use revgate_model::plan::ObjectKey;
use serde::{Deserialize, Serialize};

use super::{ApplyRequest, ErrorBody};
use crate::activation::{ActivationService, RevisionActivity};
use crate::autoscaling::KpaStatuses;
use crate::control::{ControlError, Handle, RuntimeStates};
use crate::faults::Fault;
use crate::views;

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
    pub token: Option<String>,
    pub test_hooks: bool,
}

pub fn router(state: AdminState) -> Router {
    let mut v1 = Router::new()
        .route("/v1/apply", post(apply))
        .route("/v1/delete", post(delete))
        .route("/v1/services", get(services))
        .route("/v1/configurations", get(configurations))
        .route("/v1/routes", get(routes))
        .route("/v1/revisions", get(revisions))
        .route("/v1/gateway", get(gateway))
        .route("/v1/activity", get(activity))
        .route("/v1/podautoscalers", get(pod_autoscalers))
        .route("/v1/instances", get(instances))
        .route("/v1/serverlessservices", get(serverless_services))
        .route("/v1/revisions/{namespace}/{name}/endpoints", put(set_endpoints));
    if state.test_hooks {
        v1 = v1.route("/v1/debug/fault", put(set_fault));
    }
    let v1 = v1.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new().route("/healthz", get(|| async { "ok" })).merge(v1).with_state(state)
}

/// True when `addr` can only be reached from this machine.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

async fn require_token(State(state): State<AdminState>, headers: HeaderMap, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
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

async fn apply(State(state): State<AdminState>, Json(request): Json<ApplyRequest>) -> Response {
    match state.control.apply(request.files, false).await {
        Ok(applied) => Json(applied).into_response(),
        Err(e) => control_error(e),
    }
}

async fn delete(State(state): State<AdminState>, Json(request): Json<ApplyRequest>) -> Response {
    match state.control.apply(request.files, true).await {
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
    list(&filter, world.service_views(&state.control.observed()), |o| o.metadata.key())
}

async fn configurations(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let world = state.control.world();
    list(&filter, world.configuration_views(&state.control.observed()), |o| o.metadata.key())
}

async fn routes(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let world = state.control.world();
    list(&filter, world.route_views(&state.control.observed()), |o| o.metadata.key())
}

async fn revisions(State(state): State<AdminState>, Query(filter): Query<Filter>) -> Response {
    let world = state.control.world();
    let states = state.instances.as_ref().map(|states| states.borrow().clone()).unwrap_or_default();
    let views: Vec<serde_json::Value> = world
        .revision_views(&state.control.observed())
        .into_iter()
        .filter(|revision| filter.keeps(&revision.metadata.key()))
        .map(|revision| {
            let runtime = states.get(&revision.metadata.key());
            let mut view = serde_json::to_value(revision).unwrap_or_default();
            // Knative's replica counts, from the runtime that runs the revision.
            if let (Some(runtime), Some(status)) = (runtime, view.get_mut("status")) {
                status["actualReplicas"] = serde_json::json!(runtime.ready.len());
                status["desiredReplicas"] = serde_json::json!(runtime.desired);
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
