use super::*;

const SECOND: u64 = 1_000;
const NOW: u64 = 10_000 * SECOND;

/// Knative's scaler tests: stable window 5 min, grace 60 s, progress
/// deadline 121 s.
fn knative_test_spec() -> ScalerSpec {
    ScalerSpec {
        stable_window: Duration::from_secs(300),
        scale_to_zero_grace_period: Duration::from_secs(60),
        progress_deadline: Duration::from_secs(121),
        ..ScalerSpec::default()
    }
}

fn rec(desired: i32) -> Recommendation {
    Recommendation { desired, excess_burst_capacity: -1, panicking: false }
}

/// A scaler in `phase` since `ago` before [`NOW`], holding requests since
/// `proxy_ago` before it.
fn scaler_in(spec: ScalerSpec, phase: Phase, ago: Duration, proxy_ago: Option<Duration>) -> Scaler {
    let ms = |d: Duration| NOW - d.as_millis() as u64;
    let reason = match phase {
        Phase::Activating => Some(Reason::Queued),
        Phase::Active => None,
        Phase::Inactive => Some(Reason::NoTraffic),
    };
    Scaler {
        spec,
        phase,
        reason,
        phase_since_ms: ms(ago),
        reached_initial_scale: false,
        proxy_since_ms: proxy_ago.map(ms),
    }
}

