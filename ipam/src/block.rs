//! The pure core: one block's allocations. Every function takes a block and returns the
//! changed block with what was allocated or released; nothing here reads a clock or a store.
//!
//! The runtime writes the returned block back with a compare-and-swap on the revision it
//! read, so two writers can never both hand out the same ordinal.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use twill_shared::resource::fields::Cidr;
use twill_shared::resource::ipam::{AllocationAttribute, IpamBlockSpec};

/// Why a block operation did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The stored block is not one IPAM wrote (bad CIDR or tables of the wrong size).
    #[error("block {cidr}: {reason}")]
    Corrupt {
        /// The block.
        cidr: String,
        /// What is inconsistent.
        reason: String,
    },
    /// The address is not inside the block.
    #[error("{ip} is not in block {cidr}")]
    NotInBlock {
        /// The address.
        ip: IpAddr,
        /// The block.
        cidr: IpNet,
    },
    /// The address is already allocated.
    #[error("{ip} is already allocated (handle {handle})")]
    InUse {
        /// The address.
        ip: IpAddr,
        /// Its holder.
        handle: String,
    },
    /// The address is reserved (IPReservation).
    #[error("{ip} is reserved by an IPReservation")]
    Reserved {
        /// The address.
        ip: IpAddr,
    },
}

/// Released addresses, each with the handle that held it.
pub type Released = Vec<(IpAddr, Option<String>)>;

/// What to allocate from a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// How many addresses (the block may give fewer).
    pub count: usize,
    /// The handle they belong to.
    pub handle: &'a str,
    /// Who holds them (namespace, pod, node).
    pub attributes: &'a BTreeMap<String, String>,
    /// Addresses never handed out.
    pub reserved: &'a [IpNet],
}

/// A new, empty block: every ordinal free, in address order.
pub fn new_block(
    cidr: IpNet,
    affinity: Option<String>,
    claim_time: Option<String>,
) -> IpamBlockSpec {
    let size = block_len(cidr);
    IpamBlockSpec {
        cidr: Some(Cidr(cidr)),
        affinity,
        affinity_claim_time: claim_time,
        allocations: vec![None; size],
        unallocated: (0..size as u32).collect(),
        attributes: Vec::new(),
        sequence_number: 0,
        sequence_number_for_allocation: BTreeMap::new(),
        empty_since: None,
        deleted: None,
    }
}

/// How many addresses a block of this CIDR holds (blocks are at most 2^16 addresses).
pub fn block_len(cidr: IpNet) -> usize {
    let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
    1usize << host_bits.min(16)
}

/// The block's CIDR, checked against its tables.
pub fn cidr_of(block: &IpamBlockSpec) -> Result<IpNet, BlockError> {
    let corrupt = |reason: &str| BlockError::Corrupt {
        cidr: block.cidr.map(|c| c.to_string()).unwrap_or_default(),
        reason: reason.to_string(),
    };
    let cidr = block.cidr.ok_or_else(|| corrupt("no cidr"))?.0;
    if block.allocations.len() != block_len(cidr) {
        return Err(corrupt(
            "the allocations table does not match the block's size",
        ));
    }
    Ok(cidr)
}

/// The address of an ordinal.
pub fn address(cidr: IpNet, ordinal: u32) -> IpAddr {
    match cidr {
        IpNet::V4(net) => IpAddr::V4((u32::from(net.network()) + ordinal).into()),
        IpNet::V6(net) => IpAddr::V6((u128::from(net.network()) + u128::from(ordinal)).into()),
    }
}

/// The ordinal of an address, if it is in the block.
pub fn ordinal(cidr: IpNet, ip: IpAddr) -> Option<u32> {
    if !cidr.contains(&ip) {
        return None;
    }
    let offset = match (cidr, ip) {
        (IpNet::V4(net), IpAddr::V4(ip)) => u128::from(u32::from(ip) - u32::from(net.network())),
        (IpNet::V6(net), IpAddr::V6(ip)) => u128::from(ip) - u128::from(net.network()),
        _ => return None,
    };
    u32::try_from(offset).ok()
}

