use std::sync::Mutex;

use revgate_model::parse_documents;

use super::*;
use crate::store::Store;

const HELLO: &str = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  annotations:
    serving.knative.dev/rollout-duration: 20s
    revgate.dev/rollout-max-error-rate: \"0.05\"
spec:
  template:
    spec:
      containers:
      - image: hello:IMAGE
";

fn world(images: &[&str]) -> Arc<World> {
    let mut world = World::default();
    for image in images {
        let docs = parse_documents("hello.yaml", &HELLO.replace("IMAGE", image)).expect("parses");
        world = world.apply(&docs, 0).expect("applies").0;
    }
    Arc::new(world)
}

/// Gateways that answer, per revision, `ok` 200s and `failed` 500s (of
/// 10 ms each) between one look at their counters and the next.
#[derive(Default)]
struct Fake(Mutex<BTreeMap<ObjectKey, (u64, u64, RevisionCounters)>>);

impl Fake {
    fn serve(&self, revision: &ObjectKey, ok: u64, failed: u64) {
        if let Ok(mut traffic) = self.0.lock() {
            let entry = traffic.entry(revision.clone()).or_default();
            (entry.0, entry.1) = (ok, failed);
        }
    }
}

impl Figures for Fake {
    fn counters(&self) -> CountersSnapshot {
        let Ok(mut traffic) = self.0.lock() else { return CountersSnapshot::default() };
        traffic
            .iter_mut()
            .map(|(revision, (ok, failed, counters))| {
                let add = counted(*ok, *failed, 0.01);
                for (code, n) in &add.requests_by_code {
                    *counters.requests_by_code.entry(*code).or_default() += n;
                }
                counters.duration.merge(&add.duration);
                (revision.clone(), Arc::new(counters.clone()))
            })
            .collect()
    }
}

/// Counters of `ok` 200s and `failed` 500s, each taking `seconds`.
fn counted(ok: u64, failed: u64, seconds: f64) -> Arc<RevisionCounters> {
    let mut counters = RevisionCounters::default();
    counters.requests_by_code.extend([(200, ok), (500, failed)]);
    for _ in 0..ok + failed {
        counters.duration.observe(seconds);
    }
    Arc::new(counters)
}

fn ready_gateway(world: &World) -> Observed {
    Observed { ingress: world.routes.keys().map(|k| (k.clone(), IngressState::Ready)).collect(), ..Observed::default() }
}

fn split(states: &Rollouts) -> Vec<(String, u32)> {
    let route = ObjectKey::new("default", "hello");
    states[&route].configurations[0].revisions.iter().map(|r| (r.revision.clone(), r.percent)).collect()
}

fn start(
    store: &Store,
    world: &watch::Sender<Arc<World>>,
    figures: Arc<Fake>,
) -> (tokio::task::JoinHandle<()>, RolloutHandle) {
    let observed = world.subscribe();
    let (driver, handle) =
        Driver::start(store.rollouts(), world.subscribe(), move || ready_gateway(&observed.borrow()), figures)
            .expect("driver");
    (tokio::spawn(driver.run()), handle)
}

/// On paused time: a new revision starts at 1%, steps up, aborts within
/// one tick of a measured breach, and a restarted driver resumes from
/// the store where the last one was.
#[tokio::test(start_paused = true)]
async fn the_driver_steps_aborts_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(dir.path()).expect("store");
    let (world_tx, _) = watch::channel(world(&["1"]));
    let figures = Arc::new(Fake::default());
    let (task, handle) = start(&store, &world_tx, figures.clone());
    let mut states = handle.states();
    states.wait_for(|s| !s.is_empty()).await.expect("driver");
    assert_eq!(split(&states.borrow()), [("hello-00001".to_string(), 100)]);

    world_tx.send_replace(world(&["1", "2"]));
    states.wait_for(|s| split(s).len() == 2).await.expect("driver");
    assert_eq!(split(&states.borrow()), [("hello-00001".to_string(), 99), ("hello-00002".to_string(), 1)]);
    let candidate = ObjectKey::new("default", "hello-00002");
    figures.serve(&candidate, 10, 0);
    states.wait_for(|s| split(s).last().is_some_and(|(_, p)| *p > 10)).await.expect("driver");

    // A restart resumes: the new driver starts from the stored split.
    task.abort();
    let _ = task.await;
    let before = split(&states.borrow());
    let (task, handle) = start(&store, &world_tx, figures.clone());
    let resumed = split(&handle.states().borrow());
    assert_eq!(resumed, before, "the restarted driver serves the stored split at once");

    // A breach aborts at the next tick: all back to the previous revision.
    figures.serve(&candidate, 7, 3);
    let mut states = handle.states();
    states.wait_for(|s| split(s) == [("hello-00001".to_string(), 100)]).await.expect("driver");
    let summary = states.borrow()[&ObjectKey::new("default", "hello")].summary();
    assert_eq!(summary.as_deref(), Some("aborted: 5xx 0.30 > 0.05"));
    task.abort();
}

#[test]
fn a_step_counts_what_the_gateways_counted_since_it_began_without_held_time() {
    let revision = ObjectKey::new("default", "hello-00002");
    let mut sampler = StepSampler::default();
    assert_eq!(sampler.measure(&revision, 0, &counted(5, 0, 0.01)), StepMeasurement::default(), "begins now");

    // 95 more requests, 5 of them 500s, most fast, a few slow; and one
    // held for 30 s before a cold start, which is not its latency.
    let mut now = (*counted(95, 5, 0.01)).clone();
    for _ in 0..3 {
        now.duration.observe(2.0);
    }
    now.held.observe(30.0);
    let measured = sampler.measure(&revision, 0, &Arc::new(now.clone()));
    assert_eq!((measured.requests, measured.errors_5xx), (95, 5), "5 of them before the step");
    let p99 = measured.p99_ms.expect("a p99");
    assert!((1000.0..=2500.0).contains(&p99), "the slow requests are the top 3%, held time is not: {p99} ms");

    // The next step counts from where this one ended.
    sampler.begin(&revision, 1, &Arc::new(now.clone()));
    now.requests_by_code.insert(500, 6);
    now.duration.observe(0.01);
    let next = sampler.measure(&revision, 1, &Arc::new(now));
    assert_eq!((next.requests, next.errors_5xx), (1, 1));
}
