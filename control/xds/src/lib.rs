//! Envoy xDS for revgate: the gateway plan becomes Envoy configuration.
//!
//! # Layout
//!
//! - [`names`]: every Envoy resource name revgate derives, with parsers.
//! - [`translate`](mod@translate): pure `GatewayPlan` + endpoints → Envoy v3
//!   resources, one builder per input object.
//! - [`incremental`]: a [`Translator`] that keeps a fingerprint of each
//!   object's last input and translates only what changed into the next
//!   snapshot.
//! - [`snapshot`]: pure, immutable resource sets versioned per resource by
//!   their encoded bytes (`encode` makes them deterministic), shared per type
//!   between snapshots, and their consistency check (*what* to send).
//! - [`server`]: the ADS gRPC service, SotW and delta, over a
//!   [`server::SnapshotCache`] (*how* to send), with ACK/NACK status, the
//!   grace after which a disconnected node stops counting, and gateway
//!   authentication ([`server::auth`]).
//! - [`warm`]: the warm path: which Routes are served without the gateway
//!   filter, the per-route marker that disables it, and reading it back from
//!   an ACKed route configuration.
//! - [`stats`]: the `MetricsService` Envoy streams its statistics to: the
//!   revision clusters' requests in flight, requests and 5xx answers, what
//!   the KPA needs of requests the filter does not see.
//! - [`render`]: Envoy bootstrap YAML (static, or ADS) from the same protos.
//! - `descriptors`: envoy-types' descriptor set, copied in by `build.rs`,
//!   for proto3 JSON and canonical hashing.
//!
//! Data flows one way: `Translator::update` → `SnapshotCache::set_snapshot`
//! → one task per ADS stream compares versions and sends what changed.

mod descriptors;
mod encode;
pub mod filter;
pub mod incremental;
pub mod names;
pub mod render;
pub mod server;
pub mod snapshot;
pub mod stats;
pub mod translate;
pub mod warm;

pub use descriptors::DescriptorError;
pub use filter::FilterSettings;
pub use incremental::Translator;
pub use server::{
    AckEvent, AckedResource, Api, BearerToken, GatewayAuth, GatewayStatus, GatewayToken, SnapshotCache, XdsServer,
};
pub use snapshot::{ResourceType, Snapshot, SnapshotError};
pub use translate::{Resources, XdsSettings, translate, translate_bypassing};
