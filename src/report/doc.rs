//! Reading one YAML document while recording problems: typed getters that
//! name the field on error, and checks for unknown keys.

use std::path::Path;

use serde_yaml::{Mapping, Value};

use super::problem::Problem;

/// The document being read, and where its problems go.
pub struct DocCtx<'a> {
    /// File of the document.
    pub file: &'a Path,
    /// 1-based document index.
    pub doc: usize,
    /// Collected problems.
    pub problems: &'a mut Vec<Problem>,
    /// Collected warnings: accepted, logged once at start-up.
    pub warnings: &'a mut Vec<Problem>,
}

impl DocCtx<'_> {
    /// Records a problem at `field`.
    pub fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            doc: Some(self.doc),
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records a warning at `field`: accepted, and logged at start-up.
    pub fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            file: self.file.to_path_buf(),
            doc: Some(self.doc),
            field: field.into(),
            message: message.into(),
        });
    }

    /// Reports every key of `map` that is not in `known`, listing the valid ones.
    pub fn unknown_keys(&mut self, map: &Mapping, path: &str, known: &[&str]) {
        for key in map.keys() {
            let name = scalar_text(key).unwrap_or_default();
            if !known.contains(&name.as_str()) {
                self.problem(
                    join(path, &name),
                    format!("unknown field; valid fields are: {}", known.join(", ")),
                );
            }
        }
    }

    /// A mapping at `key`, or `None` (with a problem if present but not a mapping).
    pub fn mapping<'v>(&mut self, map: &'v Mapping, path: &str, key: &str) -> Option<&'v Mapping> {
        match map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Mapping(m)) => Some(m),
            Some(_) => {
                self.problem(join(path, key), "must be a mapping");
                None
            }
        }
    }

    /// A scalar at `key` as text, or `None` (with a problem if not a scalar).
    pub fn string(&mut self, map: &Mapping, path: &str, key: &str) -> Option<String> {
        match map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => match scalar_text(v) {
                Some(s) => Some(s),
                None => {
                    self.problem(join(path, key), "must be a string");
                    None
                }
            },
        }
    }

    /// Like [`Self::string`] but a missing or empty value is a problem.
    pub fn required_string(&mut self, map: &Mapping, path: &str, key: &str) -> Option<String> {
        match self.string(map, path, key) {
            Some(s) if !s.trim().is_empty() => Some(s),
            Some(_) => {
                self.problem(join(path, key), "must not be empty");
                None
            }
            None if map.contains_key(key) => None,
            None => {
                self.problem(join(path, key), "missing required field");
                None
            }
        }
    }

    /// A sequence of strings at `key` (empty when absent).
    pub fn string_list(&mut self, map: &Mapping, path: &str, key: &str) -> Vec<String> {
        match map.get(key) {
            None | Some(Value::Null) => vec![],
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let s = scalar_text(v);
                    if s.is_none() {
                        self.problem(format!("{}[{i}]", join(path, key)), "must be a string");
                    }
                    s
                })
                .collect(),
            Some(_) => {
                self.problem(join(path, key), "must be a list of strings");
                vec![]
            }
        }
    }

    /// A boolean at `key` (`true`/`false`, or a string Go's ParseBool accepts).
    pub fn bool(&mut self, map: &Mapping, path: &str, key: &str) -> Option<bool> {
        match map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => match scalar_text(v)
                .as_deref()
                .and_then(crate::util::parse_go_bool)
            {
                Some(b) => Some(b),
                None => {
                    self.problem(join(path, key), "must be true or false");
                    None
                }
            },
        }
    }

    /// A whole number at `key` within `min..=max`.
    pub fn integer(
        &mut self,
        map: &Mapping,
        path: &str,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let text = self.string(map, path, key)?;
        match text.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.problem(
                    join(path, key),
                    format!("must be a whole number from {min} to {max}, got {text:?}"),
                );
                None
            }
        }
    }
}

impl DocCtx<'_> {
    /// Checks a resource's top-level keys (`extra` besides the common ones)
    /// and returns its `spec`, or records that it is missing.
    pub fn spec<'v>(&mut self, doc: &'v Mapping, extra: &[&str]) -> Option<&'v Mapping> {
        let mut known = vec!["apiVersion", "kind", "metadata", "spec", "scopes"];
        known.extend_from_slice(extra);
        self.unknown_keys(doc, "", &known);
        let spec = self.mapping(doc, "", "spec");
        if spec.is_none() {
            self.problem("spec", "missing required field");
        }
        spec
    }
}

/// The text of a YAML scalar (strings unquoted, numbers and booleans as written).
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `path.key`, or `key` at the top.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}
