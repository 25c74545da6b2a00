//! `revgate rollout status|promote|abort|retry ROUTE [-n NS]`: the verbs
//! operators know from `kubectl argo rollouts`, over the admin API's
//! `/v1/rollouts`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use revgate_model::rollout::{ConfigurationRollout, Phase, StepMeasurement};

use crate::admin::client::{Client, rejected};
use crate::cli::{OutputFormat, RolloutAction, RolloutArgs};
use crate::rollout::RolloutView;

/// Runs one `revgate rollout` command.
pub async fn run(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client);
    let request = match args.action {
        RolloutAction::Status => client
            .request(reqwest::Method::GET, "/v1/rollouts")
            .query(&[("namespace", args.namespace.as_str()), ("name", args.route.as_str())]),
        action => {
            let verb = match action {
                RolloutAction::Promote => "promote",
                RolloutAction::Abort => "abort",
                _ => "retry",
            };
            client.request(reqwest::Method::POST, &format!("/v1/rollouts/{}/{}/{verb}", args.namespace, args.route))
        }
    };
    let (status, body) = client.send(request).await?;
    if !status.is_success() {
        return rejected(status, &body);
    }
    let view: RolloutView = if args.action == RolloutAction::Status {
        let views: Vec<RolloutView> = serde_json::from_slice(&body).context("decoding the control plane's answer")?;
        match views.into_iter().next() {
            Some(view) => view,
            None => {
                eprintln!(
                    "error: route {:?} has no rollout in namespace {} (no such Route, or it has no \
                     serving.knative.dev/rollout-duration: a new revision then takes its traffic at once)",
                    args.route, args.namespace
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    } else {
        serde_json::from_slice(&body).context("decoding the control plane's answer")?
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&view)?),
        OutputFormat::Yaml => print!("{}", serde_yaml_ng::to_string(&view)?),
        OutputFormat::Table => print!("{}", describe(&view)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The rollout as `revgate rollout status` prints it.
pub fn describe(view: &RolloutView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Route:     {}/{}", view.namespace, view.route);
    let status = match &view.condition {
        Some(c) => {
            format!("{} {} — {}", c.status, c.reason.as_deref().unwrap_or(""), c.message.as_deref().unwrap_or(""))
        }
        None => "no rollout yet (a new revision rolls out over serving.knative.dev/rollout-duration)".to_string(),
    };
    let _ = writeln!(out, "Rollout:   {status}");
    for c in &view.rollout.configurations {
        describe_configuration(&mut out, c);
    }
    out
}

fn describe_configuration(out: &mut String, c: &ConfigurationRollout) {
    let tag = c.tag.as_ref().map(|t| format!(", tag {t}")).unwrap_or_default();
    let _ = writeln!(out, "\nConfiguration {} ({}% of the route{tag})", c.configuration, c.percent);
    let last = c.revisions.len().saturating_sub(1);
    for (i, r) in c.revisions.iter().enumerate() {
        let role = if c.in_progress() && i == last { "  candidate" } else { "" };
        let _ = writeln!(out, "  {:<32} {:>3}%{role}", r.revision, r.percent);
    }
    if let Phase::Aborted { revision, .. } = &c.phase {
        let _ = writeln!(out, "  {revision:<32}   0%  aborted");
    }
    if c.in_progress() {
        let step = match c.total_steps() {
            Some(total) => format!("step {} of {total}, {}% per step", c.current_step(), c.step.step_size),
            None => format!("step {}, waiting for the gateway to take it", c.current_step()),
        };
        let _ = writeln!(out, "  {step}; this step so far: {}", figures(&c.current));
    }
    if !c.history.is_empty() {
        let _ = writeln!(
            out,
            "  {:<5} {:<32} {:>6} {:>9} {:>9} {:>9}",
            "STEP", "CANDIDATE", "SHARE", "REQUESTS", "5XX RATE", "P99"
        );
        for (i, h) in c.history.iter().enumerate() {
            let m = &h.measured;
            let _ = writeln!(
                out,
                "  {:<5} {:<32} {:>5}% {:>9} {:>9} {:>9}",
                i + 1,
                h.candidate,
                h.percent,
                m.requests,
                m.error_rate().map_or("-".to_string(), |r| format!("{r:.2}")),
                m.p99_ms.map_or("-".to_string(), |p| format!("{p:.0}ms")),
            );
        }
    }
}

fn figures(m: &StepMeasurement) -> String {
    format!(
        "{} requests, 5xx rate {}, p99 {}",
        m.requests,
        m.error_rate().map_or("-".to_string(), |r| format!("{r:.2}")),
        m.p99_ms.map_or("-".to_string(), |p| format!("{p:.0}ms")),
    )
}
