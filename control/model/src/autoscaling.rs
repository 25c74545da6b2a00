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

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::validation::Problems;

/// The ConfigMap in `knative-serving` that holds [`AutoscalerConfig`].
pub const AUTOSCALER_CONFIG_MAP: &str = "config-autoscaler";

/// Every autoscaling annotation starts with this (followed by `/`).
pub const ANNOTATION_GROUP: &str = "autoscaling.knative.dev";

/// The Knative Pod Autoscaler: the class revgate implements.
pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";

/// Kubernetes' Horizontal Pod Autoscaler, as Knative names it.
pub const HPA_CLASS: &str = "hpa.autoscaling.knative.dev";

/// The smallest per-pod target; small concurrency limits times small
/// utilizations can otherwise reach 0 and divide by it.
const TARGET_MIN: f64 = 0.01;

/// Stable windows shorter than three decider ticks (2s each) miss data.
const WINDOW_MIN: Duration = Duration::from_secs(6);

/// The longest window, delay or retention Knative allows.
const WINDOW_MAX: Duration = Duration::from_secs(3600);

/// Knative aggregates metrics in 1s buckets; no panic window is shorter.
const BUCKET_SIZE: Duration = Duration::from_secs(1);

/// Target utilization for the `rps` metric when no annotation sets one.
///
/// Knative reads `container-concurrency-target-percentage` for the
/// concurrency metric only; for rps it uses its built-in 70% regardless of
/// the ConfigMap (`TargetUtilization` in its config is never parsed). revgate
/// reproduces that, so an rps revision scales the same under both.
pub const RPS_TARGET_UTILIZATION_PERCENTAGE: f64 = 70.0;

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

    fn value<'a>(&self, annotations: &'a BTreeMap<String, String>) -> Option<&'a str> {
        self.get(annotations).map(|(_, v)| v)
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

    /// The annotation's value; anything unknown averages linearly, as in Knative.
    fn from_annotation(value: Option<&str>) -> Self {
        match value {
            Some("weighted-exponential" | "weightedExponential") => Aggregation::WeightedExponential,
            _ => Aggregation::Linear,
        }
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ----- config-autoscaler --------------------------------------------------------

/// `config-autoscaler`, with Knative's defaults.
///
/// Parsed values always satisfy Knative's rules (see [`AutoscalerConfig::parse`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalerConfig {
    /// `container-concurrency-target-percentage`: the share of the concurrency
    /// target a pod should run at (70). A value ≤ 1 is read as a fraction, as
    /// Knative does for old ConfigMaps, and stored as a percentage.
    pub container_concurrency_target_percentage: f64,
    /// `container-concurrency-target-default`: the concurrency target when
    /// `containerConcurrency` is 0 (100).
    pub container_concurrency_target_default: f64,
    /// `requests-per-second-target-default` (200).
    pub requests_per_second_target_default: f64,
    /// `target-burst-capacity` (211); -1 keeps the activator in the path, 0 removes it once scaled.
    pub target_burst_capacity: f64,
    /// `stable-window` (60s): 6s–1h, whole seconds.
    pub stable_window: Duration,
    /// `panic-window-percentage` (10): the panic window as a share of the stable window, 1–100.
    pub panic_window_percentage: f64,
    /// `panic-threshold-percentage` (200): panic when demand reaches this share of capacity.
    pub panic_threshold_percentage: f64,
    /// `max-scale-up-rate` (1000): at most this many times the ready pods per decision; > 1.
    pub max_scale_up_rate: f64,
    /// `max-scale-down-rate` (2): at least ready/rate pods are kept per decision; > 1.
    pub max_scale_down_rate: f64,
    /// `enable-scale-to-zero` (true).
    pub enable_scale_to_zero: bool,
    /// `scale-to-zero-grace-period` (30s): how long the last pod stays while the activator takes over; > 0.
    pub scale_to_zero_grace_period: Duration,
    /// `scale-to-zero-pod-retention-period` (0s): how long the last pod stays after the decision to scale to 0.
    pub scale_to_zero_pod_retention_period: Duration,
    /// `activator-capacity` (100): requests one activator is counted to absorb; ≥ 1.
    pub activator_capacity: f64,
    /// `initial-scale` (1): pods a new revision starts with; 0 needs `allow_zero_initial_scale`.
    pub initial_scale: u32,
    /// `allow-zero-initial-scale` (false).
    pub allow_zero_initial_scale: bool,
    /// `min-scale` (0): the default lower bound.
    pub min_scale: u32,
    /// `max-scale` (0 = unbounded): the default upper bound; ≥ 1 when `max_scale_limit` is set.
    pub max_scale: u32,
    /// `scale-down-delay` (0s): whole seconds.
    pub scale_down_delay: Duration,
    /// `max-scale-limit` (0 = none): the largest `max-scale` a revision may ask for.
    pub max_scale_limit: u32,
    /// `pod-autoscaler-class` (`kpa.autoscaling.knative.dev`): the class of revisions that name none.
    pub pod_autoscaler_class: String,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            container_concurrency_target_percentage: 70.0,
            container_concurrency_target_default: 100.0,
            requests_per_second_target_default: 200.0,
            target_burst_capacity: 211.0,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            enable_scale_to_zero: true,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            activator_capacity: 100.0,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            min_scale: 0,
            max_scale: 0,
            scale_down_delay: Duration::ZERO,
            max_scale_limit: 0,
            pod_autoscaler_class: KPA_CLASS.to_string(),
        }
    }
}

