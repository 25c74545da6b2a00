use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::manifest::parse_documents;

const NOW: u64 = 1_800_000_000;
const MINUTE: u64 = 60;
const HOUR: u64 = 3600;

fn reserve(name: &str, last_active_ago: u64) -> Candidate {
    Candidate {
        name: name.to_string(),
        created: NOW - 24 * HOUR,
        state: RoutingState::Reserve,
        state_modified: Some(NOW - last_active_ago),
        preserved: false,
        routed: false,
    }
}

fn with_state(mut c: Candidate, state: RoutingState) -> Candidate {
    c.state = state;
    c
}

fn config(create: Option<u64>, active: Option<u64>, min: u64, max: Option<u64>) -> GcConfig {
    GcConfig {
        retain_since_create_time: create.map(Duration::from_secs),
        retain_since_last_active_time: active.map(Duration::from_secs),
        min_non_active_revisions: min,
        max_non_active_revisions: max,
    }
}

fn deleted(config: &GcConfig, latest: &[&str], revisions: &[Candidate]) -> Vec<String> {
    collect(config, latest, revisions, NOW).delete
}

#[test]
fn the_minimum_keeps_the_most_recently_active() {
    let gc = config(Some(5 * MINUTE), Some(5 * MINUTE), 1, None);
    let three = [
        reserve("r1", 13 * MINUTE),
        reserve("r2", 12 * MINUTE),
        with_state(reserve("r3", 11 * MINUTE), RoutingState::Active),
    ];
    assert_eq!(deleted(&gc, &["r3"], &three), ["r1"], "oldest stale goes, one stale kept for the minimum");
    assert_eq!(deleted(&gc, &[], &three), ["r1"], "without a latest ready revision, the routed one is still active");
    assert!(deleted(&gc, &["r3"], &three[2..]).is_empty(), "too few revisions");
}

#[test]
fn only_reserve_revisions_are_ever_collected() {
    let gc = config(Some(5 * MINUTE), Some(5 * MINUTE), 0, Some(0));
    let revisions = [
        with_state(reserve("pending", 13 * MINUTE), RoutingState::Pending),
        with_state(reserve("unset", 12 * MINUTE), RoutingState::Unset),
        with_state(reserve("active", 11 * MINUTE), RoutingState::Active),
        Candidate { preserved: true, ..reserve("no-gc", 20 * MINUTE) },
        Candidate { routed: true, ..reserve("routed-now", 20 * MINUTE) },
        reserve("latest-created", 20 * MINUTE),
        reserve("latest-ready", 20 * MINUTE),
    ];
    assert!(deleted(&gc, &["latest-created", "latest-ready"], &revisions).is_empty());
    let mut with_one = revisions.to_vec();
    with_one.push(reserve("old", 20 * MINUTE));
    assert_eq!(deleted(&gc, &["latest-created", "latest-ready"], &with_one), ["old"]);
}

#[test]
fn recent_activity_or_creation_keeps_a_revision() {
    let gc = config(Some(5 * MINUTE), Some(5 * MINUTE), 0, None);
    let fresh_activity = reserve("a", 0);
    let fresh_creation = Candidate { created: NOW - MINUTE, state_modified: None, ..reserve("b", 0) };
    let stale = reserve("c", 10 * MINUTE);
    assert_eq!(deleted(&gc, &[], &[fresh_activity, fresh_creation, stale]), ["c"]);
    // Exactly at the limit counts as stale: Knative keeps only what is strictly younger.
    assert_eq!(deleted(&gc, &[], &[reserve("edge", 5 * MINUTE)]), ["edge"]);
}

#[test]
fn without_a_stamp_the_creation_time_is_the_last_activity() {
    let gc = config(None, Some(5 * MINUTE), 0, None);
    let old = Candidate { created: NOW - HOUR, state_modified: None, ..reserve("old", 0) };
    let young = Candidate { created: NOW - MINUTE, state_modified: None, ..reserve("young", 0) };
    assert_eq!(deleted(&gc, &[], &[old, young]), ["old"]);
}

