//! The data-path filter in revgate's own gateway: the proxy-wasm filter that
//! holds requests for cold revisions, throttles and reports concurrency
//! (crate `revgate-filter`), and the cluster it uses to reach the control
//! plane's activation service.
//!
//! Pure builders: [`crate::translate::translate`] adds both when
//! [`crate::translate::XdsSettings::filter`] is set.

use std::fmt;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{AsyncDataSource, DataSource, async_data_source, data_source};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{HttpFilter, http_filter};
use envoy_types::pb::envoy::extensions::wasm::v3::{PluginConfig, VmConfig, plugin_config};
use envoy_types::pb::google::protobuf::StringValue;

use crate::names;
use crate::translate::{pb_duration, socket_address, to_any};

/// Envoy's name for the wasm HTTP filter.
pub(crate) const WASM_FILTER: &str = "envoy.filters.http.wasm";
/// The V8 runtime, built into the official Envoy binary.
const WASM_RUNTIME: &str = "envoy.wasm.runtime.v8";
/// `root_id` and `vm_id` of the filter: one VM per worker shared by every
/// listener that uses the same code.
const FILTER_ID: &str = "revgate";

/// Where the filter's code is and how it reaches the control plane.
///
/// Its `Debug` redacts the configuration's `token` (the gateway token the
/// filter presents), so that the settings can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct FilterSettings {
    /// Path of the built `.wasm` on the gateway's file system.
    pub wasm_path: String,
    /// The activation service of `revgate serve`, as the gateway reaches it.
    pub control_address: SocketAddr,
    /// The filter's own JSON configuration (see `revgate-filter`'s `config`).
    pub configuration: String,
}

/// The configuration key that holds the gateway token.
const TOKEN_KEY: &str = "token";

impl fmt::Debug for FilterSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterSettings")
            .field("wasm_path", &self.wasm_path)
            .field("control_address", &self.control_address)
            .field("configuration", &redacted(&self.configuration))
            .finish()
    }
}

/// The configuration with its token replaced; all of it replaced when it is
/// not a JSON object, since where a token would be cannot be told then.
fn redacted(configuration: &str) -> String {
    const REDACTED: &str = "<redacted>";
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(configuration) {
        Ok(mut object) => {
            if let Some(token) = object.get_mut(TOKEN_KEY) {
                *token = serde_json::Value::from(REDACTED);
            }
            serde_json::Value::Object(object).to_string()
        }
        Err(_) => REDACTED.to_owned(),
    }
}

/// The wasm HTTP filter, to run ahead of the router.
pub fn wasm_http_filter(settings: &FilterSettings) -> HttpFilter {
    let vm_config = VmConfig {
        vm_id: FILTER_ID.to_owned(),
        runtime: WASM_RUNTIME.to_owned(),
        code: Some(AsyncDataSource {
            specifier: Some(async_data_source::Specifier::Local(DataSource {
                specifier: Some(data_source::Specifier::Filename(settings.wasm_path.clone())),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let plugin = PluginConfig {
        name: FILTER_ID.to_owned(),
        root_id: FILTER_ID.to_owned(),
        configuration: Some(to_any(&StringValue { value: settings.configuration.clone() })),
        vm: Some(plugin_config::Vm::VmConfig(vm_config)),
        ..Default::default()
    };
    HttpFilter {
        name: WASM_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(to_any(&Wasm { config: Some(plugin) }))),
        ..Default::default()
    }
}

/// The cluster the filter's `dispatch_http_call`s use: static, one endpoint.
pub fn control_cluster(settings: &FilterSettings) -> Cluster {
    let address = settings.control_address;
    Cluster {
        name: names::CONTROL_CLUSTER.to_owned(),
        connect_timeout: Some(pb_duration(std::time::Duration::from_secs(1))),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: names::CONTROL_CLUSTER.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                        address: Some(socket_address(&address.ip().to_string(), address.port())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let settings = FilterSettings {
            wasm_path: "/filter.wasm".to_owned(),
            control_address: SocketAddr::from(([127, 0, 0, 1], 9092)),
            configuration: r#"{"control_cluster":"revgate_control","token":"s3cret-0123456789"}"#.to_owned(),
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("revgate_control") && shown.contains("<redacted>"), "{shown}");
        let unparsable = FilterSettings { configuration: "token s3cret".to_owned(), ..settings };
        assert!(!format!("{unparsable:?}").contains("s3cret"));
    }
}
