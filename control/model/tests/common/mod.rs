//! Fixtures shared by the model's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

use revgate_model::decode::Budget;
use revgate_model::{
    Change, Document, FieldError, ManifestError, Observed, OtherKinds, Reference, World, parse_documents,
    parse_references,
};

/// 2024-05-01T12:00:00Z.
pub const NOW: u64 = 1_714_564_800;

/// The shared folder sits beside the repository.
pub fn shared_dir(sub: &str) -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")).join(sub);
    assert!(
        dir.is_dir(),
        "{} is missing: these tests read Knative's samples and the CRDs from the shared folder beside the repository",
        dir.display()
    );
    dir
}

/// Every Knative sample in the shared folder, `(file name, text)`, sorted by name.
pub fn samples() -> Vec<(String, String)> {
    let dir = shared_dir("knative-samples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("samples folder readable")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "expected Knative samples in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (name, std::fs::read_to_string(&p).expect("sample readable"))
        })
        .collect()
}

/// One sample's text, by file name.
pub fn sample(name: &str) -> String {
    samples().into_iter().find(|(n, _)| n == name).map(|(_, text)| text).expect(name)
}

pub fn parse(yaml: &str) -> Vec<Document> {
    parse_documents("test.yaml", yaml).unwrap_or_else(|e| panic!("parse failed:\n{e}"))
}

/// What `delete -f` reads of a manifest: only what identifies each object.
pub fn references(yaml: &str) -> Vec<Reference> {
    parse_references("test.yaml", yaml, &mut Budget::default(), OtherKinds::Reject)
        .unwrap_or_else(|e| panic!("parse failed:\n{e}"))
        .objects
}

pub fn apply(world: &World, yaml: &str) -> (World, Vec<Change>) {
    world.apply(&parse(yaml), NOW).unwrap_or_else(|e| panic!("apply failed:\n{e}"))
}

/// Parses and applies, returning every problem (parse or apply) as `(path, message)`.
pub fn problems(world: &World, yaml: &str) -> Vec<(String, String)> {
    let errors: Vec<FieldError> = match parse_documents("bad.yaml", yaml) {
        Err(ManifestError::Fields(errors)) => errors,
        Err(other) => panic!("unexpected parse error: {other}"),
        Ok(docs) => match world.apply(&docs, NOW) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors,
        },
    };
    errors.into_iter().map(|e| (e.path, e.message)).collect()
}

pub fn lines(changes: &[Change]) -> Vec<String> {
    changes.iter().map(ToString::to_string).collect()
}

pub fn ready() -> Observed {
    Observed::default()
}

/// A minimal Service manifest.
pub fn service(name: &str, image: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n      - image: {image}\n"
    )
}

pub fn config_map(name: &str, data: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: knative-serving\ndata:\n{data}")
}

/// Makes a CRD schema strict: where it lists properties and does not keep
/// unknown fields, no other field may appear, so views that invent fields fail.
pub fn make_strict(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let keeps_unknown = object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if object.contains_key("properties") && !keeps_unknown && !object.contains_key("additionalProperties") {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    for value in object.values_mut() {
        match value {
            Value::Object(_) => make_strict(value),
            Value::Array(items) => items.iter_mut().for_each(make_strict),
            _ => {}
        }
    }
    if let Some(Value::Object(props)) = object.get_mut("properties") {
        props.values_mut().for_each(make_strict);
    }
}
