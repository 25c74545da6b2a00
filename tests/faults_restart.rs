//! Fault injection: the control plane killed and restarted, a damaged
//! store, and hostile or careless admin API clients. Each test names the
//! fault it injects and what revgate promises for it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use support::{Backend, DEADLINE, Envoy, Revgate, service_manifest as service, stderr, stdout, wait_for};

const HOST: &str = "hello.default.example.com";
const REVISION: &str = "hello-00001";

/// Fields drop in order: the processes go before the directory holding their logs.
struct Setup {
    revgate: Revgate,
    _dir: tempfile::TempDir,
}

async fn start() -> Setup {
    let dir = tempfile::tempdir().expect("temporary directory");
    let revgate = Revgate::start(&dir.path().join("state"), support::free_port()).await;
    Setup { revgate, _dir: dir }
}

/// Fault: `kill -9` of `revgate serve --runtime external` (with the
/// gateway filter) while a client sends requests without pause, then a
/// restart on the same state.
/// Promise: endpoints registered before the crash are restored from the
/// store, neither Envoy nor its filters are told the revision lost them, and
/// no request fails — before, during or after the restart; the revision's
/// status says where its endpoints come from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_serve_fails_no_request_over_delta() {
    restart_under_load(true).await;
}

/// As above, with Envoy on state-of-the-world xDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_serve_fails_no_request_over_sotw() {
    restart_under_load(false).await;
}

async fn restart_under_load(delta: bool) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut revgate = Revgate::start_with_filter(&dir.path().join("state"), support::free_port(), "{}").await;
    let envoy = Envoy::start_ads(dir.path(), &revgate, delta).await;
    let backend = Backend::start("hello-backend").await;
    revgate.apply(&service("hello"));
    revgate.set_endpoints(REVISION, &[backend.addr]).await;
    revgate.wait_acked(&envoy.node_id).await;
    envoy.wait_body(HOST, &[], "hello-backend").await;
    let before = revision_status(&revgate).await;
    assert_eq!(before.pointer("/registeredEndpoints/source"), Some(&Value::from("Registered")), "{before:#}");

    let stop = Arc::new(AtomicBool::new(false));
    let client = envoy.client();
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let reply = client.get(HOST, "/").await;
                if reply.status == 200 {
                    ok += 1;
                } else {
                    failed.push(reply);
                }
            }
            (ok, failed)
        }
    });
    wait_for("requests to flow", async || (backend.served.load(Ordering::SeqCst) > 50).then_some(())).await;

    revgate.process.kill();
    let during = backend.served.load(Ordering::SeqCst);
    wait_for("requests to flow with the control plane down", async || {
        (backend.served.load(Ordering::SeqCst) > during + 50).then_some(())
    })
    .await;
    revgate.restart().await;
    revgate.wait_acked(&envoy.node_id).await;
    let after = backend.served.load(Ordering::SeqCst);
    wait_for("requests to flow after the restart", async || {
        (backend.served.load(Ordering::SeqCst) > after + 200).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.expect("request loop");
    let api = if delta { "delta" } else { "SotW" };
    println!("across kill -9 and restart ({api} xDS): {ok} requests answered 200, {} not", failed.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        failed[0]
    );

    let restored = revision_status(&revgate).await;
    assert_eq!(restored.pointer("/registeredEndpoints/source"), Some(&Value::from("Restored")), "{restored:#}");
    assert_eq!(
        restored.pointer("/registeredEndpoints/registeredAt"),
        before.pointer("/registeredEndpoints/registeredAt"),
        "the time of the last registration is kept"
    );
    assert_eq!(restored.pointer("/actualReplicas"), Some(&Value::from(1)), "{restored:#}");

    // The registrar speaking again makes them registered anew.
    revgate.set_endpoints(REVISION, &[backend.addr]).await;
    let registered = revision_status(&revgate).await;
    assert_eq!(registered.pointer("/registeredEndpoints/source"), Some(&Value::from("Registered")), "{registered:#}");
}

async fn revision_status(revgate: &Revgate) -> Value {
    let rows = revgate.get_json(&format!("/v1/revisions?namespace=default&name={REVISION}")).await;
    rows.pointer("/0/status").cloned().unwrap_or(Value::Null)
}

/// Writes `value` as the raw row `key` of `table` in a stopped server's store.
fn write_raw_row(state_dir: &Path, table: &str, key: &str, value: &[u8]) {
    let db = redb::Database::create(state_dir.join("state.redb")).expect("opening the store");
    let txn = db.begin_write().expect("write transaction");
    {
        let definition: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new(table);
        txn.open_table(definition).expect("table").insert(key, value).expect("insert");
    }
    txn.commit().expect("commit");
}

/// Fault: stored objects that can no longer be read (here the Service and
/// its revision's rows overwritten with text that is not an object).
/// Promise: `revgate serve` still starts and serves everything else; every
/// CLI command warns of the unreadable objects; `revgate delete` of the
/// Service removes them, and the next start is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_unreadable_objects_starts_warns_and_lets_them_be_deleted() {
    let mut s = start().await;
    s.revgate.apply(&format!("{}---\n{}", service("hello"), service("other")));
    s.revgate.process.kill();
    write_raw_row(&s.revgate.state_dir, "services", "default/hello", b"[[[not an object");
    write_raw_row(&s.revgate.state_dir, "revisions", "default/hello-00001", b"{\"truncated\":");

    s.revgate.restart().await;
    let out = s.revgate.cli(&["get", "ksvc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("other"), "the readable objects are served:\n{}", stdout(&out));
    let warnings = stderr(&out);
    assert!(
        warnings.contains("Warning: services.serving.knative.dev default/hello is stored but cannot be read")
            && warnings.contains("Warning: revisions.serving.knative.dev default/hello-00001"),
        "{warnings}"
    );
    let listed = s.revgate.get_json("/v1/unreadable").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed:#}");
    assert!(s.revgate.process.log().contains("a stored object cannot be read"), "{}", s.revgate.process.log());

    let file = s.revgate.write_manifest(&service("hello"));
    let out = s.revgate.cli(&["delete", "-f", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("service.serving.knative.dev/hello deleted"), "{}", stdout(&out));
    assert_eq!(s.revgate.get_json("/v1/unreadable").await, Value::Array(Vec::new()));

    s.revgate.restart().await;
    let out = s.revgate.cli(&["get", "revisions"]);
    assert!(!stderr(&out).contains("Warning"), "{}", stderr(&out));
    let revisions = stdout(&out);
    assert!(revisions.contains("other-00001") && !revisions.contains("hello-00001"), "{revisions}");
    // The name is free again.
    s.revgate.apply(&service("hello"));
}

/// Fault: other users on the machine. Promise: the state directory and the
/// database (which holds revisions' environment values) are their owner's
/// only.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_and_database_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let s = start().await;
    let mode = |path: &Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&s.revgate.state_dir), 0o700);
    assert_eq!(mode(&s.revgate.state_dir.join("state.redb")), 0o600);
    assert_eq!(mode(&s.revgate.state_dir.join("admin-token")), 0o600);
}

