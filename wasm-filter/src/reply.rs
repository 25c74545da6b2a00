//! The answers the filter gives itself instead of forwarding a request, or
//! in place of a revision's response that came too late.
//! Each names the limit that was hit and the revision, in a header for
//! machines and a body for people, so a 503 from revgate is never confused
//! with one from the application or from Envoy.

use crate::revision::RevisionKey;

/// Header naming the limit behind a revgate answer.
pub const REASON_HEADER: &str = "x-revgate-reason";

/// `x-revgate-reason` of a request refused because its revision's queue of
/// held requests is full.
pub const HELD_REQUESTS_LIMIT: &str = "held-requests-limit";
/// `x-revgate-reason` of a request held longer than its activation timeout.
pub const ACTIVATION_TIMEOUT: &str = "activation-timeout";

/// `x-revgate-reason` of a request whose revision did not start its
/// response within its `timeoutSeconds`.
pub const REQUEST_TIMEOUT: &str = "request-timeout";
/// `x-revgate-reason` of a request whose revision did not start its
/// response within its `responseStartTimeoutSeconds`.
pub const RESPONSE_START_TIMEOUT: &str = "response-start-timeout";
/// `x-revgate-reason` of a request whose revision sent no response byte
/// for its `idleTimeoutSeconds`.
pub const IDLE_TIMEOUT: &str = "idle-timeout";

/// A response the filter sends in place of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// The value of [`REASON_HEADER`].
    pub reason: &'static str,
    pub body: String,
}

impl LocalReply {
    /// Headers to send with the body.
    pub fn headers(&self) -> [(&'static str, &str); 2] {
        [(REASON_HEADER, self.reason), ("content-type", "text/plain; charset=utf-8")]
    }

    /// The revision's queue (`max_held_per_revision`) is full: 503, as
    /// Knative's activator answers when its breaker queue overflows.
    pub fn held_requests_limit(revision: &RevisionKey, held: usize) -> Self {
        Self {
            status: 503,
            reason: HELD_REQUESTS_LIMIT,
            body: format!(
                "revgate: revision {revision} has {held} requests held waiting for activation \
                 (limit max_held_per_revision); try again later\n"
            ),
        }
    }

    /// The request waited `timeout_ms` without its revision becoming able to
    /// take it: 503, as Knative's activator answers at its deadline.
    pub fn activation_timeout(revision: &RevisionKey, timeout_ms: u64) -> Self {
        Self {
            status: 503,
            reason: ACTIVATION_TIMEOUT,
            body: format!(
                "revgate: revision {revision} did not become ready within {timeout_ms} ms \
                 (limit activation_timeout_ms of the revision, else default_activation_timeout_ms); \
                 try again later\n"
            ),
        }
    }

    /// The revision did not start its response within `timeout_ms`
    /// (`timeoutSeconds`): 504, as Knative's queue-proxy answers. The body
    /// is the one revgate's Envoy gives for the same limit.
    pub fn request_timeout(revision: &RevisionKey, timeout_ms: u64) -> Self {
        Self::late_start(revision, timeout_ms, REQUEST_TIMEOUT, "timeoutSeconds")
    }

    /// The revision did not start its response within `timeout_ms`
    /// (`responseStartTimeoutSeconds`): 504, as Knative's queue-proxy answers.
    pub fn response_start_timeout(revision: &RevisionKey, timeout_ms: u64) -> Self {
        Self::late_start(revision, timeout_ms, RESPONSE_START_TIMEOUT, "responseStartTimeoutSeconds")
    }

    fn late_start(revision: &RevisionKey, timeout_ms: u64, reason: &'static str, field: &str) -> Self {
        Self {
            status: 504,
            reason,
            body: format!(
                "revgate: revision {revision} did not start its response within {} s (limit {field} of the revision)\n",
                seconds(timeout_ms)
            ),
        }
    }

    /// The revision sent no response byte for `timeout_ms`
    /// (`idleTimeoutSeconds`): 504 if its response had not started (Envoy
    /// ends the stream of one that had).
    pub fn idle_timeout(revision: &RevisionKey, timeout_ms: u64) -> Self {
        Self {
            status: 504,
            reason: IDLE_TIMEOUT,
            body: format!(
                "revgate: revision {revision} sent no response byte for {} s (limit idleTimeoutSeconds of the revision)\n",
                seconds(timeout_ms)
            ),
        }
    }
}

/// Milliseconds as seconds, without a fraction when there is none.
fn seconds(ms: u64) -> String {
    match ms % 1000 {
        0 => (ms / 1000).to_string(),
        frac => format!("{}.{frac:03}", ms / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_name_the_limit_and_the_revision() {
        let rev = RevisionKey::new("default", "hello-00001");
        let full = LocalReply::held_requests_limit(&rev, 10_000);
        assert_eq!((full.status, full.reason), (503, "held-requests-limit"));
        assert_eq!(
            full.body,
            "revgate: revision default/hello-00001 has 10000 requests held waiting for activation \
             (limit max_held_per_revision); try again later\n"
        );
        let late = LocalReply::activation_timeout(&rev, 300_000);
        assert_eq!((late.status, late.reason), (503, "activation-timeout"));
        assert!(late.body.contains("default/hello-00001") && late.body.contains("300000 ms"));
        assert_eq!(late.headers()[0], ("x-revgate-reason", "activation-timeout"));
        let start = LocalReply::response_start_timeout(&rev, 1_500);
        assert_eq!((start.status, start.reason), (504, "response-start-timeout"));
        assert_eq!(
            start.body,
            "revgate: revision default/hello-00001 did not start its response within 1.500 s \
             (limit responseStartTimeoutSeconds of the revision)\n"
        );
        assert_eq!(LocalReply::request_timeout(&rev, 2_000).reason, "request-timeout");
        assert!(LocalReply::idle_timeout(&rev, 2_000).body.contains("for 2 s"));
    }
}
