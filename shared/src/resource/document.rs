//! Parsing files of resources: YAML or JSON, several documents separated by `---`, and
//! `List` documents (`kind: List` or `kind: <Kind>List` with `items`).
//!
//! A file is all or nothing: [`parse_documents`] returns either every resource or every
//! problem, each naming its document (index, kind, namespace/name), the field path and the
//! reason.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::validate::validate;
use super::{Key, Kind, Resource};

/// A problem with one document of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// 1-based position of the document in the file (items of a List count one each).
    pub index: usize,
    /// `Kind namespace/name` when known.
    pub object: Option<String>,
    /// Line and column (1-based) when the problem is in the YAML syntax.
    pub location: Option<(usize, usize)>,
    /// Dotted path of the bad field, when the problem is in one field.
    pub path: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.index)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if let Some((line, column)) = self.location {
            write!(f, ", line {line} column {column}")?;
        }
        f.write_str(": ")?;
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.reason)
    }
}

/// Every problem found in a file; nothing of the file should be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DocumentErrors(pub Vec<DocumentError>);

impl fmt::Display for DocumentErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Parses every document of `text`, applies defaults and validates. Returns all resources or
/// all problems. Namespaced objects that name no namespace go to `default`.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, DocumentErrors> {
    parse_documents_in(text, super::DEFAULT_NAMESPACE)
}

/// As [`parse_documents`], putting namespaced objects that name no namespace in `namespace`.
pub fn parse_documents_in(text: &str, namespace: &str) -> Result<Vec<Resource>, DocumentErrors> {
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => {}
            Ok(value) => expand_list(value, &mut values),
            Err(err) => {
                // After a syntax error the rest of the stream cannot be trusted.
                errors.push(syntax_error(values.len() + 1, &err));
                break;
            }
        }
    }
    let mut resources = Vec::new();
    let mut seen: BTreeMap<Key, usize> = BTreeMap::new();
    for (offset, value) in values.into_iter().enumerate() {
        let index = offset + 1;
        match parse_one(index, value, namespace) {
            Ok(resource) => {
                let key = resource.key();
                if let Some(first) = seen.insert(key.clone(), index) {
                    errors.push(DocumentError {
                        index,
                        object: Some(key.to_string()),
                        location: None,
                        path: Some("metadata.name".into()),
                        reason: format!("document {first} already defines {key}"),
                    });
                }
                resources.push(resource);
            }
            Err(mut problems) => errors.append(&mut problems),
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(DocumentErrors(errors))
    }
}

fn syntax_error(index: usize, err: &serde_yaml::Error) -> DocumentError {
    let location = err.location().map(|l| (l.line(), l.column()));
    // serde_yaml appends " at line L column C" to the message; the location is shown apart.
    let message = err.to_string();
    let reason = match message.find(" at line ") {
        Some(cut) if location.is_some() => message[..cut].to_string(),
        _ => message,
    };
    DocumentError {
        index,
        object: None,
        location,
        path: None,
        reason: format!("invalid YAML: {reason}"),
    }
}

/// Adds `value` to `out`, or its items if it is a List.
fn expand_list(value: serde_yaml::Value, out: &mut Vec<serde_yaml::Value>) {
    let is_list = value
        .get("kind")
        .and_then(serde_yaml::Value::as_str)
        .is_some_and(|kind| kind.ends_with("List"))
        && value
            .get("items")
            .is_some_and(serde_yaml::Value::is_sequence);
    if !is_list {
        out.push(value);
        return;
    }
    if let Some(serde_yaml::Value::Sequence(items)) = value.get("items") {
        out.extend(items.iter().cloned());
    }
}

fn describe(value: &serde_yaml::Value) -> Option<String> {
    let kind = value.get("kind")?.as_str()?;
    let metadata = value.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(serde_yaml::Value::as_str)?;
    Some(
        match metadata
            .and_then(|m| m.get("namespace"))
            .and_then(serde_yaml::Value::as_str)
        {
            Some(namespace) => format!("{kind} {namespace}/{name}"),
            None => format!("{kind} {name}"),
        },
    )
}

