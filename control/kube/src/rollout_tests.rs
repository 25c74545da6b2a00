//! Cluster mode rolls out as standalone does: pass by pass, the scripted
//! API server sees the VirtualService weights step from 1%, and return to
//! the previous revision when the candidate breaches its gate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use revgate_model::plan::ObjectKey;
use revgate_model::rollout::StepMeasurement;
use serde_json::{Value, json};

use crate::kinds::Kind;
use crate::reconcile::Context;
use crate::rollouts::{CandidateFigures, ROLLOUT_STATE_ANNOTATION};
use crate::snapshot::Snapshot;
use crate::testing::*;

fn hello(image: &str) -> Fixture {
    ksvc("hello")
        .image(image)
        .set("/metadata/annotations/serving.knative.dev~1rollout-duration", json!("20s"))
        .set("/metadata/annotations/revgate.dev~1rollout-max-error-rate", json!("0.05"))
}

/// The weights of the Route's main host, by revision.
fn weights(snapshot: &Snapshot) -> Vec<(String, i64)> {
    let vs = snapshot
        .live(Kind::VirtualService)
        .find(|vs| vs.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(ROLLOUT_STATE_ANNOTATION)))
        .map(|vs| serde_json::to_value(vs).expect("JSON"))
        .unwrap_or_else(|| panic!("no VirtualService carries the rollout state"));
    let routes = vs.pointer("/spec/http").and_then(Value::as_array).cloned().unwrap_or_default();
    let main = routes.last().cloned().unwrap_or(Value::Null);
    main["route"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let host = r["destination"]["host"].as_str().unwrap_or_default();
            (host.split('.').next().unwrap_or_default().to_string(), r["weight"].as_i64().unwrap_or(0))
        })
        .collect()
}

#[tokio::test]
async fn the_virtual_service_weights_step_and_roll_back() {
    let clock = Arc::new(AtomicU64::new(NOW));
    let failing = Arc::new(AtomicBool::new(false));
    let figures: CandidateFigures = {
        let failing = failing.clone();
        Arc::new(move |_: &ObjectKey, _step: usize| StepMeasurement {
            requests: 10,
            errors_5xx: if failing.load(Ordering::Relaxed) { 5 } else { 0 },
            p99_ms: None,
        })
    };
    let context = {
        let clock = clock.clone();
        move |client, snapshot: Snapshot| {
            let clock = clock.clone();
            Arc::new(
                Context::new(client, Arc::new(snapshot), Default::default())
                    .with_clock(Arc::new(move || clock.load(Ordering::Relaxed)))
                    .with_candidate_figures(figures.clone()),
            )
        }
    };
    let start = Snapshot::new(NAMESPACE)
        .with(hello(IMAGE).object())
        .with(Fixture::endpoint_slice("hello-00001", "a").endpoint("10.0.0.1", Some(true)).object());
    let running = converge_in(start, 2, &context).await;
    assert_eq!(weights(&running), [("hello-00001".to_string(), 100)]);

    let mut snapshot = running
        .with(hello("ghcr.io/example/hello:2").generation(2).object())
        .with(Fixture::endpoint_slice("hello-00002", "a").endpoint("10.0.0.2", Some(true)).object());
    let mut candidate = Vec::new();
    for _ in 0..6 {
        snapshot = converge_in(snapshot, 1, &context).await;
        let w = weights(&snapshot);
        candidate.push(w.iter().find(|(r, _)| r == "hello-00002").map_or(0, |(_, p)| *p));
        assert_eq!(w.iter().map(|(_, p)| p).sum::<i64>(), 100, "{w:?}");
        clock.fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(candidate.first(), Some(&1), "the candidate starts at 1%: {candidate:?}");
    assert!(candidate.windows(2).all(|w| w[0] <= w[1]) && candidate.last() > Some(&1), "it steps: {candidate:?}");

    failing.store(true, Ordering::Relaxed);
    snapshot = converge_in(snapshot, 1, &context).await;
    assert_eq!(weights(&snapshot), [("hello-00001".to_string(), 100)], "rolled back");
    let route = snapshot.get(Kind::Route, "hello").map(|r| serde_json::to_value(r).expect("JSON"));
    let rollout = route
        .as_ref()
        .and_then(|r| r.pointer("/status/conditions"))
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Rollout"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!((&rollout["status"], &rollout["reason"]), (&json!("False"), &json!("Aborted")), "{rollout:#}");
    assert!(rollout["message"].as_str().is_some_and(|m| m.contains("5xx error rate")), "{rollout:#}");
}
