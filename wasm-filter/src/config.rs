//! The plugin configuration, parsed and validated once in the root context's
//! `on_configure`.
//!
//! The configuration is a JSON object (Envoy's `plugin_config.configuration`,
//! usually a `StringValue`). Parsing is per knob: a knob that is missing takes
//! its default silently; a knob with a bad value takes its default and yields
//! a [`ConfigError`] naming it, which the glue logs; an unknown knob is
//! reported the same way (probably a typo). A filter with a bad configuration
//! still runs with defaults rather than failing Envoy's listener.

use serde_json::{Map, Value};

use revgate_proto::paths::READINESS_MAX_HOLD_MS;

/// Knob names, as they appear in the JSON.
pub mod knobs {
    pub const CONTROL_CLUSTER: &str = "control_cluster";
    pub const CONTROL_AUTHORITY: &str = "control_authority";
    pub const REPORT_INTERVAL_MS: &str = "report_interval_ms";
    pub const MAX_HELD_PER_REVISION: &str = "max_held_per_revision";
    pub const DEFAULT_ACTIVATION_TIMEOUT_MS: &str = "default_activation_timeout_ms";
    pub const READINESS_POLL_TIMEOUT_MS: &str = "readiness_poll_timeout_ms";
    pub const TICK_INTERVAL_MS: &str = "tick_interval_ms";
    pub const STARTUP_HOLD_MS: &str = "startup_hold_ms";
    pub const RELEASE_GATE: &str = "release_gate";
    pub const PROBE_PATH: &str = "probe_path";
    pub const PROBE_TIMEOUT_MS: &str = "probe_timeout_ms";
    pub const TOKEN: &str = "token";
}

/// The gateway token the filter presents to the activation service, kept
/// as the `authorization` header value it sends. Its `Debug` never shows
/// it, so that no log line can carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlToken(String);

impl ControlToken {
    pub fn new(token: &str) -> Self {
        Self(format!("Bearer {token}"))
    }

    /// The value of the `authorization` header.
    pub fn header_value(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ControlToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlToken(<redacted>)")
    }
}

/// What must be true before a held request for a ready revision is
/// released (knob `release_gate`).
///
/// | gate | a held request is released when | use |
/// |---|---|---|
/// | `control-plane` | the control plane says the revision has ready endpoints in this node | revgate's own xDS: it counts an endpoint only once this Envoy ACKed it |
/// | `probe` | that, and a probe through the request's own cluster got an answer from the revision in this VM | Istio gateways: istiod programs Envoy, revgate sees no ACKs |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReleaseGate {
    #[default]
    ControlPlane,
    Probe,
}

impl ReleaseGate {
    /// Every gate, as its knob value.
    pub const ALL: [Self; 2] = [Self::ControlPlane, Self::Probe];

    /// The knob's value for this gate.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ControlPlane => "control-plane",
            Self::Probe => "probe",
        }
    }

    /// The gate a knob value names, if any.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|gate| gate.as_str() == value)
    }
}

/// The filter's settings. Knative names and defaults where Knative has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    /// The Envoy cluster that reaches the control plane's activation service.
    /// `revgate-control` behind revgate's own xDS; inside an Istio gateway,
    /// e.g. `outbound|9091||revgate.revgate-system.svc.cluster.local`.
    pub control_cluster: String,
    /// `:authority` of the calls to the control plane.
    pub control_authority: String,
    /// How often each VM posts a `MetricsReport` (Knative's activator: 1 s).
    pub report_interval_ms: u64,
    /// Requests held per revision per VM before new ones get 503 (Knative's
    /// activator breaker queue depth, 10 000).
    pub max_held_per_revision: usize,
    /// How long a request may be held when the readiness update gives no
    /// timeout for its revision (Knative's `revision-timeout-seconds`, 300 s).
    pub default_activation_timeout_ms: u64,
    /// How long the filter waits for an answer to a readiness long-poll.
    /// Must exceed the server's hold time (25 s). Readiness older than twice
    /// this is reported as stale (see [`FilterConfig::readiness_stale_after_ms`]).
    pub readiness_poll_timeout_ms: u64,
    /// Period of the root context's timer, which expires held requests,
    /// notices capacity freed by other workers and paces reports and polls.
    pub tick_interval_ms: u64,
    /// How long a new VM holds requests for revisions while it waits for
    /// its first readiness answer, so a gateway that just started neither
    /// sends requests to cold revisions nor fails them. Past this without an
    /// answer, requests pass.
    pub startup_hold_ms: u64,
    /// What must hold before a request for a ready revision is released
    /// (see [`ReleaseGate`]).
    pub release_gate: ReleaseGate,
    /// `:path` of the probe request (`release_gate: probe`). Any HTTP answer
    /// from the revision counts, a 404 too, so a path the app answers
    /// cheaply is best.
    pub probe_path: String,
    /// How long a probe may take before it counts as "not yet". A timeout
    /// cannot tell a slow answer from a connection still pending, so the
    /// app must answer `probe_path` within this.
    pub probe_timeout_ms: u64,
    /// The gateway token, sent as `authorization: Bearer <token>` on every
    /// call to the control plane; required by an activation service bound
    /// beyond loopback. None: no header.
    pub control_token: Option<ControlToken>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            control_cluster: "revgate-control".to_owned(),
            control_authority: "revgate-control".to_owned(),
            report_interval_ms: 1_000,
            max_held_per_revision: 10_000,
            default_activation_timeout_ms: 300_000,
            readiness_poll_timeout_ms: 30_000,
            tick_interval_ms: 100,
            startup_hold_ms: 3_000,
            release_gate: ReleaseGate::ControlPlane,
            probe_path: "/".to_owned(),
            probe_timeout_ms: 1_000,
            control_token: None,
        }
    }
}

