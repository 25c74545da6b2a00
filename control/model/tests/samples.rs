//! Knative's own sample manifests apply unchanged, and what revgate shows
//! for them validates against Knative's CRD schemas.

mod common;

use std::collections::BTreeMap;

use common::*;
use revgate_model::plan::UpstreamProtocol;
use revgate_model::{ChangeKind, Observed, World, parse_documents};
use serde_json::Value;

/// Knative's CRD schemas by kind, made strict: where a schema lists
/// properties and does not keep unknown fields, no other field may appear,
/// so views that invent fields fail.
fn crd_schemas() -> BTreeMap<String, jsonschema::Validator> {
    let path = shared_dir("knative").join("knative-serving-crds.yaml");
    let text = std::fs::read_to_string(&path).expect("CRDs readable");
    let mut validators = BTreeMap::new();
    for de in serde_yaml_ng::Deserializer::from_str(&text) {
        let crd: Value = serde::Deserialize::deserialize(de).expect("CRD is YAML");
        if crd.is_null() {
            continue;
        }
        let kind = crd["spec"]["names"]["kind"].as_str().expect("CRD kind").to_string();
        let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        make_strict(&mut schema);
        validators.insert(kind, jsonschema::draft4::new(&schema).expect("schema compiles"));
    }
    assert_eq!(validators.len(), 4, "Service, Configuration, Route, Revision");
    validators
}

fn assert_valid(validators: &BTreeMap<String, jsonschema::Validator>, kind: &str, what: &str, value: &Value) {
    let validator = &validators[kind];
    let errors: Vec<String> = validator.iter_errors(value).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{what} does not match the {kind} CRD schema:\n{}\n{value:#}", errors.join("\n"));
}

fn all_views(world: &World, observed: &Observed) -> Vec<(&'static str, Value)> {
    let json = |v: &dyn erased::Json| v.to_json();
    let mut out = Vec::new();
    out.extend(world.service_views(observed).iter().map(|v| ("Service", json(v))));
    out.extend(world.configuration_views(observed).iter().map(|v| ("Configuration", json(v))));
    out.extend(world.route_views(observed).iter().map(|v| ("Route", json(v))));
    out.extend(world.revision_views(observed).iter().map(|v| ("Revision", json(v))));
    out
}

mod erased {
    pub trait Json {
        fn to_json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("views serialize")
        }
    }
}

#[test]
fn every_sample_parses_applies_unchanged_and_validates_against_the_crds() {
    let validators = crd_schemas();
    for (name, text) in samples() {
        // The sample itself matches the CRD (ConfigMaps aside).
        for de in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc: Value = serde::Deserialize::deserialize(de).expect("sample is YAML");
            if let Some(kind) = doc["kind"].as_str() {
                assert_valid(&validators, kind, &name, &doc);
            }
        }
        let docs = parse_documents(&name, &text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!docs.is_empty(), "{name}");
        let (world, changes) =
            World::default().apply(&docs, NOW).unwrap_or_else(|e| panic!("{name} does not apply:\n{e}"));
        assert!(changes.iter().all(|c| c.change == ChangeKind::Created), "{name}: {changes:?}");

        let (again, changes) = world.apply(&docs, NOW + 60).unwrap_or_else(|e| panic!("{name} re-apply:\n{e}"));
        assert!(changes.iter().all(|c| c.change == ChangeKind::Unchanged), "{name}: {changes:?}");
        assert_eq!(again, world, "{name}: re-applying changed the world");

        for (kind, view) in all_views(&world, &Observed::default()) {
            assert_valid(&validators, kind, &format!("{name}: {kind} view"), &view);
        }
        // And the world survives a JSON round trip (the control plane stores it).
        let stored = serde_json::to_string(&world).expect("world serializes");
        let back: World = serde_json::from_str(&stored).expect("world deserializes");
        assert_eq!(back, world, "{name}");
    }
}

#[test]
fn the_strict_schemas_catch_invented_fields() {
    let validators = crd_schemas();
    let (world, _) = apply(&World::default(), &service("hello", "x"));
    let mut view = serde_json::to_value(&world.service_views(&Observed::default())[0]).expect("json");
    view["spec"]["template"]["spec"]["containers"][0]["bogus"] = Value::Bool(true);
    view["status"]["bogus"] = Value::Bool(true);
    let errors = validators["Service"].iter_errors(&view).count();
    assert_eq!(errors, 2);
}

