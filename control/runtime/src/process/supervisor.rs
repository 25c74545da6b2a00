//! One process, from spawn to reap.
//!
//! The supervisor starts the process (own process group, output appended to
//! the instance log), probes its readiness, and on a stop request lets it
//! drain, sends SIGTERM, and SIGKILL after the grace period. Whatever ends
//! the process, the supervisor reaps it, kills what is left of its process
//! group (as a container's end takes all its processes along) and reports
//! the exit to the actor. It reports transitions only; all decisions about
//! restarts and counts are the actor's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::fs::File;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};

use super::actor::{Event, ProcessId};
use crate::launch::Launch;
use crate::probe::{self, Readiness};
use crate::record;

/// The grace period when the actor is gone (the runtime is going away) and
/// nobody will wait for the configured one.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

/// A request to stop, sent by the actor; may be repeated to hurry it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stop {
    /// SIGTERM at this instant; the process is already out of rotation.
    pub(super) drain_until: Instant,
    /// SIGKILL this long after SIGTERM.
    pub(super) grace: Duration,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Exit {
    /// `exit status: 3`, `signal: 9 (SIGKILL)`, or why it could not start.
    pub(super) description: String,
    /// `false` when no process ever ran.
    pub(super) started: bool,
}

pub(super) struct Supervised {
    pub(super) process: ProcessId,
    pub(super) launch: Arc<Launch>,
    pub(super) addr: SocketAddr,
    pub(super) log: PathBuf,
    pub(super) events: mpsc::UnboundedSender<Event>,
    /// `Some` once the actor wants the process gone; closed if the actor is gone.
    pub(super) stop: watch::Receiver<Option<Stop>>,
}

/// Runs one process to its end and reports the end.
pub(super) async fn supervise(mut supervised: Supervised) {
    let exit = run(&mut supervised).await;
    let _ = supervised.events.send(Event::Exited { process: supervised.process, exit });
}

/// How the watching phase ended.
enum Watched {
    Exited(std::io::Result<ExitStatus>),
    Stop(Stop),
}

async fn run(s: &mut Supervised) -> Exit {
    let environment = s.launch.environment(s.addr.port());
    let argv = s.launch.argv(&environment);
    let not_started = |description: String| Exit { description, started: false };
    let Some((program, args)) = argv.split_first() else {
        return not_started("the command is empty".to_string());
    };
    // Stopped (or the actor gone) before the process started: nothing to start.
    if s.stop.borrow().is_some() || s.stop.has_changed().is_err() {
        return not_started("stopped before it started".to_string());
    }

    let (mut notes, stdout, stderr) = match open_log(&s.log).await {
        Ok(files) => files,
        Err(e) => {
            return not_started(format!(
                "opening its log {}: {e}; the log directory must be writable",
                s.log.display()
            ));
        }
    };
    note(&mut notes, &format!("starting on {} (PORT={}): {}", s.addr, s.addr.port(), shell_words(&argv))).await;

    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(environment.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group: a Ctrl-C in revgate's terminal must not reach it
        // before revgate stops it gracefully.
        .process_group(0)
        // The backstop if this task is dropped (the Tokio runtime ends) before the reap.
        .kill_on_drop(true);
    for name in &s.launch.unset {
        command.env_remove(name);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "; check the program in the image map (--images FILE) or the container's command, and build it"
                }
                std::io::ErrorKind::PermissionDenied => "; the program must be executable (chmod +x)",
                _ => "",
            };
            let description = format!("running {program:?}: {e}{hint}");
            note(&mut notes, &description).await;
            return not_started(description);
        }
    };
    let pid = child.id();
    // Read now, while the process surely is the one just started (it is our
    // child and not yet reaped, so its pid cannot be reused).
    let start_time = pid.and_then(record::start_time);
    let _ = s.events.send(Event::Spawned { process: s.process.clone(), pid, start_time, at_unix_ms: unix_ms() });

    let status = match watch(s, &mut child).await {
        Watched::Exited(status) => status,
        Watched::Stop(stop) => stop_gracefully(s, &mut child, pid, stop, &mut notes).await,
    };
    // Whatever the process left behind in its group goes with it, as when a
    // container ends. (Its pid could only be reused by a new group leader
    // within these microseconds after a full wrap-around of the pid space.)
    if let Some(pid) = pid {
        let _ = signal_group(pid, Signal::SIGKILL);
    }
    let description = match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("an unknown status (waiting for it failed: {e})"),
    };
    note(&mut notes, &format!("exited with {description}")).await;
    Exit { description, started: true }
}

