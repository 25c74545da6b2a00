//! Host templates: the subset of Go's template syntax that Knative's
//! `domain-template` and `tag-template` (in `config-network`) are written
//! in. Parsed when the ConfigMap is applied ([`crate::config`]), rendered
//! for every route host ([`crate::names`]).

use std::collections::BTreeMap;

/// Knative's default `domain-template`.
pub const DEFAULT_DOMAIN_TEMPLATE: &str = "{{.Name}}.{{.Namespace}}.{{.Domain}}";
/// Knative's default `tag-template`.
pub const DEFAULT_TAG_TEMPLATE: &str = "{{.Tag}}-{{.Name}}";

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
            text: DEFAULT_DOMAIN_TEMPLATE.to_string(),
            parts: vec![Part::Name, dot(), Part::Namespace, dot(), Part::Domain],
        }
    }

    /// Knative's default `tag-template`, `{{.Tag}}-{{.Name}}`.
    pub fn default_tag_template() -> Self {
        Self { text: DEFAULT_TAG_TEMPLATE.to_string(), parts: vec![Part::Tag, Part::Text("-".to_string()), Part::Name] }
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
