//! Reading manifest files: multi-document YAML (or JSON) into typed resources.
//!
//! A manifest that works with `kubectl apply` against Knative must work here
//! unchanged. Fields the CRD schema does not declare are rejected (see
//! `schema`), except in the parts the schema leaves open, which are kept.
//!
//! Text is read through [`crate::decode`], so that depth, expanded size and
//! duplicate keys are checked before anything else; every object's identity
//! (kind, name, namespace) is checked as Kubernetes checks it. `delete -f`
//! reads only that identity ([`parse_references`]), as `kubectl` deletes by
//! reference.
//!
//! Files mixing Knative objects with kinds revgate does not manage (a
//! Deployment and a Kubernetes Service next to a Knative Service, as
//! Knative's own test setups are written) are read as [`OtherKinds`] says:
//! by default each such document is skipped and reported as a [`Skipped`]
//! line; with [`OtherKinds::Reject`] (`--strict`) it is an error. A kind
//! of a Knative API group that revgate does not accept (a `Revision`, a
//! `PodAutoscaler`) is always an error: skipping it would silently leave
//! out something the user meant Knative to act on.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{self, Budget, DecodeError};
use crate::domainmapping::{DOMAIN_MAPPING_API_VERSION, DomainMapping};
pub use crate::error::SourceRef;
use crate::error::{FieldError, ManifestError};
use crate::meta::{DEFAULT_NAMESPACE, SERVING_API_VERSION};
use crate::plan::ObjectKey;
use crate::resources::{ConfigMap, Configuration, Route, Service};
use crate::schema::{self, Shape};
use crate::validation;

/// An object a user can apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Resource {
    Service(Service),
    Configuration(Configuration),
    Route(Route),
    ConfigMap(ConfigMap),
    DomainMapping(DomainMapping),
}

impl Resource {
    /// The kind as written in manifests.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Service(_) => "Service",
            Resource::Configuration(_) => "Configuration",
            Resource::Route(_) => "Route",
            Resource::ConfigMap(_) => "ConfigMap",
            Resource::DomainMapping(_) => "DomainMapping",
        }
    }

    pub fn key(&self) -> ObjectKey {
        match self {
            Resource::Service(o) => o.metadata.key(),
            Resource::Configuration(o) => o.metadata.key(),
            Resource::Route(o) => o.metadata.key(),
            Resource::ConfigMap(o) => o.metadata.key(),
            Resource::DomainMapping(o) => o.metadata.key(),
        }
    }
}

/// The kinds of object revgate accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    Service,
    Configuration,
    Route,
    ConfigMap,
    DomainMapping,
}

impl ResourceKind {
    /// The kind as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Service => "Service",
            ResourceKind::Configuration => "Configuration",
            ResourceKind::Route => "Route",
            ResourceKind::ConfigMap => "ConfigMap",
            ResourceKind::DomainMapping => "DomainMapping",
        }
    }

    fn shape(self) -> &'static Shape {
        match self {
            ResourceKind::Service => &schema::SERVICE,
            ResourceKind::Configuration => &schema::CONFIGURATION,
            ResourceKind::Route => &schema::ROUTE,
            ResourceKind::ConfigMap => &schema::CONFIG_MAP,
            ResourceKind::DomainMapping => &schema::DOMAIN_MAPPING,
        }
    }
}

/// One parsed document of a manifest file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub source: SourceRef,
    pub resource: Resource,
}

impl Document {
    /// What identifies the object, as `delete` needs it.
    pub fn reference(&self) -> Reference {
        let kind = match &self.resource {
            Resource::Service(_) => ResourceKind::Service,
            Resource::Configuration(_) => ResourceKind::Configuration,
            Resource::Route(_) => ResourceKind::Route,
            Resource::ConfigMap(_) => ResourceKind::ConfigMap,
            Resource::DomainMapping(_) => ResourceKind::DomainMapping,
        };
        Reference { source: self.source.clone(), kind, key: self.resource.key() }
    }
}

/// A document read only for what identifies its object (`apiVersion`,
/// `kind`, `metadata.name` and `metadata.namespace`), as `kubectl delete -f`
/// reads it: the rest of the document does not matter to a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub source: SourceRef,
    pub kind: ResourceKind,
    pub key: ObjectKey,
}

/// What to do with a document of a kind revgate does not manage (an
/// `apps/v1 Deployment`, a `v1 Service`…).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OtherKinds {
    /// Leave it out and report it as a [`Skipped`] line, as a mixed file
    /// applies with `kubectl` and only its Knative objects concern revgate.
    #[default]
    Skip,
    /// Refuse the file (`--strict`), naming the file, document and kind.
    Reject,
}

