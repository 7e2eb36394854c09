//! IP sets as `ipset restore` text.
//!
//! Members are spelled the way `ipset save` prints them back (a host network as the bare
//! address, a network by its first address, `addr,tcp:80` for address-and-port sets), so
//! reading back can compare parsed members with [`kernel_members`].

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sha2::{Digest as _, Sha256};

use crate::ir::{Family, IpSet, Member, SetKind};

/// The initial hash size of every set (the kernel grows it).
pub const HASH_SIZE: u32 = 1024;
/// The capacity of every set, as Calico's `MaxIpsetSize`.
pub const MAX_ELEM: u32 = 1_048_576;

/// The kernel type of a set kind.
pub fn type_name(kind: SetKind) -> &'static str {
    match kind {
        SetKind::Net => "hash:net",
        SetKind::IpPort => "hash:ip,port",
        SetKind::NetIface => "hash:net,iface",
    }
}

/// The `family` option of a set.
pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "inet",
        Family::V6 => "inet6",
    }
}

/// `create NAME TYPE family F hashsize N maxelem M`.
pub fn create_line(name: &str, kind: SetKind, family: Family) -> String {
    format!(
        "create {name} {} family {} hashsize {HASH_SIZE} maxelem {MAX_ELEM}",
        type_name(kind),
        family_name(family)
    )
}

/// The temporary name under which a set is rebuilt before being swapped in:
/// `twl-tmp-` and 16 characters of base64url SHA-256 of its name (24 characters in all).
pub fn temp_name(name: &str) -> String {
    let mut hash = URL_SAFE_NO_PAD.encode(Sha256::digest(name.as_bytes()));
    hash.truncate(16);
    format!("twl-tmp-{hash}")
}

/// The members as the kernel will hold them: networks truncated to their first address, a
/// `/0` split into two halves (`hash:net` refuses `/0`), and members the set cannot hold
/// (another family or kind) left out.
pub fn kernel_members(set: &IpSet) -> BTreeSet<Member> {
    let mut out = BTreeSet::new();
    for member in &set.members {
        match (set.kind, member) {
            (SetKind::Net, Member::Net(net)) if Family::of(net) == set.family => {
                out.extend(halves(net.trunc()).into_iter().map(Member::Net));
            }
            (SetKind::IpPort, Member::IpPort(addr, protocol, port))
                if Family::of(&IpNet::from(*addr)) == set.family =>
            {
                out.insert(Member::IpPort(*addr, *protocol, *port));
            }
            (SetKind::NetIface, Member::NetIface(net, interface))
                if Family::of(net) == set.family =>
            {
                out.extend(
                    halves(net.trunc())
                        .into_iter()
                        .map(|half| Member::NetIface(half, interface.clone())),
                );
            }
            _ => {}
        }
    }
    out
}

/// A `/0` as its two halves; any other network as itself.
fn halves(net: IpNet) -> Vec<IpNet> {
    if net.prefix_len() != 0 {
        return vec![net];
    }
    let (low, high): (IpNet, IpNet) = match net {
        IpNet::V4(_) => (
            Ipv4Net::new([0, 0, 0, 0].into(), 1)
                .expect("/1 is valid")
                .into(),
            Ipv4Net::new([128, 0, 0, 0].into(), 1)
                .expect("/1 is valid")
                .into(),
        ),
        IpNet::V6(_) => (
            Ipv6Net::new(0u128.into(), 1).expect("/1 is valid").into(),
            Ipv6Net::new((1u128 << 127).into(), 1)
                .expect("/1 is valid")
                .into(),
        ),
    };
    vec![low, high]
}

/// A member as `ipset` takes it and `ipset save` prints it.
pub fn member_text(member: &Member) -> String {
    match member {
        Member::Net(net) if net.prefix_len() == net.max_prefix_len() => net.addr().to_string(),
        Member::Net(net) => net.trunc().to_string(),
        Member::IpPort(addr, protocol, port) => {
            let protocol = protocol_name(*protocol)
                .map(str::to_owned)
                .unwrap_or_else(|| protocol.to_string());
            format!("{addr},{protocol}:{port}")
        }
        Member::NetIface(net, interface) => {
            format!("{},{interface}", member_text(&Member::Net(*net)))
        }
    }
}

