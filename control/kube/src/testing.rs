//! Test support: chainable fixtures of cluster objects, a scripted API
//! server that checks every request, and a small in-memory API server that
//! brings a namespace to a converged state to start a scenario from.
//!
//! Both servers sit behind a real `kube::Client` (tower-test's mock
//! service), so the code under test builds its requests exactly as against
//! a cluster.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::Client;
use kube::api::DynamicObject;
use kube::client::Body;
use revgate_istio::RenderOptions;
use revgate_model::ConfigMap;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock;

use crate::kinds::{FIELD_MANAGER, Kind};
use crate::reconcile::Context;
use crate::snapshot::Snapshot;

pub const NAMESPACE: &str = "default";
pub const IMAGE: &str = "ghcr.io/example/hello:1";
/// How long a scenario may take before it counts as hung.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The clock of every scenario: 2024-05-01T12:00:00Z.
pub const NOW: u64 = 1_714_564_800;

// ----- fixtures -------------------------------------------------------------------------

/// A cluster object under construction: `ksvc("hello").image("x").uid("u")`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixture {
    value: Value,
}

/// A Knative Service `name` serving [`IMAGE`].
pub fn ksvc(name: &str) -> Fixture {
    Fixture::new(Kind::KnativeService, name)
        .set("/spec", json!({"template": {"spec": {"containers": [{"image": IMAGE}]}}}))
}

/// The UID fixtures and the in-memory server give an object.
pub fn uid(kind: Kind, name: &str) -> String {
    format!("uid-{}-{name}", format!("{kind:?}").to_ascii_lowercase())
}

impl Fixture {
    pub fn new(kind: Kind, name: &str) -> Self {
        Self {
            value: json!({
                "apiVersion": kind.api_version(),
                "kind": kind.name(),
                "metadata": {
                    "name": name,
                    "namespace": NAMESPACE,
                    "uid": uid(kind, name),
                    "generation": 1,
                    "resourceVersion": "1",
                },
            }),
        }
    }

    pub fn configuration(name: &str) -> Self {
        Self::new(Kind::Configuration, name)
            .set("/spec", json!({"template": {"spec": {"containers": [{"image": IMAGE}]}}}))
    }

    /// A revision of configuration `<name without -NNNNN>`, generation 1.
    pub fn revision(name: &str) -> Self {
        let configuration = name.rsplit_once('-').map_or(name, |(c, _)| c);
        Self::new(Kind::Revision, name)
            .label("serving.knative.dev/configuration", configuration)
            .label("serving.knative.dev/configurationGeneration", "1")
            .set("/spec", json!({"containers": [{"image": IMAGE}]}))
    }

    /// The Deployment of a revision, one replica.
    pub fn deployment(revision: &str) -> Self {
        Self::new(Kind::Deployment, &revgate_istio::names::deployment(revision))
            .label(crate::kinds::REVISION_LABEL, revision)
            .set("/spec", json!({"replicas": 1, "selector": {"matchLabels": {}}, "template": {}}))
    }

    /// An EndpointSlice `<revision>-<suffix>` of a revision's Service, port 8080, no endpoints yet.
    pub fn endpoint_slice(revision: &str, suffix: &str) -> Self {
        Self::new(Kind::EndpointSlice, &format!("{revision}-{suffix}"))
            .label(crate::kinds::SERVICE_NAME_LABEL, revision)
            .label(crate::kinds::REVISION_LABEL, revision)
            .set("/addressType", json!("IPv4"))
            .set("/ports", json!([{"name": "http", "port": 8080, "protocol": "TCP"}]))
            .set("/endpoints", json!([]))
    }

    pub fn uid(self, uid: &str) -> Self {
        self.set("/metadata/uid", json!(uid))
    }

    pub fn generation(self, generation: i64) -> Self {
        self.set("/metadata/generation", json!(generation))
    }

    pub fn label(self, key: &str, value: &str) -> Self {
        self.set(&format!("/metadata/labels/{}", escape(key)), json!(value))
    }

    /// An annotation of the revision template (Services and Configurations).
    pub fn template_annotation(self, key: &str, value: &str) -> Self {
        self.set(&format!("/spec/template/metadata/annotations/{}", escape(key)), json!(value))
    }

    /// A controller reference to `owner`.
    pub fn owned_by(self, owner: &Fixture) -> Self {
        let meta = &owner.value["metadata"];
        self.set(
            "/metadata/ownerReferences",
            json!([{
                "apiVersion": owner.value["apiVersion"],
                "kind": owner.value["kind"],
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": true,
                "blockOwnerDeletion": true,
            }]),
        )
    }

