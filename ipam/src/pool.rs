//! Pure helpers around pools: which pools a request may use, the blocks of a pool in the
//! order a node tries them, and the datastore names of blocks, affinities and handles.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use twill_shared::resource::ipam::IpPoolSpec;

/// The address family of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// `IPv4` or `IPv6`.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// What an address is for (IPPool `allowedUses`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A pod or other workload.
    Workload,
    /// A node's tunnel device.
    Tunnel,
}

/// A pool as allocation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The pool's object name.
    pub name: String,
    /// Its CIDR.
    pub cidr: IpNet,
    /// Prefix length of its blocks.
    pub block_size: u8,
}

/// The pools a request may allocate from, in the order to try them: enabled, of the family,
/// allowing the use, selecting the node, and — when the request names pools — only those
/// (by name or CIDR, in the request's order).
pub fn usable_pools(
    pools: &[(String, IpPoolSpec)],
    family: Family,
    node_labels: &BTreeMap<String, String>,
    wanted: &[String],
    purpose: Use,
) -> Vec<Pool> {
    let mut usable: Vec<Pool> = pools
        .iter()
        .filter_map(|(name, spec)| {
            let cidr = spec.cidr?.0;
            let block_size =
                spec.block_size
                    .unwrap_or(if cidr.addr().is_ipv4() { 26 } else { 122 });
            let enabled = spec.disabled != Some(true);
            let selected = spec
                .node_selector
                .as_ref()
                .is_none_or(|s| s.selector().matches(node_labels));
            let allowed = spec.allowed_uses.as_ref().is_none_or(|uses| {
                uses.iter().any(|u| match purpose {
                    Use::Workload => u == "Workload",
                    Use::Tunnel => u == "Tunnel",
                })
            });
            let manual = spec.assignment_mode.as_deref() == Some("Manual") && wanted.is_empty();
            (enabled && selected && allowed && !manual && Family::of(cidr.addr()) == family).then(
                || Pool {
                    name: name.clone(),
                    cidr,
                    block_size,
                },
            )
        })
        .collect();
    if !wanted.is_empty() {
        let rank = |pool: &Pool| {
            wanted
                .iter()
                .position(|w| *w == pool.name || w.parse::<IpNet>().is_ok_and(|n| n == pool.cidr))
        };
        usable.retain(|pool| rank(pool).is_some());
        usable.sort_by_key(|pool| rank(pool));
    }
    usable
}

/// The pool containing an address, if any.
pub fn pool_of(pools: &[(String, IpPoolSpec)], ip: IpAddr) -> Option<Pool> {
    pools.iter().find_map(|(name, spec)| {
        let cidr = spec.cidr?.0;
        cidr.contains(&ip).then(|| Pool {
            name: name.clone(),
            cidr,
            block_size: spec
                .block_size
                .unwrap_or(if cidr.addr().is_ipv4() { 26 } else { 122 }),
        })
    })
}

/// The block of `pool` that holds `ip`.
pub fn block_containing(pool: &Pool, ip: IpAddr) -> IpNet {
    IpNet::new(ip, pool.block_size)
        .expect("the block size was validated against the family")
        .trunc()
}

/// The pool's blocks in the order `node` tries them: all of them, starting at a place derived
/// from the node's name, so nodes spread over the pool and one node always tries the same
/// order (as Calico seeds its block generator with the host name).
pub fn blocks_for_node<'a>(pool: &'a Pool, node: &str) -> impl Iterator<Item = IpNet> + 'a {
    let bits = u32::from(pool.block_size - pool.cidr.prefix_len()).min(24);
    let count = 1u64 << bits;
    let start = u64::from(fnv1a(node)) % count;
    (0..count).map(move |i| nth_block(pool, (start + i) % count))
}

fn nth_block(pool: &Pool, index: u64) -> IpNet {
    let shift = u32::from(pool.cidr.max_prefix_len() - pool.block_size);
    let addr = match pool.cidr {
        IpNet::V4(net) => IpAddr::V4((u32::from(net.network()) + ((index as u32) << shift)).into()),
        IpNet::V6(net) => {
            IpAddr::V6((u128::from(net.network()) + (u128::from(index) << shift)).into())
        }
    };
    IpNet::new(addr, pool.block_size).expect("a prefix length of the family")
}

fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The datastore name of a block: `10-90-0-0-26`, `fd00-90----122` (Calico's form).
pub fn block_name(cidr: IpNet) -> String {
    cidr.to_string().replace(['.', ':', '/'], "-")
}

/// The datastore name of a node's affinity for a block.
pub fn affinity_name(node: &str, cidr: IpNet) -> String {
    format!("{node}-{}", block_name(cidr))
}

/// The datastore name of a handle: the handle itself when it is a valid object name, else a
/// digest of it (the handle ID is kept in the object's spec).
pub fn handle_name(handle: &str) -> String {
    let valid = handle.len() <= 253
        && handle
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && handle
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && handle
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        return handle.to_string();
    }
    let digest = Sha256::digest(handle.as_bytes());
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("h-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, block_size: u8) -> Pool {
        Pool {
            name: "p".into(),
            cidr: cidr.parse().unwrap(),
            block_size,
        }
    }

    #[test]
    fn a_node_tries_every_block_of_the_pool_once() {
        let pool = pool("10.90.0.0/24", 26);
        let blocks: Vec<String> = blocks_for_node(&pool, "node-1")
            .map(|b| b.to_string())
            .collect();
        let mut sorted = blocks.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "10.90.0.0/26",
                "10.90.0.128/26",
                "10.90.0.192/26",
                "10.90.0.64/26"
            ]
        );
    }

    #[test]
    fn ipv6_blocks_are_aligned_inside_the_pool() {
        let pool = pool("fd00:90::/120", 122);
        let mut blocks: Vec<String> = blocks_for_node(&pool, "n").map(|b| b.to_string()).collect();
        blocks.sort();
        assert_eq!(
            blocks,
            [
                "fd00:90::/122",
                "fd00:90::40/122",
                "fd00:90::80/122",
                "fd00:90::c0/122"
            ]
        );
    }

    #[test]
    fn names_follow_calico() {
        assert_eq!(
            block_name("10.90.0.64/26".parse().unwrap()),
            "10-90-0-64-26"
        );
        assert_eq!(
            block_name("fd00:90::/122".parse().unwrap()),
            "fd00-90---122"
        );
        assert_eq!(
            handle_name("k8s-pod-network.abc123"),
            "k8s-pod-network.abc123"
        );
        assert!(handle_name("Net_1.ABC").starts_with("h-"));
    }
}
