//! `revgate up`: the whole platform on one machine. It starts the control
//! plane with the local process runtime, finds or builds the gateway filter,
//! starts Envoy connected over ADS, applies the manifests and prints each
//! service's URL. Ctrl-C stops Envoy, then every revision instance.
//!
//! An `up` killed without the chance to stop them (SIGKILL) leaves Envoy and
//! the instances running; each is in a runtime record in the state directory
//! (Envoy in `envoy-process.json`, the instances in the process runtime's),
//! and the next `up` on that directory stops them before it starts its own.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use revgate_model::OtherKinds;
use revgate_model::world::IngressState;
use revgate_runtime::ImageMap;
use revgate_runtime::record::{self, ProcessRecord, RecordedProcess};
use revgate_xds::GatewayToken;
use revgate_xds::render::{AdsBootstrapOptions, ads_bootstrap_yaml};
use revgate_xds::server::Api;

use crate::activation::ActivationService;
use crate::cli::{RuntimeKind, UpArgs};
use crate::control::{ControlError, Handle};
use crate::gateway::{Envoy, FilterOrigin, envoy_version, find_envoy, find_filter};
use crate::manifests::{self, ManifestFile};
use crate::private_file;
use crate::serve::{AddressFlags, LOG_DIR, Server, ServerConfig, Shutdown};
use crate::store;

/// The node id of the gateway `revgate up` starts.
const NODE_ID: &str = "revgate-gateway";

/// Every service is also served under this domain: `*.localhost` names
/// resolve to loopback by standard (RFC 6761), so the printed URLs open in a
/// browser or a plain `curl` on this machine. Knative's `config-domain` still
/// decides each Route's URL (its status and `example.com` stay as Knative
/// gives them); the alias lives in the gateway's configuration only.
pub const LOCAL_ALIAS_DOMAIN: &str = "localhost";

/// The runtime record of the Envoy `up` starts, in the state directory.
const ENVOY_RECORD: &str = "envoy-process.json";

/// How long Envoy may take to connect and accept its first configuration.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the gateway filters may take to poll for their first readiness view.
const FILTER_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

fn step(message: impl std::fmt::Display) {
    eprintln!("revgate up: {message}");
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut shutdown = Shutdown::install()?;
    let loopback = |port| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let mut files = manifests::read_all(&args.files)?;
    if let Some(domain) = &args.domain {
        files.insert(0, domain_config_map(domain));
    }
    // Checked before the filter build, which can take minutes.
    if let Some(images) = &args.images {
        ImageMap::load(images)?;
    }

    let envoy_bin = find_envoy(args.envoy.as_deref())?;
    let version = envoy_version(&envoy_bin).await?;
    step(format_args!("Envoy {version} at {}", envoy_bin.display()));

    step("finding the gateway filter (building it if needed)");
    let (filter, origin) = tokio::select! {
        found = find_filter(args.wasm_filter.as_deref()) => found?,
        () = shutdown.wait() => return Ok(ExitCode::FAILURE),
    };
    let how = match origin {
        FilterOrigin::Given => "given",
        FilterOrigin::Built => "built",
        FilterOrigin::Found => "found",
    };
    step(format_args!("gateway filter {} ({how})", filter.display()));

    // Created before anything is written into it, so that it is the owner's
    // only, as `Store::open` would create it.
    store::create_private_dir(&args.state_dir)?;
    // A killed `up` on this state directory may have left its Envoy running,
    // holding the ports this one needs: stop it first. (Its instances are
    // the process runtime's, which stops them as it starts.)
    let (mut envoy_record, leftovers) = ProcessRecord::open(&args.state_dir.join(ENVOY_RECORD))?;
    record::reap(leftovers, record::REAP_GRACE).await;
    envoy_record.clear();

    let mut server = Server::start(ServerConfig {
        xds_addr: loopback(args.xds_port.unwrap_or(0)),
        admin_addr: loopback(args.admin_port),
        activation_addr: loopback(args.activation_port.unwrap_or(0)),
        state_dir: args.state_dir.clone(),
        http_port: args.http_port,
        wasm_filter: Some(filter),
        filter_config: args.filter_config.clone(),
        runtime: RuntimeKind::Process,
        images: args.images.clone(),
        test_hooks: false,
        gateway_token_file: None,
        xds_tls: None,
        flags: AddressFlags { xds: "--xds-port", admin: "--admin-port", activation: "--activation-port" },
        metrics_addr: None,
        alias_domain: Some(LOCAL_ALIAS_DOMAIN.to_owned()),
    })
    .await?;
    step(format_args!(
        "control plane up: admin API {}, xDS {}, activation {}, state in {}",
        server.admin_addr,
        server.xds_addr,
        server.activation_addr,
        args.state_dir.display()
    ));

    // Whatever ends first — the platform, a failure, Ctrl-C — everything
    // started so far is stopped: Envoy when `serve` returns or is dropped
    // (it is killed on drop), then the instances.
    let platform = Platform {
        handle: server.handle.clone(),
        activation: server.activation_service.clone(),
        xds_addr: server.xds_addr,
        gateway_token: server.gateway_token.clone(),
    };
    let result = tokio::select! {
        result = serve(&platform, &args, &envoy_bin, files, started, &mut shutdown, &mut envoy_record) => result,
        e = server.failed() => Err(e),
    };
    step("stopping every revision instance");
    server.stop().await;
    result.map(|()| {
        step("stopped");
        ExitCode::SUCCESS
    })
}