    /// Marked for deletion (a finalizer or the garbage collector is at work).
    pub fn deleting(self) -> Self {
        self.set("/metadata/deletionTimestamp", json!("2024-05-01T11:59:00Z"))
    }

    /// The revision template's image (Services and Configurations).
    pub fn image(self, image: &str) -> Self {
        self.set("/spec/template/spec/containers/0/image", json!(image))
    }

    /// `spec.traffic`, each target as `(revision or "" for the latest, percent, tag)`.
    pub fn traffic(self, targets: &[(&str, i64, Option<&str>)]) -> Self {
        let targets: Vec<Value> = targets
            .iter()
            .map(|(revision, percent, tag)| {
                let mut t = if revision.is_empty() {
                    json!({"latestRevision": true, "percent": percent})
                } else {
                    json!({"revisionName": revision, "latestRevision": false, "percent": percent})
                };
                if let Some(tag) = tag {
                    t["tag"] = json!(tag);
                }
                t
            })
            .collect();
        self.set("/spec/traffic", json!(targets))
    }

    /// A Knative `Ready=True` status.
    pub fn ready(self) -> Self {
        self.set("/status", json!({"conditions": [{"type": "Ready", "status": "True"}]}))
    }

    /// A Knative `Ready=Unknown` status with a reason.
    pub fn not_ready(self, reason: &str) -> Self {
        self.set("/status", json!({"conditions": [{"type": "Ready", "status": "Unknown", "reason": reason}]}))
    }

    pub fn replicas(self, replicas: u32) -> Self {
        self.set("/spec/replicas", json!(replicas))
    }

    /// Adds a Deployment condition.
    pub fn condition(mut self, type_: &str, status: &str, reason: &str) -> Self {
        let condition =
            json!({"type": type_, "status": status, "reason": reason, "message": format!("{type_} is {status}")});
        match self.value.pointer_mut("/status/conditions").and_then(Value::as_array_mut) {
            Some(conditions) => conditions.push(condition),
            None => self = self.set("/status/conditions", json!([condition])),
        }
        self
    }

    /// Adds an endpoint to an EndpointSlice; `ready: None` leaves the condition out.
    pub fn endpoint(mut self, ip: &str, ready: Option<bool>) -> Self {
        let mut endpoint = json!({"addresses": [ip]});
        if let Some(ready) = ready {
            endpoint["conditions"] = json!({"ready": ready});
        }
        if let Some(endpoints) = self.value.get_mut("endpoints").and_then(Value::as_array_mut) {
            endpoints.push(endpoint);
        }
        self
    }

    /// Sets the value at a JSON pointer, creating objects on the way.
    pub fn set(mut self, pointer: &str, value: Value) -> Self {
        let mut target = &mut self.value;
        for token in pointer.split('/').skip(1) {
            let token = token.replace("~1", "/").replace("~0", "~");
            target = match target {
                Value::Array(items) => {
                    let index: usize = token.parse().expect("array index");
                    &mut items[index]
                }
                other => {
                    if !other.is_object() {
                        *other = json!({});
                    }
                    other.as_object_mut().expect("an object").entry(token).or_insert(Value::Null)
                }
            };
        }
        *target = value;
        self
    }

    pub fn json(&self) -> Value {
        self.value.clone()
    }

    pub fn object(&self) -> DynamicObject {
        serde_json::from_value(self.value.clone()).expect("a fixture is a valid object")
    }
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A `knative-serving` ConfigMap.
pub fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "knative-serving"},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .expect("a config map")
}

/// A context for `snapshot` on `client`, with the scenario clock.
pub fn context(client: Client, snapshot: Snapshot) -> Arc<Context> {
    context_with(client, snapshot, RenderOptions::default())
}

/// [`context`] with render options.
pub fn context_with(client: Client, snapshot: Snapshot, options: RenderOptions) -> Arc<Context> {
    Arc::new(Context::new(client, Arc::new(snapshot), options).with_clock(Arc::new(|| NOW)))
}

// ----- paths ------------------------------------------------------------------------------

/// The API path of a namespaced object.
pub fn path(kind: Kind, name: &str) -> String {
    let (group, version, _, plural) = kind.coordinates();
    let root = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
    format!("{root}/namespaces/{NAMESPACE}/{plural}/{name}")
}

