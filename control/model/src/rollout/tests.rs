//! Table-driven tests of the rollout, stepping time forward.

use super::annotations::Gates;
use super::controls::{self, Control, ControlRefused};
use super::gates::StepMeasurement;
use super::orchestrator::{advance, goal, measure, observe_ready, step};
use super::served::{ROLLOUT_CONDITION, condition, overlay_route_status};
use super::state::{ConfigurationRollout, Phase, RevisionShare, Rollouts, RouteRollout};
use crate::manifest::parse_documents;
use crate::observed::Observed;
use crate::plan::{ObjectKey, Split};
use crate::world::World;

const S: u64 = 1000;

fn shares(pairs: &[(&str, u32)]) -> Vec<RevisionShare> {
    pairs
        .iter()
        .map(|(revision, percent)| RevisionShare { revision: revision.to_string(), percent: *percent })
        .collect()
}

fn at(revision: &str) -> RouteRollout {
    RouteRollout {
        configurations: vec![ConfigurationRollout {
            configuration: "hello".into(),
            percent: 100,
            revisions: shares(&[(revision, 100)]),
            ..ConfigurationRollout::default()
        }],
    }
}

fn served(r: &RouteRollout) -> Vec<(String, u32)> {
    r.configurations[0].revisions.iter().map(|s| (s.revision.clone(), s.percent)).collect()
}

fn pairs(expected: &[(&str, u32)]) -> Vec<(String, u32)> {
    expected.iter().map(|(r, p)| (r.to_string(), *p)).collect()
}

/// One driver tick: merge the goal, observe the gateway ready, judge, step.
fn tick(prev: &RouteRollout, goal_revision: &str, duration_secs: u64, gates: &Gates, now_ms: u64) -> RouteRollout {
    let mut next = step(at(goal_revision), Some(prev), duration_secs, now_ms);
    observe_ready(&mut next, now_ms, duration_secs);
    advance(&mut next, gates, now_ms);
    next
}

#[test]
fn knatives_example_rolls_100_percent_in_four_steps() {
    // The gateway takes the first 1% within a second; 5 s leave 4 s for
    // four steps of 25% (24.75 rounded): 1 → 26 → 51 → 76 → 100.
    let mut state = step(at("hello-00002"), Some(&at("hello-00001")), 5, 10 * S);
    assert_eq!(served(&state), pairs(&[("hello-00001", 99), ("hello-00002", 1)]));
    let table: [(u64, &[(&str, u32)]); 6] = [
        (11 * S, &[("hello-00001", 99), ("hello-00002", 1)]),
        (11 * S + 500, &[("hello-00001", 99), ("hello-00002", 1)]),
        (12 * S, &[("hello-00001", 74), ("hello-00002", 26)]),
        (13 * S, &[("hello-00001", 49), ("hello-00002", 51)]),
        (14 * S, &[("hello-00001", 24), ("hello-00002", 76)]),
        (15 * S, &[("hello-00002", 100)]),
    ];
    for (now, want) in table {
        state = tick(&state, "hello-00002", 5, &Gates::default(), now);
        assert_eq!(served(&state), pairs(want), "at {now} ms");
    }
    let c = &state.configurations[0];
    assert_eq!(c.phase, Phase::Completed);
    assert_eq!(c.history.iter().map(|h| h.percent).collect::<Vec<_>>(), [1, 26, 51, 76]);
    assert_eq!(condition(&state).and_then(|c| c.reason), Some("Completed".into()));
}

#[test]
fn step_size_and_interval_come_from_the_duration() {
    // (duration, seconds the first 1% took, step size, step interval in ms)
    let cases = [(20, 1, 5, 1000), (380, 1, 1, 3828), (120, 4, 3, 4000), (3, 5, 99, 1000), (1000, 1, 1, 10090)];
    for (duration, took, size, interval) in cases {
        let mut state = step(at("b"), Some(&at("a")), duration, 1);
        observe_ready(&mut state, took * S, duration);
        let params = state.configurations[0].step;
        assert_eq!((params.step_size, params.step_duration_ms), (size, interval), "duration {duration}s, took {took}s");
    }
}

#[test]
fn a_healthy_candidate_reaches_100_percent_within_the_duration_plus_one_step() {
    let mut state = step(at("b"), Some(&at("a")), 20, 1);
    let mut shares_seen = Vec::new();
    for second in 1..=21 {
        state = tick(&state, "b", 20, &Gates::default(), second * S);
        shares_seen.push(state.configurations[0].revisions.last().map_or(0, |r| r.percent));
    }
    assert_eq!(shares_seen.first(), Some(&1));
    assert!(shares_seen.iter().any(|p| (30..70).contains(p)), "intermediate shares: {shares_seen:?}");
    assert_eq!(served(&state), pairs(&[("b", 100)]));
}

