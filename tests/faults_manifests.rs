//! Fault injection: hostile or mistaken manifests. Each test names the fault
//! it injects and what revgate promises for it; all run the real `revgate
//! serve`, and a real Envoy where traffic matters.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::Value;
use support::{Backend, Envoy, Revgate, stderr, stdout, wait_for};

const HOST: &str = "hello.default.example.com";
const CANARY_HOST: &str = "canary-hello.default.example.com";
const ROUTE_HOST: &str = "web.default.example.com";

/// A bare Route sending everything to `revision`.
fn bare_route(revision: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata:\n  name: web\nspec:\n  traffic:\n  - revisionName: {revision}\n    percent: 100\n"
    )
}

/// The `AllTrafficAssigned` condition of a route, as `get route -o json` shows it.
fn all_traffic_assigned(revgate: &Revgate, route: &str) -> Value {
    let out = revgate.cli(&["get", "route", route, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let routes: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    routes[0]["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "AllTrafficAssigned").cloned())
        .expect("an AllTrafficAssigned condition")
}

/// Requests on every host until stopped, counting answers that are not 200.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(envoy: &Envoy) -> Self {
        let (stop, sent, failed) = (Arc::new(AtomicBool::new(false)), Arc::default(), Arc::default());
        let client = envoy.client();
        let task = tokio::spawn({
            let (stop, sent, failed): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) =
                (stop.clone(), Arc::clone(&sent), Arc::clone(&failed));
            async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for host in [HOST, CANARY_HOST, ROUTE_HOST] {
                        let reply = client.get(host, "/").await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        if reply.status != 200 {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.push(format!("{host}: {} {}", reply.status, reply.body));
                        }
                    }
                }
                failures
            }
        });
        Self { stop, sent, failed, task }
    }

    /// Waits until `more` requests were sent after now.
    async fn wait_more(&self, more: u64) {
        let target = self.sent.load(Ordering::Relaxed) + more;
        wait_for(&format!("{more} more requests through the gateway"), async || {
            (self.sent.load(Ordering::Relaxed) >= target).then_some(())
        })
        .await;
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.expect("the load task");
        assert_eq!(self.failed.load(Ordering::Relaxed), failures.len() as u64);
        (self.sent.load(Ordering::Relaxed), failures)
    }
}

/// Fault: a traffic split names a revision that does not exist (a typo), in
/// a Service's `spec.traffic` and in a bare Route.
/// Promise: as in Knative, every host keeps serving the last traffic whose
/// targets all existed — zero failed requests across the bad apply and a
/// restart — the route's status says `AllTrafficAssigned=False` with reason
/// `RevisionMissing`, the CLI warns naming the route and the revision, and
/// the fixed manifest takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_naming_a_missing_revision_keeps_serving_the_last_traffic() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let a = Backend::start("hello-a").await;
    let b = Backend::start("hello-b").await;
    let mut revgate = Revgate::start(&dir.path().join("state"), support::free_port()).await;
    let envoy = Envoy::start_ads(dir.path(), &revgate, false).await;

    revgate.apply(&format!(
        "{}---\n{}---\n{}",
        support::hello_on(&a),
        support::hello_split(&b, 50, "hello-00002"),
        bare_route("hello-00001")
    ));
    revgate.wait_acked(&envoy.node_id).await;
    envoy.wait_body(CANARY_HOST, &[], "hello-b").await;
    envoy.wait_body(ROUTE_HOST, &[], "hello-a").await;

    let load = Load::start(&envoy);
    load.wait_more(30).await;
    let file = revgate.write_manifest(&format!(
        "{}---\n{}",
        support::hello_split(&b, 50, "hello-00009"),
        bare_route("hello-00009")
    ));
    let out = revgate.cli(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "the apply is accepted, as in Knative: {}", stderr(&out));
    let warnings = stderr(&out);
    for route in ["route.serving.knative.dev/hello", "route.serving.knative.dev/web"] {
        assert!(
            warnings.lines().any(|l| l.starts_with("Warning: ") && l.contains(route) && l.contains("hello-00009")),
            "a warning names {route} and the missing revision:\n{warnings}"
        );
    }
    revgate.wait_acked(&envoy.node_id).await;
    load.wait_more(300).await;

    for route in ["hello", "web"] {
        let condition = all_traffic_assigned(&revgate, route);
        assert_eq!(condition["status"], "False", "{route}: {condition}");
        assert_eq!(condition["reason"], "RevisionMissing", "{route}: {condition}");
        assert_eq!(condition["message"], "Revision \"hello-00009\" referenced in traffic not found.", "{condition}");
    }

    // The kept traffic is part of the stored world: a restart keeps serving it.
    revgate.restart().await;
    revgate.wait_acked(&envoy.node_id).await;
    load.wait_more(300).await;
    let (sent, failures) = load.stop().await;
    println!("{sent} requests across the bad apply and a restart, {} not 200", failures.len());
    assert!(
        failures.is_empty(),
        "every request answered 200; the first failures: {:?}",
        &failures[..failures.len().min(6)]
    );

    // Fixing the manifest takes effect.
    revgate.apply(&bare_route("hello-00002"));
    revgate.wait_acked(&envoy.node_id).await;
    envoy.wait_body(ROUTE_HOST, &[], "hello-b").await;
    assert_eq!(all_traffic_assigned(&revgate, "web")["status"], "True");
}

