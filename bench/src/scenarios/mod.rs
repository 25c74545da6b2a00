//! The six scenarios of the suite. Each measures revgate and, in the same
//! run, a baseline (bare Envoy, a process started directly, Envoy loading
//! the same configuration from a file, Knative's own rules), and compares
//! the figures with the goals of the issue that asked for them.

mod autoscaler_tick;
mod burst;
mod cold_start;
mod overhead;
mod scale_step;
mod xds_scale;

use std::time::Instant;

use clap::ValueEnum;

use crate::env::Tools;
use crate::report::{Row, ScenarioResult};

/// A scenario, by the name `scripts/bench.sh` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// 1. Data-plane overhead: Envoy with and without the filter, warm revision.
    Overhead,
    /// 2. Cold-start overhead: first request at zero scale, minus the backend's start.
    ColdStart,
    /// 3. Burst while cold: 1,000 and 10,000 concurrent requests held and released.
    Burst,
    /// 4. xDS scale: thousands of services, then one route change, SotW and delta.
    Xds,
    /// 5. Autoscaler tick: one decision pass over 10,000 revisions.
    Tick,
    /// 6. Scale under a step: 0 → 200 clients against the autoscale sample.
    Step,
}

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Each scenario in well under a minute: proves the suite runs and yields numbers.
    Quick,
    /// The published size.
    Full,
}

impl Size {
    fn name(self) -> &'static str {
        match self {
            Self::Quick => "quick",
            Self::Full => "full",
        }
    }

    /// `quick` or `full` of anything.
    pub fn pick<T>(self, quick: T, full: T) -> T {
        match self {
            Self::Quick => quick,
            Self::Full => full,
        }
    }
}

/// What a scenario measured.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub load_commands: Vec<String>,
    pub notes: Vec<String>,
    pub raw: serde_json::Value,
}

impl Scenario {
    pub const ALL: [Self; 6] = [Self::Overhead, Self::ColdStart, Self::Burst, Self::Xds, Self::Tick, Self::Step];

    pub fn id(self) -> &'static str {
        match self {
            Self::Overhead => "overhead",
            Self::ColdStart => "cold-start",
            Self::Burst => "burst",
            Self::Xds => "xds",
            Self::Tick => "tick",
            Self::Step => "step",
        }
    }

    fn number(self) -> u32 {
        self as u32 + 1
    }

    fn title(self) -> &'static str {
        match self {
            Self::Overhead => "Data-plane overhead",
            Self::ColdStart => "Cold-start overhead",
            Self::Burst => "Burst while cold",
            Self::Xds => "xDS scale",
            Self::Tick => "Autoscaler tick",
            Self::Step => "Scale under a step",
        }
    }

    /// Runs the scenario and stamps its result.
    pub async fn run(self, tools: &Tools, size: Size) -> anyhow::Result<ScenarioResult> {
        let started = Instant::now();
        let load_average = crate::env::load_average();
        let outcome = match self {
            Self::Overhead => overhead::run(tools, size).await?,
            Self::ColdStart => cold_start::run(tools, size).await?,
            Self::Burst => burst::run(tools, size).await?,
            Self::Xds => xds_scale::run(tools, size).await?,
            Self::Tick => autoscaler_tick::run(size)?,
            Self::Step => scale_step::run(tools, size).await?,
        };
        let quick = if size == Size::Quick { "--quick " } else { "" };
        Ok(ScenarioResult {
            number: self.number(),
            id: self.id().to_owned(),
            title: self.title().to_owned(),
            size: size.name().to_owned(),
            measured_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            duration_s: started.elapsed().as_secs_f64(),
            load_average,
            command: format!("scripts/bench.sh {quick}{}", self.id()),
            rows: outcome.rows,
            load_commands: outcome.load_commands,
            notes: outcome.notes,
            raw: outcome.raw,
        })
    }
}

/// A Knative Service named `name` in namespace `default`, with extra
/// template annotations (`key: value` lines) and container lines.
pub fn service(name: &str, annotations: &[(&str, String)], container: &str) -> String {
    let annotations: String = annotations.iter().map(|(k, v)| format!("        {k}: {v:?}\n")).collect();
    let metadata = if annotations.is_empty() {
        String::new()
    } else {
        format!("    metadata:\n      annotations:\n{annotations}")
    };
    format!(
        "---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  template:\n{metadata}    spec:\n      containers:\n      - {container}\n"
    )
}

/// The host of a Knative Service in namespace `default`.
pub fn host(name: &str) -> String {
    format!("{name}.default.example.com")
}
