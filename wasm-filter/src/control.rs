//! The filter's side of the calls to the control plane (see the crate docs
//! for the transport): how each request is built, and the readiness
//! long-poll's state machine with its backoff.

use revgate_proto::paths;
use revgate_proto::{ActivationRequest, MetricsReport};

use crate::config::{FilterConfig, ReleaseGate};
use crate::readiness::{Decoded, ReadinessError, ReadinessTable};

const NS_PER_MS: u64 = 1_000_000;

/// Timeout of an activation call: short, the control plane only registers
/// demand, and the metrics report repeats the held count anyway.
pub const ACTIVATE_TIMEOUT_MS: u64 = 5_000;
/// First delay after a failed readiness poll; doubles per failure.
pub const POLL_BACKOFF_INITIAL_MS: u64 = 100;
/// Longest delay between readiness polls while they fail: a control plane
/// that comes back is heard within about a second (a failed poll to a local
/// cluster costs next to nothing).
pub const POLL_BACKOFF_MAX_MS: u64 = 1_000;

/// One HTTP call to the control plane, ready for `dispatch_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

impl Call {
    /// Pseudo-headers Envoy requires on a dispatched call, the content type
    /// of the contract, and the gateway token when the configuration has one.
    pub fn headers<'a>(&'a self, config: &'a FilterConfig) -> Vec<(&'a str, &'a str)> {
        let authority = config.control_authority.as_str();
        let mut headers = vec![(":method", self.method), (":path", self.path.as_str()), (":authority", authority)];
        if self.body.is_some() {
            headers.push(("content-type", paths::CONTENT_TYPE));
        }
        headers.push(("accept", paths::CONTENT_TYPE));
        if let Some(token) = &config.control_token {
            headers.push(("authorization", token.header_value()));
        }
        headers
    }

    /// `POST /activation/v1/report`, due every `report_interval_ms`; it may
    /// take up to one interval before the next one supersedes it.
    pub fn report(config: &FilterConfig, report: &MetricsReport) -> Self {
        use prost::Message;
        Self {
            method: "POST",
            path: paths::REPORT.to_owned(),
            body: Some(report.encode_to_vec()),
            timeout_ms: config.report_interval_ms,
        }
    }

    /// `POST /activation/v1/activate`.
    pub fn activate(request: &ActivationRequest) -> Self {
        use prost::Message;
        Self {
            method: "POST",
            path: paths::ACTIVATE.to_owned(),
            body: Some(request.encode_to_vec()),
            timeout_ms: ACTIVATE_TIMEOUT_MS,
        }
    }

    /// `GET /activation/v1/readiness?after=<version>&node=<node>&reporter=<reporter>&partial=1`,
    /// plus `&gate=probe` with `release_gate: probe`. `partial=1`: this
    /// filter applies partial views, so a change costs what it changes.
    pub fn readiness(config: &FilterConfig, after: u64, node_id: &str, reporter: &str) -> Self {
        let mut path = format!(
            "{}&{}={}",
            paths::readiness_path(after, node_id, reporter),
            paths::READINESS_PARTIAL_PARAM,
            paths::READINESS_PARTIAL_YES
        );
        if config.release_gate == ReleaseGate::Probe {
            // This filter confirms endpoints in its own Envoy: the control
            // plane tells it the endpoints it registered, not the ones this
            // node ACKed (a gateway revgate does not program never ACKs).
            path = format!("{path}&{}={}", paths::READINESS_GATE_PARAM, paths::READINESS_GATE_PROBE);
        }
        Self { method: "GET", path, body: None, timeout_ms: config.readiness_poll_timeout_ms }
    }
}

/// Why a readiness poll produced no view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    #[error("readiness poll got no response (timeout, reset, or cluster `{cluster}` unreachable)")]
    NoResponse { cluster: String },
    #[error("readiness poll answered HTTP {status}: {body}")]
    Status { status: String, body: String },
    #[error(transparent)]
    Body(#[from] ReadinessError),
}

