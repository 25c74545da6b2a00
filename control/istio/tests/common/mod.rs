//! Fixtures shared by the Istio renderer's tests: Knative's samples, the
//! Istio CRD schemas made strict, and minimal strict Kubernetes schemas.
#![allow(dead_code)]

use std::collections::BTreeMap;

use revgate_istio::{Object, RenderOptions, render};
use revgate_model::World;
use serde_json::{Value, json};

/// The model's fixtures: the shared folder, Knative's samples, parsing.
#[path = "../../../model/tests/common/mod.rs"]
mod model;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use model::{NOW, parse, sample, samples, shared_dir};

pub fn apply(world: &World, yaml: &str) -> World {
    world.apply(&parse(yaml), NOW).unwrap_or_else(|e| panic!("apply failed:\n{e}")).0
}

pub fn sample_world(name: &str) -> World {
    apply(&World::default(), &sample(name))
}

pub fn to_json(objects: &[Object]) -> Vec<Value> {
    objects.iter().map(|o| serde_json::to_value(o).expect("objects serialize")).collect()
}

pub fn render_json(world: &World, options: &RenderOptions) -> Vec<Value> {
    to_json(&render(world, options))
}

/// The rendered objects of one kind.
pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

pub fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {objects:#?}"))
}

/// All YAML documents of a file, empty ones skipped.
pub fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|de| serde::Deserialize::deserialize(de).expect("valid YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

// ----- schemas ----------------------------------------------------------------------

/// Adds `additionalProperties: false` to every object schema that lists
/// properties and does not keep unknown fields, so invented or misspelt
/// fields fail (the API server would silently prune them; see
/// shared/istio/SOURCE.md).
pub fn make_strict(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let keeps_unknown = object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if object.contains_key("properties") && !keeps_unknown && !object.contains_key("additionalProperties") {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    for value in object.values_mut() {
        match value {
            Value::Object(_) => make_strict(value),
            Value::Array(items) => items.iter_mut().for_each(make_strict),
            _ => {}
        }
    }
}

/// Validates whole objects of one `apiVersion` and `kind`.
pub struct KindSchema {
    pub api_version: String,
    spec: jsonschema::Validator,
    /// Whole-object schema (Kubernetes kinds); CRDs only describe `spec`.
    whole: Option<jsonschema::Validator>,
}

impl KindSchema {
    /// Every problem with an object, as `path: message`.
    pub fn errors(&self, object: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        if object["apiVersion"] != self.api_version.as_str() {
            errors.push(format!("apiVersion {} is not {}", object["apiVersion"], self.api_version));
        }
        let describe = |e: jsonschema::ValidationError<'_>| format!("{}: {e}", e.instance_path());
        match &self.whole {
            Some(whole) => errors.extend(whole.iter_errors(object).map(describe)),
            None => {
                errors
                    .extend(self.spec.iter_errors(&object["spec"]).map(|e| format!("spec{}: {e}", e.instance_path())));
                let meta = metadata_validator();
                errors.extend(
                    meta.iter_errors(&object["metadata"]).map(|e| format!("metadata{}: {e}", e.instance_path())),
                );
                let top: Vec<&String> = object.as_object().map(|o| o.keys().collect()).unwrap_or_default();
                for key in top {
                    if !["apiVersion", "kind", "metadata", "spec"].contains(&key.as_str()) {
                        errors.push(format!("unexpected top-level field {key:?}"));
                    }
                }
            }
        }
        errors
    }
}

/// Schemas by kind: VirtualService (v1beta1) and WasmPlugin (v1alpha1) from
/// Istio's CRDs, Deployment and Service from [`kubernetes_schemas`].
pub fn schemas() -> BTreeMap<String, KindSchema> {
    let path = shared_dir("istio").join("istio-crds.yaml");
    let text = std::fs::read_to_string(&path).expect("Istio CRDs readable");
    let mut schemas = BTreeMap::new();
    for crd in yaml_documents(&text) {
        let kind = crd["spec"]["names"]["kind"].as_str().expect("CRD kind").to_string();
        let version = match kind.as_str() {
            "VirtualService" => "v1beta1",
            "WasmPlugin" => "v1alpha1",
            _ => continue,
        };
        let group = crd["spec"]["group"].as_str().expect("CRD group");
        let versions = crd["spec"]["versions"].as_array().expect("CRD versions");
        let served = versions.iter().find(|v| v["name"] == version).expect("version served");
        let mut spec = served["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
        make_strict(&mut spec);
        let spec = jsonschema::draft4::new(&spec).expect("CRD schema compiles");
        schemas.insert(kind, KindSchema { api_version: format!("{group}/{version}"), spec, whole: None });
    }
    assert_eq!(schemas.len(), 2, "VirtualService and WasmPlugin CRDs");
    for (kind, api_version, mut schema) in kubernetes_schemas() {
        make_strict(&mut schema);
        let whole = jsonschema::draft7::new(&schema).expect("Kubernetes schema compiles");
        let spec = jsonschema::draft7::new(&json!({})).expect("empty schema");
        schemas.insert(kind.to_string(), KindSchema { api_version: api_version.to_string(), spec, whole: Some(whole) });
    }
    schemas
}

/// Asserts that an object matches its kind's schema.
pub fn assert_valid(schemas: &BTreeMap<String, KindSchema>, what: &str, object: &Value) {
    let kind = object["kind"].as_str().unwrap_or_default();
    let schema = schemas.get(kind).unwrap_or_else(|| panic!("{what}: no schema for kind {kind:?}"));
    let errors = schema.errors(object);
    assert!(errors.is_empty(), "{what}: {kind} does not match its schema:\n{}\n{object:#}", errors.join("\n"));
}

/// Metadata of a custom resource (VirtualService, WasmPlugin): the API
/// server checks their names as DNS-1123 subdomains, so a DomainMapping's
/// `example.org-ingress` is valid there, unlike a Service's name.
fn metadata_validator() -> jsonschema::Validator {
    let mut schema = object_meta();
    schema["properties"]["name"] = json!({"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN});
    make_strict(&mut schema);
    jsonschema::draft7::new(&schema).expect("metadata schema compiles")
}

// ----- minimal Kubernetes schemas ------------------------------------------------------
//
// No Kubernetes OpenAPI schema ships in shared/, so these are written from the
// Kubernetes API reference (core/v1 Service, Container, Probe; apps/v1
// Deployment): every field a Deployment or Service may have is listed, so a
// misspelt or invented one fails, and the fields revgate sets are typed.

const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const DNS_SUBDOMAIN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const LABEL_VALUE: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
const QUALIFIED_NAME: &str =
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";

fn string_map(values: Value) -> Value {
    json!({"type": "object", "propertyNames": {"pattern": QUALIFIED_NAME}, "additionalProperties": values})
}

fn labels() -> Value {
    string_map(json!({"type": "string", "maxLength": 63, "pattern": LABEL_VALUE}))
}

fn object_meta() -> Value {
    json!({
        "type": "object",
        "required": ["name", "namespace"],
        "properties": {
            "name": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
            "namespace": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
            "labels": labels(),
            "annotations": string_map(json!({"type": "string"})),
            "ownerReferences": {"type": "array", "items": {
                "type": "object",
                "required": ["apiVersion", "kind", "name", "uid"],
                "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"},
                    "uid": {"type": "string", "minLength": 1}, "controller": {"type": "boolean"},
                    "blockOwnerDeletion": {"type": "boolean"}
                }
            }}
        }
    })
}

fn int_or_string() -> Value {
    json!({"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string", "pattern": "^[a-z0-9-]{1,15}$"}]})
}

fn probe() -> Value {
    json!({
        "type": "object",
        "properties": {
            "exec": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}},
            "httpGet": {"type": "object", "required": ["port"], "properties": {
                "path": {"type": "string"}, "port": int_or_string(), "host": {"type": "string"},
                "scheme": {"enum": ["HTTP", "HTTPS"]},
                "httpHeaders": {"type": "array", "items": {"type": "object", "required": ["name", "value"],
                    "properties": {"name": {"type": "string"}, "value": {"type": "string"}}}}
            }},
            "tcpSocket": {"type": "object", "required": ["port"], "properties": {"port": int_or_string(), "host": {"type": "string"}}},
            "grpc": {"type": "object", "required": ["port"], "properties": {
                "port": {"type": "integer", "minimum": 1, "maximum": 65535}, "service": {"type": "string"}}},
            "initialDelaySeconds": {"type": "integer", "minimum": 0},
            "timeoutSeconds": {"type": "integer", "minimum": 1},
            "periodSeconds": {"type": "integer", "minimum": 1},
            "successThreshold": {"type": "integer", "minimum": 1},
            "failureThreshold": {"type": "integer", "minimum": 1},
            "terminationGracePeriodSeconds": {"type": "integer", "minimum": 1}
        }
    })
}

