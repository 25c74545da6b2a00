//! The per-Route rollout state: serialisable, so that the driver can store
//! it and a restarted control plane resumes where it was.
//!
//! Shaped after Knative's `Rollout` (one [`ConfigurationRollout`] per
//! configuration and tag of a Route's `latestRevision` targets, revisions
//! oldest first, the newest being rolled out), plus revgate's gate
//! bookkeeping: the phase, what was measured of the candidate in the
//! current step, and the steps taken.
//!
//! | phase | revisions | served | `Rollout` condition |
//! |---|---|---|---|
//! | `Stable` | 0 or 1 | that revision | none |
//! | `Progressing` | ≥ 2 | the steps so far | Unknown `Progressing` |
//! | `Waiting` | ≥ 2 | unchanged until data comes | Unknown `WaitingForData` |
//! | `Completed` | 1 (the candidate) | all to it | True `Completed` |
//! | `Aborted` | ≥ 1, without the candidate | all back to the previous | False `Aborted` |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::gates::{Breach, StepMeasurement};
use crate::plan::ObjectKey;

/// Every Route's rollout, by Route.
pub type Rollouts = BTreeMap<ObjectKey, RouteRollout>;

/// One Route's rollouts: one per configuration and tag it sends traffic to
/// through a `latestRevision` target, sorted by tag, then configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRollout {
    pub configurations: Vec<ConfigurationRollout>,
}

/// The rollout of one configuration's target (Knative's `ConfigurationRollout`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationRollout {
    pub configuration: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The target's share of the Route; the revisions' shares add up to it.
    pub percent: u32,
    /// Oldest first; the last is the one being rolled out (the candidate).
    pub revisions: Vec<RevisionShare>,
    #[serde(default)]
    pub step: StepParams,
    #[serde(default)]
    pub phase: Phase,
    /// What was measured of the candidate since its last step.
    #[serde(default)]
    pub current: StepMeasurement,
    /// The steps the candidate took, with what was measured in each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<StepRecord>,
}

/// A revision's share of the whole Route (not of its target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionShare {
    pub revision: String,
    pub percent: u32,
}

/// Knative's `RolloutParams`, in Unix milliseconds. All zero when no
/// rollout is in progress; `step_duration_ms` stays zero from the start
/// until the gateway took the first 1% (Knative's `ObserveReady`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepParams {
    pub start_ms: u64,
    pub next_step_ms: u64,
    pub step_duration_ms: u64,
    pub step_size: u32,
}

/// Where a rollout stands; see the module's table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Phase {
    #[default]
    Stable,
    Progressing,
    Waiting {
        reason: String,
    },
    Completed,
    Aborted {
        /// The candidate that was taken out; it gets no traffic through this
        /// target until a newer revision comes or the rollout is retried.
        revision: String,
        cause: AbortCause,
    },
}

/// Why a rollout was aborted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "camelCase")]
pub enum AbortCause {
    Gate { breach: Breach },
    Operator,
}

/// One step the candidate took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub candidate: String,
    /// The candidate's share during the step.
    pub percent: u32,
    pub measured: StepMeasurement,
    /// When the step ended (Unix milliseconds).
    pub ended_ms: u64,
}

impl ConfigurationRollout {
    /// Whether a revision is being rolled out: more than one takes traffic.
    pub fn in_progress(&self) -> bool {
        self.revisions.len() > 1
    }

    /// The revision being rolled out (or the only one).
    pub fn candidate(&self) -> Option<&RevisionShare> {
        self.revisions.last()
    }

    /// How many steps the rollout takes after its first 1%, once known.
    pub fn total_steps(&self) -> Option<u32> {
        (self.step.step_size > 0).then(|| 1 + self.percent.saturating_sub(1).div_ceil(self.step.step_size))
    }

    /// The step the candidate is in, counting its first 1% as step 1.
    pub fn current_step(&self) -> u32 {
        u32::try_from(self.history.len()).unwrap_or(u32::MAX).saturating_add(1)
    }

    /// A line for tables: `37% → hello-00002`, `aborted: 5xx 0.31 > 0.05`, `completed`.
    pub fn summary(&self) -> Option<String> {
        match &self.phase {
            Phase::Stable => None,
            Phase::Progressing => self.candidate().map(|c| format!("{}% → {}", c.percent, c.revision)),
            Phase::Waiting { .. } => {
                self.candidate().map(|c| format!("{}% → {} (waiting for data)", c.percent, c.revision))
            }
            Phase::Completed => Some("completed".to_string()),
            Phase::Aborted { cause: AbortCause::Gate { breach }, .. } => Some(format!("aborted: {}", breach.short())),
            Phase::Aborted { cause: AbortCause::Operator, .. } => Some("aborted by operator".to_string()),
        }
    }
}

impl RouteRollout {
    /// The rollout a table shows for the Route: the first one that is not
    /// stable (an aborted one first).
    pub fn summary(&self) -> Option<String> {
        let aborted = self.configurations.iter().find(|c| matches!(c.phase, Phase::Aborted { .. }));
        aborted.or_else(|| self.configurations.iter().find(|c| c.phase != Phase::Stable)).and_then(|c| c.summary())
    }
}
