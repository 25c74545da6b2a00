//! `GET /metrics`: Prometheus metrics under Knative's names.
//!
//! Knative's instruments keep their OpenTelemetry names in Prometheus form
//! (dots become underscores, unit `s` adds `_seconds`, counters end in
//! `_total`), with Knative's attributes as labels: `k8s_namespace_name`,
//! `kn_service_name`, `kn_configuration_name`, `kn_revision_name`, and
//! `http_response_status_code` on request durations. revgate's own
//! instruments start with `revgate_`.
//!
//! Most families are read at scrape time from what their owners already
//! publish ([`revisions::RevisionCollector`]: the activation service's
//! counters, the gateways' current reports, the KPA statuses, the world for
//! labels), so serving metrics adds no lock and no task. Events nobody
//! else counts (xDS responses, ACKs and NACKs) are counted by
//! [`own::XdsMetrics`], which the xDS server reports to.
//!
//! The exposition is Prometheus's text format, or OpenMetrics when the
//! scraper's `Accept` asks for `application/openmetrics-text`.
//!
//! # Layout
//! - `revisions`: the per-revision families, collected at scrape time.
//! - `own`: revgate's own counters and histograms, updated as events happen.

mod own;
mod revisions;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::registry::Registry;

pub use revgate_activation::counters::{CountersSnapshot, DurationHistogram, RevisionCounters};
/// The gateway filters' reports summed per revision (the activation crate's
/// aggregation), where the rest of the control plane looks for them.
pub use revgate_activation::metrics::{Aggregator, FRESHNESS_INTERVALS, MAX_FRESHNESS_MS, ReportError, RevisionTotals};

pub use self::own::{RolloutMetrics, XdsMetrics};
pub use self::revisions::{RevisionCollector, RevisionSources};

/// Content type of Prometheus's text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics' text format.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric revgate serves, encoded on each scrape.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    /// An exporter of the revision families read from `sources`, of the
    /// xDS server's counters and of the rollout driver's.
    pub fn new(sources: RevisionSources, xds: &XdsMetrics, rollouts: &RolloutMetrics) -> Self {
        let mut registry = Registry::default();
        xds.register(&mut registry);
        rollouts.register(&mut registry);
        registry.register_collector(Box::new(RevisionCollector::new(sources)));
        Self { registry }
    }

    /// The exposition in the format `accept` prefers, with its content type.
    pub fn render(&self, accept: Option<&str>) -> Result<(&'static str, String), std::fmt::Error> {
        let mut body = String::new();
        if wants_openmetrics(accept) {
            text::encode(&mut body, &self.registry)?;
            Ok((OPENMETRICS_TEXT, body))
        } else {
            prometheus_text::encode(&mut body, &self.registry)?;
            Ok((PROMETHEUS_TEXT, body))
        }
    }
}

/// Whether an `Accept` header asks for OpenMetrics (as Prometheus does
/// first, falling back to the text format).
fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|part| {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or("");
            let refused =
                params.any(|p| p.strip_prefix("q=").is_some_and(|q| q.parse::<f64>().is_ok_and(|q| q <= 0.0)));
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    })
}

/// `GET /metrics`, answering from `exporter`. The caller decides who may
/// call it (the admin API's token rules, or a listener of its own).
pub fn router<S: Clone + Send + Sync + 'static>(exporter: Arc<Exporter>) -> Router<S> {
    Router::new().route("/metrics", get(scrape)).with_state(exporter)
}

/// The handler, for routers with state of their own.
pub async fn scrape(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match exporter.render(accept) {
        Ok((content_type, body)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("revgate: encoding the metrics failed: {e}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0, text/plain")));
    }
}
