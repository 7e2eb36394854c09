//! IPPool and IPReservation.

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::fields::{Cidr, EncapMode, SelectorText};

/// `projectcalico.org/v3` IPPool spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpPoolSpec {
    /// The pool's CIDR (required, host bits zero).
    pub cidr: Option<Cidr>,
    /// Prefix length of the blocks handed to nodes: 20-32 for IPv4 (default 26), 116-128 for
    /// IPv6 (default 122).
    pub block_size: Option<u8>,
    /// IP-in-IP mode (IPv4 only).
    pub ipip_mode: Option<EncapMode>,
    /// VXLAN mode.
    pub vxlan_mode: Option<EncapMode>,
    /// Masquerade traffic from the pool to outside all pools.
    pub nat_outgoing: Option<bool>,
    /// No new allocations from the pool.
    pub disabled: Option<bool>,
    /// Do not advertise the pool's blocks over BGP.
    #[serde(rename = "disableBGPExport")]
    pub disable_bgp_export: Option<bool>,
    /// Which nodes may allocate from the pool (default `all()`).
    pub node_selector: Option<SelectorText>,
    /// Which namespaces' pods may allocate from the pool.
    pub namespace_selector: Option<SelectorText>,
    /// Workload, Tunnel and/or LoadBalancer (default Workload and Tunnel).
    pub allowed_uses: Option<Vec<String>>,
    /// Automatic (default) or Manual.
    pub assignment_mode: Option<String>,
}

/// `projectcalico.org/v3` IPReservation spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpReservationSpec {
    /// Addresses never handed out by automatic allocation.
    #[serde(rename = "reservedCIDRs")]
    pub reserved_cidrs: Option<Vec<Cidr>>,
}

/// One allocation's owner, as Calico's `AllocationAttribute`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocationAttribute {
    /// The handle the address belongs to (`<network>.<containerID>` for pods).
    pub handle_id: Option<String>,
    /// Who holds it: namespace, pod, node (and `type` for tunnel addresses).
    pub secondary: Option<std::collections::BTreeMap<String, String>>,
}

/// `crd.projectcalico.org/v1` IPAMBlock spec: a slice of a pool, the unit of compare-and-swap.
/// Ordinal `i` is the block's `i`-th address.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpamBlockSpec {
    /// The block's CIDR.
    pub cidr: Option<Cidr>,
    /// `host:<node>` when a node owns it.
    pub affinity: Option<String>,
    /// When the affinity was claimed (RFC 3339).
    pub affinity_claim_time: Option<String>,
    /// Per ordinal: the index into `attributes` of its owner, or null when free.
    #[serde(default)]
    pub allocations: Vec<Option<u32>>,
    /// Free ordinals, the longest free first (handed out from the front).
    #[serde(default)]
    pub unallocated: Vec<u32>,
    /// Owners of allocations.
    #[serde(default)]
    pub attributes: Vec<AllocationAttribute>,
    /// Bumped by every change of the block.
    #[serde(default)]
    pub sequence_number: u64,
    /// Per allocated ordinal: the sequence number when it was allocated.
    #[serde(default)]
    pub sequence_number_for_allocation: std::collections::BTreeMap<String, u64>,
    /// When the block last became empty (RFC 3339); cleared when it holds an address again.
    pub empty_since: Option<String>,
    /// Being deleted.
    pub deleted: Option<bool>,
}

/// `projectcalico.org/v3` BlockAffinity spec: a node's claim on a block.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlockAffinitySpec {
    /// `pending`, `confirmed` or `pendingDeletion`.
    pub state: Option<String>,
    /// The node.
    pub node: Option<String>,
    /// `host` (or `virtual`).
    #[serde(rename = "type")]
    pub affinity_type: Option<String>,
    /// The block.
    pub cidr: Option<Cidr>,
    /// Being deleted.
    pub deleted: Option<bool>,
}

/// `crd.projectcalico.org/v1` IPAMHandle spec: which blocks hold a handle's addresses.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpamHandleSpec {
    /// The handle (the object name is derived from it).
    #[serde(rename = "handleID")]
    pub handle_id: Option<String>,
    /// Block CIDR → number of the handle's addresses in it.
    #[serde(default)]
    pub block: std::collections::BTreeMap<String, u32>,
    /// Being deleted.
    pub deleted: Option<bool>,
}

/// `projectcalico.org/v3` IPAMConfiguration spec (the object named `default`).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpamConfigurationSpec {
    /// Never borrow addresses from another node's block.
    pub strict_affinity: Option<bool>,
    /// Most blocks one node may claim (0 or absent: no limit but the pools').
    pub max_blocks_per_host: Option<u32>,
    /// Claim new blocks when the node's are full (default true).
    pub auto_allocate_blocks: Option<bool>,
}
