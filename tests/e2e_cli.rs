//! End to end: the `revgate` CLI as a user meets it — rendering Envoy
//! configuration for real Knative samples, rejecting bad manifests with the
//! file, resource and field, kubectl-shaped tables, and the admin token.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{Revgate, envoy_bin, repo_root, revgate_bin, stderr, stdout};

fn shared_samples() -> Vec<PathBuf> {
    let dir = repo_root().join("../shared/knative-samples");
    let mut samples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the shared Knative samples must be at {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    samples.sort();
    assert!(samples.len() >= 7, "expected the shared Knative samples in {}", dir.display());
    samples
}

#[test]
fn rendered_envoy_config_passes_envoy_validation_for_every_shared_sample() {
    let dir = tempfile::tempdir().expect("temporary directory");
    for sample in shared_samples() {
        let out =
            Command::new(revgate_bin()).args(["render", "envoy", "-f"]).arg(&sample).output().expect("revgate render");
        assert!(out.status.success(), "render {}: {}", sample.display(), stderr(&out));
        let bootstrap = dir.path().join("bootstrap.yaml");
        std::fs::write(&bootstrap, &out.stdout).expect("writing the bootstrap");
        let validate = Command::new(envoy_bin())
            .args(["--mode", "validate", "-c"])
            .arg(&bootstrap)
            .output()
            .expect("running envoy --mode validate");
        assert!(
            validate.status.success(),
            "envoy rejected the rendering of {}:\n{}\n{}\n--- bootstrap ---\n{}",
            sample.display(),
            stdout(&validate),
            stderr(&validate),
            stdout(&out)
        );
    }
}

#[test]
fn the_ads_bootstrap_passes_envoy_validation() {
    let dir = tempfile::tempdir().expect("temporary directory");
    for delta in [false, true] {
        let mut args = vec!["render", "envoy", "--ads"];
        if delta {
            args.push("--delta");
        }
        let out = Command::new(revgate_bin()).args(&args).output().expect("revgate render");
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains(if delta { "DELTA_GRPC" } else { "GRPC" }), "{text}");
        let bootstrap = dir.path().join("ads.yaml");
        std::fs::write(&bootstrap, &out.stdout).expect("writing the bootstrap");
        let validate =
            Command::new(envoy_bin()).args(["--mode", "validate", "-c"]).arg(&bootstrap).output().expect("envoy");
        assert!(validate.status.success(), "{}\n{text}", stderr(&validate));
    }
}

/// Bad manifests as users write them, each with what the error must say.
const BAD: &[(&str, &str)] = &[
    (
        "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata:\n  name: hello\nspec:\n  traffic:\n  - revisionName: hello-00001\n    percent: 80\n  - revisionName: hello-00002\n    percent: 10\n",
        "route/default/hello: spec.traffic",
    ),
    (
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: Hello\nspec:\n  template:\n    spec:\n      containers:\n      - image: x\n",
        "metadata.name",
    ),
    (
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers: []\n",
        "spec.template.spec.containers",
    ),
    (
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers:\n      - image: x\n  traffic:\n  - latestRevision: true\n    percent: 50\n    tag: a\n  - latestRevision: true\n    percent: 50\n    tag: a\n",
        "spec.traffic[1].tag",
    ),
    (
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containerConcurrency: 5000\n      containers:\n      - image: x\n",
        "spec.template.spec.containerConcurrency",
    ),
    (
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  templat:\n    spec:\n      containers:\n      - image: x\n",
        "templat",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_are_rejected_with_file_resource_and_field_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let revgate = Revgate::start(&dir.path().join("state"), support::free_port()).await;
    revgate.apply(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: keep\nspec:\n  template:\n    spec:\n      containers:\n      - image: x\n",
    );
    let before = stdout(&revgate.cli(&["get", "revisions", "-A", "-o", "json"]));

    for (manifest, expected) in BAD {
        // A valid document first: all-or-nothing means it must not land either.
        let valid_first = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: keep\nspec:\n  template:\n    spec:\n      containers:\n      - image: y\n---\n";
        let file = revgate.write_manifest(&format!("{valid_first}{manifest}"));
        let out = revgate.cli(&["apply", "-f", file.to_str().expect("utf-8 path")]);
        assert_eq!(out.status.code(), Some(2), "rejected with exit code 2: {manifest}\n{}", stderr(&out));
        let message = stderr(&out);
        assert!(message.contains(file.to_str().expect("utf-8 path")), "the error names the file: {message}");
        assert!(message.contains(expected), "the error names {expected:?}: {message}");
        assert_eq!(stdout(&revgate.cli(&["get", "revisions", "-A", "-o", "json"])), before, "nothing changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_kubectl_shaped_tables_and_routes_wait_for_missing_revisions() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let revgate = Revgate::start(&dir.path().join("state"), support::free_port()).await;
    let sample = repo_root().join("../shared/knative-samples/traffic-splitting-updated-sample-tags.yaml");
    let out = revgate.cli(&["apply", "-f", sample.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));

    let ksvc = stdout(&revgate.cli(&["get", "ksvc"]));
    let mut lines = ksvc.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(header, ["NAME", "URL", "LATESTCREATED", "LATESTREADY", "READY", "REASON"]);
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(
        row,
        [
            "stock-service-example",
            "http://stock-service-example.default.example.com",
            "stock-service-example-second",
            "stock-service-example-second",
            "False",
            "RevisionMissing"
        ],
        "the route targets a revision that does not exist yet:\n{ksvc}"
    );

    let revisions = stdout(&revgate.cli(&["get", "rev"]));
    assert!(revisions.starts_with("NAME"), "{revisions}");
    assert!(revisions.contains("stock-service-example-second"), "{revisions}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_api_beyond_loopback_requires_the_token() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let state = dir.path().join("state");
    let port = support::free_port();
    let admin = format!("0.0.0.0:{port}").parse().expect("address");
    let xds = format!("127.0.0.1:{}", support::free_port()).parse().expect("address");
    let revgate = Revgate::start_on(&state, support::free_port(), admin, xds).await;
    let server = format!("http://127.0.0.1:{port}");

    let denied = Command::new(revgate_bin())
        .args(["get", "ksvc", "--server", &server])
        .env_remove("REVGATE_TOKEN")
        .output()
        .expect("cli");
    assert!(!denied.status.success());
    assert!(stderr(&denied).contains("admin-token"), "{}", stderr(&denied));

    let token = std::fs::read_to_string(state.join("admin-token")).expect("the token is created on first start");
    let allowed = Command::new(revgate_bin())
        .args(["get", "ksvc", "--server", &server])
        .env("REVGATE_TOKEN", token.trim())
        .output()
        .expect("cli");
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    drop(revgate);
}