/// How many ordinals are free.
pub fn free_count(block: &IpamBlockSpec) -> usize {
    block.allocations.iter().filter(|a| a.is_none()).count()
}

/// Whether no address is allocated.
pub fn is_empty(block: &IpamBlockSpec) -> bool {
    block.allocations.iter().all(Option::is_none)
}

/// The handle holding an ordinal.
pub fn holder(block: &IpamBlockSpec, ordinal: u32) -> Option<&str> {
    let index = (*block.allocations.get(ordinal as usize)?)?;
    block.attributes.get(index as usize)?.handle_id.as_deref()
}

/// Every allocated address with its attribute.
pub fn allocated(block: &IpamBlockSpec) -> Vec<(IpAddr, &AllocationAttribute)> {
    let Some(cidr) = block.cidr.map(|c| c.0) else {
        return Vec::new();
    };
    block
        .allocations
        .iter()
        .enumerate()
        .filter_map(|(ordinal, index)| {
            let attribute = block.attributes.get((*index)? as usize)?;
            Some((address(cidr, ordinal as u32), attribute))
        })
        .collect()
}

/// Allocates up to `request.count` addresses, the longest-free first, skipping reserved ones.
/// Returns the new block and the addresses (fewer than asked when the block runs out).
pub fn assign(
    block: &IpamBlockSpec,
    request: &Request<'_>,
) -> Result<(IpamBlockSpec, Vec<IpAddr>), BlockError> {
    let cidr = cidr_of(block)?;
    let mut next = block.clone();
    let mut chosen = Vec::new();
    let mut kept = Vec::with_capacity(next.unallocated.len());
    // A free list with an ordinal twice (or one that is allocated) never hands it out twice.
    let mut listed = vec![false; next.allocations.len()];
    for ordinal in std::mem::take(&mut next.unallocated) {
        let ip = address(cidr, ordinal);
        let free = next.allocations.get(ordinal as usize) == Some(&None)
            && !std::mem::replace(&mut listed[ordinal as usize], true);
        if chosen.len() < request.count && free && !is_reserved(request.reserved, ip) {
            chosen.push(ordinal);
        } else if free {
            kept.push(ordinal);
        }
    }
    next.unallocated = kept;
    if chosen.is_empty() {
        return Ok((block.clone(), Vec::new()));
    }
    let index = attribute_index(&mut next, request.handle, request.attributes);
    next.sequence_number += 1;
    for &ordinal in &chosen {
        next.allocations[ordinal as usize] = Some(index);
        next.sequence_number_for_allocation
            .insert(ordinal.to_string(), next.sequence_number);
    }
    next.empty_since = None;
    Ok((next, chosen.into_iter().map(|o| address(cidr, o)).collect()))
}

/// Allocates exactly `ip` (Calico's `cni.projectcalico.org/ipAddrs`).
pub fn assign_specific(
    block: &IpamBlockSpec,
    ip: IpAddr,
    request: &Request<'_>,
) -> Result<IpamBlockSpec, BlockError> {
    let cidr = cidr_of(block)?;
    let ordinal = ordinal(cidr, ip).ok_or(BlockError::NotInBlock { ip, cidr })?;
    if let Some(handle) = holder(block, ordinal) {
        return Err(BlockError::InUse {
            ip,
            handle: handle.to_string(),
        });
    }
    if block.allocations[ordinal as usize].is_some() {
        return Err(BlockError::InUse {
            ip,
            handle: String::new(),
        });
    }
    if is_reserved(request.reserved, ip) {
        return Err(BlockError::Reserved { ip });
    }
    let mut next = block.clone();
    next.unallocated.retain(|&o| o != ordinal);
    let index = attribute_index(&mut next, request.handle, request.attributes);
    next.sequence_number += 1;
    next.allocations[ordinal as usize] = Some(index);
    next.sequence_number_for_allocation
        .insert(ordinal.to_string(), next.sequence_number);
    next.empty_since = None;
    Ok(next)
}

