//! A revision's pods as a Kubernetes Deployment, as Knative's
//! `MakeDeployment` builds it, without the queue-proxy.
//!
//! In Knative every pod carries a queue-proxy sidecar: it enforces
//! `containerConcurrency`, reports concurrency to the autoscaler, runs the
//! readiness probe aggressively and drains on shutdown. In revgate the filter
//! in the ingress gateway does the first two for every revision at once, so
//! the pods run only the user's containers and the gateway reaches them
//! directly through the revision's Service ([`crate::service`]).
//!
//! What changes because the sidecar is gone:
//!
//! | Knative | revgate |
//! |---|---|
//! | the queue-proxy runs the user's HTTP/TCP/gRPC readiness probe | the kubelet runs it, on the user port |
//! | probes every ~25ms until ready when `periodSeconds` is unset | `periodSeconds: 1`, the kubelet's floor, so a cold pod is ready within a second of listening |
//! | a `preStop` hook waits for the queue-proxy to drain | no hook; the pod gets `timeoutSeconds` to finish its requests |
//! | pods selected by `serving.knative.dev/revisionUID` | by `serving.knative.dev/revision` (the name is known without a cluster, and a selector can never change) |
//!
//! Everything else follows Knative: the serving container's single port
//! named `user-port`, `PORT` and the `K_*` variables, `enableServiceLinks:
//! false`, `terminationGracePeriodSeconds` = `timeoutSeconds`, a rolling
//! update that never takes a ready pod away first, and no old ReplicaSets.
//!
//! `replicas` is the revision's initial scale (`initial-scale`, else
//! `config-autoscaler`'s). After creation the autoscaler owns it (it raises
//! the count to `min-scale`, as Knative's does on its first decision), so an
//! applier must not reset it on update.

use std::collections::BTreeMap;

use revgate_model::autoscaling::{ANNOTATION_GROUP, RevisionScaling, parse_go_duration};
use revgate_model::resources::{Container, ContainerPort, EnvVar, Revision};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::meta::{ObjectMeta, OwnerKind};
use crate::options::RenderOptions;
use crate::{names, revision};

pub const API_VERSION: &str = "apps/v1";
pub const KIND: &str = "Deployment";

/// Name of the serving container's only port.
pub const USER_PORT_NAME: &str = "user-port";
/// The variable that tells the serving container which port to listen on.
pub const PORT_ENV: &str = "PORT";
/// Pod annotation naming the container `kubectl logs` and `exec` pick.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// Revision annotation overriding the progress deadline (a Go duration).
pub const PROGRESS_DEADLINE_ANNOTATION: &str = "serving.knative.dev/progress-deadline";
/// Revision annotations that describe routing or garbage collection, not the pods.
pub const EXCLUDED_ANNOTATIONS: [&str; 4] = [
    "serving.knative.dev/lastPinned",
    "serving.knative.dev/no-gc",
    "serving.knative.dev/routingStateModified",
    "serving.knative.dev/routes",
];
/// Knative's `revision-timeout-seconds` default, for a revision stored
/// without a timeout (the model defaults it at apply, so this is a fallback).
const DEFAULT_TIMEOUT_SECONDS: i64 = 300;
/// The kubelet's shortest probe period.
const MIN_PROBE_PERIOD_SECONDS: i64 = 1;

