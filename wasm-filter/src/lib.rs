//! revgate's gateway filter: a proxy-wasm module for Envoy that does, inside
//! the gateway, what Knative's activator and queue-proxy do beside it.
//!
//! - **Hold** requests for a revision with no ready endpoints (scaled to
//!   zero), tell the control plane at once (an activation, as the activator
//!   pokes the autoscaler), and release them when the control plane says the
//!   revision is ready, or answer 503 after its activation timeout.
//! - **Throttle** a revision with a `containerConcurrency` to
//!   `cc × ready endpoints` requests in flight across all of Envoy's worker
//!   VMs (the activator's breaker), queueing the rest.
//! - **Report** each revision's time-weighted concurrency, requests by
//!   status code with their durations (histograms over Knative's latency
//!   boundaries), held requests and how long they were held, and its own
//!   503s by reason, every `report_interval_ms` (the queue-proxy's and
//!   activator's stats).
//! - **Time** each request it sent on to a revision with Knative's three
//!   response limits, per revision ([`deadline`]): 504 naming the limit when
//!   a response does not start in time or goes idle.
//!
//! Requests whose cluster is not a revision's, and requests for revisions the
//! control plane has not described (no answer yet, control plane down,
//! unknown revision), pass untouched: warm revisions keep serving when the
//! control plane is away.
//!
//! # Transport
//!
//! The filter talks to the control plane with `dispatch_http_call`: protobuf
//! bodies (`revgate-proto`) over plain HTTP requests to the Envoy cluster
//! named by the `control_cluster` knob.
//!
//! | call | body | answer |
//! |---|---|---|
//! | `POST /activation/v1/report` | `MetricsReport` | 200 |
//! | `POST /activation/v1/activate` | `ActivationRequest` | 200 |
//! | `GET /activation/v1/readiness?after=<version>&node=<node id>` | — | 200, `ReadinessUpdate` (long-poll) |
//!
//! Why this and not gRPC or a shared queue:
//! - an HTTP call to a named cluster works the same behind revgate's own xDS
//!   (`revgate-control`) and inside an Istio gateway, where the cluster is
//!   Istio's (`outbound|9091||revgate.revgate-system.svc.cluster.local`):
//!   nothing but the cluster name changes;
//! - protobuf over plain HTTP needs no gRPC framing, trailers or streaming
//!   in wasm, and keeps the messages typed and versioned;
//! - a long-poll gives push latency without a stream: each VM's root context
//!   keeps one poll outstanding, re-issued on every answer (after a backoff on
//!   errors); the server answers as soon as its version differs from
//!   `after`, so a held request is released a few ms after the control plane
//!   announces readiness. The control plane announces a revision ready for a
//!   node only once that node has ACKed the EDS version holding its
//!   endpoints, so a released request never meets "no healthy upstream".
//!   In an Istio gateway revgate sees no ACKs; there `release_gate: probe`
//!   makes the filter confirm, through the request's own cluster, that this
//!   Envoy reaches the revision before it releases ([`probe`]).
//!
//! # Layout
//!
//! Plain Rust, no host calls, unit-tested on the host:
//! - [`config`]: plugin configuration, parsed per knob, never failing.
//! - [`revision`]: which revision a cluster is (both name forms, metadata).
//! - [`readiness`]: the control plane's view and what changed between views.
//! - [`probe`]: probe-gated release: what a probe's answer means, and the
//!   per-cluster probe states with their backoff.
//! - [`hold`]: [`hold::HoldQueue`], per-revision FIFOs of held requests.
//! - [`breaker`]: in-flight accounting in shared data by compare-and-swap.
//! - [`averager`], [`histogram`], [`metrics`]: what goes in a report.
//! - [`deadline`]: Knative's response timers (`timeoutSeconds`,
//!   `responseStartTimeoutSeconds`, `idleTimeoutSeconds`) of requests in
//!   flight to a revision.
//! - [`reply`]: the 503s and 504s the filter answers itself, naming the limit.
//! - [`control`]: the calls to the control plane and the long-poll's states.
//! - [`gate`]: [`gate::Gate`], every decision of one VM, as values.
//!
//! Glue, thin over the above: [`filter`] (root context, HTTP context, host
//! calls). The entry point below registers the root context.
//!
//! The filter never panics (a panic kills the worker's VM and strands its
//! held requests): no `unwrap`, `expect`, `panic!` or indexing outside tests,
//! and every host call's result is handled.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]
// Tests may unwrap: a failing test should panic.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod averager;
pub mod breaker;
pub mod config;
pub mod control;
pub mod deadline;
pub mod filter;
pub mod gate;
pub mod histogram;
pub mod hold;
pub mod metrics;
pub mod probe;
pub mod readiness;
pub mod reply;
pub mod revision;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(filter::Root::new(context_id))
    });
}}
