//! `revgate-bench`: revgate's reproducible benchmark suite.
//!
//! Each scenario starts the real system the way a user does (`revgate
//! serve` or `revgate up`, a real Envoy, the built filter, real upstreams),
//! measures it and, in the same run, a baseline; then the results go to
//! `bench/results.json` and the table in `BENCHMARKS.md` is regenerated.
//! `scripts/bench.sh` builds and installs everything and runs this binary;
//! run the script, not this, on a fresh machine.
//!
//! ```text
//! revgate-bench run [--quick] [SCENARIO...] --revgate … --envoy … --filter … --oha … --autoscale …
//! revgate-bench report          # regenerate BENCHMARKS.md from bench/results.json
//! revgate-bench upstream | backend   # the servers the scenarios start
//! ```
//!
//! # Layout
//! - [`scenarios`]: one module per scenario, each returning rows of
//!   revgate-versus-baseline figures with the issue's goals.
//! - [`gateway`]: the system under test: `revgate serve`, Envoy over ADS,
//!   `revgate up`, and the admin API calls the scenarios make.
//! - [`load`]: `oha` runs (fixed rate with latency correction, closed loop)
//!   and an in-process burst client.
//! - [`servers`]: the fast upstream and the slow-starting backend, run as
//!   subcommands of this binary.
//! - [`process`]: child processes killed on drop, `/proc` memory, waits.
//! - [`env`]: the binaries under test and the machine's facts.
//! - [`report`]: `results.json` and the generated block of `BENCHMARKS.md`.
//! - [`stats`]: nearest-rank percentiles.

#![forbid(unsafe_code)]

mod env;
mod gateway;
mod load;
mod process;
mod report;
mod scenarios;
mod servers;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::env::{Machine, Tools};
use crate::report::Results;
use crate::scenarios::{Scenario, Size};

#[derive(Debug, Parser)]
#[command(name = "revgate-bench", about = "revgate's benchmark suite; run it through scripts/bench.sh.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run scenarios (all by default), write the results and regenerate BENCHMARKS.md.
    Run(RunArgs),
    /// Regenerate BENCHMARKS.md's table from the results file alone.
    Report(OutputArgs),
    /// The fast upstream server (for the data-plane scenarios).
    Upstream {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// A backend that waits before listening on $PORT (for the process runtime).
    Backend {
        #[arg(long, default_value_t = 0)]
        listen_delay_ms: u64,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Scenarios to run; all when none is given.
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// Each scenario at its smoke size (well under a minute each); for CI.
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    revgate: PathBuf,
    #[arg(long)]
    envoy: PathBuf,
    #[arg(long)]
    filter: PathBuf,
    #[arg(long)]
    oha: PathBuf,
    #[arg(long)]
    autoscale: PathBuf,
    /// Where scenarios keep their logs and state (cleared per scenario).
    #[arg(long)]
    run_dir: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
struct OutputArgs {
    #[arg(long, default_value = "bench/results.json")]
    results: PathBuf,
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Upstream { addr, workers } => servers::upstream(addr, workers).map(|()| ExitCode::SUCCESS),
        Command::Backend { listen_delay_ms } => {
            servers::backend(Duration::from_millis(listen_delay_ms)).map(|()| ExitCode::SUCCESS)
        }
        Command::Report(output) => Results::read(&output.results)
            .and_then(|results| results.update_markdown(&output.markdown))
            .map(|()| ExitCode::SUCCESS),
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|runtime| runtime.block_on(run(args))),
    };
    result.unwrap_or_else(|e| {
        eprintln!("revgate-bench: {e:#}");
        ExitCode::FAILURE
    })
}

/// Resolves with the signal's name on Ctrl-C or SIGTERM.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "interrupted";
    };
    tokio::select! {
        _ = term.recv() => "terminated",
        _ = tokio::signal::ctrl_c() => "interrupted",
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let tools = Tools {
        revgate: args.revgate,
        envoy: args.envoy,
        filter: args.filter,
        oha: args.oha,
        autoscale: args.autoscale,
        bench: std::env::current_exe().context("finding this binary")?,
        run_dir: args.run_dir,
    };
    tools.check()?;
    let size = if args.quick { Size::Quick } else { Size::Full };
    let machine = Machine::probe(&tools, gateway::ENVOY_CONCURRENCY)?;
    let mut chosen = if args.scenarios.is_empty() { Scenario::ALL.to_vec() } else { args.scenarios };
    chosen.sort();
    chosen.dedup();

    let mut fresh = Vec::new();
    let mut failed = Vec::new();
    for scenario in chosen {
        eprintln!("revgate-bench: {} ({})…", scenario.id(), if args.quick { "quick" } else { "full" });
        // On Ctrl-C or SIGTERM the scenario's future is dropped, and with it
        // every process it started (each is killed on drop).
        let result = tokio::select! {
            result = scenario.run(&tools, size) => result,
            signal = interrupted() => {
                eprintln!("revgate-bench: {signal}: stopping");
                return Ok(ExitCode::FAILURE);
            }
        };
        match result {
            Ok(result) => {
                eprintln!("revgate-bench: {} done in {:.0} s", scenario.id(), result.duration_s);
                for row in &result.rows {
                    let baseline =
                        row.baseline.as_ref().map(|b| format!(" | {} {}", b.name, b.figure)).unwrap_or_default();
                    let goal = row.goal.as_ref().map_or(String::new(), |g| {
                        format!(" | goal {}: {}", g.text, if g.met { "met" } else { "MISSED" })
                    });
                    eprintln!("    {}: {}{baseline}{goal}", row.measure, row.revgate);
                }
                fresh.push(result);
            }
            Err(e) => {
                eprintln!("revgate-bench: {} FAILED: {e:#}", scenario.id());
                failed.push(scenario.id());
            }
        }
    }

    let results = Results::merge(&args.output.results, machine, fresh);
    results.write(&args.output.results)?;
    results.update_markdown(&args.output.markdown)?;
    eprintln!("revgate-bench: wrote {} and {}", args.output.results.display(), args.output.markdown.display());
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("revgate-bench: failed: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}
