//! The `decide` contract: a scripted run of the [`Decider`] from JSON, for
//! acceptance tests that compare revgate's decisions with Knative's.
//!
//! Input (one JSON document):
//!
//! ```json
//! {"spec": {"metric": "concurrency", "target": 10, "total_value": 13.3, "target_burst_capacity": 100,
//!           "panic_threshold": 2.0, "max_scale_up_rate": 10, "max_scale_down_rate": 10,
//!           "stable_window_s": 60, "scale_down_delay_s": 0, "activation_scale": 1, "reachable": true},
//!  "initial_ready": 1,
//!  "steps": [{"at_ms": 0, "ready": 1, "stable": 50, "panic": 50},
//!            {"at_ms": 2000, "ready": 5, "stable": 50, "panic": 50, "spec": {"target": 5}}]}
//! ```
//!
//! - `target` and `total_value` are per pod (Knative's `TargetValue` and
//!   `TotalValue`); `panic_threshold` is a ratio (2.0 = 200%).
//! - `metric` (default `concurrency`), `scale_down_delay_s` (0),
//!   `activation_scale` (1) and `reachable` (true) are optional.
//! - The decider is created at time 0 with `initial_ready` ready pods.
//! - Each step ticks it at `at_ms` with `ready` pods and the revision-total
//!   `stable` and `panic` averages. A step's `spec` replaces the fields it names
//!   from that step on.
//!
//! Output: one [`DecideOutput`] per step, written by [`to_json_lines`] as
//! `{"at_ms":…,"desired":…,"excess_burst_capacity":…,"panicking":…}` lines.
//!
//! Malformed input (bad JSON, a missing or unknown field, a negative or
//! non-finite number, a step earlier than the one before) is a
//! [`ContractError`] whose message starts with the path of the offending value,
//! such as `steps[3].at_ms`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::decider::{Decider, DeciderSpec, Metric};

/// Why a `decide` input was rejected.
#[derive(Debug, Error)]
pub enum ContractError {
    /// The input is not JSON at all.
    #[error("input is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A value is missing, unknown, of the wrong type or out of range.
    #[error("{path}: {problem}")]
    Invalid {
        /// Where the value is, e.g. `steps[3].at_ms` or `spec`.
        path: String,
        /// What is wrong with it, and what is expected.
        problem: String,
    },
}

fn invalid(path: impl Into<String>, problem: impl Into<String>) -> ContractError {
    ContractError::Invalid { path: path.into(), problem: problem.into() }
}

/// The decider's answer at one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecideOutput {
    /// The step's time.
    pub at_ms: u64,
    /// Pods recommended.
    pub desired: i64,
    /// Excess burst capacity (negative: the gateway should hold requests).
    pub excess_burst_capacity: i64,
    /// Whether the decider is in panic mode.
    pub panicking: bool,
}

/// Runs a `decide` input and returns one output per step.
pub fn decide(input: &str) -> Result<Vec<DecideOutput>, ContractError> {
    let script = parse(input)?;
    let mut decider = Decider::new(script.spec, script.initial_ready, 0);
    let outputs = script
        .steps
        .into_iter()
        .map(|step| {
            if let Some(spec) = step.new_spec {
                decider.set_spec(spec);
            }
            let r = decider.scale(step.at_ms, step.ready, step.stable, step.panic);
            DecideOutput {
                at_ms: step.at_ms,
                desired: i64::from(r.desired),
                excess_burst_capacity: i64::from(r.excess_burst_capacity),
                panicking: r.panicking,
            }
        })
        .collect();
    Ok(outputs)
}

/// The outputs as JSON lines, each ending in a newline, fields in contract
/// order.
pub fn to_json_lines(outputs: &[DecideOutput]) -> String {
    outputs
        .iter()
        .map(|o| {
            format!(
                "{{\"at_ms\":{},\"desired\":{},\"excess_burst_capacity\":{},\"panicking\":{}}}\n",
                o.at_ms, o.desired, o.excess_burst_capacity, o.panicking
            )
        })
        .collect()
}

