//! DomainMapping (`serving.knative.dev/v1beta1`) as Knative's reconciler
//! treats it: claims, reference resolution, conditions and reasons, the
//! hosts the gateway plan gains; and files mixing Knative objects with
//! other kinds, as Knative's own test setups are written.

mod common;

use common::*;
use revgate_model::decode::Budget;
use revgate_model::domainmapping::DomainMapping;
use revgate_model::plan::MappedHost;
use revgate_model::{IngressState, ObjectKey, Observed, OtherKinds, World, parse_documents_within};
use serde_json::Value;

fn mapping(domain: &str, namespace: &str, kind: &str, target: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1beta1\nkind: DomainMapping\nmetadata:\n  name: {domain}\n  namespace: {namespace}\nspec:\n  ref:\n    apiVersion: serving.knative.dev/v1\n    kind: {kind}\n    name: {target}\n"
    )
}

fn view(world: &World, observed: &Observed, namespace: &str, domain: &str) -> DomainMapping {
    world
        .domain_mapping_views(observed)
        .into_iter()
        .find(|m| m.metadata.namespace == namespace && m.metadata.name == domain)
        .unwrap_or_else(|| panic!("no mapping {namespace}/{domain}"))
}

/// `(status, reason)` of each condition, by type.
fn conditions(mapping: &DomainMapping) -> Vec<(String, String, String)> {
    let status = mapping.status.as_ref().expect("status");
    status
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone().unwrap_or_default()))
        .collect()
}

fn condition(mapping: &DomainMapping, type_: &str) -> (String, String) {
    conditions(mapping)
        .into_iter()
        .find(|(t, _, _)| t == type_)
        .map(|(_, s, r)| (s, r))
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

/// What the gateway serves for each mapped domain: `(route, domain, rewritten host)`.
fn mapped(world: &World, observed: &Observed) -> Vec<(String, String, String)> {
    world
        .plan(observed)
        .routes
        .iter()
        .flat_map(|r| {
            r.mappings
                .iter()
                .map(|MappedHost { host, rewrite_host }| (r.key.to_string(), host.clone(), rewrite_host.clone()))
        })
        .collect()
}

fn ingress_ready(route: &str) -> Observed {
    let mut observed = Observed::default();
    observed.ingress.insert(ObjectKey::new("default", route), IngressState::Ready);
    observed
}

#[test]
fn a_mapping_serves_its_domain_with_the_services_traffic_and_becomes_ready() {
    let (world, changes) = apply(
        &World::default(),
        &(service("hello", "img:1") + "---\n" + &mapping("example.org", "default", "Service", "hello")),
    );
    assert!(lines(&changes).contains(&"domainmapping.serving.knative.dev/example.org created".to_string()));
    assert_eq!(
        mapped(&world, &Observed::default()),
        [("default/hello".into(), "example.org".into(), "hello.default.svc.cluster.local".into())]
    );

    let pending = view(&world, &Observed::default(), "default", "example.org");
    assert_eq!(condition(&pending, "DomainClaimed"), ("True".into(), String::new()));
    assert_eq!(condition(&pending, "ReferenceResolved"), ("True".into(), String::new()));
    assert_eq!(condition(&pending, "CertificateProvisioned"), ("True".into(), "TLSNotEnabled".into()));
    assert_eq!(condition(&pending, "IngressReady"), ("Unknown".into(), "IngressNotConfigured".into()));
    assert_eq!(condition(&pending, "Ready").0, "Unknown");

    let ready = view(&world, &ingress_ready("hello"), "default", "example.org");
    assert_eq!(condition(&ready, "Ready"), ("True".into(), String::new()));
    let status = ready.status.expect("status");
    assert_eq!(status.url.as_deref(), Some("http://example.org"));
    assert_eq!(status.address.map(|a| a.url).as_deref(), Some("http://example.org"));

    // Re-applying changes nothing; the world survives the store's JSON.
    let (again, changes) =
        world.apply(&parse(&mapping("example.org", "default", "Service", "hello")), NOW + 5).expect("re-applies");
    assert_eq!(lines(&changes), ["domainmapping.serving.knative.dev/example.org unchanged"]);
    assert_eq!(again, world);
    let back: World = serde_json::from_str(&serde_json::to_string(&world).expect("json")).expect("reads");
    assert_eq!(back, world);
}

#[test]
fn a_mapping_to_a_route_rewrites_to_the_routes_address() {
    let route = "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata: {name: web}\nspec:\n  traffic:\n  - revisionName: hello-00001\n    percent: 100\n";
    let (world, _) = apply(
        &World::default(),
        &(service("hello", "img:1")
            + "---\n"
            + route
            + "---\n"
            + &mapping("www.example.org", "default", "Route", "web")),
    );
    assert_eq!(
        mapped(&world, &Observed::default()),
        [("default/web".into(), "www.example.org".into(), "web.default.svc.cluster.local".into())]
    );
}

#[test]
fn a_missing_reference_is_reported_and_served_once_the_service_appears() {
    let (world, _) = apply(&World::default(), &mapping("example.org", "default", "Service", "hello"));
    let dm = view(&world, &Observed::default(), "default", "example.org");
    assert_eq!(condition(&dm, "ReferenceResolved"), ("False".into(), "ResolveFailed".into()));
    assert_eq!(condition(&dm, "Ready"), ("False".into(), "ResolveFailed".into()));
    let message = dm
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "ReferenceResolved"))
        .and_then(|c| c.message.clone())
        .expect("a message");
    assert_eq!(message, "failed to get object default/hello: services.serving.knative.dev \"hello\" not found");
    assert!(mapped(&world, &Observed::default()).is_empty(), "serves nothing");

    let (world, _) = apply(&world, &service("hello", "img:1"));
    assert_eq!(condition(&view(&world, &ingress_ready("hello"), "default", "example.org"), "Ready").0, "True");
    assert_eq!(mapped(&world, &Observed::default()).len(), 1);
}