/// What `serve` needs of the running control plane.
struct Platform {
    handle: Handle,
    activation: ActivationService,
    xds_addr: SocketAddr,
    gateway_token: GatewayToken,
}

/// Everything after the control plane is up, until Ctrl-C or a failure.
async fn serve(
    platform: &Platform,
    args: &UpArgs,
    envoy_bin: &Path,
    files: Vec<ManifestFile>,
    started: Instant,
    shutdown: &mut Shutdown,
    envoy_record: &mut ProcessRecord,
) -> anyhow::Result<()> {
    let handle = &platform.handle;
    let other_kinds = if args.strict { OtherKinds::Reject } else { OtherKinds::Skip };
    let applied = match handle.apply_with(files, false, other_kinds).await {
        Ok(applied) => applied,
        Err(ControlError::Invalid(e)) => {
            for error in &e.errors {
                eprintln!("error: {error}");
            }
            bail!("the manifests were rejected; nothing was applied");
        }
        Err(e) => return Err(e).context("applying the manifests"),
    };
    for warning in &applied.warnings {
        eprintln!("Warning: {warning}");
    }
    for change in &applied.changes {
        step(format_args!("applied: {change}"));
    }

    let logs = args.state_dir.join(LOG_DIR);
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let bootstrap = args.state_dir.join("envoy.yaml");
    // Without a port given, Envoy's admin binds port 0 and writes where it
    // listens: a port probed free here could be taken by another process
    // (another `up`) before Envoy binds it.
    let admin_address_path = args.state_dir.join("envoy-admin-address");
    remove_stale(&admin_address_path)?;
    let yaml = ads_bootstrap_yaml(&AdsBootstrapOptions {
        node_id: NODE_ID.to_owned(),
        cluster: "revgate".to_owned(),
        xds_address: platform.xds_addr,
        api: Api::Sotw,
        admin_port: args.envoy_admin_port.unwrap_or(0),
        // Sent although loopback does not require it, so that the same
        // bootstrap works against a server bound beyond it.
        token: Some(platform.gateway_token.clone()),
        tls: None,
    })?;
    // Owner-only: the bootstrap carries the gateway token.
    private_file::write(&bootstrap, &yaml).with_context(|| format!("writing {}", bootstrap.display()))?;
    // Envoy runs one filter VM per worker; the count is passed explicitly so
    // that revgate knows how many filters to wait for.
    let workers = args.envoy_concurrency.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| u16::try_from(n.get()).unwrap_or(u16::MAX))
    });
    match crate::gateway::raise_open_files_limit() {
        Some((before, after)) if before < after => {
            tracing::info!(before, after, "raised the open-files limit for Envoy and the instances");
        }
        Some(_) => {}
        None => tracing::warn!("could not read or raise the open-files limit; a large cold burst may fail to connect"),
    }
    let mut envoy = Envoy::start(envoy_bin, &bootstrap, &admin_address_path, logs.join("envoy.log"), workers)?;
    if let Some(process) = envoy.pid().and_then(|pid| RecordedProcess::observe(pid, "Envoy")) {
        envoy_record.insert(process);
    }
    let envoy_admin_port = match args.envoy_admin_port {
        Some(port) => port,
        None => admin_port(&mut envoy, &admin_address_path).await?,
    };
    step(format_args!(
        "Envoy started (pid {}), admin http://127.0.0.1:{envoy_admin_port}/, log {}",
        envoy.pid().unwrap_or(0),
        envoy.log.display()
    ));

    let result = async {
        tokio::select! {
            ready = wait_for_gateway(handle, &mut envoy, args, envoy_admin_port) => ready?,
            () = shutdown.wait() => return Ok(()),
        }
        wait_for_filters(&platform.activation, usize::from(workers)).await;
        step(format_args!("ready in {:.1} s", started.elapsed().as_secs_f64()));
        print_urls(handle, args, envoy_admin_port);
        tokio::select! {
            () = shutdown.wait() => {}
            status = wait_exit(&mut envoy) => {
                bail!("Envoy exited ({status}); last lines of {}:\n{}", envoy.log.display(), envoy.log_tail(20));
            }
        }
        Ok(())
    }
    .await;
    step("stopping Envoy");
    envoy.stop(Duration::from_secs(5)).await;
    envoy_record.clear();
    result
}

