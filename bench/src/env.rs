//! What a run measures with, and on what: the binaries under test and the
//! machine's facts recorded with every result.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The programs a run starts. `scripts/bench.sh` builds or installs each and
/// passes its path; a missing one fails the run with the flag that names it.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `revgate` (release build).
    pub revgate: PathBuf,
    /// Envoy 1.40 (`scripts/install-tools.sh`).
    pub envoy: PathBuf,
    /// The gateway filter (`scripts/build-filter.sh`).
    pub filter: PathBuf,
    /// `oha`, the HTTP load generator.
    pub oha: PathBuf,
    /// Knative's autoscale sample (`examples/autoscale`, release build).
    pub autoscale: PathBuf,
    /// This binary, which also serves as the upstream and the slow-starting backend.
    pub bench: PathBuf,
    /// Where each scenario keeps its logs, state and generated files.
    pub run_dir: PathBuf,
}

impl Tools {
    pub fn check(&self) -> anyhow::Result<()> {
        let all = [
            ("--revgate", &self.revgate),
            ("--envoy", &self.envoy),
            ("--filter", &self.filter),
            ("--oha", &self.oha),
            ("--autoscale", &self.autoscale),
        ];
        for (flag, path) in all {
            if !path.is_file() {
                bail!(
                    "{flag} {} does not exist; scripts/bench.sh builds and installs everything it needs",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// A fresh directory for one scenario's files.
    pub fn scenario_dir(&self, scenario: &str) -> anyhow::Result<PathBuf> {
        let dir = self.run_dir.join(scenario);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }
}

/// The machine a run measured on, recorded with its results because every
/// figure depends on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub envoy_version: String,
    /// `revgate --version`.
    pub revgate_version: String,
    /// Envoy's worker threads in every scenario.
    pub envoy_concurrency: u16,
    /// 1-minute load average when the run started: other work on the machine skews every figure.
    pub load_average_at_start: f64,
}

impl Machine {
    pub fn probe(tools: &Tools, envoy_concurrency: u16) -> anyhow::Result<Self> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())
            .context("/proc/meminfo has no MemTotal")?;
        let load = load_average().unwrap_or(0.0);
        Ok(Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            envoy_version: envoy_version(&tools.envoy)?,
            revgate_version: first_line(&tools.revgate, &["--version"])?,
            envoy_concurrency,
            load_average_at_start: load,
        })
    }
}

/// Envoy's version, e.g. `1.40.0/…/RELEASE/BoringSSL`, from `envoy --version`.
pub fn envoy_version(envoy: &Path) -> anyhow::Result<String> {
    let line = first_line(envoy, &["--version"])?;
    Ok(line.split("version: ").nth(1).unwrap_or(&line).trim().to_owned())
}

fn first_line(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_owned())
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}
