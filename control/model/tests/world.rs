//! The world's behaviour: revisions, re-applies, deletes, hosts, status and plans.

mod common;

use common::*;
use revgate_model::plan::{Endpoint, Split, TagPlan};
use revgate_model::{IngressState, ObjectKey, Observed, OtherKinds, RevisionReadiness, World};

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("default", name)
}

fn revision_names(world: &World) -> Vec<String> {
    world.revisions.keys().map(|k| k.name.clone()).collect()
}

fn condition(conditions: &[revgate_model::meta::Condition], type_: &str) -> (String, Option<String>) {
    let c = revgate_model::meta::condition(conditions, type_).unwrap_or_else(|| panic!("no {type_}"));
    (c.status.clone(), c.reason.clone())
}

fn named_template(name: &str, template_name: &str, image: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    metadata:\n      name: {template_name}\n    spec:\n      containers:\n      - image: {image}\n"
    )
}

#[test]
fn revisions_are_named_by_configuration_generation() {
    let with_traffic = |image: &str| {
        format!("{}  traffic:\n  - latestRevision: true\n    percent: 100\n    tag: now\n", service("hello", image))
    };
    // (step, manifest, changes reported, service generation, configuration generation)
    let steps: Vec<(&str, String, Vec<&str>, i64, i64)> = vec![
        (
            "create",
            service("hello", "img:1"),
            vec!["service.serving.knative.dev/hello created", "revision.serving.knative.dev/hello-00001 created"],
            1,
            1,
        ),
        ("identical", service("hello", "img:1"), vec!["service.serving.knative.dev/hello unchanged"], 1, 1),
        (
            "new image",
            service("hello", "img:2"),
            vec!["service.serving.knative.dev/hello configured", "revision.serving.knative.dev/hello-00002 created"],
            2,
            2,
        ),
        ("traffic only", with_traffic("img:2"), vec!["service.serving.knative.dev/hello configured"], 3, 2),
        (
            "named template",
            named_template("hello", "hello-blue", "img:3"),
            vec!["service.serving.knative.dev/hello configured", "revision.serving.knative.dev/hello-blue created"],
            4,
            3,
        ),
        (
            "unnamed again",
            service("hello", "img:4"),
            vec!["service.serving.knative.dev/hello configured", "revision.serving.knative.dev/hello-00004 created"],
            5,
            4,
        ),
    ];
    let mut world = World::default();
    for (step, yaml, want, service_generation, config_generation) in steps {
        let (next, changes) = apply(&world, &yaml);
        assert_eq!(lines(&changes), want, "{step}");
        assert_eq!(next.services[&key("hello")].metadata.generation, Some(service_generation), "{step}");
        assert_eq!(next.configurations[&key("hello")].metadata.generation, Some(config_generation), "{step}");
        world = next;
    }
    assert_eq!(revision_names(&world), ["hello-00001", "hello-00002", "hello-00004", "hello-blue"]);
    let revision = &world.revisions[&key("hello-00004")];
    assert_eq!(revision.metadata.labels["serving.knative.dev/configuration"], "hello");
    assert_eq!(revision.metadata.labels["serving.knative.dev/configurationGeneration"], "4");
    assert_eq!(revision.metadata.labels["serving.knative.dev/service"], "hello");
    assert_eq!(revision.metadata.owner_references[0].kind, "Configuration");
    assert_eq!(revision.metadata.creation_timestamp.as_deref(), Some("2024-05-01T12:00:00Z"));
    let status = world.service_views(&ready())[0].status.clone().expect("status");
    assert_eq!(status.latest_created_revision_name.as_deref(), Some("hello-00004"));
}

