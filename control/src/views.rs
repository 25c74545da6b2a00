//! Knative's internal objects, built from revgate's state so that `revgate
//! get kpa|sks -o yaml` reads like `kubectl get` on a Knative cluster: a
//! `PodAutoscaler` per revision (the KPA's decision) and a
//! `ServerlessService` per revision (whether the gateway holds its requests).
//! Pure builders.

use revgate_model::plan::ObjectKey;
use serde_json::{Value, json};

use crate::autoscaling::KpaStatus;

fn condition(kind: &str, status: &str, reason: Option<&str>, message: Option<&str>) -> Value {
    let mut condition = json!({ "type": kind, "status": status });
    if let Some(reason) = reason {
        condition["reason"] = json!(reason);
    }
    if let Some(message) = message {
        condition["message"] = json!(message);
    }
    condition
}

fn labels(key: &ObjectKey, configuration: &str, service: Option<&str>) -> Value {
    let mut labels = json!({
        "serving.knative.dev/revision": key.name,
        "serving.knative.dev/configuration": configuration,
    });
    if let Some(service) = service {
        labels["serving.knative.dev/service"] = json!(service);
    }
    labels
}

/// `autoscaling.internal.knative.dev/v1alpha1` PodAutoscaler. `Ready`
/// follows `Active`, as in Knative once the gateway (its SKS) is programmed.
pub fn pod_autoscaler(key: &ObjectKey, status: &KpaStatus) -> Value {
    let reason = status.reason.as_deref();
    let message = status.message.as_deref();
    json!({
        "apiVersion": "autoscaling.internal.knative.dev/v1alpha1",
        "kind": "PodAutoscaler",
        "metadata": {
            "name": key.name,
            "namespace": key.namespace,
            "labels": labels(key, &status.configuration, status.service.as_deref()),
        },
        "spec": {
            "reachability": if status.reachable { "Reachable" } else { "Unreachable" },
            "protocolType": "http1",
        },
        "status": {
            "desiredScale": status.desired_scale,
            "actualScale": status.actual_scale,
            "requestedScale": status.requested_scale,
            "metric": status.metric,
            "target": status.target,
            "observedStableValue": status.observed_stable_value,
            "observedPanicValue": status.observed_panic_value,
            "panicking": status.panicking,
            "excessBurstCapacity": status.excess_burst_capacity,
            "conditions": [
                condition("Active", &status.active, reason, message),
                condition("Ready", &status.active, reason, message),
            ],
        },
    })
}

/// `networking.internal.knative.dev/v1alpha1` ServerlessService. Mode is
/// `Proxy` while the gateway holds the revision's requests (it has no
/// endpoints there), `Serve` while it sends them to its instances.
pub fn serverless_service(key: &ObjectKey, endpoints: u32, held: u64) -> Value {
    // Ready in both modes, as Knative's SKS is once the activators (here,
    // the gateway filters) are in the path.
    let (mode, ready) = if endpoints > 0 {
        ("Serve", condition("Ready", "True", None, None))
    } else {
        ("Proxy", condition("Ready", "True", None, Some("the gateway holds requests until an instance is ready")))
    };
    json!({
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "ServerlessService",
        "metadata": { "name": key.name, "namespace": key.namespace },
        "spec": { "mode": mode },
        "status": { "endpoints": endpoints, "heldRequests": held, "conditions": [ready] },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serverless_service_mode_follows_the_gateway() {
        let key = ObjectKey::new("default", "hello-00001");
        let cold = serverless_service(&key, 0, 3);
        assert_eq!(cold["spec"]["mode"], "Proxy");
        assert_eq!(cold["status"]["heldRequests"], 3);
        assert_eq!(cold["status"]["conditions"][0]["status"], "True");
        let warm = serverless_service(&key, 2, 0);
        assert_eq!(warm["spec"]["mode"], "Serve");
        assert_eq!(warm["status"]["conditions"][0]["status"], "True");
    }

    #[test]
    fn pod_autoscaler_shows_the_decision() {
        let key = ObjectKey::new("default", "hello-00001");
        let status = KpaStatus {
            configuration: "hello".into(),
            desired_scale: Some(3),
            actual_scale: 2,
            active: "True".into(),
            reachable: true,
            ..KpaStatus::default()
        };
        let pa = pod_autoscaler(&key, &status);
        assert_eq!(pa["status"]["desiredScale"], 3);
        assert_eq!(pa["status"]["actualScale"], 2);
        assert_eq!(pa["spec"]["reachability"], "Reachable");
        assert_eq!(pa["metadata"]["labels"]["serving.knative.dev/configuration"], "hello");
    }
}
