//! revgate's cluster mode: `revgate controller`, a Kubernetes controller
//! that serves Knative `serving.knative.dev/v1` Services, Configurations,
//! Routes and Revisions unchanged, runs each revision as a Deployment and a
//! Service, routes with Istio VirtualServices, and scales through the
//! Deployments' scale subresource from revgate's KPA.
//!
//! What it does, per namespace, on every change (see [`mod@reconcile`]):
//!
//! 1. writes each Service's Configuration and Route;
//! 2. creates the Revision of each Configuration's current generation;
//! 3. writes each Revision's Deployment and Service (`revgate-istio`);
//! 4. reads readiness from the revision Services' EndpointSlices
//!    ([`readiness`]) and writes the routes' VirtualServices, deleting the
//!    ones no longer wanted;
//! 5. writes Knative's status conditions (`Ready`, `ConfigurationsReady`,
//!    `RoutesReady`, with reasons), including why a write failed;
//! 6. labels each Revision's routing state and deletes the Revisions
//!    `config-gc` collects ([`gc`]).
//!
//! Every write is a server-side apply under the field manager `revgate`.
//! Every generated object has a controller owner reference, so deleting a
//! Knative Service garbage-collects its Configuration, Route, Revisions,
//! Deployments, Services and VirtualServices; no finalizer is needed,
//! because nothing revgate writes per object lives outside its owner's
//! namespace (the one cluster-wide object, the gateway's WasmPlugin, is
//! installation-wide and stays). Several replicas can run: a
//! `coordination.k8s.io` Lease elects the one that writes and scales
//! ([`leader`]); every replica keeps the stores and publishes the
//! [`ClusterView`] that the xDS server and the activation API serve from.
//!
//! # Layout
//! - [`config`]: [`ControllerConfig`], validated once.
//! - [`kinds`]: every kind read or written, its `ApiResource`, the field manager.
//! - [`snapshot`]: one namespace's objects as a plain value, and liveness
//!   (objects being deleted, children of deleted owners).
//! - [`desired`]: the pure steps: Knative children, revisions, the world,
//!   Deployments/Services/VirtualServices, statuses.
//! - [`gc`]: Knative's labeler (the Revisions' routing state) and revision GC per `config-gc`; pure.
//! - [`rollouts`]: Knative's gradual rollout with revgate's gates, stepped each
//!   pass; the state travels in an annotation of the Route's VirtualServices.
//! - [`domain_mappings`]: DomainMappings into the world, their VirtualServices and status; claims
//!   across namespaces.
//! - [`pod_status`]: why a revision's pods do not run, as Knative reads it from a pod; pure.
//! - [`readiness`]: revision readiness and endpoints from EndpointSlices and Deployments; pure.
//! - [`mod@reconcile`]: the thin I/O around `desired`: `reconcile(Arc<Namespace>, Arc<Context>)`,
//!   `error_policy`, backoff.
//! - [`leader`]: Lease election, a pure decision table and one I/O step.
//! - [`leader_label`]: [`LeaderLabel`], the leader's pod label that routes the
//!   gateways' activation calls to the replica that scales.
//! - [`scale`]: [`KubeRuntime`], the `revgate_runtime_api::Runtime` the KPA drives.
//! - [`mesh`]: in-mesh calls to a revision at zero: when the `-mesh`
//!   VirtualServices go through the local gateway, and how that switch is
//!   ordered against the scale to zero.
//! - [`controller`]: watches, stores, dispatch, views, the leader loop; [`run`].
//!
//! # Tests
//!
//! Unit and scenario tests never contact a cluster: the scenarios in
//! `src/tests.rs` drive [`reconcile::reconcile`], the elector and the
//! runtime against a scripted API server (tower-test's mock service under a
//! real `kube::Client`), each request checked for method, path and body,
//! each answer canned, the whole script under a timeout.
//!
//! `tests/cluster.rs` holds an `#[ignore]`d suite for a real cluster with
//! Istio and revgate's CRDs installed; it uses the current kubeconfig
//! context and a namespace of its own per case: a Service created, updated,
//! scaled and collected; revisions no longer routed garbage-collected with
//! their Deployments and Services (it sets `knative-serving/config-gc` for
//! its duration and puts it back); failing pods' reasons (`ExitCode3`,
//! `Unschedulable`) in the Revision's and Service's status. On a kind (or
//! k3s: `export KUBECONFIG=/etc/rancher/k3s/k3s.yaml`) cluster:
//!
//! ```text
//! kind create cluster --name revgate-it
//! istioctl install -y --set profile=minimal
//! kubectl apply -f istio-manifests/100-namespaces.yaml -f istio-manifests/200-knative-serving-crds.yaml
//! CARGO_TARGET_DIR=/work/target-kube cargo test -p revgate-kube --test cluster -- --ignored --nocapture
//! ```

#![forbid(unsafe_code)]

pub mod config;
pub mod controller;
pub mod desired;
pub mod domain_mappings;
pub mod gc;
pub mod kinds;
pub mod leader;
pub mod leader_label;
pub mod mesh;
pub mod pod_status;
pub mod readiness;
pub mod reconcile;
pub mod rollouts;
pub mod scale;
pub mod snapshot;

#[cfg(test)]
mod gc_tests;
#[cfg(test)]
mod mesh_tests;
#[cfg(test)]
mod pod_status_tests;
#[cfg(test)]
mod rollout_tests;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use config::{ConfigError, ControllerConfig};
pub use controller::{ClusterView, ControllerError, ControllerHandle, run, start};
pub use kinds::{FIELD_MANAGER, Kind};
pub use leader::{LeaseElector, LeaseSettings, Role};
pub use leader_label::{LEADER_LABEL, LeaderLabel, LeaderLabelError};
pub use reconcile::{Context, ReconcileError, WriteFailure, error_policy, reconcile};
pub use scale::KubeRuntime;
pub use snapshot::{ClusterReader, Snapshot};