/// Reads an API path back: kind, name and subresource.
fn parse_path(path: &str) -> Option<(Kind, String, Option<String>)> {
    let rest = path.strip_prefix("/api/").map(|r| ("", r)).or_else(|| path.strip_prefix("/apis/").map(|r| ("g", r)))?;
    let mut parts: Vec<&str> = rest.1.split('/').collect();
    let group = if rest.0.is_empty() { "" } else { parts.remove(0) };
    let version = parts.remove(0);
    if parts.first() != Some(&"namespaces") || parts.len() < 4 {
        return None;
    }
    let (plural, name) = (parts[2], parts[3]);
    let kind = Kind::ALL.into_iter().find(|k| {
        let (g, v, _, p) = k.coordinates();
        g == group && v == version && p == plural
    })?;
    Some((kind, name.to_string(), parts.get(4).map(|s| s.to_string())))
}

// ----- the scripted API server ----------------------------------------------------------

type Check = Box<dyn FnOnce(&Value) + Send>;

/// One expected request and its answer.
pub struct Exchange {
    method: Method,
    path: String,
    query: Vec<String>,
    checks: Vec<Check>,
    status: StatusCode,
    answer: Answer,
}

enum Answer {
    /// The request body with the API server's metadata added.
    Echo {
        generation: i64,
    },
    Json(Value),
}

impl fmt::Debug for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

impl Exchange {
    fn new(method: Method, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            checks: Vec::new(),
            status: StatusCode::OK,
            answer: Answer::Json(json!({})),
        }
    }

    /// A server-side apply of an object, answered with the object.
    pub fn apply(kind: Kind, name: &str) -> Self {
        let mut exchange = Self::new(Method::PATCH, path(kind, name));
        exchange.query = vec![format!("fieldManager={FIELD_MANAGER}"), "force=true".to_string()];
        exchange.answer = Answer::Echo { generation: 1 };
        exchange
    }

    /// The labeler's server-side apply of a Revision's routing state
    /// (`active`, `reserve`…), under its own field manager.
    pub fn routing_state(revision: &str, state: &'static str) -> Self {
        let mut exchange = Self::apply(Kind::Revision, revision);
        exchange.query = vec![format!("fieldManager={}", crate::gc::LABELER_FIELD_MANAGER), "force=true".to_string()];
        exchange
            .expect_at("/metadata/labels/serving.knative.dev~1routingState", json!(state))
            .expect(|body| assert!(body.get("spec").is_none(), "the labeler writes metadata only: {body:#}"))
    }

    /// A server-side apply of a status subresource.
    pub fn status(kind: Kind, name: &str) -> Self {
        let mut exchange = Self::apply(kind, name);
        exchange.path.push_str("/status");
        exchange
    }

    /// A merge patch of a Deployment's scale subresource.
    pub fn scale(revision: &str) -> Self {
        let mut exchange = Self::new(
            Method::PATCH,
            format!("{}/scale", path(Kind::Deployment, &revgate_istio::names::deployment(revision))),
        );
        exchange.query = vec![format!("fieldManager={FIELD_MANAGER}")];
        exchange.answer = Answer::Json(json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {}}));
        exchange
    }

    pub fn delete(kind: Kind, name: &str) -> Self {
        let mut exchange = Self::new(Method::DELETE, path(kind, name));
        exchange.answer = Answer::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
        exchange
    }

    pub fn request(method: Method, path: &str) -> Self {
        Self::new(method, path.to_string())
    }

    /// Checks the request body.
    pub fn expect(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.checks.push(Box::new(check));
        self
    }

    /// Checks that the body has `value` at a JSON pointer.
    pub fn expect_at(self, pointer: &'static str, value: Value) -> Self {
        self.expect(move |body| assert_eq!(body.pointer(pointer), Some(&value), "{pointer} in {body:#}"))
    }

    /// The generation the echoed object gets.
    pub fn generation(mut self, generation: i64) -> Self {
        self.answer = Answer::Echo { generation };
        self
    }

    pub fn respond(mut self, status: u16, body: Value) -> Self {
        self.status = StatusCode::from_u16(status).expect("an HTTP status");
        self.answer = Answer::Json(body);
        self
    }

    /// Answers with a Kubernetes `Status` failure.
    pub fn fail(self, code: u16, reason: &str, message: &str) -> Self {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason, "code": code});
        self.respond(code, status)
    }
}

