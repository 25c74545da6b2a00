//! The per-revision families, read at scrape time from their owners'
//! published state: the activation service's cumulative counters and the
//! gateways' current reports, the KPA statuses (a `watch`), and the world
//! (a `watch`) for each revision's Service and Configuration.
//!
//! | family | type | from |
//! |---|---|---|
//! | `kn_serving_invocation_duration_seconds` | histogram, + `http_response_status_code` | the filters' duration histograms, held time included |
//! | `revgate_request_held_duration_seconds` | histogram | how long requests were held for activation or capacity |
//! | `revgate_request_upstream_duration_seconds` | histogram | durations without the held time |
//! | `revgate_gateway_replies_total` | counter, + `reason` | the filter's own 503s by `x-revgate-reason` |
//! | `revgate_activations_total` | counter | activation requests from the filters |
//! | `revgate_activation_duration_seconds` | histogram | cold starts, from the first activation request to the first gateway's ACK of endpoints |
//! | `kn_revision_request_concurrency` | gauge | time-averaged requests at the gateway (in flight and held), last window |
//! | `kn_revision_request_queued` / `_active` | gauge | requests held / in flight now |
//! | `kn_revision_pods_desired` / `_requested` / `_count` | gauge | the KPA's desired scale / the scale asked of the runtime / ready instances |
//! | `kn_revision_panic_mode` | gauge | 1 while the KPA panics |
//! | `kn_revision_{concurrency,rps}_{stable,panic,target}` | gauge | the KPA's observed values and target, by its metric |
//! | `kn_revision_capacity_excess` | gauge | the KPA's excess burst capacity |
//! | `revgate_instance_{starts,crashes,restarts}_total` | counter | the process runtime's instances |
//! | `revgate_xds_snapshot_builds_total`, `revgate_xds_snapshot_build_seconds_total` | counter (no labels) | the control plane's published snapshots |

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use revgate_activation::counters::{DurationHistogram, RevisionCounters};
use revgate_autoscaler::KpaStatus;
use revgate_model::World;
use revgate_model::meta::{CONFIGURATION_LABEL, SERVICE_LABEL};
use revgate_model::plan::ObjectKey;
use revgate_runtime::{InstanceCounts, InstanceCountsByRevision};
use tokio::sync::watch;

use crate::activation::{ActivationService, RevisionActivity};
use crate::autoscaling::KpaStatuses;
use crate::control::{Handle, Published};

/// Where the per-revision families come from.
#[derive(Debug, Clone)]
pub struct RevisionSources {
    pub activation: ActivationService,
    /// The KPA statuses, when revgate runs the revisions.
    pub kpa: Option<KpaStatuses>,
    /// The control plane: the world (for labels) and the snapshots published.
    pub control: Handle,
    /// The process runtime's starts, crashes and restarts, when it runs the revisions.
    pub instances: Option<watch::Receiver<Arc<InstanceCountsByRevision>>>,
}

/// Encodes the per-revision families on each scrape.
#[derive(Debug)]
pub struct RevisionCollector {
    sources: RevisionSources,
}

