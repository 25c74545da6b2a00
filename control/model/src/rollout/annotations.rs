//! The rollout's annotations, read from a Route (a Service's propagate to
//! its Route, as every Service annotation does), validated at apply time
//! and parsed once into a [`RolloutSpec`].
//!
//! | annotation | value | default |
//! |---|---|---|
//! | `serving.knative.dev/rollout-duration` | Go duration, whole seconds, ≥ 0 | `config-network` `rollout-duration` (0: immediate) |
//! | `revgate.dev/rollout-max-error-rate` | fraction 0–1 of the candidate's responses that may be 5xx in a step | none |
//! | `revgate.dev/rollout-max-latency` | Go duration > 0: the largest p99 of the candidate in a step | none |
//! | `revgate.dev/rollout-min-requests` | whole number ≥ 0: requests the candidate serves in a step before its gates can pass | 0 |

use std::collections::BTreeMap;

use crate::autoscaling::parse_go_duration;
use crate::config::Settings;
use crate::error::Problems;

/// Knative's annotation (`serving.knative.dev/rollout-duration`).
pub const ROLLOUT_DURATION_ANNOTATION: &str = "serving.knative.dev/rollout-duration";
/// The largest share of 5xx responses the candidate may answer in a step.
pub const MAX_ERROR_RATE_ANNOTATION: &str = "revgate.dev/rollout-max-error-rate";
/// The largest p99 latency the candidate may show in a step.
pub const MAX_LATENCY_ANNOTATION: &str = "revgate.dev/rollout-max-latency";
/// How many requests the candidate must serve in a step before it may pass.
pub const MIN_REQUESTS_ANNOTATION: &str = "revgate.dev/rollout-min-requests";

const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// revgate's gates on a candidate, judged per step from the gateway's
/// measurements (see [`super::gates`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gates {
    /// A fraction in 0–1.
    pub max_error_rate: Option<f64>,
    /// Milliseconds.
    pub max_latency_ms: Option<f64>,
    pub min_requests: u64,
}

impl Gates {
    /// Whether any gate is set. Without one a rollout is Knative's: it steps
    /// on time alone.
    pub fn any(&self) -> bool {
        self.max_error_rate.is_some() || self.max_latency_ms.is_some() || self.min_requests > 0
    }
}

/// How a Route rolls out a new revision of a `latestRevision` target.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RolloutSpec {
    /// 0: the new revision takes all of its target's traffic at once.
    pub duration_secs: u64,
    pub gates: Gates,
}

impl RolloutSpec {
    /// The spec of a Route with these annotations. Values were validated at
    /// apply time; one that does not parse (stored by an older version) is
    /// left at its default rather than failing the Route.
    pub fn from_annotations(annotations: &BTreeMap<String, String>, settings: &Settings) -> Self {
        let duration_secs = annotations
            .get(ROLLOUT_DURATION_ANNOTATION)
            .and_then(|v| parse_rollout_duration(v).ok())
            .unwrap_or(settings.network.rollout_duration_secs);
        let gates = Gates {
            max_error_rate: annotations.get(MAX_ERROR_RATE_ANNOTATION).and_then(|v| parse_error_rate(v).ok()),
            max_latency_ms: annotations.get(MAX_LATENCY_ANNOTATION).and_then(|v| parse_latency(v).ok()),
            min_requests: annotations
                .get(MIN_REQUESTS_ANNOTATION)
                .and_then(|v| parse_min_requests(v).ok())
                .unwrap_or(0),
        };
        Self { duration_secs, gates }
    }
}

/// Checks the rollout annotations of an object's metadata; each problem
/// names the annotation (under `path`) and its value.
pub fn validate(annotations: &BTreeMap<String, String>, path: &str) -> Problems {
    type Check = fn(&str) -> Result<(), String>;
    let checks: [(&str, Check); 4] = [
        (ROLLOUT_DURATION_ANNOTATION, |v| parse_rollout_duration(v).map(drop)),
        (MAX_ERROR_RATE_ANNOTATION, |v| parse_error_rate(v).map(drop)),
        (MAX_LATENCY_ANNOTATION, |v| parse_latency(v).map(drop)),
        (MIN_REQUESTS_ANNOTATION, |v| parse_min_requests(v).map(drop)),
    ];
    checks
        .iter()
        .filter_map(|(key, check)| {
            let value = annotations.get(*key)?;
            check(value).err().map(|message| (format!("{path}[{key}]"), message))
        })
        .collect()
}