// ----- parsing ------------------------------------------------------------
//
// The documents are first checked for their shape by serde (which rejects
// unknown and missing fields) with every leaf kept as a raw JSON value; each
// leaf is then converted on its own, so an error can name its exact path.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    spec: Value,
    initial_ready: Value,
    steps: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    at_ms: Value,
    ready: Value,
    stable: Value,
    panic: Value,
    #[serde(default)]
    spec: Option<Value>,
}

/// Every field of a spec, each optional so the same shape serves a step's
/// partial spec; the base spec checks its required fields itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    metric: Option<Value>,
    target: Option<Value>,
    total_value: Option<Value>,
    target_burst_capacity: Option<Value>,
    panic_threshold: Option<Value>,
    max_scale_up_rate: Option<Value>,
    max_scale_down_rate: Option<Value>,
    stable_window_s: Option<Value>,
    scale_down_delay_s: Option<Value>,
    activation_scale: Option<Value>,
    reachable: Option<Value>,
}

struct Script {
    spec: DeciderSpec,
    initial_ready: u32,
    steps: Vec<Step>,
}

struct Step {
    at_ms: u64,
    ready: u32,
    stable: f64,
    panic: f64,
    new_spec: Option<DeciderSpec>,
}

fn shape<T: for<'de> Deserialize<'de>>(value: Value, path: &str) -> Result<T, ContractError> {
    if !value.is_object() {
        return Err(invalid(path, format!("expected an object, got {}", kind(&value))));
    }
    serde_json::from_value(value).map_err(|e| invalid(path, e.to_string()))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn number(value: &Value, path: &str) -> Result<f64, ContractError> {
    match value.as_f64() {
        Some(n) if n.is_finite() => Ok(n),
        _ => Err(invalid(path, format!("expected a number, got {}", kind(value)))),
    }
}

fn non_negative(value: &Value, path: &str) -> Result<f64, ContractError> {
    let n = number(value, path)?;
    if n < 0.0 {
        return Err(invalid(path, format!("must not be negative, got {n}")));
    }
    Ok(n)
}

fn positive(value: &Value, path: &str) -> Result<f64, ContractError> {
    let n = number(value, path)?;
    if n <= 0.0 {
        return Err(invalid(path, format!("must be greater than 0, got {n}")));
    }
    Ok(n)
}

fn seconds(value: &Value, path: &str) -> Result<Duration, ContractError> {
    let n = non_negative(value, path)?;
    Duration::try_from_secs_f64(n).map_err(|_| invalid(path, format!("{n} seconds is too long")))
}

fn integer(value: &Value, path: &str) -> Result<u64, ContractError> {
    value.as_u64().ok_or_else(|| match value.as_f64() {
        Some(n) if n < 0.0 => invalid(path, format!("must not be negative, got {n}")),
        _ => invalid(path, format!("expected a whole number, got {value}")),
    })
}

fn count(value: &Value, path: &str) -> Result<u32, ContractError> {
    let n = integer(value, path)?;
    u32::try_from(n).map_err(|_| invalid(path, format!("{n} is too large (at most {})", u32::MAX)))
}

fn boolean(value: &Value, path: &str) -> Result<bool, ContractError> {
    value.as_bool().ok_or_else(|| invalid(path, format!("expected true or false, got {}", kind(value))))
}

fn metric(value: &Value, path: &str) -> Result<Metric, ContractError> {
    match value.as_str() {
        Some("concurrency") => Ok(Metric::Concurrency),
        Some("rps") => Ok(Metric::Rps),
        _ => Err(invalid(path, format!("expected \"concurrency\" or \"rps\", got {value}"))),
    }
}

fn burst_capacity(value: &Value, path: &str) -> Result<f64, ContractError> {
    let n = number(value, path)?;
    if n < 0.0 && n != -1.0 {
        return Err(invalid(path, format!("must be at least 0, or -1 for unlimited, got {n}")));
    }
    Ok(n)
}

/// Applies the fields present in `raw` onto `spec`. With `required`, the
/// fields without a default must all be present.
fn apply_spec(raw: RawSpec, spec: &mut DeciderSpec, path: &str, required: bool) -> Result<(), ContractError> {
    let field = |name: &str| format!("{path}.{name}");
    let need = |value: Option<Value>, name: &str| -> Result<Option<Value>, ContractError> {
        match value {
            None if required => Err(invalid(field(name), "missing field")),
            v => Ok(v),
        }
    };
    if let Some(v) = raw.metric {
        spec.metric = metric(&v, &field("metric"))?;
    }
    if let Some(v) = need(raw.target, "target")? {
        spec.target_value = positive(&v, &field("target"))?;
    }
    if let Some(v) = need(raw.total_value, "total_value")? {
        spec.total_value = non_negative(&v, &field("total_value"))?;
    }
    if let Some(v) = need(raw.target_burst_capacity, "target_burst_capacity")? {
        spec.target_burst_capacity = burst_capacity(&v, &field("target_burst_capacity"))?;
    }
    if let Some(v) = need(raw.panic_threshold, "panic_threshold")? {
        spec.panic_threshold = non_negative(&v, &field("panic_threshold"))?;
    }
    if let Some(v) = need(raw.max_scale_up_rate, "max_scale_up_rate")? {
        spec.max_scale_up_rate = non_negative(&v, &field("max_scale_up_rate"))?;
    }
    if let Some(v) = need(raw.max_scale_down_rate, "max_scale_down_rate")? {
        spec.max_scale_down_rate = positive(&v, &field("max_scale_down_rate"))?;
    }
    if let Some(v) = need(raw.stable_window_s, "stable_window_s")? {
        spec.stable_window = seconds(&v, &field("stable_window_s"))?;
    }
    if let Some(v) = raw.scale_down_delay_s {
        spec.scale_down_delay = seconds(&v, &field("scale_down_delay_s"))?;
    }
    if let Some(v) = raw.activation_scale {
        spec.activation_scale = count(&v, &field("activation_scale"))?;
    }
    if let Some(v) = raw.reachable {
        spec.reachable = boolean(&v, &field("reachable"))?;
    }
    Ok(())
}

fn parse(input: &str) -> Result<Script, ContractError> {
    let document: Value = serde_json::from_str(input)?;
    let raw: RawInput = shape(document, "input")?;

    // The contract's defaults for the optional fields; the rest is required.
    let mut spec = DeciderSpec {
        metric: Metric::Concurrency,
        scale_down_delay: Duration::ZERO,
        activation_scale: 1,
        reachable: true,
        ..DeciderSpec::default()
    };
    apply_spec(shape(raw.spec, "spec")?, &mut spec, "spec", true)?;
    let initial_ready = count(&raw.initial_ready, "initial_ready")?;
    // Steps change a running copy; the decider starts from the base spec.
    let base = spec.clone();

    let Value::Array(raw_steps) = raw.steps else {
        return Err(invalid("steps", format!("expected an array, got {}", kind(&raw.steps))));
    };
    let mut steps = Vec::with_capacity(raw_steps.len());
    let mut previous_ms = 0;
    for (i, raw_step) in raw_steps.into_iter().enumerate() {
        let path = format!("steps[{i}]");
        let field = |name: &str| format!("{path}.{name}");
        let raw: RawStep = shape(raw_step, &path)?;
        let at_ms = integer(&raw.at_ms, &field("at_ms"))?;
        if at_ms < previous_ms {
            return Err(invalid(
                field("at_ms"),
                format!("{at_ms} is earlier than the previous step ({previous_ms}); time only moves forward"),
            ));
        }
        previous_ms = at_ms;
        let new_spec = match raw.spec {
            None => None,
            Some(value) => {
                apply_spec(shape(value, &field("spec"))?, &mut spec, &field("spec"), false)?;
                Some(spec.clone())
            }
        };
        steps.push(Step {
            at_ms,
            ready: count(&raw.ready, &field("ready"))?,
            stable: non_negative(&raw.stable, &field("stable"))?,
            panic: non_negative(&raw.panic, &field("panic"))?,
            new_spec,
        });
    }
    Ok(Script { spec: base, initial_ready, steps })
}

#[cfg(test)]
mod tests;
