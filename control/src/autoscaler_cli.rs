//! `revgate autoscaler decide|simulate`: Knative's KPA without a control
//! plane, to check its decisions or tune its knobs on a recorded load.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use revgate_autoscaler::WindowSpec;
use revgate_autoscaler::simulate::{simulate as run_simulation, to_csv, to_svg};
use revgate_model::autoscaling::{AUTOSCALER_CONFIG_MAP, AutoscalerConfig, RevisionScaling, validate_annotations};

use crate::autoscaling::{decider_spec, scaler_spec};
use crate::cli::{DecideArgs, SimulateArgs, SimulateFormat};

/// Exit code for input the decider cannot take.
const EXIT_BAD_INPUT: u8 = 2;

/// The annotation prefix users may leave out on the command line.
const PREFIX: &str = "autoscaling.knative.dev/";

pub fn decide(args: DecideArgs) -> anyhow::Result<ExitCode> {
    let input = match &args.file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input).context("reading standard input")?;
            input
        }
    };
    match revgate_autoscaler::contract::decide(&input) {
        Ok(outputs) => {
            for output in outputs {
                println!("{}", serde_json::to_string(&output)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let source = args.file.as_ref().map_or("standard input".to_owned(), |p| p.display().to_string());
            eprintln!("error: {source}: {e}");
            Ok(ExitCode::from(EXIT_BAD_INPUT))
        }
    }
}

pub fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.trace).with_context(|| format!("reading {}", args.trace.display()))?;
    let trace = match parse_trace(&text) {
        Ok(trace) => trace,
        Err(e) => {
            eprintln!("error: {}: {e}", args.trace.display());
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let config_data = match pairs(&args.config, "") {
        Ok(data) => data,
        Err(e) => return bad(&format!("--config: {e}")),
    };
    let config = match AutoscalerConfig::parse(&config_data) {
        Ok(config) => config,
        Err(errors) => {
            for e in errors {
                eprintln!("error: --config: {AUTOSCALER_CONFIG_MAP} {}: {}", e.key, e.message);
            }
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let annotations = match pairs(&args.annotations, PREFIX) {
        Ok(annotations) => annotations,
        Err(e) => return bad(&format!("--annotations: {e}")),
    };
    let problems = validate_annotations(&annotations, &config, "annotations");
    if !problems.is_empty() {
        for (path, message) in problems {
            eprintln!("error: --{path}: {message}");
        }
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    let scaling = RevisionScaling::resolve(&annotations, args.container_concurrency, &config);
    let points = run_simulation(
        &trace,
        &decider_spec(&scaling, true),
        &window_spec(&scaling),
        &scaler_spec(&scaling, true),
        args.pod_start_ms,
    );
    match args.output {
        SimulateFormat::Csv => print!("{}", to_csv(&points)),
        SimulateFormat::Svg => print!("{}", to_svg(&points, decider_spec(&scaling, true).metric)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The metric windows of a revision, as a percentage of the stable window.
fn window_spec(scaling: &RevisionScaling) -> WindowSpec {
    let stable = scaling.stable_window.as_secs_f64();
    let panic_window_percentage = if stable > 0.0 { scaling.panic_window.as_secs_f64() / stable * 100.0 } else { 10.0 };
    WindowSpec { stable_window: scaling.stable_window, panic_window_percentage, algorithm: scaling.aggregation }
}

fn bad(message: &str) -> anyhow::Result<ExitCode> {
    eprintln!("error: {message}");
    Ok(ExitCode::from(EXIT_BAD_INPUT))
}

/// A trace: one number per line or comma-separated; `#` starts a comment.
fn parse_trace(text: &str) -> Result<Vec<f64>, String> {
    let mut values = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        for field in line.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let value: f64 = field.parse().map_err(|_| format!("line {}: {field:?} is not a number", n + 1))?;
            if !value.is_finite() || value < 0.0 {
                return Err(format!("line {}: {field:?} must be a number >= 0", n + 1));
            }
            values.push(value);
        }
    }
    if values.is_empty() {
        return Err("the trace has no values; expected one number per second".to_owned());
    }
    Ok(values)
}

/// `key=value` pairs; `prefix` is added to keys given without it.
fn pairs(items: &[String], prefix: &str) -> Result<BTreeMap<String, String>, String> {
    items
        .iter()
        .map(|item| {
            let (key, value) = item.split_once('=').ok_or_else(|| format!("{item:?} is not key=value"))?;
            let key = key.trim();
            let key = if key.contains('/') || prefix.is_empty() { key.to_owned() } else { format!("{prefix}{key}") };
            Ok((key, value.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_and_pairs_parse() {
        assert_eq!(parse_trace("1\n2, 3 # peak\n\n4").expect("valid"), [1.0, 2.0, 3.0, 4.0]);
        assert!(parse_trace("1\nx").expect_err("bad").contains("line 2"));
        assert!(parse_trace("-1").is_err());
        assert!(parse_trace("# nothing").is_err());
        let got = pairs(&["target=10".into(), "autoscaling.knative.dev/window=6s".into()], PREFIX).expect("valid");
        assert_eq!(got["autoscaling.knative.dev/target"], "10");
        assert_eq!(got["autoscaling.knative.dev/window"], "6s");
        assert!(pairs(&["target".into()], PREFIX).is_err());
    }
}
