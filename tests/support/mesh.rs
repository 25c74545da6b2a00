//! A small Istio stand-in for the mesh tests: what istiod would make of the
//! VirtualServices cluster mode writes, as plain Envoy configuration, for
//! two real Envoys — one shaped like a client's sidecar, one like the
//! cluster-local gateway with revgate's filter.
//!
//! Istio's names are kept: clusters `outbound|<port>||<host>`, a sidecar's
//! HTTP routes `80`, a gateway's `http.8081`. Routes and endpoints reach
//! Envoy through watched files (Envoy's filesystem xDS), each change a new
//! file moved into place, as istiod pushes a new version.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use revgate_istio::VirtualService;
use serde_json::{Value, json};

/// The Istio cluster of a Service port.
pub fn outbound(port: u16, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

/// The route configuration istiod derives for one gateway (`mesh` for
/// sidecars, `namespace/name` for a Gateway) from VirtualServices: one
/// virtual host per VirtualService with its hosts (and `host:*`), one
/// route per `http` entry and match whose gateways include `gateway`,
/// matching the authority prefix and exact headers, sending to the
/// weighted `outbound|port||host` clusters with the destinations' headers.
pub fn route_configuration(name: &str, virtual_services: &[VirtualService], gateway: &str) -> Value {
    let mut virtual_hosts = Vec::new();
    for vs in virtual_services {
        let mut routes = Vec::new();
        for entry in &vs.spec.http {
            let clusters: Vec<Value> = entry
                .route
                .iter()
                .map(|r| {
                    let headers: Vec<Value> = r
                        .headers
                        .iter()
                        .flat_map(|h| &h.request.set)
                        .map(|(k, v)| json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}))
                        .collect();
                    json!({
                        "name": outbound(r.destination.port.number, &r.destination.host),
                        "weight": r.weight,
                        "request_headers_to_add": headers,
                    })
                })
                .collect();
            for matched in entry.matches.iter().filter(|m| m.gateways.iter().any(|g| g == gateway)) {
                let mut headers = Vec::new();
                if let Some(prefix) = &matched.authority.prefix {
                    headers.push(json!({"name": ":authority", "string_match": {"prefix": prefix}}));
                }
                for (header, value) in &matched.headers {
                    if let Some(exact) = &value.exact {
                        headers.push(json!({"name": header.to_ascii_lowercase(), "string_match": {"exact": exact}}));
                    }
                }
                routes.push(json!({
                    "match": {"prefix": "/", "headers": headers},
                    "route": {"weighted_clusters": {"clusters": clusters}, "timeout": "0s"},
                }));
            }
        }
        if routes.is_empty() {
            continue;
        }
        let domains: Vec<String> = vs.spec.hosts.iter().flat_map(|h| [h.clone(), format!("{h}:*")]).collect();
        virtual_hosts.push(json!({"name": format!("{}.{}", vs.metadata.name, vs.metadata.namespace),
                                  "domains": domains, "routes": routes}));
    }
    json!({"name": name, "virtual_hosts": virtual_hosts})
}

/// A watched directory holding one discovery response, replaced whole on
/// every change (a new version, moved into place).
#[derive(Debug)]
pub struct FileSource {
    pub dir: PathBuf,
    staging: PathBuf,
    file: String,
    pub version: u32,
}

impl FileSource {
    pub fn new(root: &Path, name: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("creating a watched directory");
        Self { dir, staging: root.to_owned(), file: format!("{name}.yaml"), version: 0 }
    }

    /// The file Envoy reads.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// Publishes `resources` (each with its `@type`) as the next version.
    pub fn set(&mut self, resources: Vec<Value>) {
        self.version += 1;
        let response = json!({"version_info": self.version.to_string(), "resources": resources});
        let staged = self.staging.join(format!("{}-{}", self.version, self.file));
        std::fs::write(&staged, serde_json::to_string_pretty(&response).expect("JSON")).expect("writing a response");
        std::fs::rename(&staged, self.path()).expect("moving the response into place");
    }

    /// The `config_source` that reads this file.
    pub fn config_source(&self) -> Value {
        json!({"resource_api_version": "V3", "path_config_source": {
            "path": self.path(), "watched_directory": {"path": self.dir}}})
    }
}

pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const ENDPOINTS_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// A route configuration as an RDS resource.
pub fn route_resource(mut config: Value) -> Value {
    config["@type"] = json!(ROUTE_TYPE);
    config
}

/// A cluster's endpoints as an EDS resource (the pods Kubernetes lists ready).
pub fn endpoints_resource(cluster: &str, endpoints: &[SocketAddr]) -> Value {
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|a| json!({"endpoint": {"address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}}}))
        .collect();
    json!({"@type": ENDPOINTS_TYPE, "cluster_name": cluster, "endpoints": [{"lb_endpoints": lb_endpoints}]})
}

/// An EDS cluster fed by `source`.
pub fn eds_cluster(name: &str, source: &FileSource) -> Value {
    json!({"name": name, "type": "EDS", "connect_timeout": "1s",
           "eds_cluster_config": {"service_name": name, "eds_config": source.config_source()}})
}

/// A cluster with one fixed endpoint.
pub fn static_cluster(name: &str, addr: SocketAddr) -> Value {
    json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
           "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
               {"endpoint": {"address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}}}]}]}})
}

/// An HTTP listener on `port` with the given route source and filters (the router last).
pub fn listener(name: &str, port: u16, stat_prefix: &str, routes: Value, mut filters: Vec<Value>) -> Value {
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let mut manager = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "http_filters": filters,
    });
    let key = if routes.get("config_source").is_some() { "rds" } else { "route_config" };
    manager[key] = routes;
    json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}]})
}

/// revgate's filter as the WasmPlugin installs it (`istio-system.revgate`).
pub fn revgate_filter(wasm: &Path, configuration: &str) -> Value {
    json!({"name": "istio-system.revgate", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": "istio-system.revgate", "root_id": "revgate",
                   "vm_config": {"vm_id": "revgate", "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": wasm}}},
                   "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration}}}})
}

/// A bootstrap (JSON, which Envoy reads as YAML).
pub fn bootstrap(node_id: &str, cluster: &str, admin_port: u16, listeners: Vec<Value>, clusters: Vec<Value>) -> String {
    let bootstrap = json!({
        "node": {"id": node_id, "cluster": cluster},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    });
    serde_json::to_string_pretty(&bootstrap).expect("JSON")
}
