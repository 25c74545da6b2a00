//! The autoscaling annotations of a revision template, read once.
//!
//! Each annotation is found under its documented name or an older spelling
//! ([`AnnotationKey::get`]) and parsed in the syntax Knative reads it in.
//! [`ScalingAnnotations::validate`] checks the parsed values against
//! Knative's bounds and [`RevisionScaling::from_annotations`] puts them over
//! `config-autoscaler`; neither reads the text again, so the two can never
//! disagree on what an annotation says.
//!
//! [`RevisionScaling::from_annotations`]: super::RevisionScaling::from_annotations

use std::collections::BTreeMap;

use super::keys::{
    ACTIVATION_SCALE_ANNOTATION, Aggregation, AnnotationKey, CLASS_ANNOTATION, INITIAL_SCALE_ANNOTATION,
    MAX_SCALE_ANNOTATION, METRIC_AGGREGATION_ALGORITHM_ANNOTATION, METRIC_ANNOTATION, MIN_SCALE_ANNOTATION,
    PANIC_THRESHOLD_PERCENTAGE_ANNOTATION, PANIC_WINDOW_PERCENTAGE_ANNOTATION, SCALE_DOWN_DELAY_ANNOTATION,
    SCALE_TO_ZERO_POD_RETENTION_PERIOD_ANNOTATION, TARGET_ANNOTATION, TARGET_BURST_CAPACITY_ANNOTATION,
    TARGET_UTILIZATION_PERCENTAGE_ANNOTATION, WINDOW_ANNOTATION,
};
use super::values::{parse_float, parse_go_duration, parse_int32};

/// One annotation as written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Written<'a, T> {
    /// The key it was found under: the documented name or an older spelling.
    /// Problems name it, so that the user finds what they wrote.
    pub key: &'a str,
    /// The text as written; messages quote it.
    pub raw: &'a str,
    /// What the text reads as (`None` inside where it does not parse).
    pub value: T,
}

/// A number, count or duration annotation: its value if it parses.
pub type Parsed<'a, T> = Option<Written<'a, Option<T>>>;

/// The autoscaling annotations of one revision template, each parsed once.
/// A field is `None` when the annotation is absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScalingAnnotations<'a> {
    /// `class`, as written.
    pub class: Option<Written<'a, &'a str>>,
    /// `metric`, as written (any name: other classes have other metrics).
    pub metric: Option<Written<'a, &'a str>>,
    /// `metric-aggregation-algorithm`; `""` reads as linear, as in Knative.
    pub aggregation: Parsed<'a, Aggregation>,
    pub target: Parsed<'a, f64>,
    pub target_utilization_percentage: Parsed<'a, f64>,
    pub target_burst_capacity: Parsed<'a, f64>,
    pub panic_window_percentage: Parsed<'a, f64>,
    pub panic_threshold_percentage: Parsed<'a, f64>,
    /// Knative's `int32` fields.
    pub min_scale: Parsed<'a, i32>,
    pub max_scale: Parsed<'a, i32>,
    pub activation_scale: Parsed<'a, i32>,
    /// Read wider than the other counts: Knative's webhook parses it as an
    /// `int` and only its sign and zero matter there.
    pub initial_scale: Parsed<'a, i64>,
    /// Durations in signed nanoseconds: the bounds need the sign.
    pub window: Parsed<'a, i64>,
    pub scale_down_delay: Parsed<'a, i64>,
    pub scale_to_zero_pod_retention_period: Parsed<'a, i64>,
}

impl<'a> ScalingAnnotations<'a> {
    /// Reads every autoscaling annotation of `annotations`. Numbers,
    /// counts and durations are trimmed first; names are taken as written.
    pub fn parse(annotations: &'a BTreeMap<String, String>) -> Self {
        let text =
            |annotation: AnnotationKey| annotation.get(annotations).map(|(key, raw)| Written { key, raw, value: raw });
        let float = |annotation| parsed_with(annotations, annotation, parse_float);
        let int32 = |annotation| parsed_with(annotations, annotation, parse_int32);
        let duration = |annotation| parsed_with(annotations, annotation, parse_go_duration);
        Self {
            class: text(CLASS_ANNOTATION),
            metric: text(METRIC_ANNOTATION),
            aggregation: METRIC_AGGREGATION_ALGORITHM_ANNOTATION.get(annotations).map(|(key, raw)| Written {
                key,
                raw,
                value: match raw {
                    "" | "linear" => Some(Aggregation::Linear),
                    "weighted-exponential" | "weightedExponential" => Some(Aggregation::WeightedExponential),
                    _ => None,
                },
            }),
            target: float(TARGET_ANNOTATION),
            target_utilization_percentage: float(TARGET_UTILIZATION_PERCENTAGE_ANNOTATION),
            target_burst_capacity: float(TARGET_BURST_CAPACITY_ANNOTATION),
            panic_window_percentage: float(PANIC_WINDOW_PERCENTAGE_ANNOTATION),
            panic_threshold_percentage: float(PANIC_THRESHOLD_PERCENTAGE_ANNOTATION),
            min_scale: int32(MIN_SCALE_ANNOTATION),
            max_scale: int32(MAX_SCALE_ANNOTATION),
            activation_scale: int32(ACTIVATION_SCALE_ANNOTATION),
            initial_scale: parsed_with(annotations, INITIAL_SCALE_ANNOTATION, |t| t.parse().ok()),
            window: duration(WINDOW_ANNOTATION),
            scale_down_delay: duration(SCALE_DOWN_DELAY_ANNOTATION),
            scale_to_zero_pod_retention_period: duration(SCALE_TO_ZERO_POD_RETENTION_PERIOD_ANNOTATION),
        }
    }
}

fn parsed_with<'a, T>(
    annotations: &'a BTreeMap<String, String>,
    annotation: AnnotationKey,
    parse: impl Fn(&str) -> Option<T>,
) -> Parsed<'a, T> {
    annotation.get(annotations).map(|(key, raw)| Written { key, raw, value: parse(raw.trim()) })
}

/// The value of an annotation that is present and parses.
pub(crate) fn value<T: Copy>(annotation: Parsed<'_, T>) -> Option<T> {
    annotation.and_then(|w| w.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_parse_keeps_the_key_as_written_and_the_value() {
        let annotations = BTreeMap::from([
            ("autoscaling.knative.dev/minScale".to_string(), " 3 ".to_string()),
            ("autoscaling.knative.dev/window".to_string(), "1m".to_string()),
            ("autoscaling.knative.dev/target".to_string(), "lots".to_string()),
            ("autoscaling.knative.dev/metric-aggregation-algorithm".to_string(), "".to_string()),
        ]);
        let parsed = ScalingAnnotations::parse(&annotations);
        assert_eq!(
            parsed.min_scale,
            Some(Written { key: "autoscaling.knative.dev/minScale", raw: " 3 ", value: Some(3) })
        );
        assert_eq!(value(parsed.window), Some(60_000_000_000));
        assert_eq!(parsed.target.map(|w| (w.raw, w.value)), Some(("lots", None)));
        assert_eq!(value(parsed.aggregation), Some(Aggregation::Linear));
        assert_eq!(parsed.max_scale, None);
    }
}
