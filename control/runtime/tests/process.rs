//! The process runtime against real processes: Python HTTP servers and
//! shell scripts on 127.0.0.1 ports the runtime picks. Waits poll the
//! published states with a generous deadline; nothing asserts how fast.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::kill;
use nix::unistd::Pid;
use revgate_model::plan::{Endpoint, ObjectKey};
use revgate_model::resources::{Container, ContainerPort, EnvVar, RevisionSpec};
use revgate_runtime::record::{ProcessRecord, RecordedProcess};
use revgate_runtime::{
    ImageMap, InstanceCounts, InstanceStatus, Phase, ProcessConfig, ProcessRuntime, RECORD_FILE, RevisionState,
    RevisionStates, Runtime, Workload,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(20);

/// Serves the current directory on `$PORT`; `http.server` logs each request to stderr.
const HTTP_SERVER: [&str; 5] = ["python3", "-m", "http.server", "--bind", "127.0.0.1"];

fn config(dir: &Path, images: ImageMap) -> ProcessConfig {
    ProcessConfig {
        drain: Duration::from_millis(100),
        termination_grace: Duration::from_secs(5),
        ..ProcessConfig::new(images, dir.join("logs"))
    }
}

fn workload(name: &str, container: Container) -> Workload {
    Workload {
        key: ObjectKey::new("default", name),
        service: Some("svc".to_string()),
        configuration: "cfg".to_string(),
        spec: RevisionSpec { containers: vec![container], ..RevisionSpec::default() },
    }
}

fn command(command: &[&str], args: &[&str]) -> Container {
    Container {
        image: "example.com/unmapped:v1".to_string(),
        command: command.iter().map(ToString::to_string).collect(),
        args: args.iter().map(ToString::to_string).collect(),
        ..Container::default()
    }
}

/// A shell script run with `sh -c`.
fn script(body: &str) -> Container {
    command(&["sh", "-c", body], &[])
}

fn http_server() -> Container {
    command(&HTTP_SERVER, &["$(PORT)"])
}

/// Waits until `done` holds for the published states; panics with `what` after the deadline.
async fn wait_for(
    states: &mut watch::Receiver<Arc<RevisionStates>>,
    what: &str,
    mut done: impl FnMut(&RevisionStates) -> bool,
) -> Arc<RevisionStates> {
    let waited = match tokio::time::timeout(DEADLINE, states.wait_for(|s| done(s))).await {
        Ok(Ok(states)) => Some(Arc::clone(&states)),
        Ok(Err(_)) => panic!("the runtime stopped while waiting for {what}"),
        Err(_) => None,
    };
    waited.unwrap_or_else(|| panic!("timed out waiting for {what}; last states: {:#?}", states.borrow()))
}

async fn wait_for_revision(
    states: &mut watch::Receiver<Arc<RevisionStates>>,
    name: &str,
    what: &str,
    mut done: impl FnMut(&RevisionState) -> bool,
) -> RevisionState {
    let key = ObjectKey::new("default", name);
    let all = wait_for(states, &format!("{name}: {what}"), |s| s.get(&key).is_some_and(&mut done)).await;
    all.get(&key).cloned().unwrap_or_default()
}

/// Polls `path` until it contains `needle` (logs are written by other processes).
async fn wait_for_log(path: &Path, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {needle:?} in {}:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /` over a fresh connection; the whole response.
async fn http_get(endpoint: &Endpoint) -> String {
    let mut stream = tokio::net::TcpStream::connect(endpoint.to_string()).await.expect("connect to a ready endpoint");
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n").await.expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read response");
    response
}

/// Whether `pid` is a live process (a zombie waiting for a reaper counts as gone).
fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    if kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // `pid (comm) S …`: the state follows the last `)`.
    !matches!(stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()), Some(Some('Z')) | None)
}

async fn wait_until_dead(pid: u32) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while alive(pid) {
        assert!(tokio::time::Instant::now() < deadline, "process {pid} still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pids(state: &RevisionState) -> Vec<u32> {
    state.instances.iter().filter_map(|i| i.pid).collect()
}

#[tokio::test]
async fn scales_a_real_http_server_up_and_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = ProcessRuntime::start(config(dir.path(), ImageMap::empty())).expect("start");
    let mut states = runtime.states();
    let hello = workload("hello-00001", http_server());

    runtime.scale(&hello, 2);
    let two = wait_for_revision(&mut states, "hello-00001", "2 ready", |r| r.ready.len() == 2).await;
    assert_eq!(two.desired, 2);
    assert_eq!(two.reason, None);
    for endpoint in &two.ready {
        assert_eq!(endpoint.host, "127.0.0.1");
        let response = http_get(endpoint).await;
        assert!(response.starts_with("HTTP/1.0 200"), "{endpoint}: {response}");
    }
    for instance in &two.instances {
        assert_eq!(instance.phase, Phase::Ready);
        let (started, ready) = (instance.started_unix_ms.expect("started"), instance.ready_unix_ms.expect("ready"));
        assert!(ready >= started, "{instance:?}");
    }
    let ids: Vec<&str> = two.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["hello-00001-1", "hello-00001-2"]);
    let pids_two = pids(&two);
    assert_eq!(pids_two.len(), 2);

    runtime.scale(&hello, 1);
    let one = wait_for_revision(&mut states, "hello-00001", "1 instance", |r| r.instances.len() == 1).await;
    // Both were ready: the newest goes, the oldest (warmest) stays.
    assert_eq!(one.instances[0].id, "hello-00001-1");
    assert_eq!(one.ready, [Endpoint { host: "127.0.0.1".to_string(), port: one.instances[0].port }]);
    assert!(http_get(&one.ready[0]).await.starts_with("HTTP/1.0 200"));
    wait_until_dead(pids_two[1]).await;
    assert!(alive(pids_two[0]));

    runtime.scale(&hello, 0);
    let zero = wait_for_revision(&mut states, "hello-00001", "no instance", |r| r.instances.is_empty()).await;
    assert_eq!((zero.desired, zero.ready.len(), zero.reason), (0, 0, None));
    for pid in pids_two {
        assert!(!alive(pid), "pid {pid} survived scaling to zero");
    }
    runtime.shutdown().await;
}

#[tokio::test]
async fn removing_a_revision_stops_and_forgets_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = ProcessRuntime::start(config(dir.path(), ImageMap::empty())).expect("start");
    let mut states = runtime.states();
    let gone = workload("gone-00001", http_server());
    runtime.scale(&gone, 1);
    let ready = wait_for_revision(&mut states, "gone-00001", "ready", |r| r.ready.len() == 1).await;

    runtime.remove(&gone.key);
    wait_for(&mut states, "gone-00001 forgotten", |s| s.is_empty()).await;
    for pid in pids(&ready) {
        wait_until_dead(pid).await;
    }
    runtime.shutdown().await;
}

#[tokio::test]
async fn instances_get_knative_environment_and_log_where_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = ProcessRuntime::start(config(dir.path(), ImageMap::empty())).expect("start");
    let mut states = runtime.states();
    let mut container =
        script(r#"env | sort; echo "to stderr" >&2; exec python3 -m http.server --bind 127.0.0.1 "$PORT""#);
    container.env = vec![
        EnvVar { name: "TARGET".to_string(), value: Some("world".to_string()), value_from: None },
        EnvVar { name: "SELF_URL".to_string(), value: Some("http://127.0.0.1:$(PORT)/".to_string()), value_from: None },
    ];
    runtime.scale(&workload("env-00001", container), 1);
    let state = wait_for_revision(&mut states, "env-00001", "ready", |r| r.ready.len() == 1).await;

    let InstanceStatus { port, log, .. } = &state.instances[0];
    let documented: PathBuf = dir.path().join("logs/default/env-00001/env-00001-1.log");
    assert_eq!(log, &documented);
    let text = wait_for_log(log, "to stderr").await;
    for line in [
        format!("PORT={port}"),
        "K_SERVICE=svc".to_string(),
        "K_CONFIGURATION=cfg".to_string(),
        "K_REVISION=env-00001".to_string(),
        "TARGET=world".to_string(),
        format!("SELF_URL=http://127.0.0.1:{port}/"),
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing in the log:\n{text}");
    }
    assert!(text.contains("PATH="), "revgate's own environment is inherited:\n{text}");
    assert!(text.contains(&format!("[revgate] starting on 127.0.0.1:{port}")), "{text}");

    http_get(&state.ready[0]).await;
    wait_for_log(log, "\"GET / HTTP/1.0\" 200").await;
    runtime.shutdown().await;
    wait_for_log(log, "[revgate] exited with").await;
}

#[tokio::test]
async fn image_map_programs_run_with_the_container_args_appended() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("bin")).expect("mkdir");
    let program = dir.path().join("bin/serve.sh");
    std::fs::write(&program, "#!/bin/sh\necho \"args: $*\"\nexec python3 -m http.server --bind 127.0.0.1 \"$PORT\"\n")
        .expect("write script");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let map = dir.path().join("images.yaml");
    std::fs::write(&map, "example.com/app: [./bin/serve.sh, --from-map]\n").expect("write map");
    let images = ImageMap::load(&map).expect("valid map");

    let runtime = ProcessRuntime::start(config(dir.path(), images)).expect("start");
    let mut states = runtime.states();
    let container = Container {
        image: "example.com/app:v3".to_string(),
        args: vec!["--from-spec".to_string()],
        ..Container::default()
    };
    runtime.scale(&workload("mapped-00001", container), 1);
    let state = wait_for_revision(&mut states, "mapped-00001", "ready", |r| r.ready.len() == 1).await;
    wait_for_log(&state.instances[0].log, "args: --from-map --from-spec").await;
    runtime.shutdown().await;
}

#[tokio::test]
async fn revisions_that_cannot_run_say_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = ProcessRuntime::start(config(dir.path(), ImageMap::empty())).expect("start");
    let mut states = runtime.states();

    let unmapped = Container { image: "example.com/unmapped:v1".to_string(), ..Container::default() };
    runtime.scale(&workload("unmapped-00001", unmapped), 1);
    let state = wait_for_revision(&mut states, "unmapped-00001", "a reason", |r| r.reason.is_some()).await;
    assert_eq!(state.reason.as_deref(), Some("ImageNotMapped"));
    let message = state.message.unwrap_or_default();
    for part in ["default/unmapped-00001", "example.com/unmapped:v1", "--images FILE"] {
        assert!(message.contains(part), "{part:?} missing in {message:?}");
    }
    assert_eq!((state.desired, state.instances.len()), (1, 0));

    let mut secret = http_server();
    secret.env = vec![EnvVar { name: "TOKEN".to_string(), value: None, value_from: Some(serde_json::json!({})) }];
    runtime.scale(&workload("secret-00001", secret), 1);
    let state = wait_for_revision(&mut states, "secret-00001", "a reason", |r| r.reason.is_some()).await;
    assert_eq!(state.reason.as_deref(), Some("UnsupportedEnv"));
    assert!(state.instances.is_empty());

    let missing = command(&["./no/such/program"], &[]);
    runtime.scale(&workload("missing-00001", missing), 1);
    let state = wait_for_revision(&mut states, "missing-00001", "a reason", |r| r.reason.is_some()).await;
    assert_eq!(state.reason.as_deref(), Some("StartError"));
    let message = state.message.unwrap_or_default();
    assert!(message.contains("./no/such/program") && message.contains("retrying in 1s"), "{message}");
    runtime.shutdown().await;
}

#[tokio::test]
async fn crashing_instances_restart_with_growing_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = ProcessRuntime::start(config(dir.path(), ImageMap::empty())).expect("start");
    let mut states = runtime.states();
    let crash = workload("crash-00001", script("echo boom; exit 3"));
    runtime.scale(&crash, 1);

    let first = wait_for_revision(&mut states, "crash-00001", "a crash", |r| r.reason.is_some()).await;
    assert_eq!(first.reason.as_deref(), Some("CrashLoopBackOff"));
    let log = first.instances[0].log.display().to_string();
    let message = first.message.unwrap_or_default();
    for part in ["default/crash-00001", "crash-00001-1", "exit status: 3", "restart 1 in 1s", log.as_str()] {
        assert!(message.contains(part), "{part:?} missing in {message:?}");
    }
    assert_eq!(first.instances[0].phase, Phase::CrashLoop);
    assert!(first.ready.is_empty());

    // Restarted after 1 s, crashes, restarted after 2 s, crashes: the next wait is 4 s.
    let third = wait_for_revision(&mut states, "crash-00001", "the third crash", |r| {
        r.message.as_deref().is_some_and(|m| m.contains("restart 3 in 4s"))
    })
    .await;
    assert_eq!(third.instances.len(), 1, "the instance restarts in place");
    assert_eq!(third.instances[0].restarts, 2);
    let counts = runtime.instance_counts().borrow()[&ObjectKey::new("default", "crash-00001")];
    assert_eq!(
        counts,
        InstanceCounts { starts: 3, crashes: 3, restarts: 2 },
        "counted for /metrics: three starts, each crashed, two restarts so far"
    );
    let text = wait_for_log(&third.instances[0].log, "exited with exit status: 3").await;
    assert_eq!(text.lines().filter(|l| *l == "boom").count(), 3, "{text}");

    // Scaling down forgets a crash-looping instance at once, and its reason with it.
    runtime.scale(&crash, 0);
    let stopped = wait_for_revision(&mut states, "crash-00001", "stopped", |r| r.instances.is_empty()).await;
    assert_eq!(stopped.reason, None);
    runtime.shutdown().await;
}

#[tokio::test]
async fn stopping_drains_then_sends_sigterm_then_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ProcessConfig {
        drain: Duration::from_millis(300),
        termination_grace: Duration::from_secs(1),
        ..config(dir.path(), ImageMap::empty())
    };
    let runtime = ProcessRuntime::start(config).expect("start");
    let mut states = runtime.states();
    // Listens (the backlog answers the TCP probe) and ignores SIGTERM.
    let stubborn = r#"
import os, signal, socket, time
signal.signal(signal.SIGTERM, lambda *_: print("got TERM, not leaving", flush=True))
server = socket.socket()
server.bind(("127.0.0.1", int(os.environ["PORT"])))
server.listen()
print("listening", flush=True)
while True:
    time.sleep(0.05)
"#;
    let rev = workload("stubborn-00001", command(&["python3", "-c", stubborn], &[]));
    runtime.scale(&rev, 1);
    let ready = wait_for_revision(&mut states, "stubborn-00001", "ready", |r| r.ready.len() == 1).await;
    let pid = pids(&ready)[0];
    let log = ready.instances[0].log.clone();

    runtime.scale(&rev, 0);
    // Out of rotation at once, while the process still runs.
    let draining = wait_for_revision(&mut states, "stubborn-00001", "draining", |r| {
        r.instances.first().is_some_and(|i| i.phase == Phase::Draining)
    })
    .await;
    assert!(draining.ready.is_empty());
    assert_eq!(draining.instances[0].pid, Some(pid));

    wait_for_revision(&mut states, "stubborn-00001", "stopped", |r| r.instances.is_empty()).await;
    assert!(!alive(pid));
    let text = wait_for_log(&log, "exited with").await;
    // The line that starts with `start`, counted from the top.
    let position = |start: &str| {
        text.lines().position(|l| l.starts_with(start)).unwrap_or_else(|| panic!("{start:?} missing in:\n{text}"))
    };
    let order = [
        "listening",
        "[revgate] sending SIGTERM",
        "got TERM, not leaving",
        "[revgate] still running 1s after SIGTERM: sending SIGKILL",
        "[revgate] exited with signal: 9",
    ];
    let positions: Vec<usize> = order.iter().map(|line| position(line)).collect();
    assert!(positions.is_sorted(), "expected the lines {order:?} in this order:\n{text}");
    runtime.shutdown().await;
}

#[tokio::test]
async fn readiness_probe_http_get_gates_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = ProcessRuntime::start(config(dir.path(), ImageMap::empty())).expect("start");
    let mut states = runtime.states();
    let flag = dir.path().join("ready.flag");
    // /healthz answers 200 only while the flag exists and the probe sent its header.
    let server = r#"
import http.server, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path != "/healthz" or (os.path.exists(sys.argv[1]) and self.headers.get("X-Probe") == "yes")
        code = 200 if ok else 503
        print("probe", self.path, code, flush=True)
        self.send_response(code)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;
    let mut container = command(&["python3", "-c", server], &[flag.to_str().expect("utf-8 path")]);
    container.ports = vec![ContainerPort { container_port: Some(8080), ..ContainerPort::default() }];
    container.readiness_probe = Some(serde_json::json!({
        "httpGet": {"path": "/healthz", "port": 8080, "httpHeaders": [{"name": "X-Probe", "value": "yes"}]},
        "periodSeconds": 1,
        "failureThreshold": 1,
    }));
    runtime.scale(&workload("probed-00001", container), 1);
    let starting = wait_for_revision(&mut states, "probed-00001", "a process", |r| {
        r.instances.first().is_some_and(|i| i.pid.is_some())
    })
    .await;
    let log = starting.instances[0].log.clone();

    // Serving, but /healthz says no: not ready, though a TCP connection would succeed.
    let text = wait_for_log(&log, "probe /healthz 503\nprobe /healthz 503\nprobe /healthz 503\n").await;
    let state = states.borrow().get(&ObjectKey::new("default", "probed-00001")).cloned().unwrap_or_default();
    assert!(state.ready.is_empty(), "ready although /healthz failed:\n{text}");
    assert_eq!(state.instances[0].phase, Phase::Starting);

    std::fs::write(&flag, "").expect("create flag");
    wait_for_revision(&mut states, "probed-00001", "ready", |r| r.ready.len() == 1).await;
    std::fs::remove_file(&flag).expect("remove flag");
    let unready = wait_for_revision(&mut states, "probed-00001", "not ready", |r| r.ready.is_empty()).await;
    assert_eq!(unready.instances[0].phase, Phase::Starting);
    std::fs::write(&flag, "").expect("create flag");
    let again = wait_for_revision(&mut states, "probed-00001", "ready again", |r| r.ready.len() == 1).await;
    assert_eq!(again.instances[0].restarts, 0, "readiness never restarts a process");
    runtime.shutdown().await;
}

#[tokio::test]
async fn shutdown_skips_the_drain_and_leaves_no_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A drain this long would outlast the deadline: shutdown must not wait for it.
    let config = ProcessConfig { drain: Duration::from_secs(120), ..config(dir.path(), ImageMap::empty()) };
    let runtime = ProcessRuntime::start(config).expect("start");
    let mut states = runtime.states();
    runtime.scale(&workload("a-00001", http_server()), 2);
    // A wrapper that leaves a background process of its own behind.
    let wrapper = script(r#"sleep 300 & echo "helper $!"; exec python3 -m http.server --bind 127.0.0.1 "$PORT""#);
    runtime.scale(&workload("b-00001", wrapper), 1);
    let all =
        wait_for(&mut states, "3 ready instances", |s| s.values().map(|r| r.ready.len()).sum::<usize>() == 3).await;
    let b_log = all[&ObjectKey::new("default", "b-00001")].instances[0].log.clone();
    let text = wait_for_log(&b_log, "helper ").await;
    let helper: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("helper "))
        .and_then(|pid| pid.trim().parse().ok())
        .expect("helper pid in the log");
    let mut every_pid: Vec<u32> = all.values().flat_map(pids).collect();
    every_pid.push(helper);
    assert_eq!(every_pid.len(), 4);
    assert!(every_pid.iter().all(|&pid| alive(pid)));

    // Also scale one down, so that shutdown meets an instance in the middle of its drain.
    runtime.scale(&workload("a-00001", http_server()), 1);
    wait_for_revision(&mut states, "a-00001", "draining", |r| r.instances.iter().any(|i| i.phase == Phase::Draining))
        .await;

    tokio::time::timeout(DEADLINE, runtime.shutdown()).await.expect("shutdown within the deadline");
    for pid in every_pid {
        // The instances are reaped when shutdown returns; the helper, reparented, may need its new parent.
        if pid == helper {
            wait_until_dead(pid).await;
        } else {
            assert!(!alive(pid), "pid {pid} survived shutdown");
        }
    }
    let last: BTreeMap<ObjectKey, RevisionState> = (**runtime.states().borrow()).clone();
    assert!(last.values().all(|r| r.instances.is_empty()), "{last:#?}");

    // After shutdown, nothing starts any more and a second shutdown returns at once.
    runtime.scale(&workload("late-00001", http_server()), 1);
    runtime.shutdown().await;
}

/// The pids the runtime record in `logs` lists.
fn recorded_pids(logs: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(logs.join(RECORD_FILE)).expect("the runtime record");
    let record: serde_json::Value = serde_json::from_str(&text).expect("the runtime record is JSON");
    record["processes"].as_array().into_iter().flatten().filter_map(|p| p["pid"].as_u64()).map(|p| p as u32).collect()
}

#[tokio::test]
async fn a_new_runtime_stops_what_a_killed_one_left_running_and_records_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    // What a runtime killed with SIGKILL leaves: a recorded instance still
    // running in its own process group, and a recorded pid since taken by
    // another process (modelled by a wrong start time).
    let mut left = std::process::Command::new("sleep").arg("300").process_group(0).spawn().expect("sleep");
    let mut unrelated = std::process::Command::new("sleep").arg("300").process_group(0).spawn().expect("sleep");
    {
        let (mut record, _) = ProcessRecord::open(&logs.join(RECORD_FILE)).expect("record");
        record
            .insert(RecordedProcess::observe(left.id(), "instance old-00001-1 of default/old-00001").expect("running"));
        let mut recycled =
            RecordedProcess::observe(unrelated.id(), "instance old-00001-2 of default/old-00001").expect("running");
        recycled.start_time += 1;
        record.insert(recycled);
    }

    let runtime = ProcessRuntime::start(config(dir.path(), ImageMap::empty())).expect("start");
    let second = ProcessRuntime::start(config(dir.path(), ImageMap::empty())).expect_err("one runtime per directory");
    assert!(second.to_string().contains("--state-dir"), "{second}");

    let mut states = runtime.states();
    runtime.scale(&workload("a-00001", http_server()), 1);
    let ready = wait_for_revision(&mut states, "a-00001", "ready", |r| r.ready.len() == 1).await;
    let left_status = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(status) = left.try_wait().expect("waiting for sleep") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the recorded instance was stopped");
    assert_eq!(left_status.signal(), Some(15), "stopped with SIGTERM: {left_status:?}");
    assert!(unrelated.try_wait().expect("waiting for sleep").is_none(), "a recycled pid is never signalled");
    let _ = unrelated.kill();
    let _ = unrelated.wait();

    assert_eq!(recorded_pids(&logs), pids(&ready), "the record lists exactly the running instance");
    runtime.shutdown().await;
    assert!(recorded_pids(&logs).is_empty(), "nothing is recorded once every instance stopped");
}