struct Case {
    label: &'static str,
    scaler: Scaler,
    desired: i32,
    want: i32,
    apply: Option<u32>,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Knative's `TestScaler` and `TestDisableScaleToZero` cases, but for the
/// ones about the activator probe (revgate has none). Knative patches the
/// workload only when the count changes; `apply` here is what reaches
/// that point.
fn knative_cases() -> Vec<Case> {
    let sw = secs(300);
    let grace = secs(60);
    let timeout = secs(121) + ACTIVATION_TIMEOUT_BUFFER;
    let spec = knative_test_spec;
    let with = |change: fn(&mut ScalerSpec)| {
        let mut s = spec();
        change(&mut s);
        s
    };
    let now = Some(Duration::ZERO);
    let case = |label, scaler, desired, want, apply| Case { label, scaler, desired, want, apply };
    vec![
        case(
            "waits to scale to zero (just before idle period)",
            scaler_in(spec(), Phase::Active, sw - secs(1), now),
            0,
            1,
            Some(1),
        ),
        case(
            "waits to scale to zero (just before idle period), custom PA window",
            scaler_in(with(|s| s.stable_window = secs(45)), Phase::Active, secs(44), now),
            0,
            1,
            Some(1),
        ),
        case(
            "custom PA window, check for standard window, no probe",
            scaler_in(with(|s| s.stable_window = secs(45)), Phase::Active, sw, now),
            0,
            0,
            None,
        ),
        case("scale to 1 waiting for idle expires", scaler_in(spec(), Phase::Active, sw - secs(1), now), 0, 1, Some(1)),
        case("waits to scale to zero after idle period", scaler_in(spec(), Phase::Active, sw, now), 0, 0, None),
        case(
            "waits to scale to zero after idle period; sks in proxy mode",
            scaler_in(spec(), Phase::Active, sw, Some(sw)),
            0,
            0,
            None,
        ),
        case(
            "can scale to zero after grace period, but 0 PA retention",
            scaler_in(spec(), Phase::Inactive, grace, now),
            0,
            0,
            Some(0),
        ),
        case(
            "can't scale to zero after grace period, but before last pod retention",
            scaler_in(with(|s| s.scale_to_zero_pod_retention_period = secs(120)), Phase::Inactive, grace, now),
            0,
            0,
            None,
        ),
        case(
            "scale to zero after grace period, and after last pod retention",
            scaler_in(with(|s| s.scale_to_zero_pod_retention_period = secs(60)), Phase::Inactive, grace, now),
            0,
            0,
            Some(0),
        ),
        case("scale to zero after grace period", scaler_in(spec(), Phase::Inactive, grace, now), 0, 0, Some(0)),
        case(
            "waits to scale to zero (just before grace period)",
            scaler_in(spec(), Phase::Inactive, grace - secs(1), now),
            0,
            0,
            None,
        ),
        case(
            "waits to scale to zero (just before grace period, sks short)",
            scaler_in(spec(), Phase::Inactive, grace - secs(1), Some(grace - secs(1))),
            0,
            0,
            None,
        ),
        case(
            "waits to scale to zero (just before grace period, sks in proxy long) and last pod timeout positive",
            scaler_in(
                with(|s| s.scale_to_zero_pod_retention_period = secs(42)),
                Phase::Inactive,
                grace - secs(1),
                Some(grace),
            ),
            0,
            0,
            Some(0),
        ),
        case(
            "waits to scale to zero (just before grace period, sks in proxy long)",
            scaler_in(spec(), Phase::Inactive, grace - secs(1), Some(grace)),
            0,
            0,
            Some(0),
        ),
        case(
            "waits to scale to zero while activating until after deadline exceeded",
            scaler_in(spec(), Phase::Activating, timeout / 2, now),
            0,
            -1,
            None,
        ),
        case(
            "scale to zero while activating after deadline exceeded",
            scaler_in(spec(), Phase::Activating, timeout + secs(1), now),
            0,
            0,
            Some(0),
        ),
        case(
            "scale to zero while activating after revision deadline exceeded",
            scaler_in(
                with(|s| s.progress_deadline = secs(5)),
                Phase::Activating,
                secs(5) + ACTIVATION_TIMEOUT_BUFFER + secs(1),
                now,
            ),
            0,
            0,
            Some(0),
        ),
        case(
            "scale down to minScale before grace period",
            scaler_in(with(|s| s.min_scale = 2), Phase::Inactive, grace - secs(1), now),
            0,
            2,
            Some(2),
        ),
        case(
            "scale down to minScale after grace period",
            scaler_in(with(|s| s.min_scale = 2), Phase::Inactive, grace, now),
            0,
            2,
            Some(2),
        ),
        case(
            "scale to zero ignore last pod retention if revision is unreachable",
            scaler_in(
                with(|s| {
                    s.scale_to_zero_pod_retention_period = secs(600);
                    s.reachable = false;
                }),
                Phase::Inactive,
                grace,
                now,
            ),
            0,
            0,
            Some(0),
        ),
        case(
            "can't scale to zero if revision is unreachable, but before deadline",
            scaler_in(
                with(|s| {
                    s.scale_to_zero_pod_retention_period = secs(600);
                    s.reachable = false;
                }),
                Phase::Inactive,
                grace - secs(1),
                now,
            ),
            0,
            0,
            None,
        ),
        case(
            "ignore minScale if unreachable",
            scaler_in(
                with(|s| {
                    s.min_scale = 2;
                    s.reachable = false;
                }),
                Phase::Inactive,
                grace,
                now,
            ),
            0,
            0,
            Some(0),
        ),
        case("scales up", scaler_in(spec(), Phase::Activating, Duration::ZERO, now), 10, 10, Some(10)),
        case(
            "scales up to maxScale",
            scaler_in(with(|s| s.max_scale = 8), Phase::Activating, Duration::ZERO, now),
            10,
            8,
            Some(8),
        ),
        case("scale up inactive revision", scaler_in(spec(), Phase::Inactive, grace / 2, now), 10, 10, Some(10)),
        case(
            "does not scale up from zero with no metrics",
            scaler_in(spec(), Phase::Inactive, Duration::ZERO, now),
            -1,
            -1,
            None,
        ),
        case(
            "scales up from zero to desired one",
            scaler_in(spec(), Phase::Activating, Duration::ZERO, now),
            1,
            1,
            Some(1),
        ),
        case(
            "scales up from zero to desired high scale",
            scaler_in(spec(), Phase::Activating, Duration::ZERO, now),
            10,
            10,
            Some(10),
        ),
        case("negative scale does not scale", scaler_in(spec(), Phase::Active, Duration::ZERO, now), -1, -1, None),
        case(
            "initial scale attained, but now time to scale down",
            Scaler {
                reached_initial_scale: true,
                ..scaler_in(with(|s| s.initial_scale = 2), Phase::Active, secs(120), now)
            },
            0,
            1,
            Some(1),
        ),
        case(
            "haven't scaled to initial scale, override desired scale with initial scale",
            scaler_in(with(|s| s.initial_scale = 2), Phase::Activating, Duration::ZERO, now),
            1,
            2,
            Some(2),
        ),
        case(
            "initial scale reached for the first time",
            scaler_in(with(|s| s.initial_scale = 5), Phase::Activating, Duration::ZERO, now),
            1,
            5,
            Some(5),
        ),
        case(
            "reaching initial scale zero",
            scaler_in(
                with(|s| {
                    s.initial_scale = 0;
                    s.allow_zero_initial_scale = true;
                }),
                Phase::Inactive,
                Duration::ZERO,
                now,
            ),
            0,
            0,
            None,
        ),
        case(
            "unreachable revision with initialScale > 1 can scale to 0",
            scaler_in(
                with(|s| {
                    s.initial_scale = 2;
                    s.reachable = false;
                }),
                Phase::Active,
                secs(120),
                now,
            ),
            0,
            1,
            Some(1),
        ),
        case(
            "EnableScaleToZero == false and minScale == 0",
            scaler_in(with(|s| s.enable_scale_to_zero = false), Phase::Active, Duration::ZERO, now),
            0,
            1,
            Some(1),
        ),
        case(
            "EnableScaleToZero == false and minScale == 2",
            scaler_in(
                with(|s| {
                    s.enable_scale_to_zero = false;
                    s.min_scale = 2;
                }),
                Phase::Active,
                Duration::ZERO,
                now,
            ),
            0,
            2,
            Some(2),
        ),
        case(
            "EnableScaleToZero == false and desire pod is -1(initial value)",
            scaler_in(with(|s| s.enable_scale_to_zero = false), Phase::Active, Duration::ZERO, now),
            -1,
            -1,
            None,
        ),
    ]
}

#[test]
fn reproduces_knative_scaler_tests() {
    for case in knative_cases() {
        let mut scaler = case.scaler;
        let (want, apply) = scaler.replicas(NOW, case.desired, false);
        assert_eq!((want, apply), (case.want, case.apply), "{}", case.label);
        // The same through a full step.
        let got = scaler.step(NOW, &rec(case.desired), 0, false);
        assert_eq!((got.want, got.apply), (case.want, case.apply), "{} (step)", case.label);
    }
}

/// One reconcile and what it should yield.
struct Expect {
    at_s: u64,
    desired: i32,
    ebc: i32,
    ready: u32,
    held: bool,
    apply: Option<u32>,
    want: i32,
    mode: Mode,
    phase: Phase,
}

#[allow(clippy::too_many_arguments)]
fn at(
    at_s: u64,
    desired: i32,
    ebc: i32,
    ready: u32,
    held: bool,
    apply: Option<u32>,
    want: i32,
    mode: Mode,
    phase: Phase,
) -> Expect {
    Expect { at_s, desired, ebc, ready, held, apply, want, mode, phase }
}

fn run(label: &str, spec: ScalerSpec, steps: &[Expect]) {
    let mut scaler = Scaler::new(spec, 0);
    for e in steps {
        let r = Recommendation { desired: e.desired, excess_burst_capacity: e.ebc, panicking: false };
        let got = scaler.step(e.at_s * SECOND, &r, e.ready, e.held);
        let what = format!("{label} at {} s", e.at_s);
        assert_eq!(got.apply, e.apply, "{what}: apply");
        assert_eq!(got.want, e.want, "{what}: want");
        assert_eq!(got.mode, e.mode, "{what}: mode");
        assert_eq!(got.phase, e.phase, "{what}: phase");
    }
}

use Mode::{Proxy, Serve};
use Phase::{Activating, Active, Inactive};

#[test]
fn lifecycle_with_default_burst_capacity() {
    // TBC 211 with one 100-wide pod: the gateway holds requests throughout,
    // so once inactive, the grace period is long over and the pod goes at once.
    run(
        "default TBC",
        ScalerSpec::default(),
        &[
            at(0, -1, -111, 0, false, None, -1, Proxy, Activating),
            at(2, 1, -211, 0, false, Some(1), 1, Proxy, Activating),
            at(4, 1, -111, 1, false, Some(1), 1, Proxy, Active),
            // No load any more, but active for only 59 s: keep one pod.
            at(63, 0, -111, 1, false, Some(1), 1, Proxy, Active),
            // Active for 62 s: deactivate without applying anything yet.
            at(66, 0, -111, 1, false, None, 0, Proxy, Inactive),
            at(68, 0, -111, 1, false, Some(0), 0, Proxy, Inactive),
            at(70, 0, -211, 0, false, Some(0), 0, Proxy, Inactive),
        ],
    );
}

#[test]
fn lifecycle_with_zero_burst_capacity_waits_for_the_grace_period() {
    // TBC 0: pods serve directly, so holding starts only when the revision
    // turns inactive, and the grace period runs from there.
    let spec = ScalerSpec::default();
    run(
        "TBC 0",
        spec,
        &[
            at(0, -1, 0, 0, false, None, -1, Proxy, Activating),
            at(2, 1, 0, 1, false, Some(1), 1, Serve, Active),
            at(62, 0, 0, 1, false, None, 0, Proxy, Inactive),
            at(64, 0, 0, 1, false, None, 0, Proxy, Inactive),
            at(91, 0, 0, 1, false, None, 0, Proxy, Inactive),
            at(92, 0, 0, 1, false, Some(0), 0, Proxy, Inactive),
            // A request arrives before the decider ticks: wake at once.
            at(120, 0, 0, 0, true, Some(1), 1, Serve, Activating),
            at(122, 1, 0, 0, true, Some(1), 1, Serve, Activating),
            at(124, 1, 0, 1, false, Some(1), 1, Serve, Active),
        ],
    );
}

#[test]
fn pod_retention_keeps_the_last_pod_while_reachable() {
    let spec = ScalerSpec { scale_to_zero_pod_retention_period: Duration::from_secs(90), ..ScalerSpec::default() };
    let steps = |unreachable_apply: Option<u32>| {
        vec![
            at(0, -1, -111, 0, false, None, -1, Proxy, Activating),
            at(2, 1, -111, 1, false, Some(1), 1, Proxy, Active),
            at(70, 0, -111, 1, false, None, 0, Proxy, Inactive),
            at(72, 0, -111, 1, false, unreachable_apply, 0, Proxy, Inactive),
            at(159, 0, -111, 1, false, unreachable_apply, 0, Proxy, Inactive),
            at(160, 0, -111, 1, false, Some(0), 0, Proxy, Inactive),
        ]
    };
    run("retention 90 s", spec.clone(), &steps(None));
    // Unreachable: no retention, and the gateway has held requests since t=0.
    run("retention 90 s, unreachable", ScalerSpec { reachable: false, ..spec }, &steps(Some(0)));
}

#[test]
fn initial_scale_is_a_floor_until_first_reached() {
    let spec = ScalerSpec { initial_scale: 3, ..ScalerSpec::default() };
    run(
        "initial scale 3",
        spec,
        &[
            at(0, -1, -111, 0, false, Some(3), 3, Proxy, Activating),
            at(2, 1, -111, 2, false, Some(3), 3, Proxy, Activating),
            at(4, 1, 89, 3, false, Some(3), 3, Serve, Active),
            // Reached once: the load decides from now on.
            at(6, 1, 89, 3, false, Some(1), 1, Serve, Active),
        ],
    );
}

#[test]
fn zero_initial_scale_starts_inactive() {
    let spec = ScalerSpec { initial_scale: 0, allow_zero_initial_scale: true, ..ScalerSpec::default() };
    run(
        "initial scale 0",
        spec.clone(),
        &[
            at(0, -1, -211, 0, false, None, -1, Proxy, Inactive),
            at(2, -1, -211, 0, false, None, -1, Proxy, Inactive),
            // First request: one pod.
            at(4, -1, -211, 0, true, Some(1), 1, Proxy, Activating),
            at(6, 1, -111, 1, false, Some(1), 1, Proxy, Active),
        ],
    );
    // Without allow-zero-initial-scale, 0 means Knative's default of 1.
    let not_allowed = ScalerSpec { allow_zero_initial_scale: false, ..spec };
    assert_eq!(not_allowed.effective_initial_scale(), 1);
    run("initial scale 0 not allowed", not_allowed, &[at(0, -1, -111, 0, false, None, -1, Proxy, Activating)]);
}

#[test]
fn activation_times_out() {
    let spec = ScalerSpec { progress_deadline: Duration::from_secs(10), ..ScalerSpec::default() };
    run(
        "progress deadline 10 s",
        spec,
        &[
            at(0, 1, -111, 0, false, Some(1), 1, Proxy, Activating),
            at(40, 0, -111, 0, false, None, -1, Proxy, Activating),
            at(41, 0, -111, 0, false, Some(0), 0, Proxy, Inactive),
        ],
    );
}

#[test]
fn held_requests_wake_at_activation_scale_within_bounds() {
    let spec = ScalerSpec { activation_scale: 3, max_scale: 2, ..ScalerSpec::default() };
    let mut scaler = Scaler::new(spec, 0);
    let got = scaler.step(0, &rec(-1), 0, true);
    assert_eq!((got.apply, got.want), (Some(2), 2));
    let mut scaler = Scaler::new(ScalerSpec { activation_scale: 3, ..ScalerSpec::default() }, 0);
    assert_eq!(scaler.step(0, &rec(0), 0, true).apply, Some(3));
    // Held requests never let the last pod go.
    assert_eq!(scaler.step(500_000, &rec(0), 3, true).apply, Some(3));
}

#[test]
fn conditions_read_as_knative_writes_them() {
    assert_eq!(Activating.condition_status(), "Unknown");
    assert_eq!(Active.condition_status(), "True");
    assert_eq!(Inactive.condition_status(), "False");
    assert_eq!(Reason::NoTraffic.to_string(), "NoTraffic");
    assert_eq!(Reason::TimedOut.message(), "The target could not be activated.");
}

#[test]
fn phase_follows_knative_active_condition_table() {
    // (want, ready, phase before, phase after) with min_ready = 1.
    let rows = [
        (0, 0, Activating, Inactive, Some(Reason::TimedOut)),
        (0, 5, Active, Inactive, Some(Reason::NoTraffic)),
        (0, 0, Inactive, Inactive, Some(Reason::NoTraffic)),
        (3, 0, Inactive, Activating, Some(Reason::Queued)),
        (3, 0, Active, Activating, Some(Reason::Queued)),
        (-1, 0, Inactive, Inactive, Some(Reason::NoTraffic)),
        (-1, 0, Active, Activating, Some(Reason::Queued)),
        (-1, 0, Activating, Activating, Some(Reason::Queued)),
        (3, 3, Inactive, Active, None),
        (3, 3, Activating, Active, None),
        (-1, 3, Inactive, Inactive, Some(Reason::NoTraffic)),
        (-1, 3, Activating, Active, None),
        (-1, 3, Active, Active, None),
    ];
    for (want, ready, before, after, reason) in rows {
        let mut scaler = Scaler {
            reached_initial_scale: true,
            ..scaler_in(ScalerSpec::default(), before, Duration::from_secs(5), None)
        };
        scaler.update_phase(NOW, want, ready);
        let row = format!("want={want} ready={ready} {before:?}");
        assert_eq!((scaler.phase, scaler.reason), (after, reason), "{row}");
        let moved = (after, reason) != (before, scaler_in(ScalerSpec::default(), before, Duration::ZERO, None).reason);
        let since = if moved { NOW } else { NOW - 5 * SECOND };
        assert_eq!(scaler.phase_since_ms, since, "{row}: phase start");
    }
}
