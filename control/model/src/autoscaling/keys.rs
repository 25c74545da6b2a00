//! The vocabulary of Knative's autoscaling (its `pkg/apis/autoscaling/register.go`):
//! the annotation names and the older spellings still read, the classes,
//! metrics and aggregation algorithms they name, and the bounds every value
//! is checked against. Validation, resolution and `config-autoscaler` all
//! look here, so none of them depends on another.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every autoscaling annotation starts with this (followed by `/`).
pub const ANNOTATION_GROUP: &str = "autoscaling.knative.dev";

/// The Knative Pod Autoscaler: the class revgate implements.
pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";

/// Kubernetes' Horizontal Pod Autoscaler, as Knative names it.
pub const HPA_CLASS: &str = "hpa.autoscaling.knative.dev";

/// The smallest per-pod target; small concurrency limits times small
/// utilizations can otherwise reach 0 and divide by it.
pub(crate) const TARGET_MIN: f64 = 0.01;

/// Stable windows shorter than three decider ticks (2s each) miss data.
pub(crate) const WINDOW_MIN: Duration = Duration::from_secs(6);

/// The longest window, delay or retention Knative allows.
pub(crate) const WINDOW_MAX: Duration = Duration::from_secs(3600);

/// Knative aggregates metrics in 1s buckets; no panic window is shorter.
pub(crate) const BUCKET_SIZE: Duration = Duration::from_secs(1);

// ----- annotation keys ----------------------------------------------------------

/// One autoscaling annotation and the older spellings Knative still reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnotationKey {
    /// The documented name, e.g. `autoscaling.knative.dev/min-scale`.
    pub key: &'static str,
    /// Older spellings, read only when `key` is absent, in Knative's order.
    pub aliases: &'static [&'static str],
}

impl AnnotationKey {
    const fn new(key: &'static str) -> Self {
        Self { key, aliases: &[] }
    }

    const fn with_aliases(key: &'static str, aliases: &'static [&'static str]) -> Self {
        Self { key, aliases }
    }

    /// The name without the group, e.g. `min-scale`: how messages refer to it.
    pub fn short(&self) -> &'static str {
        self.key.rsplit('/').next().unwrap_or(self.key)
    }

    /// The first of `key` and its aliases that is present, with its value.
    pub fn get<'a>(&self, annotations: &'a BTreeMap<String, String>) -> Option<(&'a str, &'a str)> {
        std::iter::once(self.key)
            .chain(self.aliases.iter().copied())
            .find_map(|k| annotations.get_key_value(k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

pub const CLASS_ANNOTATION: AnnotationKey = AnnotationKey::new("autoscaling.knative.dev/class");
pub const METRIC_ANNOTATION: AnnotationKey = AnnotationKey::new("autoscaling.knative.dev/metric");
pub const TARGET_ANNOTATION: AnnotationKey = AnnotationKey::new("autoscaling.knative.dev/target");
pub const TARGET_UTILIZATION_PERCENTAGE_ANNOTATION: AnnotationKey = AnnotationKey::with_aliases(
    "autoscaling.knative.dev/target-utilization-percentage",
    &["autoscaling.knative.dev/targetUtilizationPercentage"],
);
pub const MIN_SCALE_ANNOTATION: AnnotationKey =
    AnnotationKey::with_aliases("autoscaling.knative.dev/min-scale", &["autoscaling.knative.dev/minScale"]);
pub const MAX_SCALE_ANNOTATION: AnnotationKey =
    AnnotationKey::with_aliases("autoscaling.knative.dev/max-scale", &["autoscaling.knative.dev/maxScale"]);
pub const INITIAL_SCALE_ANNOTATION: AnnotationKey =
    AnnotationKey::with_aliases("autoscaling.knative.dev/initial-scale", &["autoscaling.knative.dev/initialScale"]);
pub const ACTIVATION_SCALE_ANNOTATION: AnnotationKey = AnnotationKey::new("autoscaling.knative.dev/activation-scale");
pub const SCALE_DOWN_DELAY_ANNOTATION: AnnotationKey = AnnotationKey::with_aliases(
    "autoscaling.knative.dev/scale-down-delay",
    &["autoscaling.knative.dev/scaleDownDelay"],
);
pub const WINDOW_ANNOTATION: AnnotationKey = AnnotationKey::new("autoscaling.knative.dev/window");
pub const PANIC_WINDOW_PERCENTAGE_ANNOTATION: AnnotationKey = AnnotationKey::with_aliases(
    "autoscaling.knative.dev/panic-window-percentage",
    &["autoscaling.knative.dev/panicWindowPercentage"],
);
pub const PANIC_THRESHOLD_PERCENTAGE_ANNOTATION: AnnotationKey = AnnotationKey::with_aliases(
    "autoscaling.knative.dev/panic-threshold-percentage",
    &["autoscaling.knative.dev/panicThresholdPercentage"],
);
pub const TARGET_BURST_CAPACITY_ANNOTATION: AnnotationKey = AnnotationKey::with_aliases(
    "autoscaling.knative.dev/target-burst-capacity",
    &["autoscaling.knative.dev/targetBurstCapacity"],
);
pub const SCALE_TO_ZERO_POD_RETENTION_PERIOD_ANNOTATION: AnnotationKey = AnnotationKey::with_aliases(
    "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
    &["autoscaling.knative.dev/scaleToZeroPodRetentionPeriod"],
);
pub const METRIC_AGGREGATION_ALGORITHM_ANNOTATION: AnnotationKey = AnnotationKey::with_aliases(
    "autoscaling.knative.dev/metric-aggregation-algorithm",
    &["autoscaling.knative.dev/metricAggregationAlgorithm"],
);

// ----- metric and aggregation ---------------------------------------------------

/// What the KPA scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Requests in flight (`concurrency`).
    #[default]
    Concurrency,
    /// Requests per second (`rps`).
    Rps,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Concurrency => "concurrency",
            Metric::Rps => "rps",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a metric window is averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Aggregation {
    /// Every bucket weighs the same (`linear`).
    #[default]
    #[serde(rename = "linear")]
    Linear,
    /// Recent buckets weigh more (`weighted-exponential`, also spelled `weightedExponential`).
    #[serde(rename = "weighted-exponential")]
    WeightedExponential,
}

impl Aggregation {
    /// Knative's spelling: `linear` or `weighted-exponential`.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Linear => "linear",
            Aggregation::WeightedExponential => "weighted-exponential",
        }
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_read_when_the_documented_key_is_absent() {
        let a = BTreeMap::from([("autoscaling.knative.dev/minScale".to_string(), "3".to_string())]);
        assert_eq!(MIN_SCALE_ANNOTATION.get(&a), Some(("autoscaling.knative.dev/minScale", "3")));
        let both = BTreeMap::from([
            ("autoscaling.knative.dev/minScale".to_string(), "3".to_string()),
            ("autoscaling.knative.dev/min-scale".to_string(), "4".to_string()),
        ]);
        assert_eq!(MIN_SCALE_ANNOTATION.get(&both), Some(("autoscaling.knative.dev/min-scale", "4")));
        assert_eq!(MIN_SCALE_ANNOTATION.short(), "min-scale");
    }
}
