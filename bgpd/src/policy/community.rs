//! Community patterns for deletion and extended communities for matching, with their text
//! forms.

use std::net::Ipv4Addr;

use crate::wire::attribute::community;

/// A standard community (RFC 1997) with either half possibly `*`: `65001:100`, `65001:*`,
/// `*:100`, or a well-known name (`no-export`, `no-advertise`, `no-export-subconfed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommunityPattern {
    /// The high 16 bits (by convention an AS), `None` for any.
    pub high: Option<u16>,
    /// The low 16 bits, `None` for any.
    pub low: Option<u16>,
}

impl CommunityPattern {
    /// Whether `value` fits the pattern.
    pub fn matches(&self, value: u32) -> bool {
        self.high.is_none_or(|h| u32::from(h) == value >> 16)
            && self.low.is_none_or(|l| u32::from(l) == value & 0xFFFF)
    }

    fn exact(value: u32) -> CommunityPattern {
        CommunityPattern {
            high: Some((value >> 16) as u16),
            low: Some((value & 0xFFFF) as u16),
        }
    }
}

/// A large community (RFC 8092) with any of its three parts possibly `*`: `65001:1:*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LargeCommunityPattern(pub [Option<u32>; 3]);

impl LargeCommunityPattern {
    /// Whether `value` fits the pattern.
    pub fn matches(&self, value: (u32, u32, u32)) -> bool {
        let [a, b, c] = self.0;
        a.is_none_or(|a| a == value.0)
            && b.is_none_or(|b| b == value.1)
            && c.is_none_or(|c| c == value.2)
    }
}

/// A community pattern to delete: standard (two parts) or large (three parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletePattern {
    /// A standard community pattern.
    Standard(CommunityPattern),
    /// A large community pattern.
    Large(LargeCommunityPattern),
}

fn part<T: std::str::FromStr>(text: &str) -> Result<Option<T>, ()> {
    if text == "*" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| ())
}

impl std::str::FromStr for DeletePattern {
    type Err = String;

    /// `65001:100`, `65001:*`, `*:*`, `65001:1:*`, `no-export`.
    fn from_str(text: &str) -> Result<DeletePattern, String> {
        let well_known = match text {
            "no-export" | "NO_EXPORT" => Some(community::NO_EXPORT),
            "no-advertise" | "NO_ADVERTISE" => Some(community::NO_ADVERTISE),
            "no-export-subconfed" | "NO_EXPORT_SUBCONFED" => Some(community::NO_EXPORT_SUBCONFED),
            _ => None,
        };
        if let Some(value) = well_known {
            return Ok(DeletePattern::Standard(CommunityPattern::exact(value)));
        }
        let bad = || {
            format!(
                "{text:?} is not a community pattern (\"ASN:VALUE\" or \"ASN:VALUE:VALUE\", \
                 each part a number or *)"
            )
        };
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            [high, low] => Ok(DeletePattern::Standard(CommunityPattern {
                high: part(high).map_err(|_| bad())?,
                low: part(low).map_err(|_| bad())?,
            })),
            [a, b, c] => Ok(DeletePattern::Large(LargeCommunityPattern([
                part(a).map_err(|_| bad())?,
                part(b).map_err(|_| bad())?,
                part(c).map_err(|_| bad())?,
            ]))),
            _ => Err(bad()),
        }
    }
}

/// Route Target sub-type (RFC 4360 §4).
const ROUTE_TARGET: u8 = 0x02;
/// Route Origin sub-type (RFC 4360 §5).
const ROUTE_ORIGIN: u8 = 0x03;