/// Interprets the answer to a readiness poll: its `:status` and body.
pub fn readiness_answer(cluster: &str, status: Option<&str>, body: &[u8]) -> Result<Decoded, PollError> {
    match status {
        None => Err(PollError::NoResponse { cluster: cluster.to_owned() }),
        Some("200") => Ok(ReadinessTable::decode(body)?),
        Some(status) => Err(PollError::Status {
            status: status.to_owned(),
            body: String::from_utf8_lossy(body.get(..200).unwrap_or(body)).into_owned(),
        }),
    }
}

/// The readiness long-poll of one root context: one call outstanding at a
/// time, re-issued at once after an answer and after a growing delay after
/// a failure.
///
/// | state | event | next |
/// |---|---|---|
/// | idle, due | tick | dispatch → waiting (or failed dispatch → idle, backoff) |
/// | waiting(token) | answer with that token, usable | idle, due now; `after` = its version |
/// | waiting(token) | answer with that token, unusable | idle, due after backoff |
/// | waiting(token) | answer with another token | ignored |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poller {
    waiting: Option<u32>,
    after: u64,
    failures: u32,
    next_at_ns: u64,
}

impl Default for Poller {
    fn default() -> Self {
        Self::new()
    }
}

impl Poller {
    pub fn new() -> Self {
        Self { waiting: None, after: 0, failures: 0, next_at_ns: 0 }
    }

    /// The version to send as `after=`.
    pub fn after(&self) -> u64 {
        self.after
    }

    /// Consecutive failures so far (0 while polls succeed).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A poll should be dispatched now.
    pub fn is_due(&self, now_ns: u64) -> bool {
        self.waiting.is_none() && now_ns >= self.next_at_ns
    }

    pub fn dispatched(&mut self, token: u32) {
        self.waiting = Some(token);
    }

    /// The call could not even be dispatched (e.g. unknown cluster).
    pub fn dispatch_failed(&mut self, now_ns: u64) {
        self.waiting = None;
        self.fail(now_ns);
    }

    /// The answer to `token` is ours: stop waiting for it.
    pub fn take(&mut self, token: u32) -> bool {
        let ours = self.waiting == Some(token);
        if ours {
            self.waiting = None;
        }
        ours
    }

    /// The answer carried a usable view of `version`.
    pub fn succeeded(&mut self, now_ns: u64, version: u64) {
        self.after = version;
        self.failures = 0;
        self.next_at_ns = now_ns;
    }

    /// The answer was unusable.
    pub fn failed(&mut self, now_ns: u64) {
        self.fail(now_ns);
    }

    fn fail(&mut self, now_ns: u64) {
        self.failures = self.failures.saturating_add(1);
        self.next_at_ns = now_ns.saturating_add(backoff_ms(self.failures, now_ns).saturating_mul(NS_PER_MS));
    }
}

/// The delay after `failures` consecutive failures: doubling from
/// [`POLL_BACKOFF_INITIAL_MS`] up to [`POLL_BACKOFF_MAX_MS`], plus up to a
/// quarter more drawn from the clock's low bits, so the VMs of one Envoy do
/// not retry in lockstep.
pub fn backoff_ms(failures: u32, now_ns: u64) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    let base = POLL_BACKOFF_INITIAL_MS.saturating_mul(1 << doublings).min(POLL_BACKOFF_MAX_MS);
    let jitter = (now_ns / 1_000) % (base / 4 + 1);
    base + jitter
}

