//! The WasmPlugin installs the filter in the gateway pods and points it at
//! the activation Service through the cluster name Istio gives that Service.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::*;
use revgate_istio::{ActivationService, PluginPhase, RenderOptions, wasm_plugin};
use serde_json::json;

#[test]
fn the_default_plugin() {
    let got = serde_json::to_value(wasm_plugin(&RenderOptions::default())).expect("json");
    assert_eq!(
        got,
        json!({
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {"name": "revgate", "namespace": "istio-system"},
            "spec": {
                "selector": {"matchLabels": {"istio": "ingressgateway"}},
                "url": format!("oci://ghcr.io/revgate/revgate-filter:{}", env!("CARGO_PKG_VERSION")),
                "phase": "STATS",
                "failStrategy": "FAIL_OPEN",
                "type": "HTTP",
                "pluginConfig": {
                    "control_cluster": "outbound|9091||revgate.revgate-system.svc.cluster.local",
                    "control_authority": "revgate.revgate-system.svc.cluster.local:9091",
                    "release_gate": "probe"
                }
            }
        })
    );
    assert_valid(&schemas(), "default WasmPlugin", &got);
}

#[test]
fn options_reach_the_plugin() {
    let options = RenderOptions {
        gateway_namespace: "gateways".into(),
        gateway_selector: BTreeMap::from([("app".to_string(), "edge".to_string())]),
        wasm_url: "https://filters.example.com/revgate.wasm".into(),
        wasm_sha256: Some("a".repeat(64)),
        wasm_phase: PluginPhase::Unspecified,
        activation_service: ActivationService { name: "activator".into(), namespace: "platform".into(), port: 8080 },
        ..RenderOptions::default()
    };
    assert_eq!(options.validate(), Ok(()));
    let got = serde_json::to_value(wasm_plugin(&options)).expect("json");
    assert_eq!(got["metadata"]["namespace"], "gateways");
    assert_eq!(got["spec"]["selector"]["matchLabels"], json!({"app": "edge"}));
    assert_eq!(got["spec"]["url"], "https://filters.example.com/revgate.wasm");
    assert_eq!(got["spec"]["sha256"], "a".repeat(64));
    assert!(got["spec"].get("phase").is_none(), "unspecified: Istio places it before the router");
    assert_eq!(got["spec"]["pluginConfig"]["control_cluster"], "outbound|8080||activator.platform.svc.cluster.local");
    assert_valid(&schemas(), "configured WasmPlugin", &got);
}

/// The knobs the filter understands, read from its source: the plugin must
/// use only those, spelt exactly (the filter reports unknown knobs and
/// ignores them, which would leave it calling `revgate-control`).
#[test]
fn plugin_config_uses_only_the_filters_knobs() {
    let source = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../wasm-filter/src/config.rs"));
    let text = std::fs::read_to_string(&source).expect("the filter's config.rs is readable");
    let knobs_module = text.split("pub mod knobs {").nth(1).and_then(|rest| rest.split('}').next()).expect("mod knobs");
    let known: Vec<&str> = knobs_module.split('"').skip(1).step_by(2).collect();
    for knob in ["control_cluster", "control_authority", "release_gate"] {
        assert!(known.contains(&knob), "{knob} is not one of the filter's knobs: {known:?}");
    }
    let plugin = wasm_plugin(&RenderOptions::default());
    for knob in plugin.spec.plugin_config.keys() {
        assert!(known.contains(&knob.as_str()), "{knob} is not one of the filter's knobs {known:?}");
    }
}
