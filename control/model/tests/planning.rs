//! Incremental planning: a plan built with a memo of the last one equals a
//! plan built from scratch, and shares every entry a change left alone.

mod common;

use std::sync::Arc;

use common::*;
use revgate_model::{ObjectKey, PlanMemo, World};

fn split_service(name: &str, image: &str, first_percent: u32) -> String {
    format!(
        "{}  traffic:\n  - revisionName: {name}-00001\n    percent: {first_percent}\n  - latestRevision: true\n    percent: {}\n    tag: candidate\n",
        service(name, image),
        100 - first_percent
    )
}

/// Three Services, each with two revisions split 50/50.
fn world() -> World {
    let mut world = World::default();
    for name in ["a", "b", "c"] {
        world = apply(&world, &service(name, "img:1")).0;
        world = apply(&world, &split_service(name, "img:2", 50)).0;
    }
    world
}

fn route<'a>(plan: &'a revgate_model::GatewayPlan, name: &str) -> &'a Arc<revgate_model::plan::RoutePlan> {
    plan.routes.iter().find(|r| r.key.name == name).unwrap_or_else(|| panic!("no route {name}"))
}

#[test]
fn an_apply_keeps_the_objects_it_leaves_equal_as_the_same_allocation() {
    let before = world();
    let (after, _) = apply(&before, &split_service("b", "img:2", 30));
    for name in ["a", "c"] {
        let key = ObjectKey::new("default", name);
        assert!(Arc::ptr_eq(&before.services[&key], &after.services[&key]), "service {name}");
        assert!(Arc::ptr_eq(&before.routes[&key], &after.routes[&key]), "route {name}");
        assert!(Arc::ptr_eq(&before.configurations[&key], &after.configurations[&key]), "configuration {name}");
    }
    let b = ObjectKey::new("default", "b");
    assert!(!Arc::ptr_eq(&before.routes[&b], &after.routes[&b]), "the changed route is a new object");
    // Re-applying the same manifest changes nothing, not even allocations.
    let (again, _) = apply(&after, &split_service("b", "img:2", 30));
    assert!(Arc::ptr_eq(&after.routes[&b], &again.routes[&b]));
}

#[test]
fn a_memoized_plan_equals_a_fresh_one_and_shares_what_did_not_change() {
    let mut memo = PlanMemo::default();
    let before = world();
    let first = before.plan_with(&ready(), &mut memo);
    assert_eq!(first, before.plan(&ready()));

    // (case, manifest applied over `before`, routes expected rebuilt)
    let cases: [(&str, String, &[&str]); 4] = [
        ("one split changes", split_service("b", "img:2", 30), &["b"]),
        ("a new revision moves latestRevision", split_service("c", "img:3", 50), &["c"]),
        ("nothing changes", split_service("a", "img:2", 50), &[]),
        ("the domain changes every host", config_map("config-domain", "  example.org: \"\"\n"), &["a", "b", "c"]),
    ];
    for (case, manifest, rebuilt) in cases {
        let mut memo = PlanMemo::default();
        let first = before.plan_with(&ready(), &mut memo);
        let (after, _) = apply(&before, &manifest);
        let next = after.plan_with(&ready(), &mut memo);
        assert_eq!(next, after.plan(&ready()), "{case}: the memo changes nothing in the plan");
        for name in ["a", "b", "c"] {
            let shared = Arc::ptr_eq(route(&first, name), route(&next, name));
            assert_eq!(shared, !rebuilt.contains(&name), "{case}: route {name} shared");
        }
    }
}

#[test]
fn a_memoized_plan_follows_deletes_and_revisions_that_leave() {
    let mut memo = PlanMemo::default();
    let before = world();
    before.plan_with(&ready(), &mut memo);
    let (after, _) = World::delete(
        &before,
        &references("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: b\n"),
    )
    .expect("delete");
    let next = after.plan_with(&ready(), &mut memo);
    assert_eq!(next, after.plan(&ready()));
    assert!(next.routes.iter().all(|r| r.key.name != "b"));
    assert!(next.revisions.iter().all(|r| !r.key.name.starts_with("b-")));
}

#[test]
fn a_memoized_plan_follows_what_its_routes_name_appearing_and_readiness_changing() {
    use revgate_model::{Observed, RevisionReadiness};
    let route = "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata:\n  name: r\nspec:\n  traffic:\n  - revisionName: d-special\n    percent: 100\n";
    let named = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: d\nspec:\n  template:\n    metadata:\n      name: d-special\n    spec:\n      containers:\n      - image: img:1\n";
    let not_ready = |name: &str| Observed {
        revisions: [(
            ObjectKey::new("default", name),
            RevisionReadiness::NotReady { reason: "ExitCode1".into(), message: "exit status 1".into() },
        )]
        .into(),
        ..Observed::default()
    };
    // (step, manifest applied, readiness observed)
    let steps: [(&str, Option<&str>, Observed); 5] = [
        ("a Route naming a revision that does not exist yet", Some(route), ready()),
        ("the revision appears", Some(named), ready()),
        ("a new latest revision that is not ready", Some(&split_service("a", "img:3", 50)), not_ready("a-00003")),
        ("it becomes ready", None, ready()),
        ("the named revision fails", None, not_ready("d-special")),
    ];
    let mut memo = PlanMemo::default();
    let mut world = world();
    for (step, manifest, observed) in steps {
        if let Some(manifest) = manifest {
            world = apply(&world, manifest).0;
        }
        assert_eq!(world.plan_with(&observed, &mut memo), world.plan(&observed), "{step}");
    }
}

/// A Service `name` whose template's spec starts with `spec` (indented lines).
fn timed_service(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n{spec}      containers:\n      - image: img:1\n"
    )
}

#[test]
fn each_revision_carries_knatives_three_timeouts_to_the_gateway() {
    let mut world = World::default();
    let explicit = "      timeoutSeconds: 20\n      responseStartTimeoutSeconds: 5\n      idleTimeoutSeconds: 7\n";
    world = apply(&world, &timed_service("explicit", explicit)).0;
    world = apply(&world, &timed_service("short", "      timeoutSeconds: 2\n")).0;
    world = apply(&world, &timed_service("defaults", "")).0;
    let plan = world.plan(&ready());
    let timeouts = |name: &str| {
        let backend = plan.revisions.iter().find(|r| r.key.name == name).expect("revision");
        (backend.timeout_seconds, backend.response_start_timeout_seconds, backend.idle_timeout_seconds)
    };
    assert_eq!(timeouts("explicit-00001"), (20, 5, 7));
    assert_eq!(timeouts("short-00001"), (2, 2, 0), "the response-start default is at most timeoutSeconds");
    assert_eq!(timeouts("defaults-00001"), (300, 300, 0), "config-defaults: 300, 300 and none");
}