/// Waits until Envoy has connected and acknowledged the published
/// configuration (or says why it did not).
async fn wait_for_gateway(
    handle: &Handle,
    envoy: &mut Envoy,
    args: &UpArgs,
    envoy_admin_port: u16,
) -> anyhow::Result<()> {
    let http_port = args.http_port;
    let exited = format!(
        "before taking its configuration (is port {http_port} or {envoy_admin_port} in use? \
         choose others with --http-port and --envoy-admin-port)"
    );
    while_envoy_runs(envoy, Duration::from_millis(50), &exited, "take its configuration", async || {
        let observed = handle.observed();
        if let Some(message) = observed.ingress.values().find_map(|state| match state {
            IngressState::Rejected { message } => Some(message.clone()),
            _ => None,
        }) {
            bail!("Envoy rejected the configuration: {message}");
        }
        let gateway = handle.gateway();
        let connected = gateway.nodes.get(NODE_ID).is_some_and(|node| node.connected);
        let programmed = observed.ingress.values().all(|state| matches!(state, IngressState::Ready));
        Ok((connected && (programmed || observed.ingress.is_empty()) && listening(http_port).await).then_some(()))
    })
    .await?;
    step(format_args!("gateway connected and programmed; listening on port {http_port}"));
    Ok(())
}