/// Runs `script` against a client, in order. Every request must be the
/// next expected one; requests after the end of the script are answered
/// with a 500 and reported by [`Script::finish`].
pub fn scripted(script: Vec<Exchange>) -> (Client, Script) {
    scripted_over(&Snapshot::new(NAMESPACE), script)
}

/// [`scripted`] for a cluster holding `cluster`: an applied object is
/// answered with the status it has there, as an API server does.
pub fn scripted_over(cluster: &Snapshot, script: Vec<Exchange>) -> (Client, Script) {
    let cluster = cluster.clone();
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        for mut exchange in script {
            let Some((request, respond)) = handle.next_request().await else {
                panic!("expected {exchange:?}, but the client went away before sending it");
            };
            let (parts, body) = request.into_parts();
            let body = body.collect().await.expect("a request body").to_bytes();
            let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).expect("JSON") };
            let query = parts.uri.query().unwrap_or_default().to_string();
            assert_eq!(
                (&parts.method, parts.uri.path()),
                (&exchange.method, exchange.path.as_str()),
                "expected {exchange:?}, got {} {} with {body:#}",
                parts.method,
                parts.uri
            );
            for wanted in &exchange.query {
                assert!(query.split('&').any(|q| q == wanted), "{exchange:?}: {wanted} missing from {query:?}");
            }
            for check in exchange.checks.drain(..) {
                check(&body);
            }
            let answer = match exchange.answer {
                Answer::Echo { generation } => echo(&cluster, &parts.uri.to_string(), &body, generation),
                Answer::Json(value) => value,
            };
            respond.send_response(response(exchange.status, &answer));
        }
        let mut unexpected = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            unexpected.push(format!("{} {}", request.method(), request.uri()));
            respond.send_response(response(StatusCode::INTERNAL_SERVER_ERROR, &json!({})));
        }
        unexpected
    });
    (Client::new(service, NAMESPACE), Script { task })
}

/// The server side of [`scripted`].
#[derive(Debug)]
pub struct Script {
    task: JoinHandle<Vec<String>>,
}

impl Script {
    /// Waits until every exchange happened and the client is gone (drop
    /// every clone of it first), and fails on requests beyond the script.
    pub async fn finish(self) {
        match tokio::time::timeout(TIMEOUT, self.task).await {
            Ok(Ok(unexpected)) => assert!(unexpected.is_empty(), "requests beyond the script: {unexpected:#?}"),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("the scripted server failed: {e}"),
            Err(_) => panic!(
                "the script did not finish within {TIMEOUT:?}: a client clone is still alive, or a request never came"
            ),
        }
    }
}

/// Awaits `future` under the scenario timeout.
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future).await.expect("the code under test hung")
}

fn response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("JSON")))
        .expect("a response")
}

/// What an API server returns for an applied object: the object, with a
/// UID, a generation and a resourceVersion.
fn echo(cluster: &Snapshot, uri: &str, body: &Value, generation: i64) -> Value {
    let mut object = body.clone();
    let path = uri.split('?').next().unwrap_or_default();
    let Some((kind, name, subresource)) = parse_path(path) else { return object };
    if subresource.is_none()
        && let Some(status) = cluster.get(kind, &name).and_then(|o| o.data.get("status"))
    {
        object["status"] = status.clone();
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("uid".into(), json!(uid(kind, &name)));
        meta.insert("generation".into(), json!(generation));
        meta.insert("resourceVersion".into(), json!("2"));
    }
    object
}

// ----- the in-memory API server -----------------------------------------------------------

/// Runs `passes` reconciles of `snapshot`'s namespace against an in-memory
/// API server that applies every write (bumping generations on spec
/// changes, as the API server does), and returns the resulting objects.
/// Scenarios use it to start from the state a real cluster would reach.
pub async fn converge(snapshot: Snapshot, passes: usize) -> Snapshot {
    converge_with(snapshot, passes, RenderOptions::default()).await
}

/// [`converge`] with render options.
pub async fn converge_with(snapshot: Snapshot, passes: usize, options: RenderOptions) -> Snapshot {
    converge_in(snapshot, passes, move |client, current| context_with(client, current, options.clone())).await
}

