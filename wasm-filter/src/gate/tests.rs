use super::*;
use crate::breaker::fake::FakeStore;
use crate::reply::{ACTIVATION_TIMEOUT, HELD_REQUESTS_LIMIT};

const MS: u64 = NS_PER_MS;
const T0: u64 = 1_700_000_000_000 * MS;

fn target(rev: &str) -> Target {
    Target { key: RevisionKey::new("default", rev), cluster: String::new(), metadata_container_concurrency: None }
}

fn key(rev: &str) -> RevisionKey {
    RevisionKey::new("default", rev)
}

fn view(version: u64, entries: &[(&str, u32, u32)]) -> ReadinessTable {
    let entries: Vec<(&str, &str, u32, u32)> =
        entries.iter().map(|&(rev, ready, cc)| ("default", rev, ready, cc)).collect();
    ReadinessTable::of(version, &entries)
}

fn gate() -> Gate {
    Gate::new(FilterConfig { max_held_per_revision: 3, ..FilterConfig::default() }, T0)
}

fn pause(activate: Option<(&str, u64)>) -> Decision {
    Decision::Pause { activate: activate.map(|(rev, held)| Activation { key: key(rev), held }) }
}

#[test]
fn without_a_view_everything_passes_after_the_startup_hold() {
    let (mut g, store) = (gate(), FakeStore::default());
    let now = T0 + g.config().startup_hold_ms * MS;
    assert_eq!(g.on_request(1, target("hello"), now, &store), Decision::Continue);
    assert_eq!(g.on_log(1, Some(200), now + MS, &store), vec![]);
    let report = g.take_report(now + 1000 * MS, "gw", "r").unwrap();
    assert_eq!(report.revisions[0].requests, 1);
}

fn partial(after: u64, version: u64, lines: &[(&str, u32, u32)], removed: &[&str]) -> Partial {
    let lines = lines
        .iter()
        .map(|&(rev, ready, cc)| {
            (
                key(rev),
                Readiness {
                    ready_endpoints: ready,
                    container_concurrency: cc,
                    activation_timeout_ms: 0,
                    ..Readiness::default()
                },
            )
        })
        .collect();
    Partial { after, version, lines, removed: removed.iter().map(|rev| key(rev)).collect() }
}

#[test]
fn a_partial_view_releases_held_requests_as_a_complete_one_would() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 0, 0), ("other", 0, 0), ("warm", 1, 0)]), T0, &store);
    assert_eq!(g.on_request(1, target("hello"), T0, &store), pause(Some(("hello", 1))));
    assert_eq!(g.on_request(2, target("other"), T0, &store), pause(Some(("other", 1))));
    assert_eq!(g.on_request(3, target("hello"), T0 + MS, &store), pause(None));

    let wrong = partial(5, 6, &[("hello", 1, 0)], &[]);
    assert_eq!(g.on_partial(&wrong, T0 + 2 * MS, &store), Err(WrongBase { base: 5, held: Some(1) }));
    assert_eq!((g.view_version(), g.held_total()), (Some(1), 3), "a partial on another base changes nothing");

    let ready = partial(1, 2, &[("hello", 1, 0)], &[]);
    assert_eq!(g.on_partial(&ready, T0 + 3 * MS, &store), Ok(vec![Effect::Resume(1), Effect::Resume(3)]));
    assert_eq!(g.view_version(), Some(2));
    assert_eq!(g.held_total(), 1, "other is still cold");
    assert_eq!(g.on_request(4, target("warm"), T0 + 4 * MS, &store), Decision::Continue, "untouched lines stay");

    let removed = partial(2, 3, &[], &["other"]);
    assert_eq!(g.on_partial(&removed, T0 + 5 * MS, &store), Ok(vec![Effect::Resume(2)]), "forgotten: released");
    assert_eq!(g.on_request(5, target("other"), T0 + 6 * MS, &store), Decision::Continue, "unknown now");

    let mut fresh = gate();
    let held = fresh.on_partial(&ready, T0, &store);
    assert_eq!(held, Err(WrongBase { base: 1, held: None }), "no view: only a complete one applies");
}

#[test]
fn unknown_and_warm_revisions_pass() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_view(view(1, &[("warm", 2, 0)]), T0, &store);
    assert_eq!(g.on_request(1, target("warm"), T0, &store), Decision::Continue);
    assert_eq!(g.on_request(2, target("unknown"), T0, &store), Decision::Continue);
    assert_eq!(g.held_total(), 0);
}

