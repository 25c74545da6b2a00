//! Knative's autoscaling settings: `config-autoscaler` and the
//! `autoscaling.knative.dev/*` annotations are validated at apply with the
//! key named, and resolve per revision to what Knative's KPA would use.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use revgate_model::autoscaling::{
    AUTOSCALER_CONFIG_MAP, Aggregation, AutoscalerConfig, Metric, RevisionScaling, validate_annotations,
};
use revgate_model::{ObjectKey, World};

const ANN: &str = "spec.template.metadata.annotations";

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Annotations given by their short names (`min-scale` is `autoscaling.knative.dev/min-scale`).
fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (format!("autoscaling.knative.dev/{k}"), v.to_string())).collect()
}

fn config(pairs: &[(&str, &str)]) -> AutoscalerConfig {
    AutoscalerConfig::parse(&map(pairs)).unwrap_or_else(|e| panic!("{pairs:?}: {e:?}"))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// ----- config-autoscaler --------------------------------------------------------

#[test]
fn defaults_are_knatives() {
    let d = AutoscalerConfig::default();
    assert_eq!(AutoscalerConfig::parse(&BTreeMap::new()), Ok(d.clone()));
    assert_eq!(d.container_concurrency_target_percentage, 70.0);
    assert_eq!(d.container_concurrency_target_default, 100.0);
    assert_eq!(d.requests_per_second_target_default, 200.0);
    assert_eq!(d.target_burst_capacity, 211.0);
    assert_eq!(d.stable_window, secs(60));
    assert_eq!(d.panic_window_percentage, 10.0);
    assert_eq!(d.panic_threshold_percentage, 200.0);
    assert_eq!(d.max_scale_up_rate, 1000.0);
    assert_eq!(d.max_scale_down_rate, 2.0);
    assert!(d.enable_scale_to_zero);
    assert_eq!(d.scale_to_zero_grace_period, secs(30));
    assert_eq!(d.scale_to_zero_pod_retention_period, secs(0));
    assert_eq!(d.activator_capacity, 100.0);
    assert_eq!(d.initial_scale, 1);
    assert!(!d.allow_zero_initial_scale);
    assert_eq!((d.min_scale, d.max_scale, d.max_scale_limit), (0, 0, 0));
    assert_eq!(d.scale_down_delay, secs(0));
    assert_eq!(d.pod_autoscaler_class, "kpa.autoscaling.knative.dev");

    // The values in Knative's own config-autoscaler `_example` block are the defaults.
    let knative_example = config(&[
        ("container-concurrency-target-percentage", "70"),
        ("container-concurrency-target-default", "100"),
        ("requests-per-second-target-default", "200"),
        ("target-burst-capacity", "211"),
        ("stable-window", "60s"),
        ("panic-window-percentage", "10.0"),
        ("panic-threshold-percentage", "200.0"),
        ("max-scale-up-rate", "1000.0"),
        ("max-scale-down-rate", "2.0"),
        ("enable-scale-to-zero", "true"),
        ("scale-to-zero-grace-period", "30s"),
        ("scale-to-zero-pod-retention-period", "0s"),
        ("pod-autoscaler-class", "kpa.autoscaling.knative.dev"),
        ("activator-capacity", "100.0"),
        ("initial-scale", "1"),
        ("allow-zero-initial-scale", "false"),
        ("min-scale", "0"),
        ("max-scale", "0"),
        ("scale-down-delay", "0s"),
        ("max-scale-limit", "0"),
        ("_example", "documentation only"),
    ]);
    assert_eq!(knative_example, d);
}

#[test]
fn every_key_is_read() {
    let c = config(&[
        ("container-concurrency-target-percentage", "80"),
        ("container-concurrency-target-default", "50"),
        ("requests-per-second-target-default", "300.5"),
        ("target-burst-capacity", "-1"),
        ("stable-window", "1m30s"),
        ("panic-window-percentage", "20"),
        ("panic-threshold-percentage", "150"),
        ("max-scale-up-rate", "10"),
        ("max-scale-down-rate", "4"),
        ("enable-scale-to-zero", "false"),
        ("scale-to-zero-grace-period", "500ms"),
        ("scale-to-zero-pod-retention-period", "1h"),
        ("activator-capacity", "1"),
        ("initial-scale", "0"),
        ("allow-zero-initial-scale", "True"),
        ("min-scale", "2"),
        ("max-scale", "8"),
        ("scale-down-delay", "15s"),
        ("max-scale-limit", "10"),
        ("pod-autoscaler-class", " custom.example.com "),
    ]);
    assert_eq!(c.container_concurrency_target_percentage, 80.0);
    assert_eq!(c.container_concurrency_target_default, 50.0);
    assert_eq!(c.requests_per_second_target_default, 300.5);
    assert_eq!(c.target_burst_capacity, -1.0);
    assert_eq!(c.stable_window, secs(90));
    assert_eq!(c.panic_window_percentage, 20.0);
    assert_eq!(c.panic_threshold_percentage, 150.0);
    assert_eq!((c.max_scale_up_rate, c.max_scale_down_rate), (10.0, 4.0));
    assert!(!c.enable_scale_to_zero);
    assert_eq!(c.scale_to_zero_grace_period, Duration::from_millis(500));
    assert_eq!(c.scale_to_zero_pod_retention_period, secs(3600));
    assert_eq!(c.activator_capacity, 1.0);
    assert_eq!(c.initial_scale, 0);
    assert!(c.allow_zero_initial_scale);
    assert_eq!((c.min_scale, c.max_scale, c.max_scale_limit), (2, 8, 10));
    assert_eq!(c.scale_down_delay, secs(15));
    assert_eq!(c.pod_autoscaler_class, "custom.example.com");

    // Old ConfigMaps give the utilization as a fraction of 1.
    assert_eq!(
        config(&[("container-concurrency-target-percentage", "0.5")]).container_concurrency_target_percentage,
        50.0
    );
    assert_eq!(
        config(&[("container-concurrency-target-percentage", "1")]).container_concurrency_target_percentage,
        100.0
    );
}

#[test]
fn invalid_keys_are_named() {
    /// (data, key named, message)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("stable-window", "60")],
            "stable-window",
            "expected a duration such as \"60s\" or \"1m30s\", got \"60\"",
        ),
        (vec![("stable-window", "5s")], "stable-window", "expected 6s <= stable-window <= 1h, got \"5s\""),
        (vec![("stable-window", "61m")], "stable-window", "expected 6s <= stable-window <= 1h, got \"61m\""),
        (vec![("stable-window", "6500ms")], "stable-window", "must be whole seconds, got \"6500ms\""),
        (vec![("scale-to-zero-grace-period", "0s")], "scale-to-zero-grace-period", "must be positive, got \"0s\""),
        (vec![("scale-down-delay", "-1s")], "scale-down-delay", "must not be negative, got \"-1s\""),
        (vec![("scale-down-delay", "1.5s")], "scale-down-delay", "must be whole seconds, got \"1.5s\""),
        (
            vec![("scale-to-zero-pod-retention-period", "-1m")],
            "scale-to-zero-pod-retention-period",
            "must not be negative, got \"-1m\"",
        ),
        (
            vec![("target-burst-capacity", "-2")],
            "target-burst-capacity",
            "expected -1 (the activator stays in the path) or a number >= 0, got -2",
        ),
        (
            vec![("container-concurrency-target-percentage", "0")],
            "container-concurrency-target-percentage",
            "expected a percentage 0 < p <= 100 (or a fraction 0 < f <= 1), got 0",
        ),
        (
            vec![("container-concurrency-target-percentage", "150")],
            "container-concurrency-target-percentage",
            "expected a percentage 0 < p <= 100 (or a fraction 0 < f <= 1), got 150",
        ),
        (
            vec![("container-concurrency-target-default", "0.001")],
            "container-concurrency-target-default",
            "0.001 at container-concurrency-target-percentage 70 gives a per-pod target of 0.0007, which must be at \
             least 0.01",
        ),
        (
            vec![("requests-per-second-target-default", "0")],
            "requests-per-second-target-default",
            "expected at least 0.01, got 0",
        ),
        (vec![("activator-capacity", "0.5")], "activator-capacity", "expected at least 1, got 0.5"),
        (vec![("max-scale-up-rate", "1")], "max-scale-up-rate", "expected a number greater than 1, got 1"),
        (vec![("max-scale-down-rate", "0.5")], "max-scale-down-rate", "expected a number greater than 1, got 0.5"),
        (vec![("max-scale-down-rate", "NaN")], "max-scale-down-rate", "expected a number, got \"NaN\""),
        (
            vec![("panic-window-percentage", "0.5")],
            "panic-window-percentage",
            "expected 1 <= panic-window-percentage <= 100, got 0.5",
        ),
        (vec![("enable-scale-to-zero", "yes")], "enable-scale-to-zero", "expected \"true\" or \"false\", got \"yes\""),
        (
            vec![("allow-zero-initial-scale", "")],
            "allow-zero-initial-scale",
            "expected \"true\" or \"false\", got \"\"",
        ),
        (vec![("initial-scale", "-1")], "initial-scale", "must not be negative, got -1"),
        (vec![("initial-scale", "0")], "initial-scale", "0 is only allowed with allow-zero-initial-scale: \"true\""),
        (vec![("initial-scale", "1.5")], "initial-scale", "expected a whole number, got \"1.5\""),
        (vec![("min-scale", "-1")], "min-scale", "must not be negative, got -1"),
        (vec![("max-scale", "-1")], "max-scale", "must not be negative, got -1"),
        (vec![("max-scale", "2147483648")], "max-scale", "expected a whole number, got \"2147483648\""),
        (vec![("max-scale-limit", "-5")], "max-scale-limit", "must not be negative, got -5"),
        (
            vec![("max-scale-limit", "10")],
            "max-scale",
            "expected 1 <= max-scale <= max-scale-limit (10), got 0; with a limit set, the default may not be 0 \
             (unbounded)",
        ),
        (
            vec![("max-scale-limit", "10"), ("max-scale", "11")],
            "max-scale",
            "expected 1 <= max-scale <= max-scale-limit (10), got 11; with a limit set, the default may not be 0 \
             (unbounded)",
        ),
        (vec![("min-scale", "5"), ("max-scale", "3")], "min-scale", "expected 0 <= min-scale <= max-scale (3), got 5"),
    ];
    for (data, key, message) in cases {
        let errors = AutoscalerConfig::parse(&map(&data)).expect_err(key);
        assert_eq!(errors.len(), 1, "{data:?}: {errors:?}");
        assert_eq!((errors[0].key.as_str(), errors[0].message.as_str()), (key, message), "{data:?}");
    }

    // Every bad key is reported, not just the first.
    let errors = AutoscalerConfig::parse(&map(&[("stable-window", "x"), ("max-scale-up-rate", "y")])).expect_err("two");
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["max-scale-up-rate", "stable-window"]);

    // Bounds Knative does not impose are not imposed: min-scale above an
    // unbounded max, a tiny grace period, panic thresholds in the ConfigMap.
    config(&[("min-scale", "5"), ("scale-to-zero-grace-period", "1ns"), ("panic-threshold-percentage", "50")]);
}