/// The id of one VM as a reporter: unique per VM instance, readable in logs.
/// `seq` comes from a counter in shared data, so two VMs started in the same
/// nanosecond still differ.
pub fn reporter_id(node_id: &str, start_ns: u64, seq: u64) -> String {
    format!("{node_id}/{}/{seq}", start_ns / NS_PER_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use revgate_proto::ReadinessUpdate;

    const MS: u64 = NS_PER_MS;

    #[test]
    fn calls_follow_the_contract() {
        let config = FilterConfig::default();
        let poll = Call::readiness(&config, 7, "gw-1", "gw-1/1/1");
        assert_eq!(
            (poll.method, poll.path.as_str()),
            ("GET", "/activation/v1/readiness?after=7&node=gw-1&reporter=gw-1%2F1%2F1&partial=1")
        );
        assert_eq!(poll.timeout_ms, 30_000);
        assert_eq!(
            poll.headers(&config),
            vec![
                (":method", "GET"),
                (":path", "/activation/v1/readiness?after=7&node=gw-1&reporter=gw-1%2F1%2F1&partial=1"),
                (":authority", "revgate-control"),
                ("accept", "application/x-protobuf"),
            ]
        );
        let with_token = FilterConfig {
            control_token: Some(crate::config::ControlToken::new("s3cret-token")),
            ..FilterConfig::default()
        };
        assert!(poll.headers(&with_token).contains(&("authorization", "Bearer s3cret-token")));

        let probing = FilterConfig { release_gate: ReleaseGate::Probe, ..FilterConfig::default() };
        assert_eq!(
            Call::readiness(&probing, 7, "gw-1", "r").path,
            "/activation/v1/readiness?after=7&node=gw-1&reporter=r&partial=1&gate=probe",
            "a filter that probes says so"
        );

        let request = ActivationRequest { revision: "hello-00001".into(), held: 1, ..Default::default() };
        let activate = Call::activate(&request);
        assert_eq!((activate.method, activate.path.as_str()), ("POST", "/activation/v1/activate"));
        assert_eq!(ActivationRequest::decode(activate.body.as_deref().unwrap()).unwrap(), request);
        assert!(activate.headers(&config).contains(&("content-type", "application/x-protobuf")));

        let report = Call::report(&config, &MetricsReport::default());
        assert_eq!((report.method, report.path.as_str(), report.timeout_ms), ("POST", "/activation/v1/report", 1000));
    }

    #[test]
    fn readiness_answers() {
        let body = ReadinessUpdate { version: 3, ..Default::default() }.encode_to_vec();
        assert_eq!(readiness_answer("c", Some("200"), &body).unwrap().view.version(), 3);
        assert!(matches!(readiness_answer("c", None, b""), Err(PollError::NoResponse { .. })));
        let long = vec![b'x'; 10_000];
        match readiness_answer("c", Some("503"), &long) {
            Err(PollError::Status { status, body }) => assert_eq!((status.as_str(), body.len()), ("503", 200)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(readiness_answer("c", Some("200"), b"\xff"), Err(PollError::Body(_))));
    }

    #[test]
    fn poller_reissues_at_once_and_backs_off_on_failure() {
        let mut p = Poller::new();
        assert!(p.is_due(0));
        p.dispatched(1);
        assert!(!p.is_due(10 * MS), "one poll outstanding at a time");
        assert!(!p.take(2), "another token is not ours");
        assert!(p.take(1));
        p.succeeded(10 * MS, 5);
        assert_eq!(p.after(), 5);
        assert!(p.is_due(10 * MS), "re-issued at once");

        p.dispatched(2);
        assert!(p.take(2));
        p.failed(20 * MS);
        assert!(!p.is_due(20 * MS + 99 * MS));
        assert!(p.is_due(20 * MS + 126 * MS));
        p.dispatch_failed(200 * MS);
        assert!(!p.is_due(200 * MS + 199 * MS), "second failure waits longer");
        assert_eq!(p.after(), 5, "failures keep the known version");
        p.succeeded(1000 * MS, 5);
        assert!(p.is_due(1000 * MS));
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        for (failures, low, high) in
            [(1, 100, 125), (2, 200, 250), (3, 400, 500), (10, 1000, 1250), (u32::MAX, 1000, 1250)]
        {
            for now in [0, 123_456_789, u64::MAX] {
                let delay = backoff_ms(failures, now);
                assert!((low..=high).contains(&delay), "failures {failures}: {delay}");
            }
        }
    }

    #[test]
    fn reporter_ids_differ_per_vm() {
        assert_eq!(reporter_id("gw", 1_700_000_000_123_456_789, 3), "gw/1700000000123/3");
        assert_ne!(reporter_id("gw", 5, 1), reporter_id("gw", 5, 2));
    }
}
