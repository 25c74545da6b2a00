use super::*;

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
/// Knative's tests resolve the total from the target at 75% utilization.
const TARGET_UTILIZATION: f64 = 0.75;

/// The spec of Knative's `newTestAutoscaler(target, tbc)`.
fn test_spec(target: f64, tbc: f64) -> DeciderSpec {
    DeciderSpec {
        metric: Metric::Concurrency,
        target_value: target,
        total_value: target / TARGET_UTILIZATION,
        target_burst_capacity: tbc,
        panic_threshold: 2.0,
        max_scale_up_rate: 10.0,
        max_scale_down_rate: 10.0,
        stable_window: Duration::from_secs(60),
        scale_down_delay: Duration::ZERO,
        activation_scale: 0,
        reachable: true,
    }
}

/// The spec of Knative's scale-down-delay tests: no panic, no burst capacity.
fn delay_spec(delay: Duration) -> DeciderSpec {
    DeciderSpec {
        metric: Metric::Concurrency,
        target_value: 10.0,
        total_value: 0.0,
        target_burst_capacity: 0.0,
        panic_threshold: 100.0,
        max_scale_up_rate: 10.0,
        max_scale_down_rate: 10.0,
        stable_window: Duration::ZERO,
        scale_down_delay: delay,
        activation_scale: 0,
        reachable: true,
    }
}

/// Knative's `expectedEBC(target, tbc, panic, pods)`.
fn ebc(target: f64, tbc: f64, panic: f64, pods: f64) -> i32 {
    (target / TARGET_UTILIZATION * pods - tbc - panic).floor() as i32
}

#[derive(Debug)]
struct Tick {
    at_ms: u64,
    ready: u32,
    stable: f64,
    panic: f64,
    new_spec: Option<DeciderSpec>,
    desired: i32,
    ebc: i32,
    panicking: Option<bool>,
}

fn tick(at_ms: u64, ready: u32, stable: f64, panic: f64, desired: i32, ebc: i32) -> Tick {
    Tick { at_ms, ready, stable, panic, new_spec: None, desired, ebc, panicking: None }
}

impl Tick {
    fn panicking(self, panicking: bool) -> Self {
        Self { panicking: Some(panicking), ..self }
    }

    fn after_update(self, spec: DeciderSpec) -> Self {
        Self { new_spec: Some(spec), ..self }
    }
}

struct Case {
    label: &'static str,
    spec: DeciderSpec,
    initial_ready: u32,
    ticks: Vec<Tick>,
}

fn case(label: &'static str, spec: DeciderSpec, initial_ready: u32, ticks: Vec<Tick>) -> Case {
    Case { label, spec, initial_ready, ticks }
}

fn with(spec: DeciderSpec, change: impl FnOnce(&mut DeciderSpec)) -> DeciderSpec {
    let mut spec = spec;
    change(&mut spec);
    spec
}