/// Knative's rule (`metadata_validation.go`): a Go duration at second
/// precision, not negative. Knative's messages.
pub fn parse_rollout_duration(value: &str) -> Result<u64, String> {
    let nanos = parse_go_duration(value).ok_or_else(|| format!("invalid value: {value}"))?;
    if nanos % NANOS_PER_SECOND != 0 {
        return Err(format!("rollout-duration={value} is not at second precision"));
    }
    if nanos < 0 {
        return Err(format!("rollout-duration={value} must be positive"));
    }
    Ok(u64::try_from(nanos / NANOS_PER_SECOND).unwrap_or(0))
}

fn parse_error_rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "invalid value {value:?}: a fraction of the candidate's responses from 0 to 1, e.g. \"0.05\" for 5%"
        )),
    }
}

fn parse_latency(value: &str) -> Result<f64, String> {
    match parse_go_duration(value) {
        Some(nanos) if nanos > 0 => Ok(nanos as f64 / 1e6),
        _ => Err(format!("invalid value {value:?}: a positive duration such as \"300ms\" or \"1.5s\"")),
    }
}

fn parse_min_requests(value: &str) -> Result<u64, String> {
    value.parse().map_err(|_| format!("invalid value {value:?}: a whole number of requests, 0 or more"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn rollout_duration_follows_knatives_rule() {
        assert_eq!(parse_rollout_duration("380s"), Ok(380));
        assert_eq!(parse_rollout_duration("2m"), Ok(120));
        assert_eq!(parse_rollout_duration("0"), Ok(0));
        assert_eq!(parse_rollout_duration("1.5s"), Err("rollout-duration=1.5s is not at second precision".into()));
        assert_eq!(parse_rollout_duration("-2s"), Err("rollout-duration=-2s must be positive".into()));
        assert_eq!(parse_rollout_duration("soon"), Err("invalid value: soon".into()));
    }

    #[test]
    fn every_bad_annotation_is_named_with_its_value() {
        let bad = annotations(&[
            (ROLLOUT_DURATION_ANNOTATION, "1.5s"),
            (MAX_ERROR_RATE_ANNOTATION, "5%"),
            (MAX_LATENCY_ANNOTATION, "-1s"),
            (MIN_REQUESTS_ANNOTATION, "many"),
        ]);
        let problems = validate(&bad, "metadata.annotations");
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "metadata.annotations[serving.knative.dev/rollout-duration]",
                "metadata.annotations[revgate.dev/rollout-max-error-rate]",
                "metadata.annotations[revgate.dev/rollout-max-latency]",
                "metadata.annotations[revgate.dev/rollout-min-requests]",
            ]
        );
        assert!(problems[1].1.contains("\"5%\""), "{problems:?}");
    }

    #[test]
    fn annotations_override_the_config_map_default() {
        let mut settings = Settings::default();
        settings.network.rollout_duration_secs = 60;
        let spec = RolloutSpec::from_annotations(&BTreeMap::new(), &settings);
        assert_eq!(spec, RolloutSpec { duration_secs: 60, gates: Gates::default() });
        let spec = RolloutSpec::from_annotations(
            &annotations(&[
                (ROLLOUT_DURATION_ANNOTATION, "20s"),
                (MAX_ERROR_RATE_ANNOTATION, "0.05"),
                (MAX_LATENCY_ANNOTATION, "300ms"),
                (MIN_REQUESTS_ANNOTATION, "20"),
            ]),
            &settings,
        );
        assert_eq!(spec.duration_secs, 20);
        assert_eq!(spec.gates, Gates { max_error_rate: Some(0.05), max_latency_ms: Some(300.0), min_requests: 20 });
    }
}