/// A document left out because revgate does not manage its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub source: SourceRef,
    pub api_version: String,
    pub kind: String,
    /// Its namespace (defaulted, as for every object) and name.
    pub key: ObjectKey,
}

/// `skipped apps/v1 Deployment default/deployment: not a Knative Serving resource`
impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped {} {} {}: not a Knative Serving resource", self.api_version, self.kind, self.key)
    }
}

/// What one manifest file (or several) held: the objects revgate read, and
/// the documents it skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest<T> {
    pub objects: Vec<T>,
    pub skipped: Vec<Skipped>,
}

impl<T> Default for Manifest<T> {
    fn default() -> Self {
        Self { objects: Vec::new(), skipped: Vec::new() }
    }
}

impl<T> Manifest<T> {
    /// Adds another file's objects and skipped documents after these.
    pub fn extend(&mut self, other: Manifest<T>) {
        self.objects.extend(other.objects);
        self.skipped.extend(other.skipped);
    }
}

/// Parses every document of a manifest file, refusing kinds revgate does
/// not manage. Empty documents (comments only, a trailing `---`) are
/// skipped. Objects without a namespace land in `default`.
///
/// Problems with fields are collected over all documents; a document that
/// is not YAML, or of a kind revgate does not serve, stops parsing.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    Ok(parse_documents_within(file, text, &mut Budget::default(), OtherKinds::Reject)?.objects)
}

/// Parses every document of a manifest file, charging what the documents
/// expand to against `budget`, which the caller shares between every file
/// of one apply; documents of other kinds are skipped or refused as
/// `other_kinds` says.
pub fn parse_documents_within(
    file: &str,
    text: &str,
    budget: &mut Budget,
    other_kinds: OtherKinds,
) -> Result<Manifest<Document>, ManifestError> {
    read_objects(file, text, budget, other_kinds, |source, id, value| {
        parse_object(source, id, value).map(|resource| Document { source: source.clone(), resource })
    })
}

/// Reads every document of a manifest file for what identifies its object
/// only (see [`Reference`]); the rest of each document is not validated.
/// Documents of other kinds are skipped or refused as `other_kinds` says.
pub fn parse_references(
    file: &str,
    text: &str,
    budget: &mut Budget,
    other_kinds: OtherKinds,
) -> Result<Manifest<Reference>, ManifestError> {
    read_objects(file, text, budget, other_kinds, |source, id, _| {
        Ok(Reference { source: source.clone(), kind: id.kind, key: id.key.clone() })
    })
}

/// What every document is identified by, read before anything else.
struct Identity {
    kind: ResourceKind,
    key: ObjectKey,
}

/// The loop shared by [`parse_documents_within`] and [`parse_references`]:
/// each document is read within the budget, identified, checked for what
/// reading found (depth, duplicate keys) and the identity's own fields, then
/// handed to `each`.
fn read_objects<T>(
    file: &str,
    text: &str,
    budget: &mut Budget,
    other_kinds: OtherKinds,
    mut each: impl FnMut(&SourceRef, &Identity, Value) -> Result<T, ParseFailure>,
) -> Result<Manifest<T>, ManifestError> {
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    let mut field_errors = Vec::new();
    for (index, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let source = SourceRef::new(file, index);
        let (value, violations) = decode::read_document(de, budget).map_err(|e| match e {
            DecodeError::Budget => {
                ManifestError::TooLarge { file: file.to_string(), document: index, limit: budget.limit() }
            }
            DecodeError::Syntax(message) => ManifestError::Syntax { file: file.to_string(), document: index, message },
        })?;
        if value.is_null() && violations.is_empty() {
            continue;
        }
        let id = match identify(&source, &value, other_kinds) {
            Ok(Identified::Managed(id)) => id,
            Ok(Identified::Other(other)) => {
                skipped.push(other);
                continue;
            }
            Err(ParseFailure::Fatal(e)) => return Err(e),
            Err(ParseFailure::Fields(errors)) => {
                field_errors.extend(errors);
                continue;
            }
        };
        let fail = |path: String, message: String| FieldError {
            source: Some(source.clone()),
            kind: id.kind.as_str().to_string(),
            key: id.key.clone(),
            path,
            message,
        };
        if !violations.is_empty() {
            // What was read is incomplete; nothing more can be said about it.
            field_errors.extend(violations.into_iter().map(|v| fail(v.path, v.message)));
            continue;
        }
        let problems: Vec<FieldError> = identity_problems(&id).into_iter().map(|(p, m)| fail(p, m)).collect();
        match each(&source, &id, value) {
            Ok(object) if problems.is_empty() => objects.push(object),
            Ok(_) => field_errors.extend(problems),
            Err(ParseFailure::Fatal(e)) => return Err(e),
            Err(ParseFailure::Fields(errors)) => {
                field_errors.extend(errors);
                field_errors.extend(problems);
            }
        }
    }
    if field_errors.is_empty() { Ok(Manifest { objects, skipped }) } else { Err(ManifestError::Fields(field_errors)) }
}

