//! `twillctl policy explain` and `twillctl node status`.

use std::path::Path;

use twill_felix::calc::programs::World;
use twill_felix::explain::{explain, Packet};
use twill_felix::model::{Entity, EntityKind, Model, KINDS};
use twill_shared::client::decode;
use twill_shared::datastore::connect;

use crate::{usage, Failure};

/// Reads every resource felix follows into a model.
pub async fn load_model(datastore: &str) -> anyhow::Result<Model> {
    let store = connect(datastore).await?;
    let mut model = Model::default();
    for kind in KINDS {
        for stored in store.list(Some(*kind), None).await?.items {
            let key = stored.key.clone();
            match decode(stored) {
                Ok(resource) => {
                    model.set(key, Some(resource));
                }
                Err(err) => eprintln!("warning: {key}: ignored, it does not decode: {err}"),
            }
        }
    }
    Ok(model)
}

fn find_pod<'a>(entities: &'a [Entity], pod: &str) -> Result<&'a Entity, Failure> {
    let (namespace, name) = pod
        .split_once('/')
        .ok_or_else(|| usage(format!("{pod:?}: pods are NS/POD, e.g. default/frontend")))?;
    entities
        .iter()
        .find(|e| {
            e.kind == EntityKind::Workload
                && e.namespace.as_deref() == Some(namespace)
                && e.pod.as_deref() == Some(name)
        })
        .ok_or_else(|| {
            anyhow::anyhow!("no workload endpoint for pod {pod} in the datastore").into()
        })
}

fn parse_port(text: &str) -> Result<(u16, u8, String), Failure> {
    let (port, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let port: u16 = port
        .parse()
        .map_err(|_| usage(format!("--port {text:?}: {port:?} is not a port number")))?;
    let (number, name) = match protocol.to_ascii_lowercase().as_str() {
        "tcp" => (6, "TCP"),
        "udp" => (17, "UDP"),
        "sctp" => (132, "SCTP"),
        other => {
            return Err(usage(format!(
                "--port {text:?}: {other:?} is not tcp, udp or sctp"
            )))
        }
    };
    Ok((port, number, name.to_string()))
}

/// `twillctl policy explain`.
pub async fn explain_command(
    datastore: &str,
    from: &str,
    to: &str,
    port: &str,
    json: bool,
) -> Result<(), Failure> {
    let (port, protocol, protocol_name) = parse_port(port)?;
    let model = load_model(datastore).await?;
    let entities = model.entities();
    let source = find_pod(&entities, from)?.clone();
    let destination = find_pod(&entities, to)?.clone();
    let world = World::new(&model, entities);
    let (Some(src), Some(dst)) = (source.nets.first(), destination.nets.first()) else {
        return Err(anyhow::anyhow!("{from} or {to} has no address").into());
    };
    let packet = Packet {
        src: src.addr(),
        dst: dst.addr(),
        protocol,
        src_port: 0,
        dst_port: port,
    };
    let explanation = explain(&world, Some(&source), Some(&destination), &packet);
    if json {
        let trace = |t: &Option<twill_felix::explain::Trace>| {
            t.as_ref().map(|t| serde_json::json!({"allowed": t.allowed, "decided_by": t.decided_by, "text": t.to_string()}))
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "from": from, "to": to, "port": port, "protocol": protocol_name,
                "allowed": explanation.allowed(),
                "egress": trace(&explanation.egress), "ingress": trace(&explanation.ingress),
            }))?
        );
        return Ok(());
    }
    println!(
        "{from} ({}) → {to} ({}) port {port}/{protocol_name}\n",
        packet.src, packet.dst
    );
    for trace in [&explanation.egress, &explanation.ingress]
        .into_iter()
        .flatten()
    {
        println!("{trace}");
    }
    for warning in
        twill_felix::calc::compute(&model, &twill_felix::calc::Config::from_model(&model, ""))
            .warnings
    {
        println!("warning: {warning}");
    }
    println!(
        "verdict: {}",
        if explanation.allowed() {
            "ALLOW"
        } else {
            "DENY"
        }
    );
    Ok(())
}

/// `twillctl node status`.
pub fn node_status(path: &Path, json: bool) -> Result<(), Failure> {
    let status = twill_node::status::Status::read(path).map_err(|err| {
        anyhow::anyhow!(
            "cannot read {}: {err} (is twill-node running with --status-file {}?)",
            path.display(),
            path.display()
        )
    })?;
    // A process that died but was not reaped yet (a zombie) is not running.
    let alive = std::fs::read_to_string(format!("/proc/{}/stat", status.pid))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
        .unwrap_or(false);
    if json {
        let mut value = serde_json::to_value(&status)?;
        value["running"] = serde_json::json!(alive);
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "twill-node on {} ({}), {}",
        status.node,
        status.mode,
        if alive { "running" } else { "NOT RUNNING" }
    );
    println!("  datastore:          {}", status.datastore);
    println!("  in sync:            {}", status.in_sync);
    println!("  datastore revision: {}", status.datastore_revision);
    println!("  applied revision:   {}", status.applied_revision);
    println!(
        "  last apply:         {:.1} ms at {}",
        status.last_apply_ms,
        status.last_apply_at.as_deref().unwrap_or("-")
    );
    println!("  endpoints:          {}", status.endpoints);
    println!("  policies:           {}", status.policies);
    println!(
        "  rules / ipset members: {} / {}",
        status.rules, status.ipset_members
    );
    println!(
        "  apply errors:       {}{}",
        status.apply_errors,
        status
            .last_error
            .as_ref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    );
    for invalid in &status.invalid_objects {
        println!("  INVALID: {invalid}");
    }
    for chain in &status.quarantined_chains {
        println!("  REFUSED BY THE KERNEL (set aside, drops everything): {chain}");
    }
    for warning in &status.warnings {
        println!("  warning: {warning}");
    }
    Ok(())
}