impl FilterConfig {
    /// How long without a readiness answer before the filter warns that the
    /// control plane is unreachable. It keeps the last view meanwhile: warm
    /// revisions keep serving and held requests end at their activation
    /// timeout. Two poll timeouts: one poll may fail outright and the next
    /// still have time to succeed.
    pub fn readiness_stale_after_ms(&self) -> u64 {
        self.readiness_poll_timeout_ms.saturating_mul(2)
    }
}

/// A knob that could not be applied; its default was used instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("plugin configuration is not a JSON object ({reason}); using defaults for every knob")]
    NotAnObject { reason: String },
    #[error("plugin configuration knob `{knob}` {problem}; using its default")]
    BadKnob { knob: &'static str, problem: String },
    #[error("plugin configuration has unknown knob `{knob}` (ignored); known knobs: {}", KNOWN.join(", "))]
    UnknownKnob { knob: String },
}

const KNOWN: &[&str] = &[
    knobs::CONTROL_CLUSTER,
    knobs::CONTROL_AUTHORITY,
    knobs::REPORT_INTERVAL_MS,
    knobs::MAX_HELD_PER_REVISION,
    knobs::DEFAULT_ACTIVATION_TIMEOUT_MS,
    knobs::READINESS_POLL_TIMEOUT_MS,
    knobs::TICK_INTERVAL_MS,
    knobs::STARTUP_HOLD_MS,
    knobs::RELEASE_GATE,
    knobs::PROBE_PATH,
    knobs::PROBE_TIMEOUT_MS,
    knobs::TOKEN,
];

/// Parses the plugin configuration. Never fails: returns the configuration
/// to use and what was wrong with the input.
pub fn parse(raw: &[u8]) -> (FilterConfig, Vec<ConfigError>) {
    let mut config = FilterConfig::default();
    let mut errors = Vec::new();
    if raw.iter().all(u8::is_ascii_whitespace) {
        return (config, errors);
    }
    let object = match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(object)) => object,
        Ok(other) => {
            errors.push(ConfigError::NotAnObject { reason: format!("found {}", kind(&other)) });
            return (config, errors);
        }
        Err(e) => {
            errors.push(ConfigError::NotAnObject { reason: e.to_string() });
            return (config, errors);
        }
    };

    for name in object.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        errors.push(ConfigError::UnknownKnob { knob: name.clone() });
    }

    let mut knob = Knobs { object: &object, errors: &mut errors };
    if let Some(v) = knob.string(knobs::CONTROL_CLUSTER) {
        config.control_cluster = v;
    }
    if let Some(v) = knob.string(knobs::CONTROL_AUTHORITY) {
        config.control_authority = v;
    }
    if let Some(v) = knob.whole(knobs::REPORT_INTERVAL_MS, 100, 600_000) {
        config.report_interval_ms = v;
    }
    if let Some(v) = knob.whole(knobs::MAX_HELD_PER_REVISION, 1, 1_000_000) {
        config.max_held_per_revision = usize::try_from(v).unwrap_or(config.max_held_per_revision);
    }
    if let Some(v) = knob.whole(knobs::DEFAULT_ACTIVATION_TIMEOUT_MS, 1, 86_400_000) {
        config.default_activation_timeout_ms = v;
    }
    if let Some(v) = knob.whole(knobs::READINESS_POLL_TIMEOUT_MS, READINESS_MAX_HOLD_MS + 1_000, 600_000) {
        config.readiness_poll_timeout_ms = v;
    }
    if let Some(v) = knob.whole(knobs::TICK_INTERVAL_MS, 10, 10_000) {
        config.tick_interval_ms = v;
    }
    if let Some(v) = knob.whole(knobs::STARTUP_HOLD_MS, 0, 600_000) {
        config.startup_hold_ms = v;
    }
    if let Some(v) = knob.string(knobs::RELEASE_GATE) {
        match ReleaseGate::parse(&v) {
            Some(gate) => config.release_gate = gate,
            None => {
                let allowed: Vec<&str> = ReleaseGate::ALL.iter().map(|g| g.as_str()).collect();
                knob.bad(knobs::RELEASE_GATE, format!("is {v:?}, not one of {}", allowed.join(", ")));
            }
        }
    }
    if let Some(v) = knob.string(knobs::PROBE_PATH) {
        if v.starts_with('/') && !v.contains(char::is_whitespace) {
            config.probe_path = v;
        } else {
            knob.bad(knobs::PROBE_PATH, format!("is {v:?}; it must start with `/` and hold no whitespace"));
        }
    }
    if let Some(v) = knob.whole(knobs::PROBE_TIMEOUT_MS, 10, 60_000) {
        config.probe_timeout_ms = v;
    }
    // The error for a bad token never quotes it.
    if let Some(v) = knob.string(knobs::TOKEN) {
        if v.bytes().all(|b| b.is_ascii_graphic()) {
            config.control_token = Some(ControlToken::new(&v));
        } else {
            knob.bad(knobs::TOKEN, "must hold only visible ASCII characters without spaces".into());
        }
    }
    (config, errors)
}

