//! Envoy's own statistics of the revision clusters, pushed by the gateway
//! over Envoy's `MetricsService` stats sink (`envoy.service.metrics.v3`).
//!
//! Requests served without the gateway filter (see [`crate::warm`]) are
//! measured by nobody else, so what the KPA needs of them comes from here:
//! per revision cluster, the requests in flight to it
//! (`upstream_rq_active`, a gauge sampled at each flush), the requests and
//! 5xx answers since the last flush (`upstream_rq_total`,
//! `upstream_rq_xx{class=5}`, sent as deltas), and for `/metrics` the answers
//! by status code (`upstream_rq{code}`) and their response times
//! (`upstream_rq_time`, kept by Envoy in Knative's latency buckets). The bootstrap revgate renders
//! configures the sink (`render`), with tags as labels so that the cluster
//! comes as the label `envoy.cluster_name`, its statistics name
//! `<namespace>/<revision>`.
//!
//! The service only parses and forwards: each message becomes an
//! [`EnvoyStats`] sent to whoever follows (the activation service); a
//! follower that lags loses messages rather than slowing Envoy down.

use std::collections::BTreeMap;
use std::time::SystemTime;

use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::{MetricsService, MetricsServiceServer};
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use envoy_types::pb::io::prometheus::client::{Metric, MetricFamily};
use revgate_model::plan::ObjectKey;
use revgate_proto::{DURATION_BOUNDS_SECONDS, DURATION_BUCKETS};
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::server::GatewayAuth;

/// The label Envoy's tag extraction gives a cluster's statistics name (the
/// sink sends tag names as they are, not as Prometheus names).
const CLUSTER_LABEL: &str = "envoy.cluster_name";
/// The label of a response code (`upstream_rq_503`).
const CODE_LABEL: &str = "envoy.response_code";
/// The label of a response code class (`5` for `upstream_rq_5xx`).
const CODE_CLASS_LABEL: &str = "envoy.response_code_class";
/// Messages buffered for the follower; beyond, the newest are dropped.
const BUFFER: usize = 64;
/// How often Envoy flushes statistics to the sink (the bootstrap's
/// `stats_flush_interval`): the KPA's one-second buckets.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One revision cluster's figures in one flush.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterStats {
    /// Requests in flight to the revision when Envoy flushed.
    pub active: f64,
    /// Requests sent to the revision since the previous flush.
    pub requests: u64,
    /// Of those, answered 5xx.
    pub responses_5xx: u64,
    /// Requests answered since the previous flush, by status code
    /// (`upstream_rq{envoy.response_code}`).
    pub codes: BTreeMap<u16, u64>,
    /// The response times of every answered request since Envoy started
    /// (`upstream_rq_time`), when Envoy keeps them in Knative's buckets.
    pub durations: Option<CumulativeDurations>,
}

/// A cumulative histogram over Knative's latency buckets
/// ([`DURATION_BOUNDS_SECONDS`] and the bucket above them).
#[derive(Debug, Clone, PartialEq)]
pub struct CumulativeDurations {
    /// Per bucket (not cumulative across buckets).
    pub buckets: [u64; DURATION_BUCKETS],
    pub count: u64,
    pub sum_seconds: f64,
}

/// One flush of one gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyStats {
    pub node: String,
    pub received: SystemTime,
    /// When Envoy flushed, by the gateway's clock (Unix ms; the metrics'
    /// timestamp), the clock the filters' report windows use too.
    pub flushed_unix_ms: Option<u64>,
    /// Every revision cluster Envoy reported.
    pub revisions: BTreeMap<ObjectKey, ClusterStats>,
}

/// The `MetricsService` Envoy streams its statistics to.
#[derive(Debug, Clone)]
pub struct StatsSink {
    tx: mpsc::Sender<EnvoyStats>,
}

impl StatsSink {
    /// A sink and the receiver of what it parses.
    pub fn new() -> (Self, mpsc::Receiver<EnvoyStats>) {
        let (tx, rx) = mpsc::channel(BUFFER);
        (Self { tx }, rx)
    }

    /// The tonic service, behind the same gateway authentication as ADS.
    pub fn into_authenticated_service(
        self,
        auth: GatewayAuth,
    ) -> InterceptedService<MetricsServiceServer<StatsSink>, GatewayAuth> {
        MetricsServiceServer::with_interceptor(self, auth)
    }
}