// ----- annotation validation ----------------------------------------------------

#[test]
fn annotations_are_checked_with_knatives_bounds() {
    let limited = config(&[("max-scale-limit", "10"), ("max-scale", "5")]);
    let zero_allowed = config(&[("allow-zero-initial-scale", "true")]);
    let hpa_default = config(&[("pod-autoscaler-class", "hpa.autoscaling.knative.dev")]);
    let d = AutoscalerConfig::default();
    // (annotations, config, every expected (annotation as written, message))
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a AutoscalerConfig, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (vec![], &d, vec![]),
        // class
        (vec![("class", "kpa.autoscaling.knative.dev")], &d, vec![]),
        (vec![("class", "hpa.autoscaling.knative.dev")], &d, vec![]),
        (vec![("class", "custom.example.com")], &d, vec![]),
        (
            vec![("class", "unsupported.knative.dev")],
            &d,
            vec![(
                "class",
                "\"unsupported.knative.dev\" is not an autoscaler class: use \"kpa.autoscaling.knative.dev\" or \
                 \"hpa.autoscaling.knative.dev\"",
            )],
        ),
        // metric per class
        (vec![("metric", "concurrency")], &d, vec![]),
        (vec![("metric", "rps")], &d, vec![]),
        (
            vec![("metric", "cpu")],
            &d,
            vec![(
                "metric",
                "\"cpu\" is not a metric of the kpa.autoscaling.knative.dev class: use \"concurrency\" or \"rps\"",
            )],
        ),
        (vec![("metric", "cpu"), ("class", "hpa.autoscaling.knative.dev")], &d, vec![]),
        (vec![("metric", "cpu")], &hpa_default, vec![]),
        (
            vec![("metric", ""), ("class", "hpa.autoscaling.knative.dev")],
            &d,
            vec![("metric", "the hpa.autoscaling.knative.dev class needs a metric, such as \"cpu\" or \"memory\"")],
        ),
        (vec![("metric", "anything"), ("class", "custom.example.com")], &d, vec![]),
        // target and utilization
        (vec![("target", "0.01")], &d, vec![]),
        (vec![("target", "0")], &d, vec![("target", "expected target >= 0.01, got 0")]),
        (vec![("target", "ten")], &d, vec![("target", "expected a number, got \"ten\"")]),
        (vec![("target-utilization-percentage", "100")], &d, vec![]),
        (
            vec![("target-utilization-percentage", "0.5")],
            &d,
            vec![("target-utilization-percentage", "expected 1 <= target-utilization-percentage <= 100, got 0.5")],
        ),
        // bounds
        (vec![("min-scale", "2"), ("max-scale", "5")], &d, vec![]),
        (vec![("min-scale", "9"), ("max-scale", "0")], &d, vec![]),
        (
            vec![("min-scale", "9"), ("max-scale", "5")],
            &d,
            vec![("min-scale", "expected 0 <= min-scale <= max-scale (5), got 9")],
        ),
        (vec![("min-scale", "-1")], &d, vec![("min-scale", "expected 0 <= min-scale <= 2147483647, got -1")]),
        (
            vec![("max-scale", "bar")],
            &d,
            vec![("max-scale", "expected a whole number 0 <= max-scale <= 2147483647, got \"bar\"")],
        ),
        (vec![("max-scale", "10")], &limited, vec![]),
        (vec![("min-scale", "7")], &limited, vec![]),
        (
            vec![("max-scale", "11")],
            &limited,
            vec![("max-scale", "expected 1 <= max-scale <= 10 (max-scale-limit in config-autoscaler), got 11")],
        ),
        (
            vec![("max-scale", "0")],
            &limited,
            vec![(
                "max-scale",
                "0 (unbounded) is not allowed: config-autoscaler sets max-scale-limit 10, so expected 1 <= max-scale <= 10",
            )],
        ),
        // activation-scale
        (vec![("min-scale", "1"), ("activation-scale", "2"), ("max-scale", "3")], &d, vec![]),
        (
            vec![("activation-scale", "1")],
            &d,
            vec![(
                "activation-scale",
                "expected activation-scale >= 2 (1 is what scaling from zero gives anyway), got 1",
            )],
        ),
        (
            vec![("min-scale", "3"), ("activation-scale", "2")],
            &d,
            vec![("activation-scale", "expected min-scale (3) <= activation-scale, got 2")],
        ),
        (
            vec![("max-scale", "3"), ("activation-scale", "4")],
            &d,
            vec![("activation-scale", "expected activation-scale <= max-scale (3), got 4")],
        ),
        (vec![("activation-scale", "x")], &d, vec![("activation-scale", "expected a whole number >= 2, got \"x\"")]),
        // initial-scale
        (vec![("initial-scale", "3")], &d, vec![]),
        (
            vec![("initial-scale", "0")],
            &d,
            vec![(
                "initial-scale",
                "0 is not allowed unless config-autoscaler sets allow-zero-initial-scale: \"true\"",
            )],
        ),
        (vec![("initial-scale", "0")], &zero_allowed, vec![]),
        (vec![("initial-scale", "-1")], &zero_allowed, vec![("initial-scale", "must not be negative, got -1")]),
        // windows and percentages
        (vec![("window", "6s")], &d, vec![]),
        (vec![("window", "1h")], &d, vec![]),
        (vec![("window", "5s")], &d, vec![("window", "expected 6s <= window <= 1h, got \"5s\"")]),
        (vec![("window", "61m")], &d, vec![("window", "expected 6s <= window <= 1h, got \"61m\"")]),
        (vec![("window", "6500ms")], &d, vec![("window", "must be whole seconds, got \"6500ms\"")]),
        (vec![("window", "60")], &d, vec![("window", "expected a duration such as \"60s\" or \"1m30s\", got \"60\"")]),
        (vec![("panic-window-percentage", "1"), ("panic-threshold-percentage", "1000")], &d, vec![]),
        (
            vec![("panic-window-percentage", "101")],
            &d,
            vec![("panic-window-percentage", "expected 1 <= panic-window-percentage <= 100, got 101")],
        ),
        (
            vec![("panic-threshold-percentage", "100")],
            &d,
            vec![("panic-threshold-percentage", "expected 110 <= panic-threshold-percentage <= 1000, got 100")],
        ),
        // burst capacity
        (vec![("target-burst-capacity", "-1")], &d, vec![]),
        (vec![("target-burst-capacity", "0")], &d, vec![]),
        (
            vec![("target-burst-capacity", "-2")],
            &d,
            vec![("target-burst-capacity", "expected -1 (the activator stays in the path) or a number >= 0, got -2")],
        ),
        // delays
        (vec![("scale-down-delay", "0s"), ("scale-to-zero-pod-retention-period", "1h")], &d, vec![]),
        (
            vec![("scale-down-delay", "2h")],
            &d,
            vec![("scale-down-delay", "expected 0s <= scale-down-delay <= 1h, got \"2h\"")],
        ),
        (vec![("scale-down-delay", "1.5s")], &d, vec![("scale-down-delay", "must be whole seconds, got \"1.5s\"")]),
        (vec![("scale-to-zero-pod-retention-period", "1.5s")], &d, vec![]),
        (
            vec![("scale-to-zero-pod-retention-period", "-1s")],
            &d,
            vec![(
                "scale-to-zero-pod-retention-period",
                "expected 0s <= scale-to-zero-pod-retention-period <= 1h, got \"-1s\"",
            )],
        ),
        // aggregation: checked where the class is named as the KPA, as Knative does
        (vec![("metric-aggregation-algorithm", "weighted-exponential")], &d, vec![]),
        (vec![("metric-aggregation-algorithm", "bogus")], &d, vec![]),
        (
            vec![("metric-aggregation-algorithm", "weightedExponential"), ("class", "kpa.autoscaling.knative.dev")],
            &d,
            vec![],
        ),
        (
            vec![("metric-aggregation-algorithm", "bogus"), ("class", "kpa.autoscaling.knative.dev")],
            &d,
            vec![(
                "metric-aggregation-algorithm",
                "\"bogus\" is not an aggregation algorithm: use \"linear\" or \"weighted-exponential\"",
            )],
        ),
    ];
    for (given, config, want) in cases {
        let got = validate_annotations(&annotations(&given), config, ANN);
        let want: Vec<(String, String)> =
            want.into_iter().map(|(k, m)| (format!("{ANN}[autoscaling.knative.dev/{k}]"), m.to_string())).collect();
        assert_eq!(got, want, "{given:?}");
    }
}

