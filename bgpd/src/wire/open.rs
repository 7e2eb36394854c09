//! OPEN (RFC 4271 §4.2) with capabilities (RFC 5492) and extended optional parameters
//! (RFC 9072).

use std::net::Ipv4Addr;

use bytes::{BufMut, Bytes, BytesMut};

use super::notification::{ErrorCode, NotificationMsg};
use super::prefix::Family;
use super::reader::Reader;
use super::BodyError;

/// AS_TRANS (RFC 6793 §9): the 2-octet stand-in for a 4-octet AS number.
pub const AS_TRANS: u16 = 23456;

/// Add-path direction bits (RFC 7911 §4).
pub const ADD_PATH_RECEIVE: u8 = 1;
/// Add-path direction bits (RFC 7911 §4).
pub const ADD_PATH_SEND: u8 = 2;

/// Graceful restart (RFC 4724 §3, RFC 8538 §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// R bit: the sender has restarted.
    pub restarting: bool,
    /// N bit: the sender does graceful restart for NOTIFICATIONs too (RFC 8538).
    pub notification: bool,
    /// Seconds the peer should keep our routes.
    pub restart_time: u16,
    /// Families, each with its "forwarding state preserved" bit.
    pub families: Vec<(Family, bool)>,
}

/// A capability (RFC 5492).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// 1: multiprotocol extensions (RFC 4760).
    Multiprotocol(Family),
    /// 2: route refresh (RFC 2918).
    RouteRefresh,
    /// 6: extended messages (RFC 8654).
    ExtendedMessage,
    /// 64: graceful restart (RFC 4724).
    GracefulRestart(GracefulRestart),
    /// 65: 4-octet AS numbers (RFC 6793), carrying our AS.
    FourOctetAs(u32),
    /// 69: add-path (RFC 7911): families with direction bits.
    AddPath(Vec<(Family, u8)>),
    /// 70: enhanced route refresh (RFC 7313).
    EnhancedRouteRefresh,
    /// Any other capability, kept as received.
    Unknown {
        /// Capability code.
        code: u8,
        /// Its value.
        value: Bytes,
    },
}

/// An OPEN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenMsg {
    /// Protocol version: 4.
    pub version: u8,
    /// The 2-octet "My Autonomous System" field (AS_TRANS when the AS is above 65535).
    pub my_as: u16,
    /// Proposed hold time in seconds: 0 or at least 3.
    pub hold_time: u16,
    /// BGP identifier.
    pub bgp_id: Ipv4Addr,
    /// Capabilities, in the order received.
    pub capabilities: Vec<Capability>,
}

fn open_error(subcode: u8, data: &[u8]) -> BodyError {
    BodyError::Notify(NotificationMsg::new(
        ErrorCode::OpenMessage,
        subcode,
        Bytes::copy_from_slice(data),
    ))
}

impl OpenMsg {
    /// An OPEN for `asn` (4-octet capable), with `capabilities` to which the 4-octet AS
    /// capability is added.
    pub fn new(
        asn: u32,
        hold_time: u16,
        bgp_id: Ipv4Addr,
        mut capabilities: Vec<Capability>,
    ) -> OpenMsg {
        if !capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
        {
            capabilities.push(Capability::FourOctetAs(asn));
        }
        let my_as = u16::try_from(asn).unwrap_or(AS_TRANS);
        OpenMsg {
            version: 4,
            my_as,
            hold_time,
            bgp_id,
            capabilities,
        }
    }

    /// The sender's AS: from the 4-octet AS capability when present.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(asn) => Some(*asn),
                _ => None,
            })
            .unwrap_or(u32::from(self.my_as))
    }

    /// Whether the sender announced `capability` (compared by kind, not value).
    pub fn has(&self, wanted: &Capability) -> bool {
        self.capabilities
            .iter()
            .any(|c| std::mem::discriminant(c) == std::mem::discriminant(wanted))
    }

    /// Decodes an OPEN body and checks it as RFC 4271 §6.2 says.
    pub fn decode(body: &[u8]) -> Result<OpenMsg, BodyError> {
        let mut reader = Reader::new(body);
        let version = reader.u8()?;
        let my_as = reader.u16()?;
        let hold_time = reader.u16()?;
        let bgp_id = Ipv4Addr::from(reader.u32()?);
        let mut params_len = usize::from(reader.u8()?);
        // RFC 9072: a non-extended length of 255 with parameter type 255 announces a 2-octet
        // length; each parameter then has a 2-octet length too.
        let extended = params_len == 255 && reader.remaining() >= 3 && body.get(10) == Some(&255);
        if extended {
            reader.u8()?;
            params_len = usize::from(reader.u16()?);
        }
        if reader.remaining() != params_len {
            return Err(BodyError::Truncated);
        }
        if version != 4 {
            // Data: the largest version we support (RFC 4271 §6.2).
            return Err(open_error(1, &[0, 4]));
        }
        if hold_time == 1 || hold_time == 2 {
            return Err(open_error(6, &[]));
        }
        if bgp_id.is_unspecified() {
            return Err(open_error(3, &[]));
        }
        let mut capabilities = Vec::new();
        let mut params = Reader::new(reader.rest());
        while !params.is_empty() {
            let kind = params.u8()?;
            let len = if extended {
                usize::from(params.u16()?)
            } else {
                usize::from(params.u8()?)
            };
            let value = params.take(len)?;
            if kind != 2 {
                return Err(open_error(4, &[]));
            }
            decode_capabilities(value, &mut capabilities)?;
        }
        Ok(OpenMsg {
            version,
            my_as,
            hold_time,
            bgp_id,
            capabilities,
        })
    }

    /// Encodes the body (RFC 9072 extended parameters when the capabilities need them).
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.version);
        out.put_u16(self.my_as);
        out.put_u16(self.hold_time);
        out.put_slice(&self.bgp_id.octets());
        let mut caps = BytesMut::new();
        for capability in &self.capabilities {
            encode_capability(capability, &mut caps);
        }
        if caps.is_empty() {
            out.put_u8(0);
        } else if caps.len() + 2 <= 255 {
            out.put_u8((caps.len() + 2) as u8);
            out.put_u8(2);
            out.put_u8(caps.len() as u8);
            out.put_slice(&caps);
        } else {
            out.put_u8(255);
            out.put_u8(255);
            out.put_u16((caps.len() + 3) as u16);
            out.put_u8(2);
            out.put_u16(caps.len() as u16);
            out.put_slice(&caps);
        }
    }
}