#[test]
fn a_standalone_configuration_numbers_its_own_revisions() {
    let config = |image: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata:\n  name: cfg\n  namespace: team\nspec:\n  template:\n    spec:\n      containers:\n      - image: {image}\n"
        )
    };
    let (world, changes) = apply(&World::default(), &config("a"));
    assert_eq!(
        lines(&changes),
        ["configuration.serving.knative.dev/cfg created", "revision.serving.knative.dev/cfg-00001 created"]
    );
    let (world, changes) = apply(&world, &config("b"));
    assert_eq!(
        lines(&changes),
        ["configuration.serving.knative.dev/cfg configured", "revision.serving.knative.dev/cfg-00002 created"]
    );
    assert!(world.revisions.contains_key(&ObjectKey::new("team", "cfg-00002")));
    assert_eq!(
        world.revisions[&ObjectKey::new("team", "cfg-00002")].metadata.labels.get("serving.knative.dev/service"),
        None
    );
}

#[test]
fn reapplying_is_idempotent_and_metadata_changes_make_no_revision() {
    let (world, _) = apply(&World::default(), &service("hello", "img:1"));
    let (again, changes) = apply(&world, &service("hello", "img:1"));
    assert_eq!(again, world);
    assert_eq!(lines(&changes), ["service.serving.knative.dev/hello unchanged"]);

    // Spelling out the defaults changes nothing either: comparison is after defaulting.
    let explicit = service("hello", "img:1").replace(
        "      containers:\n      - image: img:1\n",
        "      containerConcurrency: 0\n      timeoutSeconds: 300\n      containers:\n      - image: img:1\n        name: user-container\n",
    );
    let (again, changes) =
        apply(&world, &format!("{explicit}  traffic:\n  - latestRevision: true\n    percent: 100\n"));
    assert_eq!(lines(&changes), ["service.serving.knative.dev/hello unchanged"]);
    assert_eq!(again, world);

    let labelled = service("hello", "img:1").replace("  name: hello\n", "  name: hello\n  labels:\n    team: blue\n");
    let (next, changes) = apply(&world, &labelled);
    assert_eq!(lines(&changes), ["service.serving.knative.dev/hello configured"]);
    assert_eq!(next.services[&key("hello")].metadata.generation, Some(1));
    assert_eq!(next.revisions.len(), 1);
    assert_eq!(next.routes[&key("hello")].metadata.labels["team"], "blue", "labels reach the children");
}

#[test]
fn two_documents_for_one_service_make_two_revisions() {
    let yaml = format!("{}---\n{}", service("hello", "img:1"), service("hello", "img:2"));
    let (world, changes) = apply(&World::default(), &yaml);
    assert_eq!(
        lines(&changes),
        [
            "service.serving.knative.dev/hello created",
            "revision.serving.knative.dev/hello-00001 created",
            "service.serving.knative.dev/hello configured",
            "revision.serving.knative.dev/hello-00002 created",
        ]
    );
    let plan = world.plan(&ready());
    assert_eq!(plan.routes[0].splits, [Split { revision: key("hello-00002"), percent: 100 }]);
    assert_eq!(plan.revisions.len(), 2);
}

#[test]
fn deleting_a_service_removes_its_children() {
    let yaml = format!("{}---\n{}---\n{}", service("hello", "img:1"), service("hello", "img:2"), service("other", "x"));
    let (world, _) = apply(&World::default(), &yaml);
    let (after, changes) = world.delete(&references(&service("hello", "ignored"))).expect("deletes");
    assert_eq!(
        lines(&changes),
        [
            "service.serving.knative.dev/hello deleted",
            "configuration.serving.knative.dev/hello deleted",
            "revision.serving.knative.dev/hello-00001 deleted",
            "revision.serving.knative.dev/hello-00002 deleted",
            "route.serving.knative.dev/hello deleted",
        ]
    );
    assert_eq!(after.services.keys().collect::<Vec<_>>(), [&key("other")]);
    assert_eq!(revision_names(&after), ["other-00001"]);
    assert_eq!(after.routes.len(), 1);
    assert_eq!(after.configurations.len(), 1);

    // A Service's children are not deleted on their own.
    let route = "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata: {name: other}\nspec: {}\n";
    let err = after.delete(&references(route)).expect_err("owned");
    assert_eq!(
        err.to_string(),
        "test.yaml: route/default/other: owned by service \"other\"; change or delete the Service instead"
    );
}

