//! The fields each kind declares, as the Knative CRD schemas (and the core
//! `v1` ConfigMap) do, so that a misspelt field is an error rather than
//! silently ignored — `kubectl apply` with strict field validation behaves
//! the same. Where a schema keeps unknown fields
//! (`x-kubernetes-preserve-unknown-fields`: affinity, tolerations, several
//! volume sources…) anything goes, and the typed model keeps it verbatim.
//!
//! Only the shape is checked here (known names, JSON types); meaning is
//! checked by `validation`.

use serde_json::Value;

/// What a JSON value at some path must look like.
#[derive(Debug)]
pub(crate) enum Shape {
    Str,
    Int,
    Bool,
    /// `x-kubernetes-int-or-string` (probe ports).
    IntOrStr,
    /// A resource quantity: `250m`, `1Gi`, `2`, `0.5`.
    Quantity,
    /// Free keys, each value of the given shape (labels, resource limits).
    Map(&'static Shape),
    List(&'static Shape),
    /// An object with exactly these fields.
    Obj(&'static [(&'static str, &'static Shape)]),
    /// An object that keeps unknown fields; the listed ones are still checked.
    OpenObj(&'static [(&'static str, &'static Shape)]),
    /// Anything at all.
    Any,
}

use Shape::*;

static STRINGS: Shape = List(&Str);
static STRING_MAP: Shape = Map(&Str);

static OBJECT_META: Shape = Obj(&[
    ("name", &Str),
    ("namespace", &Str),
    ("labels", &STRING_MAP),
    ("annotations", &STRING_MAP),
    // Server-managed fields, present when a manifest was exported from a cluster.
    ("generateName", &Str),
    ("uid", &Str),
    ("resourceVersion", &Str),
    ("generation", &Int),
    ("creationTimestamp", &Str),
    ("deletionTimestamp", &Str),
    ("deletionGracePeriodSeconds", &Int),
    ("selfLink", &Str),
    ("finalizers", &STRINGS),
    ("ownerReferences", &List(&Any)),
    ("managedFields", &List(&Any)),
]);

static TEMPLATE_META: Shape = OpenObj(&[
    ("name", &Str),
    ("namespace", &Str),
    ("labels", &STRING_MAP),
    ("annotations", &STRING_MAP),
    ("finalizers", &STRINGS),
]);

static KEY_REF: Shape = Obj(&[("key", &Str), ("name", &Str), ("optional", &Bool)]);
static NAME_REF: Shape = Obj(&[("name", &Str), ("optional", &Bool)]);
static KEY_TO_PATH: Shape = Obj(&[("key", &Str), ("mode", &Int), ("path", &Str)]);

static ENV_VAR: Shape = Obj(&[
    ("name", &Str),
    ("value", &Str),
    (
        "valueFrom",
        &Obj(&[
            ("configMapKeyRef", &KEY_REF),
            ("secretKeyRef", &KEY_REF),
            ("fieldRef", &Any),
            ("resourceFieldRef", &Any),
        ]),
    ),
]);

static ENV_FROM: Shape = Obj(&[("configMapRef", &NAME_REF), ("prefix", &Str), ("secretRef", &NAME_REF)]);

static PROBE: Shape = Obj(&[
    ("exec", &Obj(&[("command", &STRINGS)])),
    ("failureThreshold", &Int),
    ("grpc", &Obj(&[("port", &Int), ("service", &Str)])),
    (
        "httpGet",
        &Obj(&[
            ("host", &Str),
            ("httpHeaders", &List(&Obj(&[("name", &Str), ("value", &Str)]))),
            ("path", &Str),
            ("port", &IntOrStr),
            ("scheme", &Str),
        ]),
    ),
    ("initialDelaySeconds", &Int),
    ("periodSeconds", &Int),
    ("successThreshold", &Int),
    ("tcpSocket", &Obj(&[("host", &Str), ("port", &IntOrStr)])),
    ("timeoutSeconds", &Int),
]);

static SECURITY_CONTEXT: Shape = Obj(&[
    ("allowPrivilegeEscalation", &Bool),
    ("capabilities", &Obj(&[("add", &STRINGS), ("drop", &STRINGS)])),
    ("privileged", &Bool),
    ("readOnlyRootFilesystem", &Bool),
    ("runAsGroup", &Int),
    ("runAsNonRoot", &Bool),
    ("runAsUser", &Int),
    ("seccompProfile", &Obj(&[("localhostProfile", &Str), ("type", &Str)])),
]);

static CONTAINER: Shape = Obj(&[
    ("args", &STRINGS),
    ("command", &STRINGS),
    ("env", &List(&ENV_VAR)),
    ("envFrom", &List(&ENV_FROM)),
    ("image", &Str),
    ("imagePullPolicy", &Str),
    ("livenessProbe", &PROBE),
    ("name", &Str),
    ("ports", &List(&Obj(&[("containerPort", &Int), ("name", &Str), ("protocol", &Str)]))),
    ("readinessProbe", &PROBE),
    ("resources", &Obj(&[("limits", &Map(&Quantity)), ("requests", &Map(&Quantity))])),
    ("securityContext", &SECURITY_CONTEXT),
    ("startupProbe", &PROBE),
    ("terminationMessagePath", &Str),
    ("terminationMessagePolicy", &Str),
    (
        "volumeMounts",
        &List(&Obj(&[
            ("mountPath", &Str),
            ("mountPropagation", &Str),
            ("name", &Str),
            ("readOnly", &Bool),
            ("subPath", &Str),
        ])),
    ),
    ("workingDir", &Str),
]);

static PROJECTED_SOURCE: Shape = Obj(&[
    ("configMap", &Obj(&[("items", &List(&KEY_TO_PATH)), ("name", &Str), ("optional", &Bool)])),
    (
        "downwardAPI",
        &Obj(&[(
            "items",
            &List(&Obj(&[
                ("fieldRef", &Obj(&[("apiVersion", &Str), ("fieldPath", &Str)])),
                ("mode", &Int),
                ("path", &Str),
                ("resourceFieldRef", &Obj(&[("containerName", &Str), ("divisor", &Quantity), ("resource", &Str)])),
            ])),
        )]),
    ),
    ("secret", &Obj(&[("items", &List(&KEY_TO_PATH)), ("name", &Str), ("optional", &Bool)])),
    ("serviceAccountToken", &Obj(&[("audience", &Str), ("expirationSeconds", &Int), ("path", &Str)])),
]);

static VOLUME: Shape = Obj(&[
    ("configMap", &Obj(&[("defaultMode", &Int), ("items", &List(&KEY_TO_PATH)), ("name", &Str), ("optional", &Bool)])),
    ("csi", &Any),
    ("emptyDir", &Any),
    ("ephemeral", &Any),
    ("hostPath", &Any),
    ("image", &Any),
    ("name", &Str),
    ("persistentVolumeClaim", &Any),
    ("projected", &Obj(&[("defaultMode", &Int), ("sources", &List(&PROJECTED_SOURCE))])),
    (
        "secret",
        &Obj(&[("defaultMode", &Int), ("items", &List(&KEY_TO_PATH)), ("optional", &Bool), ("secretName", &Str)]),
    ),
]);

static REVISION_SPEC: Shape = Obj(&[
    ("affinity", &Any),
    ("automountServiceAccountToken", &Bool),
    ("containerConcurrency", &Int),
    ("containers", &List(&CONTAINER)),
    ("dnsConfig", &Any),
    ("dnsPolicy", &Str),
    ("enableServiceLinks", &Bool),
    ("hostAliases", &List(&Any)),
    ("hostIPC", &Bool),
    ("hostNetwork", &Bool),
    ("hostPID", &Bool),
    ("idleTimeoutSeconds", &Int),
    ("imagePullSecrets", &List(&Obj(&[("name", &Str)]))),
    ("initContainers", &List(&Any)),
    ("nodeSelector", &STRING_MAP),
    ("priorityClassName", &Str),
    ("responseStartTimeoutSeconds", &Int),
    ("runtimeClassName", &Str),
    ("schedulerName", &Str),
    ("securityContext", &Any),
    ("serviceAccountName", &Str),
    ("shareProcessNamespace", &Bool),
    ("timeoutSeconds", &Int),
    ("tolerations", &List(&Any)),
    ("topologySpreadConstraints", &List(&Any)),
    ("volumes", &List(&VOLUME)),
]);

static TEMPLATE: Shape = Obj(&[("metadata", &TEMPLATE_META), ("spec", &REVISION_SPEC)]);

static TRAFFIC: Shape = List(&Obj(&[
    ("configurationName", &Str),
    ("latestRevision", &Bool),
    ("percent", &Int),
    ("revisionName", &Str),
    ("tag", &Str),
    ("url", &Str),
]));

/// Whole objects. `status` is accepted (exported manifests carry it) and ignored.
pub(crate) static SERVICE: Shape = Obj(&[
    ("apiVersion", &Str),
    ("kind", &Str),
    ("metadata", &OBJECT_META),
    ("spec", &Obj(&[("template", &TEMPLATE), ("traffic", &TRAFFIC)])),
    ("status", &Any),
]);
pub(crate) static CONFIGURATION: Shape = Obj(&[
    ("apiVersion", &Str),
    ("kind", &Str),
    ("metadata", &OBJECT_META),
    ("spec", &Obj(&[("template", &TEMPLATE)])),
    ("status", &Any),
]);
pub(crate) static ROUTE: Shape = Obj(&[
    ("apiVersion", &Str),
    ("kind", &Str),
    ("metadata", &OBJECT_META),
    ("spec", &Obj(&[("traffic", &TRAFFIC)])),
    ("status", &Any),
]);
/// `serving.knative.dev/v1beta1` DomainMapping (`domainmapping-crd.yaml`).
pub(crate) static DOMAIN_MAPPING: Shape = Obj(&[
    ("apiVersion", &Str),
    ("kind", &Str),
    ("metadata", &OBJECT_META),
    (
        "spec",
        &Obj(&[
            (
                "ref",
                &Obj(&[
                    ("address", &Str),
                    ("apiVersion", &Str),
                    ("group", &Str),
                    ("kind", &Str),
                    ("name", &Str),
                    ("namespace", &Str),
                ]),
            ),
            ("tls", &Obj(&[("secretName", &Str)])),
        ]),
    ),
    ("status", &Any),
]);
pub(crate) static CONFIG_MAP: Shape = Obj(&[
    ("apiVersion", &Str),
    ("kind", &Str),
    ("metadata", &OBJECT_META),
    ("data", &STRING_MAP),
    ("binaryData", &STRING_MAP),
    ("immutable", &Bool),
]);

/// Checks `value` against `shape`, appending `(path, message)` for every
/// problem. `null` is accepted anywhere: Kubernetes treats it as absent.
pub(crate) fn check(shape: &Shape, value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    if value.is_null() {
        return;
    }
    let mismatch = |want: &str, out: &mut Vec<(String, String)>| {
        out.push((path.to_string(), format!("expected {want}, got {}", describe(value))));
    };
    match shape {
        Any => {}
        Str => {
            if !value.is_string() {
                mismatch("a string", out);
            }
        }
        Int => {
            if !(value.is_i64() || value.is_u64()) {
                mismatch("an integer", out);
            }
        }
        Bool => {
            if !value.is_boolean() {
                mismatch("a boolean", out);
            }
        }
        IntOrStr => {
            if !(value.is_i64() || value.is_u64() || value.is_string()) {
                mismatch("an integer or a string", out);
            }
        }
        Quantity => {
            if !(value.is_number() || value.is_string()) {
                mismatch("a quantity such as \"250m\" or \"1Gi\"", out);
            }
        }
        Map(inner) => match value.as_object() {
            Some(map) => {
                for (k, v) in map {
                    check(inner, v, &format!("{path}[{k}]"), out);
                }
            }
            None => mismatch("an object", out),
        },
        List(inner) => match value.as_array() {
            Some(items) => {
                for (i, v) in items.iter().enumerate() {
                    check(inner, v, &format!("{path}[{i}]"), out);
                }
            }
            None => mismatch("a list", out),
        },
        Obj(fields) | OpenObj(fields) => match value.as_object() {
            Some(map) => {
                for (k, v) in map {
                    let child = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    match fields.iter().find(|(name, _)| name == k) {
                        Some((_, inner)) => check(inner, v, &child, out),
                        None if matches!(shape, OpenObj(_)) => {}
                        None => out.push((child, "unknown field".to_string())),
                    }
                }
            }
            None => mismatch("an object", out),
        },
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(shape: &Shape, value: Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        check(shape, &value, "", &mut out);
        out
    }

    #[test]
    fn unknown_fields_are_reported_with_their_path() {
        let got = problems(
            &SERVICE,
            json!({"spec": {"template": {"spec": {"containers": [{"image": "x", "imagee": "y"}]}}}}),
        );
        assert_eq!(got, vec![("spec.template.spec.containers[0].imagee".into(), "unknown field".into())]);
    }

    #[test]
    fn preserved_parts_accept_anything() {
        let got = problems(
            &SERVICE,
            json!({"spec": {"template": {
                "metadata": {"whatever": 1},
                "spec": {"affinity": {"nodeAffinity": {"x": 1}}, "volumes": [{"name": "v", "emptyDir": {"medium": "Memory"}}]}
            }}}),
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn types_are_checked() {
        let got = problems(&ROUTE, json!({"spec": {"traffic": [{"percent": "50"}]}}));
        assert_eq!(got, vec![("spec.traffic[0].percent".into(), "expected an integer, got string \"50\"".into())]);
    }
}