#[test]
fn cold_revision_holds_activates_once_and_releases_in_order() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 0, 0)]), T0, &store);
    assert_eq!(g.on_request(1, target("hello"), T0, &store), pause(Some(("hello", 1))));
    assert_eq!(g.on_request(2, target("hello"), T0 + MS, &store), pause(None));
    assert_eq!(g.held_total(), 2);
    // A timeout answer with the same view changes nothing.
    assert_eq!(g.on_view(view(1, &[("hello", 0, 0)]), T0 + 2 * MS, &store), vec![]);
    // Ready: both go, oldest first.
    assert_eq!(g.on_view(view(2, &[("hello", 1, 0)]), T0 + 3 * MS, &store), vec![Effect::Resume(1), Effect::Resume(2)]);
    assert_eq!(g.held_total(), 0);
    assert_eq!(g.on_request(3, target("hello"), T0 + 4 * MS, &store), Decision::Continue);
    g.on_log(1, Some(200), T0 + 10 * MS, &store);
    let report = g.take_report(T0 + 1000 * MS, "gw", "r").unwrap();
    let rev = &report.revisions[0];
    assert_eq!((rev.requests, rev.held), (1, 0));
    assert!(rev.average_held_concurrency.unwrap() > 0.0);
    // Held 3 ms, then 7 ms upstream: 10 ms as the client saw it.
    let seconds = |h: &Option<revgate_proto::DurationHistogram>| h.as_ref().map(|h| (h.count, h.sum_seconds));
    assert_eq!(rev.durations[0].status_code, 200);
    assert_eq!(seconds(&rev.durations[0].duration), Some((1, 0.010)));
    assert_eq!(seconds(&rev.held_duration), Some((1, 0.003)));
    assert_eq!(seconds(&rev.upstream_duration), Some((1, 0.007)));
}

#[test]
fn a_full_queue_refuses_with_a_named_limit() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 0, 0)]), T0, &store);
    for id in 1..=3 {
        assert!(matches!(g.on_request(id, target("hello"), T0, &store), Decision::Pause { .. }));
    }
    let Decision::Refuse(reply) = g.on_request(4, target("hello"), T0, &store) else { panic!() };
    assert_eq!((reply.status, reply.reason), (503, HELD_REQUESTS_LIMIT));
    assert!(reply.body.contains("default/hello has 3 requests held"), "{}", reply.body);
    // The refused request is counted as a 503 when its stream ends.
    assert_eq!(g.on_log(4, None, T0 + MS, &store), vec![]);
    let report = g.take_report(T0 + 1000 * MS, "gw", "r").unwrap();
    assert_eq!((report.revisions[0].requests, report.revisions[0].responses_5xx, report.revisions[0].held), (1, 1, 3));
    assert_eq!(
        report.revisions[0].refusals,
        vec![revgate_proto::ReasonCount { reason: HELD_REQUESTS_LIMIT.into(), count: 1 }],
        "counted by x-revgate-reason"
    );
    assert_eq!(report.revisions[0].durations[0].status_code, 503, "no status from Envoy: the filter's own");
}

#[test]
fn held_requests_expire_at_the_revisions_timeout() {
    let (mut g, store) = (gate(), FakeStore::default());
    let update = revgate_proto::ReadinessUpdate {
        version: 1,
        revisions: vec![revgate_proto::RevisionReadiness {
            namespace: "default".into(),
            revision: "hello".into(),
            activation_timeout_ms: 1_000,
            ..Default::default()
        }],
        ..Default::default()
    };
    let line = ReadinessTable::complete(ReadinessTable::from_update(update).unwrap());
    g.on_view(line, T0, &store);
    g.on_request(1, target("hello"), T0, &store);
    g.on_request(2, target("hello"), T0 + 600 * MS, &store);
    assert_eq!(g.on_tick(T0 + 999 * MS, &store), vec![]);
    let effects = g.on_tick(T0 + 1000 * MS, &store);
    let [Effect::Reply(1, reply)] = effects.as_slice() else { panic!("{effects:?}") };
    assert_eq!((reply.status, reply.reason), (503, ACTIVATION_TIMEOUT));
    assert!(reply.body.contains("within 1000 ms"));
    assert_eq!(g.held_total(), 1);
    assert_eq!(g.on_log(1, Some(503), T0 + 1001 * MS, &store), vec![]);
}

