//! A revision's Deployment and Service: Knative's shape without the
//! queue-proxy, scaled from the revision's autoscaling settings.

mod common;

use common::*;
use revgate_istio::deployment::{PROXY_CONFIG_ANNOTATION, SIDECAR_STATS_INCLUSION};
use revgate_istio::{OwnerKind, OwnerUids, RenderOptions, deployment, revision_service};
use revgate_model::World;
use revgate_model::plan::ObjectKey;
use serde_json::{Value, json};

fn deployment_json(world: &World, options: &RenderOptions) -> Value {
    let (key, revision) = world.revisions.iter().next().expect("one revision");
    let scaling = world.revision_scaling(key).expect("scaling");
    serde_json::to_value(deployment(revision, &scaling, options)).expect("json")
}

fn service_json(world: &World, options: &RenderOptions) -> Value {
    let revision = world.revisions.values().next().expect("one revision");
    serde_json::to_value(revision_service(revision, options)).expect("json")
}

#[test]
fn a_minimal_service_gets_knatives_deployment_without_a_queue_proxy() {
    let world = sample_world("helloworld-python-service.yaml");
    let got = deployment_json(&world, &RenderOptions::default());
    let labels = json!({
        "app": "helloworld-python-00001",
        "serving.knative.dev/configuration": "helloworld-python",
        "serving.knative.dev/configurationGeneration": "1",
        "serving.knative.dev/revision": "helloworld-python-00001",
        "serving.knative.dev/service": "helloworld-python"
    });
    let want = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "helloworld-python-00001-deployment", "namespace": "default", "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"serving.knative.dev/revision": "helloworld-python-00001"}},
            "progressDeadlineSeconds": 600,
            "revisionHistoryLimit": 0,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "kubectl.kubernetes.io/default-container": "user-container",
                        // What cluster mode's KPA scrapes from the pod's sidecar.
                        PROXY_CONFIG_ANNOTATION: SIDECAR_STATS_INCLUSION
                    }
                },
                "spec": {
                    "containers": [{
                        "name": "user-container",
                        "image": "docker.io/{username}/helloworld-python",
                        "env": [
                            {"name": "TARGET", "value": "Python Sample v1"},
                            {"name": "PORT", "value": "8080"},
                            {"name": "K_REVISION", "value": "helloworld-python-00001"},
                            {"name": "K_CONFIGURATION", "value": "helloworld-python"},
                            {"name": "K_SERVICE", "value": "helloworld-python"}
                        ],
                        "ports": [{"name": "user-port", "containerPort": 8080}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "successThreshold": 1, "periodSeconds": 1},
                        "terminationMessagePolicy": "FallbackToLogsOnError"
                    }],
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": 300
                }
            }
        }
    });
    assert_eq!(got, want, "\n{got:#}");
}

#[test]
fn the_revision_service_is_what_the_virtual_services_route_to() {
    let world = sample_world("helloworld-python-service.yaml");
    let got = service_json(&world, &RenderOptions::default());
    assert_eq!(got["metadata"]["name"], "helloworld-python-00001");
    assert_eq!(
        got["spec"],
        json!({
            "type": "ClusterIP",
            "selector": {"serving.knative.dev/revision": "helloworld-python-00001"},
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]
        })
    );
}

#[test]
fn h2c_revisions_get_an_http2_port() {
    let world = sample_world("serving-hellohttp2-service-h2c.yaml");
    let service = service_json(&world, &RenderOptions::default());
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "http2", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c", "port": 81, "targetPort": 8080}])
    );
    let plan = world.plan(&Default::default());
    assert_eq!(plan.revisions[0].protocol, revgate_model::plan::UpstreamProtocol::H2c, "the plan agrees");
    let container = &deployment_json(&world, &RenderOptions::default())["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"], json!([{"name": "user-port", "containerPort": 8080}]));
    // The user's probe is kept, on the user port, and checked every second.
    assert_eq!(
        container["readinessProbe"],
        json!({"httpGet": {"path": "/healthz", "port": 8080}, "successThreshold": 1, "periodSeconds": 1})
    );
}