/// Waits briefly for every worker's filter to take its first readiness
/// view, so that no first request waits for it. A filter that never polls
/// is reported, not fatal: requests still flow once its startup hold ends.
async fn wait_for_filters(activation: &ActivationService, workers: usize) {
    let deadline = Instant::now() + FILTER_SYNC_TIMEOUT;
    let mut in_sync = 0;
    while Instant::now() < deadline {
        in_sync = activation.filters_in_sync().get(NODE_ID).copied().unwrap_or(0);
        if in_sync >= workers {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    step(format_args!(
        "warning: {in_sync} of {workers} gateway filters polled the activation service within {} s; see the Envoy log",
        FILTER_SYNC_TIMEOUT.as_secs()
    ));
}

/// Removes a file left by an earlier run, if there is one.
fn remove_stale(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The port Envoy's admin bound, from the file `--admin-address-path`
/// names (`127.0.0.1:PORT`), once Envoy has written it.
async fn admin_port(envoy: &mut Envoy, path: &Path) -> anyhow::Result<u16> {
    let late = format!("write its admin address to {}", path.display());
    while_envoy_runs(envoy, Duration::from_millis(20), "before its admin interface listened", &late, async || {
        let written = std::fs::read_to_string(path).ok();
        Ok(written.as_deref().and_then(|a| a.trim().rsplit_once(':')).and_then(|(_, p)| p.parse().ok()))
    })
    .await
}

/// Asks `check` every `every` until it has an answer, for at most
/// [`GATEWAY_TIMEOUT`]. Fails with Envoy's last log lines if Envoy exits
/// first (`exited` says when), and names what it did not do (`late`) if
/// the time runs out.
async fn while_envoy_runs<T>(
    envoy: &mut Envoy,
    every: Duration,
    exited: &str,
    late: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + GATEWAY_TIMEOUT;
    loop {
        if let Some(status) = envoy.exited() {
            bail!("Envoy exited ({status}) {exited}; last lines of {}:\n{}", envoy.log.display(), envoy.log_tail(20));
        }
        if let Some(answer) = check().await? {
            return Ok(answer);
        }
        if Instant::now() > deadline {
            bail!("Envoy did not {late} within {} s; see {}", GATEWAY_TIMEOUT.as_secs(), envoy.log.display());
        }
        tokio::time::sleep(every).await;
    }
}

async fn listening(port: u16) -> bool {
    tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.is_ok()
}

async fn wait_exit(envoy: &mut Envoy) -> std::process::ExitStatus {
    loop {
        if let Some(status) = envoy.exited() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_urls(handle: &Handle, args: &UpArgs, envoy_admin_port: u16) {
    let world = handle.world();
    let services = world.service_views(&handle.observed());
    if services.is_empty() {
        println!("\nNo services yet: apply some with `revgate apply -f FILE`.");
    }
    println!();
    for service in &services {
        let Some(url) = service.status.as_ref().and_then(|s| s.url.clone()) else { continue };
        let host = url.split_once("://").map_or(url.as_str(), |(_, host)| host);
        println!("  {}/{}  {url}", service.metadata.namespace, service.metadata.name);
        match revgate_xds::translate::alias_host(host, &service.metadata.namespace, LOCAL_ALIAS_DOMAIN) {
            Some(alias) => {
                println!("    http://{alias}:{}/", args.http_port);
                println!("    curl http://{alias}:{}/", args.http_port);
            }
            None => println!("    curl -H 'Host: {host}' localhost:{}", args.http_port),
        }
    }
    println!("\n  Dashboard  http://127.0.0.1:{}/", args.admin_port);
    let server =
        if args.admin_port == 9090 { String::new() } else { format!(" --server http://127.0.0.1:{}", args.admin_port) };
    let revgate = revgate_command();
    println!(
        "\nMetrics: http://127.0.0.1:{}/metrics   ·   Envoy stats: http://127.0.0.1:{}/stats/prometheus",
        args.admin_port, envoy_admin_port
    );
    println!(
        "\nWatch it scale: {revgate} get kpa{server}   ·   {revgate} get revisions{server}   ·   logs in {}/{LOG_DIR}\nPress Ctrl-C to stop.",
        args.state_dir.display()
    );
}

/// How to run this `revgate` from the shell `up` was started in: `revgate`
/// when that name on PATH is this binary, else its path (relative to the
/// working directory when below it, as `target/debug/revgate` is after
/// `scripts/up.sh`), so the printed hints run as printed.
fn revgate_command() -> String {
    let Ok(exe) = std::env::current_exe().and_then(std::fs::canonicalize) else { return "revgate".to_owned() };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| std::fs::canonicalize(dir.join("revgate")).is_ok_and(|found| found == exe))
    });
    if on_path {
        return "revgate".to_owned();
    }
    let relative = std::env::current_dir()
        .and_then(std::fs::canonicalize)
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf));
    match relative {
        Some(relative) => relative.display().to_string(),
        None => exe.display().to_string(),
    }
}

/// Knative's `config-domain` with `domain` as the default domain.
fn domain_config_map(domain: &str) -> ManifestFile {
    ManifestFile {
        name: "--domain".to_owned(),
        content: format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-domain\n  namespace: knative-serving\ndata:\n  {}: \"\"\n",
            serde_json::Value::String(domain.to_owned())
        ),
    }
}