#[test]
fn the_maximum_deletes_the_oldest_of_those_not_stale() {
    let gc = config(Some(HOUR), Some(HOUR), 1, Some(2));
    let at_max = [
        reserve("r1", 12 * MINUTE),
        reserve("r2", 12 * MINUTE),
        with_state(reserve("r3", 11 * MINUTE), RoutingState::Active),
    ];
    assert!(deleted(&gc, &["r3"], &at_max).is_empty(), "at the maximum");
    let over = [
        reserve("r0", 13 * MINUTE),
        reserve("r1", 12 * MINUTE),
        reserve("r2", 12 * MINUTE),
        with_state(reserve("r3", 11 * MINUTE), RoutingState::Active),
    ];
    assert_eq!(deleted(&gc, &["r3"], &over), ["r0"]);
    let all_active: Vec<Candidate> =
        ["a", "b", "c", "d"].iter().map(|n| with_state(reserve(n, MINUTE), RoutingState::Active)).collect();
    assert!(deleted(&gc, &["d"], &all_active).is_empty(), "over the maximum, but all active");
}

#[test]
fn settings_switch_rules_off() {
    let revisions = [
        reserve("r1", 13 * MINUTE),
        reserve("r2", 12 * MINUTE),
        with_state(reserve("r3", 11 * MINUTE), RoutingState::Active),
    ];
    assert!(deleted(&config(None, None, 1, None), &["r3"], &revisions).is_empty(), "all disabled");
    assert_eq!(deleted(&config(None, None, 0, Some(1)), &["r3"], &revisions), ["r1"], "staleness disabled");
    assert_eq!(deleted(&config(None, Some(MINUTE), 1, None), &["r3"], &revisions), ["r1"], "maximum disabled");
}

#[test]
fn the_next_check_is_when_a_kept_revision_turns_stale() {
    let gc = config(None, Some(10 * MINUTE), 0, None);
    let collection = collect(&gc, &[], &[reserve("soon", 8 * MINUTE), reserve("later", MINUTE)], NOW);
    assert!(collection.delete.is_empty());
    assert_eq!(collection.next_check, Some(NOW + 2 * MINUTE));
    let then = collect(&gc, &[], &[reserve("soon", 8 * MINUTE), reserve("later", MINUTE)], NOW + 2 * MINUTE);
    assert_eq!(then.delete, ["soon"]);
    assert_eq!(then.next_check, Some(NOW + 9 * MINUTE));
    assert_eq!(collect(&config(None, None, 0, Some(5)), &[], &[reserve("x", 0)], NOW).next_check, None);
}

#[test]
fn config_gc_parses_with_knatives_defaults_and_rules() {
    let parse = |pairs: &[(&str, &str)]| {
        GcConfig::parse(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>())
    };
    assert_eq!(parse(&[]).ok(), Some(GcConfig::default()));
    assert_eq!(GcConfig::default(), config(Some(48 * HOUR), Some(15 * HOUR), 20, Some(1000)));
    let off = parse(&[
        ("retain-since-create-time", "disabled"),
        ("retain-since-last-active-time", "Disabled"),
        ("max-non-active-revisions", "disabled"),
        ("min-non-active-revisions", "0"),
    ])
    .expect("valid");
    assert!(off.is_disabled());
    assert_eq!(
        parse(&[
            ("retain-since-last-active-time", "1h30m"),
            ("min-non-active-revisions", "2"),
            ("max-non-active-revisions", "10")
        ])
        .ok(),
        Some(config(Some(48 * HOUR), Some(90 * MINUTE), 2, Some(10)))
    );
    for (pairs, key) in [
        (&[("retain-since-create-time", "two days")][..], "retain-since-create-time"),
        (&[("retain-since-last-active-time", "-1h")][..], "retain-since-last-active-time"),
        (&[("min-non-active-revisions", "disabled")][..], "min-non-active-revisions"),
        (&[("max-non-active-revisions", "many")][..], "max-non-active-revisions"),
        (&[("min-non-active-revisions", "5"), ("max-non-active-revisions", "2")][..], "min-non-active-revisions"),
    ] {
        let errors = parse(pairs).expect_err(key);
        assert_eq!(errors[0].key, key, "{errors:?}");
    }
}

fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: "r".into(),
        namespace: "default".into(),
        creation_timestamp: Some(rfc3339(NOW - HOUR)),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

