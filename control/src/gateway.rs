//! The Envoy gateway `revgate up` runs: finding the binary and the filter,
//! starting Envoy on an ADS bootstrap, and stopping it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// The Envoy release revgate is built and tested against.
pub const ENVOY_VERSION: &str = "1.40";

/// Where `scripts/install-tools.sh` installs Envoy, relative to the repository.
const PROJECT_ENVOY: &str = ".tools/envoy/bin/envoy";

/// Where `scripts/build-filter.sh` leaves the filter, relative to a target directory.
const FILTER_IN_TARGET: &str = "wasm32-unknown-unknown/wasm/revgate_filter.wasm";

/// revgate's repository, if revgate runs from one: the current directory or
/// an ancestor of the executable (`<repo>/target/<profile>/revgate`), when
/// it holds revgate's workspace (so that no other project's scripts run).
fn repositories() -> Vec<PathBuf> {
    let is_revgate = |dir: &Path| dir.join("Cargo.toml").is_file() && dir.join("wasm-filter/Cargo.toml").is_file();
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.retain(|dir| is_revgate(dir));
    roots
}

/// The Envoy binary: `explicit`, else the project-local one, else `envoy` on PATH.
pub fn find_envoy(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("Envoy is not at {} (--envoy / REVGATE_ENVOY)", path.display());
    }
    let local = repositories().into_iter().map(|root| root.join(PROJECT_ENVOY)).find(|path| path.is_file());
    if let Some(path) = local {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("envoy")).find(|p| p.is_file()))
        .unwrap_or_default();
    on_path.ok_or_else(|| {
        anyhow::anyhow!(
            "Envoy is missing: run scripts/install-tools.sh (installs Envoy {ENVOY_VERSION} into .tools/), \
             put `envoy` on PATH, or pass --envoy"
        )
    })
}

/// Envoy's version line, checked against the release revgate supports.
pub async fn envoy_version(envoy: &Path) -> anyhow::Result<String> {
    let output = Command::new(envoy)
        .arg("--version")
        .output()
        .await
        .with_context(|| format!("running {} --version", envoy.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split('/')
        .find(|part| part.starts_with(|c: char| c.is_ascii_digit()) && part.contains('.'))
        .map(str::to_owned)
        .with_context(|| format!("{} --version printed no version: {}", envoy.display(), text.trim()))?;
    if !version.starts_with(&format!("{ENVOY_VERSION}.")) {
        tracing::warn!(%version, "revgate is tested with Envoy {ENVOY_VERSION}");
    }
    Ok(version)
}

/// How the filter was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOrigin {
    Given,
    Built,
    Found,
}

/// The gateway filter: `explicit`, else built with the repository's
/// `scripts/build-filter.sh`, else one built earlier next to this executable.
pub async fn find_filter(explicit: Option<&Path>) -> anyhow::Result<(PathBuf, FilterOrigin)> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok((path.to_path_buf(), FilterOrigin::Given));
        }
        bail!("the gateway filter is not at {} (--wasm-filter / REVGATE_FILTER_WASM)", path.display());
    }
    if let Some(script) =
        repositories().into_iter().map(|root| root.join("scripts/build-filter.sh")).find(|p| p.is_file())
    {
        let output = Command::new(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        if !output.status.success() {
            bail!("building the gateway filter failed ({}; its output is above)", script.display());
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let path = stdout.lines().last().map(PathBuf::from).filter(|p| p.is_file());
        return path
            .map(|p| (p, FilterOrigin::Built))
            .with_context(|| format!("{} succeeded but did not print the path of a .wasm file", script.display()));
    }
    let built = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(2).map(|target| target.join(FILTER_IN_TARGET)))
        .filter(|path| path.is_file());
    built.map(|p| (p, FilterOrigin::Found)).ok_or_else(|| {
        anyhow::anyhow!("the gateway filter is missing: build it with scripts/build-filter.sh or pass --wasm-filter")
    })
}

/// A running Envoy.
/// Raises this process's soft open-files limit to its hard limit, so that
/// the Envoy and the instances it starts inherit it. Each request the
/// gateway holds keeps a downstream connection open, and a shell's usual
/// soft limit (1,024) would cut a cold burst far below the 10,000 requests
/// a revision may hold. Returns the soft limit before and after, or `None`
/// when the limits cannot be read or raised (the old limit then stays).
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    }
    Some((soft, hard))
}

#[derive(Debug)]
pub struct Envoy {
    child: Child,
    pub log: PathBuf,
}

impl Envoy {
    /// Starts Envoy on `bootstrap` with `concurrency` workers, logging to
    /// `log`; Envoy writes where its admin interface listens to
    /// `admin_address_path`. Envoy gets its own process group so that a
    /// terminal's Ctrl-C reaches revgate only, which stops Envoy first (no
    /// new requests) and then the revision instances.
    pub fn start(
        envoy: &Path,
        bootstrap: &Path,
        admin_address_path: &Path,
        log: PathBuf,
        concurrency: u16,
    ) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(envoy);
        command
            .arg("-c")
            .arg(bootstrap)
            .arg("--admin-address-path")
            .arg(admin_address_path)
            .args(["--log-level", "warn", "--component-log-level", "wasm:info", "--disable-hot-restart"])
            .args(["--drain-time-s", "1", "--parent-shutdown-time-s", "2"])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .args(["--concurrency", &concurrency.to_string()])
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("starting {}", envoy.display()))?;
        Ok(Self { child, log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status, once Envoy has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of Envoy's log, to explain a failure.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL if Envoy has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}
