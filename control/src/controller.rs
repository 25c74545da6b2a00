//! `revgate controller`: cluster mode on an Istio mesh. The Kubernetes
//! controller (`revgate-kube`) writes Revisions, Deployments, Services and
//! VirtualServices; around it this replica serves the activation API the
//! gateway filters call and runs the KPA, which scales Deployments through
//! the controller's runtime (only the leader writes).
//!
//! ```text
//! Kubernetes API ◀──▶ revgate-kube (watches, reconcile, Lease) ──view──▶ Autoscaler ──scale──▶ KubeRuntime
//!                                                   │ plan, ready endpoints               ▲
//!                                                   ▼                                      │ reports, activations
//!                                          activation service ◀──────── filter in istio-ingressgateway
//!
//! KubeRuntime (ready pod IPs) ──▶ scraper (leader) ──GET podIP:15090/stats/prometheus──▶ revision pods' sidecars
//!                                    └──sidecar figures──▶ Autoscaler (with the filters' held requests)
//! ```
//!
//! Only the leader scales, so only the leader's autoscaler may count the
//! gateways' reports: the leader labels its own pod `revgate.dev/leader`
//! (`revgate_kube::LeaderLabel`), and the activation Service selects that
//! label, so every filter reaches the leader.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use revgate_kube::config::{FiguresSource, PluginToken};
use revgate_kube::{ClusterView, ControllerConfig, LeaderLabel};
use revgate_model::World;
use revgate_model::plan::{GatewayPlan, ObjectKey};
use revgate_model::rollout::StepMeasurement;
use revgate_runtime::Runtime;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

use crate::activation::ActivationService;
use crate::autoscaling::Autoscaler;
use crate::cli::ControllerArgs;
use crate::gateway_auth::{self, GatewayTokenError};
use crate::http;
use crate::publish::replace_if_changed;
use crate::rollout::StepSampler;
use crate::serve::Shutdown;
use crate::zero_gate::{GatedRuntime, desired_counts};