type Labels = Vec<(&'static str, String)>;

/// Which of a revision's instance counts a family shows.
type PickCount = fn(&InstanceCounts) -> u64;

/// Which of a revision's histograms a family shows.
type PickHistogram = fn(&RevisionCounters) -> &DurationHistogram;

/// What one scrape reads, copied out of the owners' state first so that no
/// `watch` borrow is held while encoding.
struct Scrape {
    counters: BTreeMap<ObjectKey, Arc<RevisionCounters>>,
    activity: BTreeMap<ObjectKey, RevisionActivity>,
    kpa: Arc<BTreeMap<ObjectKey, KpaStatus>>,
    world: Arc<World>,
    published: Published,
    instances: Arc<InstanceCountsByRevision>,
}

impl Scrape {
    /// Knative's attributes of a revision, as labels.
    fn labels(&self, key: &ObjectKey) -> Labels {
        let revision = self.world.revisions.get(key);
        let label = |name: &str| revision.and_then(|r| r.metadata.labels.get(name)).cloned().unwrap_or_default();
        vec![
            ("k8s_namespace_name", key.namespace.clone()),
            ("kn_service_name", label(SERVICE_LABEL)),
            ("kn_configuration_name", label(CONFIGURATION_LABEL)),
            ("kn_revision_name", key.name.clone()),
        ]
    }
}

impl RevisionCollector {
    pub fn new(sources: RevisionSources) -> Self {
        Self { sources }
    }

    fn read(&self) -> Scrape {
        Scrape {
            counters: self.sources.activation.counters(),
            activity: self.sources.activation.activity(),
            kpa: self.sources.kpa.as_ref().map(|kpa| kpa.borrow().clone()).unwrap_or_default(),
            world: self.sources.control.world(),
            published: self.sources.control.published(),
            instances: self.sources.instances.as_ref().map(|counts| counts.borrow().clone()).unwrap_or_default(),
        }
    }
}

impl Collector for RevisionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let scrape = self.read();
        encode_histograms(&mut encoder, &scrape)?;
        encode_counters(&mut encoder, &scrape)?;
        encode_gateway_gauges(&mut encoder, &scrape)?;
        encode_kpa_gauges(&mut encoder, &scrape)?;
        encode_control_counters(&mut encoder, &scrape)
    }
}

/// The control plane's snapshots and the runtime's instances.
fn encode_control_counters(encoder: &mut DescriptorEncoder, scrape: &Scrape) -> Result<(), std::fmt::Error> {
    let builds = encoder.encode_descriptor(
        "revgate_xds_snapshot_builds",
        "xDS snapshots the control plane built and published",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(scrape.published.generation).encode(builds)?;
    let seconds = encoder.encode_descriptor(
        "revgate_xds_snapshot_build_seconds",
        "Time spent building xDS snapshots, in all (divide its rate by the builds' for the average build time)",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(scrape.published.build_seconds_total).encode(seconds)?;
    let families: [(&str, &str, PickCount); 3] = [
        ("revgate_instance_starts", "Revision instance processes started, restarts included", |c| c.starts),
        ("revgate_instance_crashes", "Revision instance processes that ended or failed to start while wanted", |c| {
            c.crashes
        }),
        ("revgate_instance_restarts", "Crashed revision instances started again", |c| c.restarts),
    ];
    for (name, help, count) in families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (key, counts) in scrape.instances.iter() {
            ConstCounter::new(count(counts)).encode(family.encode_family(&scrape.labels(key))?)?;
        }
    }
    Ok(())
}

fn encode_histograms(encoder: &mut DescriptorEncoder, scrape: &Scrape) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "kn_serving_invocation_duration",
        "The duration of task execution: each request through the gateway, from its headers to the end of its response, time held for activation included",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (key, counters) in &scrape.counters {
        for (code, histogram) in &counters.invocations {
            let mut labels = scrape.labels(key);
            labels.push(("http_response_status_code", code.to_string()));
            histogram_sample(family.encode_family(&labels)?, histogram)?;
        }
    }
    let per_revision: [(&str, &str, PickHistogram); 3] = [
        (
            "revgate_request_held_duration",
            "How long requests were held at the gateway (revision at zero, or at its containerConcurrency) before they went on or were answered",
            |c| &c.held,
        ),
        (
            "revgate_request_upstream_duration",
            "Duration of each request through the gateway without the time it was held: what the revision took",
            |c| &c.duration,
        ),
        (
            "revgate_activation_duration",
            "Cold starts: from the first activation request for a revision no gateway could reach to the first gateway acknowledging its endpoints",
            |c| &c.activation_duration,
        ),
    ];
    for (name, help, histogram) in per_revision {
        let mut family = encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (key, counters) in &scrape.counters {
            histogram_sample(family.encode_family(&scrape.labels(key))?, histogram(counters))?;
        }
    }
    Ok(())
}

fn histogram_sample(
    mut encoder: prometheus_client::encoding::MetricEncoder,
    histogram: &DurationHistogram,
) -> Result<(), std::fmt::Error> {
    encoder.encode_histogram::<NoLabelSet>(histogram.sum_seconds(), histogram.count(), &histogram.buckets(), None)
}

