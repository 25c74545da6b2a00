//! For every Knative sample, everything cluster mode writes is valid (Istio's
//! CRD schemas, made strict; minimal strict Kubernetes schemas) and hangs
//! together: every route destination is a Service port that reaches a
//! container port of pods a Deployment runs.

mod common;

use std::collections::BTreeSet;

use common::*;
use revgate_istio::{RenderOptions, render, to_yaml_stream};
use serde_json::Value;

#[test]
fn every_sample_renders_objects_that_match_their_schemas() {
    let schemas = schemas();
    for (name, _) in samples() {
        let world = sample_world(&name);
        let objects = render_json(&world, &RenderOptions::default());
        assert!(objects.len() >= 3, "{name}: at least a Service, a Deployment and the WasmPlugin: {objects:#?}");
        for object in &objects {
            assert_valid(&schemas, &format!("{name}: {}", object["metadata"]["name"]), object);
        }
    }
}

#[test]
fn every_sample_renders_in_apply_order() {
    let rank = |kind: &str| ["Service", "Deployment", "VirtualService", "WasmPlugin"].iter().position(|k| *k == kind);
    for (name, _) in samples() {
        let objects = render(&sample_world(&name), &RenderOptions::default());
        let ranks: Vec<usize> = objects.iter().map(|o| rank(o.kind()).expect("known kind")).collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{name}: {ranks:?}");
        assert_eq!(objects.iter().filter(|o| o.kind() == "WasmPlugin").count(), 1, "{name}");
    }
}

#[test]
fn every_destination_reaches_a_container() {
    for (name, _) in samples() {
        let world = sample_world(&name);
        let objects = render_json(&world, &RenderOptions::default());
        // Revision Services select pods; route Services (ExternalName) do not.
        let services: Vec<&Value> =
            of_kind(&objects, "Service").into_iter().filter(|s| s["spec"].get("selector").is_some()).collect();
        let deployments = of_kind(&objects, "Deployment");
        assert_eq!(services.len(), world.revisions.len(), "{name}: one Service per revision");
        let plan = world.plan(&Default::default());
        let route_services = of_kind(&objects, "Service").len() - services.len();
        assert_eq!(
            route_services,
            plan.routes.iter().map(|r| 1 + r.tags.len()).sum::<usize>(),
            "{name}: one Service per route host"
        );
        assert_eq!(deployments.len(), world.revisions.len(), "{name}: one Deployment per revision");

        for deployment in &deployments {
            let selector = &deployment["spec"]["selector"]["matchLabels"];
            let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
            assert!(selects(selector, pod_labels), "{name}: Deployment selects its own pods");
        }
        for service in &services {
            let selector = &service["spec"]["selector"];
            let runs: Vec<&&Value> = deployments
                .iter()
                .filter(|d| selects(selector, &d["spec"]["template"]["metadata"]["labels"]))
                .collect();
            assert_eq!(runs.len(), 1, "{name}: Service {} selects one Deployment's pods", service["metadata"]["name"]);
            let target = &service["spec"]["ports"][0]["targetPort"];
            let container_ports: Vec<&Value> = runs[0]["spec"]["template"]["spec"]["containers"]
                .as_array()
                .expect("containers")
                .iter()
                .filter_map(|c| c["ports"].as_array())
                .flatten()
                .map(|p| &p["containerPort"])
                .collect();
            assert_eq!(container_ports, [target], "{name}: the pods' one port is the Service's target");
        }

        let service_ports: BTreeSet<(String, u64)> = services
            .iter()
            .map(|s| {
                let host = format!(
                    "{}.{}.svc.cluster.local",
                    s["metadata"]["name"].as_str().expect("name"),
                    s["metadata"]["namespace"].as_str().expect("ns")
                );
                (host, s["spec"]["ports"][0]["port"].as_u64().expect("port"))
            })
            .collect();
        for vs in of_kind(&objects, "VirtualService") {
            for http in vs["spec"]["http"].as_array().expect("http") {
                let weights: u64 = http["route"]
                    .as_array()
                    .expect("route")
                    .iter()
                    .map(|r| r["weight"].as_u64().expect("weight"))
                    .sum();
                assert_eq!(weights, 100, "{name}: weights of an entry add up to 100");
                for route in http["route"].as_array().expect("route") {
                    let destination = (
                        route["destination"]["host"].as_str().expect("host").to_string(),
                        route["destination"]["port"]["number"].as_u64().expect("port"),
                    );
                    assert!(
                        service_ports.contains(&destination),
                        "{name}: {destination:?} is not a rendered Service port"
                    );
                }
            }
        }
    }
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

#[test]
fn the_strict_schemas_reject_invented_fields() {
    let schemas = schemas();
    let world = sample_world("helloworld-python-service.yaml");
    let objects = render_json(&world, &RenderOptions::default());
    let mut vs = named(&objects, "VirtualService", "helloworld-python-ingress").clone();
    vs["spec"]["http"][0]["retry"] = serde_json::json!({});
    assert_eq!(schemas["VirtualService"].errors(&vs).len(), 1, "retry is not retries");
    let mut plugin = named(&objects, "WasmPlugin", "revgate").clone();
    plugin["spec"]["failstrategy"] = Value::String("FAIL_OPEN".into());
    plugin["metadata"]["label"] = serde_json::json!({});
    assert_eq!(schemas["WasmPlugin"].errors(&plugin).len(), 2);
    let mut deployment = named(&objects, "Deployment", "helloworld-python-00001-deployment").clone();
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = serde_json::json!({});
    deployment["spec"]["replica"] = serde_json::json!(1);
    assert_eq!(schemas["Deployment"].errors(&deployment).len(), 2);
    let mut service = named(&objects, "Service", "helloworld-python-00001").clone();
    service["spec"]["ports"][0]["target_port"] = serde_json::json!(8080);
    assert_eq!(schemas["Service"].errors(&service).len(), 1);
}

#[test]
fn the_yaml_stream_reads_back_as_the_same_objects() {
    for (name, _) in samples() {
        let objects = render(&sample_world(&name), &RenderOptions::default());
        let yaml = to_yaml_stream(&objects).expect("objects are YAML");
        assert_eq!(yaml.matches("\n---\n").count() + 1, objects.len(), "{name}: one document per object");
        assert_eq!(yaml_documents(&yaml), to_json(&objects), "{name}");
        // Rendering is a function of its inputs.
        assert_eq!(to_yaml_stream(&render(&sample_world(&name), &RenderOptions::default())).expect("yaml"), yaml);
    }
}
