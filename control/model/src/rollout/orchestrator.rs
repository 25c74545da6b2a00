//! Knative's rollout orchestrator (`pkg/reconciler/route/traffic/rollout.go`),
//! as pure functions of the previous state and `now` (Unix milliseconds),
//! with revgate's gates deciding whether a step may be taken.
//!
//! Each tick of the driver:
//! 1. [`goal`]: what the Route asks for — each `latestRevision` target's
//!    configuration (and tag) at its whole percent on its latest ready revision;
//! 2. [`step`]: merged with the previous state as Knative merges them — a new
//!    revision starts at 1%, taken from the newest revision that has traffic;
//!    a further new revision during a rollout starts at 1% the same way, the
//!    revisions before it keep their shares and are drained newest first;
//!    a changed target percent is added to the newest revision or taken from
//!    the oldest;
//! 3. [`observe_ready`]: once the gateway took the first 1%, the step size and
//!    interval from the duration, as Knative computes them;
//! 4. [`advance`]: at each step time, the gates judge what was measured of the
//!    candidate in the step: pass steps (Knative's `stepRevisions`), too little
//!    data waits, a breach (at any tick) aborts.

use super::annotations::Gates;
use super::gates::{StepMeasurement, Verdict, judge};
use super::state::{AbortCause, ConfigurationRollout, Phase, RevisionShare, RouteRollout, StepParams, StepRecord};
use crate::observed::Observed;
use crate::plan::ObjectKey;
use crate::resources::Route;
use crate::world::World;

const MS_PER_SECOND: f64 = 1000.0;

/// What the Route asks for, without a rollout: each `latestRevision`
/// target's configuration and tag with its latest ready revision at the
/// target's whole percent (Knative's `BuildRollout`). Targets of the same
/// configuration and tag add up; targets at 0% and configurations without
/// a ready revision are left out. Sorted by tag, then configuration.
pub fn goal(world: &World, route: &Route, observed: &Observed) -> RouteRollout {
    let mut configurations: Vec<ConfigurationRollout> = Vec::new();
    let Some(traffic) = world.traffic_in_effect(route) else { return RouteRollout::default() };
    for target in traffic {
        let (None, Some(configuration)) = (&target.revision_name, &target.configuration_name) else { continue };
        let key = ObjectKey::new(route.metadata.namespace.clone(), configuration.clone());
        let Some(latest) = world.latest_ready_revision(&key, observed) else { continue };
        let percent = u32::try_from(target.percent.unwrap_or(0)).unwrap_or(0);
        // Knative leaves out targets that carry no traffic.
        if percent == 0 {
            continue;
        }
        match configurations.iter_mut().find(|c| &c.configuration == configuration && c.tag == target.tag) {
            Some(c) => {
                c.percent += percent;
                if let Some(r) = c.revisions.first_mut() {
                    r.percent += percent;
                }
            }
            None => configurations.push(ConfigurationRollout {
                configuration: configuration.clone(),
                tag: target.tag.clone(),
                percent,
                revisions: vec![RevisionShare { revision: latest.metadata.name.clone(), percent }],
                ..ConfigurationRollout::default()
            }),
        }
    }
    configurations.sort_by(|a, b| (&a.tag, &a.configuration).cmp(&(&b.tag, &b.configuration)));
    RouteRollout { configurations }
}

/// Knative's `Step`, without moving traffic between revisions (that is
/// [`advance`], once the gates allow it): merges the goal with the previous
/// state. Without a duration (or a previous state) the goal is served as it is.
pub fn step(goal: RouteRollout, prev: Option<&RouteRollout>, duration_secs: u64, now_ms: u64) -> RouteRollout {
    let Some(prev) = prev.filter(|p| duration_secs > 0 && !p.configurations.is_empty()) else { return goal };
    let configurations = goal
        .configurations
        .into_iter()
        .filter_map(|cur| {
            let previous =
                prev.configurations.iter().find(|p| p.configuration == cur.configuration && p.tag == cur.tag);
            match (previous, cur.percent) {
                // A new configuration or tag: nothing to roll from.
                (None, _) => Some(cur),
                // Knative skips a target with 1% (an A/B test) and drops 0%.
                (Some(_), 0) => None,
                (Some(_), 1) => Some(cur),
                (Some(previous), _) => Some(step_config(cur, previous.clone(), now_ms)),
            }
        })
        .collect();
    RouteRollout { configurations }
}

