//! twill-ipip: Twill's encapsulation between nodes, as Calico's felix does it.
//!
//! [`plan`] is the pure core: the cluster's nodes (underlay address, VTEP address and MAC),
//! pools (their VXLAN / IP-in-IP mode) and blocks (which node each is affine to) in, this
//! node's desired state out: the VXLAN device (`vxlan.twill`, VNI 4096, UDP 4789, learning
//! off), one FDB entry (remote VTEP MAC → remote underlay address) and one permanent
//! neighbour entry (remote VTEP address → MAC) per remote node, and a route per remote
//! block: through the device to the remote VTEP (on-link) — or, for a `CrossSubnet` pool and
//! a node in this node's underlay subnet, straight to the node's underlay address. IP-in-IP
//! has the same shape over `tunl0`, which needs the kernel's ipip module: [`Plan::ipip_blocks`]
//! lists what it would carry so the edge can report that it cannot.
//!
//! The edge that writes it (rtnetlink) is in twill-node; it owns the routes by protocol 212.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// The VXLAN device's name (IPv4).
pub const VXLAN_DEVICE: &str = "vxlan.twill";
/// The IPv6 VXLAN device's name.
pub const VXLAN_DEVICE_V6: &str = "vxlan-v6.twill";
/// Calico's VXLAN network identifier.
pub const VXLAN_VNI: u32 = 4096;
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// What VXLAN adds to a packet over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner
/// Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// What VXLAN adds over IPv6: the outer header is 40 bytes.
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// What IP-in-IP adds: the outer IPv4 header.
pub const IPIP_OVERHEAD: u32 = 20;

/// How a pool's traffic between nodes is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Not encapsulated (BGP-routed).
    Never,
    /// Always encapsulated.
    Always,
    /// Encapsulated only towards nodes in another underlay subnet.
    CrossSubnet,
}

/// A node's side of one family's tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Its underlay address with the subnet's prefix length (Node `bgp.ipv4Address` or
    /// `bgp.ipv6Address`).
    pub underlay: Option<IpNet>,
    /// Its VXLAN tunnel address (`ipv4VXLANTunnelAddr`, `ipv6VXLANTunnelAddr`).
    pub vtep: Option<IpAddr>,
    /// Its VXLAN device's MAC.
    pub vtep_mac: Option<[u8; 6]>,
}

/// A node as the encapsulation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its name.
    pub name: String,
    /// IPv4: underlay and `vxlan.twill`.
    pub v4: Endpoint,
    /// IPv6: underlay and `vxlan-v6.twill`.
    pub v6: Endpoint,
}

impl NodeInfo {
    fn side(&self, v6: bool) -> &Endpoint {
        if v6 {
            &self.v6
        } else {
            &self.v4
        }
    }
}

/// A pool as the encapsulation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    /// Its CIDR.
    pub cidr: IpNet,
    /// VXLAN mode.
    pub vxlan: Mode,
    /// IP-in-IP mode (IPv4 pools only).
    pub ipip: Mode,
}

/// A VXLAN device this node needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The local VTEP address (on the device, as a host prefix).
    pub address: IpAddr,
    /// The device's MAC.
    pub mac: [u8; 6],
    /// The underlay address the tunnel is sourced from.
    pub local: IpAddr,
}

/// One family's VXLAN state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tunnel {
    /// The device, when some pool of the family uses VXLAN and this node has its VTEP.
    pub device: Option<Device>,
    /// FDB: remote VTEP MAC → remote underlay address.
    pub fdb: BTreeMap<[u8; 6], IpAddr>,
    /// Neighbours: remote VTEP address → MAC.
    pub neighbours: BTreeMap<IpAddr, [u8; 6]>,
}

/// Where a remote block is sent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// Through the family's VXLAN device to this VTEP address (on-link).
    Vxlan(IpAddr),
    /// Straight over the underlay to the node's address (CrossSubnet, same subnet).
    Underlay(IpAddr),
}

/// This node's desired encapsulation state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// IPv4 VXLAN (`vxlan.twill`).
    pub v4: Tunnel,
    /// IPv6 VXLAN (`vxlan-v6.twill`).
    pub v6: Tunnel,
    /// Routes to remote blocks.
    pub routes: BTreeMap<IpNet, Via>,
    /// Remote blocks in IP-in-IP pools, with the underlay address of their node: routed
    /// through `tunl0` to it where the kernel has the ipip module.
    pub ipip_blocks: BTreeMap<IpNet, Ipv4Addr>,
    /// Why something could not be planned, in words.
    pub warnings: Vec<String>,
}

impl Plan {
    /// The family's tunnel.
    pub fn tunnel(&self, v6: bool) -> &Tunnel {
        if v6 {
            &self.v6
        } else {
            &self.v4
        }
    }
}

