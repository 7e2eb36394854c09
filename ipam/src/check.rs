//! The consistency report behind `twillctl ipam check` and the leak GC: pure, over what was
//! read from the datastore.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use twill_shared::resource::ipam::{IpamBlockSpec, IpamHandleSpec};

use crate::block;

/// A workload endpoint as the report needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `namespace/name` of the WorkloadEndpoint.
    pub name: String,
    /// Its container ID.
    pub container_id: Option<String>,
    /// Its pod's namespace and name.
    pub pod: Option<(String, String)>,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
}

/// Everything the report reads.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Every block.
    pub blocks: Vec<IpamBlockSpec>,
    /// Every handle: object name and spec.
    pub handles: Vec<(String, IpamHandleSpec)>,
    /// Every workload endpoint.
    pub endpoints: Vec<Endpoint>,
    /// Every node's name.
    pub nodes: BTreeSet<String>,
}

/// An allocation and what holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Allocation {
    /// The address.
    pub ip: IpAddr,
    /// Its block.
    pub block: IpNet,
    /// Its handle.
    pub handle: String,
    /// Namespace, pod and node, as recorded at allocation.
    pub attributes: BTreeMap<String, String>,
}

/// What `ipam check` finds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Allocations counted.
    pub allocations: usize,
    /// Allocations whose handle belongs to no workload endpoint (nor a node's tunnel).
    pub leaked: Vec<Allocation>,
    /// Endpoint addresses that are not allocated (or allocated to another handle).
    pub unallocated: Vec<(String, IpAddr)>,
    /// Handles that no block holds an address for.
    pub empty_handles: Vec<String>,
    /// Blocks whose affinity names a node that does not exist.
    pub orphaned_blocks: Vec<(IpNet, String)>,
}

impl Report {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.leaked.is_empty()
            && self.unallocated.is_empty()
            && self.empty_handles.is_empty()
            && self.orphaned_blocks.is_empty()
    }

    /// The handles of leaked allocations, each once.
    pub fn leaked_handles(&self) -> BTreeSet<String> {
        self.leaked.iter().map(|a| a.handle.clone()).collect()
    }
}

/// Which handles an endpoint or a node owns: `<network>.<containerID>` for the endpoint's
/// container, and the tunnel handles of existing nodes.
fn handle_in_use(
    handle: &str,
    attributes: &BTreeMap<String, String>,
    inventory: &Inventory,
    containers: &BTreeSet<&str>,
) -> bool {
    if let Some((_, container)) = handle.split_once('.') {
        if containers.contains(container) {
            return true;
        }
    }
    for suffix in [
        "ipip-tunnel-addr-",
        "vxlan-tunnel-addr-",
        "vxlan-v6-tunnel-addr-",
        "wireguard-tunnel-addr-",
    ] {
        if let Some(node) = handle.strip_prefix(suffix) {
            return inventory.nodes.contains(node);
        }
    }
    let pod = (attributes.get("namespace"), attributes.get("pod"));
    if let (Some(namespace), Some(pod)) = pod {
        // Without a container ID to compare, a pod of that name with no container known
        // still owns it (an endpoint written by another CNI).
        return inventory.endpoints.iter().any(|e| {
            e.container_id.is_none()
                && e.pod
                    .as_ref()
                    .is_some_and(|(n, p)| n == namespace && p == pod)
        });
    }
    false
}