/// Every case of Knative's `autoscaler_test.go` that this API can express,
/// labelled with the Knative test it reproduces. Every decider is created
/// at time 0. Knative's tests that set the panic state by hand (panicking
/// since 5 s ago, at 5 pods) start here from a decider created with 5
/// ready pods and ticked 5 s later, which is the same state.
fn knative_cases() -> Vec<Case> {
    let t0 = 1_000 * SECOND;
    vec![
        case(
            "TestAutoscalerScaleDownDelay/simple+gradual",
            delay_spec(Duration::from_secs(300)),
            0,
            vec![
                tick(2 * SECOND, 0, 40.0, 40.0, 4, 0),
                // Less than the delay at reduced load: hold.
                tick(5 * MINUTE, 0, 0.0, 0.0, 4, 0),
                // The 4 has aged out.
                tick(5 * MINUTE + 2 * SECOND, 0, 0.0, 0.0, 0, 0),
                // gradual
                tick(9 * MINUTE, 0, 40.0, 40.0, 4, 0),
                tick(10 * MINUTE, 0, 30.0, 30.0, 4, 0),
                tick(11 * MINUTE, 0, 0.0, 0.0, 4, 0),
                tick(14 * MINUTE, 0, 0.0, 0.0, 3, 0),
                tick(15 * MINUTE, 0, 0.0, 0.0, 0, 0),
            ],
        ),
        case(
            "TestAutoscalerScaleDownDelayNotReachable",
            delay_spec(Duration::from_secs(300)),
            0,
            vec![
                tick(2 * SECOND, 0, 40.0, 40.0, 4, 0),
                tick(MINUTE, 0, 0.0, 0.0, 4, 0),
                // Unreachable: the delay no longer applies.
                tick(2 * SECOND, 0, 0.0, 0.0, 0, 0)
                    .after_update(with(delay_spec(Duration::from_secs(300)), |s| s.reachable = false)),
            ],
        ),
        case(
            "TestAutoscalerScaleDownDelayZero",
            delay_spec(Duration::ZERO),
            0,
            vec![tick(0, 0, 40.0, 40.0, 4, 0), tick(500, 0, 20.0, 20.0, 2, 0)],
        ),
        case(
            "TestAutoscalerMetrics",
            test_spec(10.0, 100.0),
            1,
            vec![tick(t0, 1, 50.0, 50.0, 5, ebc(10.0, 100.0, 50.0, 1.0)).panicking(true)],
        ),
        case(
            "TestAutoscalerMetricsWithRPS",
            with(test_spec(10.0, 100.0), |s| s.metric = Metric::Rps),
            1,
            vec![tick(t0 + 61 * SECOND, 1, 100.0, 99.0, 10, ebc(10.0, 100.0, 99.0, 1.0)).panicking(true)],
        ),
        case(
            "TestAutoscalerStableModeIncreaseWithConcurrencyDefault",
            test_spec(10.0, 101.0),
            1,
            vec![
                tick(t0, 1, 50.0, 10.0, 5, ebc(10.0, 101.0, 10.0, 1.0)).panicking(false),
                tick(t0, 1, 100.0, 10.0, 10, ebc(10.0, 101.0, 10.0, 1.0)).panicking(false),
            ],
        ),
        case(
            "TestAutoscalerStableModeIncreaseWithRPS",
            with(test_spec(10.0, 101.0), |s| s.metric = Metric::Rps),
            1,
            vec![
                tick(t0, 1, 50.0, 50.0, 5, ebc(10.0, 101.0, 50.0, 1.0)),
                tick(t0, 1, 100.0, 99.0, 10, ebc(10.0, 101.0, 99.0, 1.0)),
            ],
        ),
        case(
            "TestAutoscalerUnpanicAfterSlowIncrease",
            test_spec(1.0, 98.0),
            1,
            vec![
                tick(t0, 10, 11.0, 25.0, 25, ebc(1.0, 98.0, 25.0, 10.0)).panicking(true),
                // Half a window later, still panicking (from t0): no scale-down below the panic floor.
                tick(t0 + 30 * SECOND, 40, 30.0, 41.0, 41, ebc(1.0, 98.0, 41.0, 40.0)).panicking(true),
                // A window and a tick after the last over-threshold tick: calm again.
                tick(t0 + 62 * SECOND, 55, 50.0, 56.0, 50, ebc(1.0, 98.0, 56.0, 55.0)).panicking(false),
            ],
        ),
        case(
            "TestAutoscalerExtendPanicWindow",
            test_spec(1.0, 98.0),
            1,
            vec![
                tick(t0, 10, 11.0, 25.0, 25, ebc(1.0, 98.0, 25.0, 10.0)).panicking(true),
                tick(t0 + 30 * SECOND, 40, 30.0, 80.0, 80, ebc(1.0, 98.0, 80.0, 40.0)).panicking(true),
                // Extended at t0+30s, so still panicking at t0+62s despite the calm.
                tick(t0 + 62 * SECOND, 80, 30.0, 30.0, 80, ebc(1.0, 98.0, 30.0, 80.0)).panicking(true),
                tick(t0 + 92 * SECOND, 80, 30.0, 30.0, 30, ebc(1.0, 98.0, 30.0, 80.0)).panicking(false),
            ],
        ),
        case(
            "TestAutoscalerStableModeDecrease",
            test_spec(10.0, 98.0),
            1,
            vec![
                tick(t0, 8, 100.0, 100.0, 10, ebc(10.0, 98.0, 100.0, 8.0)),
                tick(t0, 8, 50.0, 50.0, 5, ebc(10.0, 98.0, 50.0, 8.0)),
            ],
        ),
        case(
            "TestAutoscalerStableModeNoTrafficScaleToZero",
            test_spec(10.0, 75.0),
            1,
            vec![
                tick(t0, 1, 1.0, 0.0, 1, ebc(10.0, 75.0, 0.0, 1.0)),
                tick(t0, 1, 0.0, 0.0, 0, ebc(10.0, 75.0, 0.0, 1.0)),
            ],
        ),
        case(
            "TestAutoscalerActivationScale",
            with(test_spec(10.0, 75.0), |s| s.activation_scale = 2),
            1,
            vec![
                tick(t0, 1, 0.0, 0.0, 0, ebc(10.0, 75.0, 0.0, 1.0)),
                tick(t0, 1, 1.0, 0.0, 2, ebc(10.0, 75.0, 0.0, 1.0)),
            ],
        ),
        case(
            "TestAutoscalerPanicModeExponentialTrackAndStabilize",
            test_spec(1.0, 101.0),
            1,
            vec![
                tick(t0, 1, 6.0, 6.0, 6, ebc(1.0, 101.0, 6.0, 1.0)).panicking(true),
                tick(t0 + 10, 6, 36.0, 36.0, 36, ebc(1.0, 101.0, 36.0, 6.0)).panicking(true),
                tick(t0 + 10 + SECOND, 36, 216.0, 216.0, 216, ebc(1.0, 101.0, 216.0, 36.0)).panicking(true),
                tick(t0 + 10 + SECOND, 216, 1296.0, 1296.0, 1296, ebc(1.0, 101.0, 1296.0, 216.0)),
                tick(t0 + 10 + 2 * SECOND, 1296, 1296.0, 1296.0, 1296, ebc(1.0, 101.0, 1296.0, 1296.0)),
            ],
        ),
        case(
            "TestAutoscalerScale/AutoscalerNoDataAtZeroNoAutoscale",
            test_spec(10.0, 100.0),
            1,
            vec![tick(t0, 1, 0.0, 0.0, 0, ebc(10.0, 100.0, 0.0, 1.0))],
        ),
        case(
            "TestAutoscalerScale/AutoscalerStableModeUnlimitedTBC",
            test_spec(181.0, -1.0),
            1,
            vec![tick(t0, 1, 21.0, 26.0, 1, -1)],
        ),
        case("TestAutoscalerScale/Autoscaler0TBC", test_spec(10.0, 0.0), 1, vec![tick(t0, 1, 50.0, 49.0, 5, 0)]),
        case(
            "TestAutoscalerScale/AutoscalerStableModeNoChange",
            test_spec(10.0, 100.0),
            1,
            vec![tick(t0, 1, 50.0, 50.0, 5, ebc(10.0, 100.0, 50.0, 1.0))],
        ),
        case(
            "TestAutoscalerScale/AutoscalerPanicStableLargerThanPanic",
            test_spec(1.0, 100.0),
            5,
            // Stable asks for more than panic: provision for the stable window.
            vec![tick(5 * SECOND, 5, 50.0, 30.0, 50, ebc(1.0, 100.0, 30.0, 5.0)).panicking(true)],
        ),
        case(
            "TestAutoscalerScale/AutoscalerPanicStableLessThanPanic",
            test_spec(1.0, 100.0),
            5,
            vec![tick(5 * SECOND, 5, 20.0, 30.0, 30, ebc(1.0, 100.0, 30.0, 5.0)).panicking(true)],
        ),
        case(
            "TestAutoscalerScale/AutoscalerStableModeNoChangeAlreadyScaled",
            test_spec(10.0, 100.0),
            1,
            vec![tick(t0, 5, 50.0, 50.0, 5, ebc(10.0, 100.0, 50.0, 5.0))],
        ),
        case(
            "TestAutoscalerScale/AutoscalerStableModeIncreaseWithSmallScaleUpRate",
            with(test_spec(1.0, 1982.0), |s| s.max_scale_up_rate = 1.1),
            1,
            vec![tick(t0, 2, 3.0, 3.1, 3, ebc(1.0, 1982.0, 3.1, 2.0))],
        ),
        case(
            "TestAutoscalerScale/AutoscalerStableModeDecreaseWithSmallScaleDownRate",
            with(test_spec(10.0, 1982.0), |s| s.max_scale_down_rate = 1.1),
            1,
            vec![tick(t0, 100, 1.0, 1.0, 90, ebc(10.0, 1982.0, 1.0, 100.0))],
        ),
        case(
            "TestAutoscalerScale/AutoscalerStableModeDecreaseNonReachable",
            with(test_spec(10.0, 1982.0), |s| {
                s.max_scale_down_rate = 1.1;
                s.reachable = false;
            }),
            1,
            vec![tick(t0, 100, 1.0, 1.0, 1, ebc(10.0, 1982.0, 1.0, 100.0))],
        ),
        case(
            "TestAutoscalerScale/AutoscalerPanicModeDoublePodCount",
            test_spec(10.0, 84.0),
            1,
            vec![tick(t0, 1, 50.0, 100.0, 10, ebc(10.0, 84.0, 100.0, 1.0)).panicking(true)],
        ),
        case(
            "TestAutoscalerPanicThenUnPanicScaleDown",
            test_spec(10.0, 93.0),
            1,
            vec![
                tick(t0, 1, 100.0, 100.0, 10, ebc(10.0, 93.0, 100.0, 1.0)),
                tick(t0 + 10, 10, 100.0, 1000.0, 100, ebc(10.0, 93.0, 1000.0, 10.0)).panicking(true),
                // Load gone, but still in panic: hold.
                tick(t0 + 10 + 30 * SECOND, 10, 1.0, 1.0, 100, ebc(10.0, 93.0, 1.0, 10.0)).panicking(true),
                // Past the stable window: scale down (by the rate limit, to 1).
                tick(t0 + 10 + 61 * SECOND, 10, 1.0, 1.0, 1, ebc(10.0, 93.0, 1.0, 10.0)).panicking(false),
            ],
        ),
        case(
            "TestAutoscalerRateLimitScaleUp",
            test_spec(10.0, 61.0),
            1,
            vec![
                // Needs 100 pods but may only grow tenfold.
                tick(t0, 1, 1000.0, 1001.0, 10, ebc(10.0, 61.0, 1001.0, 1.0)),
                tick(t0, 10, 1000.0, 1001.0, 100, ebc(10.0, 61.0, 1001.0, 10.0)),
            ],
        ),
        case(
            "TestAutoscalerRateLimitScaleDown",
            test_spec(10.0, 61.0),
            1,
            vec![
                tick(t0, 100, 1.0, 1.0, 10, ebc(10.0, 61.0, 1.0, 100.0)),
                tick(t0, 10, 1.0, 1.0, 1, ebc(10.0, 61.0, 1.0, 10.0)),
            ],
        ),
        case(
            "TestAutoscalerUseOnePodAsMinimumIfEndpointsNotFound",
            test_spec(10.0, 81.0),
            1,
            vec![tick(t0, 0, 1000.0, 888.0, 10, ebc(10.0, 81.0, 888.0, 0.0))],
        ),
        case(
            "TestAutoscalerUpdateTarget",
            test_spec(10.0, 77.0),
            1,
            vec![
                tick(t0, 1, 100.0, 101.0, 10, ebc(10.0, 77.0, 101.0, 1.0)),
                tick(t0, 10, 100.0, 101.0, 100, ebc(1.0, 71.0, 101.0, 10.0)).after_update(DeciderSpec {
                    target_value: 1.0,
                    total_value: 1.0 / TARGET_UTILIZATION,
                    target_burst_capacity: 71.0,
                    panic_threshold: 2.0,
                    max_scale_down_rate: 10.0,
                    max_scale_up_rate: 10.0,
                    stable_window: Duration::from_secs(60),
                    reachable: false,
                    ..test_spec(1.0, 71.0)
                }),
            ],
        ),
        case(
            "TestStartInPanicMode/ready=2",
            DeciderSpec {
                target_value: 100.0,
                total_value: 120.0,
                target_burst_capacity: 11.0,
                panic_threshold: 220.0,
                ..test_spec(100.0, 11.0)
            },
            2,
            // Created in panic with a floor of 2 pods: a quiet first tick keeps them.
            vec![tick(2 * SECOND, 2, 10.0, 10.0, 2, (2.0f64 * 120.0 - 11.0 - 10.0).floor() as i32).panicking(true)],
        ),
    ]
}

