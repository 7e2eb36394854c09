//! Calico's label selector language: parse, evaluate over label maps, and print the canonical
//! form.
//!
//! ```text
//! selector   := ε | or                      (empty means all())
//! or         := and ( "||" and )*
//! and        := operation ( "&&" operation )*
//! operation  := "!"* ( has(label) | all() | global() | "(" or ")"
//!                    | label ( "==" | "!=" | "contains" | "starts with" | "ends with" ) string
//!                    | label ( "in" | "not in" ) "{" [ string ( "," string )* [","] ] "}" )
//! ```
//!
//! A label that is absent makes `==`, `in`, `has`, `contains`, `starts with` and `ends with`
//! false, and `!=` and `not in` true. The canonical form is fully parenthesised with sorted,
//! deduplicated sets; the order of `&&`/`||` operands is kept, as Calico keeps it, because IP
//! set names are derived from the canonical text.

mod parser;
mod tokenizer;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use base64::Engine as _;
use sha2::{Digest, Sha224};

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// `all()`: matches everything, and what an empty selector means.
    All,
    /// `global()`: matches objects outside any namespace (meaningful in `namespaceSelector`).
    Global,
    /// `has(label)`.
    Has(String),
    /// `label == "value"`.
    Equal(String, String),
    /// `label != "value"`.
    NotEqual(String, String),
    /// `label in {…}`.
    In(String, BTreeSet<String>),
    /// `label not in {…}`.
    NotIn(String, BTreeSet<String>),
    /// `label contains "value"`.
    Contains(String, String),
    /// `label starts with "value"`.
    StartsWith(String, String),
    /// `label ends with "value"`.
    EndsWith(String, String),
    /// `!operation`.
    Not(Box<Selector>),
    /// Operands joined with `&&`, in the order written.
    And(Vec<Selector>),
    /// Operands joined with `||`, in the order written.
    Or(Vec<Selector>),
}

/// Why a selector did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: expected {expected}, found {found}")]
pub struct SelectorError {
    /// 1-based column (in characters) where the problem starts.
    pub column: usize,
    /// What the parser would have accepted there.
    pub expected: String,
    /// What it found instead.
    pub found: String,
}

impl SelectorError {
    pub(crate) fn at(byte_offset: usize, expected: &str, found: &str) -> Self {
        SelectorError {
            column: byte_offset + 1,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

/// Labels a selector can be evaluated against.
pub trait Labels {
    /// The value of `key`, if the label is present.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<S: std::hash::BuildHasher> Labels for HashMap<String, String, S> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for [(&str, &str)] {
    fn label(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

impl Selector {
    /// Parses a selector; an empty or blank one is `all()`.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        parser::parse(input)
    }

    /// Whether the selector matches an object with these labels.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        match self {
            Selector::All | Selector::Global => true,
            Selector::Has(key) => labels.label(key).is_some(),
            Selector::Equal(key, value) => labels.label(key) == Some(value.as_str()),
            Selector::NotEqual(key, value) => labels.label(key) != Some(value.as_str()),
            Selector::In(key, set) => labels.label(key).is_some_and(|v| set.contains(v)),
            Selector::NotIn(key, set) => !labels.label(key).is_some_and(|v| set.contains(v)),
            Selector::Contains(key, value) => labels
                .label(key)
                .is_some_and(|v| v.contains(value.as_str())),
            Selector::StartsWith(key, value) => labels
                .label(key)
                .is_some_and(|v| v.starts_with(value.as_str())),
            Selector::EndsWith(key, value) => labels
                .label(key)
                .is_some_and(|v| v.ends_with(value.as_str())),
            Selector::Not(inner) => !inner.matches(labels),
            Selector::And(operands) => operands.iter().all(|s| s.matches(labels)),
            Selector::Or(operands) => operands.iter().any(|s| s.matches(labels)),
        }
    }

    /// The canonical text, as Calico prints it.
    pub fn canonical(&self) -> String {
        self.to_string()
    }

    /// A stable identity derived from the canonical text: `s:` + base64url(SHA-224), as Calico
    /// derives IP set names.
    pub fn unique_id(&self) -> String {
        let digest = Sha224::digest(format!("s:{self}").as_bytes());
        format!(
            "s:{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
        )
    }
}

/// Quotes a value as Calico's canonicaliser does: `"…"` unless the value holds a `"`.
fn quote(value: &str) -> String {
    if value.contains('"') {
        format!("'{value}'")
    } else {
        format!("\"{value}\"")
    }
}

fn write_set(f: &mut fmt::Formatter<'_>, set: &BTreeSet<String>) -> fmt::Result {
    f.write_str("{")?;
    for (index, value) in set.iter().enumerate() {
        if index > 0 {
            f.write_str(", ")?;
        }
        f.write_str(&quote(value))?;
    }
    f.write_str("}")
}

fn write_joined(f: &mut fmt::Formatter<'_>, operands: &[Selector], joiner: &str) -> fmt::Result {
    f.write_str("(")?;
    for (index, operand) in operands.iter().enumerate() {
        if index > 0 {
            f.write_str(joiner)?;
        }
        write!(f, "{operand}")?;
    }
    f.write_str(")")
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("all()"),
            Selector::Global => f.write_str("global()"),
            Selector::Has(key) => write!(f, "has({key})"),
            Selector::Equal(key, value) => write!(f, "{key} == {}", quote(value)),
            Selector::NotEqual(key, value) => write!(f, "{key} != {}", quote(value)),
            Selector::In(key, set) => {
                write!(f, "{key} in ")?;
                write_set(f, set)
            }
            Selector::NotIn(key, set) => {
                write!(f, "{key} not in ")?;
                write_set(f, set)
            }
            Selector::Contains(key, value) => write!(f, "{key} contains {}", quote(value)),
            Selector::StartsWith(key, value) => write!(f, "{key} starts with {}", quote(value)),
            Selector::EndsWith(key, value) => write!(f, "{key} ends with {}", quote(value)),
            Selector::Not(inner) => write!(f, "!{inner}"),
            Selector::And(operands) => write_joined(f, operands, " && "),
            Selector::Or(operands) => write_joined(f, operands, " || "),
        }
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Selector, SelectorError> {
        Selector::parse(input)
    }
}
