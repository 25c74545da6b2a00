//! revgate's own instruments for events nobody else keeps a count of: the
//! xDS server's responses, ACKs and NACKs per gateway node, the time from a
//! response to its ACK, and the rollout driver's steps and aborts.
//!
//! Counters are atomics (prometheus-client's), bumped from the stream tasks
//! through [`XdsCallbacks`]; a node label is one of at most [`MAX_NODES`]
//! nodes, the rest count under [`OTHER_NODE`], so a stream of made-up node
//! ids cannot grow the exposition.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use revgate_model::plan::ObjectKey;
use revgate_xds::server::XdsCallbacks;

/// The most gateway nodes named in labels.
pub const MAX_NODES: usize = 256;
/// The node label of the nodes beyond [`MAX_NODES`].
pub const OTHER_NODE: &str = "other";

/// Buckets of the time from an xDS response to its ACK, in seconds.
const ACK_BOUNDS_SECONDS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

type Labels = Vec<(&'static str, String)>;

/// The xDS server's counters. Cheap to clone: clones count together.
#[derive(Debug, Clone)]
pub struct XdsMetrics {
    responses: Family<Labels, Counter>,
    acks: Family<Labels, Counter>,
    nacks: Family<Labels, Counter>,
    ack_duration: Family<Labels, Histogram>,
    /// The nodes named so far. A small lock held for one lookup, never
    /// across `.await`.
    nodes: Arc<Mutex<BTreeSet<String>>>,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        Self {
            responses: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            ack_duration: Family::new_with_constructor(|| Histogram::new(ACK_BOUNDS_SECONDS)),
            nodes: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }
}

impl XdsMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "revgate_xds_responses",
            "xDS responses (pushes) sent to gateways, per node and resource type",
            self.responses.clone(),
        );
        registry.register("revgate_xds_acks", "xDS responses gateways accepted (ACK)", self.acks.clone());
        registry.register("revgate_xds_nacks", "xDS responses gateways rejected (NACK)", self.nacks.clone());
        registry.register_with_unit(
            "revgate_xds_push_to_ack_duration",
            "Time from an xDS response to the gateway's ACK of it, per resource type",
            Unit::Seconds,
            self.ack_duration.clone(),
        );
    }

    /// The node's label value: itself, or [`OTHER_NODE`] beyond [`MAX_NODES`].
    fn node(&self, node: &str) -> String {
        let mut nodes = self.nodes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if nodes.contains(node) {
            return node.to_owned();
        }
        if nodes.len() < MAX_NODES {
            nodes.insert(node.to_owned());
            return node.to_owned();
        }
        OTHER_NODE.to_owned()
    }

    fn labels(&self, node: &str, type_name: &str) -> Labels {
        vec![("node", self.node(node)), ("type", type_name.to_owned())]
    }
}

impl XdsCallbacks for XdsMetrics {
    fn response_sent(&self, node: &str, type_name: &str) {
        self.responses.get_or_create(&self.labels(node, type_name)).inc();
    }

    fn acked(&self, node: &str, type_name: &str, elapsed: Duration) {
        self.acks.get_or_create(&self.labels(node, type_name)).inc();
        self.ack_duration.get_or_create(&vec![("type", type_name.to_owned())]).observe(elapsed.as_secs_f64());
    }

    fn nacked(&self, node: &str, type_name: &str) {
        self.nacks.get_or_create(&self.labels(node, type_name)).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_node_and_type_with_a_bounded_node_label() {
        let metrics = XdsMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.response_sent("gw-1", "EDS");
        metrics.acked("gw-1", "EDS", Duration::from_millis(3));
        metrics.nacked("gw-1", "CDS");
        for n in 0..MAX_NODES + 5 {
            metrics.response_sent(&format!("made-up-{n}"), "CDS");
        }
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("revgate_xds_acks_total{node=\"gw-1\",type=\"EDS\"} 1"), "{text}");
        assert!(text.contains("revgate_xds_nacks_total{node=\"gw-1\",type=\"CDS\"} 1"), "{text}");
        assert!(
            text.contains("revgate_xds_push_to_ack_duration_seconds_bucket{type=\"EDS\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("revgate_xds_responses_total{node=\"other\",type=\"CDS\"} 6"), "{text}");
    }
}

/// The rollout driver's steps and aborts, per Route and candidate. Cheap to
/// clone: clones count together. Only Routes with a rollout duration roll
/// out, so the series are as many as the revisions ever rolled out.
#[derive(Debug, Clone, Default)]
pub struct RolloutMetrics {
    steps: Family<Labels, Counter>,
    aborts: Family<Labels, Counter>,
}

impl RolloutMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "revgate_rollout_steps",
            "Steps a gradual rollout took, each moving more of its target's traffic to the candidate",
            self.steps.clone(),
        );
        registry.register(
            "revgate_rollout_aborts",
            "Gradual rollouts aborted, by cause: a gate's metric (5xx, p99) or the operator",
            self.aborts.clone(),
        );
    }

    /// `steps` more steps of `revision`'s rollout on `route`.
    pub fn stepped(&self, route: &ObjectKey, revision: &str, steps: u64) {
        self.steps.get_or_create(&rollout_labels(route, revision)).inc_by(steps);
    }

    /// The rollout of `revision` on `route` was aborted, for `cause`.
    pub fn aborted(&self, route: &ObjectKey, revision: &str, cause: &str) {
        let mut labels = rollout_labels(route, revision);
        labels.push(("cause", cause.to_owned()));
        self.aborts.get_or_create(&labels).inc();
    }
}

fn rollout_labels(route: &ObjectKey, revision: &str) -> Labels {
    vec![
        ("k8s_namespace_name", route.namespace.clone()),
        ("kn_route_name", route.name.clone()),
        ("kn_revision_name", revision.to_owned()),
    ]
}