/// The name ipset uses for a port protocol.
pub fn protocol_name(number: u8) -> Option<&'static str> {
    match number {
        6 => Some("tcp"),
        17 => Some("udp"),
        132 => Some("sctp"),
        136 => Some("udplite"),
        _ => None,
    }
}

/// The protocol number of an ipset protocol name.
pub fn protocol_number(name: &str) -> Option<u8> {
    [6, 17, 132, 136]
        .into_iter()
        .find(|&n| protocol_name(n) == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(kind: SetKind, family: Family, members: &[Member]) -> IpSet {
        IpSet {
            name: "twl-s-x".into(),
            kind,
            family,
            members: members.iter().cloned().collect(),
            comment: String::new(),
        }
    }

    fn net(text: &str) -> Member {
        Member::Net(text.parse().expect("net"))
    }

    #[test]
    fn create_lines_name_type_family_and_size() {
        assert_eq!(
            create_line("twl-s-x", SetKind::Net, Family::V4),
            "create twl-s-x hash:net family inet hashsize 1024 maxelem 1048576"
        );
        assert_eq!(
            create_line("twl-n-x", SetKind::IpPort, Family::V6),
            "create twl-n-x hash:ip,port family inet6 hashsize 1024 maxelem 1048576"
        );
    }

    #[test]
    fn members_are_spelled_as_ipset_save_prints_them() {
        assert_eq!(member_text(&net("10.0.0.5/32")), "10.0.0.5");
        assert_eq!(member_text(&net("10.1.2.3/16")), "10.1.0.0/16");
        assert_eq!(member_text(&net("fd00::1/128")), "fd00::1");
        assert_eq!(member_text(&net("fd00:0:0:0::/64")), "fd00::/64");
        let addr = "10.0.0.5".parse().expect("addr");
        assert_eq!(member_text(&Member::IpPort(addr, 6, 80)), "10.0.0.5,tcp:80");
        assert_eq!(
            member_text(&Member::IpPort(addr, 17, 53)),
            "10.0.0.5,udp:53"
        );
        assert_eq!(member_text(&Member::IpPort(addr, 47, 0)), "10.0.0.5,47:0");
        // As `ipset save` printed them on this kernel.
        let iface = |net: &str| Member::NetIface(net.parse().expect("net"), "twabc".into());
        assert_eq!(member_text(&iface("10.0.0.5/32")), "10.0.0.5,twabc");
        assert_eq!(member_text(&iface("10.1.2.3/16")), "10.1.0.0/16,twabc");
        assert_eq!(member_text(&iface("fd00::1/128")), "fd00::1,twabc");
        assert_eq!(protocol_number("sctp"), Some(132));
        assert_eq!(protocol_number("gre"), None);
    }

    #[test]
    fn temporary_names_are_short_owned_and_distinct() {
        let a = temp_name("twl-s-a");
        assert_eq!(a.len(), 24);
        assert!(a.starts_with("twl-tmp-"));
        assert_ne!(a, temp_name("twl-s-b"));
        assert_eq!(a, temp_name("twl-s-a"));
    }

    #[test]
    fn kernel_members_truncate_split_and_drop_what_the_set_cannot_hold() {
        let v4 = set(
            SetKind::Net,
            Family::V4,
            &[net("10.1.2.3/16"), net("0.0.0.0/0"), net("fd00::/64")],
        );
        let expected: BTreeSet<Member> = [net("10.1.0.0/16"), net("0.0.0.0/1"), net("128.0.0.0/1")]
            .into_iter()
            .collect();
        assert_eq!(kernel_members(&v4), expected);
        let v6 = set(SetKind::Net, Family::V6, &[net("::/0")]);
        let expected: BTreeSet<Member> = [net("::/1"), net("8000::/1")].into_iter().collect();
        assert_eq!(kernel_members(&v6), expected);
        let wrong_kind = set(SetKind::IpPort, Family::V4, &[net("10.0.0.0/8")]);
        assert!(kernel_members(&wrong_kind).is_empty());
    }
}
