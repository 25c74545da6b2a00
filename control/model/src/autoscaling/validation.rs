//! Checks of the autoscaling annotations, as Knative's webhook makes them
//! (its `annotation_validation.go`): each problem names the annotation as
//! written, with the bound or the values allowed.

use std::collections::BTreeMap;
use std::time::Duration;

use super::annotations::{Parsed, ScalingAnnotations, Written};
use super::config::AutoscalerConfig;
use super::keys::{
    ANNOTATION_GROUP, AnnotationKey, HPA_CLASS, KPA_CLASS, MAX_SCALE_ANNOTATION, MIN_SCALE_ANNOTATION,
    SCALE_DOWN_DELAY_ANNOTATION, SCALE_TO_ZERO_POD_RETENTION_PERIOD_ANNOTATION, TARGET_MIN, WINDOW_ANNOTATION,
    WINDOW_MAX, WINDOW_MIN,
};
use super::values::go_duration_text;
use crate::error::Problems;

/// Checks the autoscaling annotations of a revision template against
/// `config` (for `max-scale-limit`, `allow-zero-initial-scale` and the
/// default class), as Knative's webhook does. `path` is where the
/// annotations sit, e.g. `spec.template.metadata.annotations`; each problem's
/// path names the annotation as written, `{path}[{key}]`.
pub fn validate_annotations(annotations: &BTreeMap<String, String>, config: &AutoscalerConfig, path: &str) -> Problems {
    ScalingAnnotations::parse(annotations).validate(config, path)
}

impl<'a> ScalingAnnotations<'a> {
    /// [`validate_annotations`] on annotations already parsed.
    pub fn validate(&self, config: &AutoscalerConfig, path: &str) -> Problems {
        let mut problems = Problems::new();
        let mut push = |key: &str, message: String| problems.push((format!("{path}[{key}]"), message));

        // Class: Knative's own domain holds only its two classes; others belong to their own autoscalers.
        if let Some(Written { key, value: class, .. }) = self.class
            && class.ends_with(".knative.dev")
            && class != KPA_CLASS
            && class != HPA_CLASS
        {
            push(key, format!("{class:?} is not an autoscaler class: use {KPA_CLASS:?} or {HPA_CLASS:?}"));
        }
        let class = self.class.map_or(config.pod_autoscaler_class.as_str(), |w| w.value);

        if let Some(Written { key, value: metric, .. }) = self.metric {
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
        if self.class.is_some_and(|w| w.value == KPA_CLASS)
            && let Some(Written { key, raw: algorithm, value: None }) = self.aggregation
        {
            push(
                key,
                format!("{algorithm:?} is not an aggregation algorithm: use \"linear\" or \"weighted-exponential\""),
            );
        }

        // Bounds. A bound that does not parse counts as 0 below, so one mistake is reported once.
        let mut bound = |annotation: Parsed<'a, i32>, name: AnnotationKey| {
            let short = name.short();
            match annotation {
                None => (None, 0),
                Some(Written { key, value: Some(n), .. }) if n >= 0 => (Some(key), i64::from(n)),
                Some(Written { key, raw, value: Some(_) }) => {
                    push(key, format!("expected 0 <= {short} <= {}, got {raw}", i32::MAX));
                    (None, 0)
                }
                Some(Written { key, raw, value: None }) => {
                    push(key, format!("expected a whole number 0 <= {short} <= {}, got {raw:?}", i32::MAX));
                    (None, 0)
                }
            }
        };
        let (min_key, min) = bound(self.min_scale, MIN_SCALE_ANNOTATION);
        let (max_key, max) = bound(self.max_scale, MAX_SCALE_ANNOTATION);
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
                push(
                    key,
                    format!("expected 1 <= max-scale <= {limit} (max-scale-limit in config-autoscaler), got {max}"),
                );
            }
        }
        if let Some(Written { key, raw, value }) = self.activation_scale {
            match value.map(i64::from) {
                None => push(key, format!("expected a whole number >= 2, got {raw:?}")),
                Some(n) if n < 2 => push(
                    key,
                    format!("expected activation-scale >= 2 (1 is what scaling from zero gives anyway), got {n}"),
                ),
                Some(n) if n < min => push(key, format!("expected min-scale ({min}) <= activation-scale, got {n}")),
                Some(n) if max != 0 && n > max => {
                    push(key, format!("expected activation-scale <= max-scale ({max}), got {n}"))
                }
                Some(_) => {}
            }
        }
        if let Some(Written { key, raw, value }) = self.initial_scale {
            match value {
                None => push(key, format!("expected a whole number >= 0, got {raw:?}")),
                Some(n) if n < 0 => push(key, format!("must not be negative, got {n}")),
                Some(0) if !config.allow_zero_initial_scale => push(
                    key,
                    "0 is not allowed unless config-autoscaler sets allow-zero-initial-scale: \"true\"".to_string(),
                ),
                Some(_) => {}
            }
        }

        // Numbers.
        let mut number = |annotation: Parsed<'_, f64>, valid: &dyn Fn(f64) -> bool, expected: &str| {
            if let Some(Written { key, raw, value }) = annotation {
                match value {
                    None => push(key, format!("expected a number, got {raw:?}")),
                    Some(v) if !valid(v) => push(key, format!("expected {expected}, got {raw}")),
                    Some(_) => {}
                }
            }
        };
        number(self.target, &|v| v >= TARGET_MIN, "target >= 0.01");
        number(
            self.target_utilization_percentage,
            &|v| (1.0..=100.0).contains(&v),
            "1 <= target-utilization-percentage <= 100",
        );
        number(
            self.target_burst_capacity,
            &|v| v >= 0.0 || v == -1.0,
            "-1 (the activator stays in the path) or a number >= 0",
        );
        number(self.panic_window_percentage, &|v| (1.0..=100.0).contains(&v), "1 <= panic-window-percentage <= 100");
        number(
            self.panic_threshold_percentage,
            &|v| (110.0..=1000.0).contains(&v),
            "110 <= panic-threshold-percentage <= 1000",
        );

        // Durations.
        let mut duration = |annotation: Parsed<'_, i64>, name: AnnotationKey, min: Duration, whole_seconds: bool| {
            let Some(Written { key, raw, value }) = annotation else {
                return;
            };
            let short = name.short();
            let (lo, hi) = (go_duration_text(min), go_duration_text(WINDOW_MAX));
            match value {
                None => push(key, format!("expected a duration such as \"60s\" or \"1m30s\", got {raw:?}")),
                Some(nanos)
                    if !(min.as_nanos() as i128..=WINDOW_MAX.as_nanos() as i128).contains(&i128::from(nanos)) =>
                {
                    push(key, format!("expected {lo} <= {short} <= {hi}, got {raw:?}"))
                }
                Some(nanos) if whole_seconds && nanos % 1_000_000_000 != 0 => {
                    push(key, format!("must be whole seconds, got {raw:?}"))
                }
                Some(_) => {}
            }
        };
        duration(self.window, WINDOW_ANNOTATION, WINDOW_MIN, true);
        duration(self.scale_down_delay, SCALE_DOWN_DELAY_ANNOTATION, Duration::ZERO, true);
        duration(
            self.scale_to_zero_pod_retention_period,
            SCALE_TO_ZERO_POD_RETENTION_PERIOD_ANNOTATION,
            Duration::ZERO,
            false,
        );

        problems
    }
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