#[test]
fn deleting_a_configuration_removes_its_revisions() {
    let yaml = "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata: {name: cfg}\nspec:\n  template:\n    spec:\n      containers: [{image: a}]\n---\napiVersion: serving.knative.dev/v1\nkind: Route\nmetadata: {name: web}\nspec:\n  traffic: [{configurationName: cfg, percent: 100}]\n";
    let (world, _) = apply(&World::default(), yaml);
    let config_only: String = yaml.split("---\n").next().unwrap_or_default().to_string();
    let (after, changes) = world.delete(&references(&config_only)).expect("deletes");
    assert_eq!(
        lines(&changes),
        ["configuration.serving.knative.dev/cfg deleted", "revision.serving.knative.dev/cfg-00001 deleted"]
    );
    // The route stays, waiting for its configuration to come back.
    let status = after.route_views(&ready())[0].status.clone().expect("status");
    assert_eq!(condition(&status.conditions, "Ready"), ("False".into(), Some("ConfigurationMissing".into())));
    assert!(after.plan(&ready()).routes.is_empty());
}

#[test]
fn hosts_follow_the_domain_and_tag_templates() {
    let tagged = |name: &str, labels: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\n  annotations:\n    team: blue\n{labels}spec:\n  template:\n    spec:\n      containers: [{{image: x}}]\n  traffic:\n  - latestRevision: true\n    percent: 100\n    tag: canary\n"
        )
    };
    let base = format!(
        "{}---\n{}---\n{}",
        tagged("web", ""),
        tagged("internal", "  labels:\n    networking.knative.dev/visibility: cluster-local\n"),
        tagged("charity", "  labels:\n    app: nonprofit\n"),
    );
    // (route, main host, tag hosts)
    type Hosts = Vec<(String, String, Vec<String>)>;
    let hosts = |world: &World| -> Hosts {
        world
            .plan(&ready())
            .routes
            .iter()
            .map(|r| (r.key.name.clone(), r.host.clone(), r.tags.iter().map(|t| t.host.clone()).collect()))
            .collect()
    };
    let h = |name: &str, host: &str, tag: &str| (name.to_string(), host.to_string(), vec![tag.to_string()]);

    // (case, config maps applied before the services, expected hosts)
    let cases: Vec<(&str, String, Hosts)> = vec![
        (
            "defaults",
            String::new(),
            vec![
                h("charity", "charity.shop.example.com", "canary-charity.shop.example.com"),
                h("internal", "internal.shop.svc.cluster.local", "canary-internal.shop.svc.cluster.local"),
                h("web", "web.shop.example.com", "canary-web.shop.example.com"),
            ],
        ),
        (
            "custom domain with a selector",
            config_map(
                "config-domain",
                "  example.org: \"\"\n  nonprofit.org: |\n    selector:\n      app: nonprofit\n",
            ) + "---\n",
            vec![
                h("charity", "charity.shop.nonprofit.org", "canary-charity.shop.nonprofit.org"),
                h("internal", "internal.shop.svc.cluster.local", "canary-internal.shop.svc.cluster.local"),
                h("web", "web.shop.example.org", "canary-web.shop.example.org"),
            ],
        ),
        (
            "custom templates",
            config_map(
                "config-network",
                "  domain-template: \"{{.Name}}-{{.Namespace}}.{{index .Annotations \\\"team\\\"}}.{{.Domain}}\"\n  tag-template: \"{{.Name}}--{{.Tag}}\"\n",
            ) + "---\n",
            vec![
                h("charity", "charity-shop.blue.example.com", "charity--canary-shop.blue.example.com"),
                h("internal", "internal.shop.svc.cluster.local", "internal--canary.shop.svc.cluster.local"),
                h("web", "web-shop.blue.example.com", "web--canary-shop.blue.example.com"),
            ],
        ),
    ];
    for (case, maps, want) in cases {
        let (world, _) = apply(&World::default(), &format!("{maps}{base}"));
        assert_eq!(hosts(&world), want, "{case}");
        let status = world.service_views(&ready()).into_iter().find(|s| s.metadata.name == "web").expect("web");
        let status = status.status.expect("status");
        assert_eq!(status.url.as_deref(), Some(format!("http://{}", want[2].1).as_str()), "{case}");
        assert_eq!(status.address.map(|a| a.url).as_deref(), Some("http://web.shop.svc.cluster.local"), "{case}");
    }

    // Settings changes apply to routes that already exist.
    let (world, _) = apply(&World::default(), &base);
    let (world, changes) = apply(&world, &config_map("config-domain", "  example.net: \"\"\n"));
    assert_eq!(lines(&changes), ["configmap/config-domain created"]);
    assert_eq!(hosts(&world)[2].1, "web.shop.example.net");
}