#[tonic::async_trait]
impl MetricsService for StatsSink {
    async fn stream_metrics(
        &self,
        request: Request<Streaming<StreamMetricsMessage>>,
    ) -> Result<Response<StreamMetricsResponse>, Status> {
        let mut stream = request.into_inner();
        // Envoy names its node only in a stream's first message.
        let mut node = String::new();
        while let Some(message) = stream.message().await? {
            if let Some(id) = message.identifier.as_ref().and_then(|i| i.node.as_ref()) {
                node.clone_from(&id.id);
            }
            let stats = EnvoyStats {
                node: node.clone(),
                received: SystemTime::now(),
                flushed_unix_ms: flushed_at(&message.envoy_metrics),
                revisions: parse(&message.envoy_metrics),
            };
            tracing::trace!(node, revisions = ?stats.revisions, "statistics flushed");
            if self.tx.is_closed() {
                break;
            }
            // A follower that lags loses this flush; the next one comes in a second.
            let _ = self.tx.try_send(stats);
        }
        Ok(Response::new(StreamMetricsResponse {}))
    }
}

/// The revision clusters' figures in one flush's metric families; other
/// clusters and statistics are ignored.
pub fn parse(families: &[MetricFamily]) -> BTreeMap<ObjectKey, ClusterStats> {
    let mut revisions: BTreeMap<ObjectKey, ClusterStats> = BTreeMap::new();
    for family in families {
        let Some(name) = family.name.as_deref().and_then(|n| n.strip_prefix("cluster.")) else { continue };
        let field: fn(&mut ClusterStats, &Metric) = match name {
            "upstream_rq_active" => |s, m| s.active = m.gauge.as_ref().and_then(|g| g.value).unwrap_or(0.0),
            "upstream_rq_total" => |s, m| s.requests = counter(m),
            "upstream_rq_xx" => |s, m| {
                if label(m, CODE_CLASS_LABEL) == Some("5") {
                    s.responses_5xx = counter(m);
                }
            },
            "upstream_rq" => |s, m| {
                if let Some(code) = label(m, CODE_LABEL).and_then(|c| c.parse::<u16>().ok()) {
                    *s.codes.entry(code).or_insert(0) += counter(m);
                }
            },
            "upstream_rq_time" => |s, m| s.durations = m.histogram.as_ref().and_then(knative_buckets),
            _ => continue,
        };
        for metric in &family.metric {
            let Some(revision) = label(metric, CLUSTER_LABEL).and_then(parse_revision_stat_name) else { continue };
            field(revisions.entry(revision).or_default(), metric);
        }
    }
    revisions
}

/// When a flush was taken: its metrics' latest timestamp.
fn flushed_at(families: &[MetricFamily]) -> Option<u64> {
    families.iter().flat_map(|f| &f.metric).filter_map(|m| m.timestamp_ms).max().and_then(|ms| u64::try_from(ms).ok())
}

/// Envoy's histogram as Knative's buckets, when its bounds are those
/// (the bootstrap's `histogram_bucket_settings`, in milliseconds); `None`
/// when a bound is missing.
fn knative_buckets(histogram: &envoy_types::pb::io::prometheus::client::Histogram) -> Option<CumulativeDurations> {
    let mut buckets = [0u64; DURATION_BUCKETS];
    let count = histogram.sample_count?;
    let mut below = 0u64;
    for (i, bound) in DURATION_BOUNDS_SECONDS.iter().enumerate() {
        let cumulative = histogram
            .bucket
            .iter()
            .find(|b| b.upper_bound.is_some_and(|ms| (ms - bound * 1000.0).abs() < 1e-6))?
            .cumulative_count?;
        *buckets.get_mut(i)? = cumulative.saturating_sub(below);
        below = below.max(cumulative);
    }
    *buckets.last_mut()? = count.saturating_sub(below);
    let sum_seconds = histogram.sample_sum.unwrap_or(0.0) / 1000.0;
    Some(CumulativeDurations { buckets, count, sum_seconds })
}

fn label<'a>(metric: &'a Metric, name: &str) -> Option<&'a str> {
    metric.label.iter().find(|l| l.name.as_deref() == Some(name)).and_then(|l| l.value.as_deref())
}

/// A counter's value (a delta since the previous flush), as a count.
fn counter(metric: &Metric) -> u64 {
    let value = metric.counter.as_ref().and_then(|c| c.value).unwrap_or(0.0);
    if value.is_finite() && value > 0.0 { value.round() as u64 } else { 0 }
}

