//! Every bad input is rejected with the field path and message a user
//! needs, and nothing of the apply is kept.

mod common;

use common::*;
use revgate_model::World;

const SVC: &str = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n";
const ROUTE: &str = "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata:\n  name: web\nspec:\n";
const CONTAINER: &str = "  template:\n    spec:\n      containers:\n      - image: ghcr.io/acme/hello\n";

fn svc(rest: &str) -> String {
    format!("{SVC}{CONTAINER}{rest}")
}

fn svc_spec(spec: &str) -> String {
    format!("{SVC}  template:\n    spec:\n{spec}")
}

fn route(traffic: &str) -> String {
    format!("{ROUTE}  traffic:\n{traffic}")
}

const DNS1035: &str = "is not a DNS-1035 label: at most 63 lowercase letters, digits or '-', starting with a letter and not ending with '-'";

/// The world the bad inputs are applied to: a Service with a named template,
/// and a Configuration a Service owns.
fn base() -> World {
    let named = format!(
        "{SVC}  template:\n    metadata:\n      name: hello-v1\n    spec:\n      containers:\n      - image: ghcr.io/acme/hello\n---\n{}",
        service("owner", "ghcr.io/acme/owner")
    );
    apply(&World::default(), &named).0
}

/// (case, manifest, every expected `(path, message)`).
type Case = (&'static str, String, Vec<(&'static str, String)>);

