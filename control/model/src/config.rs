//! revgate's settings, read from the same ConfigMaps in namespace
//! `knative-serving` that configure Knative, with the same keys and defaults.
//!
//! | ConfigMap | keys read | default |
//! |---|---|---|
//! | `config-domain` | `<domain>: ""` (default domain) or `<domain>: "selector: {label: value}"` | `example.com` |
//! | `config-network` | `domain-template`, `tag-template`, `rollout-duration` (seconds) | `{{.Name}}.{{.Namespace}}.{{.Domain}}`, `{{.Tag}}-{{.Name}}`, `0` |
//! | `config-features` | `tag-header-based-routing` (`Enabled`/`Disabled`) | `Disabled` |
//! | `config-defaults` | `revision-timeout-seconds`, `max-revision-timeout-seconds`, `revision-response-start-timeout-seconds`, `revision-idle-timeout-seconds`, `container-concurrency`, `container-concurrency-max-limit` | 300, 600, 300, 0, 0, 1000 |
//! | `config-gc` | `retain-since-create-time`, `retain-since-last-active-time`, `min-non-active-revisions`, `max-non-active-revisions` (each but `min-…` also `disabled`) | 48h, 15h, 20, 1000 (see [`crate::gc`]) |
//! | `config-autoscaler` | `container-concurrency-target-percentage`, `container-concurrency-target-default`, `requests-per-second-target-default`, `target-burst-capacity`, `stable-window`, `panic-window-percentage`, `panic-threshold-percentage`, `max-scale-up-rate`, `max-scale-down-rate`, `enable-scale-to-zero`, `scale-to-zero-grace-period`, `scale-to-zero-pod-retention-period`, `activator-capacity`, `initial-scale`, `allow-zero-initial-scale`, `min-scale`, `max-scale`, `scale-down-delay`, `max-scale-limit`, `pod-autoscaler-class` | 70, 100, 200, 211, 60s, 10, 200, 1000, 2, true, 30s, 0s, 100, 1, false, 0, 0, 0s, 0, `kpa.autoscaling.knative.dev` (see [`crate::autoscaling`]) |
//!
//! Other keys are ignored, as Knative ignores keys it does not know (and
//! revgate does not use every key Knative does). Values are validated when
//! the ConfigMap is applied, so reading [`Settings`] never fails.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::autoscaling::{AUTOSCALER_CONFIG_MAP, AutoscalerConfig};
use crate::error::ConfigError;
use crate::gc::{GC_CONFIG_MAP, GcConfig};
use crate::host_template::{HostTemplate, TemplateVar};
use crate::meta::SYSTEM_NAMESPACE;
use crate::resources::ConfigMap;

pub const DOMAIN_CONFIG_MAP: &str = "config-domain";
pub const NETWORK_CONFIG_MAP: &str = "config-network";
pub const FEATURES_CONFIG_MAP: &str = "config-features";
pub const DEFAULTS_CONFIG_MAP: &str = "config-defaults";

pub const DEFAULT_DOMAIN: &str = "example.com";
pub use crate::host_template::{DEFAULT_DOMAIN_TEMPLATE, DEFAULT_TAG_TEMPLATE};

/// Everything configurable, with Knative's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub domain: DomainSettings,
    pub network: NetworkSettings,
    pub features: FeatureSettings,
    pub defaults: RevisionDefaults,
    pub autoscaler: AutoscalerConfig,
    /// `config-gc`: when revisions no longer routed are deleted.
    pub gc: GcConfig,
}

impl Settings {
    /// Settings from the given ConfigMaps; those outside `knative-serving`,
    /// or not named like a revgate config map, are ignored. A map with an
    /// invalid value is skipped (apply never stores one).
    pub fn from_config_maps<'a>(maps: impl IntoIterator<Item = &'a ConfigMap>) -> Self {
        let mut settings = Settings::default();
        for map in maps {
            let _ = settings.read(map);
        }
        settings
    }

    /// Reads one ConfigMap into these settings, or says which keys are invalid
    /// (then nothing is changed).
    pub fn read(&mut self, map: &ConfigMap) -> Result<(), Vec<ConfigError>> {
        if map.metadata.namespace != SYSTEM_NAMESPACE {
            return Ok(());
        }
        let data = &map.data;
        match map.metadata.name.as_str() {
            DOMAIN_CONFIG_MAP => self.domain = DomainSettings::parse(data)?,
            NETWORK_CONFIG_MAP => self.network = NetworkSettings::parse(data)?,
            FEATURES_CONFIG_MAP => self.features = FeatureSettings::parse(data)?,
            DEFAULTS_CONFIG_MAP => self.defaults = RevisionDefaults::parse(data)?,
            AUTOSCALER_CONFIG_MAP => self.autoscaler = AutoscalerConfig::parse(data)?,
            GC_CONFIG_MAP => self.gc = GcConfig::parse(data)?,
            _ => {}
        }
        Ok(())
    }

    /// Checks a ConfigMap without keeping it.
    pub fn check(map: &ConfigMap) -> Result<(), Vec<ConfigError>> {
        Settings::default().read(map)
    }
}