enum ParseFailure {
    Fatal(ManifestError),
    Fields(Vec<FieldError>),
}

/// A document identified: an object of a kind revgate manages, or one it skips.
enum Identified {
    Managed(Identity),
    Other(Skipped),
}

/// The kind and key of a document. A kind revgate does not manage is
/// skipped or refused as `other_kinds` says; an unknown kind of a Knative
/// API group, or a document without `apiVersion` and `kind`, stops parsing.
fn identify(source: &SourceRef, value: &Value, other_kinds: OtherKinds) -> Result<Identified, ParseFailure> {
    let Some(object) = value.as_object() else {
        return Err(ParseFailure::Fatal(ManifestError::Syntax {
            file: source.file.clone(),
            document: source.document,
            message: "expected an object with apiVersion, kind and metadata".to_string(),
        }));
    };
    let text = |k: &str| object.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let meta = object.get("metadata");
    let meta_text = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str).unwrap_or_default().to_string();
    let mut namespace = meta_text("namespace");
    if namespace.is_empty() {
        namespace = DEFAULT_NAMESPACE.to_string();
    }
    let key = ObjectKey::new(namespace, meta_text("name"));
    let kind = match (api_version.as_str(), kind.as_str()) {
        (SERVING_API_VERSION, "Service") => ResourceKind::Service,
        (SERVING_API_VERSION, "Configuration") => ResourceKind::Configuration,
        (SERVING_API_VERSION, "Route") => ResourceKind::Route,
        ("v1", "ConfigMap") => ResourceKind::ConfigMap,
        (DOMAIN_MAPPING_API_VERSION, "DomainMapping") => ResourceKind::DomainMapping,
        _ if is_other_kind(&api_version, &kind) => {
            let other = Skipped { source: source.clone(), api_version, kind, key };
            return match other_kinds {
                OtherKinds::Skip => Ok(Identified::Other(other)),
                OtherKinds::Reject => Err(ParseFailure::Fatal(ManifestError::NotServing(Box::new(other)))),
            };
        }
        _ => {
            return Err(ParseFailure::Fatal(ManifestError::UnsupportedKind { at: source.clone(), api_version, kind }));
        }
    };
    Ok(Identified::Managed(Identity { kind, key }))
}

/// Whether a document is of a kind that is none of Knative's: it names
/// both an `apiVersion` and a `kind`, its API group is not a `knative.dev`
/// one, and it is not a `List`, whose items may well be Knative objects
/// (skipping it would drop them unread).
fn is_other_kind(api_version: &str, kind: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    !api_version.is_empty()
        && !kind.is_empty()
        && !kind.ends_with("List")
        && group != "knative.dev"
        && !group.ends_with(".knative.dev")
}

/// What Kubernetes requires of every object's identity: a name, a namespace
/// that is a DNS-1123 label, and for a ConfigMap a name that is a DNS-1123
/// subdomain. (Knative's kinds have stricter names, checked with the rest of
/// their metadata when applied.)
fn identity_problems(id: &Identity) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if id.key.name.is_empty() {
        problems.push(("metadata.name".to_string(), "missing field: every object needs a name".to_string()));
    } else if id.kind == ResourceKind::ConfigMap
        && let Err(e) = validation::check_dns1123_subdomain(&id.key.name)
    {
        problems.push(("metadata.name".to_string(), e));
    }
    if let Err(e) = validation::check_dns1123(&id.key.namespace) {
        problems.push(("metadata.namespace".to_string(), e));
    }
    problems
}