/// A manifest whose `affinity` nests `levels` maps below the pod spec.
fn nested(name: &str, levels: usize) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n      - image: example.com/{name}\n      affinity: {}1{}\n",
        "{x: ".repeat(levels),
        "}".repeat(levels)
    )
}

/// Fault: a Service whose pod spec nests a field 120 levels deep — deep
/// enough that, stored, it would exceed what `serde_json` reads back.
/// Promise: it is rejected at apply time naming the file, the object, the
/// field path and the limit, nothing changes, and the server restarted on
/// the same state starts and lists every Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_manifest_is_rejected_and_the_store_stays_readable() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut revgate = Revgate::start(&dir.path().join("state"), support::free_port()).await;
    revgate.apply(&nested("shallow", 10));

    let file = revgate.write_manifest(&nested("deep", 120));
    let out = revgate.cli(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    let message = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "rejected: {message}");
    for part in [
        file.to_str().expect("utf-8 path"),
        "service/default/deep",
        "spec.template.spec.affinity.x.x",
        "nested more than 64 levels deep",
    ] {
        assert!(message.contains(part), "the error names {part:?}: {message}");
    }

    revgate.restart().await;
    let out = revgate.cli(&["get", "ksvc", "-A"]);
    assert!(out.status.success(), "get ksvc -A after a restart: {}", stderr(&out));
    let listed = stdout(&out);
    assert!(listed.contains("shallow") && !listed.contains("deep"), "{listed}");
}

/// The process's peak resident memory (`VmHWM`), in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line")
}

/// The pid of the `revgate serve` running on `state_dir`.
fn serve_pid(revgate: &Revgate) -> u32 {
    let state = revgate.state_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&&b"serve"[..]) && args.contains(&state.as_bytes())
        })
        .expect("the revgate serve process")
}

/// About 130 KB of YAML: one anchored list of 600 strings, referenced
/// 16,000 times — over a billion bytes once the aliases are expanded.
fn alias_bomb() -> String {
    let strings = vec![format!("\"{}\"", "x".repeat(100)); 600].join(",");
    let references = vec!["*b"; 16_000].join(",");
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\ndata:\n  big: &b [{strings}]\n  many: [{references}]\n"
    )
}

/// Fault: a small manifest whose YAML anchors are referenced thousands of
/// times (an alias bomb).
/// Promise: it is rejected naming the file and the limit on what one apply
/// may expand to, the server's peak memory stays modest, and it goes on
/// accepting applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_bomb_is_rejected_within_bounded_memory() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let revgate = Revgate::start(&dir.path().join("state"), support::free_port()).await;
    let bomb = alias_bomb();
    assert!(bomb.len() < 140_000, "{} bytes", bomb.len());
    let file = revgate.write_manifest(&bomb);

    let out = revgate.cli(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    let message = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "rejected: {message}");
    assert!(message.contains(file.to_str().expect("utf-8 path")), "names the file: {message}");
    assert!(message.contains("expand to more than 67108864 bytes"), "names the limit: {message}");

    let peak_mb = peak_rss_kb(serve_pid(&revgate)) / 1024;
    println!("revgate serve peak RSS after a {} KB alias bomb: {peak_mb} MB", bomb.len() / 1024);
    assert!(peak_mb < 300, "peak RSS {peak_mb} MB");

    revgate.apply(&nested("after", 1));
}