/// An extended community (RFC 4360) from its text form:
/// - `rt:ASN:N` / `ro:ASN:N`: Route Target / Route Origin. A 2-octet ASN gives the
///   Two-Octet AS Specific type (0x00, N up to 2^32 − 1, RFC 4360 §3.1); a larger one the
///   Four-Octet AS Specific type (0x02, N up to 65535, RFC 5668 §2).
/// - `rt:A.B.C.D:N` / `ro:…`: IPv4 Address Specific (0x01, N up to 65535, RFC 4360 §3.2).
/// - `0x` and 16 hex digits: any extended community, its 8 octets as written
///   (`0x0002fde800000064` is `rt:65000:100`).
pub fn parse_extended_community(text: &str) -> Result<[u8; 8], String> {
    let bad = |why: &str| format!("{text:?} is not an extended community: {why}");
    if let Some(hex) = text.strip_prefix("0x") {
        let raw = u64::from_str_radix(hex, 16)
            .ok()
            .filter(|_| hex.len() == 16)
            .ok_or_else(|| bad("0x takes exactly 16 hex digits"))?;
        return Ok(raw.to_be_bytes());
    }
    let parts: Vec<&str> = text.split(':').collect();
    let [kind, admin, value] = parts.as_slice() else {
        return Err(bad(
            "expected rt:ADMIN:VALUE, ro:ADMIN:VALUE or 0x + 16 hex digits",
        ));
    };
    let subtype = match *kind {
        "rt" => ROUTE_TARGET,
        "ro" | "soo" => ROUTE_ORIGIN,
        _ => return Err(bad("the kind is rt or ro")),
    };
    let mut out = [0u8; 8];
    out[1] = subtype;
    if let Ok(address) = admin.parse::<Ipv4Addr>() {
        let value: u16 = value
            .parse()
            .map_err(|_| bad("after an IPv4 address the value is 0 to 65535"))?;
        out[0] = 0x01;
        out[2..6].copy_from_slice(&address.octets());
        out[6..].copy_from_slice(&value.to_be_bytes());
        return Ok(out);
    }
    let asn: u32 = admin
        .parse()
        .map_err(|_| bad("the administrator is an AS number or an IPv4 address"))?;
    match u16::try_from(asn) {
        Ok(short) => {
            let value: u32 = value
                .parse()
                .map_err(|_| bad("after a 2-octet AS the value is 0 to 4294967295"))?;
            out[2..4].copy_from_slice(&short.to_be_bytes());
            out[4..].copy_from_slice(&value.to_be_bytes());
        }
        Err(_) => {
            let value: u16 = value
                .parse()
                .map_err(|_| bad("after a 4-octet AS the value is 0 to 65535"))?;
            out[0] = 0x02;
            out[2..6].copy_from_slice(&asn.to_be_bytes());
            out[6..].copy_from_slice(&value.to_be_bytes());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_patterns_parse_and_match() {
        let DeletePattern::Standard(any_low) = "65001:*".parse().unwrap() else {
            panic!("two parts are a standard community");
        };
        assert!(any_low.matches((65001 << 16) | 7) && !any_low.matches((65002 << 16) | 7));
        let DeletePattern::Standard(exact) = "65001:7".parse().unwrap() else {
            panic!("standard");
        };
        assert!(exact.matches((65001 << 16) | 7) && !exact.matches((65001 << 16) | 8));
        let DeletePattern::Standard(any_high) = "*:7".parse().unwrap() else {
            panic!("standard");
        };
        assert!(any_high.matches((1 << 16) | 7) && !any_high.matches((1 << 16) | 8));
        assert_eq!(
            "no-export".parse::<DeletePattern>().unwrap(),
            DeletePattern::Standard(CommunityPattern::exact(community::NO_EXPORT))
        );
        let DeletePattern::Large(large) = "65001:1:*".parse().unwrap() else {
            panic!("three parts are a large community");
        };
        assert!(large.matches((65001, 1, 9)) && !large.matches((65001, 2, 9)));
        for wrong in ["65001", "65536:1", "a:b", "1:2:3:4", "65001:-1"] {
            assert!(
                wrong.parse::<DeletePattern>().is_err(),
                "{wrong} is refused"
            );
        }
    }

    #[test]
    fn extended_communities_are_encoded_as_rfc_4360_and_5668_say() {
        assert_eq!(
            parse_extended_community("rt:65000:100").unwrap(),
            [0x00, 0x02, 0xfd, 0xe8, 0, 0, 0, 100]
        );
        assert_eq!(
            parse_extended_community("ro:65000:100").unwrap(),
            [0x00, 0x03, 0xfd, 0xe8, 0, 0, 0, 100]
        );
        assert_eq!(
            parse_extended_community("rt:4200000000:7").unwrap(),
            [0x02, 0x02, 0xfa, 0x56, 0xea, 0x00, 0, 7]
        );
        assert_eq!(
            parse_extended_community("rt:192.0.2.1:7").unwrap(),
            [0x01, 0x02, 192, 0, 2, 1, 0, 7]
        );
        assert_eq!(
            parse_extended_community("0x0002fde800000064").unwrap(),
            parse_extended_community("rt:65000:100").unwrap()
        );
        for wrong in [
            "rt:65000",
            "xx:1:2",
            "rt:4200000000:65536",
            "rt:192.0.2.1:70000",
            "0x12",
        ] {
            assert!(parse_extended_community(wrong).is_err(), "{wrong}");
        }
    }
}