#[test]
fn legacy_spellings_are_checked_under_the_name_written() {
    let d = AutoscalerConfig::default();
    let given =
        annotations(&[("minScale", "5"), ("maxScale", "2"), ("targetBurstCapacity", "-3"), ("initialScale", "x")]);
    let paths: Vec<String> = validate_annotations(&given, &d, ANN).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        [
            format!("{ANN}[autoscaling.knative.dev/minScale]"),
            format!("{ANN}[autoscaling.knative.dev/initialScale]"),
            format!("{ANN}[autoscaling.knative.dev/targetBurstCapacity]"),
        ]
    );
    // The documented spelling wins over the old one, as in Knative.
    let both = annotations(&[("min-scale", "1"), ("minScale", "-7")]);
    assert!(validate_annotations(&both, &d, ANN).is_empty());
    assert_eq!(RevisionScaling::resolve(&both, 0, &d).min_scale, 1);
}

// ----- through apply --------------------------------------------------------------

fn annotated_service(name: &str, annotations: &[(&str, &str)]) -> String {
    let lines: String =
        annotations.iter().map(|(k, v)| format!("        autoscaling.knative.dev/{k}: \"{v}\"\n")).collect();
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    metadata:\n      annotations:\n{lines}    spec:\n      containers:\n      - image: ghcr.io/acme/hello\n"
    )
}