#[test]
fn tag_header_routing_follows_config_features() {
    let (world, _) = apply(&World::default(), &service("hello", "x"));
    assert!(!world.plan(&ready()).tag_header_routing, "off by default");
    for (value, want) in [("Enabled", true), ("enabled", true), ("Disabled", false)] {
        let (world, _) =
            apply(&world, &config_map("config-features", &format!("  tag-header-based-routing: {value}\n")));
        assert_eq!(world.plan(&ready()).tag_header_routing, want, "{value}");
        assert_eq!(world.settings().features.tag_header_based_routing, want);
    }
    // ConfigMaps elsewhere are accepted and ignored.
    let elsewhere = config_map("config-features", "  tag-header-based-routing: Enabled\n")
        .replace("namespace: knative-serving", "namespace: default");
    let (world, _) = apply(&world, &elsewhere);
    assert!(!world.plan(&ready()).tag_header_routing);
}

#[test]
fn status_reasons_follow_what_is_missing_or_observed() {
    let route_to = |traffic: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata: {{name: web}}\nspec:\n  traffic:\n{traffic}"
        )
    };
    let config = "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata: {name: cfg}\nspec:\n  template:\n    spec:\n      containers: [{image: a}]\n";
    let not_ready = |name: &str| {
        let mut observed = Observed::default();
        observed.revisions.insert(
            key(name),
            RevisionReadiness::NotReady { reason: "ImagePullBackOff".into(), message: "image not found".into() },
        );
        observed
    };
    let with_ingress = |state: IngressState| {
        let mut observed = Observed::default();
        observed.ingress.insert(key("web"), state);
        observed
    };

    // (case, manifests, observed, AllTrafficAssigned, IngressReady, Ready)
    type Cond = (&'static str, Option<&'static str>);
    let cases: Vec<(&str, String, Observed, Cond, Cond, Cond)> = vec![
        (
            "configuration missing",
            route_to("  - configurationName: cfg\n    percent: 100\n"),
            Observed::default(),
            ("False", Some("ConfigurationMissing")),
            ("Unknown", Some("IngressNotConfigured")),
            ("False", Some("ConfigurationMissing")),
        ),
        (
            "revision missing",
            route_to("  - revisionName: cfg-00009\n    percent: 100\n"),
            Observed::default(),
            ("False", Some("RevisionMissing")),
            ("Unknown", Some("IngressNotConfigured")),
            ("False", Some("RevisionMissing")),
        ),
        (
            "no ready revision yet",
            format!("{config}---\n{}", route_to("  - configurationName: cfg\n    percent: 100\n")),
            not_ready("cfg-00001"),
            ("Unknown", Some("RevisionMissing")),
            ("Unknown", Some("IngressNotConfigured")),
            ("Unknown", Some("RevisionMissing")),
        ),
        (
            "gateway not programmed yet",
            format!("{config}---\n{}", route_to("  - configurationName: cfg\n    percent: 100\n")),
            Observed::default(),
            ("True", None),
            ("Unknown", Some("IngressNotConfigured")),
            ("Unknown", Some("IngressNotConfigured")),
        ),
        (
            "gateway rejected",
            format!("{config}---\n{}", route_to("  - configurationName: cfg\n    percent: 100\n")),
            with_ingress(IngressState::Rejected { message: "duplicate domain".into() }),
            ("True", None),
            ("False", Some("GatewayRejected")),
            ("False", Some("GatewayRejected")),
        ),
        (
            "served",
            format!("{config}---\n{}", route_to("  - configurationName: cfg\n    percent: 100\n")),
            with_ingress(IngressState::Ready),
            ("True", None),
            ("True", None),
            ("True", None),
        ),
    ];
    for (case, yaml, observed, assigned, ingress, ready_) in cases {
        let (world, _) = apply(&World::default(), &yaml);
        let route = world.route_views(&observed).into_iter().find(|r| r.metadata.name == "web").expect("route");
        let conditions = route.status.expect("status").conditions;
        let own = |c: Cond| (c.0.to_string(), c.1.map(str::to_string));
        assert_eq!(condition(&conditions, "AllTrafficAssigned"), own(assigned), "{case}");
        assert_eq!(condition(&conditions, "IngressReady"), own(ingress), "{case}");
        assert_eq!(condition(&conditions, "Ready"), own(ready_), "{case}");
    }
}