/// Whether some pool of the family uses VXLAN (this node then needs a VTEP of it).
pub fn needs_vxlan(pools: &[PoolInfo], v6: bool) -> bool {
    pools
        .iter()
        .any(|p| p.cidr.addr().is_ipv6() == v6 && p.vxlan != Mode::Never)
}

/// This node's plan. `blocks`: every block with the node it is affine to, and every address
/// a node borrowed from another node's block (a host prefix) with the node using it: the
/// host route beats the block's route, so the borrowed address reaches its pod rather than
/// the block node's blackhole.
pub fn plan(me: &str, nodes: &[NodeInfo], pools: &[PoolInfo], blocks: &[(IpNet, String)]) -> Plan {
    let mut plan = Plan::default();
    let Some(own) = nodes.iter().find(|n| n.name == me) else {
        return plan;
    };
    for v6 in [false, true] {
        if !needs_vxlan(pools, v6) {
            continue;
        }
        let family = if v6 { "IPv6" } else { "IPv4" };
        let side = own.side(v6);
        match (side.vtep, side.vtep_mac, side.underlay) {
            (Some(address), Some(mac), Some(underlay)) => {
                let device = Some(Device {
                    address,
                    mac,
                    local: underlay.addr(),
                });
                if v6 {
                    plan.v6.device = device;
                } else {
                    plan.v4.device = device;
                }
            }
            (_, _, None) => plan.warnings.push(format!(
                "node {me} has no {family} underlay address: no {family} VXLAN"
            )),
            _ => plan.warnings.push(format!(
                "node {me} has no {family} VXLAN tunnel address or MAC yet"
            )),
        }
    }
    let by_name: BTreeMap<&str, &NodeInfo> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    for (block, owner) in blocks {
        if owner == me {
            continue;
        }
        let v6 = block.addr().is_ipv6();
        let Some(pool) = pools.iter().find(|p| p.cidr.contains(block)) else {
            continue;
        };
        let Some(remote) = by_name.get(owner.as_str()) else {
            continue;
        };
        let (own_side, remote_side) = (own.side(v6), remote.side(v6));
        let same_subnet = match (own_side.underlay, remote_side.underlay) {
            (Some(own), Some(remote)) => own.trunc() == remote.trunc(),
            _ => false,
        };
        match pool.vxlan {
            Mode::Never => {}
            Mode::CrossSubnet if same_subnet => {
                if let Some(underlay) = remote_side.underlay {
                    plan.routes.insert(*block, Via::Underlay(underlay.addr()));
                }
                continue;
            }
            Mode::Always | Mode::CrossSubnet => {
                let (Some(vtep), Some(mac), Some(underlay)) =
                    (remote_side.vtep, remote_side.vtep_mac, remote_side.underlay)
                else {
                    plan.warnings.push(format!(
                        "node {owner} has no VTEP yet: its block {block} is not routed"
                    ));
                    continue;
                };
                let tunnel = if v6 { &mut plan.v6 } else { &mut plan.v4 };
                if tunnel.device.is_none() {
                    continue;
                }
                tunnel.fdb.insert(mac, underlay.addr());
                tunnel.neighbours.insert(vtep, mac);
                plan.routes.insert(*block, Via::Vxlan(vtep));
                continue;
            }
        }
        if v6 {
            continue;
        }
        match pool.ipip {
            Mode::Never => {}
            Mode::CrossSubnet if same_subnet => {
                if let Some(underlay) = remote_side.underlay {
                    plan.routes.insert(*block, Via::Underlay(underlay.addr()));
                }
            }
            Mode::Always | Mode::CrossSubnet => match remote_side.underlay.map(|u| u.addr()) {
                Some(IpAddr::V4(underlay)) => {
                    plan.ipip_blocks.insert(*block, underlay);
                }
                _ => plan.warnings.push(format!(
                    "node {owner} has no IPv4 underlay address: its block {block} is not routed"
                )),
            },
        }
    }
    plan
}

/// A stable, locally administered unicast MAC for a node's VXLAN device, from its name
/// (Calico picks one at random and stores it on the Node; deriving it means a node that
/// lost its Node resource gets the same one back).
pub fn vtep_mac(node: &str) -> [u8; 6] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let bytes = hash.to_be_bytes();
    // Locally administered (bit 1 set), unicast (bit 0 clear).
    [
        (bytes[0] & 0xfc) | 0x02,
        bytes[1],
        bytes[2],
        bytes[3],
        bytes[4],
        bytes[5],
    ]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The device MTU for an underlay MTU: minus the encapsulation's overhead.
