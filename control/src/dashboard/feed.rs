//! The dashboard's JSON feed: one value built from what the control plane
//! already publishes — the views behind `revgate get ksvc`, `route`,
//! `revision`, `kpa`, `activity` and `gateway` — so that the page shows
//! exactly what the CLI shows, gathered in one answer.
//!
//! Pure: [`build`] is a function of its [`Inputs`] and the time.
//!
//! Every Service (or standalone Route) is a [`RouteRow`] with the split in
//! effect; every revision a [`RevisionRow`] with its scale, conditions and
//! live figures; every gateway node a [`GatewayRow`]. A Route row in a
//! gradual rollout carries it as `revgate get route` shows it (its split in
//! the traffic, the one-line summary and the `Rollout` condition).

use std::collections::BTreeMap;

use revgate_model::meta::{CONFIGURATION_LABEL, Condition, SERVICE_LABEL};
use revgate_model::plan::ObjectKey;
use revgate_model::resources::{Revision, Route, Service, TrafficTarget};
use revgate_model::rollout::served::ROLLOUT_CONDITION;
use revgate_runtime::RevisionState;
use revgate_xds::server::{Api, GatewayStatus};
use serde::Serialize;

use super::history::{Sample, Slice};
use crate::activation::RevisionActivity;
use crate::autoscaling::KpaStatus;
use crate::control::{EndpointsSource, Published};
use crate::rollout::ROLLOUT_SUMMARY_ANNOTATION;

/// Everything the feed is built from, as the admin API reads it.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// With status, as `revgate get ksvc` shows them.
    pub services: &'a [Service],
    /// With status: every Route, those Services own included.
    pub routes: &'a [Route],
    pub revisions: &'a [Revision],
    /// The KPA's statuses, when revgate runs the revisions.
    pub kpa: &'a BTreeMap<ObjectKey, KpaStatus>,
    /// The runtime's states, when revgate runs the revisions.
    pub instances: &'a BTreeMap<ObjectKey, RevisionState>,
    /// Endpoints registered through the admin API (`serve --runtime external`).
    pub registrations: &'a BTreeMap<ObjectKey, EndpointsSource>,
    pub activity: &'a BTreeMap<ObjectKey, RevisionActivity>,
    pub gateway: &'a GatewayStatus,
    /// Per node, the live filter VMs that have the current readiness view.
    pub filters: &'a BTreeMap<String, usize>,
    pub published: &'a Published,
}

/// The answer of `GET /dashboard/feed`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Feed {
    pub generated_at_unix_ms: u64,
    /// The snapshot generation being sent to the gateways.
    pub generation: u64,
    pub routes: Vec<RouteRow>,
    pub revisions: Vec<RevisionRow>,
    pub gateways: Vec<GatewayRow>,
    pub history: Slice,
}

/// A Service's Route (or a Route of its own) and its traffic split.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRow {
    pub namespace: String,
    pub name: String,
    /// `Service` when a Service owns the Route, else `Route`.
    pub kind: &'static str,
    pub url: Option<String>,
    /// The Service's conditions (the Route's for a Route of its own).
    pub conditions: Vec<Condition>,
    pub latest_ready_revision: Option<String>,
    pub latest_created_revision: Option<String>,
    /// What the gateway serves: the Route's status traffic, with each tag's
    /// URL (the spec's targets until the Route has a status).
    pub traffic: Vec<Split>,
    /// The Route's gradual rollout, if it has one.
    pub rollout: Option<RolloutRow>,
}

/// A gradual rollout as `revgate get route` and `revgate rollout status`
/// show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRow {
    /// `37% → hello-00002`, `aborted: 5xx 0.31 > 0.05`, `completed`.
    pub summary: String,
    /// The Route's `Rollout` condition, when there is one.
    pub condition: Option<Condition>,
}

/// One traffic target.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Split {
    pub revision_name: Option<String>,
    pub configuration_name: Option<String>,
    pub latest_revision: bool,
    pub percent: i64,
    pub tag: Option<String>,
    pub url: Option<String>,
}

/// A revision: its readiness, scale and what the gateways see of it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRow {
    pub namespace: String,
    pub name: String,
    pub configuration: Option<String>,
    pub service: Option<String>,
    pub conditions: Vec<Condition>,
    /// Ready endpoints (Knative's `actualReplicas`), when known.
    pub actual_replicas: Option<u64>,
    /// Instances asked of the runtime (Knative's `desiredReplicas`), when known.
    pub desired_replicas: Option<u64>,
    /// The KPA's decision, when revgate scales the revision.
    pub kpa: Option<KpaRow>,
    /// Percent of traffic all Routes send it, summed.
    pub traffic_percent: i64,
    /// Live figures; `null` while no gateway filter reports the revision.
    pub live: Option<Sample>,
    /// Requests held by the gateways now.
    pub held: u64,
    /// Activations (a request held for the revision at zero) in the
    /// activation service's record, which forgets a revision 15 minutes
    /// after its last one.
    pub cold_starts: u64,
    pub last_cold_start_unix_ms: Option<u64>,
}

/// The KPA's decision for one revision (`revgate get kpa`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KpaRow {
    pub desired_scale: Option<i64>,
    pub actual_scale: u32,
    pub panicking: bool,
    pub active: String,
    pub reason: Option<String>,
}

/// One gateway node (`revgate get gateway`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRow {
    pub node: String,
    pub connected: bool,
    pub api: &'static str,
    /// Live filter VMs of the node with the current readiness view.
    pub filters_in_sync: usize,
    pub types: Vec<TypeRow>,
}

