//! [`ControllerConfig`]: what `revgate controller` is told, validated once
//! before anything starts.

use std::time::Duration;

use revgate_istio::{OptionsError, RenderOptions};
use revgate_model::validation::check_dns1123;

use crate::leader::LeaseSettings;
use crate::reconcile::DEFAULT_RESYNC;

/// Namespace of the Lease by default: where revgate's own manifests install it.
pub const DEFAULT_LEASE_NAMESPACE: &str = "revgate-system";
/// Name of the Lease by default.
pub const DEFAULT_LEASE_NAME: &str = "revgate-controller";

/// Everything the controller needs besides a Kubernetes client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Namespaces whose Knative objects the controller serves; empty: all.
    /// With a list, the controller needs no cluster-wide permission on the
    /// namespaced kinds, only in these namespaces.
    pub namespaces: Vec<String>,
    /// The Lease that elects the one replica that writes, and this
    /// replica's identity in it (by convention the pod name).
    pub lease: LeaseSettings,
    /// Gateways, the filter module, the activation Service: what the
    /// Knative manifests do not say. Owner UIDs are filled in per pass.
    pub render: RenderOptions,
    /// How often each namespace is reconciled without a change.
    pub resync: Duration,
    /// The token the gateway filters present to the activation API, added
    /// to the WasmPlugin's pluginConfig when the leader installs it.
    pub gateway_token: Option<PluginToken>,
    /// Where the rollout gates read what the gateways measured of each
    /// candidate (the activation API's reports); without it gated rollouts wait.
    pub figures: FiguresSource,
}

/// The rollout gates' source of candidate figures. Wiring rather than
/// configuration: any two compare equal.
#[derive(Clone, Default)]
pub struct FiguresSource(pub Option<crate::rollouts::CandidateFigures>);

impl std::fmt::Debug for FiguresSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "FiguresSource(set)" } else { "FiguresSource(unset)" })
    }
}

impl PartialEq for FiguresSource {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for FiguresSource {}

/// The filter's knob carrying the gateway token (`wasm-filter`'s config).
pub const TOKEN_KNOB: &str = "token";

/// The gateway token as the WasmPlugin carries it. Its `Debug` never shows
/// it: the configuration is logged.
#[derive(Clone, PartialEq, Eq)]
pub struct PluginToken(String);

impl PluginToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// Sets the filter's `token` knob in `plugin`.
    pub fn add_to(&self, plugin: &mut revgate_istio::WasmPlugin) {
        plugin.spec.plugin_config.insert(TOKEN_KNOB.to_owned(), serde_json::Value::String(self.0.clone()));
    }
}

impl std::fmt::Debug for PluginToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginToken(<redacted>)")
    }
}

impl ControllerConfig {
    /// Defaults for a replica named `identity`: all namespaces, the Lease
    /// `revgate-system/revgate-controller` with client-go's timing, and the
    /// stock Istio + net-istio gateways.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            namespaces: Vec::new(),
            lease: LeaseSettings::new(DEFAULT_LEASE_NAMESPACE, DEFAULT_LEASE_NAME, identity),
            render: RenderOptions::default(),
            resync: DEFAULT_RESYNC,
            gateway_token: None,
            figures: FiguresSource::default(),
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for namespace in &self.namespaces {
            check_dns1123(namespace).map_err(|message| ConfigError::Namespace { message })?;
        }
        check_dns1123(&self.lease.namespace).map_err(|message| ConfigError::Lease { field: "namespace", message })?;
        check_dns1123(&self.lease.name).map_err(|message| ConfigError::Lease { field: "name", message })?;
        if self.lease.identity.trim().is_empty() {
            return Err(ConfigError::Identity);
        }
        let l = &self.lease;
        if l.retry_period.is_zero() || l.renew_deadline <= l.retry_period || l.lease_duration <= l.renew_deadline {
            return Err(ConfigError::Timing {
                lease_duration: l.lease_duration,
                renew_deadline: l.renew_deadline,
                retry_period: l.retry_period,
            });
        }
        if self.resync.is_zero() {
            return Err(ConfigError::Resync);
        }
        self.render.validate()?;
        Ok(())
    }
}

/// A configuration the controller cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--namespace: {message}")]
    Namespace { message: String },
    #[error("lease {field}: {message}")]
    Lease { field: &'static str, message: String },
    #[error("the replica identity is empty; pass the pod name (e.g. from the downward API's metadata.name)")]
    Identity,
    #[error(
        "lease timing must satisfy lease duration ({lease_duration:?}) > renew deadline ({renew_deadline:?}) > \
         retry period ({retry_period:?}) > 0, so a leader steps down before another replica can take over"
    )]
    Timing { lease_duration: Duration, renew_deadline: Duration, retry_period: Duration },
    #[error("the resync period must be positive")]
    Resync,
    #[error(transparent)]
    Render(#[from] OptionsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        assert_eq!(ControllerConfig::new("revgate-0").validate(), Ok(()));
        let mut bad = ControllerConfig::new("revgate-0");
        bad.namespaces = vec!["Not_A_Namespace".into()];
        assert!(matches!(bad.validate(), Err(ConfigError::Namespace { .. })));
        let mut bad = ControllerConfig::new(" ");
        assert_eq!(bad.validate(), Err(ConfigError::Identity));
        bad = ControllerConfig::new("revgate-0");
        bad.lease.renew_deadline = bad.lease.lease_duration;
        assert!(bad.validate().expect_err("timing").to_string().contains("lease duration"));
    }
}
