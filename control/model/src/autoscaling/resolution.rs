//! What one revision's annotations over `config-autoscaler` resolve to:
//! the settings Knative's KPA derives (its `DeciderSpec`, metric windows and
//! scaler settings). Resolving never fails: a revision only exists if its
//! annotations passed validation, and anything that still does not parse
//! (a ConfigMap changed since) falls back to the default, as Knative's
//! autoscaler does.

use std::collections::BTreeMap;
use std::time::Duration;

use super::annotations::{ScalingAnnotations, value};
use super::config::AutoscalerConfig;
use super::keys::{Aggregation, BUCKET_SIZE, HPA_CLASS, KPA_CLASS, Metric, TARGET_MIN};

/// Target utilization for the `rps` metric when no annotation sets one.
///
/// Knative reads `container-concurrency-target-percentage` for the
/// concurrency metric only; for rps it uses its built-in 70% regardless of
/// the ConfigMap (`TargetUtilization` in its config is never parsed). revgate
/// reproduces that, so an rps revision scales the same under both.
pub const RPS_TARGET_UTILIZATION_PERCENTAGE: f64 = 70.0;

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
        Self::from_annotations(&ScalingAnnotations::parse(annotations), container_concurrency, config)
    }

    /// [`RevisionScaling::resolve`] from annotations already parsed.
    pub fn from_annotations(
        annotations: &ScalingAnnotations<'_>,
        container_concurrency: u32,
        config: &AutoscalerConfig,
    ) -> Self {
        let a = annotations;
        let class = a.class.map_or(config.pod_autoscaler_class.as_str(), |w| w.value).to_string();
        // Knative's default metric depends on the class: concurrency for the KPA, cpu for the HPA.
        let metric_name = a.metric.map(|w| w.value).unwrap_or(match class.as_str() {
            KPA_CLASS => "concurrency",
            HPA_CLASS => "cpu",
            _ => "",
        });
        // Only rps has its own targets; every other metric resolves like concurrency.
        let metric = if metric_name == "rps" { Metric::Rps } else { Metric::Concurrency };
        let count = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok());
        let duration = |nanos: Option<i64>, default: Duration| {
            nanos.and_then(|nanos| u64::try_from(nanos).ok()).map_or(default, Duration::from_nanos)
        };

        let cc = f64::from(container_concurrency);
        let (mut total_value, default_utilization) = match metric {
            Metric::Rps => (config.requests_per_second_target_default, RPS_TARGET_UTILIZATION_PERCENTAGE),
            Metric::Concurrency if container_concurrency > 0 => (cc, config.container_concurrency_target_percentage),
            Metric::Concurrency => {
                (config.container_concurrency_target_default, config.container_concurrency_target_percentage)
            }
        };
        if let Some(annotated) = value(a.target) {
            // Never aim above what a pod accepts.
            total_value =
                if metric_name == "concurrency" && container_concurrency > 0 { annotated.min(cc) } else { annotated };
        }
        let utilization = value(a.target_utilization_percentage).unwrap_or(default_utilization);
        let target = (total_value * utilization / 100.0).max(TARGET_MIN);

        let stable_window = duration(value(a.window), config.stable_window);
        let panic_window_percentage = value(a.panic_window_percentage).unwrap_or(config.panic_window_percentage);
        let panic_threshold_percentage =
            value(a.panic_threshold_percentage).unwrap_or(config.panic_threshold_percentage);

        // A revision asking for 0 pods at start when the cluster no longer allows it starts at the default.
        let initial_scale = match count(value(a.initial_scale).and_then(|n| i32::try_from(n).ok())) {
            Some(0) if !config.allow_zero_initial_scale => config.initial_scale,
            Some(n) => n,
            None => config.initial_scale,
        };

        Self {
            class,
            metric,
            target,
            total_value,
            target_burst_capacity: value(a.target_burst_capacity).unwrap_or(config.target_burst_capacity),
            panic_threshold: panic_threshold_percentage / 100.0,
            stable_window,
            panic_window: panic_window(stable_window, panic_window_percentage),
            scale_down_delay: duration(value(a.scale_down_delay), config.scale_down_delay),
            min_scale: count(value(a.min_scale)).unwrap_or(config.min_scale),
            max_scale: count(value(a.max_scale)).unwrap_or(config.max_scale),
            initial_scale,
            allow_zero_initial_scale: config.allow_zero_initial_scale,
            activation_scale: count(value(a.activation_scale)).unwrap_or(1).max(1),
            max_scale_up_rate: config.max_scale_up_rate,
            max_scale_down_rate: config.max_scale_down_rate,
            enable_scale_to_zero: config.enable_scale_to_zero,
            scale_to_zero_grace_period: config.scale_to_zero_grace_period,
            scale_to_zero_pod_retention_period: duration(
                value(a.scale_to_zero_pod_retention_period),
                config.scale_to_zero_pod_retention_period,
            ),
            activator_capacity: config.activator_capacity,
            // Anything unknown averages linearly, as in Knative.
            aggregation: value(a.aggregation).unwrap_or(Aggregation::Linear),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_window_rounds_to_seconds_and_is_at_least_one() {
        for (stable, pct, want) in [(60, 10.0, 6), (6, 10.0, 1), (6, 1.0, 1), (45, 10.0, 5), (3600, 100.0, 3600)] {
            assert_eq!(panic_window(Duration::from_secs(stable), pct), Duration::from_secs(want), "{stable}s {pct}%");
        }
        // 4.5s rounds up, as Go's Duration.Round does.
        assert_eq!(panic_window(Duration::from_secs(45), 10.0), Duration::from_secs(5));
        assert_eq!(panic_window(Duration::from_secs(44), 10.0), Duration::from_secs(4));
    }
}
