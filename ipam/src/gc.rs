//! Reading the inventory for [`crate::check`], and the leak garbage collector.
//!
//! The GC is a library function a node agent calls periodically: a handle seen leaked (no
//! workload endpoint, no node for a tunnel address) or empty (holding no address) becomes a
//! candidate; once it has been a candidate for the grace period, the report is taken again
//! and, if the handle is still leaked, its addresses are released and the handle deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::IpNet;
use twill_shared::client::decode;
use twill_shared::datastore::Datastore;
use twill_shared::resource::{Kind, Resource};

use crate::check::{self, Endpoint, Inventory, Report};
use crate::runtime::{Ipam, IpamError};

/// Reads every block, handle, workload endpoint and node.
pub async fn inventory(store: &dyn Datastore) -> Result<Inventory, IpamError> {
    let mut inventory = Inventory::default();
    let kinds = [
        Kind::IpamBlock,
        Kind::IpamHandle,
        Kind::WorkloadEndpoint,
        Kind::Node,
    ];
    for kind in kinds {
        for stored in store.list(Some(kind), None).await?.items {
            let key = stored.key.clone();
            let resource = decode(stored).map_err(|err| IpamError::Corrupt {
                key,
                reason: err.to_string(),
            })?;
            add(&mut inventory, resource);
        }
    }
    Ok(inventory)
}

fn add(inventory: &mut Inventory, resource: Resource) {
    match resource {
        Resource::IpamBlock(object) => inventory.blocks.push(object.spec),
        Resource::IpamHandle(object) => inventory
            .handles
            .push((object.metadata.name.unwrap_or_default(), object.spec)),
        Resource::Node(object) => {
            inventory
                .nodes
                .insert(object.metadata.name.unwrap_or_default());
        }
        Resource::WorkloadEndpoint(object) => {
            let namespace = object.metadata.namespace.clone().unwrap_or_default();
            let name = format!("{namespace}/{}", object.metadata.name.unwrap_or_default());
            let spec = object.spec;
            inventory.endpoints.push(Endpoint {
                name,
                container_id: spec.container_id,
                pod: spec.pod.map(|pod| (namespace, pod)),
                addresses: spec
                    .ip_networks
                    .into_iter()
                    .flatten()
                    .map(|c| c.0.addr())
                    .collect(),
            });
        }
        _ => {}
    }
}

/// The consistency report of a datastore.
pub async fn report(store: &dyn Datastore) -> Result<Report, IpamError> {
    Ok(check::check(&inventory(store).await?))
}

/// What the GC frees: handles whose addresses no endpoint or node uses, and handles that
/// hold no address at all (left by an allocation cut short between its handle write and its
/// block write: single-object writes, docs/design/ipam.md).
fn collectable(report: &Report) -> BTreeSet<String> {
    let mut handles = report.leaked_handles();
    handles.extend(report.empty_handles.iter().cloned());
    handles
}

/// The leak collector's memory between runs: when each candidate was first seen leaked.
#[derive(Debug, Default)]
pub struct Gc {
    candidates: BTreeMap<String, std::time::Duration>,
}

impl Gc {
    /// One pass at `now` (since any fixed epoch, at full precision: whole seconds would let a
    /// candidate go up to a second before its grace period ends): returns the handles
    /// released.
    pub async fn run(
        &mut self,
        ipam: &Ipam,
        grace: std::time::Duration,
        now: std::time::Duration,
    ) -> Result<Vec<String>, IpamError> {
        let leaked = collectable(&report(ipam.store().as_ref()).await?);
        self.candidates.retain(|handle, _| leaked.contains(handle));
        for handle in &leaked {
            self.candidates.entry(handle.clone()).or_insert(now);
        }
        let due: BTreeSet<String> = self
            .candidates
            .iter()
            .filter(|(_, &since)| now.saturating_sub(since) >= grace)
            .map(|(handle, _)| handle.clone())
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        // Validate again right before releasing: an endpoint may have appeared meanwhile.
        let still = collectable(&report(ipam.store().as_ref()).await?);
        let mut released = Vec::new();
        for handle in due.intersection(&still) {
            let ips = ipam.release_handle(handle).await?;
            tracing::info!(handle = %handle, addresses = ?ips, "released a leaked handle");
            self.candidates.remove(handle);
            released.push(handle.clone());
        }
        Ok(released)
    }

    /// The current candidates and when each was first seen.
    pub fn candidates(&self) -> &BTreeMap<String, std::time::Duration> {
        &self.candidates
    }
}

/// What [`release_deleted_nodes`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCleanup {
    /// Nodes IPAM still named that no longer exist.
    pub nodes: BTreeSet<String>,
    /// Their handles released.
    pub handles: Vec<String>,
    /// Their empty blocks freed.
    pub blocks: Vec<IpNet>,
    /// Their block affinities removed.
    pub affinities: usize,
}

/// Cleans up after nodes that were deleted (Calico kube-controllers' node controller): the
/// handles of their addresses that nothing uses any more (a pod gone, the node's tunnel
/// address) are released at once — no allocation can be in flight on a node that is gone,
/// so no grace period is needed — then their empty blocks and their affinities go. Blocks
/// still holding a live pod's address stay until that pod goes (a later pass).
pub async fn release_deleted_nodes(store: &Arc<dyn Datastore>) -> Result<NodeCleanup, IpamError> {
    let inventory = inventory(store.as_ref()).await?;
    let report = check::check(&inventory);
    let mut cleanup = NodeCleanup::default();
    for (_, node) in &report.orphaned_blocks {
        cleanup.nodes.insert(node.clone());
    }
    for stored in store.list(Some(Kind::BlockAffinity), None).await?.items {
        if let Some(node) = stored.value["spec"]["node"].as_str() {
            if !inventory.nodes.contains(node) {
                cleanup.nodes.insert(node.to_string());
            }
        }
    }
    let mut handles: BTreeMap<String, String> = BTreeMap::new();
    for allocation in &report.leaked {
        if let Some(node) = allocation.attributes.get("node") {
            if !inventory.nodes.contains(node) {
                cleanup.nodes.insert(node.clone());
                handles.insert(allocation.handle.clone(), node.clone());
            }
        }
    }
    for (handle, node) in handles {
        let ips = Ipam::new(store.clone(), &node, None)
            .release_handle(&handle)
            .await?;
        tracing::info!(%handle, %node, addresses = ?ips, "released a deleted node's handle");
        cleanup.handles.push(handle);
    }
    for node in &cleanup.nodes {
        let (blocks, affinities) = Ipam::new(store.clone(), node, None).release_node().await?;
        if !blocks.is_empty() || affinities > 0 {
            tracing::info!(%node, ?blocks, affinities, "released a deleted node's blocks");
        }
        cleanup.blocks.extend(blocks);
        cleanup.affinities += affinities;
    }
    Ok(cleanup)
}
