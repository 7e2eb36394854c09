//! Field types that validate while they deserialize, so that a bad value is reported with
//! the exact field path (`spec.ingress[0].protocol`) by the document parser.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::selector::Selector;

/// Implements `Deserialize` for a type from a string (and optionally integer) form, and
/// `Serialize` through `Display`.
macro_rules! string_form {
    ($ty:ty, $expecting:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, value: &str) -> Result<$ty, E> {
                        <$ty>::from_str(value).map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, value: u64) -> Result<$ty, E> {
                        <$ty>::from_u64(value).map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, value: i64) -> Result<$ty, E> {
                        match u64::try_from(value) {
                            Ok(value) => self.visit_u64(value),
                            Err(_) => Err(E::custom(format!("{value} is negative"))),
                        }
                    }
                }
                deserializer.deserialize_any(V)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.serialize_form(serializer)
            }
        }
    };
}

/// The CRD schema of a field type written as text: a plain string, or (for types that also
/// take a number) Kubernetes' int-or-string.
macro_rules! schema_form {
    ($ty:ty, string) => {
        schema_form!(@impl $ty, schemars::json_schema!({"type": "string"}));
    };
    ($ty:ty, int_or_string) => {
        schema_form!(@impl $ty, schemars::json_schema!({"x-kubernetes-int-or-string": true}));
    };
    (@impl $ty:ty, $schema:expr) => {
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                $schema
            }
        }
    };
}

/// Serializes a policy or tier order as calicoctl prints it: an integral order as an integer
/// (`200`, not `200.0`), so that what was applied comes back as written; a fractional order
/// (`100.5`) as it is. For `#[serde(serialize_with = "serialize_order")]` on `Option<f64>`.
pub(crate) fn serialize_order<S: Serializer>(
    order: &Option<f64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    // Every integral f64 in [-2^63, 2^63) converts to an i64 exactly.
    let integral =
        |value: f64| value.fract() == 0.0 && (i64::MIN as f64..i64::MAX as f64).contains(&value);
    match *order {
        Some(value) if integral(value) => serializer.serialize_some(&(value as i64)),
        Some(value) => serializer.serialize_some(&value),
        None => serializer.serialize_none(),
    }
}

/// A CIDR such as `10.0.0.0/8`; a bare address means a single host (/32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(pub IpNet);

impl Cidr {
    /// Whether the host bits are all zero (`10.0.0.0/8`, not `10.0.0.1/8`).
    pub fn is_masked(&self) -> bool {
        self.0.network() == self.0.addr()
    }

    fn from_u64(value: u64) -> Result<Self, String> {
        Err(format!(
            "{value} is not a CIDR (expected ADDRESS/PREFIX, e.g. 10.0.0.0/8)"
        ))
    }

    fn serialize_form<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let Some((addr, prefix)) = text.split_once('/') else {
            return match IpAddr::from_str(text) {
                Ok(addr) => Ok(Cidr(IpNet::from(addr))),
                Err(_) => Err(format!(
                    "{text:?} is not a CIDR (expected ADDRESS/PREFIX, e.g. 10.0.0.0/8)"
                )),
            };
        };
        let addr = IpAddr::from_str(addr)
            .map_err(|_| format!("{text:?} is not a CIDR: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| {
            format!("{text:?} is not a CIDR: the prefix length must be 0 to {max}")
        })?;
        Ok(Cidr(
            IpNet::new(addr, prefix).expect("prefix length was checked against the family"),
        ))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

string_form!(Cidr, "a CIDR such as 10.0.0.0/8");
schema_form!(Cidr, string);

/// An IP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ip(pub IpAddr);

impl Ip {
    fn from_u64(value: u64) -> Result<Self, String> {
        Err(format!("{value} is not an IP address"))
    }