pub async fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install()?;
    let identity = args
        .pod_name
        .clone()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|identity| !identity.is_empty())
        .unwrap_or_else(|| "revgate".to_owned());
    let mut config = ControllerConfig::new(identity);
    config.namespaces = args.namespaces;
    config.render.ingress_gateway = args.gateway;
    if let Some(url) = args.wasm_url {
        config.render.wasm_url = url;
    }
    // Gateways reach the activation API across the cluster network: beyond
    // loopback (the default, 0.0.0.0) they must present the token, which the
    // WasmPlugin this controller installs gives them.
    let gateway_token = gateway_auth::explicit(args.gateway_token_file.as_deref(), gateway_auth::from_env())?;
    if gateway_token.is_none() && gateway_auth::required_on(args.activation_addr) {
        return Err(GatewayTokenError::Missing { port: "the activation API", addr: args.activation_addr }.into());
    }
    config.gateway_token = gateway_token.as_ref().map(|token| PluginToken::new(token.expose()));
    config.validate().context("invalid controller settings")?;

    let activation_listener = TcpListener::bind(args.activation_addr)
        .await
        .with_context(|| format!("binding the activation API to {} (see --activation-addr)", args.activation_addr))?;
    let activation_addr = activation_listener.local_addr()?;
    let admin_listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the health endpoint to {} (see --admin-addr)", args.admin_addr))?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in a pod, or with the KUBECONFIG context)")?;
    // The rollout gates read the activation API's reports, which start once
    // the controller's plan exists: they are bound when it does.
    let reports = Arc::new(std::sync::OnceLock::<ActivationService>::new());
    config.figures = FiguresSource(Some(candidate_figures(reports.clone())));
    let controller = revgate_kube::start(client.clone(), config)?;
    let label = args
        .pod_namespace
        .clone()
        .zip(args.pod_name.clone())
        .map(|(namespace, name)| LeaderLabel::new(client.clone(), namespace, name));
    if label.is_none() {
        tracing::warn!("POD_NAME or POD_NAMESPACE unset: this replica cannot label itself leader (run one replica)");
    }
    let labeller = label.clone().map(|label| {
        let leading = controller.leading.clone();
        tokio::spawn(async move { label.follow(leading).await })
    });

    let (world, plan) = follow_view(controller.view.clone());
    // Istio programs the gateways, so no xDS ACK ever arrives here; the
    // filters confirm endpoints with probes (`release_gate: probe`).
    let (acks, _) = broadcast::channel(1);
    let (desired_tx, desired) = watch::channel(Arc::default());
    let activation = ActivationService::start(plan.clone(), desired, acks.subscribe());
    let _ = reports.set(activation.clone());
    let runtime = GatedRuntime::start(Arc::new(controller.runtime.clone()), Arc::new(activation.clone()));
    desired_counts(runtime.states(), runtime.cold(), desired_tx);
    let runtime: Arc<dyn Runtime> = Arc::new(runtime);
    // Calls from inside the mesh reach the pods past every gateway: the
    // leader scrapes the pods' sidecars for them, as Knative scrapes its
    // queue-proxies.
    let sidecars = revgate_kube::scraper::start(
        controller.runtime.states(),
        controller.leading.clone(),
        revgate_kube::scraper::ScrapeConfig::default(),
    );
    let (autoscaler, _) = Autoscaler::new(world, plan, activation.clone(), runtime);
    let autoscaler = autoscaler.with_sidecar_figures(sidecars);
    let autoscaler = tokio::spawn(autoscaler.run());
    let health = Router::new().route("/healthz", get(|| async { "ok" }));
    tracing::info!(activation = %args.activation_addr, admin = %args.admin_addr, "revgate controller serving");

    let result = tokio::select! {
        () = shutdown.wait() => Ok(()),
        result = http::serve(
            activation_listener,
            gateway_auth::activation_router(activation.router(), activation_addr, gateway_token.as_ref()),
            "activation service",
        ) => result.context("the activation API stopped"),
        result = http::serve(admin_listener, health, "health endpoint") => result.context("the health endpoint stopped"),
    };
    autoscaler.abort();
    if let Some(labeller) = labeller {
        labeller.abort();
    }
    if let Some(label) = &label
        && let Err(e) = label.set(false).await
    {
        tracing::warn!(error = %e, "leaving without removing the leader label");
    }
    controller.shutdown().await;
    drop(acks);
    result.map(|()| ExitCode::SUCCESS)
}

/// The controller's world and plan, as the autoscaler and the activation
/// service follow them.
fn follow_view(
    mut view: watch::Receiver<Arc<ClusterView>>,
) -> (watch::Receiver<Arc<World>>, watch::Receiver<Arc<GatewayPlan>>) {
    let current = view.borrow_and_update().clone();
    let (world_tx, world) = watch::channel(Arc::new(current.world.clone()));
    let (plan_tx, plan) = watch::channel(Arc::new(current.plan.clone()));
    tokio::spawn(async move {
        while view.changed().await.is_ok() {
            let current = view.borrow_and_update().clone();
            replace_if_changed(&world_tx, current.world.clone());
            replace_if_changed(&plan_tx, current.plan.clone());
        }
    });
    (world, plan)
}

/// What the gateways measured of a rollout candidate in its current step,
/// from the activation API's counters (see [`StepSampler`]).
fn candidate_figures(reports: Arc<std::sync::OnceLock<ActivationService>>) -> revgate_kube::rollouts::CandidateFigures {
    let sampler = std::sync::Mutex::new(StepSampler::default());
    Arc::new(move |revision: &ObjectKey, step: usize| {
        let Some(counters) = reports.get().and_then(|a| a.counters().remove(revision)) else {
            return StepMeasurement::default();
        };
        // A small lock of plain data, never held across an `.await`.
        let mut sampler = sampler.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sampler.measure(revision, step, &counters)
    })
}