#[test]
fn reproduces_knative_autoscaler_tests() {
    for case in knative_cases() {
        let mut decider = Decider::new(case.spec, case.initial_ready, 0);
        for (i, t) in case.ticks.into_iter().enumerate() {
            if let Some(spec) = t.new_spec {
                decider.set_spec(spec);
            }
            let got = decider.scale(t.at_ms, t.ready, t.stable, t.panic);
            let at = format!("{} tick {i} at {} ms", case.label, t.at_ms);
            assert_eq!(got.desired, t.desired, "{at}: desired");
            assert_eq!(got.excess_burst_capacity, t.ebc, "{at}: excess burst capacity");
            if let Some(panicking) = t.panicking {
                assert_eq!(got.panicking, panicking, "{at}: panicking");
            }
        }
    }
}

#[test]
fn starts_in_panic_only_above_one_ready_pod() {
    // Knative's TestStartInPanicMode and TestNewFail (a failed count is 0).
    let spec = test_spec(100.0, 11.0);
    for ready in 0..3u32 {
        let decider = Decider::new(spec.clone(), ready, 5_000);
        assert_eq!(decider.is_panicking(), ready > 1, "ready={ready}");
        assert_eq!(decider.panic_since_ms, (ready > 1).then_some(5_000), "ready={ready}");
        assert_eq!(decider.max_panic_pods, ready as i32, "ready={ready}");
    }
}