/// Faults: files without any object, duplicate keys, a namespace that is no
/// DNS-1123 label, and `delete -f` on a manifest that carries only what
/// identifies the object.
/// Promise: the first three are rejected as kubectl rejects them, naming the
/// file, object and field, and change nothing; a delete needs only
/// apiVersion, kind, name and namespace, while unknown kinds stay an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_duplicate_and_reference_manifests_are_read_as_kubectl_reads_them() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let revgate = Revgate::start(&dir.path().join("state"), support::free_port()).await;
    revgate.apply(&nested("hello", 1));
    let before = stdout(&revgate.cli(&["get", "ksvc", "-A", "-o", "json"]));

    let empty = revgate.write_manifest("# nothing here\n---\n");
    let empty = empty.to_str().expect("utf-8 path");
    for (verb, want) in
        [("apply", "error: no objects passed to apply"), ("delete", "error: no objects passed to delete")]
    {
        let out = revgate.cli(&[verb, "-f", empty]);
        assert_eq!(out.status.code(), Some(2), "{verb}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{verb}: {}", stderr(&out));
    }

    let rejected = [
        (
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: dup\nspec:\n  template:\n    spec:\n      containers:\n      - image: example.com/a\n        image: example.com/b\n",
            "service/default/dup: spec.template.spec.containers[0].image: duplicate key",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: a/b\ndata: {}\n",
            "configmap/a/b/settings: metadata.namespace: \"a/b\" is not a DNS-1123 label",
        ),
    ];
    for (manifest, want) in rejected {
        let file = revgate.write_manifest(manifest);
        let out = revgate.cli(&["apply", "-f", file.to_str().expect("utf-8 path")]);
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "rejected: {message}");
        assert!(message.contains(file.to_str().expect("utf-8 path")) && message.contains(want), "{want}: {message}");
    }
    assert_eq!(stdout(&revgate.cli(&["get", "ksvc", "-A", "-o", "json"])), before, "nothing changed");

    // A kind revgate does not manage is skipped on delete too (with --strict, refused).
    let unknown = revgate.write_manifest("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: hello\n");
    let out = revgate.cli(&["delete", "-f", unknown.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Warning: skipped apps/v1 Deployment default/hello: not a Knative Serving resource"),
        "{}",
        stderr(&out)
    );
    let out = revgate.cli(&["delete", "--strict", "-f", unknown.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("apps/v1 Deployment default/hello is not a Knative Serving resource"),
        "{}",
        stderr(&out)
    );

    let reference =
        revgate.write_manifest("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\n");
    let out = revgate.cli(&["delete", "-f", reference.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "delete by reference: {}", stderr(&out));
    assert!(stdout(&out).contains("service.serving.knative.dev/hello deleted"), "{}", stdout(&out));
}

/// Knative's own test setup mixing two Knative Services with a Kubernetes
/// Service and a Deployment (`tests/fixtures/knative/`).
fn mixed_kinds_setup() -> std::path::PathBuf {
    support::repo_root().join("tests/fixtures/knative/dataplane-probe-setup.yaml")
}

/// Fault: a file mixing Knative Services with kinds revgate does not manage
/// (Knative's `dataplane-probe-setup.yaml`). Promise: `apply` applies the
/// Knative objects and prints one warning line per skipped document;
/// `--strict` refuses the file naming the file, the document and the kind,
/// and changes nothing; `render envoy|istio` read it the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_mixing_other_kinds_applies_with_a_warning_per_document_and_strict_refuses_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let revgate = Revgate::start(&dir.path().join("state"), support::free_port()).await;
    let setup = mixed_kinds_setup();
    let setup = setup.to_str().expect("utf-8 path");
    let skipped = [
        "Warning: skipped v1 Service default/deployment: not a Knative Serving resource",
        "Warning: skipped apps/v1 Deployment default/deployment: not a Knative Serving resource",
    ];

    let out = revgate.cli(&["apply", "--strict", "-f", setup]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let refusal = format!("{setup}: document 2: v1 Service default/deployment is not a Knative Serving resource");
    assert!(stderr(&out).contains(&refusal), "{}", stderr(&out));
    let none = revgate.cli(&["get", "ksvc"]);
    assert!(stderr(&none).contains("No resources found"), "nothing applied: {}", stdout(&none));

    let out = revgate.cli(&["apply", "-f", setup]);
    assert!(out.status.success(), "{}", stderr(&out));
    println!("{}{}", stderr(&out), stdout(&out));
    let errors = stderr(&out);
    let warnings: Vec<&str> = errors.lines().filter(|l| l.contains("skipped")).collect();
    assert_eq!(warnings, skipped, "one line per skipped document");
    for created in ["service.serving.knative.dev/activator created", "service.serving.knative.dev/queue-proxy created"]
    {
        assert!(stdout(&out).contains(created), "{created}: {}", stdout(&out));
    }

    for render in [["render", "envoy", "-f", setup], ["render", "istio", "-f", setup]] {
        let out = revgate.cli(&render);
        assert!(out.status.success(), "{render:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().filter(|l| l.contains("skipped")).collect::<Vec<_>>(), skipped, "{render:?}");
        assert!(stdout(&out).contains("activator"), "{render:?}");
        let mut strict = render.to_vec();
        strict.insert(2, "--strict");
        let out = revgate.cli(&strict);
        assert!(!out.status.success() && stderr(&out).contains(&refusal), "{strict:?}: {}", stderr(&out));
    }
}
