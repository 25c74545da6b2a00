use std::time::Duration;

use revgate_runtime_api::RevisionState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A sidecar's stats port on 127.0.0.1: every answer says 3 requests in
/// flight to the pod's port 8080.
async fn sidecar() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a stats port");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(async move {
        let mut total = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            total += 10;
            let body = format!(
                "envoy_cluster_upstream_rq_active{{cluster_name=\"inbound|8080||\"}} 3\n\
                 envoy_cluster_upstream_rq_total{{cluster_name=\"inbound|8080||\"}} {total}\n"
            );
            let mut request = [0_u8; 1024];
            let _ = stream.read(&mut request).await;
            let answer =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    port
}

fn pod(host: &str) -> Endpoint {
    Endpoint { host: host.to_owned(), port: 8080 }
}

/// A revision whose sampled sidecars answer gets revision-wide figures; a
/// pod without a sidecar (nothing on the stats port) is left out of the
/// average, and a revision none of whose pods answer gets no figures, so
/// its KPA falls back to the gateways' reports.
#[tokio::test]
async fn sidecars_that_answer_are_averaged_and_the_others_fall_back() {
    let port = sidecar().await;
    let in_mesh = ObjectKey::new("default", "hello-00001");
    let outside = ObjectKey::new("plain", "hello-00001");
    // 127.0.0.2 is loopback too, with nothing on the stats port: no sidecar.
    let states = RevisionStates::from([
        (
            in_mesh.clone(),
            RevisionState { desired: 2, ready: vec![pod("127.0.0.1"), pod("127.0.0.2")], ..Default::default() },
        ),
        (outside.clone(), RevisionState { desired: 1, ready: vec![pod("127.0.0.2")], ..Default::default() }),
    ]);
    let (_states_tx, states) = watch::channel(Arc::new(states));
    let (_leading_tx, leading) = watch::channel(true);
    let config = ScrapeConfig { port, interval: Duration::from_millis(50), ..ScrapeConfig::default() };
    let mut figures = start(states, leading, config);

    let published = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            figures.changed().await.expect("the scraper runs");
            let current = figures.borrow_and_update().clone();
            if current.get(&in_mesh).is_some_and(|f| f.rps > 0.0) {
                return current;
            }
        }
    })
    .await
    .expect("figures within 10 s");
    let mesh = published[&in_mesh];
    assert_eq!((mesh.scraped, mesh.ready), (1, 2));
    assert!((mesh.concurrency - 6.0).abs() < 1e-9, "3 in flight at the pod that answered, times 2 ready: {mesh:?}");
    assert!(!published.contains_key(&outside), "no sidecar answered for {outside}: {published:?}");
}

/// Only the leader scrapes: figures appear once it leads and are withdrawn when it no longer does.
#[tokio::test]
async fn only_the_leader_scrapes() {
    let port = sidecar().await;
    let key = ObjectKey::new("default", "hello-00001");
    let states = RevisionStates::from([(
        key.clone(),
        RevisionState { desired: 1, ready: vec![pod("127.0.0.1")], ..Default::default() },
    )]);
    let (_states_tx, states) = watch::channel(Arc::new(states));
    let (leading_tx, leading) = watch::channel(false);
    let config = ScrapeConfig { port, interval: Duration::from_millis(50), ..ScrapeConfig::default() };
    let mut figures = start(states, leading, config);
    leading_tx.send(true).expect("the scraper follows leadership");
    tokio::time::timeout(Duration::from_secs(10), figures.changed())
        .await
        .expect("figures once leading")
        .expect("runs");
    assert!(figures.borrow().contains_key(&key));
    leading_tx.send(false).expect("the scraper follows leadership");
    tokio::time::timeout(Duration::from_secs(10), figures.changed())
        .await
        .expect("cleared once not leading")
        .expect("runs");
    assert!(figures.borrow().is_empty());
}
