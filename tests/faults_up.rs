//! Fault injection: `revgate up` killed with SIGKILL.
//!
//! Run: `cargo test -p revgate --test faults_up -- --nocapture`.

mod support;

use serde_json::Value;
use support::{Up, alive, wait_for};

/// An app that must always run two instances (Knative's `min-scale`).
const MANIFESTS: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: floor
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "2"
    spec:
      containers:
        - image: ghcr.io/knative/autoscale-go:latest
"#;

const REVISION: &str = "floor-00001";
const HOST: &str = "floor.default.example.com";

/// One process as it was at a moment: its pid and its start time (field 22
/// of `/proc/<pid>/stat`), so that a pid taken over by a new process is not
/// mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    pid: i32,
    start_time: String,
}

impl Seen {
    fn now(pid: i32) -> Self {
        let start_time = start_time(pid).unwrap_or_else(|| panic!("process {pid} is not running"));
        Self { pid, start_time }
    }

    /// Whether this very process still runs.
    fn running(&self) -> bool {
        alive(self.pid) && start_time(self.pid).as_ref() == Some(&self.start_time)
    }
}

fn start_time(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19).map(str::to_owned)
}

/// Kills the process groups of a killed `up` if the test fails before the
/// next `up` stops them, so that a failure leaves nothing behind.
struct Orphans(Vec<Seen>);

impl Drop for Orphans {
    fn drop(&mut self) {
        for seen in &self.0 {
            if seen.running() {
                let group = nix::unistd::Pid::from_raw(seen.pid);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn pids(instances: &Value) -> Vec<i32> {
    let all = instances["instances"].as_array().into_iter().flatten();
    all.filter_map(|i| i["pid"].as_i64()).filter_map(|pid| i32::try_from(pid).ok()).collect()
}

async fn two_ready(up: &Up) -> Vec<i32> {
    wait_for("min-scale 2 to run two ready instances", async || {
        let instances = up.instances(REVISION).await;
        let ready = instances["ready"].as_array().map_or(0, Vec::len);
        (ready == 2).then(|| pids(&instances)).filter(|pids| pids.len() == 2)
    })
    .await
}

/// The fault: `revgate up` gets SIGKILL, so nothing of it runs to stop
/// Envoy or the revision instances, and they keep running.
/// The promise: the next `revgate up` on the same state directory stops
/// exactly those processes (recognised by pid and start time) before it
/// starts its own, says so once per process, and serves as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_next_up_stops_what_a_killed_up_left_running() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut up = Up::start(dir.path(), MANIFESTS).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("state")).expect("state directory").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "revgate up creates its state directory for its owner only");
    }
    let old_instances: Vec<Seen> = two_ready(&up).await.into_iter().map(Seen::now).collect();
    let old_envoy = Seen::now(up.envoy_pid());

    up.process.kill();
    let orphans = Orphans([old_instances.clone(), vec![old_envoy.clone()]].concat());
    assert!(
        orphans.0.iter().all(Seen::running),
        "the instances and Envoy outlive a SIGKILLed revgate up (the fault this test injects): {:?}",
        orphans.0
    );
    drop(up);

    let mut up = Up::start(dir.path(), MANIFESTS).await;
    wait_for("the killed up's instances and Envoy to be stopped", async || {
        orphans.0.iter().all(|seen| !seen.running()).then_some(())
    })
    .await;
    let log = up.log();
    for line in log.lines().filter(|line| line.contains("an earlier revgate")) {
        println!("{line}");
    }
    for seen in &orphans.0 {
        let line = format!("(pid {}) with SIGTERM", seen.pid);
        assert!(log.contains(&line), "one line for the stopped process {}:\n{log}", seen.pid);
    }
    assert!(log.contains(&format!("stopped Envoy (pid {})", old_envoy.pid)), "{log}");

    let new_instances: Vec<Seen> = two_ready(&up).await.into_iter().map(Seen::now).collect();
    assert!(new_instances.iter().all(|new| !orphans.0.contains(new)), "{new_instances:?} are new processes");
    let reply = up.client().get(HOST, "/?sleep=1").await;
    assert_eq!(reply.status, 200, "the new instances serve: {reply:?}\n{}", up.log());
    assert!(reply.body.contains(REVISION), "answered by the revision: {}", reply.body);

    let new_envoy = up.envoy_pid();
    let status = up.interrupt().await;
    assert!(status.success(), "revgate up exits cleanly on Ctrl-C: {status:?}\n{}", up.log());
    assert!(new_instances.iter().all(|seen| !seen.running()) && !alive(new_envoy), "Ctrl-C leaves nothing behind");
    println!("stopped after SIGKILL: {} instances and Envoy; the next up served as before", old_instances.len());
}