fn parse_object(source: &SourceRef, id: &Identity, mut value: Value) -> Result<Resource, ParseFailure> {
    let fail = |path: &str, message: String| FieldError {
        source: Some(source.clone()),
        kind: id.kind.as_str().to_string(),
        key: id.key.clone(),
        path: path.to_string(),
        message,
    };

    let mut problems = Vec::new();
    schema::check(id.kind.shape(), &value, "", &mut problems);
    if !problems.is_empty() {
        return Err(ParseFailure::Fields(problems.into_iter().map(|(p, m)| fail(&p, m)).collect()));
    }

    strip_nulls(&mut value);
    if let Some(object) = value.as_object_mut() {
        // Status belongs to revgate; whatever an exported manifest carries is dropped.
        object.remove("status");
    }
    let typed = |e: serde_json::Error| ParseFailure::Fields(vec![fail("", e.to_string())]);
    let mut resource = match id.kind {
        ResourceKind::Service => Resource::Service(from_value(value).map_err(typed)?),
        ResourceKind::Configuration => Resource::Configuration(from_value(value).map_err(typed)?),
        ResourceKind::Route => Resource::Route(from_value(value).map_err(typed)?),
        ResourceKind::ConfigMap => Resource::ConfigMap(from_value(value).map_err(typed)?),
        ResourceKind::DomainMapping => Resource::DomainMapping(from_value(value).map_err(typed)?),
    };
    let metadata = match &mut resource {
        Resource::Service(o) => &mut o.metadata,
        Resource::Configuration(o) => &mut o.metadata,
        Resource::Route(o) => &mut o.metadata,
        Resource::ConfigMap(o) => &mut o.metadata,
        Resource::DomainMapping(o) => &mut o.metadata,
    };
    metadata.namespace.clone_from(&id.key.namespace);
    // Server-managed fields are the server's (revgate's) to set.
    metadata.generation = None;
    metadata.creation_timestamp = None;
    metadata.owner_references.clear();
    Ok(resource)
}

fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(value)
}

/// Removes `key: null` entries, which Kubernetes treats as absent.
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_empty_documents_and_defaults_the_namespace() {
        let text = "---\n# only a comment\n---\napiVersion: serving.knative.dev/v1\nkind: Route\nmetadata:\n  name: r\nspec:\n  traffic:\n  - revisionName: r-1\n    percent: 100\n---\n";
        let docs = parse_documents("r.yaml", text).expect("parses");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].source, SourceRef::new("r.yaml", 1));
        assert_eq!(docs[0].resource.key(), ObjectKey::new("default", "r"));
        assert_eq!(docs[0].resource.kind(), "Route");
    }

    #[test]
    fn parses_json() {
        let text = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"config-domain","namespace":"knative-serving"},"data":{"example.org":""}}"#;
        let docs = parse_documents("cm.json", text).expect("parses");
        assert_eq!(docs[0].resource.key(), ObjectKey::new("knative-serving", "config-domain"));
    }

    #[test]
    fn other_kinds_are_skipped_or_refused_naming_file_document_and_kind() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        let read = parse_documents_within("app.yaml", text, &mut Budget::default(), OtherKinds::Skip).expect("reads");
        assert_eq!(read.objects.len(), 1);
        let shown: Vec<String> = read.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["skipped apps/v1 Deployment default/d: not a Knative Serving resource"]);

        let err = parse_documents("app.yaml", text).expect_err("rejected");
        let shown = err.to_string();
        assert!(shown.starts_with("app.yaml: document 1: apps/v1 Deployment default/d is not"), "{shown}");
    }

    #[test]
    fn knative_kinds_revgate_does_not_accept_and_lists_are_refused_even_when_skipping() {
        for (api_version, kind) in [
            ("serving.knative.dev/v1", "Revision"),
            ("autoscaling.internal.knative.dev/v1alpha1", "PodAutoscaler"),
            ("v1", "List"),
        ] {
            let text = format!("apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: r}}\n");
            let err =
                parse_documents_within("k.yaml", &text, &mut Budget::default(), OtherKinds::Skip).expect_err("refused");
            assert!(err.to_string().contains(&format!("unsupported kind {kind:?}")), "{err}");
        }
    }

    #[test]
    fn reports_every_unknown_field_of_every_document() {
        let text = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  template:\n    spec:\n      containers: [{image: x, imagee: y}]\n---\napiVersion: serving.knative.dev/v1\nkind: Route\nmetadata: {name: b}\nspec:\n  trafic: []\n";
        let err = parse_documents("two.yaml", text).expect_err("rejected");
        assert_eq!(
            err.to_string(),
            "two.yaml: service/default/a: spec.template.spec.containers[0].imagee: unknown field\n\
             two.yaml#1: route/default/b: spec.trafic: unknown field"
        );
    }

    #[test]
    fn keeps_preserved_pod_spec_fields_verbatim() {
        let text = "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata: {name: c}\nspec:\n  template:\n    spec:\n      affinity: {podAntiAffinity: {x: 1}}\n      containers:\n      - image: x\n        volumeMounts: [{name: v, mountPath: /v}]\n      volumes: [{name: v, emptyDir: {}}]\n";
        let docs = parse_documents("c.yaml", text).expect("parses");
        let Resource::Configuration(c) = &docs[0].resource else { panic!("not a configuration") };
        let spec = &c.spec.template.spec;
        assert!(spec.extra.contains_key("affinity") && spec.extra.contains_key("volumes"));
        assert!(spec.containers[0].extra.contains_key("volumeMounts"));
    }
}