#[test]
fn min_scale_is_left_to_the_autoscaler_and_initial_scale_sets_the_replicas() {
    // minScale 100: like Knative, the Deployment starts at the initial scale
    // (1) and the autoscaler raises it to min-scale on its first decision.
    let world = sample_world("serving-rollout-probe-queue-proxy-direct-minscale.yaml");
    let scaling = world.revision_scaling(world.revisions.keys().next().expect("revision")).expect("scaling");
    assert_eq!((scaling.min_scale, scaling.max_scale, scaling.initial_scale), (100, 150, 1));
    let got = deployment_json(&world, &RenderOptions::default());
    assert_eq!(got["spec"]["replicas"], 1);
    // Autoscaling annotations configure the autoscaler, not the pods.
    assert!(got["metadata"].get("annotations").is_none(), "{:#}", got["metadata"]);
    let pod = &got["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"],
        json!({
            "kubectl.kubernetes.io/default-container": "user-container",
            PROXY_CONFIG_ANNOTATION: SIDECAR_STATS_INCLUSION
        })
    );
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "20m", "memory": "20Mi"}, "limits": {"cpu": "250m", "memory": "250Mi"}})
    );
    assert_eq!(pod["spec"]["containers"].as_array().map(Vec::len), Some(1), "no queue-proxy");

    // initial-scale sets the starting replicas; progress-deadline the deadline.
    let text = sample("serving-rollout-probe-queue-proxy-direct-minscale.yaml").replace(
        "        autoscaling.knative.dev/minScale: \"100\"\n",
        "        autoscaling.knative.dev/minScale: \"100\"\n        autoscaling.knative.dev/initial-scale: \"3\"\n        \
         serving.knative.dev/progress-deadline: 2m\n        team: web\n",
    );
    let world = apply(&World::default(), &text);
    let got = deployment_json(&world, &RenderOptions::default());
    assert_eq!(got["spec"]["replicas"], 3);
    assert_eq!(got["spec"]["progressDeadlineSeconds"], 120);
    assert_eq!(got["metadata"]["annotations"], json!({"serving.knative.dev/progress-deadline": "2m", "team": "web"}));
    assert_valid(&schemas(), "initial-scale deployment", &got);
}

#[test]
fn only_the_serving_container_gets_the_port_and_probe() {
    let world = sample_world("multi-container-service.yaml");
    let got = deployment_json(&world, &RenderOptions::default());
    let containers = got["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["ports"], json!([{"name": "user-port", "containerPort": 8881}]));
    assert_eq!(containers[0]["env"][0], json!({"name": "PORT", "value": "8881"}));
    assert_eq!(containers[0]["readinessProbe"]["tcpSocket"], json!({"port": 8881}));
    assert!(containers[1].get("ports").is_none());
    assert!(containers[1].get("readinessProbe").is_none());
    let env_names: Vec<&str> =
        containers[1]["env"].as_array().expect("env").iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(env_names, ["K_REVISION", "K_CONFIGURATION", "K_SERVICE"]);
    assert_eq!(
        got["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "user-container-0"
    );
    assert_eq!(service_json(&world, &RenderOptions::default())["spec"]["ports"][0]["targetPort"], 8881);
}

#[test]
fn pod_spec_fields_and_probes_are_kept() {
    let world = sample_world("secrets-go-service-volumes.yaml");
    let spec = &deployment_json(&world, &RenderOptions::default())["spec"]["template"]["spec"];
    assert_eq!(spec["volumes"], json!([{"name": "robot-secret", "secret": {"secretName": "google-robot-secret"}}]));
    assert_eq!(spec["containers"][0]["volumeMounts"], json!([{"name": "robot-secret", "mountPath": "/var/secret"}]));

    // A probe without a port gets the user port; liveness too; user periods are kept.
    let world = sample_world("serving-helloworld-configuration-and-route.yaml");
    let container = &deployment_json(&world, &RenderOptions::default())["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"],
        json!({"httpGet": {"path": "/", "port": 8080}, "initialDelaySeconds": 3, "successThreshold": 1, "periodSeconds": 1})
    );
    let text = sample("helloworld-python-service.yaml").replace(
        "      - image: docker.io/{username}/helloworld-python\n",
        "      - image: docker.io/{username}/helloworld-python\n        livenessProbe:\n          httpGet:\n            \
         path: /live\n        readinessProbe:\n          periodSeconds: 5\n          httpGet:\n            path: /ready\n",
    );
    let container = &deployment_json(&apply(&World::default(), &text), &RenderOptions::default())["spec"]["template"]["spec"]
        ["containers"][0];
    assert_eq!(container["livenessProbe"], json!({"httpGet": {"path": "/live", "port": 8080}}));
    assert_eq!(container["readinessProbe"]["periodSeconds"], 5);
}

#[test]
fn a_known_revision_uid_owns_and_labels_the_objects() {
    let world = sample_world("helloworld-python-service.yaml");
    let key = ObjectKey::new("default", "helloworld-python-00001");
    let options = RenderOptions {
        owner_uids: OwnerUids::new().with(OwnerKind::Revision, key, "4f9c2b1e-0000-4000-8000-000000000001"),
        ..RenderOptions::default()
    };
    let owner = json!([{
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "name": "helloworld-python-00001",
        "uid": "4f9c2b1e-0000-4000-8000-000000000001",
        "controller": true,
        "blockOwnerDeletion": true
    }]);
    let deployment = deployment_json(&world, &options);
    let service = service_json(&world, &options);
    for object in [&deployment, &service] {
        assert_eq!(object["metadata"]["ownerReferences"], owner);
        assert_eq!(
            object["metadata"]["labels"]["serving.knative.dev/revisionUID"],
            "4f9c2b1e-0000-4000-8000-000000000001"
        );
        assert_valid(&schemas(), "owned", object);
    }
    // The selector does not depend on the UID: a Deployment's selector can never change.
    assert_eq!(deployment["spec"]["selector"], deployment_json(&world, &RenderOptions::default())["spec"]["selector"]);
}
