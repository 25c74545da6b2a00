//! revgate's resource model: Knative Serving `serving.knative.dev/v1` objects as
//! users write them, their validation, the revisions they create, their status,
//! and the [`plan::GatewayPlan`] that the gateway translations consume.
//!
//! This crate is pure: no I/O, no clock, no async. Time enters as a parameter.
//!
//! # Layout
//! - [`manifest`]: YAML/JSON documents into typed [`manifest::Resource`]s (with `schema`, the
//!   fields each kind declares, so unknown fields are rejected).
//! - [`decode`]: YAML text into JSON values within limits (expanded size, nesting depth,
//!   no duplicate keys), so that no manifest can exhaust memory or be stored unreadable.
//! - [`resources`], [`meta`]: the Knative object types.
//! - [`domainmapping`]: `serving.knative.dev/v1beta1` DomainMapping: its
//!   validation, domain claims, status and the hosts it adds to a Route.
//! - [`config`]: the `knative-serving` ConfigMaps as typed [`config::Settings`].
//! - [`autoscaling`]: `config-autoscaler` and the `autoscaling.knative.dev/*` annotations,
//!   parsed once, validated, and resolved per revision ([`autoscaling::RevisionScaling`]).
//! - [`validation`]: defaulting and validation, as Knative's webhooks do them.
//! - [`names`]: every derived name: revisions, children, hosts.
//! - [`host_template`]: `domain-template` and `tag-template`, parsed and rendered.
//! - [`world`]: the applied state; `apply` and `delete` return a new [`world::World`].
//! - [`observed`]: what the world cannot know by itself ([`observed::Observed`]): each
//!   revision's readiness (ready, deploying, not ready) and each route's gateway verdict.
//! - [`status`]: status of every object and the gateway plan, from the world and what was observed.
//! - [`plan`]: the contract with the gateway translations.
//! - [`gc`]: Knative's revision garbage collection (`config-gc`, routing states), time as a parameter.
//! - [`rollout`]: Knative's gradual rollout with revgate's gates: annotations, the
//!   orchestrator (time as a parameter), the per-Route state, and the split it serves.
//! - [`error`]: [`error::FieldError`], [`error::ManifestError`], [`error::ApplyError`], and the
//!   shapes problems take before they become one ([`error::Problems`], [`error::ConfigError`]).

pub mod autoscaling;
pub mod config;
pub mod decode;
pub mod domainmapping;
pub mod error;
pub mod gc;
pub mod host_template;
pub mod manifest;
pub mod meta;
pub mod names;
pub mod observed;
pub mod plan;
pub mod planning;
pub mod replaced;
pub mod resources;
pub mod rollout;
mod schema;
pub mod status;
pub mod validation;
pub mod world;

pub use config::Settings;
pub use domainmapping::DomainMapping;
pub use error::{ApplyError, FieldError, ManifestError};
pub use manifest::{
    Document, Manifest, OtherKinds, Reference, Resource, ResourceKind, Skipped, SourceRef, parse_documents,
    parse_documents_within, parse_references,
};
pub use observed::{IngressState, Observed, RevisionReadiness};
pub use plan::{GatewayPlan, ObjectKey};
pub use planning::PlanMemo;
pub use resources::{ConfigMap, Configuration, Revision, Route, Service};
pub use world::{Change, ChangeKind, World};
