//! revgate's activation contract: what the gateway filter and the control
//! plane say to each other, in one place both compile against.
//!
//! The filter (`revgate-filter`, a proxy-wasm module inside Envoy) holds
//! requests for revisions with no ready endpoints, reports the traffic it sees
//! and asks for activations; the control plane answers with which revisions
//! can take traffic. The messages are protobuf, generated at build time from
//! `revgate/activation/v1/activation.proto` (whose comments document every
//! field), and travel as HTTP bodies on the [`paths`] below.
//!
//! # Layout
//! - [`activation::v1`] (re-exported at the root): the generated messages
//!   [`MetricsReport`], [`RevisionMetrics`], [`DurationHistogram`],
//!   [`StatusDurations`], [`ReasonCount`], [`LatencySummary`],
//!   [`ActivationRequest`], [`ReadinessUpdate`], [`RevisionReadiness`].
//! - [`DURATION_BOUNDS_SECONDS`] and the bounds of a report's entries.
//! - [`paths`]: HTTP paths, query parameters, content type and timing
//!   constants of the transport.
//!
//! The crate depends on `prost` only, so it builds for
//! `wasm32-unknown-unknown` as well as for the host.

#![forbid(unsafe_code)]

/// Generated protobuf messages, by protobuf package.
pub mod activation {
    /// Package `revgate.activation.v1`.
    #[allow(missing_debug_implementations, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/revgate.activation.v1.rs"));
    }
}

pub use activation::v1::{
    ActivationRequest, DurationHistogram, LatencySummary, MetricsReport, ReadinessUpdate, ReasonCount, RevisionMetrics,
    RevisionName, RevisionReadiness, StatusDurations,
};

/// The upper bounds, in seconds, of the buckets of every
/// [`DurationHistogram`]: Knative's request latency boundaries (the
/// queue-proxy's `kn.serving.invocation.duration`), so dashboards and
/// alerts written for Knative read revgate's histograms the same way. One
/// more bucket counts what lies above the last bound.
pub const DURATION_BOUNDS_SECONDS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// Entries of [`DurationHistogram::bucket_counts`]: the bounds and the bucket
/// above them.
pub const DURATION_BUCKETS: usize = DURATION_BOUNDS_SECONDS.len() + 1;

/// The most distinct status codes one [`RevisionMetrics`] lists in
/// `durations`. The filter counts the codes beyond it under status 0, so a
/// backend answering many odd codes cannot grow a report; the control plane
/// refuses an entry with more.
pub const MAX_STATUS_CODES_PER_REVISION: usize = 16;

/// The most entries of `refusals` in one [`RevisionMetrics`], and the
/// longest reason (bytes) the control plane takes.
pub const MAX_REASONS_PER_REVISION: usize = 8;
/// See [`MAX_REASONS_PER_REVISION`].
pub const MAX_REASON_BYTES: usize = 64;

/// The HTTP side of the contract.
///
/// Every call carries a protobuf body (or none) with the content type
/// [`CONTENT_TYPE`]; a non-200 status means the call failed and the body, if
/// any, is a human-readable reason.
pub mod paths {
    /// `POST`, body [`crate::MetricsReport`], answered `200` with an empty
    /// body. Entries for revisions the control plane does not know are
    /// dropped; a report with entries, none of them known, is answered `404`.
    /// A reporter the control plane cannot take on (too many) gets `429`.
    pub const REPORT: &str = "/activation/v1/report";

    /// `POST`, body [`crate::ActivationRequest`], answered `200` with an
    /// empty body once the control plane has registered the demand, `404` if
    /// the revision is not one it knows (nothing is registered: the filter's
    /// later reports of held requests still carry the demand).
    pub const ACTIVATE: &str = "/activation/v1/activate";

    /// `GET` long-poll answered with a [`crate::ReadinessUpdate`]; see
    /// [`readiness_path`] for the query. A filter VM the control plane
    /// cannot take on (too many) gets `429` and polls again after a backoff.
    pub const READINESS: &str = "/activation/v1/readiness";

    /// Query parameter of [`READINESS`]: the version the caller already has
    /// (`0` for none). The server answers at once when its version differs.
    pub const READINESS_AFTER_PARAM: &str = "after";

    /// Query parameter of [`READINESS`]: the caller's Envoy node id, so the
    /// server counts as ready only the endpoints that node has ACKed.
    pub const READINESS_NODE_PARAM: &str = "node";

    /// Query parameter of [`READINESS`]: the caller's reporter id (one per
    /// filter VM), so the server knows every poller and can tell when all of
    /// them have heard that a revision is cold before its endpoints go.
    pub const READINESS_REPORTER_PARAM: &str = "reporter";

    /// Query parameter of [`READINESS`]: the caller's release gate, sent as
    /// [`READINESS_GATE_PROBE`] by a filter that confirms a revision's
    /// endpoints in its own Envoy with a probe before releasing (the
    /// filter's `release_gate: probe`, for gateways revgate does not program,
    /// such as Istio's). Such a caller is told the endpoints the control plane
    /// has registered; any other only the endpoints its node ACKed.
    pub const READINESS_GATE_PARAM: &str = "gate";

