//! What a revision's pods' sidecars count, as the KPA reads it: Knative's
//! stats scraper with each pod's Istio sidecar standing in for its
//! queue-proxy. Pure: the scraping loop ([`crate::scraper`]) fetches, this
//! module parses, samples, averages and combines.
//!
//! A call from inside the mesh goes sidecar to pod (the `-mesh`
//! VirtualService), past every gateway, so only the pod's own sidecar sees
//! it. That sidecar's inbound cluster (`inbound|<port>||`, the port the pod
//! serves on) counts every request that reaches the pod, from the gateway
//! or from another sidecar: `envoy_cluster_upstream_rq_active` (in flight)
//! and `envoy_cluster_upstream_rq_total` (a counter). Istio serves them on
//! the sidecar's Prometheus port (`:15090/stats/prometheus`) once the pod's
//! `proxy.istio.io/config` includes them ([`STATS_INCLUSION`]).
//!
//! Knative's rules, kept as they are:
//! - every second, a sample of the ready pods is scraped, its size by
//!   [`sample_size`] (95 % confidence, margin of error 5, variance 100), a
//!   pod that does not answer replaced by the next ([`scrape_order`]);
//! - the sampled values are averaged and multiplied by the ready pods, so
//!   the figure is the revision's total ([`average`]);
//! - nothing is counted twice ([`combine`]): Knative's queue-proxy subtracts
//!   the requests the activator proxied, because the activator reports them;
//!   here the sidecar's figure already holds every request the gateway
//!   passed to a pod, so of the gateway filter's figures only what it holds
//!   (not yet at any pod) is added.
//!
//! One difference: a queue-proxy reports its concurrency averaged over the
//! second, Envoy's gauge is read at the moment of the scrape. The metric
//! windows average those samples (60 a stable window by default), so a
//! steady load reads true; a burst shorter than a second may be missed by
//! the sample and is seen in the request rate only.

use std::collections::BTreeMap;

use thiserror::Error;

/// Istio's Envoy Prometheus port on every sidecar.
pub const STATS_PORT: u16 = 15090;
/// The path Istio serves Envoy's stats on.
pub const STATS_PATH: &str = "/stats/prometheus";
pub use revgate_istio::deployment::{PROXY_CONFIG_ANNOTATION, SIDECAR_STATS_INCLUSION as STATS_INCLUSION};

/// The in-flight gauge of an Envoy cluster.
pub const ACTIVE_METRIC: &str = "envoy_cluster_upstream_rq_active";
/// The request counter of an Envoy cluster.
pub const TOTAL_METRIC: &str = "envoy_cluster_upstream_rq_total";
/// The cluster label: Istio's stats tag, then plain Envoy's default tag.
const CLUSTER_LABELS: [&str; 2] = ["cluster_name", "envoy_cluster_name"];

/// Istio's name of a sidecar's inbound cluster for a pod port.
pub fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Why a sidecar's stats could not be read.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum StatsError {
    #[error("line {line} of the sidecar's stats: {detail}")]
    Malformed { line: usize, detail: String },
    #[error(
        "the sidecar's stats have no `{metric}` for cluster `{cluster}`; the pod needs the annotation \
         `{PROXY_CONFIG_ANNOTATION}: {STATS_INCLUSION}` (the controller sets it on revision Deployments)"
    )]
    Missing { metric: &'static str, cluster: String },
}

/// One scrape of one pod's sidecar: its inbound cluster's gauge and counter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SidecarSample {
    /// Requests in flight to the pod now.
    pub active: f64,
    /// Requests sent to the pod since the sidecar started.
    pub total: f64,
}

/// Reads the inbound cluster of `port` from a sidecar's Prometheus text.
/// Only the two metrics' lines are parsed; anything else is skipped.
pub fn parse_sidecar_stats(text: &str, port: u16) -> Result<SidecarSample, StatsError> {
    let cluster = inbound_cluster(port);
    let (mut active, mut total) = (None, None);
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        let slot = if is_sample_of(line, ACTIVE_METRIC) {
            &mut active
        } else if is_sample_of(line, TOTAL_METRIC) {
            &mut total
        } else {
            continue;
        };
        let malformed = |detail: String| StatsError::Malformed { line: index + 1, detail };
        let sample = parse_sample(line).map_err(malformed)?;
        if sample.labels.iter().any(|(name, value)| CLUSTER_LABELS.contains(name) && *value == cluster) {
            *slot = Some(sample.value);
        }
    }
    let active = active.ok_or_else(|| StatsError::Missing { metric: ACTIVE_METRIC, cluster: cluster.clone() })?;
    let total = total.ok_or(StatsError::Missing { metric: TOTAL_METRIC, cluster })?;
    Ok(SidecarSample { active, total })
}

fn is_sample_of(line: &str, metric: &str) -> bool {
    line.strip_prefix(metric).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
}

/// A sample's labels: names as written, values unescaped.
type Labels<'a> = Vec<(&'a str, String)>;

/// One line of the text format: `name{label="value",…} value [timestamp]`.
#[derive(Debug, PartialEq)]
struct Sample<'a> {
    labels: Labels<'a>,
    value: f64,
}

fn parse_sample(line: &str) -> Result<Sample<'_>, String> {
    let (labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, rest) = parse_labels(&line[open + 1..])?;
            (labels, rest)
        }
        None => (Vec::new(), line.find(' ').map_or("", |space| &line[space..])),
    };
    let value = rest.split_whitespace().next().ok_or("no value after the metric name")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse::<f64>().map_err(|e| format!("value `{other}`: {e}"))?,
    };
    Ok(Sample { labels, value })
}