struct Knobs<'a> {
    object: &'a Map<String, Value>,
    errors: &'a mut Vec<ConfigError>,
}

impl Knobs<'_> {
    fn bad(&mut self, knob: &'static str, problem: String) {
        self.errors.push(ConfigError::BadKnob { knob, problem });
    }

    /// A non-empty string without characters that cannot go in a header or
    /// a cluster name.
    fn string(&mut self, knob: &'static str) -> Option<String> {
        match self.object.get(knob)? {
            Value::String(s) if !s.is_empty() && !s.chars().any(char::is_control) => Some(s.clone()),
            Value::String(_) => {
                self.bad(knob, "must be a non-empty string without control characters".into());
                None
            }
            other => {
                self.bad(knob, format!("must be a string, found {}", kind(other)));
                None
            }
        }
    }

    /// A whole number within `[min, max]`.
    fn whole(&mut self, knob: &'static str, min: u64, max: u64) -> Option<u64> {
        let value = self.object.get(knob)?;
        match value.as_u64() {
            Some(v) if (min..=max).contains(&v) => Some(v),
            Some(v) => {
                self.bad(knob, format!("is {v}, outside {min}..={max}"));
                None
            }
            None => {
                self.bad(knob, format!("must be a whole number within {min}..={max}, found {value}"));
                None
            }
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_token_becomes_the_authorization_header_and_is_never_shown() {
        let (config, errors) = parse(br#"{"token": "gw-token-0123456789"}"#);
        assert_eq!(errors, vec![]);
        let token = config.control_token.as_ref().unwrap();
        assert_eq!(token.header_value(), "Bearer gw-token-0123456789");
        assert!(!format!("{config:?}").contains("gw-token-0123456789"));
        let (config, errors) = parse(br#"{"token": "has space 0123456789"}"#);
        assert_eq!(config.control_token, None);
        assert!(!errors[0].to_string().contains("has space"), "{}", errors[0]);
    }

    #[test]
    fn empty_config_means_defaults() {
        assert_eq!(parse(b""), (FilterConfig::default(), vec![]));
        assert_eq!(parse(b"  \n"), (FilterConfig::default(), vec![]));
        assert_eq!(parse(b"{}"), (FilterConfig::default(), vec![]));
    }

    #[test]
    fn every_knob_applies() {
        let raw = br#"{
            "control_cluster": "outbound|9091||revgate.revgate-system.svc.cluster.local",
            "control_authority": "revgate.revgate-system",
            "report_interval_ms": 2000,
            "max_held_per_revision": 50,
            "default_activation_timeout_ms": 60000,
            "readiness_poll_timeout_ms": 40000,
            "tick_interval_ms": 50,
            "startup_hold_ms": 500,
            "release_gate": "probe",
            "probe_path": "/healthz?probe=1",
            "probe_timeout_ms": 250,
            "token": "gw-token-0123456789"
        }"#;
        let (config, errors) = parse(raw);
        assert_eq!(errors, vec![]);
        assert_eq!(
            config,
            FilterConfig {
                control_cluster: "outbound|9091||revgate.revgate-system.svc.cluster.local".into(),
                control_authority: "revgate.revgate-system".into(),
                report_interval_ms: 2000,
                max_held_per_revision: 50,
                default_activation_timeout_ms: 60_000,
                readiness_poll_timeout_ms: 40_000,
                tick_interval_ms: 50,
                startup_hold_ms: 500,
                release_gate: ReleaseGate::Probe,
                probe_path: "/healthz?probe=1".into(),
                probe_timeout_ms: 250,
                control_token: Some(ControlToken::new("gw-token-0123456789")),
            }
        );
        assert_eq!(config.readiness_stale_after_ms(), 80_000);
    }

    #[test]
    fn a_bad_knob_falls_back_alone_and_is_named() {
        let (config, errors) = parse(
            br#"{"report_interval_ms": 0, "max_held_per_revision": "many", "control_cluster": "",
                 "readiness_poll_timeout_ms": 1000, "default_activation_timeout_ms": 5000, "colour": 1}"#,
        );
        assert_eq!(config.report_interval_ms, 1000);
        assert_eq!(config.max_held_per_revision, 10_000);
        assert_eq!(config.control_cluster, "revgate-control");
        assert_eq!(config.readiness_poll_timeout_ms, 30_000);
        assert_eq!(config.default_activation_timeout_ms, 5000, "good knobs still apply");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for knob in
            ["report_interval_ms", "max_held_per_revision", "control_cluster", "readiness_poll_timeout_ms", "colour"]
        {
            assert!(text.iter().any(|t| t.contains(&format!("`{knob}`"))), "{knob} not named in {text:?}");
        }
        assert_eq!(errors.len(), 5);
    }

    #[test]
    fn release_gate_values_are_named_and_a_bad_one_keeps_the_default() {
        assert_eq!(parse(br#"{"release_gate": "control-plane"}"#).0.release_gate, ReleaseGate::ControlPlane);
        assert_eq!(parse(br#"{"release_gate": "probe"}"#).0.release_gate, ReleaseGate::Probe);
        for raw in [&br#"{"release_gate": "Probe"}"#[..], br#"{"release_gate": true}"#, br#"{"release_gate": ""}"#] {
            let (config, errors) = parse(raw);
            assert_eq!(config.release_gate, ReleaseGate::ControlPlane);
            let [error] = errors.as_slice() else { panic!("{errors:?}") };
            assert!(error.to_string().contains("`release_gate`"), "{error}");
        }
        let (_, errors) = parse(br#"{"release_gate": "ack"}"#);
        assert_eq!(
            errors[0].to_string(),
            "plugin configuration knob `release_gate` is \"ack\", not one of control-plane, probe; using its default"
        );
    }

    #[test]
    fn probe_knobs_are_checked() {
        let (config, errors) = parse(br#"{"probe_path": "healthz", "probe_timeout_ms": 5}"#);
        assert_eq!((config.probe_path.as_str(), config.probe_timeout_ms), ("/", 1_000));
        assert_eq!(errors.len(), 2, "{errors:?}");
        let (_, errors) = parse(br#"{"probe_path": "/a b"}"#);
        assert!(errors[0].to_string().contains("`probe_path`"), "{errors:?}");
    }

    #[test]
    fn not_an_object() {
        for raw in [&b"[1]"[..], b"42", b"{", b"\xff\xfe", b"null"] {
            let (config, errors) = parse(raw);
            assert_eq!(config, FilterConfig::default());
            assert!(matches!(errors.as_slice(), [ConfigError::NotAnObject { .. }]), "{errors:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (config, _) = parse(&raw);
            prop_assert!(config.report_interval_ms >= 100);
            prop_assert!(config.max_held_per_revision >= 1);
        }

        #[test]
        fn arbitrary_json_objects_never_panic(
            entries in proptest::collection::vec(
                (prop_oneof![
                    Just(knobs::CONTROL_CLUSTER.to_owned()),
                    Just(knobs::REPORT_INTERVAL_MS.to_owned()),
                    Just(knobs::MAX_HELD_PER_REVISION.to_owned()),
                    Just(knobs::READINESS_POLL_TIMEOUT_MS.to_owned()),
                    "[a-z_]{1,12}",
                ],
                prop_oneof![
                    any::<i64>().prop_map(|v| v.to_string()),
                    any::<f64>().prop_map(|v| if v.is_finite() { v.to_string() } else { "1".into() }),
                    "\"[^\"\\\\]{0,10}\"",
                    Just("null".to_owned()),
                    Just("[]".to_owned()),
                ]),
                0..8,
            )
        ) {
            let body: Vec<String> = entries.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            let raw = format!("{{{}}}", body.join(","));
            let (config, _) = parse(raw.as_bytes());
            prop_assert!(!config.control_cluster.is_empty());
        }
    }
}
