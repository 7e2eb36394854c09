//! apply, create, replace, get and delete.

use std::collections::BTreeSet;
use std::io::Read;

use anyhow::Context;
use twill_shared::client::{Client, Outcome, WriteMode};
use twill_shared::datastore::{connect, DatastoreError};
use twill_shared::resource::document::parse_documents_in;
use twill_shared::resource::{Key, Kind, Resource};

use crate::{table, usage, Failure, Output};

async fn client(url: &str) -> Result<Client, Failure> {
    Ok(Client::new(connect(url).await?))
}

fn read_input(file: &str) -> Result<String, Failure> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        Ok(text)
    } else {
        Ok(std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?)
    }
}

/// The resources of a file, of standard input (`-`), or of every `.yaml`/`.yml`/`.json` file
/// of a directory. All or nothing: any bad document fails the whole input.
fn parse_file(file: &str, namespace: &str) -> Result<Vec<Resource>, Failure> {
    let path = std::path::Path::new(file);
    let sources: Vec<(String, String)> = if file != "-" && path.is_dir() {
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {file}"))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            })
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                Ok((
                    p.display().to_string(),
                    read_input(&p.display().to_string())?,
                ))
            })
            .collect::<Result<_, Failure>>()?
    } else {
        let source = if file == "-" { "standard input" } else { file };
        vec![(source.to_string(), read_input(file)?)]
    };
    let mut resources = Vec::new();
    let mut problems = Vec::new();
    for (source, text) in &sources {
        match parse_documents_in(text, namespace) {
            Ok(mut parsed) => resources.append(&mut parsed),
            Err(errors) => problems.push(format!("{source}:\n{errors}")),
        }
    }
    if !problems.is_empty() {
        return Err(anyhow::anyhow!("nothing was applied:\n{}", problems.join("\n")).into());
    }
    if resources.is_empty() {
        return Err(anyhow::anyhow!("{file}: no documents").into());
    }
    Ok(resources)
}

/// "'NetworkPolicy'" when all objects are of one kind, else "" — as calicoctl words it.
fn kinds_phrase(kinds: impl Iterator<Item = Kind>) -> String {
    let kinds: BTreeSet<String> = kinds.map(|kind| kind.to_string()).collect();
    match kinds.iter().next() {
        Some(kind) if kinds.len() == 1 => format!(" '{kind}'"),
        _ => String::new(),
    }
}

/// apply, create or replace the documents of a file.
pub async fn write(url: &str, file: &str, namespace: &str, mode: WriteMode) -> Result<(), Failure> {
    let resources = parse_file(file, namespace)?;
    let client = client(url).await?;
    let outcomes = client.write_all(&resources, mode).await?;
    for resource in &resources {
        for warning in twill_felix::model::unenforced(resource) {
            eprintln!("warning: {}: {warning}", resource.key());
        }
    }
    let verb = match mode {
        WriteMode::Apply => "applied",
        WriteMode::Create => "created",
        WriteMode::Replace => "replaced",
    };
    let unchanged = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Unchanged)
        .count();
    let note = if unchanged > 0 {
        format!(" ({unchanged} unchanged)")
    } else {
        String::new()
    };
    println!(
        "Successfully {verb} {}{} resource(s){note}",
        outcomes.len(),
        kinds_phrase(resources.iter().map(Resource::kind))
    );
    Ok(())
}

/// The kind a command-line name means, or a usage error listing the kinds.
pub fn resolve_kind(name: &str) -> Result<Kind, Failure> {
    Kind::from_cli_name(name).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        usage(format!(
            "unknown resource kind {name:?}; known kinds: {}",
            known.join(", ")
        ))
    })
}

fn key_of(kind: Kind, name: &str, namespace: &str) -> Key {
    if kind.namespaced() {
        Key::namespaced(kind, namespace, name)
    } else {
        Key::cluster(kind, name)
    }
}

/// get KIND [NAME].
pub async fn get(
    url: &str,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    output: Output,
) -> Result<(), Failure> {
    let kind = resolve_kind(kind)?;
    let client = client(url).await?;
    let all_namespaces = namespace.is_none();
    let resources = match name {
        Some(name) => {
            let key = key_of(
                kind,
                name,
                namespace.unwrap_or(twill_shared::resource::DEFAULT_NAMESPACE),
            );
            match client.get(&key).await? {
                Some(resource) => vec![resource],
                None => return Err(DatastoreError::NotFound { key }.into()),
            }
        }
        None => {
            client
                .list(kind, namespace.filter(|_| kind.namespaced()))
                .await?
        }
    };
    let single = name.is_some();
    match output {
        Output::Table | Output::Wide => {
            print!(
                "{}",
                table::render(
                    kind,
                    &resources,
                    output == Output::Wide,
                    all_namespaces && kind.namespaced()
                )
            )
        }
        Output::Yaml => print!(
            "{}",
            serde_yaml::to_string(&document(kind, &resources, single))?
        ),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&document(kind, &resources, single))?
        ),
    }
    Ok(())
}

/// One object, or a `<Kind>List` of them (which `apply` accepts back).
fn document(kind: Kind, resources: &[Resource], single: bool) -> serde_json::Value {
    if single {
        return resources[0].to_value();
    }
    serde_json::json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.name()),
        "items": resources.iter().map(Resource::to_value).collect::<Vec<_>>(),
    })
}

/// delete KIND NAME.
pub async fn delete_one(
    url: &str,
    kind: &str,
    name: &str,
    namespace: &str,
    skip_missing: bool,
) -> Result<(), Failure> {
    let kind = resolve_kind(kind)?;
    delete_keys(url, vec![key_of(kind, name, namespace)], skip_missing).await
}

/// delete -f FILE.
pub async fn delete_file(
    url: &str,
    file: &str,
    namespace: &str,
    skip_missing: bool,
) -> Result<(), Failure> {
    let resources = parse_file(file, namespace)?;
    delete_keys(
        url,
        resources.iter().map(Resource::key).collect(),
        skip_missing,
    )
    .await
}

async fn delete_keys(url: &str, keys: Vec<Key>, skip_missing: bool) -> Result<(), Failure> {
    let client = client(url).await?;
    let mut present = Vec::new();
    for key in &keys {
        match client.store().get(key).await? {
            Some(_) => present.push((key.clone(), None)),
            None if skip_missing => {}
            None => return Err(DatastoreError::NotFound { key: key.clone() }.into()),
        }
    }
    if !present.is_empty() {
        client.delete_all(&present).await?;
    }
    println!(
        "Successfully deleted {}{} resource(s)",
        present.len(),
        kinds_phrase(present.iter().map(|(key, _)| key.kind))
    );
    Ok(())
}