/// Builds the report.
pub fn check(inventory: &Inventory) -> Report {
    let mut report = Report::default();
    let containers: BTreeSet<&str> = inventory
        .endpoints
        .iter()
        .filter_map(|e| e.container_id.as_deref())
        .collect();
    let mut holders: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut held_handles: BTreeSet<String> = BTreeSet::new();
    for spec in &inventory.blocks {
        let Some(cidr) = spec.cidr.map(|c| c.0) else {
            continue;
        };
        if let Some(node) = spec
            .affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
        {
            if !inventory.nodes.is_empty() && !inventory.nodes.contains(node) {
                report.orphaned_blocks.push((cidr, node.to_string()));
            }
        }
        for (ip, attribute) in block::allocated(spec) {
            report.allocations += 1;
            let handle = attribute.handle_id.clone().unwrap_or_default();
            let attributes = attribute.secondary.clone().unwrap_or_default();
            holders.insert(ip, handle.clone());
            held_handles.insert(handle.clone());
            if !handle_in_use(&handle, &attributes, inventory, &containers) {
                report.leaked.push(Allocation {
                    ip,
                    block: cidr,
                    handle,
                    attributes,
                });
            }
        }
    }
    for endpoint in &inventory.endpoints {
        for &ip in &endpoint.addresses {
            let owned = holders
                .get(&ip)
                .is_some_and(|handle| match &endpoint.container_id {
                    Some(container) => handle.split_once('.').is_some_and(|(_, c)| c == container),
                    None => true,
                });
            if !owned {
                report.unallocated.push((endpoint.name.clone(), ip));
            }
        }
    }
    for (name, spec) in &inventory.handles {
        let id = spec.handle_id.clone().unwrap_or_else(|| name.clone());
        if !held_handles.contains(&id) {
            report.empty_handles.push(id);
        }
    }
    report.leaked.sort();
    report.unallocated.sort();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{assign, new_block, Request};

    fn block_with(cidr: &str, holders: &[(&str, &str, &str)]) -> IpamBlockSpec {
        let mut spec = new_block(cidr.parse().unwrap(), Some("host:node-1".into()), None);
        for (handle, namespace, pod) in holders {
            let attributes = BTreeMap::from([
                ("namespace".to_string(), namespace.to_string()),
                ("pod".to_string(), pod.to_string()),
            ]);
            let request = Request {
                count: 1,
                handle,
                attributes: &attributes,
                reserved: &[],
            };
            spec = assign(&spec, &request).unwrap().0;
        }
        spec
    }

    #[test]
    fn an_allocation_without_an_endpoint_is_a_leak_and_an_endpoint_without_one_is_reported() {
        let inventory = Inventory {
            blocks: vec![block_with(
                "10.90.0.0/30",
                &[
                    ("net.c1", "x", "a"),
                    ("net.c2", "x", "b"),
                    ("vxlan-tunnel-addr-node-1", "", ""),
                ],
            )],
            handles: vec![(
                "net.c9".into(),
                IpamHandleSpec {
                    handle_id: Some("net.c9".into()),
                    ..Default::default()
                },
            )],
            endpoints: vec![
                Endpoint {
                    name: "x/a".into(),
                    container_id: Some("c1".into()),
                    pod: Some(("x".into(), "a".into())),
                    addresses: vec!["10.90.0.0".parse().unwrap()],
                },
                Endpoint {
                    name: "x/z".into(),
                    container_id: Some("c7".into()),
                    pod: Some(("x".into(), "z".into())),
                    addresses: vec!["10.90.0.3".parse().unwrap()],
                },
            ],
            nodes: BTreeSet::from(["node-1".to_string()]),
        };
        let report = check(&inventory);
        assert_eq!(report.allocations, 3);
        let leaked: Vec<(String, String)> = report
            .leaked
            .iter()
            .map(|a| (a.ip.to_string(), a.handle.clone()))
            .collect();
        assert_eq!(leaked, [("10.90.0.1".to_string(), "net.c2".to_string())]);
        assert_eq!(
            report.unallocated,
            [("x/z".to_string(), "10.90.0.3".parse().unwrap())]
        );
        assert_eq!(report.empty_handles, ["net.c9"]);
        assert!(!report.is_clean());
    }

    #[test]
    fn a_tunnel_address_of_a_removed_node_is_a_leak() {
        let inventory = Inventory {
            blocks: vec![block_with(
                "10.90.0.0/30",
                &[("vxlan-tunnel-addr-gone", "", "")],
            )],
            nodes: BTreeSet::from(["node-1".to_string()]),
            ..Default::default()
        };
        assert_eq!(check(&inventory).leaked.len(), 1);
    }
}
