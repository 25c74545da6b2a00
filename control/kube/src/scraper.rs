//! The scraping loop: every second the leader scrapes a sample of each
//! revision's ready pods' sidecars and publishes the revisions' figures for
//! the KPA ([`crate::scrape`] holds every rule; this is the I/O around it).
//!
//! ```text
//! runtime states (ready pod IPs) ──▶ scrape loop ──GET podIP:15090/stats/prometheus──▶ sidecars
//!                                        │
//!                                        ▼ watch<Arc<BTreeMap<revision, MeshFigures>>>
//!                                   the autoscaler (combined with the gateways' reports)
//! ```
//!
//! A revision is absent from the published map when none of its sampled
//! pods' sidecars answered (no ready pod, a namespace outside the mesh, the
//! stats port unreachable or the inbound stats not included): the KPA then
//! uses the gateways' figures alone, and the log says so once per revision
//! (and once more when the sidecars answer again).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use revgate_model::plan::{Endpoint, ObjectKey};
use revgate_runtime_api::RevisionStates;
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::scrape::{self, Counters, MeshFigures, PodStat, SidecarSample, StatsError};

/// Readers of the revisions' sidecar figures.
pub type SidecarFigures = watch::Receiver<Arc<BTreeMap<ObjectKey, MeshFigures>>>;

/// Where and how often the sidecars are scraped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeConfig {
    /// The sidecar's stats port on each pod IP (Istio's 15090).
    pub port: u16,
    /// The stats path (`/stats/prometheus`).
    pub path: String,
    /// Knative's scrape tick: 1 s, one metric bucket.
    pub interval: Duration,
    /// Knative's scrape client timeout: 3 s.
    pub timeout: Duration,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            port: scrape::STATS_PORT,
            path: scrape::STATS_PATH.to_owned(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        }
    }
}

/// Why one pod's sidecar gave no figures.
#[derive(Debug, Error)]
pub enum ScrapeError {
    #[error(
        "scraping {url}: {source}; is the namespace in the mesh (a sidecar on the pod) and port {port} reachable from the controller?"
    )]
    Unreachable { url: String, port: u16, source: reqwest::Error },
    #[error("scraping {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("scraping {url}: {source}")]
    Stats { url: String, source: StatsError },
}

/// Starts the loop; it scrapes only while `leading` is true (only the
/// leader runs the KPA) and stops when every reader is gone.
pub fn start(
    states: watch::Receiver<Arc<RevisionStates>>,
    leading: watch::Receiver<bool>,
    config: ScrapeConfig,
) -> SidecarFigures {
    let (figures_tx, figures) = watch::channel(Arc::new(BTreeMap::new()));
    tokio::spawn(run(states, leading, config, figures_tx));
    figures
}

async fn run(
    states: watch::Receiver<Arc<RevisionStates>>,
    leading: watch::Receiver<bool>,
    config: ScrapeConfig,
    figures: watch::Sender<Arc<BTreeMap<ObjectKey, MeshFigures>>>,
) {
    let http = match reqwest::Client::builder().timeout(config.timeout).no_proxy().build() {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the sidecar scraper's HTTP client: the KPA uses the gateways' figures only");
            return;
        }
    };
    let epoch = Instant::now();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut counters: BTreeMap<ObjectKey, Counters> = BTreeMap::new();
    let mut falling_back: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut round: u64 = 0;
    loop {
        tick.tick().await;
        if figures.is_closed() {
            return;
        }
        if !*leading.borrow() {
            counters.clear();
            figures.send_if_modified(|published| {
                !published.is_empty() && {
                    *published = Arc::default();
                    true
                }
            });
            continue;
        }
        round += 1;
        // Cloned out: the runtime's next publication must not wait on the scrapes.
        let current = states.borrow().clone();
        counters.retain(|key, _| current.get(key).is_some_and(|s| !s.ready.is_empty()));
        let scrapes = current.iter().filter(|(_, state)| !state.ready.is_empty()).map(|(key, state)| {
            let (http, config) = (&http, &config);
            async move { (key.clone(), state.ready.len(), scrape_sample(http, config, &state.ready, round).await) }
        });
        let results = futures::future::join_all(scrapes).await;
        let now_ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut next = BTreeMap::new();
        for (key, ready, results) in results {
            let revision_counters = counters.entry(key.clone()).or_default();
            let mut stats: Vec<PodStat> = Vec::new();
            let mut first_error = None;
            for (pod, result) in results {
                match result {
                    Ok(sample) => stats.push(revision_counters.observe(&pod.to_string(), now_ms, sample)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(state) = current.get(&key) {
                let ready_pods: Vec<String> = state.ready.iter().map(ToString::to_string).collect();
                revision_counters.retain(&ready_pods);
            }
            match scrape::average(&stats, ready) {
                Some(mesh) => {
                    if falling_back.remove(&key) {
                        tracing::info!(revision = %key, scraped = mesh.scraped, ready, "the KPA counts the revision's sidecars again");
                    }
                    next.insert(key, mesh);
                }
                None => {
                    if falling_back.insert(key.clone()) {
                        let error = first_error.map(|e| e.to_string()).unwrap_or_default();
                        tracing::warn!(revision = %key, %error,
                            "no sidecar stats for this revision's pods: its KPA counts only the gateways' reports, \
                             so calls that go sidecar to pod are not seen");
                    }
                }
            }
        }
        falling_back.retain(|key| current.get(key).is_some_and(|s| !s.ready.is_empty()));
        let next = Arc::new(next);
        figures.send_if_modified(|published| {
            *published != next && {
                *published = next;
                true
            }
        });
    }
}

/// Knative's pod scrape: the sample's pods at once, and for each that does
/// not answer the next pod down the line, until the sample is complete or
/// no pod is left.
async fn scrape_sample(
    http: &reqwest::Client,
    config: &ScrapeConfig,
    ready: &[Endpoint],
    round: u64,
) -> Vec<(Endpoint, Result<SidecarSample, ScrapeError>)> {
    let order = scrape::scrape_order(ready, round);
    let wanted = scrape::sample_size(order.len());
    let mut tried = 0;
    let mut answered = 0;
    let mut results = Vec::new();
    while answered < wanted && tried < order.len() {
        let batch = &order[tried..(tried + wanted - answered).min(order.len())];
        tried += batch.len();
        let batch_results = futures::future::join_all(batch.iter().map(|pod| scrape_pod(http, config, pod))).await;
        answered += batch_results.iter().filter(|r| r.is_ok()).count();
        results.extend(batch.iter().cloned().zip(batch_results));
    }
    results
}

async fn scrape_pod(
    http: &reqwest::Client,
    config: &ScrapeConfig,
    pod: &Endpoint,
) -> Result<SidecarSample, ScrapeError> {
    let stats = Endpoint { host: pod.host.clone(), port: config.port };
    let url = format!("http://{stats}{}", config.path);
    let unreachable = |source| ScrapeError::Unreachable { url: url.clone(), port: config.port, source };
    let response = http.get(&url).send().await.map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(ScrapeError::Status { url, status: response.status().as_u16() });
    }
    let text = response.text().await.map_err(unreachable)?;
    scrape::parse_sidecar_stats(&text, pod.port).map_err(|source| ScrapeError::Stats { url, source })
}

#[cfg(test)]
#[path = "scraper_tests.rs"]
mod tests;