#[test]
fn traffic_splitting_sample_waits_for_its_missing_revision() {
    let text = sample("traffic-splitting-updated-sample-tags.yaml");
    let (world, _) = apply(&World::default(), &text);
    let observed = Observed::default();
    let service = &world.service_views(&observed)[0];
    let status = service.status.as_ref().expect("status");
    let ready = revgate_model::meta::condition(&status.conditions, "Ready").expect("Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("RevisionMissing")));
    assert_eq!(
        ready.message.as_deref(),
        Some("Revision \"stock-service-example-first\" referenced in traffic not found.")
    );
    assert_eq!(status.latest_created_revision_name.as_deref(), Some("stock-service-example-second"));
    assert!(status.traffic.is_empty());
    assert!(world.plan(&observed).routes.is_empty(), "a route with a missing target is not served");

    // The previous version of the service creates the missing revision…
    let first = text
        .replace("stock-service-example-second", "stock-service-example-first")
        .replace("value: share", "value: stock");
    let (world, changes) = apply(&world, &first);
    assert_eq!(
        lines(&changes),
        [
            "service.serving.knative.dev/stock-service-example configured",
            "revision.serving.knative.dev/stock-service-example-first created"
        ]
    );
    let route = &world.route_views(&observed)[0];
    let conditions = &route.status.as_ref().expect("status").conditions;
    let assigned = revgate_model::meta::condition(conditions, "AllTrafficAssigned").expect("condition");
    assert_eq!(assigned.status, "True");
    // …and once the gateway has accepted the route, everything is ready.
    let mut observed = Observed::default();
    observed.ingress.insert(route.metadata.key(), revgate_model::IngressState::Ready);
    let status = world.service_views(&observed)[0].status.clone().expect("status");
    let ready = revgate_model::meta::condition(&status.conditions, "Ready").expect("Ready");
    assert_eq!(ready.status, "True", "{status:?}");
    let plan = world.plan(&observed);
    assert_eq!(plan.routes.len(), 1);
    assert_eq!(plan.routes[0].splits.len(), 1);
    assert_eq!(plan.routes[0].splits[0].revision.name, "stock-service-example-first");

    // Going back to the sample reuses the revision that template already has.
    let (world, changes) = apply(&world, &text);
    assert_eq!(lines(&changes), ["service.serving.knative.dev/stock-service-example configured"]);
    let status = world.service_views(&observed)[0].status.clone().expect("status");
    assert_eq!(status.latest_ready_revision_name.as_deref(), Some("stock-service-example-second"));
    let tags: Vec<(Option<String>, Option<String>, Option<String>)> =
        status.traffic.iter().map(|t| (t.tag.clone(), t.revision_name.clone(), t.url.clone())).collect();
    assert_eq!(
        tags,
        [
            (
                Some("current".into()),
                Some("stock-service-example-first".into()),
                Some("http://current-stock-service-example.default.example.com".into())
            ),
            (
                Some("latest".into()),
                Some("stock-service-example-second".into()),
                Some("http://latest-stock-service-example.default.example.com".into())
            ),
        ]
    );
}

#[test]
fn samples_keep_what_the_runtime_needs() {
    let observed = Observed::default();

    let (world, _) = apply(&World::default(), &sample("serving-hellohttp2-service-h2c.yaml"));
    let plan = world.plan(&observed);
    assert_eq!(plan.revisions[0].protocol, UpstreamProtocol::H2c);
    assert_eq!(plan.revisions[0].key.name, "hellohttp2-test-image-00001");
    assert_eq!(plan.routes[0].host, "hellohttp2-test-image.default.example.com");

    let (world, _) = apply(&World::default(), &sample("multi-container-service.yaml"));
    let revision = world.revisions.values().next().expect("revision");
    let serving = revision.spec.serving_container().expect("serving container");
    assert_eq!(serving.ports[0].container_port, Some(8881));
    assert_eq!(
        revision.spec.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["user-container-0", "user-container-1"]
    );

    let (world, _) = apply(&World::default(), &sample("serving-rollout-probe-queue-proxy-direct-minscale.yaml"));
    let plan = world.plan(&observed);
    assert_eq!(plan.revisions[0].container_concurrency, 10);
    assert_eq!(plan.revisions[0].timeout_seconds, 300);
    let revision = world.revisions.values().next().expect("revision");
    assert_eq!(revision.metadata.annotations["autoscaling.knative.dev/minScale"], "100");
    assert_eq!(revision.metadata.labels["serving.knative.dev/service"], "queue-proxy-with-cc");

    let (world, _) = apply(&World::default(), &sample("secrets-go-service-volumes.yaml"));
    let view = serde_json::to_value(&world.revision_views(&observed)[0]).expect("json");
    assert_eq!(view["spec"]["volumes"][0]["secret"]["secretName"], "google-robot-secret");
    assert_eq!(view["spec"]["containers"][0]["volumeMounts"][0]["mountPath"], "/var/secret");

    let (world, _) = apply(&World::default(), &sample("serving-helloworld-configuration-and-route.yaml"));
    let plan = world.plan(&observed);
    assert_eq!(plan.routes[0].host, "route-example.default.example.com");
    assert_eq!(plan.routes[0].splits[0].revision.name, "configuration-example-00001");
    assert_eq!(plan.revisions[0].service, None);
    assert_eq!(plan.revisions[0].configuration, "configuration-example");
}