    /// Value of [`READINESS_GATE_PARAM`] of a filter that probes.
    pub const READINESS_GATE_PROBE: &str = "probe";

    /// Query parameter of [`READINESS`], sent as [`READINESS_PARTIAL_YES`] by
    /// a filter that applies partial views (`ReadinessUpdate.partial_after`):
    /// only such a caller gets one, so a filter that predates them never
    /// mistakes a partial view for a complete one.
    pub const READINESS_PARTIAL_PARAM: &str = "partial";

    /// Value of [`READINESS_PARTIAL_PARAM`] of a filter that applies partial views.
    pub const READINESS_PARTIAL_YES: &str = "1";

    /// Content type of every request and response body.
    pub const CONTENT_TYPE: &str = "application/x-protobuf";

    /// The longest the server holds a readiness poll whose version is
    /// current before answering with the same version. Callers must wait
    /// longer than this before they give up on a poll.
    pub const READINESS_MAX_HOLD_MS: u64 = 25_000;

    /// The path and query of a readiness long-poll:
    /// `/activation/v1/readiness?after=<after>&node=<node>&reporter=<reporter>`
    /// (both percent-encoded).
    ///
    /// Envoy node ids may hold any character (Istio's look like
    /// `router~10.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local`), so
    /// every byte outside RFC 3986's unreserved set is percent-encoded.
    pub fn readiness_path(after: u64, node: &str, reporter: &str) -> String {
        format!(
            "{READINESS}?{READINESS_AFTER_PARAM}={after}&{READINESS_NODE_PARAM}={}&{READINESS_REPORTER_PARAM}={}",
            percent_encode(node),
            percent_encode(reporter)
        )
    }

    /// Percent-encodes every byte of `value` except RFC 3986's unreserved
    /// characters (`A-Z a-z 0-9 - . _ ~`), which is safe for any query
    /// parameter value and decodes the same with form or URI decoders.
    pub fn percent_encode(value: &str) -> String {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = String::with_capacity(value.len());
        for byte in value.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(byte));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0x0f)]));
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prost::Message;

    fn decode_query_value(encoded: &str) -> String {
        let bytes = encoded.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn readiness_path_carries_version_and_encoded_node() {
        let node = "router~10.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local";
        assert_eq!(
            paths::readiness_path(42, node, "r1"),
            format!("/activation/v1/readiness?after=42&node={node}&reporter=r1")
        );
        let odd = "gw 1/a&b=c+d%é";
        let path = paths::readiness_path(0, odd, "r");
        let value = path.split_once("&node=").unwrap().1.split_once("&reporter=").unwrap().0;
        assert!(!value.contains(['&', '=', ' ', '/', '+']), "{value}");
        assert_eq!(decode_query_value(value), odd);
    }

    #[test]
    fn messages_round_trip() {
        let report = MetricsReport {
            node_id: "gw".into(),
            reporter: "gw/1700000000000/1".into(),
            window_start_unix_ms: 1_700_000_000_000,
            window_ms: 1000,
            revisions: vec![RevisionMetrics {
                namespace: "default".into(),
                revision: "hello-00001".into(),
                average_concurrency: 1.5,
                requests: 10,
                responses_5xx: 1,
                latency: Some(LatencySummary { p50_ms: 1.0, p90_ms: 2.0, p99_ms: 3.0, max_ms: 4.0 }),
                held: 2,
                in_flight: 3,
                average_held_concurrency: Some(0.5),
                durations: vec![StatusDurations {
                    status_code: 200,
                    duration: Some(DurationHistogram {
                        bucket_counts: vec![1; DURATION_BUCKETS],
                        sum_seconds: 20.0,
                        count: DURATION_BUCKETS as u64,
                    }),
                }],
                upstream_duration: None,
                held_duration: Some(DurationHistogram::default()),
                refusals: vec![ReasonCount { reason: "activation-timeout".into(), count: 1 }],
            }],
        };
        assert_eq!(MetricsReport::decode(report.encode_to_vec().as_slice()).unwrap(), report);

        let update = ReadinessUpdate {
            version: 7,
            revisions: vec![RevisionReadiness {
                namespace: "default".into(),
                revision: "hello-00001".into(),
                ready_endpoints: 2,
                container_concurrency: 10,
                activation_timeout_ms: 300_000,
                response_start_timeout_ms: 120_000,
                idle_timeout_ms: 30_000,
            }],
            ..Default::default()
        };
        assert_eq!(ReadinessUpdate::decode(update.encode_to_vec().as_slice()).unwrap(), update);
    }

    #[test]
    fn optional_held_concurrency_distinguishes_absent_from_zero() {
        let absent = RevisionMetrics::default();
        let zero = RevisionMetrics { average_held_concurrency: Some(0.0), ..Default::default() };
        assert!(absent.encode_to_vec().is_empty());
        assert!(!zero.encode_to_vec().is_empty());
        assert_eq!(RevisionMetrics::decode(zero.encode_to_vec().as_slice()).unwrap(), zero);
    }
}