#[test]
fn a_domain_claimed_in_another_namespace_is_refused_as_knative_does_and_the_first_keeps_serving() {
    let first = service("hello", "img:1") + "---\n" + &mapping("example.org", "default", "Service", "hello");
    let (world, _) = apply(&World::default(), &first);
    let second = service("hello", "img:2").replace("name: hello", "name: hello\n  namespace: other")
        + "---\n"
        + &mapping("example.org", "other", "Service", "hello");
    let (world, changes) = world.apply(&parse(&second), NOW + 60).expect("stored, as Knative stores it");
    assert!(lines(&changes).contains(&"domainmapping.serving.knative.dev/example.org created".to_string()));

    let refused = view(&world, &Observed::default(), "other", "example.org");
    assert_eq!(condition(&refused, "DomainClaimed"), ("False".into(), "DomainAlreadyClaimed".into()));
    assert_eq!(condition(&refused, "Ready"), ("False".into(), "DomainAlreadyClaimed".into()));
    assert_eq!(condition(&view(&world, &ingress_ready("hello"), "default", "example.org"), "Ready").0, "True");
    assert_eq!(
        mapped(&world, &Observed::default()),
        [("default/hello".into(), "example.org".into(), "hello.default.svc.cluster.local".into())]
    );

    // The holder leaves: the claim passes on, as the other's next reconcile takes it.
    let (world, changes) =
        world.delete(&references(&mapping("example.org", "default", "Service", "hello"))).expect("deletes");
    assert_eq!(lines(&changes), ["domainmapping.serving.knative.dev/example.org deleted"]);
    assert_eq!(condition(&view(&world, &Observed::default(), "other", "example.org"), "DomainClaimed").0, "True");
    assert_eq!(mapped(&world, &Observed::default())[0].0, "other/hello");
}

#[test]
fn invalid_mappings_are_rejected_naming_the_field() {
    let world = World::default();
    let cases = [
        (mapping("localhost", "default", "Service", "hello"), "metadata.name", "at least two segments"),
        (
            mapping("hello.default.svc.cluster.local", "default", "Service", "hello"),
            "metadata.name",
            "cluster local domain",
        ),
        (
            mapping("example.org", "default", "Service", "hello").replace("    name: hello\n", ""),
            "spec.ref.name",
            "missing field",
        ),
        (
            mapping("example.org", "default", "Service", "hello")
                .replace("    name: hello\n", "    name: hello\n    namespace: other\n"),
            "spec.ref.namespace",
            "mismatched namespaces",
        ),
        (
            mapping("example.org", "default", "Service", "hello").replace("  ref:", "  reff:"),
            "spec.reff",
            "unknown field",
        ),
    ];
    for (yaml, path, message) in cases {
        let found = problems(&world, &yaml);
        assert!(found.iter().any(|(p, m)| p == path && m.contains(message)), "{path}: {message}: {found:?}");
    }
}

