//! `config-autoscaler` in `knative-serving` (Knative's
//! `pkg/autoscaler/config/config.go`): parsed once, with Knative's key
//! names, defaults and rules, when the ConfigMap is applied.

use std::collections::BTreeMap;
use std::time::Duration;

use super::keys::{KPA_CLASS, TARGET_MIN, WINDOW_MAX, WINDOW_MIN};
use super::values::{parse_float, parse_go_bool, parse_go_duration, parse_int32};
use crate::error::ConfigError;

/// The ConfigMap in `knative-serving` that holds [`AutoscalerConfig`].
pub const AUTOSCALER_CONFIG_MAP: &str = "config-autoscaler";

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