/// Reads typed values from ConfigMap data, collecting one error per key that does not parse.
struct Keys<'a> {
    data: &'a BTreeMap<String, String>,
    errors: Vec<ConfigError>,
}

impl Keys<'_> {
    fn read<T>(&mut self, key: &str, parse: fn(&str) -> Option<T>, expected: &str) -> Option<T> {
        let raw = self.data.get(key)?;
        let value = parse(raw.trim());
        if value.is_none() {
            self.errors.push(ConfigError::new(key, format!("expected {expected}, got {raw:?}")));
        }
        value
    }

    fn float(&mut self, key: &str, default: f64) -> f64 {
        self.read(key, parse_float, "a number").unwrap_or(default)
    }

    fn int(&mut self, key: &str, default: u32) -> i64 {
        self.read(key, parse_int32, "a whole number").map_or(i64::from(default), i64::from)
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        self.read(key, parse_go_bool, "\"true\" or \"false\"").unwrap_or(default)
    }

    /// Signed nanoseconds: Knative's rules for negative durations need the sign.
    fn duration(&mut self, key: &str, default: Duration) -> i128 {
        self.read(key, parse_go_duration, "a duration such as \"60s\" or \"1m30s\"")
            .map_or(default.as_nanos() as i128, i128::from)
    }
}

