//! The desired dataplane, backend-neutral: chains of rules and IP sets, per address family.
//! `calc` produces it; a renderer turns it into iptables-restore and ipset text (an nftables
//! renderer will only add another renderer); `plan` diffs it against what the kernel has.
//!
//! Every name here is already the kernel name (`twl-` prefixed, within the kernel's limits),
//! so a renderer only spells things.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

/// Longest iptables chain name.
pub const MAX_CHAIN_NAME: usize = 28;
/// Longest ipset name.
pub const MAX_SET_NAME: usize = 31;

/// Mark bit: a policy or profile accepted the packet.
pub const MARK_ACCEPT: u32 = 0x0001_0000;
/// Mark bit: a policy passed the packet to the next tier.
pub const MARK_PASS: u32 = 0x0002_0000;
/// Every mark bit Twill uses.
pub const MARK_MASK: u32 = MARK_ACCEPT | MARK_PASS;

/// NFLOG group of Log rules on ingress.
pub const NFLOG_GROUP_INGRESS: u16 = 1;
/// NFLOG group of Log rules on egress.
pub const NFLOG_GROUP_EGRESS: u16 = 2;

/// An address family: one iptables table set and one ipset namespace each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4 (iptables, `family inet` sets).
    V4,
    /// IPv6 (ip6tables, `family inet6` sets).
    V6,
}

impl Family {
    /// The family of a network.
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

/// What an IP set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    /// Networks (`hash:net`): members are CIDRs, hosts as /32 or /128.
    Net,
    /// Address and port (`hash:ip,port`): members are (address, protocol, port).
    IpPort,
    /// Network and interface (`hash:net,iface`): members are (network, interface), what a
    /// workload may send from through its interface.
    NetIface,
}

/// One member of a set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    /// A network (Net sets).
    Net(IpNet),
    /// An address with a protocol number (6, 17, 132) and port (IpPort sets).
    IpPort(std::net::IpAddr, u8, u16),
    /// A network with an interface name (NetIface sets).
    NetIface(IpNet, String),
}

/// An IP set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    /// Kernel name, `twl-…`, at most [`MAX_SET_NAME`].
    pub name: String,
    /// Its type.
    pub kind: SetKind,
    /// Its family.
    pub family: Family,
    /// Its members.
    pub members: BTreeSet<Member>,
    /// What it stands for (a selector, a list of nets, a named port), for people.
    pub comment: String,
}

/// Which packet field a match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Source.
    Src,
    /// Destination.
    Dst,
}

/// A port match: numbers and inclusive ranges, at most 15 slots (a range takes two) so one
/// multiport match holds it; calc splits longer lists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ports(pub Vec<(u16, u16)>);

/// One condition of a rule. All conditions of a rule must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Match {
    /// Arrives on this interface (`-i`); a trailing `+` is a prefix wildcard.
    InInterface(String),
    /// Leaves on this interface (`-o`); a trailing `+` is a prefix wildcard.
    OutInterface(String),
    /// The protocol is (or, negated, is not) this number.
    Protocol {
        /// Negated.
        not: bool,
        /// IANA protocol number.
        number: u8,
    },
    /// The address is (not) in this network.
    Net {
        /// Source or destination.
        side: Side,
        /// Negated.
        not: bool,
        /// The network.
        net: IpNet,
    },
    /// The address is (not) in this Net set.
    Set {
        /// Source or destination.
        side: Side,
        /// Negated.
        not: bool,
        /// The set's name.
        set: String,
    },
    /// The (destination or source) address and port are (not) in this IpPort set.
    SetIpPort {
        /// Source or destination (address and port of the same side).
        side: Side,
        /// Negated.
        not: bool,
        /// The set's name.
        set: String,
    },
    /// The source address and the interface the packet arrived on are (not) a member of this
    /// NetIface set.
    SetSourceIface {
        /// Negated.
        not: bool,
        /// The set's name.
        set: String,
    },
    /// The port is (not) one of these; needs a Protocol match of TCP, UDP or SCTP before it.
    Ports {
        /// Source or destination port.
        side: Side,
        /// Negated.
        not: bool,
        /// The ports.
        ports: Ports,
    },
    /// ICMP (v4 or v6 by the family) type and optional code.
    Icmp {
        /// Negated.
        not: bool,
        /// The type.
        icmp_type: u8,
        /// The code.
        code: Option<u8>,
    },
    /// Conntrack state is one of these (`RELATED,ESTABLISHED`, `INVALID`).
    ConntrackState(String),
    /// `mark & mask == value`.
    Mark {
        /// The bits that must be set (within mask).
        value: u32,
        /// The bits looked at.
        mask: u32,
    },
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Accept.
    Accept,
    /// Drop.
    Drop,
    /// Return to the calling chain.
    Return,
    /// Jump to a chain (and come back).
    Jump(String),
    /// Go to a chain (and do not come back here).
    Goto(String),
    /// Set the bits of `value` within `mask`, clear the other bits of `mask`.
    SetMark {
        /// New bits.
        value: u32,
        /// Bits affected.
        mask: u32,
    },
    /// Exempt the packet from connection tracking (raw table only) and go on.
    NoTrack,
    /// Source NAT to the outgoing interface's address (nat table, POSTROUTING).
    Masquerade,
    /// Log through NFLOG (readable with `tcpdump -i nflog:GROUP`) and go on.
    Nflog {
        /// The group.
        group: u16,
        /// The prefix (at most 64 bytes).
        prefix: String,
    },
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    /// Conditions, all of which must hold.
    pub matches: Vec<Match>,
    /// The action.
    pub target: Target,
    /// Why the rule is there, for people (rendered as a comment with the rule's hash).
    pub comment: String,
}

/// A chain of rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Kernel name, `twl-…`, at most [`MAX_CHAIN_NAME`].
    pub name: String,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// A jump from a kernel chain into Twill's, inserted once at the top.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hook {
    /// The table (`filter`, `raw`, `mangle`, `nat`).
    pub table: String,
    /// The built-in chain (`FORWARD`, `INPUT`, `OUTPUT`, …).
    pub chain: String,
    /// Twill's chain it jumps to.
    pub target: String,
}

/// The desired state of one table of one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Twill's chains by name.
    pub chains: BTreeMap<String, Chain>,
}

/// The desired dataplane of one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dataplane {
    /// Tables by name (`filter` for now).
    pub tables: BTreeMap<String, Table>,
    /// The hooks into built-in chains.
    pub hooks: Vec<Hook>,
    /// IP sets by name.
    pub sets: BTreeMap<String, IpSet>,
}