/// `apps/v1` Deployment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: DeploymentSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    pub replicas: u32,
    pub selector: LabelSelector,
    pub progress_deadline_seconds: u32,
    /// 0: a revision never changes, so old ReplicaSets are never rolled back to.
    pub revision_history_limit: u32,
    pub strategy: DeploymentStrategy,
    pub template: PodTemplateSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStrategy {
    #[serde(rename = "type")]
    pub type_: String,
    pub rolling_update: RollingUpdate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    pub max_unavailable: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodTemplateSpec {
    pub metadata: PodMeta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodMeta {
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The pod spec: the revision's own pod-spec fields, its containers as
/// Knative rewrites them, and the grace period.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub containers: Vec<Container>,
    pub termination_grace_period_seconds: i64,
    /// `volumes`, `serviceAccountName`, `enableServiceLinks`…, as the revision has them.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The pod annotation that makes Istio keep a sidecar's inbound request
/// stats (by default a sidecar exports only a minimal set of Envoy stats).
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";
/// Its value on revision pods: the two stats of every inbound cluster that
/// cluster mode's KPA scrapes (`revgate-kube`'s `scrape`), nothing else. A
/// revision that sets `proxy.istio.io/config` itself keeps its own, which
/// should include them.
pub const SIDECAR_STATS_INCLUSION: &str =
    r#"{"proxyStatsMatcher":{"inclusionRegexps":["cluster\\.inbound\\|.*\\.upstream_rq_(active|total)"]}}"#;

/// The Deployment of one revision. `scaling` is the revision's resolved
/// autoscaling (`World::revision_scaling`); only its initial scale is used.
pub fn deployment(revision: &Revision, scaling: &RevisionScaling, options: &RenderOptions) -> Deployment {
    let meta = &revision.metadata;
    let labels = revision::labels(revision, &options.owner_uids);
    let annotations: BTreeMap<String, String> = meta
        .annotations
        .iter()
        .filter(|(k, _)| !EXCLUDED_ANNOTATIONS.contains(&k.as_str()) && !k.starts_with(ANNOTATION_GROUP))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut pod_annotations = annotations.clone();
    // The KPA in cluster mode scrapes these stats from the pod's sidecar.
    pod_annotations.entry(PROXY_CONFIG_ANNOTATION.to_string()).or_insert_with(|| SIDECAR_STATS_INCLUSION.to_string());
    if let Some(serving) = revision.spec.serving_container().filter(|c| !c.name.is_empty()) {
        pod_annotations.insert(DEFAULT_CONTAINER_ANNOTATION.to_string(), serving.name.clone());
    }
    Deployment {
        api_version: API_VERSION.to_string(),
        kind: KIND.to_string(),
        metadata: ObjectMeta {
            name: names::deployment(&meta.name),
            namespace: meta.namespace.clone(),
            labels: labels.clone(),
            annotations,
            owner_references: options.owner_uids.controller_ref(OwnerKind::Revision, &meta.key()).into_iter().collect(),
        },
        spec: DeploymentSpec {
            replicas: scaling.initial_scale,
            selector: LabelSelector { match_labels: revision::selector(revision) },
            progress_deadline_seconds: progress_deadline_seconds(revision, options),
            revision_history_limit: 0,
            strategy: DeploymentStrategy {
                type_: "RollingUpdate".to_string(),
                rolling_update: RollingUpdate { max_unavailable: 0 },
            },
            template: PodTemplateSpec {
                metadata: PodMeta { labels, annotations: pod_annotations },
                spec: pod_spec(revision),
            },
        },
    }
}

/// `serving.knative.dev/progress-deadline` in whole seconds, else the option.
fn progress_deadline_seconds(revision: &Revision, options: &RenderOptions) -> u32 {
    revision
        .metadata
        .annotations
        .get(PROGRESS_DEADLINE_ANNOTATION)
        .and_then(|v| parse_go_duration(v.trim()))
        .and_then(|nanos| u32::try_from(nanos / 1_000_000_000).ok())
        .filter(|secs| *secs > 0)
        .unwrap_or(options.progress_deadline_seconds)
}

fn pod_spec(revision: &Revision) -> PodSpec {
    let spec = &revision.spec;
    let mut extra = spec.extra.clone();
    // Both are set below; the revision must not carry a second copy.
    extra.remove("containers");
    extra.remove("terminationGracePeriodSeconds");
    // Knative's `enable-service-links: false`: one environment variable per
    // Service in the namespace slows pod start and leaks names.
    extra.entry("enableServiceLinks".to_string()).or_insert(Value::Bool(false));
    PodSpec {
        containers: containers(revision),
        termination_grace_period_seconds: spec.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS),
        extra,
    }
}

/// The revision's containers as Knative's `BuildUserContainers` rewrites
/// them: the serving one (the one with a port, or the only one) gets the
/// single `user-port` and `PORT`; all get the `K_*` variables.
fn containers(revision: &Revision) -> Vec<Container> {
    let spec = &revision.spec;
    let user_port = revision::user_port(spec);
    let single = spec.containers.len() == 1;
    spec.containers
        .iter()
        .map(|original| {
            let mut container = original.clone();
            if single || !container.ports.is_empty() {
                container.ports = vec![ContainerPort {
                    name: USER_PORT_NAME.to_string(),
                    container_port: Some(i64::from(user_port)),
                    protocol: None,
                }];
                container.env.push(env(PORT_ENV, user_port.to_string()));
                container.readiness_probe = Some(readiness_probe(container.readiness_probe.take(), user_port));
                if let Some(liveness) = container.extra.get_mut("livenessProbe") {
                    point_at_user_port(liveness, user_port);
                }
            }
            container.env.extend(revision::knative_env(revision).map(|(name, value)| env(name, value)));
            container
                .extra
                .entry("terminationMessagePolicy".to_string())
                .or_insert_with(|| Value::String("FallbackToLogsOnError".to_string()));
            container
        })
        .collect()
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value), value_from: None }
}

/// The serving container's readiness probe, run by the kubelet: the user's
/// (a TCP connect to the user port if none), on the user port, checked
/// every second unless the user chose a period.
fn readiness_probe(user: Option<Value>, user_port: u16) -> Value {
    let mut probe = match user {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    if !["tcpSocket", "httpGet", "exec", "grpc"].iter().any(|k| probe.contains_key(*k)) {
        probe.insert("tcpSocket".to_string(), json!({}));
    }
    let unset = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0) == 0;
    if unset(probe.get("successThreshold")) {
        probe.insert("successThreshold".to_string(), json!(1));
    }
    if unset(probe.get("periodSeconds")) {
        probe.insert("periodSeconds".to_string(), json!(MIN_PROBE_PERIOD_SECONDS));
    }
    let mut probe = Value::Object(probe);
    point_at_user_port(&mut probe, user_port);
    probe
}

/// HTTP and TCP probes of the serving container always target the user
/// port, as Knative rewrites them; a gRPC probe gets it when it names none.
fn point_at_user_port(probe: &mut Value, user_port: u16) {
    for action in ["httpGet", "tcpSocket"] {
        if let Some(Value::Object(action)) = probe.get_mut(action) {
            action.insert("port".to_string(), json!(user_port));
        }
    }
    if let Some(Value::Object(grpc)) = probe.get_mut("grpc") {
        let port = grpc.get("port").and_then(Value::as_i64).unwrap_or(0);
        if port == 0 {
            grpc.insert("port".to_string(), json!(user_port));
        }
    }
}
