//! Runtimes run revisions: the control plane asks for N instances of a
//! revision, and the runtime starts or stops them and reports which ones are
//! ready to take traffic.
//!
//! The contract is the object-safe [`Runtime`] trait, defined with its
//! shared types in `revgate-runtime-api` (and re-exported here) so that the
//! Kubernetes runtime implements it without compiling this crate. Asking is cheap and
//! never blocks ([`Runtime::scale`], [`Runtime::remove`] record a wish); the
//! runtime converges in the background and publishes the state of every
//! revision it knows on a `watch` channel ([`Runtime::states`]), which the
//! control plane turns into endpoints and Knative status.
//!
//! [`ProcessRuntime`], the default of `revgate up`, runs each instance as a
//! local process. Container images are mapped to local programs by an
//! [`ImageMap`] (`--images FILE`); a container that gives a `command` needs no
//! mapping. Each process gets `PORT`, `K_SERVICE`, `K_CONFIGURATION` and
//! `K_REVISION` like a Knative pod, and its output goes to
//! `<log_dir>/<namespace>/<revision>/<instance>.log`.
//!
//! ```text
//! scale/remove ──Command──▶ actor (owns every instance) ──watch<Arc<states>>──▶ readers
//!                             │  ▲
//!                     start/stop  │ Event (spawned, ready, exited, restart due)
//!                             ▼  │
//!                  one supervisor task per running process: spawn, probe, signal, reap
//! ```
//!
//! # Layout
//! - [`images`]: the image map file: image reference → program and arguments.
//! - `launch`: what to run for a revision (argv, environment, probe), decided
//!   once per revision from its spec and the image map; pure.
//! - `probe`: readiness probes: parsing `readinessProbe`, the threshold state
//!   machine (pure) and the TCP/HTTP checks.
//! - `backoff`: crash-restart delays, with time as a parameter; pure.
//! - `process`: [`ProcessRuntime`]: the actor that owns the instances and the
//!   supervisor task of each process.
//! - [`record`]: the runtime record of the processes started and not yet
//!   seen exit, so that the next start stops those a killed revgate left
//!   running.
//! - [`error`]: the [`RuntimeError`]s of setting a runtime up.

pub mod error;
pub mod images;
pub mod record;

mod backoff;
mod launch;
mod probe;
mod process;

pub use error::RuntimeError;
pub use images::ImageMap;
pub use process::{InstanceCounts, InstanceCountsByRevision, ProcessConfig, ProcessRuntime, RECORD_FILE};
// The contract, re-exported so that users of the process runtime need one
// dependency; it is defined in `revgate-runtime-api`, which the Kubernetes
// runtime shares without compiling this crate's process machinery.
pub use revgate_runtime_api::{InstanceStatus, Phase, RevisionState, RevisionStates, Runtime, Workload, reason};
