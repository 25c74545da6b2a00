//! Child processes the scenarios start, and what `/proc` says about them.
//!
//! Every process is killed when its handle drops, so a scenario that fails
//! halfway leaves nothing running; its output goes to a log file in the
//! scenario's run directory, quoted in the error when it exits early.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long any single wait may take before the scenario fails.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A child process, killed (SIGKILL) on drop unless stopped before.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("cloning a log file handle")?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command.spawn().with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Self { name: name.to_owned(), child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of the process's output, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("waiting on a child")? {
            bail!("{} exited ({status}); last lines of {}:\n{}", self.name, self.log.display(), self.log_tail(30));
        }
        Ok(())
    }

    /// Resident memory now, in bytes (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid(), "VmRSS").map(|kib| kib * 1024)
    }

    /// Peak resident memory, in bytes (`VmHWM`).
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid(), "VmHWM").map(|kib| kib * 1024)
    }

    /// Sends SIGINT, as Ctrl-C does, and waits up to `grace` for the process
    /// to exit; kills it after that. Processes that clean up after
    /// themselves (`revgate up` stops its instances) need this rather than a kill.
    pub async fn interrupt(&mut self, grace: Duration) {
        let _ = Command::new("kill").args(["-INT", &self.pid().to_string()]).status();
        let started = Instant::now();
        while started.elapsed() < grace {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The soft limit on open files of a process (`Max open files` in `/proc/<pid>/limits`).
pub fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    limits.lines().find_map(|line| line.strip_prefix("Max open files")?.split_whitespace().next()?.parse().ok())
}

/// One `kB` field of `/proc/<pid>/status`, in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .with_context(|| format!("{path} has no {field} line"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port on loopback")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `check` every `every` until it returns `Some`, failing after [`DEADLINE`].
pub async fn wait_for<T>(
    what: &str,
    every: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if started.elapsed() > DEADLINE {
            bail!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Milliseconds since the Unix epoch, as the runtime reports instance times.
pub fn unix_ms_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}
