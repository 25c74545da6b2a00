//! The VirtualServices are net-istio's: the worked example in
//! shared/istio/examples is reproduced from an equivalent Knative manifest,
//! and the routing variants (tag headers, cluster-local routes, no local
//! gateway, h2c) take the shape net-istio's code gives them.

mod common;

use common::*;
use revgate_istio::{OwnerKind, OwnerUids, RenderOptions};
use revgate_model::World;
use revgate_model::plan::ObjectKey;
use serde_json::{Value, json};

const ZERO_UID: &str = "00000000-0000-0000-0000-000000000000";

/// `hello-00001` and `hello-00002` (two generations of Configuration
/// `hello`), then the Route of the example, read from the example itself.
fn example_world(extra: &str) -> (World, Vec<Value>) {
    let text = std::fs::read_to_string(shared_dir("istio").join("examples/net-istio-hello-90-10-canary.yaml"))
        .expect("example readable");
    let documents = yaml_documents(&text);
    assert_eq!(documents.len(), 3, "Route, hello-mesh, hello-ingress");
    let configuration = |image: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata:\n  name: hello\n  namespace: default\n\
             spec:\n  template:\n    spec:\n      containers:\n      - image: {image}\n"
        )
    };
    let mut world = apply(&World::default(), extra);
    world = apply(&world, &configuration("registry.example.com/hello:v1"));
    world = apply(&world, &configuration("registry.example.com/hello:v2"));
    let route = serde_yaml_ng::to_string(&documents[0]).expect("route as YAML");
    world = apply(&world, &route);
    let names: Vec<&str> = world.revisions.keys().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["hello-00001", "hello-00002"]);
    (world, documents[1..].to_vec())
}

/// The example's VirtualServices without net-istio's K-Network-Hash probe
/// entries (they serve only net-istio's own gateway prober).
fn without_probes(mut vs: Value) -> Value {
    if let Some(http) = vs["spec"]["http"].as_array_mut() {
        http.retain(|entry| {
            !entry["match"].as_array().expect("match").iter().any(|m| m["headers"].get("K-Network-Hash").is_some())
        });
    }
    vs
}

fn virtual_services(world: &World, options: &RenderOptions) -> Vec<Value> {
    render_json(world, options).into_iter().filter(|o| o["kind"] == "VirtualService").collect()
}

#[test]
fn the_90_10_canary_example_is_reproduced() {
    let (world, expected) = example_world("");
    // net-istio's VirtualServices are owned by the route's networking Ingress.
    // revgate writes no Ingress: the Route owns them, with the UID the caller knows.
    let options = RenderOptions {
        owner_uids: OwnerUids::new().with(OwnerKind::Route, ObjectKey::new("default", "hello"), ZERO_UID),
        ..RenderOptions::default()
    };
    let expected: Vec<Value> = expected
        .into_iter()
        .map(without_probes)
        .map(|mut vs| {
            assert_eq!(vs["metadata"]["ownerReferences"][0]["kind"], "Ingress");
            vs["metadata"]["ownerReferences"][0]["apiVersion"] = json!("serving.knative.dev/v1");
            vs["metadata"]["ownerReferences"][0]["kind"] = json!("Route");
            vs
        })
        .collect();
    let got = virtual_services(&world, &options);
    // Exact, order included: the order of http entries is the order Istio matches in.
    assert_eq!(got.len(), expected.len());
    for (got, want) in got.iter().zip(&expected) {
        assert_eq!(got, want, "\ngot:\n{}\nwant:\n{}", yaml(got), yaml(want));
    }
    assert_eq!(got[0]["spec"]["http"].as_array().map(Vec::len), Some(2), "mesh: default and canary");
    assert_eq!(got[1]["spec"]["http"].as_array().map(Vec::len), Some(4), "ingress: 2 targets x 2 visibilities");
}

fn yaml(value: &Value) -> String {
    serde_yaml_ng::to_string(value).unwrap_or_default()
}

#[test]
fn without_a_known_uid_the_virtual_services_are_unowned() {
    let (world, _) = example_world("");
    for vs in virtual_services(&world, &RenderOptions::default()) {
        assert!(vs["metadata"].get("ownerReferences").is_none(), "{vs:#}");
    }
}

/// The http entries of a VirtualService as `(authority, gateway, tag header, default-route header,
/// tag header set, [(revision, weight)])`.
type Entry = (String, String, Option<String>, Option<String>, Option<String>, Vec<(String, u64)>);

