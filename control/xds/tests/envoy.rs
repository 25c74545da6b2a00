//! The rendered bootstraps and the served resources against the real Envoy.
//!
//! Uses `/work/main/.tools/envoy/bin/envoy` (from `scripts/install-tools.sh`)
//! or the binary named by `REVGATE_ENVOY`. A missing Envoy fails these
//! tests: they are the proof that Envoy accepts what revgate generates.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use common::*;
use revgate_model::plan::{Endpoint, EndpointMap};
use revgate_xds::render::{AdsBootstrapOptions, BootstrapOptions, ads_bootstrap_yaml, static_bootstrap_yaml};
use revgate_xds::{Api, GatewayAuth, GatewayToken, SnapshotCache, XdsSettings, translate};
use tokio::time::timeout;

fn envoy() -> PathBuf {
    let path = std::env::var_os("REVGATE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/envoy/bin/envoy"));
    assert!(path.is_file(), "Envoy not found at {}: run scripts/install-tools.sh or set REVGATE_ENVOY", path.display());
    path
}

/// A distinct `--base-id` per Envoy so tests can run side by side.
fn base_id() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    (u32::from(std::process::id() as u16) * 16 + u32::from(NEXT.fetch_add(1, Ordering::Relaxed))).to_string()
}

fn validate(yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.yaml");
    std::fs::write(&file, yaml).unwrap();
    let output = Command::new(envoy())
        .args(["--mode", "validate", "--base-id", &base_id(), "-l", "warn", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "envoy --mode validate rejected:\n{yaml}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn static_bootstrap_validates() {
    let mut plan = plan();
    // One revision with a DNS-named static endpoint (STRICT_DNS cluster).
    Arc::make_mut(&mut plan.revisions[1]).static_endpoints =
        Some(vec![Endpoint { host: "localhost".into(), port: 9000 }]);
    let resources = translate(&plan, &endpoints(), &XdsSettings::default());
    let yaml = static_bootstrap_yaml(&resources, &BootstrapOptions::default()).unwrap();
    assert!(yaml.contains("route_config:"), "routes inlined:\n{yaml}");
    assert!(yaml.contains("type: STATIC"), "endpoints inlined:\n{yaml}");
    assert!(yaml.contains("container_concurrency"), "metadata kept:\n{yaml}");
    validate(&yaml);
}

#[test]
fn static_bootstrap_without_endpoints_validates() {
    let resources = translate(&plan(), &EndpointMap::new(), &XdsSettings::default());
    validate(&static_bootstrap_yaml(&resources, &BootstrapOptions::default()).unwrap());
}

#[test]
fn ads_bootstraps_validate() {
    for api in [Api::Sotw, Api::Delta] {
        let yaml = ads_bootstrap_yaml(&AdsBootstrapOptions {
            node_id: "gw-1".into(),
            cluster: "revgate".into(),
            xds_address: "127.0.0.1:18000".parse().unwrap(),
            api,
            admin_port: 9901,
            token: Some(GatewayToken::new(TOKEN).unwrap()),
            tls: None,
        })
        .unwrap();
        let api_type = match api {
            Api::Sotw => "api_type: GRPC",
            Api::Delta => "api_type: DELTA_GRPC",
        };
        assert!(yaml.contains(api_type), "{yaml}");
        assert!(yaml.contains("initial_metadata"), "the token is presented on the ADS stream:\n{yaml}");
        validate(&yaml);
    }
}

/// A real Envoy on the rendered ADS bootstrap for `node_id`, connected to
/// `addr`; killed when dropped, with the directory of its bootstrap.
fn start_envoy(
    addr: std::net::SocketAddr,
    api: Api,
    node_id: &str,
    token: Option<GatewayToken>,
) -> (tokio::process::Child, tempfile::TempDir) {
    let yaml = ads_bootstrap_yaml(&AdsBootstrapOptions {
        node_id: node_id.into(),
        cluster: "revgate".into(),
        xds_address: addr,
        api,
        admin_port: 0,
        token,
        tls: None,
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.yaml");
    std::fs::write(&file, yaml).unwrap();
    let child = tokio::process::Command::new(envoy())
        .args(["--base-id", &base_id(), "-l", "warn", "-c"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, dir)
}

/// Envoy connects to the in-process server, which requires the gateway
/// token, presents it from the rendered bootstrap and ACKs every type, over
/// both APIs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_every_type() {
    for api in [Api::Sotw, Api::Delta] {
        let settings = XdsSettings { listener_address: "127.0.0.1".into(), listener_port: 0, ..XdsSettings::default() };
        let cache = SnapshotCache::new();
        let snapshot = revgate_xds::Snapshot::new(&translate(&plan(), &endpoints(), &settings));
        snapshot.consistency_check().unwrap();
        cache.set_snapshot(std::sync::Arc::new(snapshot));
        let token = GatewayToken::new(TOKEN).unwrap();
        let (server, addr) = start_with(cache, GatewayAuth::require(token.clone())).await;

        let (mut child, _dir) = start_envoy(addr, api, "gw-envoy", Some(token));

        let mut status = server.status();
        let acked = timeout(
            std::time::Duration::from_secs(30),
            status.wait_for(|s| {
                s.nodes.get("gw-envoy").is_some_and(|n| {
                    ["CDS", "EDS", "LDS", "SRDS", "RDS"]
                        .iter()
                        .all(|t| n.types.get(*t).is_some_and(|t| t.acked_version.is_some() && t.nack.is_none()))
                })
            }),
        )
        .await
        .is_ok();
        let report = server.status().borrow().clone();
        child.kill().await.unwrap();
        assert!(acked, "{api:?}: Envoy did not ACK every type: {report:#?}");
        assert_eq!(report.nodes["gw-envoy"].api, api);
    }
}

/// Answers every HTTP/1.1 request on `listener` with 200, then closes.
async fn serve_ok(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { return };
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
        });
    }
}

/// The status Envoy answers a GET with `Host: host`; 0 if the request failed.
async fn status_for(port: u16, host: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut socket) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return 0 };
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if socket.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    // The status line is enough; Envoy delays closing after a local reply.
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    while !reply.windows(2).any(|w| w == b"\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    reply.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Scoped routes pick a host's routes by the host in `:authority`, with or
/// without a port and in any case, tag hosts included; a host with no scope is answered
/// 404 by Envoy itself. A change to one Route, or to one revision's
/// endpoints, reaches Envoy as that one resource (SotW included) and leaves
/// every other host routed, the other Route in the same shard included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_route_by_host_and_partial_updates_keep_other_hosts() {
    for api in [Api::Sotw, Api::Delta] {
        scopes_over(api).await;
    }
}

