//! `revgate`: the command line. Everything it runs lives in the `revgate`
//! library (see its crate docs for the layout); this file only parses the
//! arguments, starts the async runtime and reports the outcome.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use revgate::cli::{AutoscalerCommand, Cli, Command, RenderCommand};
use revgate::{admin, autoscaler_cli, controller, render, rollout_cli, serve, up};

/// mimalloc instead of the system allocator: a change allocates and frees
/// many small objects, and with glibc's allocator one route change among
/// 10,000 Services took twice as long (BENCHMARKS.md, xDS scale).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Controller(args) => controller::run(args).await,
            Command::Apply(args) => admin::client::apply(args, false).await,
            Command::Delete(args) => admin::client::apply(args, true).await,
            Command::Get(args) => admin::client::get(args).await,
            Command::Render(RenderCommand::Envoy(args)) => render::envoy(args),
            Command::Render(RenderCommand::Istio(args)) => render::istio(args),
            Command::Autoscaler(AutoscalerCommand::Decide(args)) => autoscaler_cli::decide(args),
            Command::Autoscaler(AutoscalerCommand::Simulate(args)) => autoscaler_cli::simulate(args),
            Command::Rollout(args) => rollout_cli::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(command: &Command) {
    // `up` talks to a person through its progress lines; its log is for problems.
    let default = match command {
        Command::Serve(_) | Command::Controller(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("REVGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only for a person at a terminal: piped to a file or another
    // program, escape codes would clutter the log.
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}