/// [`converge`] with each pass's context made by `context` (a clock of the
/// test's, candidate figures…).
pub async fn converge_in(
    snapshot: Snapshot,
    passes: usize,
    context: impl Fn(Client, Snapshot) -> Arc<Context>,
) -> Snapshot {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let state = snapshot.clone();
    let server = tokio::spawn(async move {
        let mut state = state;
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.expect("a request body").to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let answer = store(&mut state, &parts.method, parts.uri.path(), body);
            respond.send_response(response(StatusCode::OK, &answer));
        }
        state
    });
    let client = Client::new(service, NAMESPACE);
    let mut current = snapshot;
    for _ in 0..passes {
        let ctx = context(client.clone(), current.clone());
        within(crate::reconcile::pass(&ctx, NAMESPACE)).await;
        drop(ctx);
        // The server's state is the truth; read it back through a probe pass.
        current = current_state(&client).await;
    }
    drop(client);
    within(server).await.expect("the in-memory server")
}

/// The in-memory server's state, as seen by the next pass. The server owns
/// it; a pass only sees what it wrote back into its own snapshot, so
/// between passes the caller rebuilds the snapshot from the server.
async fn current_state(client: &Client) -> Snapshot {
    let request = Request::builder().method(Method::GET).uri("/__state").body(Body::empty()).expect("a request");
    let response = client.send(request).await.expect("the state");
    let body = response.into_body().collect().await.expect("a body").to_bytes();
    let dump: StateDump = serde_json::from_slice(&body).expect("a state dump");
    let mut snapshot = Snapshot::new(NAMESPACE);
    snapshot.config_maps = dump.config_maps;
    for object in dump.objects {
        snapshot.insert(object);
    }
    snapshot
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StateDump {
    objects: Vec<DynamicObject>,
    config_maps: Vec<ConfigMap>,
}

/// Applies one request to the in-memory state and returns the answer.
fn store(state: &mut Snapshot, method: &Method, path: &str, body: Value) -> Value {
    if path == "/__state" {
        let objects = Kind::ALL.into_iter().flat_map(|k| state.all(k).cloned().collect::<Vec<_>>()).collect();
        return serde_json::to_value(StateDump { objects, config_maps: state.config_maps.clone() }).expect("a dump");
    }
    let Some((kind, name, subresource)) = parse_path(path) else { return json!({}) };
    let existing = state.get(kind, &name).map(|o| serde_json::to_value(o).expect("JSON"));
    match (method.as_str(), subresource.as_deref()) {
        ("DELETE", _) => {
            state.remove(kind, &name);
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})
        }
        ("PATCH", Some("status")) => {
            let mut object = existing.unwrap_or_else(|| Fixture::new(kind, &name).json());
            object["status"] = body.get("status").cloned().unwrap_or(Value::Null);
            state.insert(serde_json::from_value(object.clone()).expect("an object"));
            object
        }
        ("PATCH", Some("scale")) => {
            let mut object = existing.unwrap_or_else(|| Fixture::new(kind, &name).json());
            object["spec"]["replicas"] = body.pointer("/spec/replicas").cloned().unwrap_or(Value::Null);
            state.insert(serde_json::from_value(object).expect("an object"));
            json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": body["spec"]})
        }
        // An apply of metadata only (the labeler's field manager) keeps the rest.
        ("PATCH", None) if body.get("spec").is_none() && existing.as_ref().is_some_and(|e| e.get("spec").is_some()) => {
            let mut object = existing.unwrap_or_default();
            for field in ["labels", "annotations"] {
                if let Some(values) = body.pointer(&format!("/metadata/{field}")).and_then(Value::as_object) {
                    for (key, value) in values {
                        object["metadata"][field][key] = value.clone();
                    }
                }
            }
            // The labeler owns the routes annotation: leaving it out removes it.
            if body.pointer("/metadata/annotations/serving.knative.dev~1routes").is_none()
                && let Some(annotations) = object.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut)
            {
                annotations.remove("serving.knative.dev/routes");
            }
            state.insert(serde_json::from_value(object.clone()).expect("an object"));
            object
        }
        ("PATCH", None) => {
            let mut object = body.clone();
            let previous = existing.unwrap_or(Value::Null);
            let generation = previous.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            let changed = previous.get("spec") != body.get("spec");
            let meta = object["metadata"].as_object_mut().expect("metadata");
            meta.insert("uid".into(), previous.pointer("/metadata/uid").cloned().unwrap_or(json!(uid(kind, &name))));
            meta.insert("generation".into(), json!(if changed { generation + 1 } else { generation }));
            meta.insert("resourceVersion".into(), json!("2"));
            if let Some(status) = previous.get("status") {
                object["status"] = status.clone();
            }
            state.insert(serde_json::from_value(object.clone()).expect("an object"));
            object
        }
        _ => json!({}),
    }
}
