//! The `WasmPlugin` that installs revgate's filter in the ingress gateway.
//!
//! - **Where**: the gateway pods, chosen by label in their own namespace
//!   (a WasmPlugin's selector only matches pods of its namespace). The stock
//!   `istio-ingressgateway` pods also serve Knative's local gateway, so one
//!   plugin covers public and in-cluster traffic through gateways. Calls
//!   between pods with sidecars use the `-mesh` VirtualService and bypass
//!   the gateway, so the filter cannot hold those for a revision at zero.
//! - **When**: [`PluginPhase`](crate::options::PluginPhase), `STATS` by default.
//! - **If it breaks**: `FAIL_OPEN`. A module that cannot be fetched or
//!   crashes then means "no holding", not an ingress that answers every
//!   request with an error (Istio's default, `FAIL_CLOSE`).
//! - **Its configuration**: the filter's knobs (`wasm-filter/src/config.rs`),
//!   delivered as one JSON string. Only the two that differ under Istio are
//!   set: `control_cluster`, the Envoy cluster Istio creates for revgate's
//!   activation Service (`outbound|<port>||<service>.<ns>.svc.cluster.local`;
//!   the filter's `dispatch_http_call` needs a cluster name, not a URL), and
//!   `control_authority`, the `:authority` of those calls. The rest keep the
//!   filter's defaults, which follow Knative's.
//!
//! The gateway must know that cluster. Istio gives gateways every Service
//! unless `PILOT_FILTER_GATEWAY_CLUSTER_CONFIG` is on; then the activation
//! Service needs the annotation `networking.istio.io/always-include-in-gateways:
//! "true"` (newer Istio), or the filter's calls fail as "bad argument".

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::meta::ObjectMeta;
use crate::names;
use crate::options::RenderOptions;

pub const API_VERSION: &str = "extensions.istio.io/v1alpha1";
pub const KIND: &str = "WasmPlugin";

/// The filter's knob naming the Envoy cluster of the control plane.
pub const CONTROL_CLUSTER_KNOB: &str = "control_cluster";
/// The filter's knob giving the `:authority` of calls to the control plane.
pub const CONTROL_AUTHORITY_KNOB: &str = "control_authority";
/// The filter's knob choosing what confirms a revision has endpoints in this
/// Envoy before held requests go on.
pub const RELEASE_GATE_KNOB: &str = "release_gate";

/// `extensions.istio.io/v1alpha1` WasmPlugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmPlugin {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: WasmPluginSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmPluginSpec {
    pub selector: WorkloadSelector,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    pub fail_strategy: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub plugin_config: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
}

/// The WasmPlugin for the gateway the options describe.
pub fn wasm_plugin(options: &RenderOptions) -> WasmPlugin {
    let activation = &options.activation_service;
    let host = names::service_host(&activation.name, &activation.namespace);
    let mut plugin_config = Map::new();
    plugin_config
        .insert(CONTROL_CLUSTER_KNOB.to_string(), Value::String(names::istio_outbound_cluster(activation.port, &host)));
    // What an HTTP client calling the Service by its full name would send.
    plugin_config.insert(CONTROL_AUTHORITY_KNOB.to_string(), Value::String(format!("{host}:{}", activation.port)));
    // Istio programs the gateway, so revgate never sees its EDS ACKs: the
    // filter confirms a revision's endpoints itself, with a probe through
    // the revision's cluster.
    plugin_config.insert(RELEASE_GATE_KNOB.to_string(), Value::String("probe".to_string()));
    WasmPlugin {
        api_version: API_VERSION.to_string(),
        kind: KIND.to_string(),
        metadata: ObjectMeta {
            name: names::WASM_PLUGIN.to_string(),
            namespace: options.gateway_namespace.clone(),
            ..ObjectMeta::default()
        },
        spec: WasmPluginSpec {
            selector: WorkloadSelector { match_labels: options.gateway_selector.clone() },
            url: options.wasm_url.clone(),
            sha256: options.wasm_sha256.clone(),
            phase: options.wasm_phase.as_istio().map(str::to_string),
            fail_strategy: "FAIL_OPEN".to_string(),
            type_: "HTTP".to_string(),
            plugin_config,
        },
    }
}