#[test]
fn a_failing_revision_keeps_traffic_on_the_last_ready_one() {
    let yaml = format!("{}---\n{}", service("hello", "img:1"), service("hello", "img:2"));
    let (world, _) = apply(&World::default(), &yaml);
    let mut observed = Observed::default();
    observed.revisions.insert(
        key("hello-00002"),
        RevisionReadiness::NotReady { reason: "ExitCode1".into(), message: "container exited".into() },
    );
    observed.ingress.insert(key("hello"), IngressState::Ready);

    let service = &world.service_views(&observed)[0];
    let status = service.status.as_ref().expect("status");
    assert_eq!(status.latest_created_revision_name.as_deref(), Some("hello-00002"));
    assert_eq!(status.latest_ready_revision_name.as_deref(), Some("hello-00001"));
    assert_eq!(condition(&status.conditions, "ConfigurationsReady"), ("False".into(), Some("RevisionFailed".into())));
    assert_eq!(condition(&status.conditions, "RoutesReady"), ("True".into(), None));
    assert_eq!(condition(&status.conditions, "Ready"), ("False".into(), Some("RevisionFailed".into())));
    assert_eq!(status.traffic[0].revision_name.as_deref(), Some("hello-00001"));
    assert_eq!(world.plan(&observed).routes[0].splits, [Split { revision: key("hello-00001"), percent: 100 }]);

    let revision = world.revision_views(&observed).into_iter().find(|r| r.metadata.name == "hello-00002").expect("rev");
    let conditions = revision.status.expect("status").conditions;
    assert_eq!(condition(&conditions, "Ready"), ("False".into(), Some("ExitCode1".into())));
    assert_eq!(condition(&conditions, "ContainerHealthy"), ("False".into(), Some("ExitCode1".into())));
}

