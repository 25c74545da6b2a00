use super::*;

/// A sidecar's stats as Istio serves them on `:15090/stats/prometheus`
/// (trimmed): the inbound cluster of port 8080 with 3 requests in flight,
/// an outbound cluster, a histogram, and Istio's own metrics.
const ISTIO_STATS: &str = r#"# TYPE envoy_cluster_upstream_rq_active gauge
envoy_cluster_upstream_rq_active{cluster_name="xds-grpc"} 1
envoy_cluster_upstream_rq_active{cluster_name="inbound|8080||"} 3
envoy_cluster_upstream_rq_active{cluster_name="outbound|80||hello-00001.default.svc.cluster.local"} 7
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{cluster_name="inbound|8080||"} 1042
envoy_cluster_upstream_rq_total{cluster_name="outbound|80||hello-00001.default.svc.cluster.local"} 99
# TYPE envoy_cluster_upstream_rq_time histogram
envoy_cluster_upstream_rq_time_bucket{cluster_name="inbound|8080||",le="+Inf"} 1042
istio_requests_total{response_code="200",reporter="destination",destination_workload="hello-00001-deployment"} 1042
"#;

#[test]
fn reads_the_inbound_cluster_of_the_pods_port() {
    assert_eq!(parse_sidecar_stats(ISTIO_STATS, 8080), Ok(SidecarSample { active: 3.0, total: 1042.0 }));
}

#[test]
fn plain_envoy_names_the_cluster_label_envoy_cluster_name() {
    let stats = "envoy_cluster_upstream_rq_active{envoy_cluster_name=\"inbound|9000||\"} 2\n\
                 envoy_cluster_upstream_rq_total{envoy_cluster_name=\"inbound|9000||\"} 5 1700000000000\n";
    assert_eq!(parse_sidecar_stats(stats, 9000), Ok(SidecarSample { active: 2.0, total: 5.0 }));
}

#[test]
fn stats_without_the_inbound_cluster_say_which_annotation_is_missing() {
    // Istio's default stats matcher keeps no inbound cluster stats.
    let stats = "envoy_cluster_upstream_rq_active{cluster_name=\"xds-grpc\"} 1\n";
    let error = parse_sidecar_stats(stats, 8080).expect_err("no inbound cluster");
    assert_eq!(error, StatsError::Missing { metric: ACTIVE_METRIC, cluster: "inbound|8080||".into() });
    assert!(error.to_string().contains(PROXY_CONFIG_ANNOTATION), "{error}");
    // Another port's inbound cluster is not this pod's.
    assert!(parse_sidecar_stats(ISTIO_STATS, 9090).is_err());
}

#[test]
fn a_malformed_line_of_the_metrics_is_named() {
    let stats = "envoy_cluster_upstream_rq_active{cluster_name=\"inbound|8080||\"} many\n";
    assert!(matches!(parse_sidecar_stats(stats, 8080), Err(StatsError::Malformed { line: 1, .. })));
    let unterminated = "envoy_cluster_upstream_rq_active{cluster_name=\"inbound|8080||} 1\n";
    assert!(matches!(parse_sidecar_stats(unterminated, 8080), Err(StatsError::Malformed { line: 1, .. })));
}

#[test]
fn escaped_label_values_are_unescaped() {
    let sample = parse_sample(r#"m{a="x\"y\\z",b="1"} 4"#).expect("parses");
    assert_eq!(sample.labels, vec![("a", "x\"y\\z".to_owned()), ("b", "1".to_owned())]);
    assert!((sample.value - 4.0).abs() < f64::EPSILON);
}

#[test]
fn knative_sample_sizes() {
    for (population, size) in [(0, 0), (1, 1), (3, 3), (4, 4), (10, 7), (100, 14), (1000, 16)] {
        assert_eq!(sample_size(population), size, "population {population}");
    }
}

#[test]
fn the_sample_moves_over_every_pod() {
    let pods: Vec<u32> = (0..10).collect();
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..4 {
        let order = scrape_order(&pods, round);
        assert_eq!(order.len(), 10, "every pod can stand in for one that does not answer");
        seen.extend(order.into_iter().take(sample_size(pods.len())));
    }
    assert_eq!(seen.len(), 10, "every pod is in the sample within a few rounds");
    assert_eq!(scrape_order(&pods, 13)[..3], [3, 4, 5]);
    assert!(scrape_order::<u32>(&[], 3).is_empty());
}

#[test]
fn the_average_is_extrapolated_to_every_ready_pod() {
    let stats = [PodStat { concurrency: 4.0, rps: Some(10.0) }, PodStat { concurrency: 6.0, rps: None }];
    let figures = average(&stats, 5).expect("two pods answered");
    assert!((figures.concurrency - 25.0).abs() < 1e-9, "{figures:?}");
    assert!((figures.rps - 50.0).abs() < 1e-9, "rates of the pods that have one: {figures:?}");
    assert_eq!(average(&[], 5), None);
}

#[test]
fn the_counter_becomes_a_rate_between_scrapes() {
    let mut counters = Counters::default();
    let first = counters.observe("10.0.0.1:8080", 1_000, SidecarSample { active: 2.0, total: 100.0 });
    assert_eq!(first, PodStat { concurrency: 2.0, rps: None });
    let second = counters.observe("10.0.0.1:8080", 3_000, SidecarSample { active: 1.0, total: 140.0 });
    assert_eq!(second, PodStat { concurrency: 1.0, rps: Some(20.0) });
    // A restarted sidecar starts its counter again: no rate for that round.
    let restarted = counters.observe("10.0.0.1:8080", 4_000, SidecarSample { active: 0.0, total: 3.0 });
    assert_eq!(restarted.rps, None);
    counters.retain(&[]);
    assert_eq!(counters.observe("10.0.0.1:8080", 5_000, SidecarSample { active: 0.0, total: 9.0 }).rps, None);
}

#[test]
fn gateway_traffic_at_a_pod_is_counted_once() {
    // 5 calls in flight from the gateway, 3 straight from other sidecars:
    // the pod's sidecar sees all 8; the gateway also holds 2.
    let gateway = GatewayFigures { concurrency: 5.0, held_concurrency: 2.0, rps: 50.0 };
    let mesh = MeshFigures { concurrency: 8.0, rps: 80.0, scraped: 1, ready: 1 };
    assert_eq!(combine(gateway, Some(&mesh)), (10.0, 80.0));
}

#[test]
fn mesh_only_traffic_is_counted() {
    let mesh = MeshFigures { concurrency: 6.0, rps: 12.0, scraped: 1, ready: 1 };
    assert_eq!(combine(GatewayFigures::default(), Some(&mesh)), (6.0, 12.0));
}

#[test]
fn without_sidecar_figures_the_gateways_figures_are_used() {
    let gateway = GatewayFigures { concurrency: 5.0, held_concurrency: 2.0, rps: 50.0 };
    assert_eq!(combine(gateway, None), (7.0, 50.0));
}
