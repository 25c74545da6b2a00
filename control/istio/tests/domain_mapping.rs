//! A DomainMapping's VirtualService: net-istio's for the Ingress Knative
//! writes for a mapping, valid against Istio's strict schemas.

mod common;

use common::*;
use revgate_istio::RenderOptions;
use revgate_model::World;
use serde_json::json;

const SERVICE: &str = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers:\n      - image: example.com/hello\n";

fn mapping(domain: &str, namespace: &str, service: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1beta1\nkind: DomainMapping\nmetadata:\n  name: {domain}\n  namespace: {namespace}\n  labels: {{team: web}}\nspec:\n  ref:\n    apiVersion: serving.knative.dev/v1\n    kind: Service\n    name: {service}\n"
    )
}

#[test]
fn a_mapping_gets_net_istios_virtual_service_rewriting_to_the_routes_address() {
    let world = apply(&World::default(), &format!("{SERVICE}---\n{}", mapping("example.org", "default", "hello")));
    let objects = render_json(&world, &RenderOptions::default());
    let schemas = schemas();
    for object in &objects {
        assert_valid(&schemas, "rendered", object);
    }
    let vs = named(&objects, "VirtualService", "example.org-ingress");
    assert_eq!(vs["metadata"]["namespace"], "default");
    assert_eq!(vs["metadata"]["labels"]["networking.internal.knative.dev/ingress"], "example.org");
    assert_eq!(vs["metadata"]["labels"]["serving.knative.dev/domainMappingNamespace"], "default");
    assert_eq!(vs["metadata"]["labels"]["team"], "web");
    assert_eq!(
        vs["spec"],
        json!({
            "gateways": ["knative-serving/knative-ingress-gateway"],
            "hosts": ["example.org"],
            "http": [{
                "match": [{"authority": {"prefix": "example.org"}, "gateways": ["knative-serving/knative-ingress-gateway"]}],
                "rewrite": {"authority": "hello.default.svc.cluster.local"},
                "route": [{
                    "destination": {"host": "hello.default.svc.cluster.local", "port": {"number": 80}},
                    "weight": 100,
                    "headers": {"request": {"set": {"K-Original-Host": "example.org"}}}
                }],
                "retries": {}
            }]
        })
    );
    // What it routes to exists: the Route's own Service, which the local gateway serves.
    named(&objects, "Service", "hello");
}

#[test]
fn a_mapping_that_does_not_resolve_or_hold_its_domain_gets_no_virtual_service() {
    let world = apply(&World::default(), &mapping("example.org", "default", "missing"));
    let objects = render_json(&world, &RenderOptions::default());
    assert!(objects.iter().all(|o| o["metadata"]["name"] != "example.org-ingress"), "unresolved");

    let other = SERVICE.replace("name: hello\n", "name: hello\n  namespace: other\n");
    let world = apply(
        &World::default(),
        &format!(
            "{SERVICE}---\n{}---\n{other}---\n{}",
            mapping("example.org", "default", "hello"),
            mapping("example.org", "other", "hello")
        ),
    );
    let objects = render_json(&world, &RenderOptions::default());
    let mapped: Vec<_> = objects
        .iter()
        .filter(|o| o["metadata"]["name"] == "example.org-ingress")
        .map(|o| o["metadata"]["namespace"].clone())
        .collect();
    assert_eq!(mapped, ["default"], "only the namespace holding the claim");
}