/// One xDS type of one node.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeRow {
    pub type_url: String,
    pub acked_version: Option<String>,
    /// Whether the ACKed version is the one being published.
    pub current: bool,
    /// Envoy's rejection of a later version, until the next ACK.
    pub nack: Option<NackRow>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NackRow {
    pub version: String,
    pub message: String,
}

/// The feed at `now_ms`, with `history` as the reader asked for it.
pub fn build(inputs: &Inputs<'_>, history: Slice, now_ms: u64) -> Feed {
    let revisions = inputs.revisions.iter().map(|revision| revision_row(inputs, revision)).collect();
    Feed {
        generated_at_unix_ms: now_ms,
        generation: inputs.published.generation,
        routes: inputs.routes.iter().map(|route| route_row(inputs, route)).collect(),
        revisions,
        gateways: gateway_rows(inputs),
        history,
    }
}

fn route_row(inputs: &Inputs<'_>, route: &Route) -> RouteRow {
    let key = route.metadata.key();
    let owner = route.metadata.labels.get(SERVICE_LABEL).and_then(|name| {
        inputs.services.iter().find(|s| s.metadata.namespace == key.namespace && &s.metadata.name == name)
    });
    let status = route.status.as_ref();
    let targets = match status {
        Some(status) if !status.traffic.is_empty() => &status.traffic,
        _ => &route.spec.traffic,
    };
    let (kind, conditions, latest_ready, latest_created) = match owner.and_then(|s| s.status.as_ref()) {
        Some(service) => (
            "Service",
            service.conditions.clone(),
            service.latest_ready_revision_name.clone(),
            service.latest_created_revision_name.clone(),
        ),
        None => ("Route", status.map(|s| s.conditions.clone()).unwrap_or_default(), None, None),
    };
    RouteRow {
        namespace: key.namespace,
        name: key.name,
        kind,
        url: status.and_then(|s| s.url.clone()),
        conditions,
        latest_ready_revision: latest_ready,
        latest_created_revision: latest_created,
        traffic: targets.iter().map(split).collect(),
        rollout: route.metadata.annotations.get(ROLLOUT_SUMMARY_ANNOTATION).map(|summary| RolloutRow {
            summary: summary.clone(),
            condition: status.and_then(|s| s.conditions.iter().find(|c| c.type_ == ROLLOUT_CONDITION).cloned()),
        }),
    }
}

fn split(target: &TrafficTarget) -> Split {
    Split {
        revision_name: target.revision_name.clone(),
        configuration_name: target.configuration_name.clone(),
        latest_revision: target.latest_revision.unwrap_or(false),
        percent: target.percent.unwrap_or(0),
        tag: target.tag.clone(),
        url: target.url.clone(),
    }
}

fn revision_row(inputs: &Inputs<'_>, revision: &Revision) -> RevisionRow {
    let key = revision.metadata.key();
    let labels = &revision.metadata.labels;
    let runtime = inputs.instances.get(&key);
    let registered = inputs.registrations.get(&key);
    // As `GET /v1/revisions` counts them: the runtime's ready instances, or
    // the endpoints registered for the revision.
    let actual_replicas =
        registered.map(|r| r.endpoints.len() as u64).or_else(|| runtime.map(|state| state.ready.len() as u64));
    let desired_replicas = runtime.map(|state| u64::from(state.desired));
    let kpa = inputs.kpa.get(&key).map(|status| KpaRow {
        desired_scale: status.desired_scale,
        actual_scale: status.actual_scale,
        panicking: status.panicking,
        active: status.active.clone(),
        reason: status.reason.clone(),
    });
    let traffic_percent = inputs
        .routes
        .iter()
        .filter(|route| route.metadata.namespace == revision.metadata.namespace)
        .filter_map(|route| route.status.as_ref())
        .flat_map(|status| &status.traffic)
        .filter(|target| target.revision_name.as_deref() == Some(revision.metadata.name.as_str()))
        .filter_map(|target| target.percent)
        .sum();
    let activity = inputs.activity.get(&key);
    RevisionRow {
        namespace: key.namespace,
        name: key.name,
        configuration: labels.get(CONFIGURATION_LABEL).cloned(),
        service: labels.get(SERVICE_LABEL).cloned(),
        conditions: revision.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
        actual_replicas,
        desired_replicas,
        kpa,
        traffic_percent,
        live: activity.and_then(Sample::of),
        held: activity.map_or(0, |a| a.totals.held),
        cold_starts: activity.map_or(0, |a| a.activations),
        last_cold_start_unix_ms: activity.and_then(|a| a.last_activation.as_ref()).map(|a| a.at_unix_ms),
    }
}

fn gateway_rows(inputs: &Inputs<'_>) -> Vec<GatewayRow> {
    inputs
        .gateway
        .nodes
        .iter()
        .map(|(node, status)| GatewayRow {
            node: node.clone(),
            connected: status.connected,
            api: match status.api {
                Api::Sotw => "SotW",
                Api::Delta => "delta",
            },
            filters_in_sync: inputs.filters.get(node).copied().unwrap_or(0),
            types: status
                .types
                .iter()
                .map(|(type_url, state)| TypeRow {
                    type_url: type_url.clone(),
                    current: state.acked_version.is_some()
                        && state.acked_version.as_ref() == inputs.published.versions.get(type_url),
                    acked_version: state.acked_version.clone(),
                    nack: state
                        .nack
                        .as_ref()
                        .map(|nack| NackRow { version: nack.version.clone(), message: nack.message.clone() }),
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
#[path = "feed_tests.rs"]
mod tests;
