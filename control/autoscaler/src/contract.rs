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
mod tests {
    use super::*;

    /// A compact expected line: (at_ms, desired, excess burst capacity, panicking).
    type Line = (u64, i64, i64, bool);

    fn run(label: &str, input: &str, want: &[Line]) {
        let got = match decide(input) {
            Ok(got) => got,
            Err(e) => panic!("{label}: {e}"),
        };
        let got: Vec<Line> = got.iter().map(|o| (o.at_ms, o.desired, o.excess_burst_capacity, o.panicking)).collect();
        assert_eq!(got, want, "{label}");
    }

    /// The spec of Knative's `newTestAutoscaler(target, tbc)` as contract JSON.
    fn knative_spec(target: f64, tbc: f64, extra: &str) -> String {
        format!(
            r#"{{"target": {target}, "total_value": {total}, "target_burst_capacity": {tbc}, "panic_threshold": 2,
                "max_scale_up_rate": 10, "max_scale_down_rate": 10, "stable_window_s": 60{extra}}}"#,
            total = target / 0.75
        )
    }

    /// Knative's `expectedEBC(target, tbc, panic, pods)`.
    fn ebc(target: f64, tbc: f64, panic: f64, pods: f64) -> i64 {
        (target / 0.75 * pods - tbc - panic).floor() as i64
    }

    const DELAY_SPEC: &str = r#"{"target": 10, "total_value": 0, "target_burst_capacity": 0, "panic_threshold": 100,
        "max_scale_up_rate": 10, "max_scale_down_rate": 10, "stable_window_s": 0, "scale_down_delay_s": 300}"#;

    #[test]
    fn knative_scale_down_delay() {
        let input = format!(
            r#"{{"spec": {DELAY_SPEC}, "initial_ready": 0, "steps": [
                {{"at_ms": 2000, "ready": 0, "stable": 40, "panic": 40}},
                {{"at_ms": 300000, "ready": 0, "stable": 0, "panic": 0}},
                {{"at_ms": 302000, "ready": 0, "stable": 0, "panic": 0}},
                {{"at_ms": 540000, "ready": 0, "stable": 40, "panic": 40}},
                {{"at_ms": 600000, "ready": 0, "stable": 30, "panic": 30}},
                {{"at_ms": 660000, "ready": 0, "stable": 0, "panic": 0}},
                {{"at_ms": 840000, "ready": 0, "stable": 0, "panic": 0}},
                {{"at_ms": 900000, "ready": 0, "stable": 0, "panic": 0}}]}}"#
        );
        run(
            "TestAutoscalerScaleDownDelay",
            &input,
            &[
                (2000, 4, 0, false),
                (300000, 4, 0, false),
                (302000, 0, 0, false),
                (540000, 4, 0, false),
                (600000, 4, 0, false),
                (660000, 4, 0, false),
                (840000, 3, 0, false),
                (900000, 0, 0, false),
            ],
        );
    }

    #[test]
    fn knative_scale_down_delay_not_reachable() {
        // Knative steps back to t=2s after the update; the contract only moves forward.
        let input = format!(
            r#"{{"spec": {DELAY_SPEC}, "initial_ready": 0, "steps": [
                {{"at_ms": 2000, "ready": 0, "stable": 40, "panic": 40}},
                {{"at_ms": 60000, "ready": 0, "stable": 0, "panic": 0}},
                {{"at_ms": 62000, "ready": 0, "stable": 0, "panic": 0, "spec": {{"reachable": false}}}}]}}"#
        );
        run(
            "TestAutoscalerScaleDownDelayNotReachable",
            &input,
            &[(2000, 4, 0, false), (60000, 4, 0, false), (62000, 0, 0, false)],
        );
    }

    #[test]
    fn knative_panic_then_unpanic_scale_down() {
        let input = format!(
            r#"{{"spec": {}, "initial_ready": 1, "steps": [
                {{"at_ms": 0, "ready": 1, "stable": 100, "panic": 100}},
                {{"at_ms": 10, "ready": 10, "stable": 100, "panic": 1000}},
                {{"at_ms": 30010, "ready": 10, "stable": 1, "panic": 1}},
                {{"at_ms": 61010, "ready": 10, "stable": 1, "panic": 1}}]}}"#,
            knative_spec(10.0, 93.0, "")
        );
        run(
            "TestAutoscalerPanicThenUnPanicScaleDown",
            &input,
            &[
                (0, 10, ebc(10.0, 93.0, 100.0, 1.0), true),
                (10, 100, ebc(10.0, 93.0, 1000.0, 10.0), true),
                (30010, 100, ebc(10.0, 93.0, 1.0, 10.0), true),
                (61010, 1, ebc(10.0, 93.0, 1.0, 10.0), false),
            ],
        );
    }

    #[test]
    fn knative_unpanic_after_slow_increase() {
        let input = format!(
            r#"{{"spec": {}, "initial_ready": 1, "steps": [
                {{"at_ms": 0, "ready": 10, "stable": 11, "panic": 25}},
                {{"at_ms": 30000, "ready": 40, "stable": 30, "panic": 41}},
                {{"at_ms": 62000, "ready": 55, "stable": 50, "panic": 56}}]}}"#,
            knative_spec(1.0, 98.0, "")
        );
        run(
            "TestAutoscalerUnpanicAfterSlowIncrease",
            &input,
            &[
                (0, 25, ebc(1.0, 98.0, 25.0, 10.0), true),
                (30000, 41, ebc(1.0, 98.0, 41.0, 40.0), true),
                (62000, 50, ebc(1.0, 98.0, 56.0, 55.0), false),
            ],
        );
    }

    #[test]
    fn knative_rate_limits_and_tbc() {
        let table: [(&str, String, &[Line]); 6] = [
            (
                "TestAutoscalerRateLimitScaleUp",
                format!(
                    r#"{{"spec": {}, "initial_ready": 1, "steps": [
                        {{"at_ms": 0, "ready": 1, "stable": 1000, "panic": 1001}},
                        {{"at_ms": 0, "ready": 10, "stable": 1000, "panic": 1001}}]}}"#,
                    knative_spec(10.0, 61.0, "")
                ),
                &[(0, 10, ebc(10.0, 61.0, 1001.0, 1.0), true), (0, 100, ebc(10.0, 61.0, 1001.0, 10.0), true)],
            ),
            (
                "TestAutoscalerRateLimitScaleDown",
                format!(
                    r#"{{"spec": {}, "initial_ready": 1, "steps": [
                        {{"at_ms": 0, "ready": 100, "stable": 1, "panic": 1}},
                        {{"at_ms": 0, "ready": 10, "stable": 1, "panic": 1}}]}}"#,
                    knative_spec(10.0, 61.0, "")
                ),
                &[(0, 10, ebc(10.0, 61.0, 1.0, 100.0), false), (0, 1, ebc(10.0, 61.0, 1.0, 10.0), false)],
            ),
            (
                "AutoscalerStableModeUnlimitedTBC",
                format!(
                    r#"{{"spec": {}, "initial_ready": 1, "steps": [
                        {{"at_ms": 0, "ready": 1, "stable": 21, "panic": 26}}]}}"#,
                    knative_spec(181.0, -1.0, "")
                ),
                &[(0, 1, -1, false)],
            ),
            (
                "Autoscaler0TBC",
                format!(
                    r#"{{"spec": {}, "initial_ready": 1, "steps": [
                        {{"at_ms": 0, "ready": 1, "stable": 50, "panic": 49}}]}}"#,
                    knative_spec(10.0, 0.0, "")
                ),
                &[(0, 5, 0, true)],
            ),
            (
                "AutoscalerStableModeDecreaseNonReachable",
                format!(
                    r#"{{"spec": {}, "initial_ready": 1, "steps": [
                        {{"at_ms": 0, "ready": 100, "stable": 1, "panic": 1}}]}}"#,
                    knative_spec(10.0, 1982.0, r#", "max_scale_down_rate": 1.1, "reachable": false"#)
                ),
                &[(0, 1, ebc(10.0, 1982.0, 1.0, 100.0), false)],
            ),
            (
                "TestAutoscalerMetricsWithRPS",
                format!(
                    r#"{{"spec": {}, "initial_ready": 1, "steps": [
                        {{"at_ms": 61000, "ready": 1, "stable": 100, "panic": 99}}]}}"#,
                    knative_spec(10.0, 100.0, r#", "metric": "rps""#)
                ),
                &[(61000, 10, ebc(10.0, 100.0, 99.0, 1.0), true)],
            ),
        ];
        for (label, input, want) in table {
            run(label, &input, want);
        }
    }

    #[test]
    fn knative_activation_scale_and_start_in_panic() {
        let activation = format!(
            r#"{{"spec": {}, "initial_ready": 1, "steps": [
                {{"at_ms": 0, "ready": 1, "stable": 0, "panic": 0}},
                {{"at_ms": 0, "ready": 1, "stable": 1, "panic": 0}}]}}"#,
            knative_spec(10.0, 75.0, r#", "activation_scale": 2"#)
        );
        let e = ebc(10.0, 75.0, 0.0, 1.0);
        run("TestAutoscalerActivationScale", &activation, &[(0, 0, e, false), (0, 2, e, false)]);

        let start_in_panic = format!(
            r#"{{"spec": {}, "initial_ready": 5, "steps": [
                {{"at_ms": 5000, "ready": 5, "stable": 20, "panic": 30}}]}}"#,
            knative_spec(1.0, 100.0, "")
        );
        run("AutoscalerPanicStableLessThanPanic", &start_in_panic, &[(5000, 30, ebc(1.0, 100.0, 30.0, 5.0), true)]);
    }

    #[test]
    fn knative_update_target() {
        let input = format!(
            r#"{{"spec": {}, "initial_ready": 1, "steps": [
                {{"at_ms": 0, "ready": 1, "stable": 100, "panic": 101}},
                {{"at_ms": 0, "ready": 10, "stable": 100, "panic": 101,
                  "spec": {{"target": 1, "total_value": 1.3333333333333333, "target_burst_capacity": 71,
                           "reachable": false}}}}]}}"#,
            knative_spec(10.0, 77.0, "")
        );
        run(
            "TestAutoscalerUpdateTarget",
            &input,
            &[(0, 10, ebc(10.0, 77.0, 101.0, 1.0), true), (0, 100, ebc(1.0, 71.0, 101.0, 10.0), true)],
        );
    }

    #[test]
    fn optional_fields_take_their_defaults() {
        let input = r#"{"spec": {"target": 70, "total_value": 100, "target_burst_capacity": 211, "panic_threshold": 2,
            "max_scale_up_rate": 1000, "max_scale_down_rate": 2, "stable_window_s": 60},
            "initial_ready": 0, "steps": [{"at_ms": 0, "ready": 0, "stable": 0, "panic": 0},
                                          {"at_ms": 2000, "ready": 0, "stable": 1, "panic": 1},
                                          {"at_ms": 4000, "ready": 0, "stable": 0, "panic": 0}]}"#;
        // No delay and reachable: back to 0 at once; activation scale 1: 1 pod for a little load.
        run("defaults", input, &[(0, 0, -211, false), (2000, 1, -212, false), (4000, 0, -211, false)]);
    }

    #[test]
    fn output_lines_follow_the_contract() {
        let outputs = [
            DecideOutput { at_ms: 0, desired: 5, excess_burst_capacity: -137, panicking: true },
            DecideOutput { at_ms: 2000, desired: 0, excess_burst_capacity: 0, panicking: false },
        ];
        assert_eq!(
            to_json_lines(&outputs),
            "{\"at_ms\":0,\"desired\":5,\"excess_burst_capacity\":-137,\"panicking\":true}\n\
             {\"at_ms\":2000,\"desired\":0,\"excess_burst_capacity\":0,\"panicking\":false}\n"
        );
        // Each line is also what serde makes of the struct.
        for (line, output) in to_json_lines(&outputs).lines().zip(outputs) {
            let parsed: Result<DecideOutput, _> = serde_json::from_str(line);
            assert_eq!(parsed.ok(), Some(output));
        }
    }

    fn error_of(input: &str) -> String {
        match decide(input) {
            Ok(out) => panic!("accepted {input}: {out:?}"),
            Err(e) => e.to_string(),
        }
    }

    const SPEC: &str = r#"{"target": 10, "total_value": 10, "target_burst_capacity": 0, "panic_threshold": 2,
        "max_scale_up_rate": 10, "max_scale_down_rate": 2, "stable_window_s": 60}"#;

    #[test]
    fn malformed_input_names_the_field() {
        let step = r#"{"at_ms": 0, "ready": 1, "stable": 1, "panic": 1}"#;
        let with_steps = |steps: &str| format!(r#"{{"spec": {SPEC}, "initial_ready": 1, "steps": [{steps}]}}"#);
        let with_spec = |spec: &str| format!(r#"{{"spec": {spec}, "initial_ready": 1, "steps": []}}"#);
        let cases = [
            ("not json", "{".to_string(), "input is not valid JSON"),
            ("not an object", "[]".to_string(), "input: expected an object, got an array"),
            ("missing steps", format!(r#"{{"spec": {SPEC}, "initial_ready": 1}}"#), "input: missing field `steps`"),
            (
                "unknown top field",
                format!(r#"{{"spec": {SPEC}, "initial_ready": 1, "steps": [], "x": 1}}"#),
                "input: unknown field `x`",
            ),
            (
                "steps not an array",
                format!(r#"{{"spec": {SPEC}, "initial_ready": 1, "steps": {{}}}}"#),
                "steps: expected an array",
            ),
            (
                "negative initial ready",
                format!(r#"{{"spec": {SPEC}, "initial_ready": -1, "steps": []}}"#),
                "initial_ready: must not be negative",
            ),
            ("missing target", with_spec(r#"{"total_value": 1}"#), "spec.target: missing field"),
            ("unknown spec field", with_spec(r#"{"target": 1, "tagret": 1}"#), "spec: unknown field `tagret`"),
            (
                "zero target",
                with_spec(&SPEC.replace(r#""target": 10"#, r#""target": 0"#)),
                "spec.target: must be greater than 0",
            ),
            (
                "string number",
                with_spec(&SPEC.replace(r#""target": 10"#, r#""target": "10""#)),
                "spec.target: expected a number, got a string",
            ),
            (
                "negative window",
                with_spec(&SPEC.replace(r#""stable_window_s": 60"#, r#""stable_window_s": -1"#)),
                "spec.stable_window_s: must not be negative",
            ),
            (
                "bad tbc",
                with_spec(&SPEC.replace(r#""target_burst_capacity": 0"#, r#""target_burst_capacity": -2"#)),
                "spec.target_burst_capacity: must be at least 0, or -1",
            ),
            (
                "bad metric",
                with_spec(&SPEC.replace(r#""target": 10"#, r#""target": 10, "metric": "cpu""#)),
                "spec.metric: expected \"concurrency\" or \"rps\"",
            ),
            (
                "bad reachable",
                with_spec(&SPEC.replace(r#""target": 10"#, r#""target": 10, "reachable": 1"#)),
                "spec.reachable: expected true or false",
            ),
            (
                "fractional activation scale",
                with_spec(&SPEC.replace(r#""target": 10"#, r#""target": 10, "activation_scale": 1.5"#)),
                "spec.activation_scale: expected a whole number",
            ),
            (
                "step missing panic",
                with_steps(r#"{"at_ms": 0, "ready": 1, "stable": 1}"#),
                "steps[0]: missing field `panic`",
            ),
            (
                "step unknown field",
                with_steps(&format!(r#"{step}, {{"at_ms": 0, "ready": 1, "stable": 1, "panic": 1, "pods": 2}}"#)),
                "steps[1]: unknown field `pods`",
            ),
            (
                "negative ready",
                with_steps(&format!(r#"{step}, {step}, {step}, {{"at_ms": 0, "ready": -3, "stable": 1, "panic": 1}}"#)),
                "steps[3].ready: must not be negative",
            ),
            (
                "negative stable",
                with_steps(r#"{"at_ms": 0, "ready": 1, "stable": -0.5, "panic": 1}"#),
                "steps[0].stable: must not be negative",
            ),
            (
                "back in time",
                with_steps(&format!(r#"{{"at_ms": 5000, "ready": 1, "stable": 1, "panic": 1}}, {step}"#)),
                "steps[1].at_ms: 0 is earlier than the previous step (5000)",
            ),
            (
                "bad step spec",
                with_steps(r#"{"at_ms": 0, "ready": 1, "stable": 1, "panic": 1, "spec": {"max_scale_down_rate": 0}}"#),
                "steps[0].spec.max_scale_down_rate: must be greater than 0",
            ),
            (
                "unknown step spec field",
                with_steps(r#"{"at_ms": 0, "ready": 1, "stable": 1, "panic": 1, "spec": {"window": 6}}"#),
                "steps[0].spec: unknown field `window`",
            ),
            (
                "huge number",
                with_steps(r#"{"at_ms": 0, "ready": 1, "stable": 1e999, "panic": 1}"#),
                "input is not valid JSON",
            ),
        ];
        for (label, input, want) in cases {
            let got = error_of(&input);
            assert!(got.starts_with(want), "{label}: got {got:?}, want it to start with {want:?}");
        }
    }
}