    fn serialize_form<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl FromStr for Ip {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        IpAddr::from_str(text)
            .map(Ip)
            .map_err(|_| format!("{text:?} is not an IP address"))
    }
}

string_form!(Ip, "an IP address");
schema_form!(Ip, string);

/// An IP protocol: a name Calico knows or a number from 1 to 255.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1).
    Icmp,
    /// ICMPv6 (58).
    IcmpV6,
    /// SCTP (132).
    Sctp,
    /// UDP-Lite (136).
    UdpLite,
    /// Any other protocol, by number.
    Number(u8),
}

const PROTOCOL_NAMES: &str = "TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number from 1 to 255";

impl Protocol {
    /// The IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
            Protocol::IcmpV6 => 58,
            Protocol::Sctp => 132,
            Protocol::UdpLite => 136,
            Protocol::Number(n) => n,
        }
    }

    /// Whether rules may match ports of this protocol (TCP, UDP, SCTP).
    pub fn has_ports(self) -> bool {
        matches!(self.number(), 6 | 17 | 132)
    }

    fn from_u64(value: u64) -> Result<Self, String> {
        match u8::try_from(value) {
            Ok(n) if n >= 1 => Ok(Protocol::Number(n)),
            _ => Err(format!(
                "{value} is not a valid protocol (expected {PROTOCOL_NAMES})"
            )),
        }
    }

    fn serialize_form<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Protocol::Number(n) => serializer.serialize_u8(*n),
            named => serializer.collect_str(named),
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "TCP" | "tcp" => Protocol::Tcp,
            "UDP" | "udp" => Protocol::Udp,
            "ICMP" | "icmp" => Protocol::Icmp,
            "ICMPv6" | "icmpv6" => Protocol::IcmpV6,
            "SCTP" | "sctp" => Protocol::Sctp,
            "UDPLite" | "udplite" => Protocol::UdpLite,
            _ => {
                return Err(format!(
                    "{text:?} is not a valid protocol (expected {PROTOCOL_NAMES})"
                ))
            }
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Icmp => f.write_str("ICMP"),
            Protocol::IcmpV6 => f.write_str("ICMPv6"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::UdpLite => f.write_str("UDPLite"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

string_form!(Protocol, "a protocol name or number");
schema_form!(Protocol, int_or_string);

/// A Calico rule port: a number, a range `"lo:hi"`, or the name of a named port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Port {
    /// One port.
    Number(u16),
    /// An inclusive range.
    Range(u16, u16),
    /// A named port, resolved against the endpoints' declared ports.
    Named(String),
}

impl Port {
    fn from_u64(value: u64) -> Result<Self, String> {
        u16::try_from(value)
            .map(Port::Number)
            .map_err(|_| format!("{value} is not a valid port (expected 0 to 65535)"))
    }

    fn serialize_form<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Port::Number(n) => serializer.serialize_u16(*n),
            other => serializer.collect_str(other),
        }
    }
}

fn parse_port_number(text: &str, whole: &str) -> Result<u16, String> {
    let value: u64 = text
        .parse()
        .map_err(|_| format!("{whole:?} is not a valid port range"))?;
    u16::try_from(value).map_err(|_| format!("{value} is not a valid port (expected 0 to 65535)"))
}

impl FromStr for Port {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some((low, high)) = text.split_once(':') {
            let (low, high) = (
                parse_port_number(low, text)?,
                parse_port_number(high, text)?,
            );
            if low > high {
                return Err(format!(
                    "{text:?} is not a valid port range: {low} is above {high}"
                ));
            }
            return Ok(Port::Range(low, high));
        }
        if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
            return parse_port_number(text, text).map(Port::Number);
        }
        validate_port_name(text).map(|()| Port::Named(text.to_string()))
    }
}

/// A port name: 1 to 15 lowercase letters, digits and dashes, with at least one letter
/// (IANA service names, as Kubernetes requires).
pub fn validate_port_name(text: &str) -> Result<(), String> {
    let valid = !text.is_empty()
        && text.len() <= 15
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && text.bytes().any(|b| b.is_ascii_lowercase())
        && !text.starts_with('-')
        && !text.ends_with('-')
        && !text.contains("--");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a valid port: expected a number, a range \"lo:hi\", or a port name \
             (1-15 lowercase letters, digits and single dashes)"
        ))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Number(n) => write!(f, "{n}"),
            Port::Range(low, high) => write!(f, "{low}:{high}"),
            Port::Named(name) => f.write_str(name),
        }
    }
}

