//! `revgate`: the control plane of a serverless layer for Envoy gateways, as a
//! library: the `revgate` binary (`main.rs`) only parses its command line
//! and calls in here, and tests drive the same tasks in-process.
//!
//! # Layout
//! - `cli`: argument definitions.
//! - `up`: the whole platform on one machine: control plane, local process
//!   runtime, and an Envoy gateway (`gateway`) with the filter.
//! - `serve`: starts the admin API, the xDS server, the activation service and
//!   the autoscaler around one [`control::ControlPlane`].
//! - `controller`: cluster mode (`revgate controller`): the Kubernetes
//!   controller of `revgate-kube` with the activation API and the autoscaler.
//! - `zero_gate`: the one seam that orders going to zero in both modes: the
//!   gateway filters hear a revision is cold before its endpoints leave.
//! - `control`: the single owner of the applied world; turns every change into
//!   a gateway plan, Envoy resources and an xDS snapshot.
//! - `external`: the runtime of `serve --runtime external`, whose endpoints
//!   are registered through the admin API, stored and restored.
//! - `rollout`: the rollout driver, the one owner of every Route's rollout
//!   state (Knative's gradual rollout, judged by gates on the gateway's
//!   figures); `rollout_cli` is `revgate rollout status|promote|abort|retry`.
//! - `gc`: the revision garbage collector's timer; each pass is a command to
//!   the owner, which applies Knative's `config-gc` rules (`revgate_model::gc`).
//! - `store`: the world persisted in an embedded database (redb).
//! - `admin`: the admin HTTP API (server side) and its client used by the CLI.
//! - `dashboard`: the live web page the admin address serves at `/`, and
//!   its JSON feed with a bounded history ring.
//! - `activation` (the `revgate-activation` crate): the service the gateway
//!   filter calls (metrics reports, activation requests, readiness
//!   long-polls), over `readiness` (which revisions each Envoy can serve) and
//!   `metrics` (reports summed per revision).
//! - `metrics`: `GET /metrics`, Prometheus families under Knative's names,
//!   read at scrape time from their owners' published state.
//! - `autoscaling`: the KPA task: metric windows, deciders and scale-to-zero
//!   rules per revision, driving the runtime; `views` shows its decisions as
//!   Knative PodAutoscalers and ServerlessServices.
//! - `autoscaler_cli`: `revgate autoscaler decide|simulate`, the KPA offline.
//! - `manifests`: reading manifest files and directories in `kubectl apply -f` order.
//! - `gateway_auth`: the gateway token the xDS and activation ports require
//!   beyond loopback.
//! - `private_file`: files that hold secrets (the tokens, Envoy's
//!   bootstrap), written owner-only and atomically.
//! - `render`: configuration printed without a running control plane.
//! - `table`: `kubectl get`-shaped tables.
//! - `http`: serving the HTTP APIs with a header read timeout per connection.
//! - `publish`: publishing owned state on `watch` channels only when it changed.
//!
//! Pure logic lives in the `revgate-model` (Knative resources),
//! `revgate-xds` (Envoy translation and ADS) and `revgate-autoscaler` (the
//! KPA) crates; `revgate-runtime` runs revisions.
#![forbid(unsafe_code)]

/// The activation side lives in its own crate; these paths keep its modules
/// where the rest of the control plane looks for them.
pub use revgate_activation as activation;
pub use revgate_activation::readiness;

pub mod admin;
pub mod autoscaler_cli;
pub mod autoscaling;
pub mod cli;
pub mod control;
pub mod controller;
pub mod dashboard;
pub mod external;
pub mod faults;
pub mod gateway;
pub mod gateway_auth;
pub mod gc;
pub mod http;
pub mod manifests;
pub mod metrics;
pub mod private_file;
pub mod publish;
pub mod render;
pub mod rollout;
pub mod rollout_cli;
pub mod serve;
pub mod store;
pub mod table;
pub mod up;
pub mod views;
pub mod zero_gate;

#[cfg(test)]
mod testing;