fn container() -> Value {
    let open = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let list = json!({"type": "array"});
    json!({
        "type": "object",
        "required": ["name", "image"],
        "properties": {
            "name": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
            "image": {"type": "string", "minLength": 1},
            "command": {"type": "array", "items": {"type": "string"}},
            "args": {"type": "array", "items": {"type": "string"}},
            "workingDir": {"type": "string"},
            "ports": {"type": "array", "items": {
                "type": "object", "required": ["containerPort"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9-]{1,15}$"},
                    "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                    "hostPort": {"type": "integer"}, "hostIP": {"type": "string"}
                }
            }},
            "envFrom": list,
            "env": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string", "minLength": 1}, "value": {"type": "string"}, "valueFrom": open}
            }},
            "resources": open, "resizePolicy": list, "restartPolicy": {"type": "string"}, "restartPolicyRules": list,
            "volumeMounts": {"type": "array", "items": {
                "type": "object", "required": ["name", "mountPath"],
                "properties": {
                    "name": {"type": "string"}, "mountPath": {"type": "string"}, "readOnly": {"type": "boolean"},
                    "subPath": {"type": "string"}, "subPathExpr": {"type": "string"},
                    "mountPropagation": {"type": "string"}, "recursiveReadOnly": {"type": "string"}
                }
            }},
            "volumeDevices": list,
            "livenessProbe": probe(), "readinessProbe": probe(), "startupProbe": probe(),
            "lifecycle": open,
            "terminationMessagePath": {"type": "string"},
            "terminationMessagePolicy": {"enum": ["File", "FallbackToLogsOnError"]},
            "imagePullPolicy": {"enum": ["Always", "Never", "IfNotPresent"]},
            "securityContext": open,
            "stdin": {"type": "boolean"}, "stdinOnce": {"type": "boolean"}, "tty": {"type": "boolean"}
        }
    })
}

