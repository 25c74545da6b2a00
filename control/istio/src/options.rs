//! [`RenderOptions`]: the knobs of cluster mode on Istio, with the defaults
//! of a stock Istio + net-istio install, validated once at the edge.

use std::collections::BTreeMap;

use crate::meta::OwnerUids;

/// net-istio's `config-istio` default external gateway.
pub const DEFAULT_INGRESS_GATEWAY: &str = "knative-serving/knative-ingress-gateway";
/// net-istio's `config-istio` default cluster-local gateway.
pub const DEFAULT_LOCAL_GATEWAY: &str = "knative-serving/knative-local-gateway";
/// The Kubernetes Service in front of the default local gateway's pods.
pub const DEFAULT_LOCAL_GATEWAY_SERVICE: &str = "knative-local-gateway.istio-system.svc.cluster.local";
/// Namespace of the stock `istio-ingressgateway` pods.
pub const DEFAULT_GATEWAY_NAMESPACE: &str = "istio-system";
/// Label of the stock `istio-ingressgateway` pods (also the pods behind
/// Knative's local gateway, so one plugin covers both).
pub const DEFAULT_GATEWAY_SELECTOR: (&str, &str) = ("istio", "ingressgateway");
/// Where `scripts/build-filter-oci.sh` tells users to push the filter image.
pub const DEFAULT_WASM_URL: &str = concat!("oci://ghcr.io/revgate/revgate-filter:", env!("CARGO_PKG_VERSION"));
/// Knative's `config-deployment` `progress-deadline` (600s).
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: u32 = 600;

/// Everything about the cluster that the Knative manifests do not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// The Istio Gateway (`namespace/name`) that public hosts are bound to.
    /// Default [`DEFAULT_INGRESS_GATEWAY`].
    pub ingress_gateway: String,
    /// The gateway for in-cluster hosts (`r.ns`, `r.ns.svc`,
    /// `r.ns.svc.cluster.local`) of clients without a sidecar. Default
    /// [`LocalGateway::default`]. `None`: in-cluster hosts are served by
    /// sidecars only (the `-mesh` VirtualService).
    pub local_gateway: Option<LocalGateway>,
    /// Namespace of the gateway pods; the WasmPlugin must live there,
    /// because its selector only matches pods of its own namespace.
    pub gateway_namespace: String,
    /// Labels of the gateway pods the filter is installed in.
    pub gateway_selector: BTreeMap<String, String>,
    /// The filter module: `oci://…` (the default scheme), `https://…/x.wasm` or `file:///…`.
    pub wasm_url: String,
    /// Expected SHA-256 of the module (64 lowercase hex digits), if pinned.
    pub wasm_sha256: Option<String>,
    /// Where in the gateway's filter chain the filter runs.
    pub wasm_phase: PluginPhase,
    /// revgate's activation service, which the filter calls.
    pub activation_service: ActivationService,
    /// `progressDeadlineSeconds` of revision Deployments without a
    /// `serving.knative.dev/progress-deadline` annotation.
    pub progress_deadline_seconds: u32,
    /// UIDs of the Routes and Revisions, for owner references.
    pub owner_uids: OwnerUids,
}

impl Default for RenderOptions {
    fn default() -> Self {
        let (key, value) = DEFAULT_GATEWAY_SELECTOR;
        Self {
            ingress_gateway: DEFAULT_INGRESS_GATEWAY.to_string(),
            local_gateway: Some(LocalGateway::default()),
            gateway_namespace: DEFAULT_GATEWAY_NAMESPACE.to_string(),
            gateway_selector: BTreeMap::from([(key.to_string(), value.to_string())]),
            wasm_url: DEFAULT_WASM_URL.to_string(),
            wasm_sha256: None,
            wasm_phase: PluginPhase::default(),
            activation_service: ActivationService::default(),
            progress_deadline_seconds: DEFAULT_PROGRESS_DEADLINE_SECONDS,
            owner_uids: OwnerUids::default(),
        }
    }
}

/// Knative's cluster-local gateway: an Istio Gateway for the VirtualServices
/// to bind to, and the Kubernetes Service clients reach it by, which each
/// route's own Service points at (net-istio's `config-istio`
/// `local-gateways` entry: `name`, `namespace`, `service`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalGateway {
    /// The Istio Gateway, `namespace/name`.
    pub gateway: String,
    /// The host of its Kubernetes Service, e.g. [`DEFAULT_LOCAL_GATEWAY_SERVICE`].
    pub service: String,
}

impl Default for LocalGateway {
    fn default() -> Self {
        Self { gateway: DEFAULT_LOCAL_GATEWAY.to_string(), service: DEFAULT_LOCAL_GATEWAY_SERVICE.to_string() }
    }
}

/// The Kubernetes Service of revgate's activation API (`revgate serve`'s
/// `--activation-addr`), as the gateway reaches it through Istio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationService {
    pub name: String,
    pub namespace: String,
    /// The Service port (Istio names clusters by Service port, not target port).
    pub port: u16,
}

impl Default for ActivationService {
    fn default() -> Self {
        Self { name: "revgate".to_string(), namespace: "revgate-system".to_string(), port: 9091 }
    }
}

/// Istio's `WasmPlugin.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PluginPhase {
    /// Before Istio's authentication filters.
    Authn,
    /// After authentication, before authorization.
    Authz,
    /// After authorization, before Istio's stats filter. The default: a
    /// request that Istio's policies reject is rejected before it can wake
    /// a revision or take a place in the hold queue, and the security
    /// filters that may rewrite headers (and so re-pick the route) have run
    /// by then, so the cluster the filter reads is the one the router uses.
    #[default]
    Stats,
    /// Istio decides (in practice: last, just before the router).
    Unspecified,
}

