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

/// Runs `revgate` with `input` on standard input.
fn run_with_stdin(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(revgate_bin())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting revgate");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("writing stdin");
    child.wait_with_output().expect("revgate output")
}

#[test]
fn autoscaler_decide_follows_the_json_contract() {
    // Knative's panic case: 2 pods ready, panic load of 40 against a target of 10.
    let input = r#"{"spec": {"target": 10, "total_value": 100, "target_burst_capacity": 211,
        "panic_threshold": 2, "max_scale_up_rate": 1000, "max_scale_down_rate": 2, "stable_window_s": 60},
        "initial_ready": 1,
        "steps": [{"at_ms": 0, "ready": 2, "stable": 20, "panic": 40},
                  {"at_ms": 2000, "ready": 4, "stable": 5, "panic": 5},
                  {"at_ms": 4000, "ready": 4, "stable": 5, "panic": 5, "spec": {"reachable": false}}]}"#;
    let out = run_with_stdin(&["autoscaler", "decide"], input);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> =
        stdout(&out).lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(lines.len(), 3, "one line per step");
    assert_eq!(
        lines[0],
        serde_json::json!({"at_ms": 0, "desired": 4, "excess_burst_capacity": -51, "panicking": true})
    );
    assert_eq!(lines[1]["desired"], 4, "no scale-down while panicking: {}", lines[1]);
    assert_eq!(lines[2]["panicking"], true);

    // Malformed input: a clear error naming the field, exit code 2.
    let out =
        run_with_stdin(&["autoscaler", "decide"], r#"{"spec": {"target": "ten"}, "initial_ready": 0, "steps": []}"#);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("spec.target"), "names the field: {}", stderr(&out));
    let out = run_with_stdin(&["autoscaler", "decide"], "not json");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn autoscaler_simulate_replays_a_trace_as_csv_and_svg() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let trace = dir.path().join("trace.txt");
    // Ten idle seconds, a minute at 50 concurrent requests, then idle.
    let values: Vec<String> = (0..200).map(|s| if (10..70).contains(&s) { "50" } else { "0" }.to_owned()).collect();
    std::fs::write(&trace, values.join("\n")).expect("writing the trace");
    let trace = trace.to_str().expect("utf-8 path");
    let out = Command::new(revgate_bin())
        .args(["autoscaler", "simulate", "--trace", trace, "--annotations", "target=10,window=6s"])
        .args(["--config", "scale-to-zero-grace-period=6s", "--pod-start-ms", "500"])
        .output()
        .expect("revgate autoscaler simulate");
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = stdout(&out);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("t_s,observed,desired,ready"));
    let rows: Vec<Vec<f64>> = lines.map(|l| l.split(',').map(|v| v.parse().expect("a number")).collect()).collect();
    let peak = rows.iter().map(|r| r[3]).fold(0.0, f64::max);
    // Target 10 at 70% utilization: 50 concurrent requests need 8 instances.
    assert_eq!(peak, 8.0, "ready instances at the peak:\n{csv}");
    assert_eq!(rows.last().map(|r| r[3]), Some(0.0), "back to zero when idle:\n{csv}");

    let out = Command::new(revgate_bin())
        .args(["autoscaler", "simulate", "--trace", trace, "-o", "svg"])
        .output()
        .expect("revgate autoscaler simulate");
    assert!(out.status.success(), "{}", stderr(&out));
    let svg = stdout(&out);
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("<polyline") && svg.trim_end().ends_with("</svg>"));

    let out = Command::new(revgate_bin())
        .args(["autoscaler", "simulate", "--trace", trace, "--annotations", "min-scale=5,max-scale=2"])
        .output()
        .expect("revgate autoscaler simulate");
    assert_eq!(out.status.code(), Some(2), "invalid annotations are rejected");
    assert!(stderr(&out).contains("autoscaling.knative.dev/min-scale"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_runtime_reports_unmapped_images_and_autoscaling_annotations_are_validated() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let revgate = Revgate::start_with(
        &dir.path().join("state"),
        support::free_port(),
        format!("127.0.0.1:{}", support::free_port()).parse().expect("address"),
        format!("127.0.0.1:{}", support::free_port()).parse().expect("address"),
        &[
            "--activation-addr".to_owned(),
            format!("127.0.0.1:{}", support::free_port()),
            "--runtime".to_owned(),
            "process".to_owned(),
        ],
    )
    .await;

    let bad = revgate.write_manifest(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/window: \"2s\"\n    spec:\n      containers:\n      - image: example.com/app:v1\n",
    );
    let out = revgate.cli(&["apply", "-f", bad.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let errors = stderr(&out);
    assert!(
        errors.contains("spec.template.metadata.annotations[autoscaling.knative.dev/window]"),
        "names the annotation: {errors}"
    );

    revgate.apply(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: app\n  namespace: default\nspec:\n  template:\n    spec:\n      containers:\n      - image: example.com/app:v1\n",
    );
    let revision = support::wait_for("the runtime's verdict on app-00001", async || {
        let table = stdout(&revgate.cli(&["get", "revision", "app-00001"]));
        table.contains("ImageNotMapped").then_some(table)
    })
    .await;
    assert!(revision.contains("False"), "{revision}");
    let yaml = stdout(&revgate.cli(&["get", "revision", "app-00001", "-o", "yaml"]));
    assert!(yaml.contains("example.com/app:v1") && yaml.contains("--images"), "the message says what to do:\n{yaml}");
}

/// The YAML documents of a stream, parsed.
fn documents(yaml: &str) -> Vec<serde_json::Value> {
    yaml.split("\n---")
        .filter(|doc| doc.lines().any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#')))
        .map(|doc| serde_yaml_ng::from_str(doc).unwrap_or_else(|e| panic!("not YAML ({e}):\n{doc}")))
        .collect()
}

#[test]
fn render_istio_prints_cluster_mode_objects_for_every_shared_sample() {
    for sample in shared_samples() {
        let out = Command::new(revgate_bin()).args(["render", "istio", "-f"]).arg(&sample).output().expect("render");
        assert!(out.status.success(), "render istio {}: {}", sample.display(), stderr(&out));
        let objects = documents(&stdout(&out));
        let kinds: std::collections::BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        for kind in ["Deployment", "Service", "WasmPlugin"] {
            assert!(kinds.contains(kind), "{}: no {kind} in {kinds:?}", sample.display());
        }
    }
    let out = Command::new(revgate_bin())
        .args(["render", "istio", "--gateway", "not-namespaced", "-f"])
        .arg(repo_root().join("examples/hello-split.yaml"))
        .output()
        .expect("render");
    assert!(!out.status.success(), "a bad option is refused");
    assert!(stderr(&out).contains("gateway"), "names the option: {}", stderr(&out));
}

#[test]
fn istio_manifests_are_complete_and_their_wasm_plugin_is_what_revgate_renders() {
    let dir = repo_root().join("istio-manifests");
    let kustomization = documents(&std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization"));
    let listed: Vec<String> = kustomization[0]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file").to_owned())
        .collect();
    let mut numbered: Vec<String> = std::fs::read_dir(&dir)
        .expect("istio-manifests")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    numbered.sort();
    assert_eq!(listed, numbered, "the kustomization applies every numbered file, in order");
    let mut kinds = Vec::new();
    for file in &numbered {
        for object in documents(&std::fs::read_to_string(dir.join(file)).expect("manifest")) {
            kinds.push(format!(
                "{}/{}",
                object["kind"].as_str().expect("kind"),
                object["metadata"]["name"].as_str().expect("name")
            ));
        }
    }
    for expected in [
        "CustomResourceDefinition/services.serving.knative.dev",
        "CustomResourceDefinition/revisions.serving.knative.dev",
        "ClusterRole/revgate-controller",
        "Deployment/revgate",
        "Service/revgate",
        "Gateway/knative-ingress-gateway",
        "WasmPlugin/revgate",
    ] {
        assert!(kinds.contains(&expected.to_owned()), "{expected} missing from istio-manifests: {kinds:?}");
    }

    let shipped = documents(&std::fs::read_to_string(dir.join("600-wasmplugin.yaml")).expect("wasmplugin"));
    let out = Command::new(revgate_bin())
        .args(["render", "istio", "-f"])
        .arg(repo_root().join("examples/hello-split.yaml"))
        .output()
        .expect("render");
    let rendered: Vec<serde_json::Value> =
        documents(&stdout(&out)).into_iter().filter(|o| o["kind"] == "WasmPlugin").collect();
    assert_eq!(shipped, rendered, "istio-manifests/600-wasmplugin.yaml is what `revgate render istio` prints");
}

#[test]
fn the_filter_packs_into_an_oci_image_layout_istio_can_pull() {
    use sha2::Digest;
    let dir = tempfile::tempdir().expect("temporary directory");
    let layout = dir.path().join("oci");
    let out = Command::new(repo_root().join("scripts/build-filter-oci.sh")).arg(&layout).output().expect("script");
    assert!(out.status.success(), "{}", stderr(&out));
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).expect("the blob is in the layout");
        let actual: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(actual, hex, "blob content matches its digest");
        bytes
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json")).expect("JSON");
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().expect("digest"))).expect("JSON");
    assert_eq!(manifest["annotations"]["module.wasm.image/variant"], "compat");
    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let gz = blob(layer["digest"].as_str().expect("digest"));
    let tar = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc | tar -tvf -")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(&gz)?;
            child.wait_with_output()
        })
        .expect("listing the layer");
    assert!(stdout(&tar).contains("plugin.wasm"), "the layer holds plugin.wasm: {}", stdout(&tar));
}