#[test]
fn panic_time_moves_only_while_over_the_threshold() {
    // Knative's Unpanic and Extend tests check panicTime directly.
    let mut decider = Decider::new(test_spec(1.0, 98.0), 1, 0);
    decider.scale(10_000, 10, 11.0, 25.0);
    assert_eq!(decider.panic_since_ms, Some(10_000));
    decider.scale(40_000, 40, 30.0, 41.0);
    assert_eq!(decider.panic_since_ms, Some(10_000), "below the threshold: not extended");
    decider.scale(50_000, 40, 30.0, 80.0);
    assert_eq!(decider.panic_since_ms, Some(50_000), "at the threshold: extended");
}

#[test]
fn panic_ends_strictly_after_a_stable_window() {
    let mut decider = Decider::new(test_spec(1.0, 98.0), 1, 0);
    assert!(decider.scale(0, 10, 10.0, 20.0).panicking);
    assert!(decider.scale(60_000, 10, 1.0, 1.0).panicking, "exactly a window later");
    let calm = decider.scale(60_001, 10, 1.0, 1.0);
    assert!(!calm.panicking);
    assert_eq!(calm.desired, 1);
}

#[test]
fn activation_scale_applies_only_to_positive_load() {
    let spec = with(test_spec(10.0, 0.0), |s| s.activation_scale = 3);
    let mut decider = Decider::new(spec, 0, 0);
    assert_eq!(decider.scale(0, 0, 0.0, 0.0).desired, 0);
    assert_eq!(decider.scale(2_000, 0, 0.5, 0.5).desired, 3);
    // Above the activation scale the load decides.
    assert_eq!(decider.scale(4_000, 3, 45.0, 45.0).desired, 5);
}