#[test]
fn a_newer_revision_during_a_rollout_starts_at_one_percent_and_the_previous_candidate_drains_first() {
    let mut state = step(at("b"), Some(&at("a")), 5, 1);
    state = tick(&state, "b", 5, &Gates::default(), S);
    state = tick(&state, "b", 5, &Gates::default(), 2 * S);
    assert_eq!(served(&state), pairs(&[("a", 74), ("b", 26)]));
    state = step(at("c"), Some(&state), 5, 2 * S + 100);
    assert_eq!(served(&state), pairs(&[("a", 74), ("b", 25), ("c", 1)]));
    assert_eq!(state.configurations[0].step.step_size, 0, "steps are computed again once the gateway took c's 1%");
    state = tick(&state, "c", 5, &Gates::default(), 3 * S);
    state = tick(&state, "c", 5, &Gates::default(), 4 * S);
    assert_eq!(served(&state), pairs(&[("a", 74), ("c", 26)]), "b is drained before a");
}

#[test]
fn a_changed_target_percent_adjusts_the_oldest_first() {
    // Knative's adjustPercentage: a larger target goes to the newest revision,
    // a smaller one comes from the oldest.
    let mut state = step(at("b"), Some(&at("a")), 5, 1);
    state.configurations[0].revisions = shares(&[("a", 60), ("b", 40)]);
    let mut goal = at("b");
    goal.configurations[0].percent = 30;
    goal.configurations[0].revisions[0].percent = 30;
    let next = step(goal, Some(&state), 5, S);
    assert_eq!(served(&next), pairs(&[("b", 30)]));
}

#[test]
fn without_a_duration_the_new_revision_takes_everything_at_once() {
    let state = step(at("b"), Some(&at("a")), 0, 1);
    assert_eq!(served(&state), pairs(&[("b", 100)]));
    assert_eq!(condition(&state), None);
}

#[test]
fn a_breach_aborts_within_one_evaluation_and_keeps_the_candidate_out() {
    let gates = Gates { max_error_rate: Some(0.05), ..Gates::default() };
    let mut state = step(at("b"), Some(&at("a")), 20, 1);
    state = tick(&state, "b", 20, &gates, S);
    measure(&mut state, "b", &StepMeasurement { requests: 10, errors_5xx: 3, p99_ms: Some(5.0) });
    state = tick(&state, "b", 20, &gates, S + 500);
    assert_eq!(served(&state), pairs(&[("a", 100)]));
    let condition = condition(&state).expect("a condition");
    assert_eq!((condition.status.as_str(), condition.reason.as_deref()), ("False", Some("Aborted")));
    let message = condition.message.unwrap_or_default();
    assert!(message.contains("5xx error rate") && message.contains("0.30") && message.contains("0.05"), "{message}");
    assert_eq!(state.summary().as_deref(), Some("aborted: 5xx 0.30 > 0.05"));

    // The aborted revision gets nothing until a newer one comes…
    let kept = tick(&state, "b", 20, &gates, 30 * S);
    assert_eq!(served(&kept), pairs(&[("a", 100)]));
    let newer = tick(&kept, "c", 20, &gates, 31 * S);
    assert_eq!(served(&newer), pairs(&[("a", 99), ("c", 1)]));
    // …or the operator retries it.
    let mut retried = kept.clone();
    controls::apply(&mut retried, &ObjectKey::new("default", "hello"), Control::Retry, 31 * S).expect("retry");
    let retried = tick(&retried, "b", 20, &gates, 32 * S);
    assert_eq!(served(&retried), pairs(&[("a", 99), ("b", 1)]));
}