pub fn tunnel_mtu(underlay_mtu: u32, overhead: u32) -> u32 {
    underlay_mtu.saturating_sub(overhead)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, underlay: &str, vtep: Option<&str>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            v4: Endpoint {
                underlay: Some(underlay.parse().unwrap()),
                vtep: vtep.map(|v| v.parse().unwrap()),
                vtep_mac: vtep.map(|_| vtep_mac(name)),
            },
            v6: Endpoint::default(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn pool(cidr: &str, vxlan: Mode) -> PoolInfo {
        PoolInfo {
            cidr: cidr.parse().unwrap(),
            vxlan,
            ipip: Mode::Never,
        }
    }

    fn blocks(list: &[(&str, &str)]) -> Vec<(IpNet, String)> {
        list.iter()
            .map(|(b, n)| (b.parse().unwrap(), n.to_string()))
            .collect()
    }

    #[test]
    fn vxlan_always_routes_every_remote_block_through_the_device() {
        let nodes = [
            node("a", "198.18.0.11/24", Some("10.90.0.1")),
            node("b", "198.18.0.12/24", Some("10.90.0.65")),
            node("c", "198.18.1.13/24", Some("10.90.0.129")),
        ];
        let plan = plan(
            "a",
            &nodes,
            &[pool("10.90.0.0/16", Mode::Always)],
            &blocks(&[
                ("10.90.0.0/26", "a"),
                ("10.90.0.64/26", "b"),
                ("10.90.0.128/26", "c"),
                ("10.90.1.0/26", "b"),
            ]),
        );
        let device = plan.v4.device.as_ref().unwrap();
        assert_eq!(device.address, ip("10.90.0.1"));
        assert_eq!(device.local, ip("198.18.0.11"));
        assert_eq!(plan.routes.len(), 3);
        assert_eq!(
            plan.routes[&"10.90.0.64/26".parse().unwrap()],
            Via::Vxlan(ip("10.90.0.65"))
        );
        assert_eq!(
            plan.routes[&"10.90.1.0/26".parse().unwrap()],
            Via::Vxlan(ip("10.90.0.65"))
        );
        assert_eq!(
            plan.routes[&"10.90.0.128/26".parse().unwrap()],
            Via::Vxlan(ip("10.90.0.129"))
        );
        assert_eq!(plan.v4.fdb[&vtep_mac("b")], ip("198.18.0.12"));
        assert_eq!(plan.v4.fdb[&vtep_mac("c")], ip("198.18.1.13"));
        assert_eq!(plan.v4.neighbours[&ip("10.90.0.129")], vtep_mac("c"));
        assert!(
            !plan.routes.contains_key(&"10.90.0.0/26".parse().unwrap()),
            "own block"
        );
    }

    #[test]
    fn cross_subnet_encapsulates_only_towards_other_subnets() {
        let nodes = [
            node("a", "198.18.0.11/24", Some("10.90.0.1")),
            node("b", "198.18.0.12/24", Some("10.90.0.65")),
            node("c", "198.18.1.13/24", Some("10.90.0.129")),
        ];
        let plan = plan(
            "a",
            &nodes,
            &[pool("10.90.0.0/16", Mode::CrossSubnet)],
            &blocks(&[("10.90.0.64/26", "b"), ("10.90.0.128/26", "c")]),
        );
        assert_eq!(
            plan.routes[&"10.90.0.64/26".parse().unwrap()],
            Via::Underlay(ip("198.18.0.12"))
        );
        assert_eq!(
            plan.routes[&"10.90.0.128/26".parse().unwrap()],
            Via::Vxlan(ip("10.90.0.129"))
        );
        assert!(
            !plan.v4.fdb.contains_key(&vtep_mac("b")),
            "no tunnel entries for a node reached natively"
        );
        assert!(plan.v4.fdb.contains_key(&vtep_mac("c")));
    }

    #[test]
    fn pools_without_encapsulation_are_left_to_bgp() {
        let nodes = [
            node("a", "198.18.0.11/24", None),
            node("b", "198.18.0.12/24", None),
        ];
        let plan = plan(
            "a",
            &nodes,
            &[pool("10.90.0.0/16", Mode::Never)],
            &blocks(&[("10.90.0.64/26", "b")]),
        );
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn a_node_without_a_vtep_is_not_routed_and_is_reported() {
        let nodes = [
            node("a", "198.18.0.11/24", Some("10.90.0.1")),
            node("b", "198.18.0.12/24", None),
        ];
        let plan = plan(
            "a",
            &nodes,
            &[pool("10.90.0.0/16", Mode::Always)],
            &blocks(&[("10.90.0.64/26", "b")]),
        );
        assert!(plan.routes.is_empty());
        assert!(plan
            .warnings
            .iter()
            .any(|w| w.contains("node b has no VTEP")));
    }

    #[test]
    fn ipip_blocks_are_listed_for_the_edge() {
        let nodes = [
            node("a", "198.18.0.11/24", None),
            node("b", "198.18.1.12/24", None),
            node("c", "198.18.0.13/24", None),
        ];
        let pools = [PoolInfo {
            cidr: "10.90.0.0/16".parse().unwrap(),
            vxlan: Mode::Never,
            ipip: Mode::CrossSubnet,
        }];
        let plan = plan(
            "a",
            &nodes,
            &pools,
            &blocks(&[("10.90.0.64/26", "b"), ("10.90.0.128/26", "c")]),
        );
        assert_eq!(
            plan.ipip_blocks[&"10.90.0.64/26".parse().unwrap()],
            "198.18.1.12".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            plan.ipip_blocks
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.90.0.64/26"]
        );
        assert_eq!(
            plan.routes[&"10.90.0.128/26".parse().unwrap()],
            Via::Underlay(ip("198.18.0.13"))
        );
    }

    #[test]
    fn ipv6_blocks_go_through_their_own_device_to_ipv6_vteps() {
        let node6 = |name: &str, underlay: &str, vtep: &str| NodeInfo {
            name: name.into(),
            v4: Endpoint::default(),
            v6: Endpoint {
                underlay: Some(underlay.parse().unwrap()),
                vtep: Some(ip(vtep)),
                vtep_mac: Some(vtep_mac(&format!("{name}/v6"))),
            },
        };
        let nodes = [
            node6("a", "fd00:198:18::11/64", "fd00:90::1"),
            node6("b", "fd00:198:18::12/64", "fd00:90::41"),
        ];
        let pools = [
            pool("fd00:90::/48", Mode::Always),
            pool("10.90.0.0/16", Mode::Never),
        ];
        let plan = plan("a", &nodes, &pools, &blocks(&[("fd00:90::40/122", "b")]));
        assert!(plan.v4.device.is_none(), "no IPv4 pool uses VXLAN");
        let device = plan.v6.device.as_ref().unwrap();
        assert_eq!(
            (device.address, device.local),
            (ip("fd00:90::1"), ip("fd00:198:18::11"))
        );
        assert_eq!(
            plan.routes[&"fd00:90::40/122".parse().unwrap()],
            Via::Vxlan(ip("fd00:90::41"))
        );
        assert_eq!(plan.v6.fdb[&vtep_mac("b/v6")], ip("fd00:198:18::12"));
        assert_eq!(plan.v6.neighbours[&ip("fd00:90::41")], vtep_mac("b/v6"));
    }

    #[test]
    fn macs_are_stable_locally_administered_unicast_and_round_trip() {
        let mac = vtep_mac("node-1");
        assert_eq!(mac, vtep_mac("node-1"));
        assert_ne!(mac, vtep_mac("node-2"));
        assert_eq!(mac[0] & 0x03, 0x02);
        assert_eq!(parse_mac(&format_mac(&mac)), Some(mac));
        assert_eq!(parse_mac("ee:ee:ee:ee:ee"), None);
        assert_eq!(parse_mac("zz:ee:ee:ee:ee:ee"), None);
        assert_eq!(tunnel_mtu(1500, VXLAN_OVERHEAD), 1450);
        assert_eq!(tunnel_mtu(9000, IPIP_OVERHEAD), 8980);
    }

    #[test]
    fn a_borrowed_address_goes_to_its_borrower_and_the_rest_of_the_block_to_its_node() {
        let nodes = [
            node("a", "198.18.0.11/24", Some("10.90.0.1")),
            node("b", "198.18.0.12/24", Some("10.90.0.65")),
            node("c", "198.18.1.13/24", Some("10.90.0.129")),
        ];
        let pools = [pool("10.90.0.0/16", Mode::CrossSubnet)];
        // b's block; c uses 10.90.0.70 from it, a uses 10.90.0.71.
        let destinations = blocks(&[
            ("10.90.0.64/26", "b"),
            ("10.90.0.70/32", "c"),
            ("10.90.0.71/32", "a"),
        ]);
        let plan = plan("a", &nodes, &pools, &destinations);
        let expected: BTreeMap<IpNet, Via> = [
            // Same subnet as a: natively to b.
            ("10.90.0.64/26", Via::Underlay(ip("198.18.0.12"))),
            // Another subnet: through the tunnel to c's VTEP.
            ("10.90.0.70/32", Via::Vxlan(ip("10.90.0.129"))),
        ]
        .into_iter()
        .map(|(net, via)| (net.parse().unwrap(), via))
        .collect();
        // a's own borrowed address is its pod's (the endpoint route), not the plan's.
        assert_eq!(plan.routes, expected);
        assert_eq!(
            plan.v4.neighbours.keys().collect::<Vec<_>>(),
            vec![&ip("10.90.0.129")]
        );
    }
}