/// A revision whose workload is still being deployed is not failing: its
/// conditions, its Configuration's `Ready` and its Service's
/// `ConfigurationsReady` and `Ready` are Unknown with Knative's `Deploying`,
/// while traffic stays on the last ready revision.
#[test]
fn a_deploying_revision_is_unknown_not_failed() {
    let yaml = format!("{}---\n{}", service("hello", "img:1"), service("hello", "img:2"));
    let (world, _) = apply(&World::default(), &yaml);
    let mut observed = Observed::default();
    observed
        .revisions
        .insert(key("hello-00002"), RevisionReadiness::Deploying { message: "waiting for the pods".into() });
    observed.ingress.insert(key("hello"), IngressState::Ready);
    let deploying = || ("Unknown".to_string(), Some("Deploying".to_string()));

    let revision = world.revision_views(&observed).into_iter().find(|r| r.metadata.name == "hello-00002").expect("rev");
    let conditions = revision.status.expect("status").conditions;
    for type_ in ["ContainerHealthy", "ResourcesAvailable", "Ready"] {
        assert_eq!(condition(&conditions, type_), deploying(), "{type_}");
    }
    assert!(conditions.iter().all(|c| c.message.as_deref() == Some("waiting for the pods")), "{conditions:?}");

    let configuration = &world.configuration_views(&observed)[0];
    let conditions = &configuration.status.as_ref().expect("status").conditions;
    assert_eq!(condition(conditions, "Ready"), deploying());
    let message = revgate_model::meta::condition(conditions, "Ready").and_then(|c| c.message.clone());
    assert_eq!(message.as_deref(), Some("revision \"hello-00002\" is not ready: Deploying: waiting for the pods"));

    let service = &world.service_views(&observed)[0];
    let status = service.status.as_ref().expect("status");
    assert_eq!(condition(&status.conditions, "ConfigurationsReady"), deploying());
    assert_eq!(condition(&status.conditions, "RoutesReady"), ("True".into(), None));
    assert_eq!(condition(&status.conditions, "Ready"), deploying());
    assert_eq!(status.latest_ready_revision_name.as_deref(), Some("hello-00001"));
    assert_eq!(world.plan(&observed).routes[0].splits, [Split { revision: key("hello-00001"), percent: 100 }]);
}

#[test]
fn plans_merge_splits_and_list_tags_and_backends() {
    let yaml = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: shop}\nspec:\n  template:\n    metadata:\n      name: shop-v2\n      annotations:\n        revgate.dev/endpoints: \"127.0.0.1:8081,127.0.0.1:8082\"\n    spec:\n      containerConcurrency: 5\n      timeoutSeconds: 30\n      containers: [{image: a, ports: [{name: h2c, containerPort: 9000}]}]\n  traffic:\n  - {latestRevision: true, percent: 40, tag: new}\n  - {revisionName: shop-v2, percent: 40, tag: pinned}\n  - {revisionName: shop-v1, percent: 20}\n";
    let first = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: shop}\nspec:\n  template:\n    metadata: {name: shop-v1}\n    spec:\n      containers: [{image: a}]\n";
    let (world, _) = apply(&World::default(), &format!("{first}---\n{yaml}"));
    let plan = world.plan(&ready());
    let route = &plan.routes[0];
    assert_eq!(route.host, "shop.default.example.com");
    assert_eq!(
        route.splits,
        [Split { revision: key("shop-v1"), percent: 20 }, Split { revision: key("shop-v2"), percent: 80 }]
    );
    assert_eq!(
        route.tags,
        [
            TagPlan { tag: "new".into(), host: "new-shop.default.example.com".into(), revision: key("shop-v2") },
            TagPlan { tag: "pinned".into(), host: "pinned-shop.default.example.com".into(), revision: key("shop-v2") },
        ]
    );
    let v2 = plan.revisions.iter().find(|r| r.key == key("shop-v2")).expect("v2");
    assert_eq!(v2.protocol, revgate_model::plan::UpstreamProtocol::H2c);
    assert_eq!((v2.container_concurrency, v2.timeout_seconds), (5, 30));
    assert_eq!(v2.service.as_deref(), Some("shop"));
    assert_eq!(
        v2.static_endpoints,
        Some(vec![
            Endpoint { host: "127.0.0.1".into(), port: 8081 },
            Endpoint { host: "127.0.0.1".into(), port: 8082 }
        ])
    );
    let v1 = plan.revisions.iter().find(|r| r.key == key("shop-v1")).expect("v1");
    assert_eq!((v1.static_endpoints.clone(), v1.timeout_seconds), (None, 300));
}