fn encode_counters(encoder: &mut DescriptorEncoder, scrape: &Scrape) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "revgate_gateway_replies",
        "Requests the gateway filter answered itself (503), by x-revgate-reason",
        None,
        MetricType::Counter,
    )?;
    for (key, counters) in &scrape.counters {
        for (reason, count) in &counters.reasons {
            let mut labels = scrape.labels(key);
            labels.push(("reason", reason.clone()));
            ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "revgate_activations",
        "Activation requests the gateway filters sent for a revision with no ready endpoints",
        None,
        MetricType::Counter,
    )?;
    for (key, counters) in &scrape.counters {
        ConstCounter::new(counters.activations).encode(family.encode_family(&scrape.labels(key))?)?;
    }
    Ok(())
}

/// One gauge family over every revision that has a value.
fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Labels, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_gateway_gauges(encoder: &mut DescriptorEncoder, scrape: &Scrape) -> Result<(), std::fmt::Error> {
    let rows = |value: fn(&RevisionActivity) -> f64| {
        scrape.activity.iter().map(move |(key, activity)| (scrape.labels(key), value(activity)))
    };
    gauge_family(
        encoder,
        "kn_revision_request_concurrency",
        "Concurrent requests at the gateway for the revision, in flight and held, averaged over the filters' last report window",
        rows(|a| a.totals.concurrency + a.totals.held_concurrency),
    )?;
    gauge_family(
        encoder,
        "kn_revision_request_queued",
        "Number of requests currently held at the gateway waiting for capacity or activation",
        rows(|a| a.totals.held as f64),
    )?;
    gauge_family(
        encoder,
        "kn_revision_request_active",
        "Number of requests currently being proxied to the revision by the gateway",
        rows(|a| a.totals.in_flight as f64),
    )
}

fn encode_kpa_gauges(encoder: &mut DescriptorEncoder, scrape: &Scrape) -> Result<(), std::fmt::Error> {
    let rows = |value: fn(&KpaStatus) -> Option<f64>| {
        scrape.kpa.iter().filter_map(move |(key, status)| Some((scrape.labels(key), value(status)?)))
    };
    let by_metric = |metric: &'static str, value: fn(&KpaStatus) -> f64| {
        scrape
            .kpa
            .iter()
            .filter(move |(_, status)| (status.metric == "rps") == (metric == "rps"))
            .map(move |(key, status)| (scrape.labels(key), value(status)))
    };
    gauge_family(
        encoder,
        "kn_revision_pods_desired",
        "Number of pods the autoscaler wants to allocate",
        rows(|s| s.desired_scale.map(|d| d as f64)),
    )?;
    gauge_family(
        encoder,
        "kn_revision_pods_requested",
        "Number of pods autoscaler requested from the runtime",
        rows(|s| s.requested_scale.map(f64::from)),
    )?;
    gauge_family(
        encoder,
        "kn_revision_pods_count",
        "Number of pods that are allocated currently (ready)",
        rows(|s| Some(f64::from(s.actual_scale))),
    )?;
    gauge_family(
        encoder,
        "kn_revision_panic_mode",
        "If greater than 0 the autoscaler is in panic mode",
        rows(|s| Some(if s.panicking { 1.0 } else { 0.0 })),
    )?;
    gauge_family(
        encoder,
        "kn_revision_capacity_excess",
        "Excess burst capacity observed over the stable window",
        rows(|s| Some(s.excess_burst_capacity as f64)),
    )?;
    for metric in ["concurrency", "rps"] {
        let what = if metric == "rps" { "requests-per-second" } else { "request count" };
        gauge_family(
            encoder,
            &format!("kn_revision_{metric}_stable"),
            &format!("Average of {what} over the stable window, revision-wide"),
            by_metric(metric, |s| s.observed_stable_value),
        )?;
        gauge_family(
            encoder,
            &format!("kn_revision_{metric}_panic"),
            &format!("Average of {what} over the panic window, revision-wide"),
            by_metric(metric, |s| s.observed_panic_value),
        )?;
        gauge_family(
            encoder,
            &format!("kn_revision_{metric}_target"),
            &format!("The desired {what} for each pod"),
            by_metric(metric, |s| s.target),
        )?;
    }
    Ok(())
}
