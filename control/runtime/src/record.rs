//! The runtime record: the processes a revgate started and has not yet seen
//! exit, kept in a file so that the next revgate on the same state directory
//! can stop them if this one ends without doing so (SIGKILL, the OOM killer,
//! a crash).
//!
//! A process is recognised by its pid *and* its start time (field 22 of
//! `/proc/<pid>/stat`, clock ticks since boot) on the same boot
//! (`/proc/sys/kernel/random/boot_id`): a pid that was recycled by an
//! unrelated process has another start time, and is never signalled.
//!
//! # Why a record, and not the instances noticing their parent died
//!
//! Nothing that works without `unsafe` code makes a child die with its
//! parent: `PR_SET_PDEATHSIG` must be set in the child between `fork` and
//! `exec` (`pre_exec`, which is `unsafe`); a pipe whose write end only the
//! parent holds signals the parent's death as EOF, but only to a program
//! that reads it, and instances are arbitrary programs; a watcher process
//! per instance could read that pipe and kill the instance's group, but it
//! doubles the processes, stands between revgate and every signal it sends,
//! and is itself one more process to leave behind. SIGKILL reaches no
//! handler, so revgate cannot stop them on its way out either. So processes
//! that outlive a killed revgate keep running until the next start on the
//! same state directory, which reaps them from this record first.
//!
//! # Format
//!
//! A JSON file, rewritten whole on every change (write a temporary file,
//! rename it over the record), so that a reader sees the state before or
//! after a change, never half of one:
//!
//! ```json
//! {"bootId": "…", "processes": [{"what": "instance hello-00001-1 of default/hello-00001",
//!   "pid": 4242, "pgid": 4242, "startTime": 1234567}]}
//! ```
//!
//! It is not synced to disk: the page cache survives the death of the
//! process, which is the fault it is for, and a machine that loses power
//! takes the recorded processes along.
//!
//! Only one record holder may use a record at a time: it holds an exclusive
//! lock on `<record>.lock` (released by the kernel however the holder ends),
//! so that a second revgate on the same directory is refused instead of
//! reaping the first one's live processes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;

/// How long a reaped process group may take to exit after SIGTERM before
/// SIGKILL: short, because a start waits for it, and nothing routes traffic
/// to these processes any more.
pub const REAP_GRACE: Duration = Duration::from_secs(5);

/// How often reaping looks whether the signalled processes are gone.
const POLL: Duration = Duration::from_millis(20);

/// One process in the record: the leader of its own process group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedProcess {
    /// What it is, for the log line when it is reaped: `Envoy`,
    /// `instance hello-00001-1 of default/hello-00001`.
    pub what: String,
    pub pid: u32,
    /// The process group it leads, signalled as a whole as its owner would.
    pub pgid: u32,
    /// Field 22 of `/proc/<pid>/stat` when it was recorded.
    pub start_time: u64,
}

impl RecordedProcess {
    /// A just-started process that leads its own process group (started with
    /// `process_group(0)`); `None` if it has already exited.
    pub fn observe(pid: u32, what: impl Into<String>) -> Option<Self> {
        let start_time = start_time(pid)?;
        Some(Self { what: what.into(), pid, pgid: pid, start_time })
    }

    /// Whether this very process still runs: same pid, same start time, not a zombie.
    pub fn is_running(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// The record file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordFile {
    /// The boot the start times count from.
    boot_id: String,
    processes: Vec<RecordedProcess>,
}

/// The record of one holder (the process runtime's instances, `revgate up`'s
/// Envoy), open and locked for as long as the holder runs.
#[derive(Debug)]
pub struct ProcessRecord {
    path: PathBuf,
    boot_id: String,
    processes: BTreeMap<u32, RecordedProcess>,
    /// Held, never read: the lock lives as long as the record.
    _lock: Flock<File>,
}

impl ProcessRecord {
    /// Takes the record at `path` over, returning what an earlier holder
    /// left in it that may still run (recorded on this boot). The file keeps
    /// listing those until [`ProcessRecord::clear`] or a change is written,
    /// so that a holder killed while reaping them leaves them recorded.
    ///
    /// A record that cannot be parsed is reported and treated as empty: it
    /// must not keep revgate from starting.
    pub fn open(path: &Path) -> Result<(Self, Vec<RecordedProcess>), RuntimeError> {
        let lock_path = lock_path(path);
        let open_error = |source| RuntimeError::RecordOpen { path: lock_path.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(open_error)?;
        }
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(open_error)?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
            Errno::EWOULDBLOCK => RuntimeError::RecordInUse { path: path.to_path_buf() },
            errno => open_error(errno.into()),
        })?;