#[test]
fn config_defaults_fill_new_revisions() {
    let maps = config_map(
        "config-defaults",
        "  revision-timeout-seconds: \"120\"\n  max-revision-timeout-seconds: \"900\"\n  container-concurrency: \"8\"\n",
    );
    let (world, _) = apply(&World::default(), &format!("{maps}---\n{}", service("hello", "x")));
    let spec = &world.revisions[&key("hello-00001")].spec;
    assert_eq!(
        (
            spec.timeout_seconds,
            spec.container_concurrency,
            spec.response_start_timeout_seconds,
            spec.idle_timeout_seconds
        ),
        (Some(120), Some(8), Some(120), Some(0))
    );
    // The raised maximum admits a longer timeout than Knative's default 600.
    let long = service("slow", "x").replace("      containers:", "      timeoutSeconds: 800\n      containers:");
    apply(&world, &long);
}

/// Knative's route reconciler returns before touching the ingress when a
/// traffic target is missing: the gateway keeps the last traffic whose
/// targets all existed, and status says why the new traffic is not in effect.
#[test]
fn traffic_naming_a_missing_target_keeps_the_last_assigned_traffic() {
    let split = |revision: &str| {
        format!(
            "{}  traffic:\n  - revisionName: hello-00001\n    percent: 50\n  - revisionName: {revision}\n    percent: 50\n    tag: next\n",
            service("hello", "img:2")
        )
    };
    let bare_route = |revision: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata: {{name: web}}\nspec:\n  traffic:\n  - revisionName: {revision}\n    percent: 100\n"
        )
    };
    let splits_of = |world: &World, route: &str| -> Option<Vec<(String, u32)>> {
        world
            .plan(&Observed::default())
            .routes
            .iter()
            .find(|r| r.key == key(route))
            .map(|r| r.splits.iter().map(|s| (s.revision.name.clone(), s.percent)).collect())
    };
    let (base, _) = apply(&World::default(), &service("hello", "img:1"));
    let (base, _) = apply(&base, &service("hello", "img:2"));
    let good_split = Some(vec![("hello-00001".to_string(), 50), ("hello-00002".to_string(), 50)]);

    // (case, world before, manifest, route, splits served, AllTrafficAssigned, its message, warned)
    type Case<'a> = (&'a str, World, String, &'a str, Option<Vec<(String, u32)>>, Cond, Option<&'a str>, bool);
    type Cond = (&'static str, Option<&'static str>);
    let (split_world, _) = apply(&base, &split("hello-00002"));
    let (route_world, _) = apply(&base, &bare_route("hello-00001"));
    let cases: Vec<Case> = vec![
        ("a good split", base.clone(), split("hello-00002"), "hello", good_split.clone(), ("True", None), None, false),
        (
            "a typo in a Service's split keeps the split",
            split_world.clone(),
            split("hello-00009"),
            "hello",
            good_split.clone(),
            ("False", Some("RevisionMissing")),
            Some("Revision \"hello-00009\" referenced in traffic not found."),
            true,
        ),
        (
            "a typo in a bare Route keeps its traffic",
            route_world.clone(),
            bare_route("hello-00009"),
            "web",
            Some(vec![("hello-00001".to_string(), 100)]),
            ("False", Some("RevisionMissing")),
            Some("Revision \"hello-00009\" referenced in traffic not found."),
            true,
        ),
        (
            "a Route that never had good traffic serves nothing",
            base.clone(),
            bare_route("hello-00009"),
            "web",
            None,
            ("False", Some("RevisionMissing")),
            Some("Revision \"hello-00009\" referenced in traffic not found."),
            true,
        ),
    ];
    for (case, before, manifest, route, want_splits, want_assigned, want_message, warned) in cases {
        let docs = parse(&manifest);
        let (world, _) = before.apply(&docs, NOW).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(splits_of(&world, route), want_splits, "{case}: what the gateway serves");
        let view = world.route_views(&Observed::default()).into_iter().find(|r| r.metadata.key() == key(route));
        let status = view.and_then(|r| r.status).unwrap_or_else(|| panic!("{case}: no route status"));
        assert_eq!(
            condition(&status.conditions, "AllTrafficAssigned"),
            (want_assigned.0.to_string(), want_assigned.1.map(str::to_string)),
            "{case}"
        );
        let message =
            revgate_model::meta::condition(&status.conditions, "AllTrafficAssigned").and_then(|c| c.message.clone());
        assert_eq!(message.as_deref(), want_message, "{case}");
        let warnings = world.traffic_warnings(&docs);
        assert_eq!(!warnings.is_empty(), warned, "{case}: {warnings:?}");
        for warning in &warnings {
            assert!(warning.contains("hello-00009") && warning.contains(route), "{case}: {warning}");
        }
        // The kept traffic survives the store: the world is what is persisted.
        let stored = serde_json::to_string(&world).expect("serializes");
        let back: World = serde_json::from_str(&stored).expect("deserializes");
        assert_eq!(splits_of(&back, route), want_splits, "{case}: after a restart");
    }

    let docs = parse(&split("hello-00009"));
    let (typo, _) = split_world.apply(&docs, NOW).expect("applies");
    assert_eq!(
        typo.traffic_warnings(&docs),
        ["route.serving.knative.dev/hello (namespace default): Revision \"hello-00009\" referenced in traffic not \
             found. Until it exists, the route keeps serving its last traffic whose targets all existed \
             (AllTrafficAssigned=False, reason RevisionMissing)."]
    );

    // The kept split shows in status.traffic; the new one takes effect once
    // the missing revision appears (a new template creates it)…
    let (typo, _) = apply(&split_world, &split("hello-00003"));
    let status = typo.service_views(&Observed::default())[0].status.clone().expect("status");
    let shown: Vec<_> = status.traffic.iter().map(|t| t.revision_name.clone().unwrap_or_default()).collect();
    assert_eq!(shown, ["hello-00001", "hello-00002"]);
    let (fixed, _) = apply(
        &typo,
        &format!(
            "{}  traffic:\n  - revisionName: hello-00001\n    percent: 50\n  - revisionName: hello-00003\n    percent: 50\n    tag: next\n",
            service("hello", "img:3")
        ),
    );
    assert_eq!(
        splits_of(&fixed, "hello"),
        Some(vec![("hello-00001".to_string(), 50), ("hello-00003".to_string(), 50)])
    );
    // …or the manifest is fixed.
    let (typo, _) = apply(&route_world, &bare_route("hello-00009"));
    let (fixed, _) = apply(&typo, &bare_route("hello-00002"));
    assert_eq!(splits_of(&fixed, "web"), Some(vec![("hello-00002".to_string(), 100)]));
    // Deleting the route and applying it again starts afresh: nothing to keep.
    let (gone, _) = typo.delete(&references(&bare_route("x"))).expect("deletes");
    let (again, _) = apply(&gone, &bare_route("hello-00009"));
    assert_eq!(splits_of(&again, "web"), None);
}

