//! Errors of the model: one [`FieldError`] per problem, each naming the
//! file, the object and the field, so that a user can fix a manifest without
//! guessing which document of which file is meant.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::plan::ObjectKey;

/// Where a document came from: a file and the 0-based index of the document in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceRef {
    pub file: String,
    pub document: usize,
}

impl SourceRef {
    pub fn new(file: impl Into<String>, document: usize) -> Self {
        Self { file: file.into(), document }
    }
}

/// `file` for the first document, `file#2` for the third.
impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document == 0 { f.write_str(&self.file) } else { write!(f, "{}#{}", self.file, self.document) }
    }
}

/// One problem with one field of one object.
///
/// Displayed as `route.yaml#1: route/default/hello: spec.traffic: traffic
/// percentages sum to 90, must be 100`. The admin API sends these as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Where the object came from; `None` for objects revgate derived itself.
    pub source: Option<SourceRef>,
    /// The object's kind as written in manifests (`Service`, `Route`, `ConfigMap`…).
    pub kind: String,
    /// The object's namespace and name (the name is empty when the manifest lacks one).
    pub key: ObjectKey,
    /// A field path such as `spec.traffic[1].percent`; empty for the object as a whole.
    pub path: String,
    /// What is wrong, and where useful how to fix it.
    pub message: String,
}

impl FieldError {
    pub fn new(kind: &str, key: &ObjectKey, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { source: None, kind: kind.to_string(), key: key.clone(), path: path.into(), message: message.into() }
    }

    pub fn with_source(mut self, source: Option<&SourceRef>) -> Self {
        self.source = source.cloned();
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(source) = &self.source {
            write!(f, "{source}: ")?;
        }
        let kind = self.kind.to_ascii_lowercase();
        if self.key.name.is_empty() {
            write!(f, "{kind}: ")?;
        } else {
            write!(f, "{kind}/{}/{}: ", self.key.namespace, self.key.name)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for FieldError {}

/// A manifest file could not be read into resources.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML (or JSON).
    #[error("{file}: document {document}: not valid YAML or JSON: {message}")]
    Syntax { file: String, document: usize, message: String },
    /// A document is not an object revgate knows.
    #[error(
        "{}: document {}: unsupported kind {kind:?} (apiVersion {api_version:?}); revgate accepts serving.knative.dev/v1 \
         Service, Configuration and Route, serving.knative.dev/v1beta1 DomainMapping, and v1 ConfigMap",
        at.file,
        at.document
    )]
    UnsupportedKind { at: SourceRef, api_version: String, kind: String },
    /// A document of a kind that is not Knative's, refused because strict
    /// reading was asked for (`--strict`); otherwise it is skipped.
    #[error(
        "{}: document {}: {} {} {} is not a Knative Serving resource; --strict refuses such documents (without it, \
         they are skipped with a warning)",
        .0.source.file,
        .0.source.document,
        .0.api_version,
        .0.kind,
        .0.key
    )]
    NotServing(Box<crate::manifest::Skipped>),
    /// The documents expand (through YAML aliases, or by sheer size) past
    /// what one apply may build; reading stopped at this document.
    #[error(
        "{file}: document {document}: the manifests expand to more than {limit} bytes (the limit on what the \
         documents of one apply may expand to, YAML aliases included); apply fewer or smaller objects, or \
         write the repeated parts out instead of referencing anchors"
    )]
    TooLarge { file: String, document: usize, limit: usize },
    /// Documents that are objects of a known kind, but with unknown or mistyped fields.
    #[error("{}", join_lines(.0))]
    Fields(Vec<FieldError>),
}

/// Everything wrong with one apply (or delete); nothing was changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", join_lines(&self.errors))]
pub struct ApplyError {
    pub errors: Vec<FieldError>,
}

fn join_lines(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// Problems found in one object, as `(field path, message)`; the world
/// attaches file and object when it turns them into [`FieldError`]s.
pub type Problems = Vec<(String, String)>;

/// A problem with one key of a ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: &str, message: impl Into<String>) -> Self {
        Self { key: key.to_string(), message: message.into() }
    }
}