        let boot_id = boot_id();
        let leftovers = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<RecordFile>(&bytes) {
                Ok(file) if file.boot_id == boot_id => file.processes,
                // Everything it lists ended with the boot it was recorded on.
                Ok(_) => Vec::new(),
                Err(e) => {
                    tracing::warn!(
                        record = %path.display(),
                        "the runtime record is unreadable ({e}); processes it may list are not stopped: \
                         look for them with `ps` and stop them by hand"
                    );
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(RuntimeError::RecordOpen { path: path.to_path_buf(), source: e }),
        };
        let processes = leftovers.iter().map(|p| (p.pid, p.clone())).collect();
        Ok((Self { path: path.to_path_buf(), boot_id, processes, _lock: lock }, leftovers))
    }

    /// Where the record is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The processes recorded now.
    pub fn processes(&self) -> impl Iterator<Item = &RecordedProcess> {
        self.processes.values()
    }

    /// Records a started process.
    pub fn insert(&mut self, process: RecordedProcess) {
        self.processes.insert(process.pid, process);
        self.save();
    }

    /// Forgets a process that exited (was reaped by its owner).
    pub fn remove(&mut self, pid: u32) {
        if self.processes.remove(&pid).is_some() {
            self.save();
        }
    }

    /// Forgets everything: nothing recorded runs any more.
    pub fn clear(&mut self) {
        self.processes.clear();
        self.save();
    }

    /// Writes the record; a failure is logged, not fatal: the processes run
    /// on, and only their reaping after a crash is at stake.
    fn save(&self) {
        if let Err(e) = self.write() {
            tracing::warn!(
                record = %self.path.display(),
                "writing the runtime record failed ({e}); if revgate is killed now, the processes it started \
                 are not stopped at its next start"
            );
        }
    }

    fn write(&self) -> std::io::Result<()> {
        let file = RecordFile { boot_id: self.boot_id.clone(), processes: self.processes.values().cloned().collect() };
        let mut json = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        json.push(b'\n');
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let mut out = File::create(&temporary)?;
        out.write_all(&json)?;
        drop(out);
        std::fs::rename(&temporary, &self.path)
    }
}

/// `<record>.lock`.
fn lock_path(record: &Path) -> PathBuf {
    let mut path = record.as_os_str().to_owned();
    path.push(".lock");
    PathBuf::from(path)
}