/// `config-domain`: which domain a route's host ends in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSettings {
    pub rules: Vec<DomainRule>,
}

/// A domain and the route labels that select it (none: the default domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRule {
    pub domain: String,
    pub selector: BTreeMap<String, String>,
}

impl Default for DomainSettings {
    fn default() -> Self {
        Self { rules: vec![DomainRule { domain: DEFAULT_DOMAIN.to_string(), selector: BTreeMap::new() }] }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorValue {
    #[serde(default)]
    selector: BTreeMap<String, String>,
}

impl DomainSettings {
    fn parse(data: &BTreeMap<String, String>) -> Result<Self, Vec<ConfigError>> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (key, value) in data {
            if key.starts_with('_') {
                continue; // `_example` documentation blocks
            }
            if let Err(e) = check_domain(key) {
                errors.push(ConfigError::new(key, e));
                continue;
            }
            let selector = if value.trim().is_empty() {
                BTreeMap::new()
            } else {
                match serde_yaml_ng::from_str::<SelectorValue>(value) {
                    Ok(v) => v.selector,
                    Err(e) => {
                        errors.push(ConfigError::new(
                            key,
                            format!("expected \"\" or a label selector such as \"selector: {{app: web}}\": {e}"),
                        ));
                        continue;
                    }
                }
            };
            rules.push(DomainRule { domain: key.clone(), selector });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if rules.is_empty() {
            return Ok(Self::default());
        }
        Ok(Self { rules })
    }

    /// The domain for a route with these labels: the matching rule with the
    /// most labels wins, ties go to the alphabetically first domain. `None`
    /// when no rule matches (the route is then only reachable in-cluster).
    pub fn domain_for(&self, labels: &BTreeMap<String, String>) -> Option<&str> {
        self.rules
            .iter()
            .filter(|r| r.selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .min_by(|a, b| b.selector.len().cmp(&a.selector.len()).then_with(|| a.domain.cmp(&b.domain)))
            .map(|r| r.domain.as_str())
    }
}

fn check_domain(domain: &str) -> Result<(), String> {
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() <= 253 && domain.split('.').all(valid_label) {
        Ok(())
    } else {
        Err(format!("{domain:?} is not a valid domain name (lowercase DNS labels separated by dots)"))
    }
}

/// `config-network`: host templates and the rollout duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    pub domain_template: HostTemplate,
    pub tag_template: HostTemplate,
    /// `rollout-duration`: seconds over which a `latestRevision` target moves
    /// to a new revision (0: at once), unless a Route's annotation says otherwise.
    pub rollout_duration_secs: u64,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            domain_template: HostTemplate::default_domain_template(),
            tag_template: HostTemplate::default_tag_template(),
            rollout_duration_secs: 0,
        }
    }
}

impl NetworkSettings {
    fn parse(data: &BTreeMap<String, String>) -> Result<Self, Vec<ConfigError>> {
        let mut settings = Self::default();
        let mut errors = Vec::new();
        if let Some(text) = data.get("domain-template") {
            const KEY: &str = "domain-template";
            match HostTemplate::parse(text) {
                Err(e) => errors.push(ConfigError::new(KEY, e)),
                Ok(t) if !t.uses(TemplateVar::Name) => {
                    errors.push(ConfigError::new(KEY, "must use {{.Name}}, or every route would get the same host"))
                }
                Ok(t) => match check_domain(&t.render_sample()) {
                    Err(e) => errors.push(ConfigError::new(KEY, format!("does not produce a host name: {e}"))),
                    Ok(()) => settings.domain_template = t,
                },
            }
        }
        if let Some(text) = data.get("tag-template") {
            const KEY: &str = "tag-template";
            match HostTemplate::parse(text) {
                Err(e) => errors.push(ConfigError::new(KEY, e)),
                Ok(t) if !(t.uses(TemplateVar::Tag) && t.uses(TemplateVar::Name)) => errors.push(ConfigError::new(
                    KEY,
                    "must use both {{.Tag}} and {{.Name}}, or tags of different routes would share a host",
                )),
                Ok(t) => settings.tag_template = t,
            }
        }
        if let Some(text) = data.get("rollout-duration") {
            // Knative reads it as a whole number of seconds, not negative.
            match text.trim().parse::<i64>() {
                Ok(secs) if secs >= 0 => settings.rollout_duration_secs = secs.unsigned_abs(),
                Ok(_) => {
                    errors.push(ConfigError::new("rollout-duration", format!("must be a positive number, was: {text}")))
                }
                Err(_) => errors.push(ConfigError::new(
                    "rollout-duration",
                    format!("{text:?} is not a whole number of seconds, e.g. \"120\""),
                )),
            }
        }
        if errors.is_empty() { Ok(settings) } else { Err(errors) }
    }
}