/// Knative's `stepConfig`: the goal (one revision) against the previous
/// state of the same configuration and tag.
fn step_config(goal: ConfigurationRollout, mut prev: ConfigurationRollout, now_ms: u64) -> ConfigurationRollout {
    let Some(goal_revision) = goal.revisions.first().map(|r| r.revision.clone()) else { return goal };
    if !prev.revisions.is_empty() {
        adjust_percentage(goal.percent, &mut prev);
    }
    let aborted_goal = matches!(&prev.phase, Phase::Aborted { revision, .. } if *revision == goal_revision);
    let same = prev.revisions.last().is_some_and(|r| r.revision == goal_revision);
    if prev.revisions.is_empty() || same || aborted_goal {
        if prev.revisions.is_empty() {
            return goal;
        }
        // No new revision: the rollout (if any) goes on where it was. An
        // aborted candidate stays out until a newer one comes or a retry.
        let revisions = if prev.revisions.len() > 1 || aborted_goal { prev.revisions } else { goal.revisions };
        return ConfigurationRollout { percent: goal.percent, revisions, ..prev };
    }
    // A new revision: it starts at 1%, taken from the newest revision that
    // has traffic (by design the newest is drained first).
    if let Some(newest) = prev.revisions.iter_mut().rev().find(|r| r.percent > 0) {
        newest.percent -= 1;
    }
    let mut revisions: Vec<RevisionShare> = prev.revisions.into_iter().filter(|r| r.percent > 0).collect();
    revisions.push(RevisionShare { revision: goal_revision, percent: 1 });
    ConfigurationRollout {
        revisions,
        step: StepParams { start_ms: now_ms, ..StepParams::default() },
        phase: Phase::Progressing,
        current: StepMeasurement::default(),
        history: Vec::new(),
        ..goal
    }
}

/// Knative's `adjustPercentage`: a target whose percent grew gives the
/// difference to the newest revision; one that shrank takes it from the
/// oldest first.
fn adjust_percentage(goal: u32, c: &mut ConfigurationRollout) {
    if goal == 0 {
        c.revisions.clear();
    } else if goal > c.percent {
        if let Some(newest) = c.revisions.last_mut() {
            newest.percent += goal - c.percent;
        }
    } else if goal < c.percent {
        let mut diff = c.percent - goal;
        let mut gone = 0;
        for r in &mut c.revisions {
            if r.percent > diff {
                r.percent -= diff;
                break;
            }
            diff -= r.percent;
            gone += 1;
        }
        c.revisions.drain(..gone.min(c.revisions.len()));
    }
    c.percent = goal;
}

/// Knative's `ObserveReady`: once the gateway serves the first 1%, each
/// rollout that has not yet computed its steps does, from how long that
/// first step took.
pub fn observe_ready(rollout: &mut RouteRollout, now_ms: u64, duration_secs: u64) {
    for c in &mut rollout.configurations {
        if c.step.step_duration_ms == 0 && c.step.start_ms > 0 && c.in_progress() {
            let took_secs = (now_ms.saturating_sub(c.step.start_ms) as f64 / MS_PER_SECOND).ceil();
            compute_properties(c, now_ms, took_secs.max(1.0), duration_secs as f64);
        }
    }
}