string_form!(Port, "a port number, a range \"lo:hi\" or a port name");
schema_form!(Port, int_or_string);

/// A Kubernetes port: a number from 1 to 65535 or a port name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KubePort {
    /// A port number.
    Number(u16),
    /// A named port.
    Named(String),
}

impl KubePort {
    fn from_u64(value: u64) -> Result<Self, String> {
        match u16::try_from(value) {
            Ok(n) if n >= 1 => Ok(KubePort::Number(n)),
            _ => Err(format!("{value} is not a valid port (expected 1 to 65535)")),
        }
    }

    fn serialize_form<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            KubePort::Number(n) => serializer.serialize_u16(*n),
            KubePort::Named(name) => serializer.serialize_str(name),
        }
    }
}

impl FromStr for KubePort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        validate_port_name(text).map(|()| KubePort::Named(text.to_string()))
    }
}

string_form!(KubePort, "a port number or a port name");
schema_form!(KubePort, int_or_string);

/// An AS number: 0 to 4294967295, as a number, a string, or asdot (`1.10`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AsNumber(pub u32);

impl AsNumber {
    fn from_u64(value: u64) -> Result<Self, String> {
        u32::try_from(value)
            .map(AsNumber)
            .map_err(|_| format!("{value} is not a valid AS number (expected 0 to 4294967295)"))
    }

    fn serialize_form<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

impl FromStr for AsNumber {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad =
            || format!("{text:?} is not a valid AS number (expected 0 to 4294967295 or asdot A.B)");
        if let Some((high, low)) = text.split_once('.') {
            let high: u16 = high.parse().map_err(|_| bad())?;
            let low: u16 = low.parse().map_err(|_| bad())?;
            return Ok(AsNumber((u32::from(high) << 16) | u32::from(low)));
        }
        let value: u64 = text.parse().map_err(|_| bad())?;
        AsNumber::from_u64(value)
    }
}

string_form!(AsNumber, "an AS number");
schema_form!(AsNumber, int_or_string);

/// A selector as written, checked to parse.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SelectorText {
    text: String,
    parsed: Selector,
}

impl SelectorText {
    /// Parses `text`; the error explains where and why it does not parse.
    pub fn new(text: &str) -> Result<Self, String> {
        match Selector::parse(text) {
            Ok(parsed) => Ok(SelectorText {
                text: text.to_string(),
                parsed,
            }),
            Err(err) => Err(format!("{text:?} is not a valid selector: {err}")),
        }
    }

    /// The selector as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed selector.
    pub fn selector(&self) -> &Selector {
        &self.parsed
    }

    fn from_u64(value: u64) -> Result<Self, String> {
        Err(format!(
            "{value} is not a selector (selectors are strings such as \"app == 'web'\")"
        ))
    }

    fn serialize_form<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl FromStr for SelectorText {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        SelectorText::new(text)
    }
}

string_form!(SelectorText, "a selector string");
schema_form!(SelectorText, string);

/// A duration in Go's notation (`90s`, `1m30s`, `1h`, `500ms`), as Calico writes them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Duration {
    text: String,
    /// The duration in nanoseconds.
    pub nanos: u128,
}

impl Duration {
    fn from_u64(value: u64) -> Result<Self, String> {
        Err(format!(
            "{value} is not a duration (write it with a unit, e.g. \"{value}s\")"
        ))
    }

    fn serialize_form<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a duration (e.g. \"90s\", \"1m30s\", \"500ms\")");
        if text == "0" {
            return Ok(Duration {
                text: text.into(),
                nanos: 0,
            });
        }
        let mut rest = text;
        let mut nanos: u128 = 0;
        while !rest.is_empty() {
            let digits = rest
                .bytes()
                .take_while(|b| b.is_ascii_digit() || *b == b'.')
                .count();
            let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .bytes()
                .take_while(|b| b.is_ascii_alphabetic() || *b == 0xC2 || *b == 0xB5)
                .count();
            let unit = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            nanos += (number * unit) as u128;
        }
        Ok(Duration {
            text: text.into(),
            nanos,
        })
    }
}