/// Stops the processes an earlier holder left running: SIGTERM to the group
/// of each that is still the recorded process, SIGKILL to the groups still
/// there after `grace`. Logs one line per process it stopped and returns them.
///
/// A recorded pid that now belongs to another process (another start time)
/// is left alone.
pub async fn reap(leftovers: Vec<RecordedProcess>, grace: Duration) -> Vec<RecordedProcess> {
    let mut running = Vec::new();
    for process in leftovers {
        if process.is_running() {
            running.push(process);
        } else if start_time(process.pid).is_some() {
            tracing::debug!(pid = process.pid, what = %process.what, "a recorded pid now belongs to another process; left alone");
        }
    }
    for process in &running {
        signal_group(process.pgid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while running.iter().any(RecordedProcess::is_running) && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    for process in &running {
        let how = if process.is_running() {
            format!("SIGKILL, still running {}s after SIGTERM", grace.as_secs_f64())
        } else {
            "SIGTERM".to_string()
        };
        // Whatever is left of the group goes too, as when its owner reaps it.
        // The group was verified at SIGTERM: its leader was the recorded process.
        signal_group(process.pgid, Signal::SIGKILL);
        tracing::warn!(
            "stopped {} (pid {}) with {how}: an earlier revgate on this state directory ended without stopping it",
            process.what,
            process.pid,
        );
    }
    // SIGKILL takes effect at once but not synchronously; wait briefly so
    // that callers see them gone.
    let deadline = Instant::now() + Duration::from_secs(1);
    while running.iter().any(RecordedProcess::is_running) && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    running
}

fn signal_group(pgid: u32, signal: Signal) {
    match i32::try_from(pgid) {
        // 0 and 1 would mean our own group and init's.
        Ok(pgid) if pgid > 1 => {
            if let Err(e) = killpg(Pid::from_raw(pgid), signal) {
                tracing::debug!(pgid, %signal, "signalling a recorded process group: {e}");
            }
        }
        _ => {}
    }
}

/// The start time of a live, non-zombie process, from `/proc/<pid>/stat`.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line, unless the process
/// is a zombie or dead (state `Z`, `X`). The command name (field 2, in
/// parentheses) may hold spaces and parentheses itself, so fields are
/// counted after its *last* `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    // Field 3, the state.
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // Fields 4 to 21 come before it.
    fields.nth(18)?.parse().ok()
}

/// This boot's id; empty where the kernel does not say (start times then
/// still tell processes apart within one boot).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|id| id.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    use super::*;

    /// `sleep 60` leading its own process group, killed on drop.
    struct Sleeper(Child);

    impl Sleeper {
        fn start() -> Self {
            let child = Command::new("sleep").arg("60").process_group(0).spawn().expect("starting sleep");
            Self(child)
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }

        /// Reaps it if it exited (it is our child; otherwise it stays a zombie).
        fn exited(&mut self) -> bool {
            self.0.try_wait().expect("waiting for sleep").is_some()
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn start_time_is_field_22_counted_after_the_command_name() {
        let fields: Vec<String> = (4..=52).map(|n| n.to_string()).collect();
        let rest = fields.join(" ");
        // (stat line, start time)
        let cases = [
            (format!("42 (sleep) S {rest}"), Some(22)),
            (format!("42 (a) (b c) R {rest}"), Some(22)),
            (format!("42 (zombie) Z {rest}"), None),
            (format!("42 (dead) X {rest}"), None),
            ("42 (short) S 1 2".to_string(), None),
            ("garbage".to_string(), None),
        ];
        for (stat, want) in cases {
            assert_eq!(parse_start_time(&stat), want, "{stat}");
        }
    }

    #[test]
    fn the_record_is_written_whole_and_read_back_by_the_next_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("instances.json");
        let (mut record, leftovers) = ProcessRecord::open(&path).expect("open");
        assert!(leftovers.is_empty(), "a new record lists nothing");
        let a = RecordedProcess { what: "instance a-1 of default/a".into(), pid: 101, pgid: 101, start_time: 7 };
        let b = RecordedProcess { what: "Envoy".into(), pid: 202, pgid: 202, start_time: 9 };
        record.insert(a.clone());
        record.insert(b.clone());
        record.remove(101);
        record.insert(a.clone());
        assert_eq!(record.processes().count(), 2);
        let names: Vec<String> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("listing")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "no temporary file is left: {names:?}");
        drop(record);

        let (mut record, leftovers) = ProcessRecord::open(&path).expect("reopen");
        assert_eq!(leftovers, [a, b], "the next holder reads what was recorded, by pid");
        assert_eq!(record.processes().count(), 2, "still recorded until reaped");
        record.clear();
        drop(record);
        let (_, leftovers) = ProcessRecord::open(&path).expect("reopen");
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_record_from_another_boot_or_unreadable_lists_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("instances.json");
        let old_boot =
            r#"{"bootId": "another-boot", "processes": [{"what": "x", "pid": 1, "pgid": 1, "startTime": 1}]}"#;
        for contents in [old_boot, "{not json"] {
            std::fs::write(&path, contents).expect("write");
            let (_, leftovers) = ProcessRecord::open(&path).expect("open");
            assert!(leftovers.is_empty(), "{contents}");
        }
    }

    #[test]
    fn a_second_holder_is_refused_while_the_first_lives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("instances.json");
        let (first, _) = ProcessRecord::open(&path).expect("open");
        let err = ProcessRecord::open(&path).expect_err("locked");
        assert!(matches!(err, RuntimeError::RecordInUse { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("instances.json") && message.contains("--state-dir"), "{message}");
        drop(first);
        assert!(ProcessRecord::open(&path).is_ok(), "free again once the first holder ends");
    }

    #[tokio::test]
    async fn reaping_stops_the_recorded_process_but_never_a_recycled_pid() {
        let mut recorded = Sleeper::start();
        let mut recycled = Sleeper::start();
        let mut live = RecordedProcess::observe(recorded.pid(), "instance a-1 of default/a").expect("running");
        // The same pid, but a process that started at another time: not the recorded one.
        let mut stale = RecordedProcess::observe(recycled.pid(), "instance b-1 of default/b").expect("running");
        stale.start_time += 1;
        assert!(live.is_running() && !stale.is_running());

        let reaped = reap(vec![live.clone(), stale], Duration::from_secs(5)).await;
        assert_eq!(reaped, [live.clone()], "only the recorded process is stopped");
        assert!(recorded.exited(), "the recorded process was stopped");
        assert!(!recycled.exited(), "the process with the recycled pid still runs");

        // A process that exited is not signalled again.
        live.what = "gone".into();
        assert!(reap(vec![live], Duration::from_secs(5)).await.is_empty());
    }
}