/// Knative's `computeProperties`: the first 1% took `min_step_secs`; the
/// rest of the duration is split in equal steps of at least that long, at
/// most one per remaining percent, rounded to the nearest whole percent
/// (rounding down would nearly double the rollout: 100% in 4 steps is
/// 1 → 26 → 51 → 76 → 100).
fn compute_properties(c: &mut ConfigurationRollout, now_ms: u64, min_step_secs: f64, duration_secs: f64) {
    let duration = (duration_secs - min_step_secs).max(1.0);
    let remaining = f64::from(c.percent.saturating_sub(1));
    let steps = (duration / min_step_secs).max(1.0).min(remaining);
    if steps <= 0.0 {
        return;
    }
    let step_duration_ms = (duration / steps * MS_PER_SECOND) as u64;
    c.step.step_size = (remaining / steps).round() as u32;
    c.step.step_duration_ms = step_duration_ms;
    c.step.next_step_ms = now_ms + step_duration_ms;
}

/// Sets what the gateways measured of `revision` in its current step so
/// far, where it is the candidate of a rollout in progress. The caller
/// measures the whole step (its counts since the step began), so a step's
/// p99 is the p99 of all its requests, not the worst of some windows.
pub fn measure(rollout: &mut RouteRollout, revision: &str, step: &StepMeasurement) {
    for c in &mut rollout.configurations {
        if c.in_progress() && c.candidate().is_some_and(|r| r.revision == revision) {
            c.current = *step;
        }
    }
}

/// Which step a configuration's candidate is in: how many it completed.
/// Measurements are kept per step: a new index starts a new count.
pub fn step_index(rollout: &RouteRollout, revision: &str) -> Option<usize> {
    rollout
        .configurations
        .iter()
        .find(|c| c.in_progress() && c.candidate().is_some_and(|r| r.revision == revision))
        .map(|c| c.history.len())
}

/// Judges each rollout in progress: a breach aborts at once; at step time a
/// pass takes the step, too little data waits.
pub fn advance(rollout: &mut RouteRollout, gates: &Gates, now_ms: u64) {
    for c in &mut rollout.configurations {
        if !c.in_progress() {
            continue;
        }
        let verdict = judge(gates, &c.current);
        let due = c.step.step_size > 0 && now_ms >= c.step.next_step_ms;
        match verdict {
            Verdict::Breach(breach) => abort_config(c, AbortCause::Gate { breach }),
            Verdict::Pass if due => {
                if let Some(candidate) = c.candidate() {
                    c.history.push(StepRecord {
                        candidate: candidate.revision.clone(),
                        percent: candidate.percent,
                        measured: c.current,
                        ended_ms: now_ms,
                    });
                }
                c.current = StepMeasurement::default();
                c.phase = Phase::Progressing;
                step_revisions(c, now_ms);
            }
            Verdict::Waiting(reason) if due => c.phase = Phase::Waiting { reason },
            _ => {}
        }
    }
}

/// Knative's `stepRevisions`: `step_size` moves to the candidate from the
/// revisions before it, newest first; revisions left at 0% leave. The last
/// step completes the rollout.
fn step_revisions(c: &mut ConfigurationRollout, now_ms: u64) {
    let Some(mut candidate) = c.revisions.pop() else { return };
    let mut remaining = c.step.step_size;
    while remaining > 0 {
        let Some(newest) = c.revisions.last_mut() else { break };
        if newest.percent > remaining {
            newest.percent -= remaining;
            break;
        }
        remaining -= newest.percent;
        c.revisions.pop();
    }
    candidate.percent = (candidate.percent + c.step.step_size).min(c.percent);
    c.revisions.push(candidate);
    if c.in_progress() {
        c.step.next_step_ms = now_ms + c.step.step_duration_ms;
    } else {
        c.step = StepParams::default();
        c.phase = Phase::Completed;
    }
}

/// Takes the candidate out: its share returns to the revision before it.
pub(crate) fn abort_config(c: &mut ConfigurationRollout, cause: AbortCause) {
    if !c.in_progress() {
        return;
    }
    let Some(candidate) = c.revisions.pop() else { return };
    if let Some(previous) = c.revisions.last_mut() {
        previous.percent += candidate.percent;
    }
    c.step = StepParams::default();
    c.current = StepMeasurement::default();
    c.phase = Phase::Aborted { revision: candidate.revision, cause };
}