string_form!(Duration, "a duration such as \"90s\"");
schema_form!(Duration, string);

/// A value of a closed set of names, written exactly.
macro_rules! name_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:expr),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// The name as written in documents.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            fn from_u64(value: u64) -> Result<Self, String> {
                Err(format!("{value} is not one of {}", [$($text),+].join(", ")))
            }

            fn serialize_form<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "enum": [$($text),+]})
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("{text:?} is not one of {}", [$($text),+].join(", "))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        string_form!($name, concat!("one of ", $($text, " "),+));
    };
}

name_enum!(
    /// What a rule does when it matches.
    Action {
        /// Accept the packet.
        Allow = "Allow",
        /// Drop the packet.
        Deny = "Deny",
        /// Log the packet and go on to the next rule.
        Log = "Log",
        /// Skip the rest of this tier.
        Pass = "Pass",
    }
);

name_enum!(
    /// A direction a policy applies to.
    PolicyType {
        /// Traffic towards the selected endpoints.
        Ingress = "Ingress",
        /// Traffic from the selected endpoints.
        Egress = "Egress",
    }
);

name_enum!(
    /// FelixConfiguration `workloadSourceSpoofing`: whether workloads' `allowSpoofedSourcePrefixes`
    /// are honoured.
    WorkloadSourceSpoofing {
        /// Ignored: a workload sends only from its own addresses (the default).
        Disabled = "Disabled",
        /// Honoured: a workload may also send from the prefixes its endpoint names.
        Any = "Any",
    }
);

name_enum!(
    /// IPIP or VXLAN encapsulation mode of a pool.
    EncapMode {
        /// Never encapsulate.
        Never = "Never",
        /// Always encapsulate.
        Always = "Always",
        /// Encapsulate only towards nodes in another subnet.
        CrossSubnet = "CrossSubnet",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.0.0.1".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.1/32"
        );
        assert_eq!(
            "fd00::/64".parse::<Cidr>().unwrap().to_string(),
            "fd00::/64"
        );
        assert!("10.0.0.0/33"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("0 to 32"));
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert!(!"10.0.0.1/8".parse::<Cidr>().unwrap().is_masked());
    }

    #[test]
    fn ports() {
        assert_eq!("80".parse::<Port>(), Ok(Port::Number(80)));
        assert_eq!("1000:2000".parse::<Port>(), Ok(Port::Range(1000, 2000)));
        assert_eq!("http".parse::<Port>(), Ok(Port::Named("http".into())));
        assert!("70000".parse::<Port>().unwrap_err().contains("0 to 65535"));
        assert!("2000:1000".parse::<Port>().is_err());
        assert!("HTTP".parse::<Port>().is_err());
        assert!(Port::from_u64(70000).is_err());
    }

    #[test]
    fn protocols_and_as_numbers() {
        assert_eq!("tcp".parse::<Protocol>(), Ok(Protocol::Tcp));
        assert!("TCPX"
            .parse::<Protocol>()
            .unwrap_err()
            .contains("not a valid protocol"));
        assert!(Protocol::from_u64(0).is_err());
        assert_eq!("1.10".parse::<AsNumber>(), Ok(AsNumber(65546)));
        assert!(AsNumber::from_u64(1 << 32).is_err());
        assert_eq!(AsNumber::from_u64((1 << 32) - 1), Ok(AsNumber(u32::MAX)));
    }

    #[test]
    fn durations() {
        assert_eq!("1m30s".parse::<Duration>().unwrap().nanos, 90_000_000_000);
        assert_eq!("500ms".parse::<Duration>().unwrap().nanos, 500_000_000);
        assert!("15".parse::<Duration>().is_err());
        assert!("soon".parse::<Duration>().is_err());
    }
}