#[test]
fn the_labeler_marks_state_changes_with_their_time() {
    let routes: BTreeSet<String> = ["hello".to_string()].into();
    let none = BTreeSet::new();
    let new = meta(&[], &[]);
    let pending = routing_meta(&new, &none, NOW).expect("a new revision is marked pending");
    assert_eq!(
        (pending.state, pending.modified.as_deref()),
        (RoutingState::Pending, Some(rfc3339(NOW - HOUR).as_str()))
    );
    let active = routing_meta(&new, &routes, NOW).expect("routed");
    assert_eq!(
        (active.state, active.modified.clone(), active.routes.as_str()),
        (RoutingState::Active, Some(rfc3339(NOW)), "hello")
    );

    let mut m = new.clone();
    active.write(&mut m);
    assert_eq!(routing_meta(&m, &routes, NOW + 10), None, "still routed: nothing to write");
    let reserve = routing_meta(&m, &none, NOW + 10).expect("no longer routed");
    assert_eq!(
        (reserve.state, reserve.modified.clone(), reserve.routes.as_str()),
        (RoutingState::Reserve, Some(rfc3339(NOW + 10)), "")
    );
    reserve.write(&mut m);
    assert_eq!(m.labels.get(ROUTING_STATE_LABEL).map(String::as_str), Some("reserve"));
    assert!(!m.annotations.contains_key(ROUTES_ANNOTATION));
    assert_eq!(routing_meta(&m, &none, NOW + 20), None, "reserve stays reserve, its stamp unchanged");

    let both: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
    let mut m2 = meta(&[(ROUTING_STATE_LABEL, "active")], &[(ROUTES_ANNOTATION, "a")]);
    let more = routing_meta(&m2, &both, NOW).expect("a second route");
    assert_eq!((more.state, more.modified.clone(), more.routes.as_str()), (RoutingState::Active, None, "a,b"));
    more.write(&mut m2);
    assert!(!m2.annotations.contains_key(ROUTING_STATE_MODIFIED_ANNOTATION), "the state did not change");
}

#[test]
fn rfc3339_reads_what_it_writes() {
    for secs in [0, 951_782_400, NOW, 4_102_444_800] {
        assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs));
    }
    assert_eq!(parse_rfc3339("2027-01-15T08:00:00.123Z"), parse_rfc3339("2027-01-15T08:00:00Z"));
    assert_eq!(parse_rfc3339("2027-01-15T10:00:00+02:00"), parse_rfc3339("2027-01-15T08:00:00Z"));
    assert_eq!(parse_rfc3339("yesterday"), None);
    assert_eq!(parse_rfc3339("2027-13-01T00:00:00Z"), None);
}