#[test]
fn bad_inputs_are_rejected_with_path_and_message() {
    let long = "a".repeat(64);
    let cases: Vec<Case> = vec![
        (
            "uppercase name",
            service("Hello", "x"),
            vec![("metadata.name", format!("\"Hello\" {DNS1035}"))],
        ),
        (
            "name longer than 63",
            service(&long, "x"),
            vec![("metadata.name", format!("{long:?} {DNS1035}"))],
        ),
        (
            "name starting with a digit",
            service("1hello", "x"),
            vec![("metadata.name", format!("\"1hello\" {DNS1035}"))],
        ),
        (
            "percentages not summing to 100",
            svc("  traffic:\n  - latestRevision: true\n    percent: 60\n  - revisionName: hello-v1\n    percent: 30\n"),
            vec![("spec.traffic", "traffic percentages sum to 90, must be 100".into())],
        ),
        (
            "missing percent counts as 0",
            svc("  traffic:\n  - latestRevision: true\n"),
            vec![("spec.traffic", "traffic percentages sum to 0, must be 100".into())],
        ),
        (
            "percent over 100",
            svc("  traffic:\n  - latestRevision: true\n    percent: 120\n  - revisionName: hello-v1\n    percent: -20\n"),
            vec![
                ("spec.traffic[0].percent", "expected 0 <= 120 <= 100".into()),
                ("spec.traffic[1].percent", "expected 0 <= -20 <= 100".into()),
            ],
        ),
        (
            "revisionName and configurationName together",
            route("  - revisionName: a-1\n    configurationName: a\n    percent: 100\n"),
            vec![(
                "spec.traffic[0]",
                "revisionName and configurationName are mutually exclusive; give exactly one".into(),
            )],
        ),
        (
            "route target naming nothing",
            route("  - percent: 100\n"),
            vec![("spec.traffic[0]", "one of revisionName or configurationName is required".into())],
        ),
        (
            "latestRevision true with a revisionName",
            route("  - revisionName: a-1\n    latestRevision: true\n    percent: 100\n"),
            vec![("spec.traffic[0].latestRevision", "must be false when revisionName is set".into())],
        ),
        (
            "latestRevision false without a revisionName",
            route("  - configurationName: a\n    latestRevision: false\n    percent: 100\n"),
            vec![("spec.traffic[0].latestRevision", "must be true when revisionName is not set".into())],
        ),
        (
            "configurationName inside a Service",
            svc("  traffic:\n  - configurationName: hello\n    percent: 100\n"),
            vec![(
                "spec.traffic[0].configurationName",
                "not allowed in a Service: use revisionName, or latestRevision: true for the Service's own revisions"
                    .into(),
            )],
        ),
        (
            "duplicate tags",
            svc("  traffic:\n  - tag: a\n    latestRevision: true\n    percent: 50\n  - tag: a\n    revisionName: hello-v1\n    percent: 50\n"),
            vec![("spec.traffic[1].tag", "duplicate tag \"a\" (also in spec.traffic[0])".into())],
        ),
        (
            "tag that is not a DNS label",
            svc("  traffic:\n  - tag: Current\n    latestRevision: true\n    percent: 100\n"),
            vec![("spec.traffic[0].tag", format!("\"Current\" {DNS1035}"))],
        ),
        (
            "tag whose host label is too long",
            svc(&format!("  traffic:\n  - tag: {}\n    latestRevision: true\n    percent: 100\n", "t".repeat(60))),
            vec![(
                "spec.traffic[0].tag",
                format!(
                    "the tag's host \"{}-hello.default.example.com\" has a part longer than 63 characters; use a shorter tag",
                    "t".repeat(60)
                ),
            )],
        ),
        (
            "url in spec traffic",
            svc("  traffic:\n  - latestRevision: true\n    percent: 100\n    url: http://x\n"),
            vec![("spec.traffic[0].url", "must not be set: the URL is reported in status".into())],
        ),
        (
            "route without traffic",
            format!("{ROUTE}  traffic: []\n"),
            vec![("spec.traffic", "at least one traffic target is required".into())],
        ),
        (
            "no containers",
            svc_spec("      containers: []\n"),
            vec![("spec.template.spec.containers", "at least one container is required".into())],
        ),
        (
            "container without image",
            svc_spec("      containers:\n      - name: app\n"),
            vec![("spec.template.spec.containers[0].image", "missing field: every container needs an image".into())],
        ),
        (
            "several containers, none with a port",
            svc_spec("      containers:\n      - image: a\n      - image: b\n"),
            vec![(
                "spec.template.spec.containers",
                "with several containers, exactly one must declare a port (the one that receives requests)".into(),
            )],
        ),
        (
            "several containers with ports",
            svc_spec("      containers:\n      - image: a\n        ports: [{containerPort: 8080}]\n      - image: b\n        ports: [{containerPort: 9000}]\n"),
            vec![(
                "spec.template.spec.containers",
                "with several containers, exactly one must declare a port; containers [0, 1] all do".into(),
            )],
        ),
        (
            "two ports on one container",
            svc_spec("      containers:\n      - image: a\n        ports: [{containerPort: 8080}, {containerPort: 8081}]\n"),
            vec![(
                "spec.template.spec.containers[0].ports",
                "at most one port may be given: it is where requests are sent".into(),
            )],
        ),
        (
            "port name that is no protocol",
            svc_spec("      containers:\n      - image: a\n        ports: [{name: http2, containerPort: 8080}]\n"),
            vec![(
                "spec.template.spec.containers[0].ports[0].name",
                "\"http2\" is not a protocol: use \"http1\" or \"h2c\"".into(),
            )],
        ),
        (
            "port out of range",
            svc_spec("      containers:\n      - image: a\n        ports: [{containerPort: 70000}]\n"),
            vec![("spec.template.spec.containers[0].ports[0].containerPort", "expected 1 <= 70000 <= 65535".into())],
        ),
        (
            "duplicate container names",
            svc_spec("      containers:\n      - {name: app, image: a, ports: [{containerPort: 8080}]}\n      - {name: app, image: b}\n"),
            vec![("spec.template.spec.containers[1].name", "duplicate container name \"app\"".into())],
        ),
        (
            "environment variable without a name",
            svc_spec("      containers:\n      - image: a\n        env: [{value: x}]\n"),
            vec![(
                "spec.template.spec.containers[0].env[0].name",
                "missing field: every variable needs a name".into(),
            )],
        ),
        (
            "containerConcurrency above the limit",
            svc_spec("      containerConcurrency: 1001\n      containers: [{image: a}]\n"),
            vec![("spec.template.spec.containerConcurrency", "expected 0 <= 1001 <= 1000".into())],
        ),
        (
            "negative containerConcurrency",
            svc_spec("      containerConcurrency: -1\n      containers: [{image: a}]\n"),
            vec![("spec.template.spec.containerConcurrency", "expected 0 <= -1 <= 1000".into())],
        ),
        (
            "timeoutSeconds above the maximum",
            svc_spec("      timeoutSeconds: 601\n      containers: [{image: a}]\n"),
            vec![("spec.template.spec.timeoutSeconds", "expected 1 <= 601 <= 600".into())],
        ),
        (
            "zero timeoutSeconds",
            svc_spec("      timeoutSeconds: 0\n      containers: [{image: a}]\n"),
            vec![("spec.template.spec.timeoutSeconds", "expected 1 <= 0 <= 600".into())],
        ),
        (
            "response start timeout beyond the request timeout",
            svc_spec("      timeoutSeconds: 30\n      responseStartTimeoutSeconds: 60\n      containers: [{image: a}]\n"),
            vec![(
                "spec.template.spec.responseStartTimeoutSeconds",
                "expected 0 <= 60 <= 30 (timeoutSeconds)".into(),
            )],
        ),
        (
            "template name without the owner's prefix",
            format!("{SVC}  template:\n    metadata:\n      name: other-v1\n    spec:\n      containers: [{{image: a}}]\n"),
            vec![("spec.template.metadata.name", "\"other-v1\" must start with \"hello-\"".into())],
        ),
        (
            "template changed without a name change",
            format!("{SVC}  template:\n    metadata:\n      name: hello-v1\n    spec:\n      containers: [{{image: ghcr.io/acme/hello:2}}]\n"),
            vec![(
                "spec.template.metadata.name",
                "the template changed but its name \"hello-v1\" did not; revisions are immutable, so give the changed \
                 template a new name (or remove the name to let revgate number revisions)"
                    .into(),
            )],
        ),
        (
            "invalid endpoints annotation",
            format!(
                "{SVC}  template:\n    metadata:\n      annotations:\n        revgate.dev/endpoints: 127.0.0.1\n    spec:\n      containers: [{{image: a}}]\n"
            ),
            vec![(
                "spec.template.metadata.annotations[revgate.dev/endpoints]",
                "\"127.0.0.1\" is not host:port (no port); expected e.g. \"127.0.0.1:8081,127.0.0.1:8082\"".into(),
            )],
        ),
        (
            "unknown container field",
            svc_spec("      containers:\n      - image: a\n        imagePullPolicyy: Always\n"),
            vec![("spec.template.spec.containers[0].imagePullPolicyy", "unknown field".into())],
        ),
        (
            "unknown spec field",
            format!("{SVC}{CONTAINER}  trafic: []\n"),
            vec![("spec.trafic", "unknown field".into())],
        ),
        (
            "unknown probe field",
            svc_spec("      containers:\n      - image: a\n        readinessProbe:\n          httpGet: {path: /, prot: 8080}\n"),
            vec![("spec.template.spec.containers[0].readinessProbe.httpGet.prot", "unknown field".into())],
        ),
        (
            "percent given as a string",
            svc("  traffic:\n  - latestRevision: true\n    percent: \"100\"\n"),
            vec![("spec.traffic[0].percent", "expected an integer, got string \"100\"".into())],
        ),
        (
            "missing name",
            "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata: {}\nspec: {}\n".to_string(),
            vec![("metadata.name", "missing field: every object needs a name".into())],
        ),
        (
            "Configuration owned by a Service applied directly",
            "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata: {name: owner}\nspec:\n  template:\n    spec:\n      containers: [{image: a}]\n".to_string(),
            vec![("", "owned by service \"owner\"; change or delete the Service instead".into())],
        ),
        (
            "invalid config-defaults value",
            config_map("config-defaults", "  revision-timeout-seconds: soon\n"),
            vec![("data[revision-timeout-seconds]", "expected a non-negative integer, got \"soon\"".into())],
        ),
        (
            "config-defaults timeout above its maximum",
            config_map("config-defaults", "  revision-timeout-seconds: \"900\"\n"),
            vec![("data[revision-timeout-seconds]", "900 exceeds max-revision-timeout-seconds (600)".into())],
        ),
        (
            "invalid config-features flag",
            config_map("config-features", "  tag-header-based-routing: sometimes\n"),
            vec![("data[tag-header-based-routing]", "expected \"Enabled\" or \"Disabled\", got \"sometimes\"".into())],
        ),
        (
            "config-network template without the name",
            config_map("config-network", "  domain-template: \"{{.Namespace}}.{{.Domain}}\"\n"),
            vec![("data[domain-template]", "must use {{.Name}}, or every route would get the same host".into())],
        ),
        (
            "invalid config-domain domain",
            config_map("config-domain", "  Example_Com: \"\"\n"),
            vec![(
                "data[Example_Com]",
                "\"Example_Com\" is not a valid domain name (lowercase DNS labels separated by dots)".into(),
            )],
        ),
        (
            "ConfigMap namespace with a slash",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: a/b}\ndata: {}\n".to_string(),
            vec![(
                "metadata.namespace",
                "\"a/b\" is not a DNS-1123 label: at most 63 lowercase letters, digits or '-', not starting or ending with '-'"
                    .into(),
            )],
        ),
        (
            "ConfigMap name that is no DNS-1123 subdomain",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: My_Settings}\ndata: {}\n".to_string(),
            vec![(
                "metadata.name",
                "\"My_Settings\" is not a DNS-1123 subdomain: at most 253 lowercase letters, digits, '-' or '.', \
                 starting and ending with a letter or digit"
                    .into(),
            )],
        ),
        (
            "Route namespace with a slash",
            "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata: {name: web, namespace: a/b}\nspec: {}\n"
                .to_string(),
            vec![(
                "metadata.namespace",
                "\"a/b\" is not a DNS-1123 label: at most 63 lowercase letters, digits or '-', not starting or ending with '-'"
                    .into(),
            )],
        ),
        (
            "duplicate key",
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: dup}\nspec:\n  template:\n    spec:\n      containers:\n      - image: a\n        image: b\n".to_string(),
            vec![("spec.template.spec.containers[0].image", "duplicate key: \"image\" is already set in this map".into())],
        ),
        (
            "nested too deep",
            format!(
                "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: deep}}\nspec:\n  template:\n    spec:\n      containers: [{{image: a}}]\n      affinity: {}\n",
                "{x: ".repeat(70) + "1" + &"}".repeat(70)
            ),
            vec![(
                format!("spec.template.spec.affinity{}", ".x".repeat(60)).leak(),
                format!(
                    "nested more than {0} levels deep; revgate accepts at most {0} levels of nesting (whatever is stored must stay readable)",
                    revgate_model::decode::MAX_DEPTH
                ),
            )],
        ),
    ];
    assert!(cases.len() >= 25);

    let base = base();
    let snapshot = base.clone();
    let good = service("fine", "ghcr.io/acme/fine");
    for (name, yaml, want) in cases {
        let want: Vec<(String, String)> = want.into_iter().map(|(p, m)| (p.to_string(), m)).collect();
        assert_eq!(problems(&base, &yaml), want, "case: {name}");
        // All or nothing: a good document next to the bad one is not applied either.
        if let Ok(docs) = revgate_model::parse_documents("bad.yaml", &format!("{good}---\n{yaml}")) {
            assert!(base.apply(&docs, NOW).is_err(), "case: {name}");
        }
        assert_eq!(base, snapshot, "case: {name}");
    }
}

#[test]
fn every_problem_of_an_apply_is_reported_with_file_and_object() {
    let yaml = format!("{}---\n{}", route("  - configurationName: a\n    percent: 90\n"), service("Bad", "x"));
    let docs = revgate_model::parse_documents("route.yaml", &yaml).expect("parses");
    let err = World::default().apply(&docs, NOW).expect_err("rejected");
    let shown: Vec<String> = err.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "route.yaml: route/default/web: spec.traffic: traffic percentages sum to 90, must be 100".to_string(),
            format!("route.yaml#1: service/default/Bad: metadata.name: \"Bad\" {DNS1035}"),
        ]
    );
    // The admin API sends these as JSON.
    let json = serde_json::to_string(&err).expect("serializes");
    let back: revgate_model::ApplyError = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, err);
}

#[test]
fn deleting_what_does_not_exist_is_an_error() {
    let docs = revgate_model::parse_documents("gone.yaml", &service("gone", "x")).expect("parses");
    let references: Vec<_> = docs.iter().map(revgate_model::Document::reference).collect();
    let err = World::default().delete(&references).expect_err("not found");
    assert_eq!(err.to_string(), "gone.yaml: service/default/gone: not found");
}