async fn scopes_over(api: Api) {
    use revgate_model::plan::{RoutePlan, Split, UpstreamProtocol};
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    tokio::spawn(serve_ok(upstream));
    let http_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();

    let settings =
        XdsSettings { listener_address: "127.0.0.1".into(), listener_port: http_port, ..XdsSettings::default() };
    let endpoint = |port| vec![Endpoint { host: "127.0.0.1".into(), port }];
    let mut endpoints = EndpointMap::from([
        (key("hello-00001"), endpoint(upstream_port)),
        (key("hello-00002"), endpoint(upstream_port)),
    ]);
    // A second Route on the first revision, in the same route configuration
    // (shard) as the first; the upstream speaks HTTP/1.1 only.
    let shard = revgate_xds::names::route_shard(&key("hello"));
    let other =
        (0..).map(|i| key(&format!("other-{i}"))).find(|k| revgate_xds::names::route_shard(k) == shard).unwrap();
    let other_host = format!("{}.default.example.com", other.name);
    let mut plan = plan();
    Arc::make_mut(&mut plan.revisions[1]).protocol = UpstreamProtocol::Http1;
    plan.routes.push(Arc::new(RoutePlan {
        key: other.clone(),
        host: other_host.clone(),
        splits: vec![Split { revision: key("hello-00001"), percent: 100 }],
        tags: Vec::new(),
        mappings: Vec::new(),
    }));
    let cache = SnapshotCache::new();
    let mut translator = revgate_xds::Translator::new(settings);
    cache.set_snapshot(translator.update(&plan, &endpoints).unwrap());
    let (server, addr) = start(cache.clone()).await;

    let (mut child, _dir) = start_envoy(addr, api, "gw-scopes", None);

    let hosts = [
        "hello.default.example.com",
        "hello.default.example.com:8080",
        "candidate-hello.default.example.com",
        "candidate-hello.default.example.com:80",
        other_host.as_str(),
        "nobody.default.example.com",
        "nobody.default.example.com:8080",
        // Hosts are case-insensitive; scope keys are not.
        "Hello.Default.Example.COM",
        "CANDIDATE-hello.default.example.com:8080",
        "Nobody.default.example.com",
    ];
    let expected = [200, 200, 200, 200, 200, 404, 404, 200, 200, 404];
    let statuses = async || {
        let mut seen = Vec::new();
        for host in hosts {
            seen.push(status_for(http_port, host).await);
        }
        seen
    };
    let first = timeout(std::time::Duration::from_secs(30), async {
        loop {
            let seen = statuses().await;
            if seen == expected {
                return seen;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    // One Route changes (its tag goes) and one revision's endpoints move;
    // wait until Envoy ACKed exactly that.
    Arc::make_mut(&mut plan.routes[0]).tags.clear();
    let moved = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    endpoints.insert(key("hello-00002"), endpoint(moved.local_addr().unwrap().port()));
    tokio::spawn(serve_ok(moved));
    let snapshot = translator.update(&plan, &endpoints).unwrap();
    cache.set_snapshot(snapshot.clone());
    let mut status = server.status();
    let acked = timeout(
        std::time::Duration::from_secs(30),
        status.wait_for(|s| {
            s.nodes.get("gw-scopes").is_some_and(|n| {
                revgate_xds::ResourceType::ALL.iter().all(|t| {
                    n.types.get(t.short_name()).and_then(|t| t.acked_version.as_deref()) == Some(snapshot.version(*t))
                })
            })
        }),
    )
    .await
    .is_ok();
    let after = statuses().await;
    child.kill().await.unwrap();

    assert!(first.is_ok(), "{api:?}: Envoy never routed every host as expected");
    assert!(acked, "{api:?}: Envoy did not ACK the change: {:#?}", server.status().borrow());
    assert_eq!(
        after,
        [200, 200, 404, 404, 200, 404, 404, 200, 404, 404],
        "{api:?}: only the removed tag host is gone: {hosts:?}"
    );
}