#[test]
fn services_and_configurations_with_bad_annotations_are_rejected() {
    let got = problems(&World::default(), &annotated_service("hello", &[("min-scale", "9"), ("max-scale", "5")]));
    assert_eq!(
        got,
        [(
            format!("{ANN}[autoscaling.knative.dev/min-scale]"),
            "expected 0 <= min-scale <= max-scale (5), got 9".to_string()
        )]
    );

    let configuration = "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata:\n  name: web\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/window: 2s\n    spec:\n      containers:\n      - image: x\n";
    assert_eq!(
        problems(&World::default(), configuration),
        [(format!("{ANN}[autoscaling.knative.dev/window]"), "expected 6s <= window <= 1h, got \"2s\"".to_string())]
    );
}

#[test]
fn autoscaling_annotations_outside_the_template_are_rejected() {
    let message = "autoscaling annotations apply to revisions: put it under spec.template.metadata.annotations of the \
                   Service or Configuration";
    let on_service = service("hello", "x").replace(
        "metadata:\n  name: hello\n",
        "metadata:\n  name: hello\n  annotations:\n    autoscaling.knative.dev/min-scale: \"1\"\n",
    );
    let on_route = "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata:\n  name: web\n  annotations:\n    autoscaling.knative.dev/maxScale: \"3\"\nspec:\n  traffic:\n  - configurationName: web\n    percent: 100\n";
    for (yaml, key) in
        [(on_service.as_str(), "autoscaling.knative.dev/min-scale"), (on_route, "autoscaling.knative.dev/maxScale")]
    {
        assert_eq!(
            problems(&World::default(), yaml),
            [(format!("metadata.annotations[{key}]"), message.to_string())],
            "{yaml}"
        );
    }
    // Other annotations on the object are fine.
    let other = service("hello", "x").replace(
        "metadata:\n  name: hello\n",
        "metadata:\n  name: hello\n  annotations:\n    example.com/owner: team\n",
    );
    apply(&World::default(), &other);
}

