//! Knative's autoscaling settings: the `config-autoscaler` ConfigMap in
//! `knative-serving` ([`AutoscalerConfig`]), the `autoscaling.knative.dev/*`
//! annotations of a revision template ([`validate_annotations`]), and what
//! they resolve to for one revision ([`RevisionScaling`]).
//!
//! Both are validated once, at apply time, with Knative's rules; an error
//! names the key or annotation. Resolving never fails: a revision only exists
//! if its annotations passed validation, and anything that still does not
//! parse (a ConfigMap changed since) falls back to the default, as Knative's
//! autoscaler does.
//!
//! # Annotations and their defaults
//!
//! | annotation | values | default |
//! |---|---|---|
//! | `class` | `kpa.autoscaling.knative.dev`, `hpa.autoscaling.knative.dev`, or a class outside `*.knative.dev` | `pod-autoscaler-class` |
//! | `metric` | `concurrency`, `rps` (kpa); any name (hpa) | `concurrency` |
//! | `target` | ≥ 0.01 | `containerConcurrency`, else `container-concurrency-target-default` (concurrency); `requests-per-second-target-default` (rps) |
//! | `target-utilization-percentage` | 1–100 | `container-concurrency-target-percentage` (concurrency); 70 (rps) |
//! | `min-scale`, `max-scale` | whole numbers ≥ 0, min ≤ max unless max is 0 (unbounded); max ≤ `max-scale-limit` when that is set | `min-scale`, `max-scale` |
//! | `initial-scale` | ≥ 0; 0 only with `allow-zero-initial-scale` | `initial-scale` |
//! | `activation-scale` | ≥ 2, within min-scale..=max-scale | 1 |
//! | `window` | 6s–1h, whole seconds | `stable-window` |
//! | `panic-window-percentage` | 1–100 | `panic-window-percentage` |
//! | `panic-threshold-percentage` | 110–1000 | `panic-threshold-percentage` |
//! | `target-burst-capacity` | ≥ 0, or -1 (the activator stays in the path) | `target-burst-capacity` |
//! | `scale-down-delay` | 0–1h, whole seconds | `scale-down-delay` |
//! | `scale-to-zero-pod-retention-period` | 0–1h | `scale-to-zero-pod-retention-period` |
//! | `metric-aggregation-algorithm` | `linear`, `weighted-exponential` (or `weightedExponential`) | `linear` |
//!
//! The camelCase spellings Knative still reads (`minScale`, `maxScale`,
//! `initialScale`, `targetBurstCapacity`, …) are accepted too; when both
//! spellings are present, the documented one wins and the other is ignored,
//! as in Knative.
//!
//! Durations use Go's syntax (`60s`, `1m30s`, `1.5h`, `300ms`), because that
//! is what Knative manifests and ConfigMaps contain.
//!
//! # Layout
//!
//! Split as Knative splits `pkg/apis/autoscaling` and `pkg/autoscaler/config`;
//! every item is re-exported here.
//! - `keys`: the vocabulary (`register.go`): annotation names and aliases,
//!   classes, metrics, aggregation algorithms, and the bounds on values.
//! - `values`: Go's number, boolean and duration syntax.
//! - `config`: `config-autoscaler`, parsed once ([`AutoscalerConfig`]).
//! - `annotations`: a template's annotations, parsed once
//!   ([`ScalingAnnotations`]) for both of the next two.
//! - `validation`: the webhook's checks (`annotation_validation.go`).
//! - `resolution`: annotations over config, per revision ([`RevisionScaling`]).
//!
//! Each depends only on those listed before it.

mod annotations;
mod config;
mod keys;
mod resolution;
mod validation;
mod values;

pub use annotations::{Parsed, ScalingAnnotations, Written};
pub use config::{AUTOSCALER_CONFIG_MAP, AutoscalerConfig};
pub use keys::{
    ACTIVATION_SCALE_ANNOTATION, ANNOTATION_GROUP, Aggregation, AnnotationKey, CLASS_ANNOTATION, HPA_CLASS,
    INITIAL_SCALE_ANNOTATION, KPA_CLASS, MAX_SCALE_ANNOTATION, METRIC_AGGREGATION_ALGORITHM_ANNOTATION,
    METRIC_ANNOTATION, MIN_SCALE_ANNOTATION, Metric, PANIC_THRESHOLD_PERCENTAGE_ANNOTATION,
    PANIC_WINDOW_PERCENTAGE_ANNOTATION, SCALE_DOWN_DELAY_ANNOTATION, SCALE_TO_ZERO_POD_RETENTION_PERIOD_ANNOTATION,
    TARGET_ANNOTATION, TARGET_BURST_CAPACITY_ANNOTATION, TARGET_UTILIZATION_PERCENTAGE_ANNOTATION, WINDOW_ANNOTATION,
};
pub use resolution::{RPS_TARGET_UTILIZATION_PERCENTAGE, RevisionScaling};
pub use validation::{validate_annotations, validate_no_annotations};
pub use values::parse_go_duration;