#[test]
fn a_released_request_whose_response_does_not_start_in_time_gets_504_and_frees_its_slot() {
    let (mut g, store) = (gate(), FakeStore::default());
    let line = |ready: u32| {
        let update = revgate_proto::ReadinessUpdate {
            version: u64::from(ready) + 1,
            revisions: vec![revgate_proto::RevisionReadiness {
                namespace: "default".into(),
                revision: "hello".into(),
                ready_endpoints: ready,
                container_concurrency: 1,
                activation_timeout_ms: 2_000,
                response_start_timeout_ms: 1_000,
                idle_timeout_ms: 0,
            }],
            ..Default::default()
        };
        ReadinessTable::complete(ReadinessTable::from_update(update).unwrap())
    };
    g.on_view(line(0), T0, &store);
    g.on_request(1, target("hello"), T0, &store);
    // Held for 5 s: the timers start only when the request goes upstream.
    assert_eq!(g.on_view(line(1), T0 + 5_000 * MS, &store), vec![Effect::Resume(1)]);
    assert_eq!(g.on_tick(T0 + 5_999 * MS, &store), vec![]);
    let effects = g.on_tick(T0 + 6_000 * MS, &store);
    let [Effect::Reply(1, reply)] = effects.as_slice() else { panic!("{effects:?}") };
    assert_eq!((reply.status, reply.reason), (504, "response-start-timeout"));
    assert_eq!(g.on_log(1, Some(504), T0 + 6_001 * MS, &store), vec![]);
    assert_eq!(store.count(&key("hello")), 0, "the breaker slot is given back");

    // A response that started in time is not cut afterwards.
    g.on_request(2, target("hello"), T0 + 7_000 * MS, &store);
    g.on_response_headers(2, T0 + 7_500 * MS);
    assert_eq!(g.on_tick(T0 + 60_000 * MS, &store), vec![]);
    assert_eq!(g.timed(), 0);
}

#[test]
fn client_abort_while_held_is_cleaned_up() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 0, 0)]), T0, &store);
    g.on_request(1, target("hello"), T0, &store);
    g.on_request(2, target("hello"), T0, &store);
    assert_eq!(g.on_log(1, None, T0 + 5 * MS, &store), vec![]);
    assert_eq!(g.held_total(), 1);
    assert_eq!(g.on_view(view(2, &[("hello", 1, 0)]), T0 + 10 * MS, &store), vec![Effect::Resume(2)]);
    // A late log for an id already gone is harmless.
    assert_eq!(g.on_log(1, None, T0 + 11 * MS, &store), vec![]);
}

#[test]
fn breaker_admits_up_to_cc_times_ready_and_releases_as_requests_finish() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 2, 1)]), T0, &store);
    assert_eq!(g.on_request(1, target("hello"), T0, &store), Decision::Continue);
    assert_eq!(g.on_request(2, target("hello"), T0, &store), Decision::Continue);
    assert_eq!(g.on_request(3, target("hello"), T0, &store), pause(None), "warm: no activation");
    assert_eq!(g.on_request(4, target("hello"), T0, &store), pause(None));
    assert_eq!(store.count(&key("hello")), 2);
    // One finishes: its slot goes to the oldest waiting request at once.
    assert_eq!(g.on_log(1, Some(200), T0 + MS, &store), vec![Effect::Resume(3)]);
    assert_eq!(store.count(&key("hello")), 2);
    // Scaling up frees capacity.
    assert_eq!(g.on_view(view(2, &[("hello", 3, 1)]), T0 + 2 * MS, &store), vec![Effect::Resume(4)]);
    assert_eq!(store.count(&key("hello")), 3);
    for id in [2, 3, 4] {
        g.on_log(id, Some(200), T0 + 3 * MS, &store);
    }
    assert_eq!(store.count(&key("hello")), 0);
}

#[test]
fn metadata_concurrency_applies_when_the_view_has_none() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 1, 0)]), T0, &store);
    let limited = Target { metadata_container_concurrency: Some(1), ..target("hello") };
    assert_eq!(g.on_request(1, limited.clone(), T0, &store), Decision::Continue);
    assert_eq!(g.on_request(2, limited, T0, &store), pause(None));
}

#[test]
fn capacity_is_shared_across_vms() {
    let store = FakeStore::default();
    let (mut a, mut b) = (gate(), gate());
    for g in [&mut a, &mut b] {
        g.on_view(view(1, &[("hello", 1, 1)]), T0, &store);
    }
    assert_eq!(a.on_request(1, target("hello"), T0, &store), Decision::Continue);
    assert_eq!(b.on_request(1, target("hello"), T0, &store), pause(None));
    assert_eq!(b.on_tick(T0 + 100 * MS, &store), vec![], "still full");
    assert_eq!(a.on_log(1, Some(200), T0 + 150 * MS, &store), vec![], "nothing waits in VM a");
    assert_eq!(b.on_tick(T0 + 200 * MS, &store), vec![Effect::Resume(1)], "VM b notices on its tick");
    assert_eq!(store.count(&key("hello")), 1);
}

