//! revgate's gates: whether a candidate may take its next step, judged from
//! what the gateway measured of it during the current step.
//!
//! | measured in this step | verdict |
//! |---|---|
//! | no gate set | [`Verdict::Pass`] (Knative's rollout: time alone) |
//! | fewer requests than `rollout-min-requests`, or none | [`Verdict::Waiting`]: never advances, never fails |
//! | 5xx share above `rollout-max-error-rate` | [`Verdict::Breach`] (`5xx`) |
//! | p99 above `rollout-max-latency` | [`Verdict::Breach`] (`p99`) |
//! | a latency gate, but no latency measured yet | [`Verdict::Waiting`] |
//! | otherwise | [`Verdict::Pass`] |

use serde::{Deserialize, Serialize};

use super::annotations::{Gates, MAX_ERROR_RATE_ANNOTATION, MAX_LATENCY_ANNOTATION, MIN_REQUESTS_ANNOTATION};

/// What the gateway measured of the candidate during one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepMeasurement {
    /// Responses the candidate served.
    pub requests: u64,
    /// Of them, answered 5xx.
    pub errors_5xx: u64,
    /// The p99 latency of the step's responses, in milliseconds; `None`
    /// when nothing was measured. Time held before a cold start does not
    /// count: it is the revision's latency, not the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

impl StepMeasurement {
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors_5xx as f64 / self.requests as f64)
    }
}

/// The metric a gate judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Metric {
    /// The share of 5xx responses.
    ErrorRate,
    /// The p99 latency, in milliseconds.
    LatencyP99,
}

impl Metric {
    /// The short name shown in tables: `5xx`, `p99`.
    pub fn short(self) -> &'static str {
        match self {
            Metric::ErrorRate => "5xx",
            Metric::LatencyP99 => "p99",
        }
    }

    pub fn annotation(self) -> &'static str {
        match self {
            Metric::ErrorRate => MAX_ERROR_RATE_ANNOTATION,
            Metric::LatencyP99 => MAX_LATENCY_ANNOTATION,
        }
    }

    /// A value of this metric as users write it: `0.31`, `812ms`.
    pub fn show(self, value: f64) -> String {
        match self {
            Metric::ErrorRate => format!("{value:.2}"),
            Metric::LatencyP99 => format!("{value:.0}ms"),
        }
    }
}

/// A gate the candidate failed: which, what was measured, and the limit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Breach {
    pub metric: Metric,
    pub value: f64,
    pub threshold: f64,
}

impl Breach {
    /// `5xx 0.31 > 0.05`.
    pub fn short(&self) -> String {
        format!("{} {} > {}", self.metric.short(), self.metric.show(self.value), self.metric.show(self.threshold))
    }
}

/// A gate's judgement of one step so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    /// Not enough was measured to judge; says what is missing.
    Waiting(String),
    Breach(Breach),
}

/// Judges what was measured of the candidate in the current step.
pub fn judge(gates: &Gates, measured: &StepMeasurement) -> Verdict {
    if !gates.any() {
        return Verdict::Pass;
    }
    if measured.requests == 0 || measured.requests < gates.min_requests {
        let wanted = gates.min_requests.max(1);
        return Verdict::Waiting(format!(
            "waiting for data: {} of {wanted} requests served in this step ({MIN_REQUESTS_ANNOTATION})",
            measured.requests
        ));
    }
    if let (Some(threshold), Some(value)) = (gates.max_error_rate, measured.error_rate())
        && value > threshold
    {
        return Verdict::Breach(Breach { metric: Metric::ErrorRate, value, threshold });
    }
    if let Some(threshold) = gates.max_latency_ms {
        match measured.p99_ms {
            Some(value) if value > threshold => {
                return Verdict::Breach(Breach { metric: Metric::LatencyP99, value, threshold });
            }
            Some(_) => {}
            None => return Verdict::Waiting("waiting for data: no latency measured in this step yet".to_string()),
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_by_table() {
        let error_gate = Gates { max_error_rate: Some(0.05), ..Gates::default() };
        let latency_gate = Gates { max_latency_ms: Some(300.0), ..Gates::default() };
        let min_20 = Gates { min_requests: 20, max_error_rate: Some(0.05), ..Gates::default() };
        let m = |requests, errors_5xx, p99_ms| StepMeasurement { requests, errors_5xx, p99_ms };
        let cases: [(&str, Gates, StepMeasurement, &str); 9] = [
            ("no gate, no data: Knative steps on time", Gates::default(), m(0, 0, None), "pass"),
            ("a gate, no data: waits", error_gate, m(0, 0, None), "waiting"),
            ("below the error limit", error_gate, m(100, 5, None), "pass"),
            ("above the error limit", error_gate, m(100, 31, None), "breach 5xx 0.31 > 0.05"),
            ("too few requests: waits even when failing", min_20, m(10, 10, None), "waiting"),
            ("enough requests, failing", min_20, m(20, 10, None), "breach 5xx 0.50 > 0.05"),
            ("latency under the limit", latency_gate, m(5, 0, Some(120.0)), "pass"),
            ("latency over the limit", latency_gate, m(5, 0, Some(812.0)), "breach p99 812ms > 300ms"),
            ("latency gate, only held requests measured", latency_gate, m(5, 0, None), "waiting"),
        ];
        for (name, gates, measured, want) in cases {
            let got = match judge(&gates, &measured) {
                Verdict::Pass => "pass".to_string(),
                Verdict::Waiting(_) => "waiting".to_string(),
                Verdict::Breach(b) => format!("breach {}", b.short()),
            };
            assert_eq!(got, want, "{name}");
        }
    }
}