#[test]
fn too_little_data_waits_and_proceeds_when_traffic_comes() {
    let gates = Gates { min_requests: 20, max_error_rate: Some(0.05), ..Gates::default() };
    let mut state = step(at("b"), Some(&at("a")), 5, 1);
    state = tick(&state, "b", 5, &gates, S);
    measure(&mut state, "b", &StepMeasurement { requests: 5, errors_5xx: 5, p99_ms: None });
    for now in [2 * S, 10 * S, 60 * S] {
        state = tick(&state, "b", 5, &gates, now);
        assert_eq!(served(&state), pairs(&[("a", 99), ("b", 1)]), "never advances nor fails on too little data");
        assert!(matches!(state.configurations[0].phase, Phase::Waiting { .. }));
    }
    let waiting = condition(&state).expect("condition");
    assert_eq!(waiting.reason.as_deref(), Some("WaitingForData"));
    assert!(waiting.message.unwrap_or_default().contains("5 of 20 requests"));
    // The step so far: the 5 failed requests and 95 good ones since.
    measure(&mut state, "b", &StepMeasurement { requests: 100, errors_5xx: 5, p99_ms: None });
    state = tick(&state, "b", 5, &gates, 61 * S);
    assert_eq!(served(&state), pairs(&[("a", 74), ("b", 26)]));
    assert_eq!(state.configurations[0].phase, Phase::Progressing);
}

#[test]
fn promote_abort_and_retry() {
    let route = ObjectKey::new("default", "hello");
    let mut state = step(at("b"), Some(&at("a")), 60, 1);
    let mut promoted = state.clone();
    controls::apply(&mut promoted, &route, Control::Promote, S).expect("promote");
    assert_eq!(served(&promoted), pairs(&[("b", 100)]));
    assert_eq!(
        controls::apply(&mut promoted, &route, Control::Abort, S),
        Err(ControlRefused::NotInProgress { route: route.clone(), control: Control::Abort })
    );
    controls::apply(&mut state, &route, Control::Abort, S).expect("abort");
    assert_eq!(served(&state), pairs(&[("a", 100)]));
    assert_eq!(state.summary().as_deref(), Some("aborted by operator"));
    controls::apply(&mut state, &route, Control::Retry, S).expect("retry");
    assert!(controls::apply(&mut state, &route, Control::Retry, S).is_err(), "nothing left to retry");
}

const HELLO: &str = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  annotations:
    serving.knative.dev/rollout-duration: 20s
spec:
  template:
    spec:
      containers:
      - image: hello:IMAGE
";

fn hello_world(images: &[&str]) -> World {
    let mut world = World::default();
    for image in images {
        let docs = parse_documents("hello.yaml", &HELLO.replace("IMAGE", image)).expect("parses");
        world = world.apply(&docs, 0).expect("applies").0;
    }
    world
}

#[test]
fn the_plan_and_the_status_serve_the_rollouts_split() {
    let world = hello_world(&["1", "2"]);
    let route_key = ObjectKey::new("default", "hello");
    let route = &world.routes[&route_key];
    let observed = Observed::default();
    assert_eq!(goal(&world, route, &observed).configurations[0].revisions, shares(&[("hello-00002", 100)]));

    let mut prev = at("hello-00001");
    prev.configurations[0].configuration = "hello".into();
    let state = step(goal(&world, route, &observed), Some(&prev), 20, 0);
    let rollouts = Rollouts::from([(route_key.clone(), state.clone())]);
    let plan = world.plan_with_rollouts(&observed, &rollouts, &mut crate::PlanMemo::default());
    let split = |name: &str, percent| Split { revision: ObjectKey::new("default", name), percent };
    assert_eq!(plan.routes[0].splits, [split("hello-00001", 99), split("hello-00002", 1)]);
    assert_eq!(world.plan(&observed).routes[0].splits, [split("hello-00002", 100)], "the plan alone is unchanged");

    let mut status = world.route_views(&observed).into_iter().next().and_then(|r| r.status).expect("status");
    overlay_route_status(&world, route, &mut status, &state);
    let traffic: Vec<(Option<String>, Option<i64>, Option<bool>)> =
        status.traffic.iter().map(|t| (t.revision_name.clone(), t.percent, t.latest_revision)).collect();
    assert_eq!(
        traffic,
        [(Some("hello-00001".into()), Some(99), Some(true)), (Some("hello-00002".into()), Some(1), Some(true))]
    );
    let rollout = status.conditions.iter().find(|c| c.type_ == ROLLOUT_CONDITION).expect("Rollout condition");
    assert_eq!((rollout.status.as_str(), rollout.reason.as_deref()), ("Unknown", Some("Progressing")));
}

#[test]
fn invalid_rollout_annotations_are_refused_at_apply_naming_the_annotation() {
    let docs = parse_documents("hello.yaml", &HELLO.replace("20s", "1.5s").replace("IMAGE", "1")).expect("parses");
    let err = World::default().apply(&docs, 0).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("metadata.annotations[serving.knative.dev/rollout-duration]")
            && text.contains("second precision"),
        "{text}"
    );
}
