//! Probe-gated release (`release_gate: probe`): before releasing requests
//! held for a revision, confirm in *this* Envoy that the revision's cluster
//! reaches the revision.
//!
//! Behind revgate's own xDS the control plane counts an endpoint as ready
//! for a node only once that node ACKed it, so its word is enough. In an
//! Istio gateway istiod programs Envoy and revgate sees no ACKs: the control
//! plane knows the revision's instances are ready, not whether istiod has
//! pushed them to this gateway yet. Released early, a request would meet
//! Envoy's 503 "no healthy upstream". So once the control plane says
//! "ready", the filter sends one cheap request through the very cluster the
//! held request's route picked, and releases only when an answer comes back
//! from the revision itself. No queue-proxy stands in front of the app here,
//! so any HTTP answer from it counts (a 404 too); Envoy's own local replies
//! ([`ENVOY_LOCAL_REPLIES`]) and calls that got no answer mean "not yet".
//! So does a call Envoy fails at once: with no host in the cluster (or none
//! healthy) Envoy 1.40's router fails the call inline and
//! `dispatch_http_call` returns `InternalFailure` instead of a token (the
//! cluster's `upstream_cx_none_healthy` still counts it); an unknown
//! cluster returns `BadArgument`.
//!
//! Each VM probes on its own (a VM cannot see another's answers) and keeps,
//! per cluster:
//!
//! | state | event | next |
//! |---|---|---|
//! | absent | the oldest request held for a ready revision waits on this cluster | due now |
//! | due (at T) | T has come, a request still waits on the cluster | dispatched: in flight |
//! | due | no request waits on the cluster any more | absent |
//! | due | the dispatch failed (no healthy upstream, or no such cluster) | due after backoff |
//! | in flight (token) | answer from the revision | **confirmed**: held requests are released |
//! | in flight (token) | Envoy's local reply, or no answer | due after backoff |
//! | in flight (token) | an answer with another token | ignored |
//! | any | the view says the revision is cold, or drops it | absent (a later cold start probes again) |
//!
//! At most one probe per cluster is in flight per VM. Retries back off from
//! [`PROBE_BACKOFF_INITIAL_MS`] to [`PROBE_BACKOFF_MAX_MS`]: a gateway
//! usually gets new endpoints within a second of the pods being ready, and a
//! local 503 costs Envoy next to nothing.

use std::collections::HashMap;

use crate::revision::RevisionKey;

const NS_PER_MS: u64 = 1_000_000;

/// Delay before the first retry of a probe that found no way through.
pub const PROBE_BACKOFF_INITIAL_MS: u64 = 10;
/// Longest delay between probes of one cluster.
pub const PROBE_BACKOFF_MAX_MS: u64 = 50;
/// Bytes of a probe answer's body read to classify it.
pub const PROBE_BODY_PREFIX: usize = 128;

/// `user-agent` of probes, so an app's logs can tell them apart (as
/// Knative's activator probes say `Knative-Activator-Probe`).
pub const PROBE_USER_AGENT: &str = "revgate-activator-probe";
/// Header naming the revision a probe is for.
pub const PROBE_HEADER: &str = "x-revgate-probe";

/// The starts of the bodies of Envoy's own answers when a request found no
/// way to the upstream (router response code details). An answer like this
/// comes from this Envoy (or a sidecar in front of the app), not from the
/// revision, so the revision is not reachable yet.
pub const ENVOY_LOCAL_REPLIES: &[&str] = &[
    // No host in the cluster, or none healthy.
    "no healthy upstream",
    // Connect refused or reset, TLS failure, circuit breaker overflow.
    "upstream connect error or disconnect/reset before headers",
    // The probe's own timeout, also while the connection is still pending.
    "upstream request timeout",
    "maintenance mode",
];

/// What a probe's answer says about the revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The revision answered (with this `:status`): its endpoints are in
    /// this Envoy.
    Reached { status: String },
    /// Not reachable through this Envoy yet, and why.
    NotYet { why: String },
}

/// Classifies a probe's answer: `:status` (none when the call failed, was
/// reset or timed out) and the start of its body.
pub fn classify(status: Option<&str>, body: &[u8]) -> Outcome {
    let Some(status) = status else {
        return Outcome::NotYet { why: "no answer (reset, or no response within probe_timeout_ms)".into() };
    };
    let text = String::from_utf8_lossy(body.get(..PROBE_BODY_PREFIX).unwrap_or(body));
    let local = status.starts_with('5') && ENVOY_LOCAL_REPLIES.iter().any(|reply| text.starts_with(reply));
    if local {
        Outcome::NotYet { why: format!("Envoy answered {status} {:?}", text.trim_end()) }
    } else {
        Outcome::Reached { status: status.to_owned() }
    }
}