fn entries(vs: &Value) -> Vec<Entry> {
    let text = |v: &Value| v.as_str().map(str::to_string);
    vs["spec"]["http"]
        .as_array()
        .expect("http")
        .iter()
        .map(|http| {
            let m = &http["match"][0];
            assert_eq!(http["match"].as_array().map(Vec::len), Some(1), "one distinct prefix per rule here");
            assert_eq!(http["retries"], json!({}));
            (
                text(&m["authority"]["prefix"]).expect("prefix"),
                text(&m["gateways"][0]).expect("gateway"),
                text(&m["headers"]["Knative-Serving-Tag"]["exact"]),
                text(&http["headers"]["request"]["set"]["Knative-Serving-Default-Route"]),
                text(&http["headers"]["request"]["set"]["Knative-Serving-Tag"]),
                http["route"]
                    .as_array()
                    .expect("route")
                    .iter()
                    .map(|r| {
                        let revision =
                            r["headers"]["request"]["set"]["Knative-Serving-Revision"].as_str().expect("revision");
                        (revision.to_string(), r["weight"].as_u64().expect("weight"))
                    })
                    .collect(),
            )
        })
        .collect()
}

fn entry(
    authority: &str,
    gateway: &str,
    tag_match: Option<&str>,
    default_route: bool,
    tag_set: Option<&str>,
    splits: &[(&str, u64)],
) -> Entry {
    (
        authority.to_string(),
        gateway.to_string(),
        tag_match.map(str::to_string),
        default_route.then(|| "true".to_string()),
        tag_set.map(str::to_string),
        splits.iter().map(|(r, w)| (r.to_string(), *w)).collect(),
    )
}

#[test]
fn tag_header_routing_adds_tag_matches_ahead_of_the_default_route() {
    let features = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-features\n  namespace: knative-serving\n\
                    data:\n  tag-header-based-routing: Enabled\n";
    let (world, _) = example_world(features);
    let vss = virtual_services(&world, &RenderOptions::default());
    let local = "knative-serving/knative-local-gateway";
    let public = "knative-serving/knative-ingress-gateway";
    let split = [("hello-00001", 90), ("hello-00002", 10)];
    let canary = [("hello-00002", 100)];
    assert_eq!(
        entries(&vss[0]),
        [
            entry("hello.default", "mesh", Some("canary"), false, None, &canary),
            entry("hello.default", "mesh", None, true, None, &split),
            entry("canary-hello.default", "mesh", None, false, Some("canary"), &canary),
        ]
    );
    assert_eq!(
        entries(&vss[1]),
        [
            entry("hello.default", local, Some("canary"), false, None, &canary),
            entry("hello.default", local, None, true, None, &split),
            entry("hello.default.example.com", public, Some("canary"), false, None, &canary),
            entry("hello.default.example.com", public, None, true, None, &split),
            entry("canary-hello.default", local, None, false, Some("canary"), &canary),
            entry("canary-hello.default.example.com", public, None, false, Some("canary"), &canary),
        ]
    );
    for vs in &vss {
        assert_valid(&schemas(), "tag header routing", vs);
    }

    // Off (the default): none of those headers anywhere.
    let (world, _) = example_world("");
    for vs in virtual_services(&world, &RenderOptions::default()) {
        for (_, _, tag_match, default_route, tag_set, _) in entries(&vs) {
            assert_eq!((tag_match, default_route, tag_set), (None, None, None));
        }
    }
}

#[test]
fn a_zero_percent_tag_is_reachable_only_through_its_own_host() {
    let text = sample("traffic-splitting-updated-sample-tags.yaml");
    // Create the revision the sample's `current` tag names first, as the sample's walkthrough does.
    let first = text
        .replace("stock-service-example-second", "stock-service-example-first")
        .replace("value: share", "value: stock");
    let world = apply(&apply(&World::default(), &first), &text);
    let vss = virtual_services(&world, &RenderOptions::default());
    let ingress = named(&vss, "VirtualService", "stock-service-example-ingress");
    let routes: Vec<(String, Vec<(String, u64)>)> =
        entries(ingress).into_iter().map(|(authority, _, _, _, _, splits)| (authority, splits)).collect();
    let first = vec![("stock-service-example-first".to_string(), 100)];
    let second = vec![("stock-service-example-second".to_string(), 100)];
    assert_eq!(
        routes,
        [
            ("stock-service-example.default".to_string(), first.clone()),
            ("stock-service-example.default.example.com".to_string(), first.clone()),
            ("current-stock-service-example.default".to_string(), first.clone()),
            ("current-stock-service-example.default.example.com".to_string(), first),
            ("latest-stock-service-example.default".to_string(), second.clone()),
            ("latest-stock-service-example.default.example.com".to_string(), second),
        ]
    );
}

