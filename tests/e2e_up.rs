//! `revgate up` as a newcomer runs it: only the gateway and admin ports
//! chosen, everything else found by itself.
//!
//! Run: `cargo test -p revgate --test e2e_up -- --nocapture`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{Up, free_port};

const MANIFEST: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    spec:
      containers:
        - image: ghcr.io/knative/helloworld-go:latest
          env:
            - name: TARGET
              value: side by side
"#;

/// `revgate up` running [`MANIFEST`] given only `--http-port` and
/// `--admin-port` (and the files it runs), ready.
async fn up_on(dir: &Path, http_port: u16, admin_port: u16) -> Up {
    std::fs::create_dir_all(dir).expect("creating the test directory");
    Up::start_on(dir, MANIFEST, http_port, admin_port).await
}

/// The port printed after `label` in the progress lines (e.g. `xDS 127.0.0.1:`).
fn printed_port(up: &Up, label: &str) -> u16 {
    let log = up.log();
    let port = log.split(label).nth(1).map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>());
    port.and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port after {label:?} in:\n{log}"))
}

async fn answer(http_port: u16, host: &str) -> (u16, String) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client");
    let response = client
        .get(format!("http://127.0.0.1:{http_port}/"))
        .header("host", host)
        .send()
        .await
        .expect("a request through the gateway");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Two `up` runs on one machine, told apart by `--http-port` and
/// `--admin-port` alone: each finds its own xDS, activation and Envoy admin
/// ports, prints them, and serves its own copy of the app from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ups_side_by_side_need_only_the_http_and_admin_ports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = up_on(&dir.path().join("first"), free_port(), free_port()).await;
    let second = up_on(&dir.path().join("second"), free_port(), free_port()).await;

    for label in ["xDS 127.0.0.1:", "activation 127.0.0.1:", "admin http://127.0.0.1:"] {
        let (a, b) = (printed_port(&first, label), printed_port(&second, label));
        assert_ne!(a, b, "both runs printed the same port after {label:?}");
        assert_ne!(a, 0, "a printed port is 0 after {label:?}");
    }
    for up in [&first, &second] {
        let (status, body) = answer(up.http_port, "hello.default.example.com").await;
        assert_eq!(status, 200, "through port {}: {body}\n{}", up.http_port, up.log());
        assert!(body.contains("side by side"), "unexpected body: {body}");
    }
}

/// The URL `up` prints for a service is one a browser opens as printed:
/// `*.localhost` resolves to loopback by standard (RFC 6761; browsers and
/// curl do it themselves), and the gateway serves that name next to the
/// Knative domain, whose URL keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_localhost_url_opens_without_a_host_header() {
    let dir = tempfile::tempdir().expect("temp dir");
    let up = up_on(dir.path(), free_port(), free_port()).await;

    let url = format!("http://hello.default.localhost:{}/", up.http_port);
    assert!(up.log().contains(&format!("    {url}\n")), "`up` did not print {url}:\n{}", up.log());
    // What a browser does with the name: loopback, without asking DNS.
    let browser = reqwest::Client::builder()
        .resolve("hello.default.localhost", std::net::SocketAddr::from(([127, 0, 0, 1], up.http_port)))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");
    let response = browser.get(&url).send().await.expect("a request to the printed URL");
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{url}: {body}\n{}", up.log());
    assert!(body.contains("side by side"), "unexpected body: {body}");

    let (status, body) = answer(up.http_port, "hello.default.example.com").await;
    assert_eq!(status, 200, "the Knative domain stopped answering: {body}");
    let status_url = up_url(&up);
    assert_eq!(status_url, "http://hello.default.example.com", "the Service's URL stays Knative's");
}

/// The hints `up` prints run as printed, the tables show what matters
/// (the split of a Route, target by target), and the log piped to a file
/// carries no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_hints_run_and_the_tables_show_the_split() {
    let dir = tempfile::tempdir().expect("temp dir");
    let up = up_on(dir.path(), free_port(), free_port()).await;
    let (status, _) = answer(up.http_port, "hello.default.example.com").await;
    assert_eq!(status, 200);

    let log = up.log();
    let hints =
        log.lines().find_map(|l| l.strip_prefix("Watch it scale: ")).unwrap_or_else(|| panic!("no hint:\n{log}"));
    let get_kpa = hints.split("   ·   ").next().unwrap_or_default();
    let out = Command::new("sh").arg("-c").arg(get_kpa).output().expect("running the printed hint");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "`{get_kpa}` failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("DESIREDSCALE") && stdout.contains("hello-00001"), "`{get_kpa}` printed:\n{stdout}");

    let get_route = get_kpa.replace(" get kpa", " get route");
    let out = Command::new("sh").arg("-c").arg(&get_route).output().expect("running get route");
    let table = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "URL", "TRAFFIC", "READY", "REASON", "ROLLOUT"], "{table}");
    assert!(table.contains("100% hello-00001"), "the split is missing:\n{table}");

    assert!(log.contains(" INFO "), "no log lines to check:\n{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log written to a file:\n{log}");
}

/// The Service's `status.url`, as `revgate up` printed it first.
fn up_url(up: &Up) -> String {
    let log = up.log();
    let line = log.lines().find(|l| l.trim_start().starts_with("default/hello ")).unwrap_or_default();
    line.split_whitespace().nth(1).unwrap_or_default().to_owned()
}