#[test]
fn an_invalid_config_autoscaler_is_rejected_and_changes_nothing() {
    let good = config_map(AUTOSCALER_CONFIG_MAP, "  stable-window: \"90s\"\n");
    let (world, _) = apply(&World::default(), &format!("{good}---\n{}", service("hello", "x")));
    // A file that changes the Service and breaks the ConfigMap: all of it is refused.
    let bad = format!(
        "{}---\n{}",
        service("hello", "y"),
        config_map(AUTOSCALER_CONFIG_MAP, "  stable-window: \"5s\"\n  max-scale-down-rate: \"1\"\n")
    );
    let errors = world.apply(&parse(&bad), NOW).expect_err("rejected");
    let shown: Vec<String> = errors.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "test.yaml#1: configmap/knative-serving/config-autoscaler: data[max-scale-down-rate]: expected a number \
             greater than 1, got 1",
            "test.yaml#1: configmap/knative-serving/config-autoscaler: data[stable-window]: expected 6s <= \
             stable-window <= 1h, got \"5s\"",
        ]
    );
    assert_eq!(errors.errors[0].kind, "ConfigMap");
    assert_eq!(errors.errors[0].key, ObjectKey::new("knative-serving", AUTOSCALER_CONFIG_MAP));
    // The world to keep is still the one before: the stored ConfigMap and its settings stand.
    assert_eq!(world.settings().autoscaler.stable_window, secs(90));
    assert_eq!(world.revisions.len(), 1);
    let revision = ObjectKey::new("default", "hello-00001");
    assert_eq!(world.revision_scaling(&revision).expect("revision").stable_window, secs(90));
}

