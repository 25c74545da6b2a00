//! The rendered bootstraps and the served resources against the real Envoy.
//!
//! Uses `/work/main/.tools/envoy/bin/envoy` (from `scripts/install-tools.sh`)
//! or the binary named by `REVGATE_ENVOY`. A missing Envoy fails these
//! tests: they are the proof that Envoy accepts what revgate generates.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
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
    plan.revisions[1].static_endpoints = Some(vec![Endpoint { host: "localhost".into(), port: 9000 }]);
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

        let yaml = ads_bootstrap_yaml(&AdsBootstrapOptions {
            node_id: "gw-envoy".into(),
            cluster: "revgate".into(),
            xds_address: addr,
            api,
            admin_port: 0,
            token: Some(token),
            tls: None,
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("envoy.yaml");
        std::fs::write(&file, yaml).unwrap();
        let mut child = tokio::process::Command::new(envoy())
            .args(["--base-id", &base_id(), "-l", "warn", "-c"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();

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
