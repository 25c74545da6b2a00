//! Every name revgate derives: revision names, the children of a Service,
//! and route hosts (Knative's `domain-template` and `tag-template`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::meta::{LEGACY_VISIBILITY_LABEL, VISIBILITY_CLUSTER_LOCAL, VISIBILITY_LABEL};
use crate::plan::ObjectKey;

/// Longest Kubernetes object name that is also a DNS label.
pub const MAX_NAME_LENGTH: usize = 63;

/// Name of the Configuration a Service owns.
pub fn service_configuration(service: &str) -> String {
    service.to_string()
}

/// Name of the Route a Service owns.
pub fn service_route(service: &str) -> String {
    service.to_string()
}

/// Name of the revision created for a Configuration generation without a
/// template name: `hello-00001`, `hello-00002`…
pub fn revision_name(configuration: &str, generation: i64) -> String {
    child_name(configuration, &format!("-{generation:05}"))
}

/// `parent + suffix`, shortened to a valid name when too long: the parent is
/// cut and a hash of it keeps shortened names distinct.
pub fn child_name(parent: &str, suffix: &str) -> String {
    if parent.len() + suffix.len() <= MAX_NAME_LENGTH {
        return format!("{parent}{suffix}");
    }
    let digest = Sha256::digest(parent.as_bytes());
    let mut hash = String::new();
    for byte in &digest[..4] {
        let _ = write!(hash, "{byte:02x}");
    }
    let keep = MAX_NAME_LENGTH.saturating_sub(suffix.len() + hash.len());
    let cut: String = parent.chars().take(keep).collect();
    format!("{cut}{hash}{suffix}")
}

/// Whether labels keep a route off the public domain.
pub fn is_cluster_local(labels: &BTreeMap<String, String>) -> bool {
    [VISIBILITY_LABEL, LEGACY_VISIBILITY_LABEL]
        .iter()
        .any(|k| labels.get(*k).map(String::as_str) == Some(VISIBILITY_CLUSTER_LOCAL))
}

/// The in-cluster host of a route: `{name}.{namespace}.svc.cluster.local`.
pub fn cluster_local_host(route: &ObjectKey) -> String {
    format!("{}.{}.svc.cluster.local", route.name, route.namespace)
}

/// What a route's host is computed from.
#[derive(Debug, Clone, Copy)]
pub struct RouteNaming<'a> {
    pub key: &'a ObjectKey,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
}

/// The main host of a route. Cluster-local routes, and routes no
/// `config-domain` entry selects, get the in-cluster host.
pub fn route_host(route: RouteNaming<'_>, settings: &Settings) -> String {
    host_for_name(route, &route.key.name, settings)
}

/// The host of one tag of a route: `tag-template` gives the name, which then
/// goes through `domain-template` like a route name.
pub fn tag_host(route: RouteNaming<'_>, tag: &str, settings: &Settings) -> String {
    let name = settings.network.tag_template.render(&TemplateVars {
        name: &route.key.name,
        namespace: &route.key.namespace,
        tag,
        domain: "",
        labels: route.labels,
        annotations: route.annotations,
    });
    host_for_name(route, &name, settings)
}

fn host_for_name(route: RouteNaming<'_>, name: &str, settings: &Settings) -> String {
    let domain = if is_cluster_local(route.labels) { None } else { settings.domain.domain_for(route.labels) };
    match domain {
        None => cluster_local_host(&ObjectKey::new(route.key.namespace.clone(), name)),
        Some(domain) => settings.network.domain_template.render(&TemplateVars {
            name,
            namespace: &route.key.namespace,
            tag: "",
            domain,
            labels: route.labels,
            annotations: route.annotations,
        }),
    }
}

/// `http://{host}`.
pub fn url(host: &str) -> String {
    format!("http://{host}")
}

/// The variables a host template may use.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVars<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub tag: &'a str,
    pub domain: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
}

/// A host template in the subset of Go template syntax Knative's defaults
/// and documentation use: `{{.Name}}`, `{{.Namespace}}`, `{{.Domain}}`,
/// `{{.Tag}}`, and `{{index .Annotations "key"}}` / `{{index .Labels "key"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Name,
    Namespace,
    Domain,
    Tag,
    Annotation(String),
    Label(String),
}

/// A variable of a [`HostTemplate`], for checking that a template uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateVar {
    Name,
    Namespace,
    Domain,
    Tag,
}

impl HostTemplate {
    /// Knative's default `domain-template`, `{{.Name}}.{{.Namespace}}.{{.Domain}}`.
    pub fn default_domain_template() -> Self {
        let dot = || Part::Text(".".to_string());
        Self {
            text: crate::config::DEFAULT_DOMAIN_TEMPLATE.to_string(),
            parts: vec![Part::Name, dot(), Part::Namespace, dot(), Part::Domain],
        }
    }

    /// Knative's default `tag-template`, `{{.Tag}}-{{.Name}}`.
    pub fn default_tag_template() -> Self {
        Self {
            text: crate::config::DEFAULT_TAG_TEMPLATE.to_string(),
            parts: vec![Part::Tag, Part::Text("-".to_string()), Part::Name],
        }
    }