#[test]
fn breaker_failure_fails_open() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 1, 1)]), T0, &store);
    store.fail.set(true);
    assert_eq!(g.on_request(1, target("hello"), T0, &store), Decision::Continue);
    assert_eq!(g.on_request(2, target("hello"), T0, &store), Decision::Continue);
    assert_eq!(g.on_log(1, Some(200), T0, &store), vec![], "no slot was taken, none given back");
}

#[test]
fn a_new_vm_holds_requests_until_its_first_view_then_activates_cold_ones() {
    let (mut g, store) = (gate(), FakeStore::default());
    assert!(matches!(g.on_request(1, target("hello"), T0, &store), Decision::Pause { activate: None }));
    assert!(matches!(g.on_request(2, target("warm"), T0, &store), Decision::Pause { activate: None }));
    assert!(g.take_activations().is_empty());

    let effects = g.on_view(view(1, &[("hello", 0, 0), ("warm", 1, 0)]), T0 + MS, &store);
    assert_eq!(effects, vec![Effect::Resume(2)], "the ready revision's request goes");
    let activations = g.take_activations();
    assert_eq!(activations.len(), 1);
    assert_eq!((activations[0].key.revision.as_str(), activations[0].held), ("hello", 1));
    assert!(g.take_activations().is_empty(), "sent once");
}

#[test]
fn without_a_first_view_held_requests_pass_once_the_startup_hold_ends() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_request(1, target("hello"), T0, &store);
    let hold_ns = g.config().startup_hold_ms * MS;
    assert_eq!(g.on_tick(T0 + hold_ns - MS, &store), vec![]);
    assert_eq!(g.on_tick(T0 + hold_ns, &store), vec![Effect::Resume(1)]);
    assert_eq!(g.on_request(2, target("hello"), T0 + hold_ns, &store), Decision::Continue);
}

#[test]
fn a_stale_view_is_kept_so_held_requests_end_at_their_timeout_and_warm_ones_pass() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 0, 0), ("warm", 1, 0)]), T0, &store);
    g.on_request(1, target("hello"), T0, &store);
    let stale_ns = g.config().readiness_stale_after_ms() * MS;
    assert_eq!(g.on_tick(T0 + stale_ns + MS, &store), vec![], "nothing is released into a cold revision");
    assert_eq!(g.view_version(), Some(1));
    assert_eq!(g.on_request(2, target("warm"), T0 + stale_ns + MS, &store), Decision::Continue);
    assert!(matches!(g.on_request(3, target("hello"), T0 + stale_ns + MS, &store), Decision::Pause { .. }));
}

#[test]
fn a_revision_dropped_from_the_view_releases_its_held_requests() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 0, 0), ("other", 0, 0)]), T0, &store);
    g.on_request(1, target("hello"), T0, &store);
    g.on_request(2, target("other"), T0, &store);
    assert_eq!(g.on_view(view(2, &[("other", 0, 0)]), T0 + MS, &store), vec![Effect::Resume(1)]);
    assert_eq!(g.held_total(), 1);
}

#[test]
fn newcomers_queue_behind_waiting_requests() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 1, 1)]), T0, &store);
    g.on_request(1, target("hello"), T0, &store);
    g.on_request(2, target("hello"), T0, &store);
    // Another VM's request finished (simulated): capacity is free, but 2 waits first.
    store.set_count(&key("hello"), 0);
    assert_eq!(g.on_request(3, target("hello"), T0, &store), pause(None));
    assert_eq!(g.on_tick(T0 + MS, &store), vec![Effect::Resume(2)]);
}

const ISTIO: &str = "outbound|80||hello.default.svc.cluster.local";

fn probe_gate() -> Gate {
    let config = FilterConfig { release_gate: ReleaseGate::Probe, max_held_per_revision: 3, ..FilterConfig::default() };
    Gate::new(config, T0)
}

fn routed(rev: &str, cluster: &str) -> Target {
    Target { cluster: cluster.to_owned(), ..target(rev) }
}

fn probe_call(rev: &str, cluster: &str) -> ProbeCall {
    ProbeCall { cluster: cluster.to_owned(), key: key(rev) }
}