fn family_at(reader: &mut Reader<'_>) -> Result<Family, BodyError> {
    let afi = reader.u16()?;
    let safi = reader.u8()?;
    Ok(Family::from_codes(afi, safi))
}

fn decode_capabilities(bytes: &[u8], out: &mut Vec<Capability>) -> Result<(), BodyError> {
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        let code = reader.u8()?;
        let len = usize::from(reader.u8()?);
        let value = reader.take(len)?;
        // A capability whose length does not fit its kind is a malformed OPEN.
        let malformed = || open_error(0, &[code]);
        let mut field = Reader::new(value);
        let capability = match code {
            1 if len == 4 => {
                let afi = field.u16()?;
                field.u8()?;
                Capability::Multiprotocol(Family::from_codes(afi, field.u8()?))
            }
            2 if len == 0 => Capability::RouteRefresh,
            6 if len == 0 => Capability::ExtendedMessage,
            64 if len >= 2 && (len - 2) % 4 == 0 => {
                let header = field.u16()?;
                let mut families = Vec::new();
                while !field.is_empty() {
                    let family = family_at(&mut field)?;
                    families.push((family, field.u8()? & 0x80 != 0));
                }
                Capability::GracefulRestart(GracefulRestart {
                    restarting: header & 0x8000 != 0,
                    notification: header & 0x4000 != 0,
                    restart_time: header & 0x0fff,
                    families,
                })
            }
            65 if len == 4 => Capability::FourOctetAs(field.u32()?),
            69 if len % 4 == 0 => {
                let mut families = Vec::new();
                while !field.is_empty() {
                    let family = family_at(&mut field)?;
                    families.push((family, field.u8()?));
                }
                Capability::AddPath(families)
            }
            70 if len == 0 => Capability::EnhancedRouteRefresh,
            1 | 2 | 6 | 64 | 65 | 69 | 70 => return Err(malformed()),
            _ => Capability::Unknown {
                code,
                value: Bytes::copy_from_slice(value),
            },
        };
        out.push(capability);
    }
    Ok(())
}

fn encode_capability(capability: &Capability, out: &mut BytesMut) {
    let mut value = BytesMut::new();
    let code = match capability {
        Capability::Multiprotocol(family) => {
            value.put_u16(family.afi());
            value.put_u8(0);
            value.put_u8(family.safi());
            1
        }
        Capability::RouteRefresh => 2,
        Capability::ExtendedMessage => 6,
        Capability::GracefulRestart(gr) => {
            let flags = (u16::from(gr.restarting) << 15) | (u16::from(gr.notification) << 14);
            value.put_u16(flags | (gr.restart_time & 0x0fff));
            for (family, preserved) in &gr.families {
                value.put_u16(family.afi());
                value.put_u8(family.safi());
                value.put_u8(if *preserved { 0x80 } else { 0 });
            }
            64
        }
        Capability::FourOctetAs(asn) => {
            value.put_u32(*asn);
            65
        }
        Capability::AddPath(families) => {
            for (family, direction) in families {
                value.put_u16(family.afi());
                value.put_u8(family.safi());
                value.put_u8(*direction);
            }
            69
        }
        Capability::EnhancedRouteRefresh => 70,
        Capability::Unknown { code, value: raw } => {
            value.put_slice(raw);
            *code
        }
    };
    out.put_u8(code);
    out.put_u8(u8::try_from(value.len()).unwrap_or(u8::MAX));
    out.put_slice(&value[..value.len().min(255)]);
}
