//! `cargo xtask crds`: the CustomResourceDefinitions of Calico's kinds
//! (deploy/kubernetes/crds/, one file per kind), generated from the Rust resource model, so
//! the API server refuses what it can (types, enums, required fields) before Twill sees it.
//! A test fails when the files differ from what the model generates.
//!
//! Each spec's JSON schema comes from schemars (OpenAPI 3 settings, everything inlined), made
//! structural for Kubernetes with kube-core's rewriters; `additionalProperties: false` (serde's
//! `deny_unknown_fields`) is dropped: Kubernetes forbids it beside `properties`, and prunes or
//! (with kubectl's strict field validation) refuses unknown fields itself.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use twill_shared::kubernetes::{crd_kinds, served, Served};
use twill_shared::resource::Kind;

/// Where the manifests live, from the workspace root.
pub const DIR: &str = "deploy/kubernetes/crds";
/// The one file users apply: rbac.yaml (the namespace first), the CRDs, node.yaml.
pub const INSTALL: &str = "deploy/kubernetes/twill.yaml";

/// The spec schema of a kind, structural.
fn spec_schema(kind: Kind) -> Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3()
        .with(|settings| {
            settings.inline_subschemas = true;
            settings.meta_schema = None;
        })
        .with_transform(kube_core::schema::OptionalEnum)
        .with_transform(kube_core::schema::OptionalIntOrString)
        .with_transform(kube_core::schema::StructuralSchemaRewriter)
        .into_generator();
    let mut schema = kind.spec_schema(&mut generator);
    // A subschema is not transformed by itself (a root schema is): apply them here.
    for transform in generator.transforms_mut() {
        transform.transform(&mut schema);
    }
    let mut schema = schema.to_value();
    tidy(&mut schema);
    schema
}

/// What Kubernetes does not take in a structural schema, and what only adds noise.
fn tidy(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("additionalProperties") == Some(&Value::Bool(false)) {
                map.remove("additionalProperties");
            }
            map.remove("title");
            map.remove("$schema");
            // `nullable: true` says null is fine; an enum listing null is refused.
            if let Some(Value::Array(values)) = map.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            // Unsigned integer formats are schemars' own; Kubernetes knows int32/int64.
            if let Some(Value::String(format)) = map.get("format") {
                if format.starts_with("uint") || format == "int8" || format == "int16" {
                    map.remove("format");
                }
            }
            for child in map.values_mut() {
                tidy(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// The CRD of one kind.
pub fn crd(kind: Kind) -> Value {
    let Served::Crd(resource) = served(kind) else {
        panic!("{kind:?} is not a custom resource")
    };
    let singular = resource.kind.to_ascii_lowercase();
    let mut names = json!({
        "kind": resource.kind,
        "listKind": format!("{}List", resource.kind),
        "plural": resource.plural,
        "singular": singular,
    });
    let short: Vec<&str> = kind
        .aliases()
        .iter()
        .copied()
        .filter(|a| *a != singular && !a.contains('.') && a.len() <= 4)
        .collect();
    if !short.is_empty() {
        names["shortNames"] = json!(short);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{}.{}", resource.plural, resource.group)},
        "spec": {
            "group": resource.group,
            "names": names,
            "scope": if resource.namespaced { "Namespaced" } else { "Cluster" },
            "versions": [{
                "name": resource.version,
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": format!("{} ({}), generated from Twill's resource model.", resource.kind, resource.api_version()),
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(kind),
                    },
                }},
            }],
        },
    })
}

/// Every manifest: file name → YAML text.
pub fn manifests() -> Vec<(String, String)> {
    crd_kinds()
        .map(|kind| {
            let value = crd(kind);
            let name = value["metadata"]["name"]
                .as_str()
                .expect("a name")
                .to_string();
            let text = format!(
                "# Generated by `cargo xtask crds` from Twill's resource model; do not edit.\n{}",
                serde_yaml::to_string(&value).expect("YAML")
            );
            (format!("{name}.yaml"), text)
        })
        .collect()
}

/// twill.yaml's text from the files beside it and the generated CRDs.
pub fn install_manifest() -> anyhow::Result<String> {
    let dir = workspace().join("deploy/kubernetes");
    let mut text = String::from(
        "# Twill on Kubernetes: `kubectl apply -f twill.yaml`.\n\
         # Generated by `cargo xtask crds` from rbac.yaml, the CRDs (crds/) and node.yaml; do not edit.\n",
    );
    let mut add = |body: &str| {
        text.push_str("---\n");
        text.push_str(body.trim_start_matches("---\n").trim_end());
        text.push('\n');
    };
    add(&std::fs::read_to_string(dir.join("rbac.yaml"))?);
    for (_, crd) in manifests() {
        add(&crd);
    }
    add(&std::fs::read_to_string(dir.join("node.yaml"))?);
    Ok(text)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

/// Writes the manifests (removing stale ones); returns the directory.
pub fn write() -> anyhow::Result<PathBuf> {
    let dir = workspace().join(DIR);
    std::fs::create_dir_all(&dir)?;
    let wanted = manifests();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".yaml") && !wanted.iter().any(|(n, _)| *n == name) {
            std::fs::remove_file(&path)?;
        }
    }
    for (name, text) in wanted {
        std::fs::write(dir.join(name), text)?;
    }
    std::fs::write(workspace().join(INSTALL), install_manifest()?)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crds_are_what_the_model_generates() {
        let dir = workspace().join(DIR);
        let mut stale = Vec::new();
        for (name, text) in manifests() {
            match std::fs::read_to_string(dir.join(&name)) {
                Ok(committed) if committed == text => {}
                Ok(_) => stale.push(format!("{name} differs")),
                Err(_) => stale.push(format!("{name} is missing")),
            }
        }
        match std::fs::read_to_string(workspace().join(INSTALL)) {
            Ok(committed) if committed == install_manifest().unwrap() => {}
            Ok(_) => stale.push(format!("{INSTALL} differs")),
            Err(_) => stale.push(format!("{INSTALL} is missing")),
        }
        assert!(
            stale.is_empty(),
            "{}: run `cargo xtask crds` (or `cargo run -p xtask -- crds`)",
            stale.join(", ")
        );
    }

    #[test]
    fn schemas_are_structural_and_keep_types_enums_and_required_fields() {
        let pool = crd(Kind::IpPool);
        let spec = &pool["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["type"], "object");
        assert_eq!(spec["properties"]["cidr"]["type"], "string");
        assert_eq!(
            spec["properties"]["vxlanMode"]["enum"],
            json!(["Never", "Always", "CrossSubnet"])
        );
        let text = serde_json::to_string(&pool).unwrap();
        for forbidden in [
            "\"$ref\"",
            "\"additionalProperties\":false",
            "\"oneOf\"",
            "\"$schema\"",
        ] {
            assert!(!text.contains(forbidden), "{forbidden} in {text}");
        }
        let peer = crd(Kind::BgpPeer);
        let spec = &peer["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["asNumber"]["x-kubernetes-int-or-string"],
            true
        );
    }
}
