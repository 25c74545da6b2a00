//! The image map: which local program stands for which container image.
//!
//! A YAML mapping from an image reference to the argv that runs it, given as
//! one string (the program alone) or a list (program and arguments):
//!
//! ```yaml
//! ghcr.io/knative/helloworld-go: ../target/debug/helloworld   # any tag or digest
//! ghcr.io/knative/autoscale-go:latest: [../target/debug/autoscale]
//! "*": [python3, -m, http.server]                                # everything else
//! ```
//!
//! An image is looked up as written, then without its digest, then without
//! its tag (so the key `registry:5000/app` matches `registry:5000/app:v1`),
//! then as `"*"`. A relative program path that contains a `/` is relative to
//! the map file's directory; a bare name is looked up on `PATH` when the
//! process starts.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml_ng::Value;

use crate::error::RuntimeError;

/// The key that matches any image not mapped otherwise.
pub const WILDCARD: &str = "*";

/// Image reference → argv of the local program standing for it. Parsed and
/// validated once; lookups never fail for syntax reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMap {
    entries: BTreeMap<String, Vec<String>>,
}

impl ImageMap {
    /// A map without entries: only containers with a `command` can run.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads and validates the map file at `path`.
    pub fn load(path: &Path) -> Result<Self, RuntimeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| RuntimeError::ImageMapRead { path: path.to_path_buf(), source })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        parse_named(&text, base_dir, &path.display().to_string())
    }

    /// Parses map text whose relative program paths are relative to `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, RuntimeError> {
        parse_named(text, base_dir, "(inline)")
    }

    /// The argv for `image`: exact reference, then without digest, then without tag, then `"*"`.
    pub fn resolve(&self, image: &str) -> Option<&[String]> {
        candidates(image).into_iter().find_map(|key| self.entries.get(key)).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The image references (and `"*"`) the map knows, sorted.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

/// The keys to try for `image`, most specific first, without repeats.
fn candidates(image: &str) -> Vec<&str> {
    let without_digest = image.split_once('@').map_or(image, |(name, _)| name);
    // A tag is a `:` after the last `/`; a `:` before it belongs to a registry port.
    let name_start = without_digest.rfind('/').map_or(0, |slash| slash + 1);
    let repository = match without_digest[name_start..].find(':') {
        Some(colon) => &without_digest[..name_start + colon],
        None => without_digest,
    };
    let mut keys = vec![image];
    for key in [without_digest, repository, WILDCARD] {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

fn parse_named(text: &str, base_dir: &Path, file: &str) -> Result<ImageMap, RuntimeError> {
    let document: Value = serde_yaml_ng::from_str(text)
        .map_err(|source| RuntimeError::ImageMapSyntax { file: file.to_string(), source })?;
    let entry_error = |key: &str, problem: String| RuntimeError::ImageMapEntry {
        file: file.to_string(),
        key: key.to_string(),
        problem,
    };
    let mapping = match document {
        // An empty file (or one with only comments) maps nothing.
        Value::Null => return Ok(ImageMap::empty()),
        Value::Mapping(mapping) => mapping,
        other => {
            return Err(entry_error(
                "",
                format!("the file must be a mapping from image to program, found {}", kind(&other)),
            ));
        }
    };
    let mut entries = BTreeMap::new();
    for (key, value) in mapping {
        let Value::String(image) = key else {
            return Err(entry_error("", format!("image references are strings, found {}", kind(&key))));
        };
        if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
            return Err(entry_error(&image, "an image reference has no whitespace and is not empty".to_string()));
        }
        let mut argv = match value {
            Value::String(program) => vec![program],
            Value::Sequence(items) => {
                let mut argv = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(s) => argv.push(s),
                        // YAML reads `8080` or `true` as numbers and booleans; an argv wants their text.
                        Value::Number(n) => argv.push(n.to_string()),
                        Value::Bool(b) => argv.push(b.to_string()),
                        other => {
                            return Err(entry_error(
                                &image,
                                format!("item {i} is {}, expected a string", kind(&other)),
                            ));
                        }
                    }
                }
                argv
            }
            other => {
                return Err(entry_error(
                    &image,
                    format!("expected a program (string) or a list [program, args...], found {}", kind(&other)),
                ));
            }
        };
        match argv.first_mut() {
            Some(program) if !program.trim().is_empty() => {
                if program.contains('/') && Path::new(program.as_str()).is_relative() {
                    *program = base_dir.join(program.as_str()).to_string_lossy().into_owned();
                }
            }
            _ => return Err(entry_error(&image, "the program is missing: give a path or a command name".to_string())),
        }
        entries.insert(image, argv);
    }
    Ok(ImageMap { entries })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> ImageMap {
        ImageMap::parse(text, Path::new("/maps")).expect("valid map")
    }

    #[test]
    fn candidates_strip_digest_then_tag_but_not_registry_ports() {
        let cases: &[(&str, &[&str])] = &[
            ("app", &["app", "*"]),
            ("app:v1", &["app:v1", "app", "*"]),
            (
                "ghcr.io/knative/helloworld-go:latest",
                &["ghcr.io/knative/helloworld-go:latest", "ghcr.io/knative/helloworld-go", "*"],
            ),
            ("localhost:5000/app", &["localhost:5000/app", "*"]),
            ("localhost:5000/app:v1", &["localhost:5000/app:v1", "localhost:5000/app", "*"]),
            ("localhost:5000/app@sha256:ab", &["localhost:5000/app@sha256:ab", "localhost:5000/app", "*"]),
            ("app:v1@sha256:ab", &["app:v1@sha256:ab", "app:v1", "app", "*"]),
        ];
        for (image, want) in cases {
            assert_eq!(candidates(image), *want, "{image}");
        }
    }

    #[test]
    fn lookup_prefers_exact_then_untagged_then_wildcard() {
        let images = map(r#"
            "localhost:5000/app:v1": [exact]
            "localhost:5000/app": [untagged]
            "app:v1": [digest-stripped]
            "*": [fallback, --flag]
        "#);
        let cases = [
            ("localhost:5000/app:v1", "exact"),
            ("localhost:5000/app:v2", "untagged"),
            ("localhost:5000/app", "untagged"),
            ("localhost:5000/app@sha256:00", "untagged"),
            ("app:v1@sha256:00", "digest-stripped"),
            ("app:v2", "fallback"),
            ("other.io/x:1", "fallback"),
        ];
        for (image, want) in cases {
            assert_eq!(images.resolve(image).and_then(<[String]>::first).map(String::as_str), Some(want), "{image}");
        }
        assert_eq!(images.resolve("other").expect("wildcard"), ["fallback", "--flag"]);
        assert_eq!(map("app: [x]").resolve("other"), None, "no wildcard, no match");
    }

    #[test]
    fn programs_with_a_slash_are_relative_to_the_map_file() {
        let images = map(r#"
            a: ../target/debug/helloworld
            b: [./bin/server, ./data]
            c: [python3, -m, http.server, 8080, true]
            d: /usr/bin/env
        "#);
        assert_eq!(images.resolve("a").expect("a"), ["/maps/../target/debug/helloworld"]);
        assert_eq!(images.resolve("b").expect("b"), ["/maps/./bin/server", "./data"], "only the program is resolved");
        assert_eq!(
            images.resolve("c").expect("c"),
            ["python3", "-m", "http.server", "8080", "true"],
            "bare names stay"
        );
        assert_eq!(images.resolve("d").expect("d"), ["/usr/bin/env"]);
    }

    #[test]
    fn empty_files_map_nothing() {
        assert!(map("").is_empty());
        assert!(map("# only a comment\n").is_empty());
        assert_eq!(ImageMap::empty().resolve("anything"), None);
    }

    #[test]
    fn invalid_maps_name_the_file_and_the_entry() {
        let cases = [
            ("[a, b]", "", "must be a mapping"),
            ("app: []", "app", "program is missing"),
            ("app: ''", "app", "program is missing"),
            ("app: {x: 1}", "app", "found a mapping"),
            ("app: [x, [y]]", "app", "item 1 is a list"),
            ("1: x", "", "image references are strings"),
            ("'my app': x", "my app", "no whitespace"),
        ];
        for (text, want_key, want_problem) in cases {
            match ImageMap::parse(text, Path::new("/maps")) {
                Err(RuntimeError::ImageMapEntry { file, key, problem }) => {
                    assert_eq!(file, "(inline)", "{text}");
                    assert_eq!(key, want_key, "{text}");
                    assert!(problem.contains(want_problem), "{text}: {problem}");
                }
                other => panic!("{text}: expected an entry error, got {other:?}"),
            }
        }
        let syntax = ImageMap::parse("app: [unclosed", Path::new("/")).expect_err("bad YAML");
        assert!(syntax.to_string().starts_with("parsing the image map (inline):"), "{syntax}");
    }

    #[test]
    fn load_names_the_file_and_resolves_against_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("images.yaml");
        std::fs::write(&path, "app: ./run.sh\nbad: 3\n").expect("write");
        let err = ImageMap::load(&path).expect_err("3 is not a program");
        let shown = err.to_string();
        assert!(shown.contains(&path.display().to_string()) && shown.contains("\"bad\""), "{shown}");

        std::fs::write(&path, "app: ./run.sh\n").expect("write");
        let images = ImageMap::load(&path).expect("valid");
        assert_eq!(images.resolve("app:v1").expect("app"), [dir.path().join("./run.sh").to_string_lossy()]);

        let missing = ImageMap::load(&dir.path().join("nope.yaml")).expect_err("missing file");
        assert!(missing.to_string().contains("--images FILE"), "{missing}");
    }
}
