use std::collections::BTreeMap;
use std::time::Duration;

use revgate_model::plan::ObjectKey;
use revgate_model::world::{IngressState, Observed};
use revgate_model::{World, parse_documents};
use revgate_xds::server::{GatewayStatus, Nack, NodeStatus, TypeStatus};

use super::*;
use crate::activation::{Activation, RevisionActivity};
use crate::dashboard::history::History;
use crate::metrics::RevisionTotals;

use crate::testing::HELLO_TAGGED_SPLIT as SPLIT;

fn world() -> World {
    let v1 = parse_documents("v1.yaml", crate::testing::HELLO_SERVICE).expect("v1");
    let (world, _) = World::default().apply(&v1, 1).expect("v1 applies");
    let v2 = parse_documents("split.yaml", SPLIT).expect("split");
    let (world, _) = world.apply(&v2, 2).expect("the split applies");
    world
}

fn programmed(world: &World) -> Observed {
    let mut observed = Observed::default();
    for key in world.routes.keys() {
        observed.ingress.insert(key.clone(), IngressState::Ready);
    }
    observed
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("default", name)
}

/// What the feed reads besides the world; empty by default.
#[derive(Default)]
struct Others {
    kpa: BTreeMap<ObjectKey, KpaStatus>,
    instances: BTreeMap<ObjectKey, RevisionState>,
    activity: BTreeMap<ObjectKey, RevisionActivity>,
    gateway: GatewayStatus,
    filters: BTreeMap<String, usize>,
    published: Published,
    rollouts: revgate_model::rollout::Rollouts,
}

/// Builds the feed of `world` with the other inputs given, no history; the
/// views as the dashboard takes them, with any rollout's split.
fn feed_of(world: &World, observed: &Observed, others: Others) -> Feed {
    let routes = crate::rollout::route_views(world, observed, &others.rollouts);
    let inputs = Inputs {
        services: &crate::rollout::service_views(world, observed, &routes),
        routes: &routes,
        revisions: &world.revision_views(observed),
        kpa: &others.kpa,
        instances: &others.instances,
        registrations: &BTreeMap::new(),
        activity: &others.activity,
        gateway: &others.gateway,
        filters: &others.filters,
        published: &others.published,
    };
    let history = History::new(Duration::from_secs(10), Duration::from_secs(2)).since(None);
    build(&inputs, history, 5_000)
}

#[test]
fn a_service_shows_its_split_with_tags_and_their_urls() {
    let world = world();
    let feed = feed_of(&world, &programmed(&world), Others::default());
    let [route] = feed.routes.as_slice() else { panic!("one route: {:?}", feed.routes) };
    assert_eq!((route.namespace.as_str(), route.name.as_str(), route.kind), ("default", "hello", "Service"));
    assert_eq!(route.url.as_deref(), Some("http://hello.default.example.com"));
    assert_eq!(route.latest_created_revision.as_deref(), Some("hello-00002"));
    let split: Vec<_> = route
        .traffic
        .iter()
        .map(|t| (t.revision_name.as_deref(), t.percent, t.tag.as_deref(), t.url.as_deref()))
        .collect();
    assert_eq!(
        split,
        [
            (Some("hello-00001"), 50, Some("current"), Some("http://current-hello.default.example.com")),
            (Some("hello-00002"), 50, Some("candidate"), Some("http://candidate-hello.default.example.com")),
        ]
    );
    assert!(route.rollout.is_none(), "no rollouts yet");
    let percents: Vec<_> = feed.revisions.iter().map(|r| (r.name.as_str(), r.traffic_percent)).collect();
    assert_eq!(percents, [("hello-00001", 50), ("hello-00002", 50)]);
    assert!(feed.revisions.iter().all(|r| r.service.as_deref() == Some("hello")));
}

#[test]
fn a_revision_shows_its_scale_live_figures_and_cold_starts() {
    let world = world();
    let kpa = BTreeMap::from([(
        key("hello-00002"),
        KpaStatus { desired_scale: Some(3), actual_scale: 2, active: "True".into(), ..KpaStatus::default() },
    )]);
    let instances = BTreeMap::from([(key("hello-00002"), RevisionState { desired: 3, ..RevisionState::default() })]);
    let activity = BTreeMap::from([(
        key("hello-00002"),
        RevisionActivity {
            totals: RevisionTotals {
                rps: 20.0,
                requests: 20,
                responses_5xx: 5,
                held: 2,
                p99_ms: 31.0,
                ..RevisionTotals::default()
            },
            activations: 4,
            last_activation: Some(Activation {
                revision: key("hello-00002"),
                node: "gw".into(),
                held: 1,
                at_unix_ms: 4_000,
            }),
        },
    )]);
    let feed = feed_of(&world, &programmed(&world), Others { kpa, instances, activity, ..Others::default() });
    let row = feed.revisions.iter().find(|r| r.name == "hello-00002").expect("hello-00002");
    assert_eq!((row.actual_replicas, row.desired_replicas), (Some(0), Some(3)));
    let kpa = row.kpa.as_ref().expect("KPA");
    assert_eq!((kpa.desired_scale, kpa.actual_scale), (Some(3), 2));
    let live = row.live.as_ref().expect("live figures");
    assert_eq!((live.rps, live.error_rate, live.p99_ms), (20.0, Some(0.25), Some(31.0)));
    assert_eq!((row.held, row.cold_starts, row.last_cold_start_unix_ms), (2, 4, Some(4_000)));
    let quiet = feed.revisions.iter().find(|r| r.name == "hello-00001").expect("hello-00001");
    assert!(quiet.live.is_none() && quiet.kpa.is_none() && quiet.actual_replicas.is_none());
    assert!(quiet.conditions.iter().any(|c| c.type_ == "Ready"), "conditions as in `get revision`");
}