/// The labels up to the closing brace, and what follows it.
fn parse_labels(mut rest: &str) -> Result<(Labels<'_>, &str), String> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("a label without `=`")?;
        let name = rest[..eq].trim();
        let quoted = rest[eq + 1..].trim_start().strip_prefix('"').ok_or_else(|| format!("label `{name}` unquoted"))?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("label `{name}` ends inside an escape")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("label `{name}` has no closing quote")),
            }
        };
        labels.push((name, value));
        rest = &quoted[end + 1..];
    }
}

/// Knative's `populationMeanSampleSize`: how many of `population` ready pods
/// to scrape for the mean within a margin of error of 5 at 95 % confidence
/// (variance 100): all of up to 3, then `ceil(N·15.3664 / (N + 14.3664))`
/// (10 → 7, 100 → 14, 1000 → 16).
pub fn sample_size(population: usize) -> usize {
    const Z_SQ_VARIANCE_OVER_E_SQ: f64 = 1.96 * 1.96 * 100.0 / 25.0;
    if population <= 3 {
        return population;
    }
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = population as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let size = (n * Z_SQ_VARIANCE_OVER_E_SQ / (n - 1.0 + Z_SQ_VARIANCE_OVER_E_SQ)).ceil() as usize;
    size.min(population)
}

/// The order in which round `round` tries the pods: the first
/// [`sample_size`] are the sample; as in Knative, a pod that does not
/// answer is replaced by the next one down the line. Knative orders by pod
/// age; here the list starts one pod further each round, which spreads the
/// sample over every pod and keeps this a function of its inputs.
pub fn scrape_order<T: Clone>(pods: &[T], round: u64) -> Vec<T> {
    if pods.is_empty() {
        return Vec::new();
    }
    let start = usize::try_from(round % pods.len() as u64).unwrap_or(0);
    pods.iter().cycle().skip(start).take(pods.len()).cloned().collect()
}

/// One pod's figures in one round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodStat {
    pub concurrency: f64,
    /// Requests per second since the previous scrape of this pod; `None`
    /// on its first scrape or after its sidecar restarted.
    pub rps: Option<f64>,
}

/// A revision's figures from its sidecars: revision-wide totals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeshFigures {
    pub concurrency: f64,
    pub rps: f64,
    /// Pods whose sidecars answered.
    pub scraped: usize,
    /// Ready pods the average was extrapolated to.
    pub ready: usize,
}

/// Knative's `computeAverages`: the mean of the scraped pods times the
/// ready pods. `None` when no pod answered (the caller falls back).
pub fn average(stats: &[PodStat], ready: usize) -> Option<MeshFigures> {
    if stats.is_empty() {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let (scraped, pods) = (stats.len() as f64, ready.max(stats.len()) as f64);
    let concurrency = stats.iter().map(|s| s.concurrency).sum::<f64>() / scraped * pods;
    let rates: Vec<f64> = stats.iter().filter_map(|s| s.rps).collect();
    #[allow(clippy::cast_precision_loss)]
    let rps = if rates.is_empty() { 0.0 } else { rates.iter().sum::<f64>() / rates.len() as f64 * pods };
    Some(MeshFigures { concurrency, rps, scraped: stats.len(), ready })
}

/// The request counters last seen per pod, to turn Envoy's cumulative
/// counter into a rate as Knative's queue-proxy reports it.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    last: BTreeMap<String, (u64, f64)>,
}

impl Counters {
    /// `pod`'s figures from a sample taken at `now_ms`.
    pub fn observe(&mut self, pod: &str, now_ms: u64, sample: SidecarSample) -> PodStat {
        let rps = self.last.insert(pod.to_owned(), (now_ms, sample.total)).and_then(|(then_ms, then_total)| {
            let elapsed_ms = now_ms.checked_sub(then_ms).filter(|ms| *ms > 0)?;
            // A counter that went back is a restarted sidecar: no rate yet.
            let delta = sample.total - then_total;
            #[allow(clippy::cast_precision_loss)]
            (delta >= 0.0).then(|| delta * 1000.0 / elapsed_ms as f64)
        });
        PodStat { concurrency: sample.active.max(0.0), rps }
    }

    /// Forgets the pods no longer ready.
    pub fn retain(&mut self, ready: &[String]) {
        self.last.retain(|pod, _| ready.contains(pod));
    }
}

/// The gateway filters' figures for a revision (the activation service's totals).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GatewayFigures {
    /// Requests the gateways passed to the revision's pods, in flight.
    pub concurrency: f64,
    /// Requests the gateways hold (revision cold, or no capacity yet).
    pub held_concurrency: f64,
    pub rps: f64,
}

/// What the KPA records for a revision: `(concurrency, rps)`.
///
/// | sidecar figures | concurrency | rps |
/// |---|---|---|
/// | yes | sidecars' in flight + gateways' held | sidecars' |
/// | no (no ready pod, no sidecar, stats port unreachable) | gateways' in flight + held | gateways' |
///
/// A request the gateway passed on reaches a pod, whose sidecar counts it:
/// adding the gateway's in-flight figure too would count it twice. A held
/// request is at no pod yet, so only the gateway knows it; once released it
/// reaches a pod and its sidecar counts it, in flight and in the rate.
pub fn combine(gateway: GatewayFigures, mesh: Option<&MeshFigures>) -> (f64, f64) {
    match mesh {
        Some(mesh) => (mesh.concurrency + gateway.held_concurrency, mesh.rps),
        None => (gateway.concurrency + gateway.held_concurrency, gateway.rps),
    }
}

#[cfg(test)]
#[path = "scrape_tests.rs"]
mod tests;
