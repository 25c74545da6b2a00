//! Every host call the filter makes, each with its failure handled.
//!
//! The SDK's `Context` trait methods unwrap host results (a panic kills the
//! worker's VM and strands its held requests), so the filter calls
//! `proxy_wasm::hostcalls` directly and handles each `Result`. Some of those
//! functions still panic inside the SDK on a status they do not expect;
//! the ones used here are only called in ways Envoy answers with a handled
//! status: `resume_http_request` and `send_http_response` only right after
//! `set_effective_context` succeeded for that context (a stale id makes the
//! latter return `BadArgument`, which is handled).

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

use crate::breaker::{SharedStore, StoreError};
use crate::config::FilterConfig;
use crate::control::Call;
use crate::gate::Effect;
use crate::probe::{PROBE_BODY_PREFIX, PROBE_HEADER, PROBE_USER_AGENT};
use crate::revision::{
    ClusterMetadata, METADATA_CONTAINER_CONCURRENCY, METADATA_FILTER, METADATA_NAMESPACE, METADATA_REVISION,
    RevisionKey, probe_authority,
};

/// Host clock, ns since the Unix epoch; `None` if the host failed.
pub fn now_ns() -> Option<u64> {
    let now = hostcalls::get_current_time().ok()?;
    let since_epoch = now.duration_since(UNIX_EPOCH).ok()?;
    Some(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
}

/// A property's raw bytes; `None` when absent or on failure.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// A property as UTF-8 text.
pub fn property_string(path: &[&str]) -> Option<String> {
    property(path).and_then(|raw| String::from_utf8(raw).ok())
}

/// The name of the cluster the route picked for the current request.
pub fn cluster_name() -> Option<String> {
    property_string(&["xds", "cluster_name"])
}

/// revgate's metadata on the current request's cluster.
pub fn cluster_metadata() -> ClusterMetadata {
    let read = |key: &str| property(&["xds", "cluster_metadata", "filter_metadata", METADATA_FILTER, key]);
    let (namespace, revision, cc) =
        (read(METADATA_NAMESPACE), read(METADATA_REVISION), read(METADATA_CONTAINER_CONCURRENCY));
    ClusterMetadata::from_raw(namespace.as_deref(), revision.as_deref(), cc.as_deref())
}

/// Envoy's node id (`xds.node.id`, or `node.id` on older Envoys).
pub fn node_id() -> Option<String> {
    property_string(&["xds", "node", "id"]).or_else(|| property_string(&["node", "id"])).filter(|id| !id.is_empty())
}

/// The response status Envoy recorded for the current stream, if any.
pub fn response_code() -> Option<u32> {
    property(&["response", "code"]).and_then(|raw| parse_response_code(&raw))
}

/// Envoy serializes integer properties as 8 little-endian bytes.
pub fn parse_response_code(raw: &[u8]) -> Option<u32> {
    let bytes: [u8; 8] = raw.try_into().ok()?;
    u32::try_from(i64::from_le_bytes(bytes)).ok().filter(|code| *code > 0)
}

/// Shared data across the plugin's VMs.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        hostcalls::get_shared_data(key).map_err(|status| StoreError::Host(format!("{status:?}")))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(status) => Err(StoreError::Host(format!("{status:?}"))),
        }
    }
}

/// Dispatches a call to the control plane; returns its token.
pub fn dispatch(config: &FilterConfig, call: &Call) -> Result<u32, Status> {
    hostcalls::dispatch_http_call(
        &config.control_cluster,
        call.headers(config),
        call.body.as_deref(),
        vec![],
        Duration::from_millis(call.timeout_ms),
    )
}

/// Dispatches a probe (`release_gate: probe`) through `cluster`, the one
/// the held request's route picked: `GET <path>` with no body. Returns its
/// token.
pub fn dispatch_probe(cluster: &str, key: &RevisionKey, path: &str, timeout_ms: u64) -> Result<u32, Status> {
    let authority = probe_authority(cluster, key);
    let revision = key.to_string();
    let headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", authority.as_str()),
        ("user-agent", PROBE_USER_AGENT),
        (PROBE_HEADER, revision.as_str()),
    ];
    hostcalls::dispatch_http_call(cluster, headers, None, vec![], Duration::from_millis(timeout_ms))
}

/// `:status` and body of the call response being delivered.
pub fn call_response(body_size: usize) -> (Option<String>, Vec<u8>) {
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten();
    (status, body.unwrap_or_default())
}

/// `:status` and the start of the body of a probe's answer (an app's page
/// may be large; only its first bytes tell Envoy's answers apart).
pub fn probe_response(body_size: usize) -> (Option<String>, Vec<u8>) {
    call_response(body_size.min(PROBE_BODY_PREFIX))
}

/// Carries out the gate's effects on other HTTP contexts, then makes
/// `current` (the calling context) effective again. Returns the ids whose
/// context no longer exists, for the gate to forget.
pub fn carry_out(effects: Vec<Effect>, current: u32) -> Vec<u32> {
    let mut gone = Vec::new();
    if effects.is_empty() {
        return gone;
    }
    for effect in effects {
        let id = match &effect {
            Effect::Resume(id) | Effect::Reply(id, _) => *id,
        };
        if hostcalls::set_effective_context(id).is_err() {
            gone.push(id);
            continue;
        }
        let result = match &effect {
            Effect::Resume(_) => hostcalls::resume_http_request(),
            Effect::Reply(_, reply) => {
                hostcalls::send_http_response(reply.status, reply.headers().to_vec(), Some(reply.body.as_bytes()))
            }
        };
        if let Err(status) = result {
            log::warn!("revgate: could not act on request {id}: {status:?}");
        }
    }
    if let Err(status) = hostcalls::set_effective_context(current) {
        log::warn!("revgate: could not restore context {current} after releasing requests: {status:?}");
    }
    gone
}

/// A number unique to this VM among the plugin's VMs in this Envoy process,
/// from a shared-data counter (see `control::reporter_id`).
pub fn vm_sequence(store: &HostStore, now_ns: u64) -> Option<u64> {
    crate::breaker::update(store, "revgate.vm-sequence", now_ns, |n| Some(n.saturating_add(1))).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes() {
        assert_eq!(parse_response_code(&200i64.to_le_bytes()), Some(200));
        assert_eq!(parse_response_code(&0i64.to_le_bytes()), None);
        assert_eq!(parse_response_code(&(-1i64).to_le_bytes()), None);
        assert_eq!(parse_response_code(b"200"), None);
    }
}
