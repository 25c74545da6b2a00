//! YAML (or JSON) text into `serde_json::Value`s that cannot hurt the
//! control plane, whatever the text.
//!
//! Three things a plain `Value::deserialize` lets through are stopped here,
//! while the value is being built:
//!
//! - **Expanded size.** YAML aliases are counted by the parser, not by what
//!   they expand to: a small file whose anchors are referenced thousands of
//!   times can expand to gigabytes. Every node built is charged to a
//!   [`Budget`] (shared by every document of one apply), and building stops
//!   the moment it runs out.
//! - **Depth.** Whatever is accepted is stored as JSON inside the world and
//!   read back by `serde_json`, whose recursion limit is 128. A document may
//!   nest at most [`MAX_DEPTH`] levels, well below that, so that the object's
//!   own wrapping in the store (the world, its lists, the Service, its
//!   Configuration and Revision copies) always fits.
//! - **Duplicate keys.** `kubectl` refuses a mapping that repeats a key;
//!   silently keeping one of the two values hides a mistake.
//!
//! Depth and duplicate keys are recorded as [`Violation`]s with their field
//! path, and the document is still read to the end, so that the caller can
//! name the object they belong to. Only the budget aborts at once.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The deepest nesting a document may have: the document itself is level 1,
/// `spec` level 2, and so on. Half of `serde_json`'s recursion limit (128),
/// leaving room for how the store wraps an object.
pub const MAX_DEPTH: usize = 64;

/// What one apply (every document of every file) may expand to, in bytes
/// as charged by [`Budget`]: each node costs [`NODE_COST`] plus the length of
/// its text. A manifest without aliases costs a few times its own size, so
/// this admits far more than the admin API's body limit.
pub const MAX_EXPANDED_BYTES: usize = 64 * 1024 * 1024;

/// What one node is charged besides its text: roughly what a `Value` and its
/// place in a map or list occupy in memory.
pub const NODE_COST: usize = 48;

/// The expansion still allowed for the documents of one apply.
#[derive(Debug, Clone)]
pub struct Budget {
    limit: usize,
    left: usize,
}

impl Budget {
    /// A budget of `limit` bytes (see [`MAX_EXPANDED_BYTES`]).
    pub fn new(limit: usize) -> Self {
        Self { limit, left: limit }
    }

    /// The limit this budget was created with.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn charge(&mut self, text_len: usize) -> bool {
        match self.left.checked_sub(NODE_COST.saturating_add(text_len)) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(MAX_EXPANDED_BYTES)
    }
}

/// A rule a document broke that does not stop reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field path, as in `spec.template.spec.containers[0].image`.
    pub path: String,
    pub message: String,
}

/// Why a document could not be read at all.
#[derive(Debug)]
pub enum DecodeError {
    /// The budget ran out; nothing more was built.
    Budget,
    /// Not YAML (or JSON), as the parser says.
    Syntax(String),
}

/// Reads one document of a `serde_yaml_ng` stream within `budget`. Returns
/// the value and what it broke (empty when it is acceptable).
pub fn read_document<'de, D>(document: D, budget: &mut Budget) -> Result<(Value, Vec<Violation>), DecodeError>
where
    D: de::Deserializer<'de>,
    D::Error: fmt::Display,
{
    let mut state = State { budget, over_budget: false, path: Vec::new(), violations: Vec::new() };
    let result = NodeSeed { state: &mut state, depth: 1 }.deserialize(document);
    if state.over_budget {
        return Err(DecodeError::Budget);
    }
    match result {
        Ok(value) => Ok((value, state.violations)),
        Err(e) => Err(DecodeError::Syntax(e.to_string())),
    }
}

struct State<'b> {
    budget: &'b mut Budget,
    over_budget: bool,
    /// The path of the node being built, one segment per level.
    path: Vec<Segment>,
    violations: Vec<Violation>,
}

enum Segment {
    Key(String),
    Index(usize),
}

