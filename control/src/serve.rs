//! `revgate serve`: the admin API and the xDS server around one control plane.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use revgate_xds::FilterSettings;
use revgate_xds::server::{SnapshotCache, XdsServer};
use revgate_xds::translate::XdsSettings;
use tokio::net::TcpListener;

use crate::activation::ActivationService;
use crate::admin::server::{AdminState, is_loopback, router};
use crate::cli::ServeArgs;
use crate::control::ControlPlane;
use crate::store::Store;

const TOKEN_FILE: &str = "admin-token";

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating the state directory {}", args.state_dir.display()))?;
    let store = Store::open(&args.state_dir)?;
    let token = admin_token(&args.state_dir)?;

    let activation_listener = TcpListener::bind(args.activation_addr).await.with_context(|| {
        format!(
            "binding the activation service to {} (is the port in use? see --activation-addr)",
            args.activation_addr
        )
    })?;
    let filter = match &args.wasm_filter {
        Some(path) => Some(filter_settings(path, activation_listener.local_addr()?, args.filter_config.as_deref())?),
        None => None,
    };

    let cache = SnapshotCache::default();
    let xds = XdsServer::new(cache.clone());
    let settings = XdsSettings { listener_port: args.http_port, filter, ..XdsSettings::default() };
    let (plane, handle) = ControlPlane::start(store, cache, settings, xds.status())?;
    let activation = ActivationService::start(handle.plan(), handle.desired(), xds.subscribe_acks());

    let xds_listener = TcpListener::bind(args.xds_addr)
        .await
        .with_context(|| format!("binding the xDS server to {} (is the port in use? see --xds-addr)", args.xds_addr))?;
    let admin_listener = TcpListener::bind(args.admin_addr).await.with_context(|| {
        format!("binding the admin API to {} (is the port in use? see --admin-addr)", args.admin_addr)
    })?;
    let admin_token = if is_loopback(&args.admin_addr) {
        None
    } else {
        tracing::info!(file = %args.state_dir.join(TOKEN_FILE).display(), "admin API bound beyond loopback: bearer token required");
        Some(token)
    };
    tracing::info!(
        xds = %xds_listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        activation = %activation_listener.local_addr()?,
        filter = ?args.wasm_filter,
        state_dir = %args.state_dir.display(),
        "revgate control plane serving"
    );

    let admin = router(AdminState {
        control: handle,
        activation: activation.clone(),
        token: admin_token,
        test_hooks: args.test_hooks,
    });
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    let plane_task = tokio::spawn(plane.run(activation.clone()));
    let xds_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(xds.into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(xds_listener)),
    );
    let admin_task = tokio::spawn(async move { axum::serve(admin_listener, admin).await });
    let activation_task = tokio::spawn(async move { axum::serve(activation_listener, activation.router()).await });

    tokio::select! {
        () = &mut shutdown => tracing::info!("shutting down"),
        result = xds_task => { result?.context("the xDS server stopped")?; }
        result = admin_task => { result?.context("the admin API stopped")?; }
        result = activation_task => { result?.context("the activation service stopped")?; }
    }
    plane_task.abort();
    Ok(ExitCode::SUCCESS)
}

/// The gateway filter's settings: its code, where it reaches the activation
/// service, and its JSON configuration (`extra` is merged over revgate's).
fn filter_settings(wasm: &Path, activation: SocketAddr, extra: Option<&str>) -> anyhow::Result<FilterSettings> {
    let wasm = std::fs::canonicalize(wasm).with_context(|| {
        format!("the gateway filter {} does not exist (build it with scripts/build-filter.sh)", wasm.display())
    })?;
    // Envoy runs on this machine: an unspecified address means loopback.
    let control_address = if activation.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), activation.port())
    } else {
        activation
    };
    let mut configuration = serde_json::json!({
        "control_cluster": revgate_xds::names::CONTROL_CLUSTER,
        "control_authority": revgate_xds::names::CONTROL_CLUSTER,
    });
    if let Some(extra) = extra {
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(extra).context("--filter-config must be a JSON object")?;
        if let Some(object) = configuration.as_object_mut() {
            object.extend(extra);
        }
    }
    Ok(FilterSettings {
        wasm_path: wasm.display().to_string(),
        control_address,
        configuration: configuration.to_string(),
    })
}

/// Reads the admin token, creating it on first start (readable by the owner only).
fn admin_token(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) => return Ok(token.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

#[cfg(unix)]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(content.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    std::fs::write(path, content)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