#[test]
fn config_autoscaler_applies_to_later_documents_and_existing_revisions() {
    // A limit in the same apply already binds the Service after it.
    let limit = config_map(AUTOSCALER_CONFIG_MAP, "  max-scale-limit: \"10\"\n  max-scale: \"5\"\n");
    let too_big = format!("{limit}---\n{}", annotated_service("hello", &[("max-scale", "20")]));
    let got = problems(&World::default(), &too_big);
    assert_eq!(
        got,
        [(
            format!("{ANN}[autoscaling.knative.dev/max-scale]"),
            "expected 1 <= max-scale <= 10 (max-scale-limit in config-autoscaler), got 20".to_string()
        )]
    );

    let (world, _) = apply(&World::default(), &format!("{limit}---\n{}", service("hello", "x")));
    let hello = ObjectKey::new("default", "hello-00001");
    let scaling = world.revision_scaling(&hello).expect("revision");
    assert_eq!((scaling.min_scale, scaling.max_scale), (0, 5), "the config's default max-scale");

    // Changing the ConfigMap changes how existing revisions scale.
    let (world, _) =
        apply(&world, &config_map(AUTOSCALER_CONFIG_MAP, "  container-concurrency-target-percentage: \"50\"\n"));
    let scaling = world.revision_scaling(&hello).expect("revision");
    assert_eq!((scaling.target, scaling.max_scale), (50.0, 0));
    assert_eq!(world.revision_scaling(&ObjectKey::new("default", "missing")), None);
}

