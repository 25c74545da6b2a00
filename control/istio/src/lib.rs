//! Cluster mode on Istio: every Kubernetes and Istio object revgate writes
//! for a set of Knative manifests, built by pure functions.
//!
//! Knative on Istio needs three controllers beside the gateway: the route
//! reconciler and net-istio (traffic → VirtualServices), the revision
//! reconciler (revision → Deployment with a queue-proxy sidecar) and the
//! serverless-service reconciler (which points each revision's Service at
//! the activator or at the pods). revgate keeps the first two outputs in
//! their familiar shape and replaces the rest with one filter in the
//! ingress gateway, which holds requests for revisions at zero, enforces
//! `containerConcurrency` and reports load. So for each set of manifests it
//! writes:
//!
//! | object | per | shape |
//! |---|---|---|
//! | `v1` Service `<revision>` | revision | ClusterIP, selects the revision's pods, port 80 (81 for h2c) → user port |
//! | `v1` Service `<route>`, `<tag>-<route>` | route host | Knative's: ExternalName to the local gateway |
//! | `apps/v1` Deployment `<revision>-deployment` | revision | Knative's, without the queue-proxy |
//! | `networking.istio.io/v1beta1` VirtualService `<route>-mesh`, `<route>-ingress` | route | net-istio's |
//! | `networking.istio.io/v1beta1` VirtualService `<domain>-ingress` | DomainMapping | net-istio's for the mapping's Ingress |
//! | `extensions.istio.io/v1alpha1` WasmPlugin `revgate` | gateway | revgate's filter, `FAIL_OPEN` |
//!
//! Nothing here does I/O or reads a clock: objects are functions of the
//! applied [`revgate_model::World`], its gateway plan and [`RenderOptions`],
//! so the same inputs always give byte-identical YAML, and an applier (the
//! CLI's `render`, or a controller using server-side apply) decides how
//! they reach a cluster.
//!
//! # Layout
//! - [`options`]: [`RenderOptions`]: gateways, the filter image, the
//!   activation Service, with the defaults of a stock Istio + net-istio install.
//! - [`names`]: every derived name and host (`<route>-ingress`,
//!   `<revision>.<ns>.svc.cluster.local`, Istio cluster names), shortened as
//!   Knative shortens them.
//! - [`meta`]: object metadata and owner references (only with a known UID).
//! - [`mod@virtual_service`]: Knative's ingress rules, then net-istio's VirtualServices.
//! - [`domain_mapping`]: a DomainMapping's Ingress as net-istio writes it.
//! - [`mod@deployment`]: a revision's Deployment.
//! - [`service`]: a revision's Service, and a route's.
//! - [`mod@wasm_plugin`]: the WasmPlugin and the filter's configuration.
//! - [`mod@render`]: all of the above in apply order, and as a YAML stream.
//! - [`mesh`]: calls from inside the mesh to a revision at zero, sent
//!   through the local gateway (the `-mesh` VirtualService's switch).

pub mod deployment;
pub mod domain_mapping;
mod md5;
pub mod mesh;
pub mod meta;
pub mod names;
pub mod options;
pub mod render;
mod revision;
pub mod service;
pub mod virtual_service;
pub mod wasm_plugin;

pub use deployment::{Deployment, deployment};
pub use meta::{OwnerKind, OwnerUids};
pub use options::{ActivationService, LocalGateway, OptionsError, PluginPhase, RenderOptions};
pub use render::{Object, RenderError, render, render_plan, to_yaml_stream};
pub use service::{revision_service, route_services};
pub use virtual_service::{VirtualService, virtual_services};
pub use wasm_plugin::{WasmPlugin, wasm_plugin};