#[test]
fn a_cluster_local_route_gets_no_public_host() {
    let mut text = sample("helloworld-python-service.yaml");
    text = text.replace(
        "  namespace: default\n",
        "  namespace: default\n  labels:\n    networking.knative.dev/visibility: cluster-local\n",
    );
    let world = apply(&World::default(), &text);
    let vss = virtual_services(&world, &RenderOptions::default());
    assert_eq!(vss.len(), 2);
    let ingress = named(&vss, "VirtualService", "helloworld-python-ingress");
    assert_eq!(ingress["spec"]["gateways"], json!(["knative-serving/knative-local-gateway"]));
    assert_eq!(
        ingress["spec"]["hosts"],
        json!([
            "helloworld-python.default",
            "helloworld-python.default.svc",
            "helloworld-python.default.svc.cluster.local"
        ])
    );

    // Without a local gateway, only sidecars serve it: no -ingress at all.
    let options = RenderOptions { local_gateway: None, ..RenderOptions::default() };
    let vss = virtual_services(&world, &options);
    assert_eq!(vss.len(), 1);
    assert_eq!(vss[0]["metadata"]["name"], "helloworld-python-mesh");
    // net-istio keeps only the .svc.cluster.local spelling when no local gateway is configured.
    assert_eq!(vss[0]["spec"]["hosts"], json!(["helloworld-python.default.svc.cluster.local"]));
    assert_eq!(vss[0]["spec"]["http"][0]["match"][0]["authority"]["prefix"], "helloworld-python.default");
}

#[test]
fn without_a_local_gateway_in_cluster_hosts_stay_off_the_public_gateway() {
    let world = sample_world("helloworld-python-service.yaml");
    let options = RenderOptions {
        ingress_gateway: "istio-system/public".into(),
        local_gateway: None,
        ..RenderOptions::default()
    };
    let vss = virtual_services(&world, &options);
    let ingress = named(&vss, "VirtualService", "helloworld-python-ingress");
    assert_eq!(ingress["spec"]["gateways"], json!(["istio-system/public"]));
    assert_eq!(ingress["spec"]["hosts"], json!(["helloworld-python.default.example.com"]));
    assert_eq!(ingress["spec"]["http"].as_array().map(Vec::len), Some(1));
}

#[test]
fn h2c_revisions_are_routed_to_port_81() {
    let world = sample_world("serving-hellohttp2-service-h2c.yaml");
    for vs in virtual_services(&world, &RenderOptions::default()) {
        for http in vs["spec"]["http"].as_array().expect("http") {
            assert_eq!(
                http["route"][0]["destination"],
                json!({"host": "hellohttp2-test-image-00001.default.svc.cluster.local", "port": {"number": 81}})
            );
        }
    }
}

#[test]
fn route_annotations_reach_the_virtual_services() {
    let text = sample("helloworld-python-service.yaml").replace(
        "  namespace: default\n",
        "  namespace: default\n  annotations:\n    team: web\n    kubectl.kubernetes.io/last-applied-configuration: \"{}\"\n",
    );
    let world = apply(&World::default(), &text);
    for vs in virtual_services(&world, &RenderOptions::default()) {
        assert_eq!(
            vs["metadata"]["annotations"],
            json!({"networking.knative.dev/ingress.class": "istio.ingress.networking.knative.dev", "team": "web"})
        );
        assert_eq!(
            vs["metadata"]["labels"],
            json!({
                "networking.internal.knative.dev/ingress": "helloworld-python",
                "serving.knative.dev/route": "helloworld-python",
                "serving.knative.dev/routeNamespace": "default"
            })
        );
    }
}

#[test]
fn every_route_host_gets_a_service_pointing_at_the_local_gateway() {
    let (world, _) = example_world("");
    let options = RenderOptions {
        owner_uids: OwnerUids::new().with(OwnerKind::Route, ObjectKey::new("default", "hello"), ZERO_UID),
        ..RenderOptions::default()
    };
    let objects = render_json(&world, &options);
    let route_services: Vec<&Value> =
        of_kind(&objects, "Service").into_iter().filter(|s| s["spec"].get("selector").is_none()).collect();
    let names: Vec<&str> = route_services.iter().filter_map(|s| s["metadata"]["name"].as_str()).collect();
    assert_eq!(names, ["canary-hello", "hello"]);
    for service in &route_services {
        assert_eq!(service["metadata"]["labels"], json!({"serving.knative.dev/route": "hello"}));
        assert_eq!(service["metadata"]["ownerReferences"][0]["kind"], "Route");
        assert_eq!(
            service["spec"],
            json!({
                "type": "ExternalName",
                "externalName": "knative-local-gateway.istio-system.svc.cluster.local",
                "sessionAffinity": "None",
                "ports": [{"name": "http2", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c", "port": 80, "targetPort": 80}]
            })
        );
        assert_valid(&schemas(), "route service", service);
    }

    // Mesh only: an address for sidecars to intercept, and nothing behind it.
    let objects = render_json(&world, &RenderOptions { local_gateway: None, ..RenderOptions::default() });
    let hello = named(&objects, "Service", "hello");
    assert_eq!(
        hello["spec"],
        json!({"type": "ClusterIP", "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 80}]})
    );
}