const NO_HEALTHY_UPSTREAM: (&str, &[u8]) = ("503", b"no healthy upstream");

fn answer(g: &mut Gate, token: u32, (status, body): (&str, &[u8]), now: u64, store: &FakeStore) -> Vec<Effect> {
    g.on_probe_answer(token, &probe::classify(Some(status), body), now, store).1
}

#[test]
fn probe_gate_releases_a_cold_start_only_once_the_cluster_answers() {
    let (mut g, store) = (probe_gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 0, 0)]), T0, &store);
    assert_eq!(g.on_request(1, routed("hello", ISTIO), T0, &store), pause(Some(("hello", 1))));
    assert_eq!(g.on_request(2, routed("hello", ISTIO), T0, &store), pause(None));
    assert_eq!(g.take_probes(T0), vec![], "cold: nothing to probe yet");

    // The control plane says ready; this Envoy may not have the endpoints yet.
    assert_eq!(g.on_view(view(2, &[("hello", 1, 0)]), T0 + MS, &store), vec![], "held until a probe answers");
    assert_eq!(g.take_probes(T0 + MS), vec![probe_call("hello", ISTIO)]);
    g.probe_dispatched(ISTIO, 100);
    assert!(g.is_probe(100));
    assert_eq!(g.take_probes(T0 + MS), vec![], "one probe in flight");
    assert_eq!(g.on_tick(T0 + 2 * MS, &store), vec![], "ticks release nothing unconfirmed");

    // Envoy answers for itself: not yet; retried after 10 ms.
    assert_eq!(answer(&mut g, 100, NO_HEALTHY_UPSTREAM, T0 + 3 * MS, &store), vec![]);
    assert!(g.probe_retry_pending());
    assert_eq!(g.take_probes(T0 + 12 * MS), vec![]);
    assert_eq!(g.take_probes(T0 + 13 * MS), vec![probe_call("hello", ISTIO)]);
    g.probe_dispatched(ISTIO, 101);

    // The app answers (anything): both go, oldest first.
    assert_eq!(
        answer(&mut g, 101, ("404", b"not found"), T0 + 14 * MS, &store),
        vec![Effect::Resume(1), Effect::Resume(2)]
    );
    assert!(!g.probe_retry_pending());
    assert_eq!(g.on_request(3, routed("hello", ISTIO), T0 + 15 * MS, &store), Decision::Continue);
    assert_eq!(g.take_probes(T0 + 15 * MS), vec![]);
}

#[test]
fn probes_a_request_makes_due_stay_due_for_the_root_to_send() {
    let (mut g, store) = (probe_gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 1, 0)]), T0, &store);
    assert_eq!(g.on_request(1, routed("hello", ISTIO), T0, &store), pause(None));
    assert!(g.probes_due(T0));
    assert!(g.probe_retry_pending(), "the root ticks at the retry step until it sends them");
    assert_eq!(g.take_probes(T0 + MS), vec![probe_call("hello", ISTIO)], "still due for the root");
    g.probe_dispatched(ISTIO, 9);
    assert!(!g.probes_due(T0 + 2 * MS) && !g.probe_retry_pending());
}

#[test]
fn probe_gate_probes_again_after_the_revision_went_cold() {
    let (mut g, store) = (probe_gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 1, 0)]), T0, &store);
    // A ready revision this VM never confirmed: its first request waits for a probe.
    assert_eq!(g.on_request(1, routed("hello", ISTIO), T0, &store), pause(None));
    assert_eq!(g.take_probes(T0), vec![probe_call("hello", ISTIO)]);
    g.probe_dispatched(ISTIO, 7);
    assert_eq!(answer(&mut g, 7, ("200", b"hi"), T0 + MS, &store), vec![Effect::Resume(1)]);

    g.on_view(view(2, &[("hello", 0, 0)]), T0 + 2 * MS, &store);
    assert_eq!(g.on_request(2, routed("hello", ISTIO), T0 + 3 * MS, &store), pause(Some(("hello", 1))));
    assert_eq!(g.on_view(view(3, &[("hello", 1, 0)]), T0 + 4 * MS, &store), vec![], "confirmation was forgotten");
    assert_eq!(g.take_probes(T0 + 4 * MS), vec![probe_call("hello", ISTIO)]);
    g.probe_dispatched(ISTIO, 8);
    // Cold again while the probe is out: its answer counts for nothing.
    g.on_view(view(4, &[("hello", 0, 0)]), T0 + 5 * MS, &store);
    let (confirmed, effects) = g.on_probe_answer(8, &probe::classify(Some("200"), b""), T0 + 6 * MS, &store);
    assert_eq!((confirmed, effects), (None, vec![]));
    assert_eq!(g.held_total(), 1);
}

