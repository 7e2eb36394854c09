//! Address families and NLRI prefixes (RFC 4271 §4.3, RFC 4760 §5, RFC 7911 §3).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BufMut;
use ipnet::IpNet;

use super::reader::Reader;

/// An address family (AFI/SAFI pair).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// AFI 1, SAFI 1.
    Ipv4Unicast,
    /// AFI 2, SAFI 1.
    Ipv6Unicast,
    /// Any other pair, kept as received.
    Other(u16, u8),
}

impl Family {
    /// From AFI and SAFI codes.
    pub fn from_codes(afi: u16, safi: u8) -> Family {
        match (afi, safi) {
            (1, 1) => Family::Ipv4Unicast,
            (2, 1) => Family::Ipv6Unicast,
            (afi, safi) => Family::Other(afi, safi),
        }
    }

    /// The AFI code.
    pub fn afi(self) -> u16 {
        match self {
            Family::Ipv4Unicast => 1,
            Family::Ipv6Unicast => 2,
            Family::Other(afi, _) => afi,
        }
    }

    /// The SAFI code.
    pub fn safi(self) -> u8 {
        match self {
            Family::Ipv4Unicast | Family::Ipv6Unicast => 1,
            Family::Other(_, safi) => safi,
        }
    }

    /// Longest prefix length of the family, if Twill knows the family.
    fn max_len(self) -> Option<u8> {
        match self {
            Family::Ipv4Unicast => Some(32),
            Family::Ipv6Unicast => Some(128),
            Family::Other(..) => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Family::Ipv4Unicast => f.write_str("ipv4-unicast"),
            Family::Ipv6Unicast => f.write_str("ipv6-unicast"),
            Family::Other(afi, safi) => write!(f, "afi{afi}-safi{safi}"),
        }
    }
}

/// One NLRI entry: a prefix, with a path identifier under add-path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nlri {
    /// RFC 7911 path identifier (present only when add-path was negotiated for receiving).
    pub path_id: Option<u32>,
    /// The prefix, host bits zero.
    pub prefix: IpNet,
}

impl Nlri {
    /// A prefix without path identifier.
    pub fn new(prefix: IpNet) -> Nlri {
        Nlri {
            path_id: None,
            prefix: prefix.trunc(),
        }
    }
}

/// Decodes a run of prefixes of `family`; `None` when the run is malformed (a length beyond
/// the family's maximum, or a prefix cut short): RFC 7606 §5.3 calls for a session reset then.
pub fn decode_prefixes(bytes: &[u8], family: Family, add_path: bool) -> Option<Vec<Nlri>> {
    let max = family.max_len()?;
    let mut reader = Reader::new(bytes);
    let mut out = Vec::new();
    while !reader.is_empty() {
        let path_id = if add_path {
            Some(reader.u32().ok()?)
        } else {
            None
        };
        let len = reader.u8().ok()?;
        if len > max {
            return None;
        }
        let octets = reader.take(usize::from(len).div_ceil(8)).ok()?;
        let addr = match family {
            Family::Ipv4Unicast => {
                let mut raw = [0u8; 4];
                raw[..octets.len()].copy_from_slice(octets);
                IpAddr::V4(Ipv4Addr::from(raw))
            }
            _ => {
                let mut raw = [0u8; 16];
                raw[..octets.len()].copy_from_slice(octets);
                IpAddr::V6(Ipv6Addr::from(raw))
            }
        };
        let prefix = IpNet::new(addr, len).ok()?.trunc();
        out.push(Nlri { path_id, prefix });
    }
    Some(out)
}

/// Encodes prefixes (with their path identifiers when `add_path`).
pub fn encode_prefixes(out: &mut impl BufMut, prefixes: &[Nlri], add_path: bool) {
    for nlri in prefixes {
        if add_path {
            out.put_u32(nlri.path_id.unwrap_or(0));
        }
        let len = nlri.prefix.prefix_len();
        out.put_u8(len);
        let octets = usize::from(len).div_ceil(8);
        match nlri.prefix.network() {
            IpAddr::V4(addr) => out.put_slice(&addr.octets()[..octets]),
            IpAddr::V6(addr) => out.put_slice(&addr.octets()[..octets]),
        }
    }
}