fn pod_spec() -> Value {
    let open = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let typed = |t: &str| json!({"type": t});
    let mut properties = serde_json::Map::new();
    properties.insert("containers".into(), json!({"type": "array", "minItems": 1, "items": container()}));
    properties.insert(
        "volumes".into(),
        json!({"type": "array", "items": {"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": DNS_LABEL}}, "additionalProperties": open}}),
    );
    properties.insert("restartPolicy".into(), json!({"enum": ["Always", "OnFailure", "Never"]}));
    properties.insert("terminationGracePeriodSeconds".into(), json!({"type": "integer", "minimum": 0}));
    for name in ["activeDeadlineSeconds", "priority"] {
        properties.insert(name.into(), typed("integer"));
    }
    for name in [
        "dnsPolicy",
        "serviceAccountName",
        "serviceAccount",
        "nodeName",
        "hostname",
        "subdomain",
        "schedulerName",
        "priorityClassName",
        "runtimeClassName",
        "preemptionPolicy",
        "hostnameOverride",
    ] {
        properties.insert(name.into(), typed("string"));
    }
    for name in [
        "automountServiceAccountToken",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "shareProcessNamespace",
        "enableServiceLinks",
        "setHostnameAsFQDN",
        "hostUsers",
    ] {
        properties.insert(name.into(), typed("boolean"));
    }
    for name in [
        "initContainers",
        "ephemeralContainers",
        "imagePullSecrets",
        "tolerations",
        "hostAliases",
        "readinessGates",
        "topologySpreadConstraints",
        "schedulingGates",
        "resourceClaims",
    ] {
        properties.insert(name.into(), typed("array"));
    }
    for name in ["nodeSelector", "securityContext", "affinity", "dnsConfig", "overhead", "os", "resources"] {
        properties.insert(name.into(), open.clone());
    }
    json!({"type": "object", "required": ["containers"], "properties": properties})
}

/// `(kind, apiVersion, whole-object schema)` for Deployment and Service.
pub fn kubernetes_schemas() -> Vec<(&'static str, &'static str, Value)> {
    let deployment = json!({
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "apps/v1"},
            "kind": {"const": "Deployment"},
            "metadata": object_meta(),
            "spec": {
                "type": "object",
                "required": ["selector", "template"],
                "properties": {
                    "replicas": {"type": "integer", "minimum": 0},
                    "selector": {"type": "object", "required": ["matchLabels"], "properties": {"matchLabels": labels(), "matchExpressions": {"type": "array"}}},
                    "progressDeadlineSeconds": {"type": "integer", "minimum": 1},
                    "revisionHistoryLimit": {"type": "integer", "minimum": 0},
                    "minReadySeconds": {"type": "integer", "minimum": 0},
                    "paused": {"type": "boolean"},
                    "strategy": {"type": "object", "properties": {
                        "type": {"enum": ["RollingUpdate", "Recreate"]},
                        "rollingUpdate": {"type": "object", "properties": {
                            "maxUnavailable": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]},
                            "maxSurge": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}
                        }}
                    }},
                    "template": {"type": "object", "required": ["metadata", "spec"], "properties": {
                        "metadata": {"type": "object", "properties": {
                            "labels": labels(), "annotations": string_map(json!({"type": "string"}))
                        }},
                        "spec": pod_spec()
                    }}
                }
            }
        }
    });
    let service = json!({
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "v1"},
            "kind": {"const": "Service"},
            "metadata": object_meta(),
            "spec": {
                "type": "object",
                "required": ["ports"],
                "properties": {
                    "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
                    "selector": labels(),
                    "ports": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["port"],
                        "properties": {
                            "name": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
                            "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                            "appProtocol": {"type": "string"},
                            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "targetPort": int_or_string(),
                            "nodePort": {"type": "integer"}
                        }
                    }},
                    "externalName": {"type": "string", "minLength": 1},
                    "clusterIP": {"type": "string"}, "clusterIPs": {"type": "array"},
                    "sessionAffinity": {"enum": ["None", "ClientIP"]}, "publishNotReadyAddresses": {"type": "boolean"},
                    "ipFamilies": {"type": "array"}, "ipFamilyPolicy": {"type": "string"},
                    "internalTrafficPolicy": {"type": "string"}, "externalTrafficPolicy": {"type": "string"},
                    "trafficDistribution": {"type": "string"}
                }
            }
        }
    });
    vec![("Deployment", "apps/v1", deployment), ("Service", "v1", service)]
}
