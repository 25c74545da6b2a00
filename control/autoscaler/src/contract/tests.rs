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