impl PluginPhase {
    /// The value in the WasmPlugin; `None` leaves the field out.
    pub fn as_istio(self) -> Option<&'static str> {
        match self {
            PluginPhase::Authn => Some("AUTHN"),
            PluginPhase::Authz => Some("AUTHZ"),
            PluginPhase::Stats => Some("STATS"),
            PluginPhase::Unspecified => None,
        }
    }

    /// Parses `AUTHN`, `AUTHZ`, `STATS` or `UNSPECIFIED` (any case).
    pub fn parse(text: &str) -> Result<Self, OptionsError> {
        match text.to_ascii_uppercase().as_str() {
            "AUTHN" => Ok(PluginPhase::Authn),
            "AUTHZ" => Ok(PluginPhase::Authz),
            "STATS" => Ok(PluginPhase::Stats),
            "UNSPECIFIED" | "UNSPECIFIED_PHASE" => Ok(PluginPhase::Unspecified),
            _ => Err(OptionsError::Phase { value: text.to_string() }),
        }
    }
}

/// An option that cannot produce valid objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("gateway {value:?} ({option}) must be `namespace/name`, e.g. {DEFAULT_INGRESS_GATEWAY:?}")]
    Gateway { option: &'static str, value: String },
    #[error("{option} {value:?} is not a Kubernetes name (lowercase letters, digits and '-', at most 63)")]
    Name { option: &'static str, value: String },
    #[error("{option} {value:?} is not a host name, e.g. {DEFAULT_LOCAL_GATEWAY_SERVICE:?}")]
    Host { option: &'static str, value: String },
    #[error("the gateway selector needs at least one label, e.g. istio=ingressgateway")]
    EmptySelector,
    #[error("wasm url is empty; give an oci://, https:// or file:// location of the filter module")]
    EmptyUrl,
    #[error("wasm sha256 {value:?} must be 64 lowercase hex digits")]
    Sha256 { value: String },
    #[error("wasm phase {value:?} must be one of AUTHN, AUTHZ, STATS, UNSPECIFIED")]
    Phase { value: String },
    #[error("activation service port must be 1-65535")]
    Port,
    #[error("progress deadline must be at least 1 second")]
    ProgressDeadline,
}

impl RenderOptions {
    /// Checks every option; the error names the first bad one.
    pub fn validate(&self) -> Result<(), OptionsError> {
        check_gateway("ingress gateway", &self.ingress_gateway)?;
        if let Some(local) = &self.local_gateway {
            check_gateway("local gateway", &local.gateway)?;
            if !is_dns_subdomain(&local.service) {
                return Err(OptionsError::Host { option: "local gateway service", value: local.service.clone() });
            }
        }
        check_name("gateway namespace", &self.gateway_namespace)?;
        if self.gateway_selector.is_empty() {
            return Err(OptionsError::EmptySelector);
        }
        if self.wasm_url.trim().is_empty() {
            return Err(OptionsError::EmptyUrl);
        }
        if let Some(sha) = &self.wasm_sha256
            && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            return Err(OptionsError::Sha256 { value: sha.clone() });
        }
        check_name("activation service name", &self.activation_service.name)?;
        check_name("activation service namespace", &self.activation_service.namespace)?;
        if self.activation_service.port == 0 {
            return Err(OptionsError::Port);
        }
        if self.progress_deadline_seconds == 0 {
            return Err(OptionsError::ProgressDeadline);
        }
        Ok(())
    }
}

fn check_gateway(option: &'static str, value: &str) -> Result<(), OptionsError> {
    let bad = || OptionsError::Gateway { option, value: value.to_string() };
    let (namespace, name) = value.split_once('/').ok_or_else(bad)?;
    if is_dns_label(namespace) && is_dns_label(name) { Ok(()) } else { Err(bad()) }
}

fn check_name(option: &'static str, value: &str) -> Result<(), OptionsError> {
    if is_dns_label(value) { Ok(()) } else { Err(OptionsError::Name { option, value: value.to_string() }) }
}

fn is_dns_subdomain(value: &str) -> bool {
    value.len() <= 253 && value.split('.').all(is_dns_label)
}

fn is_dns_label(value: &str) -> bool {
    revgate_model::validation::check_dns1123(value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_options_are_named() {
        assert_eq!(RenderOptions::default().validate(), Ok(()));
        let cases: Vec<(RenderOptions, &str)> = vec![
            (
                RenderOptions { ingress_gateway: "knative-ingress-gateway".into(), ..Default::default() },
                "ingress gateway",
            ),
            (
                RenderOptions {
                    local_gateway: Some(LocalGateway { gateway: "a/B".into(), ..LocalGateway::default() }),
                    ..Default::default()
                },
                "local gateway",
            ),
            (
                RenderOptions {
                    local_gateway: Some(LocalGateway { service: "http://gw".into(), ..LocalGateway::default() }),
                    ..Default::default()
                },
                "local gateway service",
            ),
            (RenderOptions { wasm_url: " ".into(), ..Default::default() }, "wasm url"),
            (RenderOptions { wasm_sha256: Some("ABC".into()), ..Default::default() }, "sha256"),
            (RenderOptions { gateway_selector: BTreeMap::new(), ..Default::default() }, "selector"),
            (RenderOptions { gateway_namespace: "Istio".into(), ..Default::default() }, "gateway namespace"),
        ];
        for (options, needle) in cases {
            let error = options.validate().expect_err(needle).to_string();
            assert!(error.contains(needle), "{error:?} should mention {needle:?}");
        }
        assert_eq!(PluginPhase::parse("authz"), Ok(PluginPhase::Authz));
        assert!(PluginPhase::parse("LATE").is_err());
    }
}