impl AutoscalerConfig {
    /// Parses `config-autoscaler` data with Knative's rules. Keys not given
    /// keep their defaults; keys revgate does not know are ignored (such as
    /// the `_example` block). Every invalid key is reported, named.
    pub fn parse(data: &BTreeMap<String, String>) -> Result<Self, Vec<ConfigError>> {
        let d = Self::default();
        let mut keys = Keys { data, errors: Vec::new() };
        let pod_autoscaler_class =
            data.get("pod-autoscaler-class").map_or(d.pod_autoscaler_class.clone(), |c| c.trim().to_string());
        let enable_scale_to_zero = keys.bool("enable-scale-to-zero", d.enable_scale_to_zero);
        let allow_zero_initial_scale = keys.bool("allow-zero-initial-scale", d.allow_zero_initial_scale);
        let max_scale_up_rate = keys.float("max-scale-up-rate", d.max_scale_up_rate);
        let max_scale_down_rate = keys.float("max-scale-down-rate", d.max_scale_down_rate);
        let target_percentage =
            keys.float("container-concurrency-target-percentage", d.container_concurrency_target_percentage);
        let target_default = keys.float("container-concurrency-target-default", d.container_concurrency_target_default);
        let rps_default = keys.float("requests-per-second-target-default", d.requests_per_second_target_default);
        let target_burst_capacity = keys.float("target-burst-capacity", d.target_burst_capacity);
        let panic_window_percentage = keys.float("panic-window-percentage", d.panic_window_percentage);
        let activator_capacity = keys.float("activator-capacity", d.activator_capacity);
        let panic_threshold_percentage = keys.float("panic-threshold-percentage", d.panic_threshold_percentage);
        let initial_scale = keys.int("initial-scale", d.initial_scale);
        let min_scale = keys.int("min-scale", d.min_scale);
        let max_scale = keys.int("max-scale", d.max_scale);
        let max_scale_limit = keys.int("max-scale-limit", d.max_scale_limit);
        let stable_window = keys.duration("stable-window", d.stable_window);
        let scale_down_delay = keys.duration("scale-down-delay", d.scale_down_delay);
        let grace_period = keys.duration("scale-to-zero-grace-period", d.scale_to_zero_grace_period);
        let retention = keys.duration("scale-to-zero-pod-retention-period", d.scale_to_zero_pod_retention_period);
        if !keys.errors.is_empty() {
            return Err(keys.errors);
        }

        const SECOND: i128 = 1_000_000_000;
        let mut errors = Vec::new();
        let raw = |key: &str| data.get(key).map_or("", |v| v.trim());
        let mut fail = |key: &str, message: String| errors.push(ConfigError::new(key, message));

        if grace_period <= 0 {
            let key = "scale-to-zero-grace-period";
            fail(key, format!("must be positive, got {:?}", raw(key)));
        }
        if scale_down_delay < 0 {
            let key = "scale-down-delay";
            fail(key, format!("must not be negative, got {:?}", raw(key)));
        } else if scale_down_delay % SECOND != 0 {
            let key = "scale-down-delay";
            fail(key, format!("must be whole seconds, got {:?}", raw(key)));
        }
        if retention < 0 {
            let key = "scale-to-zero-pod-retention-period";
            fail(key, format!("must not be negative, got {:?}", raw(key)));
        }
        if target_burst_capacity < 0.0 && target_burst_capacity != -1.0 {
            fail(
                "target-burst-capacity",
                format!("expected -1 (the activator stays in the path) or a number >= 0, got {target_burst_capacity}"),
            );
        }
        // Old ConfigMaps give a fraction of 1; Knative reads anything above 1 as a percentage.
        let container_concurrency_target_percentage =
            if target_percentage > 1.0 { target_percentage } else { target_percentage * 100.0 };
        if !(container_concurrency_target_percentage > 0.0 && container_concurrency_target_percentage <= 100.0) {
            fail(
                "container-concurrency-target-percentage",
                format!(
                    "expected a percentage 0 < p <= 100 (or a fraction 0 < f <= 1), got {}",
                    raw("container-concurrency-target-percentage")
                ),
            );
        } else if container_concurrency_target_percentage / 100.0 * target_default < TARGET_MIN {
            fail(
                "container-concurrency-target-default",
                format!(
                    "{target_default} at container-concurrency-target-percentage {container_concurrency_target_percentage} \
                     gives a per-pod target of {}, which must be at least {TARGET_MIN}",
                    container_concurrency_target_percentage / 100.0 * target_default
                ),
            );
        }
        if rps_default < TARGET_MIN {
            fail("requests-per-second-target-default", format!("expected at least {TARGET_MIN}, got {rps_default}"));
        }
        if activator_capacity < 1.0 {
            fail("activator-capacity", format!("expected at least 1, got {activator_capacity}"));
        }
        if max_scale_up_rate <= 1.0 {
            fail("max-scale-up-rate", format!("expected a number greater than 1, got {max_scale_up_rate}"));
        }
        if max_scale_down_rate <= 1.0 {
            fail("max-scale-down-rate", format!("expected a number greater than 1, got {max_scale_down_rate}"));
        }
        if !(WINDOW_MIN.as_nanos() as i128..=WINDOW_MAX.as_nanos() as i128).contains(&stable_window) {
            let key = "stable-window";
            fail(key, format!("expected 6s <= stable-window <= 1h, got {:?}", raw(key)));
        } else if stable_window % SECOND != 0 {
            let key = "stable-window";
            fail(key, format!("must be whole seconds, got {:?}", raw(key)));
        }
        if !(1.0..=100.0).contains(&panic_window_percentage) {
            fail(
                "panic-window-percentage",
                format!("expected 1 <= panic-window-percentage <= 100, got {panic_window_percentage}"),
            );
        }
        if initial_scale < 0 {
            fail("initial-scale", format!("must not be negative, got {initial_scale}"));
        } else if initial_scale == 0 && !allow_zero_initial_scale {
            fail("initial-scale", "0 is only allowed with allow-zero-initial-scale: \"true\"".to_string());
        }
        if min_scale < 0 {
            fail("min-scale", format!("must not be negative, got {min_scale}"));
        }
        if max_scale_limit < 0 {
            fail("max-scale-limit", format!("must not be negative, got {max_scale_limit}"));
        } else if max_scale_limit > 0 && !(1..=max_scale_limit).contains(&max_scale) {
            fail(
                "max-scale",
                format!(
                    "expected 1 <= max-scale <= max-scale-limit ({max_scale_limit}), got {max_scale}; \
                     with a limit set, the default may not be 0 (unbounded)"
                ),
            );
        } else if max_scale < 0 {
            fail("max-scale", format!("must not be negative, got {max_scale}"));
        }
        if max_scale > 0 && min_scale > max_scale {
            fail("min-scale", format!("expected 0 <= min-scale <= max-scale ({max_scale}), got {min_scale}"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let count = |n: i64| u32::try_from(n).unwrap_or(0);
        let duration = |nanos: i128| Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
        Ok(Self {
            container_concurrency_target_percentage,
            container_concurrency_target_default: target_default,
            requests_per_second_target_default: rps_default,
            target_burst_capacity,
            stable_window: duration(stable_window),
            panic_window_percentage,
            panic_threshold_percentage,
            max_scale_up_rate,
            max_scale_down_rate,
            enable_scale_to_zero,
            scale_to_zero_grace_period: duration(grace_period),
            scale_to_zero_pod_retention_period: duration(retention),
            activator_capacity,
            initial_scale: count(initial_scale),
            allow_zero_initial_scale,
            min_scale: count(min_scale),
            max_scale: count(max_scale),
            scale_down_delay: duration(scale_down_delay),
            max_scale_limit: count(max_scale_limit),
            pod_autoscaler_class,
        })
    }
}

// ----- annotation validation ----------------------------------------------------

/// Checks the autoscaling annotations of a revision template against
/// `config` (for `max-scale-limit`, `allow-zero-initial-scale` and the
/// default class), as Knative's webhook does. `path` is where the
/// annotations sit, e.g. `spec.template.metadata.annotations`; each problem's
/// path names the annotation as written, `{path}[{key}]`.
pub fn validate_annotations(annotations: &BTreeMap<String, String>, config: &AutoscalerConfig, path: &str) -> Problems {
    let mut problems = Problems::new();
    let mut push = |key: &str, message: String| problems.push((format!("{path}[{key}]"), message));

    // Class: Knative's own domain holds only its two classes; others belong to their own autoscalers.
    let class_annotation = CLASS_ANNOTATION.get(annotations);
    if let Some((key, class)) = class_annotation
        && class.ends_with(".knative.dev")
        && class != KPA_CLASS
        && class != HPA_CLASS
    {
        push(key, format!("{class:?} is not an autoscaler class: use {KPA_CLASS:?} or {HPA_CLASS:?}"));
    }
    let class = class_annotation.map_or(config.pod_autoscaler_class.as_str(), |(_, c)| c);

    if let Some((key, metric)) = METRIC_ANNOTATION.get(annotations) {
        match class {
            KPA_CLASS if metric != "concurrency" && metric != "rps" => push(
                key,
                format!("{metric:?} is not a metric of the {KPA_CLASS} class: use \"concurrency\" or \"rps\""),
            ),
            HPA_CLASS if metric.is_empty() => {
                push(key, format!("the {HPA_CLASS} class needs a metric, such as \"cpu\" or \"memory\""))
            }
            _ => {}
        }
    }
    // Other classes may read the algorithm differently, so Knative checks it only
    // where the class is named explicitly as the KPA.
    if class_annotation.is_some_and(|(_, c)| c == KPA_CLASS)
        && let Some((key, algorithm)) = METRIC_AGGREGATION_ALGORITHM_ANNOTATION.get(annotations)
        && !matches!(algorithm, "" | "linear" | "weighted-exponential" | "weightedExponential")
    {
        push(key, format!("{algorithm:?} is not an aggregation algorithm: use \"linear\" or \"weighted-exponential\""));
    }

    // Bounds. A bound that does not parse counts as 0 below, so one mistake is reported once.
    let mut bound = |annotation: AnnotationKey| {
        let Some((key, raw)) = annotation.get(annotations) else {
            return (None, 0);
        };
        match parse_int32(raw.trim()) {
            Some(n) if n >= 0 => (Some(key), i64::from(n)),
            Some(_) => {
                push(key, format!("expected 0 <= {} <= {}, got {raw}", annotation.short(), i32::MAX));
                (None, 0)
            }
            None => {
                push(key, format!("expected a whole number 0 <= {} <= {}, got {raw:?}", annotation.short(), i32::MAX));
                (None, 0)
            }
        }
    };
    let (min_key, min) = bound(MIN_SCALE_ANNOTATION);
    let (max_key, max) = bound(MAX_SCALE_ANNOTATION);
    if let Some(key) = min_key
        && max != 0
        && min > max
    {
        push(key, format!("expected 0 <= min-scale <= max-scale ({max}), got {min}"));
    }
    let limit = i64::from(config.max_scale_limit);
    if let Some(key) = max_key
        && limit > 0
    {
        if max == 0 {
            push(
                key,
                format!(
                    "0 (unbounded) is not allowed: config-autoscaler sets max-scale-limit {limit}, \
                     so expected 1 <= max-scale <= {limit}"
                ),
            );
        } else if max > limit {
            push(key, format!("expected 1 <= max-scale <= {limit} (max-scale-limit in config-autoscaler), got {max}"));
        }
    }
    if let Some((key, raw)) = ACTIVATION_SCALE_ANNOTATION.get(annotations) {
        match parse_int32(raw.trim()).map(i64::from) {
            None => push(key, format!("expected a whole number >= 2, got {raw:?}")),
            Some(n) if n < 2 => {
                push(key, format!("expected activation-scale >= 2 (1 is what scaling from zero gives anyway), got {n}"))
            }
            Some(n) if n < min => push(key, format!("expected min-scale ({min}) <= activation-scale, got {n}")),
            Some(n) if max != 0 && n > max => {
                push(key, format!("expected activation-scale <= max-scale ({max}), got {n}"))
            }
            Some(_) => {}
        }
    }
    if let Some((key, raw)) = INITIAL_SCALE_ANNOTATION.get(annotations) {
        match raw.trim().parse::<i64>() {
            Err(_) => push(key, format!("expected a whole number >= 0, got {raw:?}")),
            Ok(n) if n < 0 => push(key, format!("must not be negative, got {n}")),
            Ok(0) if !config.allow_zero_initial_scale => push(
                key,
                "0 is not allowed unless config-autoscaler sets allow-zero-initial-scale: \"true\"".to_string(),
            ),
            Ok(_) => {}
        }
    }

    // Numbers.
    let mut number = |annotation: AnnotationKey, valid: &dyn Fn(f64) -> bool, expected: &str| {
        if let Some((key, raw)) = annotation.get(annotations) {
            match parse_float(raw.trim()) {
                None => push(key, format!("expected a number, got {raw:?}")),
                Some(v) if !valid(v) => push(key, format!("expected {expected}, got {raw}")),
                Some(_) => {}
            }
        }
    };
    number(TARGET_ANNOTATION, &|v| v >= TARGET_MIN, "target >= 0.01");
    number(
        TARGET_UTILIZATION_PERCENTAGE_ANNOTATION,
        &|v| (1.0..=100.0).contains(&v),
        "1 <= target-utilization-percentage <= 100",
    );
    number(
        TARGET_BURST_CAPACITY_ANNOTATION,
        &|v| v >= 0.0 || v == -1.0,
        "-1 (the activator stays in the path) or a number >= 0",
    );
    number(PANIC_WINDOW_PERCENTAGE_ANNOTATION, &|v| (1.0..=100.0).contains(&v), "1 <= panic-window-percentage <= 100");
    number(
        PANIC_THRESHOLD_PERCENTAGE_ANNOTATION,
        &|v| (110.0..=1000.0).contains(&v),
        "110 <= panic-threshold-percentage <= 1000",
    );

    // Durations.
    let mut duration = |annotation: AnnotationKey, min: Duration, whole_seconds: bool| {
        let Some((key, raw)) = annotation.get(annotations) else {
            return;
        };
        let short = annotation.short();
        let (lo, hi) = (go_duration_text(min), go_duration_text(WINDOW_MAX));
        match parse_go_duration(raw.trim()) {
            None => push(key, format!("expected a duration such as \"60s\" or \"1m30s\", got {raw:?}")),
            Some(nanos) if !(min.as_nanos() as i128..=WINDOW_MAX.as_nanos() as i128).contains(&i128::from(nanos)) => {
                push(key, format!("expected {lo} <= {short} <= {hi}, got {raw:?}"))
            }
            Some(nanos) if whole_seconds && nanos % 1_000_000_000 != 0 => {
                push(key, format!("must be whole seconds, got {raw:?}"))
            }
            Some(_) => {}
        }
    };
    duration(WINDOW_ANNOTATION, WINDOW_MIN, true);
    duration(SCALE_DOWN_DELAY_ANNOTATION, Duration::ZERO, true);
    duration(SCALE_TO_ZERO_POD_RETENTION_PERIOD_ANNOTATION, Duration::ZERO, false);

    problems
}

/// Knative reads autoscaling annotations from revision templates only; on a
/// Service, Configuration or Route they would silently do nothing, so
/// Knative rejects them there. `path` is the object's annotations, e.g.
/// `metadata.annotations`.
pub fn validate_no_annotations(annotations: &BTreeMap<String, String>, path: &str) -> Problems {
    annotations
        .keys()
        .filter(|k| k.strip_prefix(ANNOTATION_GROUP).is_some_and(|rest| rest.starts_with('/')))
        .map(|k| {
            (
                format!("{path}[{k}]"),
                "autoscaling annotations apply to revisions: put it under spec.template.metadata.annotations \
                 of the Service or Configuration"
                    .to_string(),
            )
        })
        .collect()
}

// ----- resolution -------------------------------------------------------------

/// How one revision scales: its annotations over `config-autoscaler`, with
/// the values Knative's KPA derives from them (its `DeciderSpec`, metric
/// windows and scaler settings).
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionScaling {
    /// The autoscaler class; revgate's autoscaler acts on [`KPA_CLASS`].
    pub class: String,
    pub metric: Metric,
    /// Per-pod target the autoscaler aims for: `total_value` × utilization, at least 0.01.
    pub target: f64,
    /// Most a pod may take: `containerConcurrency` (or the annotation target, if lower),
    /// else the default target; for rps the rps target.
    pub total_value: f64,
    /// -1: the activator always stays in the path; 0: never once scaled from zero.
    pub target_burst_capacity: f64,
    /// Panic when demand reaches this multiple of capacity (2.0 by default).
    pub panic_threshold: f64,
    pub stable_window: Duration,
    /// `round(stable_window × panic-window-percentage / 100)` to the second, at least 1s.
    pub panic_window: Duration,
    pub scale_down_delay: Duration,
    /// Lower bound; applies only while the revision is routed (Knative ignores it for unreachable revisions).
    pub min_scale: u32,
    /// Upper bound; 0 = unbounded.
    pub max_scale: u32,
    /// Pods the revision starts with.
    pub initial_scale: u32,
    /// `allow-zero-initial-scale`: whether an initial scale of 0 is honoured.
    pub allow_zero_initial_scale: bool,
    /// Smallest non-zero scale; 1 = no minimum beyond scaling from zero.
    pub activation_scale: u32,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub enable_scale_to_zero: bool,
    pub scale_to_zero_grace_period: Duration,
    pub scale_to_zero_pod_retention_period: Duration,
    pub activator_capacity: f64,
    pub aggregation: Aggregation,
}

impl RevisionScaling {
    /// Resolves a revision's scaling from its annotations, its
    /// `containerConcurrency` (after defaulting; 0 = unlimited) and `config`.
    ///
    /// Targets follow Knative's `ResolveMetricTarget`:
    ///
    /// | metric | total | utilization |
    /// |---|---|---|
    /// | concurrency | `target` annotation, capped at cc when cc > 0; else cc if > 0; else `container-concurrency-target-default` | annotation, else `container-concurrency-target-percentage` |
    /// | rps | `target` annotation, else `requests-per-second-target-default` | annotation, else 70% ([`RPS_TARGET_UTILIZATION_PERCENTAGE`]) |
    ///
    /// and `target = max(0.01, total × utilization / 100)`.
    pub fn resolve(
        annotations: &BTreeMap<String, String>,
        container_concurrency: u32,
        config: &AutoscalerConfig,
    ) -> Self {
        let class = CLASS_ANNOTATION.value(annotations).unwrap_or(&config.pod_autoscaler_class).to_string();
        // Knative's default metric depends on the class: concurrency for the KPA, cpu for the HPA.
        let metric_name = METRIC_ANNOTATION.value(annotations).unwrap_or(match class.as_str() {
            KPA_CLASS => "concurrency",
            HPA_CLASS => "cpu",
            _ => "",
        });
        // Only rps has its own targets; every other metric resolves like concurrency.
        let metric = if metric_name == "rps" { Metric::Rps } else { Metric::Concurrency };
        let float = |annotation: AnnotationKey| annotation.value(annotations).and_then(|v| parse_float(v.trim()));
        let count = |annotation: AnnotationKey| {
            annotation.value(annotations).and_then(|v| parse_int32(v.trim())).and_then(|n| u32::try_from(n).ok())
        };
        let duration = |annotation: AnnotationKey, default: Duration| {
            annotation
                .value(annotations)
                .and_then(|v| parse_go_duration(v.trim()))
                .and_then(|nanos| u64::try_from(nanos).ok())
                .map_or(default, Duration::from_nanos)
        };

        let cc = f64::from(container_concurrency);
        let (mut total_value, default_utilization) = match metric {
            Metric::Rps => (config.requests_per_second_target_default, RPS_TARGET_UTILIZATION_PERCENTAGE),
            Metric::Concurrency if container_concurrency > 0 => (cc, config.container_concurrency_target_percentage),
            Metric::Concurrency => {
                (config.container_concurrency_target_default, config.container_concurrency_target_percentage)
            }
        };
        if let Some(annotated) = float(TARGET_ANNOTATION) {
            // Never aim above what a pod accepts.
            total_value =
                if metric_name == "concurrency" && container_concurrency > 0 { annotated.min(cc) } else { annotated };
        }
        let utilization = float(TARGET_UTILIZATION_PERCENTAGE_ANNOTATION).unwrap_or(default_utilization);
        let target = (total_value * utilization / 100.0).max(TARGET_MIN);

        let stable_window = duration(WINDOW_ANNOTATION, config.stable_window);
        let panic_window_percentage =
            float(PANIC_WINDOW_PERCENTAGE_ANNOTATION).unwrap_or(config.panic_window_percentage);
        let panic_threshold_percentage =
            float(PANIC_THRESHOLD_PERCENTAGE_ANNOTATION).unwrap_or(config.panic_threshold_percentage);

        // A revision asking for 0 pods at start when the cluster no longer allows it starts at the default.
        let initial_scale = match count(INITIAL_SCALE_ANNOTATION) {
            Some(0) if !config.allow_zero_initial_scale => config.initial_scale,
            Some(n) => n,
            None => config.initial_scale,
        };

        Self {
            class,
            metric,
            target,
            total_value,
            target_burst_capacity: float(TARGET_BURST_CAPACITY_ANNOTATION).unwrap_or(config.target_burst_capacity),
            panic_threshold: panic_threshold_percentage / 100.0,
            stable_window,
            panic_window: panic_window(stable_window, panic_window_percentage),
            scale_down_delay: duration(SCALE_DOWN_DELAY_ANNOTATION, config.scale_down_delay),
            min_scale: count(MIN_SCALE_ANNOTATION).unwrap_or(config.min_scale),
            max_scale: count(MAX_SCALE_ANNOTATION).unwrap_or(config.max_scale),
            initial_scale,
            allow_zero_initial_scale: config.allow_zero_initial_scale,
            activation_scale: count(ACTIVATION_SCALE_ANNOTATION).unwrap_or(1).max(1),
            max_scale_up_rate: config.max_scale_up_rate,
            max_scale_down_rate: config.max_scale_down_rate,
            enable_scale_to_zero: config.enable_scale_to_zero,
            scale_to_zero_grace_period: config.scale_to_zero_grace_period,
            scale_to_zero_pod_retention_period: duration(
                SCALE_TO_ZERO_POD_RETENTION_PERIOD_ANNOTATION,
                config.scale_to_zero_pod_retention_period,
            ),
            activator_capacity: config.activator_capacity,
            aggregation: Aggregation::from_annotation(METRIC_AGGREGATION_ALGORITHM_ANNOTATION.value(annotations)),
        }
    }
}

/// The panic window: a share of the stable window, rounded to the second
/// (halves up), never shorter than one metric bucket.
fn panic_window(stable_window: Duration, percentage: f64) -> Duration {
    const SECOND: u128 = 1_000_000_000;
    // As Knative: the float product truncated to nanoseconds, then rounded to seconds.
    let nanos = (stable_window.as_nanos() as f64 * percentage / 100.0).max(0.0) as u128;
    let rest = nanos % SECOND;
    let rounded = if 2 * rest < SECOND { nanos - rest } else { nanos + SECOND - rest };
    Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX)).max(BUCKET_SIZE)
}

// ----- values as Knative reads them --------------------------------------------

/// A finite number, as Go's `strconv.ParseFloat` reads one. Infinities and NaN
/// are refused: every comparison with NaN is false, so it would pass any bound.
fn parse_float(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A 32-bit whole number (Knative's `int32` fields), sign allowed.
fn parse_int32(text: &str) -> Option<i32> {
    text.parse().ok()
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration`, in signed nanoseconds: an optional sign, then
/// one or more decimal numbers each with a unit (`ns`, `us`/`µs`, `ms`, `s`,
/// `m`, `h`), e.g. `1h30m`, `1.5s`, `-300ms`; a bare `0` is allowed.
pub fn parse_go_duration(text: &str) -> Option<i64> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, after) = rest.split_at(digits(rest));
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(digits(after)),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let unit_end = after.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
        let mut value = whole.checked_mul(unit)?;
        if !fraction.is_empty() {
            // Digits beyond the 18th cannot change a nanosecond count.
            let fraction = &fraction[..fraction.len().min(18)];
            let scale = 10u128.pow(u32::try_from(fraction.len()).ok()?);
            value += fraction.parse::<u128>().ok()? * unit / scale;
        }
        total = total.checked_add(value)?;
        if total > 1 << 63 {
            return None;
        }
        rest = after;
    }
    let signed = if negative { -(total as i128) } else { total as i128 };
    i64::try_from(signed).ok()
}

/// A whole-second duration the way Go prints it in Knative's messages: `6s`, `1h`.
fn go_duration_text(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => "0s".to_string(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let s = 1_000_000_000i64;
        for (text, want) in [
            ("0", Some(0)),
            ("0s", Some(0)),
            ("60s", Some(60 * s)),
            ("1m30s", Some(90 * s)),
            ("1h", Some(3600 * s)),
            ("1.5h", Some(5400 * s)),
            ("+6s", Some(6 * s)),
            ("-1s", Some(-s)),
            ("300ms", Some(s * 3 / 10)),
            ("1.s", Some(s)),
            (".5s", Some(s / 2)),
            ("1us", Some(1_000)),
            ("1µs", Some(1_000)),
            ("2h45m0.5s", Some(9900 * s + s / 2)),
            ("", None),
            ("60", None),
            ("s", None),
            (".s", None),
            ("1d", None),
            ("1 s", None),
            ("3000000h", None),
        ] {
            assert_eq!(parse_go_duration(text), want, "{text:?}");
        }
    }

    #[test]
    fn panic_window_rounds_to_seconds_and_is_at_least_one() {
        for (stable, pct, want) in [(60, 10.0, 6), (6, 10.0, 1), (6, 1.0, 1), (45, 10.0, 5), (3600, 100.0, 3600)] {
            assert_eq!(panic_window(Duration::from_secs(stable), pct), Duration::from_secs(want), "{stable}s {pct}%");
        }
        // 4.5s rounds up, as Go's Duration.Round does.
        assert_eq!(panic_window(Duration::from_secs(45), 10.0), Duration::from_secs(5));
        assert_eq!(panic_window(Duration::from_secs(44), 10.0), Duration::from_secs(4));
    }

    #[test]
    fn aliases_are_read_when_the_documented_key_is_absent() {
        let a = BTreeMap::from([("autoscaling.knative.dev/minScale".to_string(), "3".to_string())]);
        assert_eq!(MIN_SCALE_ANNOTATION.get(&a), Some(("autoscaling.knative.dev/minScale", "3")));
        let both = BTreeMap::from([
            ("autoscaling.knative.dev/minScale".to_string(), "3".to_string()),
            ("autoscaling.knative.dev/min-scale".to_string(), "4".to_string()),
        ]);
        assert_eq!(MIN_SCALE_ANNOTATION.value(&both), Some("4"));
        assert_eq!(MIN_SCALE_ANNOTATION.short(), "min-scale");
    }
}