fn parse_one(
    index: usize,
    value: serde_yaml::Value,
    namespace: &str,
) -> Result<Resource, Vec<DocumentError>> {
    let object = describe(&value);
    let fail = |path: Option<String>, reason: String| DocumentError {
        index,
        object: object.clone(),
        location: None,
        path,
        reason,
    };
    if !value.is_mapping() {
        return Err(vec![fail(
            None,
            "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
        )]);
    }
    let text_of = |field: &str| {
        value
            .get(field)
            .and_then(serde_yaml::Value::as_str)
            .map(str::to_string)
    };
    let (Some(api_version), Some(kind_name)) = (text_of("apiVersion"), text_of("kind")) else {
        let missing = if text_of("apiVersion").is_none() {
            "apiVersion"
        } else {
            "kind"
        };
        return Err(vec![fail(Some(missing.into()), "required".into())]);
    };
    let Some(kind) = Kind::from_type(&api_version, &kind_name) else {
        return Err(vec![fail(None, unknown_type(&api_version, &kind_name))]);
    };
    let value = match kind {
        Kind::ServiceAccount => fields_as_spec(
            value,
            &[
                "automountServiceAccountToken",
                "secrets",
                "imagePullSecrets",
            ],
        ),
        Kind::EndpointSlice => fields_as_spec(value, &["addressType", "endpoints", "ports"]),
        Kind::Service => status_into_spec(value),
        _ => value,
    };
    let mut resource = Resource::decode(kind, value).map_err(|err| {
        let path = err.path().to_string();
        let reason = err.inner().to_string();
        vec![fail(
            Some(if path == "." {
                "(document)".into()
            } else {
                path
            }),
            reason,
        )]
    })?;
    resource.apply_defaults(namespace);
    let problems = validate(&resource);
    if problems.is_empty() {
        Ok(resource)
    } else {
        Err(problems
            .into_iter()
            .map(|p| fail(Some(p.path), p.reason))
            .collect())
    }
}

/// Fields of a kind without a spec (ServiceAccount, EndpointSlice) that sit beside
/// `metadata`, moved under `spec` where the model keeps them.
fn fields_as_spec(mut value: serde_yaml::Value, fields: &[&str]) -> serde_yaml::Value {
    let Some(map) = value.as_mapping_mut() else {
        return value;
    };
    let mut spec = serde_yaml::Mapping::new();
    for field in fields {
        if let Some(v) = map.remove(*field) {
            spec.insert((*field).into(), v);
        }
    }
    if !spec.is_empty() && !map.contains_key("spec") {
        map.insert("spec".into(), serde_yaml::Value::Mapping(spec));
    }
    value
}

/// A Service's `status`, moved to `spec.status` where the model keeps it.
fn status_into_spec(mut value: serde_yaml::Value) -> serde_yaml::Value {
    let Some(map) = value.as_mapping_mut() else {
        return value;
    };
    let Some(status) = map.remove("status") else {
        return value;
    };
    let spec = map
        .entry("spec".into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    if let Some(spec) = spec.as_mapping_mut() {
        spec.insert("status".into(), status);
    }
    value
}

fn unknown_type(api_version: &str, kind_name: &str) -> String {
    let same_name: Vec<&str> = Kind::ALL
        .iter()
        .filter(|k| k.name() == kind_name)
        .map(|k| k.api_version())
        .collect();
    if !same_name.is_empty() {
        return format!(
            "kind {kind_name} is not served at apiVersion {api_version:?} (expected {})",
            same_name.join(" or ")
        );
    }
    let known_version = Kind::ALL.iter().any(|k| k.api_version() == api_version);
    if known_version {
        format!("unknown kind {kind_name:?} for apiVersion {api_version}")
    } else {
        format!("unknown apiVersion {api_version:?} (expected projectcalico.org/v3, networking.k8s.io/v1 or v1)")
    }
}