/// Probes the running process until it exits or a stop is asked for.
async fn watch(s: &mut Supervised, child: &mut Child) -> Watched {
    let spec = &s.launch.probe;
    let started = Instant::now();
    let mut readiness = Readiness::new(spec);
    let mut next_probe = started + spec.initial_delay;
    loop {
        let timeout = spec.attempt_timeout(readiness.ever_ready());
        let probe = async {
            tokio::time::sleep_until(next_probe.into()).await;
            probe::check(&spec.action, s.addr, timeout).await
        };
        tokio::select! {
            status = child.wait() => return Watched::Exited(status),
            changed = s.stop.changed() => match changed {
                // The actor is gone: nobody will ever publish this instance again.
                Err(_) => return Watched::Stop(Stop { drain_until: Instant::now(), grace: ORPHAN_GRACE }),
                Ok(()) => {
                    if let Some(stop) = *s.stop.borrow_and_update() {
                        return Watched::Stop(stop);
                    }
                }
            },
            ok = probe => {
                if let Some(ready) = readiness.record(ok) {
                    let _ = s.events.send(Event::Readiness { process: s.process.clone(), ready, at_unix_ms: unix_ms() });
                }
                next_probe = Instant::now() + readiness.next_delay(spec, started.elapsed());
            }
        }
    }
}

/// Drain, SIGTERM, grace, SIGKILL; returns once the process is reaped.
async fn stop_gracefully(
    s: &mut Supervised,
    child: &mut Child,
    pid: Option<u32>,
    mut stop: Stop,
    notes: &mut File,
) -> std::io::Result<ExitStatus> {
    // Drain: the process runs on, out of rotation, for requests already on their way.
    loop {
        tokio::select! {
            status = child.wait() => return status,
            () = tokio::time::sleep_until(stop.drain_until.into()) => break,
            changed = s.stop.changed() => match changed {
                Err(_) => break,
                // A later request may only hurry the stop.
                Ok(()) => stop = s.stop.borrow_and_update().unwrap_or(stop),
            },
        }
    }
    let Some(pid) = pid else { return child.wait().await };
    note(notes, "sending SIGTERM").await;
    // The whole group, as a terminal's Ctrl-C would: a wrapper script and the
    // server it started both get the chance to finish.
    if let Err(e) = signal_group(pid, Signal::SIGTERM) {
        tracing::debug!(pid, "SIGTERM: {e}");
    }
    if let Ok(status) = tokio::time::timeout(stop.grace, child.wait()).await {
        return status;
    }
    note(notes, &format!("still running {} after SIGTERM: sending SIGKILL", seconds(stop.grace))).await;
    if let Err(e) = signal_group(pid, Signal::SIGKILL) {
        tracing::debug!(pid, "SIGKILL: {e}");
    }
    child.wait().await
}

/// Signals the process group led by `pid` (each instance leads its own group).
fn signal_group(pid: u32, signal: Signal) -> nix::Result<()> {
    match i32::try_from(pid) {
        // pid 0 would mean our own group.
        Ok(pid) if pid > 0 => killpg(Pid::from_raw(pid), signal),
        _ => Err(nix::errno::Errno::ESRCH),
    }
}

/// The log, opened for appending: one handle for the runtime's own notes and
/// the process's stdout and stderr.
async fn open_log(path: &Path) -> std::io::Result<(File, Stdio, Stdio)> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let notes = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await?;
    let output = notes.try_clone().await?.into_std().await;
    let errors = output.try_clone()?;
    Ok((notes, Stdio::from(output), Stdio::from(errors)))
}

/// Appends one line of the runtime's own to the log, marked so that it stands
/// out from the process's output. Flushed before returning (Tokio writes files
/// in the background), so that the note comes before whatever it announces.
/// A failed write only loses the note.
async fn note(notes: &mut File, line: &str) {
    if notes.write_all(format!("[revgate] {line}\n").as_bytes()).await.is_ok() {
        let _ = notes.flush().await;
    }
}

fn shell_words(argv: &[String]) -> String {
    let quote = |arg: &String| {
        if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
            arg.clone()
        } else {
            format!("'{}'", arg.replace('\'', r"'\''"))
        }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// `2s`, `0.5s`.
pub(super) fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