#[test]
fn a_gateway_shows_its_acked_versions_and_envoys_rejection() {
    let world = world();
    let published = Published {
        generation: 7,
        versions: BTreeMap::from([("CDS".into(), "c2".into()), ("RDS".into(), "r2".into())]),
        ..Published::default()
    };
    let acked = |version: &str| TypeStatus { acked_version: Some(version.into()), ..TypeStatus::default() };
    let rejected = TypeStatus {
        nack: Some(Nack {
            version: "r2".into(),
            message: "duplicate domain".into(),
            at: std::time::SystemTime::UNIX_EPOCH,
        }),
        ..acked("r1")
    };
    let gateway = GatewayStatus {
        nodes: BTreeMap::from([(
            "gw".to_owned(),
            NodeStatus {
                connected: true,
                disconnected_at: None,
                api: revgate_xds::server::Api::Delta,
                types: BTreeMap::from([("CDS".into(), acked("c2")), ("RDS".into(), rejected)]),
            },
        )]),
    };
    let filters = BTreeMap::from([("gw".to_owned(), 2)]);
    let feed = feed_of(&world, &programmed(&world), Others { gateway, published, filters, ..Others::default() });
    assert_eq!(feed.generation, 7);
    let [node] = feed.gateways.as_slice() else { panic!("one node: {:?}", feed.gateways) };
    assert_eq!((node.node.as_str(), node.connected, node.api, node.filters_in_sync), ("gw", true, "delta", 2));
    let types: Vec<_> = node
        .types
        .iter()
        .map(|t| {
            (t.type_url.as_str(), t.acked_version.as_deref(), t.current, t.nack.as_ref().map(|n| n.message.as_str()))
        })
        .collect();
    assert_eq!(types, [("CDS", Some("c2"), true, None), ("RDS", Some("r1"), false, Some("duplicate domain"))]);
}

/// The page relies on these names; a rename must be a conscious change.
#[test]
fn the_feed_speaks_the_pages_field_names() {
    let world = world();
    let feed = feed_of(&world, &programmed(&world), Others::default());
    let json = serde_json::to_value(&feed).expect("JSON");
    for field in ["generatedAtUnixMs", "generation", "routes", "revisions", "gateways", "history"] {
        assert!(json.get(field).is_some(), "{field} in {json}");
    }
    let route = &json["routes"][0];
    assert!(route["rollout"].is_null(), "a place for a rollout, empty: {route}");
    assert_eq!(route["traffic"][0]["revisionName"], "hello-00001");
    assert_eq!(route["traffic"][0]["url"], "http://current-hello.default.example.com");
    for field in ["intervalMs", "windowMs", "cursor", "reset", "points"] {
        assert!(json["history"].get(field).is_some(), "history.{field} in {json}");
    }
}

#[test]
fn a_route_in_rollout_shows_the_split_served_and_the_rollout() {
    use revgate_model::rollout::Rollouts;
    use revgate_model::rollout::orchestrator::{goal, step};
    let hello = |image: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\n  namespace: default\n  \
             annotations: {{serving.knative.dev/rollout-duration: 20s}}\nspec:\n  template:\n    spec:\n      \
             containers: [{{image: {image}}}]\n"
        )
    };
    let apply = |world: &World, image: &str| {
        world.apply(&parse_documents("hello.yaml", &hello(image)).expect("parses"), 1).expect("applies").0
    };
    let first = apply(&World::default(), "example.com/hello:1");
    let second = apply(&first, "example.com/hello:2");
    let observed = programmed(&second);
    let route = &second.routes[&key("hello")];
    let before = step(goal(&first, &first.routes[&key("hello")], &observed), None, 20, 1_000);
    let rollouts = Rollouts::from([(key("hello"), step(goal(&second, route, &observed), Some(&before), 20, 2_000))]);

    let feed = feed_of(&second, &observed, Others { rollouts, ..Others::default() });
    let [row] = feed.routes.as_slice() else { panic!("one route: {:?}", feed.routes) };
    let split: Vec<_> = row.traffic.iter().map(|t| (t.revision_name.as_deref(), t.percent)).collect();
    assert_eq!(split, [(Some("hello-00001"), 99), (Some("hello-00002"), 1)], "the split served");
    let rollout = row.rollout.as_ref().expect("the rollout");
    assert!(rollout.summary.contains("1% → hello-00002"), "{}", rollout.summary);
    assert_eq!(rollout.condition.as_ref().map(|c| c.type_.as_str()), Some("Rollout"));
}