const SERVICE: &str = "
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello}
spec:
  template:
    metadata: {annotations: {revgate.dev/endpoints: \"127.0.0.1:9\", x: \"VERSION\"}}
    spec: {containers: [{image: hello}]}
";

const GC_NOW: &str = "
apiVersion: v1
kind: ConfigMap
metadata: {name: config-gc, namespace: knative-serving}
data:
  retain-since-create-time: disabled
  retain-since-last-active-time: 10s
  min-non-active-revisions: \"0\"
  max-non-active-revisions: disabled
";

fn apply(world: &World, text: &str, at: u64) -> World {
    let docs = parse_documents("test.yaml", text).expect("parses");
    world.apply(&docs, at).expect("applies").0
}

/// Marks routing states from the world's own plan, as the control plane does after every change.
fn settle(world: &World, at: u64) -> World {
    let plan = world.plan(&crate::Observed::default());
    world.with_routing_states(&plan, at).unwrap_or_else(|| world.clone())
}

#[test]
fn a_world_collects_revisions_routed_no_longer() {
    let mut world = apply(&World::default(), GC_NOW, NOW);
    for (version, at) in [("1", NOW), ("2", NOW + 1), ("3", NOW + 2)] {
        world = settle(&apply(&world, &SERVICE.replace("VERSION", version), at), at);
    }
    let key = |n: u32| ObjectKey::new("default", format!("hello-0000{n}"));
    let state = |w: &World, n: u32| RoutingState::of(&w.revisions[&key(n)].metadata.labels);
    assert_eq!(state(&world, 3), RoutingState::Active);
    assert_eq!(state(&world, 1), RoutingState::Reserve);
    let plan = world.plan(&crate::Observed::default());
    let (none_yet, next) = world.collectable_revisions(&plan, NOW + 5);
    assert!(none_yet.is_empty());
    assert_eq!(next, Some(NOW + 1 + 10), "revision 1 went reserve when 2 was routed");
    let (due, _) = world.collectable_revisions(&plan, NOW + 12);
    assert_eq!(due, [key(1), key(2)]);
    let (after, changes) = world.without_revisions(&due);
    assert_eq!(
        changes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["revision.serving.knative.dev/hello-00001 deleted", "revision.serving.knative.dev/hello-00002 deleted",]
    );
    assert_eq!(after.revisions.len(), 1);
    assert!(after.collectable_revisions(&plan, NOW + 100).0.is_empty(), "the routed latest revision stays");
}

#[test]
fn a_pinned_or_preserved_revision_stays() {
    let mut world = apply(&World::default(), GC_NOW, NOW);
    world = settle(&apply(&world, &SERVICE.replace("VERSION", "1"), NOW), NOW);
    let preserved = SERVICE.replace("x: \"VERSION\"", "x: \"2\", serving.knative.dev/no-gc: \"true\"");
    world = settle(&apply(&world, &preserved, NOW + 1), NOW + 1);
    let pinned = format!(
        "{}\n  traffic:\n  - {{latestRevision: true, percent: 100}}\n  - {{revisionName: hello-00001, tag: old, percent: 0}}\n",
        SERVICE.replace("VERSION", "3").trim_end()
    );
    world = settle(&apply(&world, &pinned, NOW + 2), NOW + 2);
    let plan = world.plan(&crate::Observed::default());
    let (due, _) = world.collectable_revisions(&plan, NOW + 1000);
    assert!(due.is_empty(), "tagged hello-00001 and no-gc hello-00002 stay: {due:?}");
    // The named-template comparison ignores what the labeler wrote.
    assert!(crate::gc::same_but_routing(&world.revisions[&ObjectKey::new("default", "hello-00001")].metadata, &{
        let mut m = world.revisions[&ObjectKey::new("default", "hello-00001")].metadata.clone();
        m.annotations.remove(ROUTING_STATE_MODIFIED_ANNOTATION);
        m
    }));
}

/// Runs the collector as the control plane does: a pass, the marked world
/// without what it collects, then the basis for the next pass.
fn pass(collector: &mut Collector, world: &World, now: u64) -> (World, Vec<ObjectKey>) {
    let world = Arc::new(world.clone());
    let plan = Arc::new(world.plan(&crate::Observed::default()));
    let Pass { marked, delete } = collector.pass(&world, &plan, now);
    let (next, _) = marked.as_ref().unwrap_or(&world).without_revisions(&delete);
    let next = Arc::new(next);
    collector.settle(next.clone(), Arc::new(next.plan(&crate::Observed::default())));
    (next.as_ref().clone(), delete)
}

fn states(world: &World) -> Vec<(String, &'static str, String)> {
    world
        .revisions
        .values()
        .map(|r| {
            let routes = r.metadata.annotations.get(ROUTES_ANNOTATION).cloned().unwrap_or_default();
            (r.metadata.name.clone(), RoutingState::of(&r.metadata.labels).as_str(), routes)
        })
        .collect()
}

/// A pass of `collector` over `world` and one of a fresh collector (which
/// looks at everything) over `full`, which must decide the same; the
/// worlds each leaves.
fn pass_beside_full(collector: &mut Collector, world: &World, full: &World, now: u64) -> (World, World) {
    let (next, deleted) = pass(collector, world, now);
    let (full_next, full_deleted) = pass(&mut Collector::default(), full, now);
    assert_eq!(deleted, full_deleted, "deletions at {now}");
    assert_eq!(states(&next), states(&full_next), "routing states at {now}");
    (next, full_next)
}

/// Passes after each change look only at what changed, and decide what a
/// pass over everything decides: the same routing states, the same
/// deletions, at the same times.
#[test]
fn incremental_passes_decide_as_full_ones() {
    let other = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: other}\nspec:\n  template:\n    metadata: {annotations: {revgate.dev/endpoints: \"127.0.0.1:9\"}}\n    spec: {containers: [{image: other}]}\n";
    let pinned = |version: &str, tag_target: &str| {
        format!(
            "{}\n  traffic:\n  - {{latestRevision: true, percent: 100}}\n  - {{revisionName: {tag_target}, tag: old, percent: 0}}\n",
            SERVICE.replace("VERSION", version).trim_end()
        )
    };
    let steps: Vec<(String, u64)> = vec![
        (GC_NOW.to_string(), NOW),
        (other.to_string(), NOW),
        (SERVICE.replace("VERSION", "1"), NOW),
        (SERVICE.replace("VERSION", "2"), NOW + 1),
        (pinned("3", "hello-00001"), NOW + 2),
        (SERVICE.replace("VERSION", "4"), NOW + 3),
        (pinned("4", "hello-00004"), NOW + 30),
    ];
    let mut world = World::default();
    let mut collector = Collector::default();
    let mut full = World::default();
    for (text, at) in steps {
        world = apply(&world, &text, at);
        full = apply(&full, &text, at);
        for now in [at, at + 5, at + 11] {
            (world, full) = pass_beside_full(&mut collector, &world, &full, now);
        }
    }
    let kept: Vec<String> = world.revisions.values().map(|r| r.metadata.name.clone()).collect();
    assert_eq!(kept, ["hello-00004", "other-00001"], "everything no longer routed went");
}

#[test]
fn the_collector_looks_again_when_a_revision_turns_stale() {
    let mut collector = Collector::default();
    let mut world = apply(&World::default(), GC_NOW, NOW);
    world = apply(&world, &SERVICE.replace("VERSION", "1"), NOW);
    world = pass(&mut collector, &world, NOW).0;
    world = apply(&world, &SERVICE.replace("VERSION", "2"), NOW + 1);
    world = pass(&mut collector, &world, NOW + 1).0;
    assert_eq!(collector.next_check(), Some(NOW + 11), "hello-00001 left the traffic at NOW + 1");
    let (world, deleted) = pass(&mut collector, &world, NOW + 11);
    assert_eq!(deleted, [ObjectKey::new("default", "hello-00001")]);
    assert_eq!(collector.next_check(), None);
    assert_eq!(world.revisions.len(), 1);
}

/// A rollout serves the previous revision beside the new one while the
/// Route's own traffic names only the latest: the split served keeps it.
#[test]
fn a_rollouts_previous_revision_stays_while_it_is_served() {
    let mut world = apply(&World::default(), GC_NOW, NOW);
    world = settle(&apply(&world, &SERVICE.replace("VERSION", "1"), NOW), NOW);
    world = apply(&world, &SERVICE.replace("VERSION", "2"), NOW + 1);
    let mut plan = world.plan(&crate::Observed::default());
    let route = Arc::make_mut(&mut plan.routes[0]);
    let previous = crate::plan::Split { revision: ObjectKey::new("default", "hello-00001"), percent: 90 };
    route.splits =
        vec![previous, crate::plan::Split { revision: ObjectKey::new("default", "hello-00002"), percent: 10 }];
    let marked = world.with_routing_states(&plan, NOW + 1).unwrap_or(world);
    let previous = &marked.revisions[&ObjectKey::new("default", "hello-00001")];
    assert_eq!(RoutingState::of(&previous.metadata.labels), RoutingState::Active);
    assert!(marked.collectable_revisions(&plan, NOW + 1000).0.is_empty(), "served revisions stay");
    let mut collector = Collector::default();
    let pass = collector.pass(&Arc::new(marked), &Arc::new(plan), NOW + 1000);
    assert!(pass.delete.is_empty(), "{:?}", pass.delete);
}

/// Several changes between two passes (they came together while the owner
/// was busy) are decided as a pass over everything decides them. Like
/// Knative's labeler, which marks what a Route serves when it reconciles,
/// a pass marks what is served at that moment: revisions created and
/// superseded between two passes were never seen routed, stay `pending`,
/// and are not collected.
#[test]
fn a_pass_after_several_changes_decides_as_a_full_one() {
    let pinned = |version: &str| {
        format!(
            "{}\n  traffic:\n  - {{latestRevision: true, percent: 100}}\n  - {{revisionName: hello-00001, tag: old, percent: 0}}\n",
            SERVICE.replace("VERSION", version).trim_end()
        )
    };
    let mut world = apply(&World::default(), GC_NOW, NOW);
    let mut collector = Collector::default();
    world = pass(&mut collector, &world, NOW).0;
    for (version, at) in [("1", NOW), ("2", NOW + 1), ("3", NOW + 2)] {
        world = apply(&world, &pinned(version), at);
    }
    let mut full = world.clone();
    for now in [NOW + 3, NOW + 13, NOW + 14] {
        world = apply(&world, &pinned("4"), now);
        full = apply(&full, &pinned("4"), now);
        (world, full) = pass_beside_full(&mut collector, &world, &full, now);
    }
    let kept: Vec<String> = world.revisions.values().map(|r| r.metadata.name.clone()).collect();
    assert_eq!(kept, ["hello-00001", "hello-00002", "hello-00003", "hello-00004"]);
    let state = |name: &str| RoutingState::of(&world.revisions[&ObjectKey::new("default", name)].metadata.labels);
    assert_eq!(state("hello-00002"), RoutingState::Pending, "never seen routed");
    assert_eq!(state("hello-00001"), RoutingState::Active, "tagged");
}