impl State<'_> {
    fn path(&self) -> String {
        let mut out = String::new();
        for segment in &self.path {
            match segment {
                Segment::Key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    fn charge<E: de::Error>(&mut self, text_len: usize) -> Result<(), E> {
        if self.budget.charge(text_len) {
            Ok(())
        } else {
            self.over_budget = true;
            Err(E::custom(format!("the manifests expand to more than {} bytes", self.budget.limit())))
        }
    }

    fn violate(&mut self, message: String) {
        let path = self.path();
        self.violations.push(Violation { path, message });
    }
}

struct NodeSeed<'s, 'b> {
    state: &'s mut State<'b>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl NodeSeed<'_, '_> {
    /// True (once per branch) when this container is one level too deep.
    fn too_deep(&mut self) -> bool {
        if self.depth == MAX_DEPTH + 1 {
            self.state.violate(format!(
                "nested more than {MAX_DEPTH} levels deep; revgate accepts at most {MAX_DEPTH} levels of nesting \
                 (whatever is stored must stay readable)"
            ));
            return true;
        }
        false
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML or JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.state.charge(0)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.state.charge(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.state.charge(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.state.charge(0)?;
        // As `serde_json::Value` does: a number JSON cannot hold is null.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.state.charge(v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.state.charge(v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.state.charge(0)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        self.state.charge(0)?;
        let too_deep = self.too_deep();
        let mut items = Vec::new();
        loop {
            self.state.path.push(Segment::Index(items.len()));
            let item = seq.next_element_seed(NodeSeed { state: &mut *self.state, depth: self.depth + 1 });
            self.state.path.pop();
            match item? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        // Too deep: read to the end (charged), but keep nothing of it.
        Ok(if too_deep { Value::Null } else { Value::Array(items) })
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        self.state.charge(0)?;
        let too_deep = self.too_deep();
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.state.charge(key.len())?;
            self.state.path.push(Segment::Key(key.clone()));
            let value = map.next_value_seed(NodeSeed { state: &mut *self.state, depth: self.depth + 1 });
            let value = match value {
                Ok(value) => value,
                Err(e) => {
                    self.state.path.pop();
                    return Err(e);
                }
            };
            if object.contains_key(&key) {
                // The path ends in the key itself; kubectl says `key "image" already set in map`.
                self.state.violate(format!("duplicate key: {key:?} is already set in this map"));
            } else {
                object.insert(key, value);
            }
            self.state.path.pop();
        }
        Ok(if too_deep { Value::Null } else { Value::Object(object) })
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize as _;

    use super::*;

    fn read_yaml(text: &str, budget: &mut Budget) -> Result<(Value, Vec<Violation>), DecodeError> {
        let mut documents = serde_yaml_ng::Deserializer::from_str(text);
        let Some(document) = documents.next() else { return Ok((Value::Null, Vec::new())) };
        read_document(document, budget)
    }

    #[test]
    fn builds_the_same_value_as_serde() {
        let text = "a: 1\nb: [true, null, 2.5, -3, text]\nc: {d: {e: ''}}\n";
        let (value, violations) = read_yaml(text, &mut Budget::default()).expect("reads");
        let plain = Value::deserialize(serde_yaml_ng::Deserializer::from_str(text)).expect("reads");
        assert_eq!(value, plain);
        assert!(violations.is_empty());
    }

    #[test]
    fn records_duplicate_keys_and_too_deep_nesting_with_their_paths() {
        // (case, text, expected violation paths)
        // `levels` nested maps, the outermost holding `top`.
        let nest = |levels: usize| {
            let mut text = String::from("leaf");
            for _ in 1..levels {
                text = format!("{{a: {text}}}");
            }
            format!("{{top: {text}}}")
        };
        let deep_path = |levels: usize| {
            std::iter::once("top").chain(std::iter::repeat_n("a", levels - 1)).collect::<Vec<_>>().join(".")
        };
        let cases: Vec<(&str, String, Vec<String>)> = vec![
            ("duplicate top-level key", "a: 1\na: 2\n".into(), vec!["a".into()]),
            (
                "duplicate key in a list item",
                "spec:\n  containers:\n  - image: a\n    image: b\n".into(),
                vec!["spec.containers[0].image".into()],
            ),
            ("exactly the limit", nest(MAX_DEPTH), vec![]),
            ("one level too deep", nest(MAX_DEPTH + 1), vec![deep_path(MAX_DEPTH)]),
            ("far too deep, reported once", nest(MAX_DEPTH + 20), vec![deep_path(MAX_DEPTH)]),
        ];
        for (case, text, want) in cases {
            let (_, violations) = read_yaml(&text, &mut Budget::default()).expect(case);
            let paths: Vec<String> = violations.into_iter().map(|v| v.path).collect();
            assert_eq!(paths, want, "{case}");
        }
    }

    #[test]
    fn an_alias_bomb_runs_out_of_budget_before_it_expands() {
        let mut text = String::from("a0: &a0 [\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"]\n");
        for level in 1..10 {
            let prev = level - 1;
            let refs = vec![format!("*a{prev}"); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        assert!(text.len() < 2_000, "a small file");
        let result = read_yaml(&text, &mut Budget::new(1024 * 1024));
        assert!(matches!(result, Err(DecodeError::Budget)), "{result:?}");
    }

    #[test]
    fn the_budget_is_shared_by_every_document() {
        let mut budget = Budget::new(10 * NODE_COST);
        read_yaml("[1, 2, 3]", &mut budget).expect("4 nodes fit");
        read_yaml("[1, 2, 3]", &mut budget).expect("8 nodes fit");
        assert!(matches!(read_yaml("[1, 2, 3]", &mut budget), Err(DecodeError::Budget)));
    }
}