#[test]
fn a_new_scale_down_delay_starts_a_new_window() {
    let mut decider = Decider::new(delay_spec(Duration::from_secs(300)), 0, 0);
    assert_eq!(decider.scale(2_000, 0, 40.0, 40.0).desired, 4);
    assert_eq!(decider.scale(4_000, 0, 0.0, 0.0).desired, 4);
    decider.set_spec(delay_spec(Duration::from_secs(60)));
    assert_eq!(decider.scale(6_000, 0, 0.0, 0.0).desired, 0, "the old maxima are gone");
    assert_eq!(decider.scale(8_000, 0, 20.0, 20.0).desired, 2);
    // The same delay keeps the window.
    decider.set_spec(with(delay_spec(Duration::from_secs(60)), |s| s.target_value = 20.0));
    assert_eq!(decider.scale(10_000, 0, 0.0, 0.0).desired, 2);
    decider.set_spec(with(delay_spec(Duration::ZERO), |s| s.target_value = 20.0));
    assert_eq!(decider.scale(12_000, 0, 0.0, 0.0).desired, 0, "no delay");
}

#[test]
fn initial_recommendation_carries_the_initial_burst_capacity() {
    let spec = DeciderSpec::default();
    assert_eq!(
        Recommendation::before_first_tick(&spec, 1),
        Recommendation { desired: -1, excess_burst_capacity: -111, panicking: false }
    );
    assert_eq!(Recommendation::before_first_tick(&spec, 3).excess_burst_capacity, 89);
    let zero = DeciderSpec { target_burst_capacity: 0.0, ..DeciderSpec::default() };
    assert_eq!(Recommendation::before_first_tick(&zero, 1).excess_burst_capacity, 0);
    let always = DeciderSpec { target_burst_capacity: -1.0, ..DeciderSpec::default() };
    assert_eq!(Recommendation::before_first_tick(&always, 1).excess_burst_capacity, -1);
}