/// `config-features`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeatureSettings {
    /// `tag-header-based-routing`: the `Knative-Serving-Tag` request header selects a tag.
    pub tag_header_based_routing: bool,
}

impl FeatureSettings {
    fn parse(data: &BTreeMap<String, String>) -> Result<Self, Vec<ConfigError>> {
        const KEY: &str = "tag-header-based-routing";
        let mut settings = Self::default();
        if let Some(value) = data.get(KEY) {
            settings.tag_header_based_routing = match value.trim().to_ascii_lowercase().as_str() {
                "enabled" => true,
                // "Allowed" lets a revision opt in elsewhere in Knative; for this flag it means off.
                "disabled" | "allowed" | "" => false,
                _ => {
                    return Err(vec![ConfigError::new(
                        KEY,
                        format!("expected \"Enabled\" or \"Disabled\", got {value:?}"),
                    )]);
                }
            };
        }
        Ok(settings)
    }
}

/// `config-defaults`: revision defaults and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionDefaults {
    pub revision_timeout_seconds: i64,
    pub max_revision_timeout_seconds: i64,
    pub revision_response_start_timeout_seconds: i64,
    pub revision_idle_timeout_seconds: i64,
    pub container_concurrency: i64,
    pub container_concurrency_max_limit: i64,
}

impl Default for RevisionDefaults {
    fn default() -> Self {
        Self {
            revision_timeout_seconds: 300,
            max_revision_timeout_seconds: 600,
            revision_response_start_timeout_seconds: 300,
            revision_idle_timeout_seconds: 0,
            container_concurrency: 0,
            container_concurrency_max_limit: 1000,
        }
    }
}