/// Inverse of [`crate::names::revision_stat_name`]: `<namespace>/<revision>`.
pub fn parse_revision_stat_name(name: &str) -> Option<ObjectKey> {
    let (namespace, revision) = name.split_once('/')?;
    (!namespace.is_empty() && !revision.is_empty() && !revision.contains('/'))
        .then(|| ObjectKey::new(namespace, revision))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::io::prometheus::client::{Counter, Gauge, LabelPair};

    use super::*;

    fn metric(labels: &[(&str, &str)], gauge: Option<f64>, counter: Option<f64>) -> Metric {
        Metric {
            label: labels
                .iter()
                .map(|(n, v)| LabelPair { name: Some((*n).to_owned()), value: Some((*v).to_owned()) })
                .collect(),
            gauge: gauge.map(|value| Gauge { value: Some(value) }),
            counter: counter.map(|value| Counter { value: Some(value), ..Default::default() }),
            ..Default::default()
        }
    }

    fn family(name: &str, metric: Vec<Metric>) -> MetricFamily {
        MetricFamily { name: Some(name.to_owned()), metric, ..Default::default() }
    }

    #[test]
    fn revision_clusters_figures_are_read_and_everything_else_ignored() {
        let rev = [(CLUSTER_LABEL, "default/hello-00001")];
        let families = vec![
            family(
                "cluster.upstream_rq_active",
                vec![metric(&rev, Some(7.0), None), metric(&[(CLUSTER_LABEL, "revgate-xds")], Some(1.0), None)],
            ),
            family("cluster.upstream_rq_total", vec![metric(&rev, None, Some(120.0))]),
            family(
                "cluster.upstream_rq_xx",
                vec![
                    metric(&[rev[0], (CODE_CLASS_LABEL, "2")], None, Some(117.0)),
                    metric(&[rev[0], (CODE_CLASS_LABEL, "5")], None, Some(3.0)),
                ],
            ),
            family("cluster.upstream_cx_active", vec![metric(&rev, Some(50.0), None)]),
            family("server.live", vec![metric(&[], Some(1.0), None)]),
        ];
        let parsed = parse(&families);
        assert_eq!(
            parsed,
            BTreeMap::from([(
                ObjectKey::new("default", "hello-00001"),
                ClusterStats { active: 7.0, requests: 120, responses_5xx: 3, ..Default::default() }
            )])
        );
    }

    #[test]
    fn codes_and_knative_buckets_are_read_and_other_bounds_are_not() {
        use envoy_types::pb::io::prometheus::client::{Bucket, Histogram};
        let rev = [(CLUSTER_LABEL, "default/hello-00001")];
        let histogram = |bounds: &[f64], cumulative: &[u64]| Histogram {
            sample_count: Some(10),
            sample_sum: Some(250.0),
            bucket: bounds
                .iter()
                .zip(cumulative)
                .map(|(b, c)| Bucket { upper_bound: Some(*b), cumulative_count: Some(*c), ..Default::default() })
                .collect(),
            ..Default::default()
        };
        let knative_ms: Vec<f64> = DURATION_BOUNDS_SECONDS.iter().map(|b| b * 1000.0).collect();
        // 4 under 5 ms, 5 between 25 and 50 ms, 1 above 10 s.
        let cumulative = [4, 4, 4, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9];
        let with = |h: Histogram| {
            let mut m = metric(&rev, None, None);
            m.histogram = Some(h);
            vec![
                family(
                    "cluster.upstream_rq",
                    vec![
                        metric(&[rev[0], (CODE_LABEL, "200")], None, Some(8.0)),
                        metric(&[rev[0], (CODE_LABEL, "503")], None, Some(2.0)),
                    ],
                ),
                family("cluster.upstream_rq_time", vec![m]),
            ]
        };
        let parsed = parse(&with(histogram(&knative_ms, &cumulative)));
        let stats = &parsed[&ObjectKey::new("default", "hello-00001")];
        assert_eq!(stats.codes, BTreeMap::from([(200, 8), (503, 2)]));
        let durations = stats.durations.as_ref().expect("Knative's buckets");
        assert_eq!(durations.buckets, [4, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!((durations.count, durations.sum_seconds), (10, 0.25));
        let envoys_own = parse(&with(histogram(&[0.5, 1.0, 5.0], &[4, 4, 4])));
        assert_eq!(envoys_own[&ObjectKey::new("default", "hello-00001")].durations, None);
    }

    #[test]
    fn only_namespace_slash_revision_names_a_revision() {
        assert_eq!(parse_revision_stat_name("default/hello-00001"), Some(ObjectKey::new("default", "hello-00001")));
        for other in ["revgate-xds", "/x", "x/", "a/b/c", "rev|default|hello-00001"] {
            assert_eq!(parse_revision_stat_name(other), None, "{other}");
        }
    }
}