    /// Parses a template; the error says which expression is not understood.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| format!("unclosed \"{{{{\" in {text:?}"))?;
            parts.push(Self::parse_action(after[..end].trim())?);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self { text: text.to_string(), parts })
    }

    fn parse_action(action: &str) -> Result<Part, String> {
        let action = action.trim_start_matches('-').trim_end_matches('-').trim();
        let simple = match action {
            ".Name" => Some(Part::Name),
            ".Namespace" => Some(Part::Namespace),
            ".Domain" => Some(Part::Domain),
            ".Tag" => Some(Part::Tag),
            _ => None,
        };
        if let Some(part) = simple {
            return Ok(part);
        }
        let words: Vec<&str> = action.split_whitespace().collect();
        if let ["index", map, key] = words.as_slice() {
            let key = key
                .strip_prefix('"')
                .and_then(|k| k.strip_suffix('"'))
                .ok_or_else(|| format!("expected a quoted key in {{{{{action}}}}}"))?;
            match *map {
                ".Annotations" => return Ok(Part::Annotation(key.to_string())),
                ".Labels" => return Ok(Part::Label(key.to_string())),
                _ => {}
            }
        }
        Err(format!(
            "unsupported expression {{{{{action}}}}}; use .Name, .Namespace, .Domain, .Tag, \
             index .Annotations \"key\" or index .Labels \"key\""
        ))
    }

    pub fn uses(&self, var: TemplateVar) -> bool {
        self.parts.iter().any(|p| {
            matches!(
                (p, var),
                (Part::Name, TemplateVar::Name)
                    | (Part::Namespace, TemplateVar::Namespace)
                    | (Part::Domain, TemplateVar::Domain)
                    | (Part::Tag, TemplateVar::Tag)
            )
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The template rendered with placeholder values (`name`, `namespace`,
    /// `tag`, `example.com`, and `value` for any annotation or label), to
    /// check that it produces a valid host.
    pub fn render_sample(&self) -> String {
        let empty = BTreeMap::new();
        let vars = TemplateVars {
            name: "name",
            namespace: "namespace",
            tag: "tag",
            domain: "example.com",
            labels: &empty,
            annotations: &empty,
        };
        self.render_with(&vars, &|_| "value")
    }

    pub fn render(&self, vars: &TemplateVars<'_>) -> String {
        self.render_with(vars, &|_| "")
    }

    fn render_with(&self, vars: &TemplateVars<'_>, missing: &dyn Fn(&str) -> &'static str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Name => out.push_str(vars.name),
                Part::Namespace => out.push_str(vars.namespace),
                Part::Domain => out.push_str(vars.domain),
                Part::Tag => out.push_str(vars.tag),
                Part::Annotation(k) => out.push_str(vars.annotations.get(k).map(String::as_str).unwrap_or(missing(k))),
                Part::Label(k) => out.push_str(vars.labels.get(k).map(String::as_str).unwrap_or(missing(k))),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_names_are_numbered_by_generation() {
        for (config, generation, want) in
            [("hello", 1, "hello-00001"), ("hello", 42, "hello-00042"), ("hello", 123_456, "hello-123456")]
        {
            assert_eq!(revision_name(config, generation), want);
        }
    }

    #[test]
    fn long_child_names_are_shortened_and_stay_distinct() {
        let a = "a".repeat(60);
        let b = format!("{}b", "a".repeat(59));
        let (ra, rb) = (revision_name(&a, 1), revision_name(&b, 1));
        assert_eq!(ra.len(), MAX_NAME_LENGTH);
        assert!(ra.ends_with("-00001"));
        assert_ne!(ra, rb);
    }

    #[test]
    fn built_in_templates_equal_their_parsed_text() {
        for t in [HostTemplate::default_domain_template(), HostTemplate::default_tag_template()] {
            assert_eq!(HostTemplate::parse(t.as_str()), Ok(t.clone()));
        }
    }

    #[test]
    fn templates_render_their_variables() {
        let annotations = BTreeMap::from([("team".to_string(), "blue".to_string())]);
        let labels = BTreeMap::new();
        let vars = TemplateVars {
            name: "hello",
            namespace: "prod",
            tag: "",
            domain: "example.org",
            labels: &labels,
            annotations: &annotations,
        };
        for (template, want) in [
            ("{{.Name}}.{{.Namespace}}.{{.Domain}}", "hello.prod.example.org"),
            ("{{ .Name }}-{{ .Namespace }}.{{ .Domain }}", "hello-prod.example.org"),
            ("{{.Name}}.{{index .Annotations \"team\"}}.{{.Domain}}", "hello.blue.example.org"),
        ] {
            let t = HostTemplate::parse(template).expect(template);
            assert_eq!(t.render(&vars), want, "{template}");
        }
        assert!(HostTemplate::parse("{{.Name}}.{{.Bogus}}").is_err());
        assert!(HostTemplate::parse("{{.Name").is_err());
    }
}