#[test]
fn with_tls_the_url_is_https_and_the_certificate_is_provided_externally() {
    let yaml = mapping("example.org", "default", "Service", "hello") + "  tls:\n    secretName: example-tls\n";
    let (world, _) = apply(&World::default(), &(service("hello", "img:1") + "---\n" + &yaml));
    let dm = view(&world, &Observed::default(), "default", "example.org");
    assert_eq!(condition(&dm, "CertificateProvisioned"), ("True".into(), "CertificateExternallyProvided".into()));
    assert_eq!(dm.status.and_then(|s| s.url).as_deref(), Some("https://example.org"));
}

#[test]
fn views_validate_against_knatives_domainmapping_schema_made_strict() {
    let path = shared_dir("knative").join("domainmapping-crd.yaml");
    let crd: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).expect("CRD")).expect("YAML");
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    make_strict(&mut schema);
    let validator = jsonschema::draft4::new(&schema).expect("schema compiles");
    let (world, _) = apply(
        &World::default(),
        &(service("hello", "img:1")
            + "---\n"
            + &mapping("example.org", "default", "Service", "hello")
            + "---\n"
            + &mapping("example.net", "default", "Service", "missing")),
    );
    for dm in world.domain_mapping_views(&ingress_ready("hello")) {
        let value = serde_json::to_value(&dm).expect("json");
        let errors: Vec<String> =
            validator.iter_errors(&value).map(|e| format!("{}: {e}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{}:\n{}\n{value:#}", dm.metadata.name, errors.join("\n"));
    }
}

/// Knative's own test setup mixing two Knative Services with a Kubernetes
/// Service and a Deployment (`tests/fixtures/knative/`).
fn dataplane_probe_setup() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/knative/dataplane-probe-setup.yaml");
    std::fs::read_to_string(path).expect("fixture readable")
}

#[test]
fn knatives_mixed_kinds_setup_applies_its_services_and_skips_the_rest_with_a_line_each() {
    let text = dataplane_probe_setup();
    let read = parse_documents_within("setup.yaml", &text, &mut Budget::default(), OtherKinds::Skip).expect("reads");
    let skipped: Vec<String> = read.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        skipped,
        [
            "skipped v1 Service default/deployment: not a Knative Serving resource",
            "skipped apps/v1 Deployment default/deployment: not a Knative Serving resource",
        ]
    );
    let (world, _) = World::default().apply(&read.objects, NOW).expect("applies");
    let services: Vec<&str> = world.services.keys().map(|k| k.name.as_str()).collect();
    assert_eq!(services, ["activator", "queue-proxy"]);

    let err = parse_documents_within("setup.yaml", &text, &mut Budget::default(), OtherKinds::Reject)
        .expect_err("strict refuses");
    assert_eq!(
        err.to_string(),
        "setup.yaml: document 2: v1 Service default/deployment is not a Knative Serving resource; --strict refuses \
         such documents (without it, they are skipped with a warning)"
    );
}

#[test]
fn a_bad_knative_object_in_a_mixed_file_is_still_rejected() {
    let text = dataplane_probe_setup().replace("containerConcurrency: 0", "containerConcurrency: -1");
    let read = parse_documents_within("setup.yaml", &text, &mut Budget::default(), OtherKinds::Skip).expect("reads");
    let err = World::default().apply(&read.objects, NOW).expect_err("invalid");
    assert!(err.to_string().contains("service/default/activator: spec.template.spec.containerConcurrency"), "{err}");
}

#[test]
fn the_shipped_example_maps_its_domain() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/domainmapping.yaml");
    let (world, _) = apply(&World::default(), &std::fs::read_to_string(path).expect("example readable"));
    assert_eq!(
        mapped(&world, &Observed::default()),
        [("default/hello".into(), "hello.example.org".into(), "hello.default.svc.cluster.local".into())]
    );
}