/// The delay after `failures` consecutive probes that found no way through.
pub fn backoff_ms(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    PROBE_BACKOFF_INITIAL_MS.saturating_mul(1 << doublings).min(PROBE_BACKOFF_MAX_MS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Due { at_ns: u64 },
    InFlight { token: u32 },
    Confirmed,
}

#[derive(Debug, Clone)]
struct Entry {
    key: RevisionKey,
    state: State,
    /// Probes in a row that found no way through.
    failures: u32,
}

/// A probe to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeCall {
    pub cluster: String,
    pub key: RevisionKey,
}

/// A probe got an answer from the revision: its held requests may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    pub cluster: String,
    pub key: RevisionKey,
    /// Probes it took, this one included.
    pub attempts: u32,
    pub status: String,
}

/// The probes of one VM, per cluster (see the module docs).
#[derive(Debug, Default)]
pub struct Probes {
    clusters: HashMap<String, Entry>,
}

impl Probes {
    /// A probe through `cluster` got an answer from the revision since the
    /// revision last went cold.
    pub fn is_confirmed(&self, cluster: &str) -> bool {
        self.clusters.get(cluster).is_some_and(|entry| entry.state == State::Confirmed)
    }

    /// The probes to send now, given the clusters requests wait on (each
    /// with its revision). Clusters no request waits on any more stop being
    /// probed; a probe in flight is left to finish.
    pub fn due(&mut self, waiting: &[(String, RevisionKey)], now_ns: u64) -> Vec<ProbeCall> {
        self.clusters.retain(|cluster, entry| {
            !matches!(entry.state, State::Due { .. }) || waiting.iter().any(|(c, _)| c == cluster)
        });
        let mut calls = Vec::new();
        for (cluster, key) in waiting {
            let entry = match self.clusters.get_mut(cluster) {
                Some(entry) => entry,
                None => self.clusters.entry(cluster.clone()).or_insert(Entry {
                    key: key.clone(),
                    state: State::Due { at_ns: now_ns },
                    failures: 0,
                }),
            };
            if matches!(entry.state, State::Due { at_ns } if at_ns <= now_ns) {
                calls.push(ProbeCall { cluster: cluster.clone(), key: entry.key.clone() });
            }
        }
        calls
    }

    /// The probe of `cluster` was dispatched as call `token`.
    pub fn dispatched(&mut self, cluster: &str, token: u32) {
        if let Some(entry) = self.clusters.get_mut(cluster) {
            entry.state = State::InFlight { token };
        }
    }

    /// The probe of `cluster` could not be dispatched.
    pub fn dispatch_failed(&mut self, cluster: &str, now_ns: u64) {
        if let Some(entry) = self.clusters.get_mut(cluster) {
            entry.failures = entry.failures.saturating_add(1);
            entry.state = State::Due { at_ns: retry_at(now_ns, entry.failures) };
        }
    }

    /// Whether call `token` is a probe in flight.
    pub fn is_probe(&self, token: u32) -> bool {
        self.clusters.values().any(|entry| entry.state == State::InFlight { token })
    }

    /// The answer to call `token`: `Some` when it confirmed a cluster.
    pub fn answered(&mut self, token: u32, outcome: &Outcome, now_ns: u64) -> Option<Confirmed> {
        let (cluster, entry) = self.clusters.iter_mut().find(|(_, entry)| entry.state == State::InFlight { token })?;
        match outcome {
            Outcome::Reached { status } => {
                let attempts = entry.failures.saturating_add(1);
                entry.state = State::Confirmed;
                entry.failures = 0;
                Some(Confirmed { cluster: cluster.clone(), key: entry.key.clone(), attempts, status: status.clone() })
            }
            Outcome::NotYet { .. } => {
                entry.failures = entry.failures.saturating_add(1);
                entry.state = State::Due { at_ns: retry_at(now_ns, entry.failures) };
                None
            }
        }
    }

    /// Forgets what is known about the revisions `keep` rejects (cold or
    /// gone): a later cold start probes again, and the answer of a probe
    /// still in flight for them is ignored.
    pub fn retain_revisions(&mut self, keep: impl Fn(&RevisionKey) -> bool) {
        self.clusters.retain(|_, entry| keep(&entry.key));
    }

    /// A probe is waiting for its retry time (the root ticks faster meanwhile).
    pub fn retry_pending(&self) -> bool {
        self.clusters.values().any(|entry| matches!(entry.state, State::Due { .. }))
    }

    /// Consecutive probes of `cluster` that found no way through.
    pub fn failures(&self, cluster: &str) -> u32 {
        self.clusters.get(cluster).map_or(0, |entry| entry.failures)
    }

    pub fn clear(&mut self) {
        self.clusters.clear();
    }
}