impl RevisionDefaults {
    fn parse(data: &BTreeMap<String, String>) -> Result<Self, Vec<ConfigError>> {
        let mut d = Self::default();
        let mut errors = Vec::new();
        let mut read = |key: &str, field: &mut i64| -> bool {
            let Some(value) = data.get(key) else {
                return false;
            };
            match value.trim().parse::<i64>() {
                Ok(n) if n >= 0 => {
                    *field = n;
                    true
                }
                _ => {
                    errors.push(ConfigError::new(key, format!("expected a non-negative integer, got {value:?}")));
                    false
                }
            }
        };
        read("revision-timeout-seconds", &mut d.revision_timeout_seconds);
        read("max-revision-timeout-seconds", &mut d.max_revision_timeout_seconds);
        let response_start_given =
            read("revision-response-start-timeout-seconds", &mut d.revision_response_start_timeout_seconds);
        read("revision-idle-timeout-seconds", &mut d.revision_idle_timeout_seconds);
        read("container-concurrency", &mut d.container_concurrency);
        read("container-concurrency-max-limit", &mut d.container_concurrency_max_limit);
        if !errors.is_empty() {
            return Err(errors);
        }
        if d.revision_timeout_seconds == 0 {
            errors.push(ConfigError::new("revision-timeout-seconds", "must be at least 1"));
        }
        if d.revision_timeout_seconds > d.max_revision_timeout_seconds {
            errors.push(ConfigError::new(
                "revision-timeout-seconds",
                format!(
                    "{} exceeds max-revision-timeout-seconds ({})",
                    d.revision_timeout_seconds, d.max_revision_timeout_seconds
                ),
            ));
        }
        if response_start_given {
            if d.revision_response_start_timeout_seconds > d.revision_timeout_seconds {
                errors.push(ConfigError::new(
                    "revision-response-start-timeout-seconds",
                    format!(
                        "{} exceeds revision-timeout-seconds ({})",
                        d.revision_response_start_timeout_seconds, d.revision_timeout_seconds
                    ),
                ));
            }
        } else {
            // Waiting for a first byte longer than the whole request may take is meaningless.
            d.revision_response_start_timeout_seconds =
                d.revision_response_start_timeout_seconds.min(d.revision_timeout_seconds);
        }
        if d.container_concurrency_max_limit == 0 {
            errors.push(ConfigError::new("container-concurrency-max-limit", "must be at least 1"));
        }
        if d.container_concurrency > d.container_concurrency_max_limit {
            errors.push(ConfigError::new(
                "container-concurrency",
                format!(
                    "{} exceeds container-concurrency-max-limit ({})",
                    d.container_concurrency, d.container_concurrency_max_limit
                ),
            ));
        }
        if errors.is_empty() { Ok(d) } else { Err(errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::ObjectMeta;

    fn map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            metadata: ObjectMeta { name: name.into(), namespace: SYSTEM_NAMESPACE.into(), ..Default::default() },
            data: data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn defaults_match_knative() {
        let s = Settings::default();
        assert_eq!(s.domain.domain_for(&BTreeMap::new()), Some("example.com"));
        assert_eq!(s.network.domain_template.as_str(), DEFAULT_DOMAIN_TEMPLATE);
        assert_eq!(s.network.tag_template.as_str(), DEFAULT_TAG_TEMPLATE);
        assert!(!s.features.tag_header_based_routing);
        assert_eq!(s.defaults.revision_timeout_seconds, 300);
        assert_eq!(s.defaults.max_revision_timeout_seconds, 600);
        assert_eq!(s.defaults.container_concurrency_max_limit, 1000);
        assert_eq!(s.network.rollout_duration_secs, 0, "config-network rollout-duration: immediate");
        let rolling = Settings::from_config_maps([&map(NETWORK_CONFIG_MAP, &[("rollout-duration", "120")])]);
        assert_eq!(rolling.network.rollout_duration_secs, 120);
    }

    #[test]
    fn domain_selectors_pick_the_most_specific_match() {
        let s = Settings::from_config_maps([&map(
            DOMAIN_CONFIG_MAP,
            &[("example.org", ""), ("nonprofit.org", "selector:\n  app: nonprofit\n"), ("_example", "docs")],
        )]);
        assert_eq!(s.domain.domain_for(&BTreeMap::new()), Some("example.org"));
        let labels = BTreeMap::from([("app".to_string(), "nonprofit".to_string())]);
        assert_eq!(s.domain.domain_for(&labels), Some("nonprofit.org"));
        let only_selected = Settings::from_config_maps([&map(DOMAIN_CONFIG_MAP, &[("a.org", "selector: {app: a}")])]);
        assert_eq!(only_selected.domain.domain_for(&BTreeMap::new()), None);
    }

    #[test]
    fn invalid_values_name_their_key() {
        for (name, data, key) in [
            (DOMAIN_CONFIG_MAP, &[("Bad_Domain", "")][..], "Bad_Domain"),
            (DOMAIN_CONFIG_MAP, &[("a.org", "selector: [1]")][..], "a.org"),
            (NETWORK_CONFIG_MAP, &[("domain-template", "{{.Namespace}}.{{.Domain}}")][..], "domain-template"),
            (NETWORK_CONFIG_MAP, &[("tag-template", "{{.Name}}")][..], "tag-template"),
            (NETWORK_CONFIG_MAP, &[("rollout-duration", "-5")][..], "rollout-duration"),
            (NETWORK_CONFIG_MAP, &[("rollout-duration", "2m")][..], "rollout-duration"),
            (NETWORK_CONFIG_MAP, &[("domain-template", "{{.Name}}.{{.Oops}}")][..], "domain-template"),
            (FEATURES_CONFIG_MAP, &[("tag-header-based-routing", "yes")][..], "tag-header-based-routing"),
            (DEFAULTS_CONFIG_MAP, &[("revision-timeout-seconds", "ten")][..], "revision-timeout-seconds"),
            (DEFAULTS_CONFIG_MAP, &[("revision-timeout-seconds", "900")][..], "revision-timeout-seconds"),
            (DEFAULTS_CONFIG_MAP, &[("container-concurrency", "2000")][..], "container-concurrency"),
            (AUTOSCALER_CONFIG_MAP, &[("stable-window", "5s")][..], "stable-window"),
            (GC_CONFIG_MAP, &[("retain-since-create-time", "2 days")][..], "retain-since-create-time"),
            (GC_CONFIG_MAP, &[("max-non-active-revisions", "-1")][..], "max-non-active-revisions"),
        ] {
            let errors = Settings::check(&map(name, data)).expect_err(key);
            assert_eq!(errors[0].key, key, "{errors:?}");
        }
    }

    #[test]
    fn maps_outside_the_system_namespace_are_ignored() {
        let mut m = map(FEATURES_CONFIG_MAP, &[("tag-header-based-routing", "nonsense")]);
        m.metadata.namespace = "default".into();
        assert!(Settings::check(&m).is_ok());
    }
}