#[test]
fn probe_gate_stops_probing_when_nobody_waits_and_still_expires_held_requests() {
    let (mut g, store) = (probe_gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 1, 0)]), T0, &store);
    g.on_request(1, routed("hello", ISTIO), T0, &store);
    assert_eq!(g.take_probes(T0).len(), 1);
    assert_eq!(g.probe_dispatch_failed(ISTIO, T0), 1, "e.g. the cluster is not in this Envoy");
    assert_eq!(g.take_probes(T0 + 10 * MS).len(), 1, "retried");
    g.probe_dispatch_failed(ISTIO, T0 + 10 * MS);
    g.on_log(1, None, T0 + 11 * MS, &store);
    assert_eq!(g.take_probes(T0 + 100 * MS), vec![], "the client left: no more probes");
    assert!(!g.probe_retry_pending());

    // Never confirmed: the request ends at its activation timeout.
    g.on_request(2, routed("hello", ISTIO), T0 + 200 * MS, &store);
    let timeout = g.config().default_activation_timeout_ms * MS;
    let effects = g.on_tick(T0 + 200 * MS + timeout, &store);
    assert!(
        matches!(effects.as_slice(), [Effect::Reply(2, reply)] if reply.reason == ACTIVATION_TIMEOUT),
        "{effects:?}"
    );
}

#[test]
fn probe_gate_confirms_each_cluster_of_a_revision_and_respects_the_breaker() {
    let (mut g, store) = (probe_gate(), FakeStore::default());
    let h2c = "outbound|81||hello.default.svc.cluster.local";
    g.on_view(view(1, &[("hello", 1, 1)]), T0, &store);
    g.on_request(1, routed("hello", ISTIO), T0, &store);
    g.on_request(2, routed("hello", h2c), T0, &store);
    assert_eq!(g.take_probes(T0), vec![probe_call("hello", ISTIO)], "the oldest request's cluster");
    g.probe_dispatched(ISTIO, 1);
    assert_eq!(answer(&mut g, 1, ("200", b""), T0 + MS, &store), vec![Effect::Resume(1)]);
    assert_eq!(store.count(&key("hello")), 1, "the released request holds the breaker's only slot");
    assert_eq!(g.take_probes(T0 + MS), vec![probe_call("hello", h2c)], "the next request's own cluster");
    g.probe_dispatched(h2c, 2);
    assert_eq!(answer(&mut g, 2, ("200", b""), T0 + 2 * MS, &store), vec![], "confirmed, but at capacity");
    assert_eq!(g.on_log(1, Some(200), T0 + 3 * MS, &store), vec![Effect::Resume(2)]);
}

#[test]
fn probe_gate_lets_unlisted_and_unprobeable_requests_go_on_the_control_planes_word() {
    let (mut g, store) = (probe_gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 1, 0)]), T0, &store);
    assert_eq!(
        g.on_request(1, routed("other", "outbound|80||other.default.svc.cluster.local"), T0, &store),
        Decision::Continue
    );
    assert_eq!(g.on_request(2, target("hello"), T0, &store), Decision::Continue, "no cluster to probe through");
    assert_eq!(g.take_probes(T0), vec![]);
}

#[test]
fn control_plane_gate_never_probes() {
    let (mut g, store) = (gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 0, 0)]), T0, &store);
    g.on_request(1, routed("hello", ISTIO), T0, &store);
    assert_eq!(g.on_view(view(2, &[("hello", 1, 0)]), T0 + MS, &store), vec![Effect::Resume(1)]);
    assert_eq!(g.take_probes(T0 + MS), vec![]);

    // Switching the gate off releases requests that waited only for a probe.
    let (mut g, store) = (probe_gate(), FakeStore::default());
    g.on_view(view(1, &[("hello", 1, 0)]), T0, &store);
    g.on_request(1, routed("hello", ISTIO), T0, &store);
    g.reconfigure(FilterConfig::default());
    assert_eq!(g.on_tick(T0 + MS, &store), vec![Effect::Resume(1)]);
}

#[test]
fn reports_are_due_every_interval() {
    let g = gate();
    assert!(!g.report_due(T0 + 999 * MS));
    assert!(g.report_due(T0 + 1000 * MS));
}
