//! IPPool and IPReservation.

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::fields::{Cidr, EncapMode, SelectorText};

/// `projectcalico.org/v3` IPPool spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpReservationSpec {
    /// Addresses never handed out by automatic allocation.
    #[serde(rename = "reservedCIDRs")]
    pub reserved_cidrs: Option<Vec<Cidr>>,
}
