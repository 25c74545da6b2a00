//! `revgate`: the control plane of a serverless layer for Envoy gateways.
//!
//! # Layout
//! - `cli`: argument definitions.
//! - `up`: the whole platform on one machine: control plane, local process
//!   runtime, and an Envoy gateway (`gateway`) with the filter.
//! - `serve`: starts the admin API, the xDS server, the activation service and
//!   the autoscaler around one [`control::ControlPlane`].
//! - `controller`: cluster mode (`revgate controller`): the Kubernetes
//!   controller of `revgate-kube` with the activation API and the autoscaler;
//!   `cold_first` makes its runtime go to zero only once the filters know.
//! - `control`: the single owner of the applied world; turns every change into
//!   a gateway plan, Envoy resources and an xDS snapshot.
//! - `store`: the world persisted in an embedded database (redb).
//! - `admin`: the admin HTTP API (server side) and its client used by the CLI.
//! - `activation`: the service the gateway filter calls (metrics reports,
//!   activation requests, readiness long-polls), over `readiness` (which
//!   revisions each Envoy can serve) and `metrics` (reports summed per revision).
//! - `autoscaling`: the KPA task: metric windows, deciders and scale-to-zero
//!   rules per revision, driving the runtime; `views` shows its decisions as
//!   Knative PodAutoscalers and ServerlessServices.
//! - `autoscaler_cli`: `revgate autoscaler decide|simulate`, the KPA offline.
//! - `manifests`: reading manifest files and directories in `kubectl apply -f` order.
//! - `gateway_auth`: the gateway token the xDS and activation ports require
//!   beyond loopback.
//! - `render`: configuration printed without a running control plane.
//! - `table`: `kubectl get`-shaped tables.
//!
//! Pure logic lives in the `revgate-model` (Knative resources),
//! `revgate-xds` (Envoy translation and ADS) and `revgate-autoscaler` (the
//! KPA) crates; `revgate-runtime` runs revisions.
#![forbid(unsafe_code)]

mod activation;
mod admin;
mod autoscaler_cli;
mod autoscaling;
mod cli;
mod cold_first;
mod control;
mod controller;
mod faults;
mod gateway;
mod gateway_auth;
mod http;
mod manifests;
mod metrics;
mod readiness;
mod render;
mod serve;
mod store;
mod table;
mod up;
mod views;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{AutoscalerCommand, Cli, Command, RenderCommand};

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
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