/// Fault: an apply larger than the admin API reads. Promise: a 413 in the
/// API's JSON error shape naming the limit, which the CLI prints with the
/// files it sent; nothing is applied and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_over_the_body_limit_names_the_limit_and_the_files() {
    let s = start().await;
    let padding = "x".repeat(33 * 1024 * 1024);
    let file = s.revgate.write_manifest(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\n  namespace: knative-serving\ndata:\n  k: \"{padding}\"\n"
    ));
    let name = file.to_str().expect("utf-8 path");
    let out = s.revgate.cli(&["apply", "-f", name]);
    let errors = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "rejected, not unreachable:\n{errors}");
    assert!(errors.contains("request body limit of 32 MiB"), "{errors}");
    assert!(errors.contains(name), "the files sent are named:\n{errors}");
    assert!(!errors.contains("cannot reach"), "{errors}");

    let response = reqwest::Client::new()
        .post(format!("{}/v1/apply", s.revgate.server()))
        .header("content-type", "application/json")
        .body(vec![b' '; 33 * 1024 * 1024])
        .send()
        .await
        .expect("admin API");
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("a JSON error");
    assert!(body.pointer("/errors/0").and_then(Value::as_str).is_some_and(|e| e.contains("32 MiB")), "{body}");
    assert!(s.revgate.cli(&["get", "ksvc"]).status.success());
}

/// Reads from `stream` until the server closes it (or the deadline passes);
/// returns what it sent.
fn read_until_closed(mut stream: TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => Some(String::from_utf8_lossy(&received).into_owned()),
        // Still open at the deadline.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
        Err(_) => Some(String::from_utf8_lossy(&received).into_owned()),
    }
}

/// Fault: a client that opens connections to the admin API (and to the
/// activation service) and never finishes its requests (half a request
/// head; a body that stops).
/// Promise: the server closes such connections (a stalled body gets a 408
/// naming the limit) and keeps answering everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_finish_a_request_are_disconnected() {
    let s = start().await;
    let addr = s.revgate.admin_addr;
    let half_head = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connecting");
        stream.write_all(b"GET /v1/services HTTP/1.1\r\nHost: revgate\r\n").expect("sending");
        read_until_closed(stream)
    });
    let half_body = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connecting");
        stream
            .write_all(b"POST /v1/apply HTTP/1.1\r\nHost: revgate\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"files\"")
            .expect("sending");
        read_until_closed(stream)
    });
    let activation = s.revgate.activation_addr();
    let half_head_activation = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(activation).expect("connecting");
        stream
            .write_all(b"GET /activation/v1/readiness?after=0&node=n HTTP/1.1\r\nHost: revgate\r\n")
            .expect("sending");
        read_until_closed(stream)
    });
    let idle = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connecting");
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: revgate\r\n\r\n").expect("sending");
        read_until_closed(stream)
    });
    // Meanwhile everyone else is served.
    assert!(s.revgate.cli(&["get", "ksvc"]).status.success());

    let answered = half_head.join().expect("client thread");
    assert_eq!(answered.as_deref(), Some(""), "half a request head: closed without an answer");
    let answered = half_head_activation.join().expect("client thread");
    assert_eq!(
        answered.as_deref(),
        Some(""),
        "half a request head to the activation service: closed without an answer"
    );
    let answered = half_body.join().expect("client thread").expect("a stalled body: the connection is closed");
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered}");
    assert!(answered.contains("body idle timeout of 10 s"), "{answered}");
    let answered = idle.join().expect("client thread").expect("an idle kept-alive connection is closed");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(s.revgate.cli(&["get", "ksvc"]).status.success());
}