// ----- resolution ---------------------------------------------------------------

#[test]
fn targets_follow_knatives_rules() {
    let d = AutoscalerConfig::default();
    let half =
        config(&[("container-concurrency-target-percentage", "50"), ("requests-per-second-target-default", "100")]);
    // (case, annotations, containerConcurrency, config, metric, target, total)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u32, &'a AutoscalerConfig, Metric, f64, f64);
    let cases: Vec<Case> = vec![
        ("defaults, cc 0", vec![], 0, &d, Metric::Concurrency, 70.0, 100.0),
        ("cc 10", vec![], 10, &d, Metric::Concurrency, 7.0, 10.0),
        ("cc 1", vec![], 1, &d, Metric::Concurrency, 0.7, 1.0),
        ("annotation target, cc 0", vec![("target", "50")], 0, &d, Metric::Concurrency, 35.0, 50.0),
        ("annotation target below cc", vec![("target", "5")], 10, &d, Metric::Concurrency, 3.5, 5.0),
        ("annotation target capped at cc", vec![("target", "50")], 10, &d, Metric::Concurrency, 7.0, 10.0),
        (
            "utilization annotation",
            vec![("target-utilization-percentage", "100")],
            10,
            &d,
            Metric::Concurrency,
            10.0,
            10.0,
        ),
        ("config utilization", vec![], 0, &half, Metric::Concurrency, 50.0, 100.0),
        (
            "never below 0.01",
            vec![("target", "0.01"), ("target-utilization-percentage", "1")],
            0,
            &d,
            Metric::Concurrency,
            0.01,
            0.01,
        ),
        ("rps default", vec![("metric", "rps")], 0, &d, Metric::Rps, 140.0, 200.0),
        ("rps ignores cc", vec![("metric", "rps")], 10, &d, Metric::Rps, 140.0, 200.0),
        ("rps target above cc is kept", vec![("metric", "rps"), ("target", "50")], 10, &d, Metric::Rps, 35.0, 50.0),
        (
            "rps utilization annotation",
            vec![("metric", "rps"), ("target-utilization-percentage", "50")],
            0,
            &d,
            Metric::Rps,
            100.0,
            200.0,
        ),
        // Knative applies the ConfigMap's percentage to concurrency only; rps keeps 70%.
        ("rps ignores the config percentage", vec![("metric", "rps")], 0, &half, Metric::Rps, 70.0, 100.0),
    ];
    for (case, given, cc, config, metric, target, total) in cases {
        let s = RevisionScaling::resolve(&annotations(&given), cc, config);
        assert_eq!((s.metric, s.target, s.total_value), (metric, target, total), "{case}");
    }
}