/// Releases the given addresses (those allocated); returns the new block and, per released
/// address, the handle that held it. Released ordinals go to the back of the free list, so
/// they are the last to be handed out again.
pub fn release_ips(
    block: &IpamBlockSpec,
    ips: &[IpAddr],
) -> Result<(IpamBlockSpec, Released), BlockError> {
    let cidr = cidr_of(block)?;
    let ordinals: Vec<u32> = ips
        .iter()
        .filter_map(|&ip| ordinal(cidr, ip))
        .filter(|&o| block.allocations[o as usize].is_some())
        .collect();
    release_ordinals(block, cidr, &ordinals)
}

/// Releases every address of a handle.
pub fn release_handle(
    block: &IpamBlockSpec,
    handle: &str,
) -> Result<(IpamBlockSpec, Vec<IpAddr>), BlockError> {
    let cidr = cidr_of(block)?;
    let ordinals: Vec<u32> = (0..block.allocations.len() as u32)
        .filter(|&o| holder(block, o) == Some(handle))
        .collect();
    let (next, released) = release_ordinals(block, cidr, &ordinals)?;
    Ok((next, released.into_iter().map(|(ip, _)| ip).collect()))
}

/// Marks when the block became empty, if it is and was not marked (for the affinity grace
/// period).
pub fn mark_empty(block: &mut IpamBlockSpec, now: &str) {
    if is_empty(block) && block.empty_since.is_none() {
        block.empty_since = Some(now.to_string());
    }
}

fn release_ordinals(
    block: &IpamBlockSpec,
    cidr: IpNet,
    ordinals: &[u32],
) -> Result<(IpamBlockSpec, Released), BlockError> {
    if ordinals.is_empty() {
        return Ok((block.clone(), Vec::new()));
    }
    let mut next = block.clone();
    let mut released = Vec::new();
    for &ordinal in ordinals {
        let handle = holder(&next, ordinal).map(str::to_string);
        next.allocations[ordinal as usize] = None;
        next.sequence_number_for_allocation
            .remove(&ordinal.to_string());
        next.unallocated.push(ordinal);
        released.push((address(cidr, ordinal), handle));
    }
    next.sequence_number += 1;
    compact_attributes(&mut next);
    Ok((next, released))
}

/// Drops attributes no allocation points at, renumbering the rest.
fn compact_attributes(block: &mut IpamBlockSpec) {
    let mut used = vec![false; block.attributes.len()];
    for index in block.allocations.iter().flatten() {
        if let Some(slot) = used.get_mut(*index as usize) {
            *slot = true;
        }
    }
    let mut renumber = vec![0u32; block.attributes.len()];
    let mut kept = Vec::new();
    for (old, attribute) in std::mem::take(&mut block.attributes)
        .into_iter()
        .enumerate()
    {
        if used[old] {
            renumber[old] = kept.len() as u32;
            kept.push(attribute);
        }
    }
    block.attributes = kept;
    for index in block.allocations.iter_mut().flatten() {
        *index = renumber[*index as usize];
    }
}

fn attribute_index(
    block: &mut IpamBlockSpec,
    handle: &str,
    attributes: &BTreeMap<String, String>,
) -> u32 {
    let attribute = AllocationAttribute {
        handle_id: Some(handle.to_string()),
        secondary: (!attributes.is_empty()).then(|| attributes.clone()),
    };
    if let Some(index) = block.attributes.iter().position(|a| *a == attribute) {
        return index as u32;
    }
    block.attributes.push(attribute);
    (block.attributes.len() - 1) as u32
}

fn is_reserved(reserved: &[IpNet], ip: IpAddr) -> bool {
    reserved.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests;