fn retry_at(now_ns: u64, failures: u32) -> u64 {
    now_ns.saturating_add(backoff_ms(failures).saturating_mul(NS_PER_MS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = NS_PER_MS;
    const ISTIO: &str = "outbound|80||hello-00001.default.svc.cluster.local";

    fn key() -> RevisionKey {
        RevisionKey::new("default", "hello-00001")
    }

    fn waiting() -> Vec<(String, RevisionKey)> {
        vec![(ISTIO.to_owned(), key())]
    }

    fn reached(status: &str) -> Outcome {
        Outcome::Reached { status: status.into() }
    }

    #[test]
    fn answers_from_envoy_are_not_answers_from_the_revision() {
        let not_yet =
            |status: Option<&str>, body: &str| matches!(classify(status, body.as_bytes()), Outcome::NotYet { .. });
        let cases = [
            (None, "", true),
            (Some("503"), "no healthy upstream", true),
            (
                Some("503"),
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, \
                 transport failure reason: delayed connect error: Connection refused",
                true,
            ),
            (Some("503"), "upstream connect error or disconnect/reset before headers. reset reason: overflow", true),
            (Some("504"), "upstream request timeout", true),
            (Some("503"), "maintenance mode", true),
            // The app's own answers, whatever they say.
            (Some("200"), "hello", false),
            (Some("404"), "404 page not found", false),
            (Some("500"), "internal error", false),
            (Some("503"), "", false),
            (Some("503"), "app is warming up", false),
            (Some("200"), "no healthy upstream", false),
        ];
        for (status, body, want) in cases {
            assert_eq!(not_yet(status, body), want, "{status:?} {body:?}");
        }
        assert_eq!(classify(Some("204"), b""), reached("204"));
    }

    #[test]
    fn backoff_grows_to_a_cap() {
        let delays: Vec<u64> = (1..=6).map(backoff_ms).collect();
        assert_eq!(delays, [10, 20, 40, 50, 50, 50]);
        assert_eq!(backoff_ms(u32::MAX), 50);
    }

    #[test]
    fn one_probe_in_flight_retried_with_backoff_until_the_revision_answers() {
        let mut p = Probes::default();
        let t0 = 1_000 * MS;
        assert_eq!(p.due(&waiting(), t0), vec![ProbeCall { cluster: ISTIO.into(), key: key() }]);
        p.dispatched(ISTIO, 7);
        assert!(p.is_probe(7) && !p.is_probe(8));
        assert_eq!(p.due(&waiting(), t0), vec![], "one in flight per cluster");
        assert!(!p.retry_pending());

        let envoy = classify(Some("503"), b"no healthy upstream");
        assert_eq!(p.answered(7, &envoy, t0 + MS), None);
        assert!(p.retry_pending() && !p.is_confirmed(ISTIO));
        assert_eq!(p.due(&waiting(), t0 + 10 * MS), vec![], "backs off 10 ms");
        assert_eq!(p.due(&waiting(), t0 + 11 * MS).len(), 1);
        p.dispatch_failed(ISTIO, t0 + 11 * MS);
        assert_eq!(p.failures(ISTIO), 2);
        assert_eq!(p.due(&waiting(), t0 + 30 * MS), vec![], "then 20 ms");
        assert_eq!(p.due(&waiting(), t0 + 31 * MS).len(), 1);
        p.dispatched(ISTIO, 9);
        assert_eq!(p.answered(8, &reached("200"), t0 + 32 * MS), None, "not our token");

        let confirmed = p.answered(9, &reached("404"), t0 + 33 * MS).unwrap();
        assert_eq!((confirmed.key, confirmed.attempts, confirmed.status.as_str()), (key(), 3, "404"));
        assert!(p.is_confirmed(ISTIO) && !p.retry_pending());
        assert_eq!(p.due(&waiting(), t0 + 40 * MS), vec![], "confirmed: no more probes");
    }

    #[test]
    fn a_cold_revision_is_forgotten_and_late_answers_are_ignored() {
        let mut p = Probes::default();
        p.due(&waiting(), 0);
        p.dispatched(ISTIO, 1);
        p.retain_revisions(|k| k != &key());
        assert_eq!(p.answered(1, &reached("200"), MS), None, "the answer of a forgotten probe");
        assert!(!p.is_confirmed(ISTIO));

        p.due(&waiting(), 2 * MS);
        p.dispatched(ISTIO, 2);
        p.answered(2, &reached("200"), 3 * MS).unwrap();
        p.retain_revisions(|k| k != &key());
        assert!(!p.is_confirmed(ISTIO), "went cold: the next cold start probes again");
        assert_eq!(p.due(&waiting(), 4 * MS).len(), 1);
    }

    #[test]
    fn nobody_waiting_means_no_more_probes() {
        let mut p = Probes::default();
        p.due(&waiting(), 0);
        p.dispatched(ISTIO, 1);
        p.answered(1, &classify(None, b""), MS);
        assert!(p.retry_pending());
        assert_eq!(p.due(&[], 100 * MS), vec![]);
        assert!(!p.retry_pending(), "the retry is dropped with its last waiting request");
        p.clear();
        assert_eq!(p.due(&waiting(), 100 * MS).len(), 1, "a new waiting request probes at once");
    }

    proptest! {
        #[test]
        fn arbitrary_answers_never_panic(
            status in proptest::option::of("[0-9]{0,4}"),
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let _ = classify(status.as_deref(), &body);
        }
    }
}