#[test]
fn everything_else_comes_from_annotations_or_config() {
    let d = AutoscalerConfig::default();
    let s = RevisionScaling::resolve(&BTreeMap::new(), 0, &d);
    assert_eq!(s.class, "kpa.autoscaling.knative.dev");
    assert_eq!(s.target_burst_capacity, 211.0);
    assert_eq!(s.panic_threshold, 2.0);
    assert_eq!((s.stable_window, s.panic_window), (secs(60), secs(6)));
    assert_eq!(s.scale_down_delay, secs(0));
    assert_eq!((s.min_scale, s.max_scale, s.initial_scale, s.activation_scale), (0, 0, 1, 1));
    assert_eq!((s.max_scale_up_rate, s.max_scale_down_rate), (1000.0, 2.0));
    assert!(s.enable_scale_to_zero);
    assert_eq!((s.scale_to_zero_grace_period, s.scale_to_zero_pod_retention_period), (secs(30), secs(0)));
    assert_eq!(s.activator_capacity, 100.0);
    assert_eq!(s.aggregation, Aggregation::Linear);

    let s = RevisionScaling::resolve(
        &annotations(&[
            ("class", "hpa.autoscaling.knative.dev"),
            ("target-burst-capacity", "-1"),
            ("panic-threshold-percentage", "150"),
            ("window", "2m"),
            ("panic-window-percentage", "25"),
            ("scale-down-delay", "30s"),
            ("min-scale", "2"),
            ("max-scale", "9"),
            ("initial-scale", "4"),
            ("activation-scale", "3"),
            ("scale-to-zero-pod-retention-period", "90s"),
            ("metric-aggregation-algorithm", "weightedExponential"),
        ]),
        0,
        &config(&[("enable-scale-to-zero", "false"), ("max-scale-up-rate", "3"), ("activator-capacity", "50")]),
    );
    assert_eq!(s.class, "hpa.autoscaling.knative.dev");
    assert_eq!(s.target_burst_capacity, -1.0);
    assert_eq!(s.panic_threshold, 1.5);
    assert_eq!((s.stable_window, s.panic_window), (secs(120), secs(30)));
    assert_eq!(s.scale_down_delay, secs(30));
    assert_eq!((s.min_scale, s.max_scale, s.initial_scale, s.activation_scale), (2, 9, 4, 3));
    assert!(!s.enable_scale_to_zero);
    assert_eq!((s.max_scale_up_rate, s.activator_capacity), (3.0, 50.0));
    assert_eq!(s.scale_to_zero_pod_retention_period, secs(90));
    assert_eq!(s.aggregation, Aggregation::WeightedExponential);

    // The panic window rounds to whole seconds and is at least one.
    let short = RevisionScaling::resolve(&annotations(&[("window", "6s")]), 0, &d);
    assert_eq!(short.panic_window, secs(1));
    let custom = config(&[("stable-window", "45s")]);
    assert_eq!(RevisionScaling::resolve(&BTreeMap::new(), 0, &custom).panic_window, secs(5), "4.5s rounds up");

    // The class comes from the ConfigMap when the revision names none.
    let hpa = config(&[("pod-autoscaler-class", "hpa.autoscaling.knative.dev")]);
    assert_eq!(RevisionScaling::resolve(&BTreeMap::new(), 0, &hpa).class, "hpa.autoscaling.knative.dev");
}

#[test]
fn initial_scale_zero_needs_the_cluster_to_allow_it() {
    let zero = annotations(&[("initial-scale", "0")]);
    let allowed = config(&[("allow-zero-initial-scale", "true")]);
    assert_eq!(RevisionScaling::resolve(&zero, 0, &allowed).initial_scale, 0);
    // Allowed when the revision was created, disallowed since: the cluster default applies.
    let later = config(&[("initial-scale", "2")]);
    assert_eq!(RevisionScaling::resolve(&zero, 0, &later).initial_scale, 2);
    // A cluster default of 0 applies to revisions that name none.
    let cluster_zero = config(&[("allow-zero-initial-scale", "true"), ("initial-scale", "0")]);
    assert_eq!(RevisionScaling::resolve(&BTreeMap::new(), 0, &cluster_zero).initial_scale, 0);
}

#[test]
fn unparsable_annotations_fall_back_to_defaults() {
    let d = AutoscalerConfig::default();
    let junk = annotations(&[
        ("target", "x"),
        ("window", "x"),
        ("min-scale", "-1"),
        ("max-scale", "x"),
        ("activation-scale", "0"),
        ("metric-aggregation-algorithm", "x"),
        ("metric", "x"),
    ]);
    let s = RevisionScaling::resolve(&junk, 0, &d);
    assert_eq!((s.metric, s.target, s.total_value), (Metric::Concurrency, 70.0, 100.0));
    assert_eq!((s.stable_window, s.min_scale, s.max_scale, s.activation_scale), (secs(60), 0, 0, 1));
    assert_eq!(s.aggregation, Aggregation::Linear);
}

#[test]
fn knatives_minscale_sample_resolves_through_its_old_spellings() {
    let text = std::fs::read_to_string(
        shared_dir("knative-samples").join("serving-rollout-probe-queue-proxy-direct-minscale.yaml"),
    )
    .expect("sample readable");
    let (world, _) = apply(&World::default(), &text);
    let key = world.revisions.keys().next().expect("a revision").clone();
    let s = world.revision_scaling(&key).expect("scaling");
    // minScale 100, maxScale 150, targetBurstCapacity 0, containerConcurrency 10.
    assert_eq!((s.min_scale, s.max_scale, s.target_burst_capacity), (100, 150, 0.0));
    assert_eq!((s.target, s.total_value), (7.0, 10.0));
}