#[test]
fn delete_needs_only_what_identifies_an_object() {
    let (world, _) = apply(&World::default(), &service("hello", "img:1"));
    // No spec at all, and a spec that would not validate: both delete by reference.
    for manifest in [
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: hello}\n",
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: hello}\nspec: {template: {spec: {containers: [{imagee: x}]}}}\n",
    ] {
        let (after, changes) = world.delete(&references(manifest)).expect("deletes by reference");
        assert!(after.services.is_empty(), "{manifest}");
        assert_eq!(lines(&changes)[0], "service.serving.knative.dev/hello deleted");
    }
    // Other kinds are skipped with a line each, or refused when strict, as on apply.
    let unknown = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: hello}\n";
    let mut budget = revgate_model::decode::Budget::default();
    let read = revgate_model::parse_references("d.yaml", unknown, &mut budget, OtherKinds::Skip).expect("skipped");
    assert!(read.objects.is_empty());
    assert_eq!(read.skipped[0].to_string(), "skipped apps/v1 Deployment default/hello: not a Knative Serving resource");
    let err = revgate_model::parse_references("d.yaml", unknown, &mut budget, OtherKinds::Reject)
        .expect_err("refused when strict");
    assert!(err.to_string().starts_with("d.yaml: document 0: apps/v1 Deployment default/hello is not"), "{err}");
}
