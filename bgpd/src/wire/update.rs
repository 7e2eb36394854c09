//! UPDATE (RFC 4271 §4.3) with the revised error handling of RFC 7606.

use bytes::{BufMut, Bytes, BytesMut};

use super::attribute::{code, AttributeError, Decoded, PathAttributes, Remedy};
use super::notification::NotificationMsg;
use super::open::AS_TRANS;
use super::prefix::{decode_prefixes, encode_prefixes, Family, Nlri};
use super::reader::Reader;
use super::{BodyError, Context};

/// What to do with an UPDATE whose attributes were malformed in a survivable way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ErrorAction {
    /// Nothing was wrong.
    #[default]
    None,
    /// Some attributes were dropped; the routes stand (RFC 7606 "attribute discard").
    Discarded(Vec<AttributeError>),
    /// Every route the UPDATE announces is to be treated as withdrawn (RFC 7606).
    TreatAsWithdraw(Vec<AttributeError>),
}

/// An UPDATE message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateMsg {
    /// Withdrawn IPv4 routes.
    pub withdrawn: Vec<Nlri>,
    /// Path attributes (IPv6 and other families travel in MP_REACH/MP_UNREACH).
    pub attributes: PathAttributes,
    /// Announced IPv4 routes.
    pub nlri: Vec<Nlri>,
    /// The RFC 7606 outcome of decoding (always `None` for UPDATEs built locally).
    pub error_action: ErrorAction,
}

/// An UPDATE Message Error: Malformed Attribute List (RFC 4271 §6.3).
fn malformed_attribute_list() -> BodyError {
    BodyError::Notify(NotificationMsg::update(1, &[]))
}

/// An UPDATE Message Error: Invalid Network Field (RFC 4271 §6.3, RFC 7606 §5.3).
fn invalid_network_field() -> BodyError {
    BodyError::Notify(NotificationMsg::update(10, &[]))
}

impl UpdateMsg {
    /// Whether this UPDATE is an End-of-RIB marker (RFC 4724 §2), and for which family.
    pub fn end_of_rib(&self) -> Option<Family> {
        let a = &self.attributes;
        let only_unreach = a.origin.is_none()
            && a.as_path.is_none()
            && a.next_hop.is_none()
            && a.mp_reach.is_none();
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() || !only_unreach {
            return None;
        }
        match &a.mp_unreach {
            None if *a == PathAttributes::default() => Some(Family::Ipv4Unicast),
            Some(unreach) if unreach.withdrawn.is_empty() => Some(unreach.family),
            _ => None,
        }
    }

    /// The End-of-RIB marker for `family`.
    pub fn end_of_rib_for(family: Family) -> UpdateMsg {
        let mut update = UpdateMsg::default();
        if family != Family::Ipv4Unicast {
            update.attributes.mp_unreach = Some(Box::new(super::attribute::MpUnreach {
                family,
                withdrawn: Vec::new(),
            }));
        }
        update
    }

    /// Whether RFC 7606 says to treat the announced routes as withdrawn.
    pub fn treat_as_withdraw(&self) -> bool {
        matches!(self.error_action, ErrorAction::TreatAsWithdraw(_))
    }

    /// Decodes an UPDATE body.
    pub fn decode(body: &[u8], cx: &Context) -> Result<UpdateMsg, BodyError> {
        let mut reader = Reader::new(body);
        let withdrawn_len = usize::from(reader.u16().map_err(|_| malformed_attribute_list())?);
        let withdrawn_bytes = reader
            .take(withdrawn_len)
            .map_err(|_| malformed_attribute_list())?;
        let attributes_len = usize::from(reader.u16().map_err(|_| malformed_attribute_list())?);
        let attribute_bytes = reader
            .take(attributes_len)
            .map_err(|_| malformed_attribute_list())?;
        let nlri_bytes = reader.rest();
        let v4_add_path = cx.add_path_receive.contains(&Family::Ipv4Unicast);
        let withdrawn = decode_prefixes(withdrawn_bytes, Family::Ipv4Unicast, v4_add_path)
            .ok_or_else(invalid_network_field)?;
        let nlri = decode_prefixes(nlri_bytes, Family::Ipv4Unicast, v4_add_path)
            .ok_or_else(invalid_network_field)?;
        let mut decoded = decode_attributes(attribute_bytes, cx);
        if let Some(reset) = decoded.errors.iter().find_map(|e| match e.remedy {
            Remedy::Reset(subcode) => Some(NotificationMsg::update(subcode, &e.data)),
            _ => None,
        }) {
            return Err(BodyError::Notify(reset));
        }
        merge_four_octet(&mut decoded, cx);
        let mut update = UpdateMsg {
            withdrawn,
            attributes: decoded.attributes,
            nlri,
            error_action: ErrorAction::None,
        };
        let mut errors = decoded.errors;
        let missing = update.missing_well_known();
        // An attribute present but malformed is reported once, as malformed, not also as missing.
        let missing: Vec<AttributeError> = missing
            .into_iter()
            .filter(|m| !errors.iter().any(|e| e.code == m.code))
            .collect();
        errors.extend(missing);
        update.error_action = if errors.iter().any(|e| e.remedy == Remedy::TreatAsWithdraw) {
            ErrorAction::TreatAsWithdraw(errors)
        } else if errors.is_empty() {
            ErrorAction::None
        } else {
            ErrorAction::Discarded(errors)
        };
        Ok(update)
    }

    /// RFC 4271 §6.3 / RFC 7606 §3 d: an UPDATE that announces routes needs ORIGIN and
    /// AS_PATH, and NEXT_HOP for IPv4 NLRI; a missing one means treat-as-withdraw.
    fn missing_well_known(&self) -> Vec<AttributeError> {
        let a = &self.attributes;
        let announces =
            !self.nlri.is_empty() || a.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty());
        if !announces {
            return Vec::new();
        }
        let mut missing = Vec::new();
        let mut need = |present: bool, type_code: u8| {
            if !present {
                missing.push(AttributeError {
                    code: type_code,
                    remedy: Remedy::TreatAsWithdraw,
                    data: Bytes::copy_from_slice(&[type_code]),
                    reason: "missing well-known attribute",
                });
            }
        };
        need(a.origin.is_some(), code::ORIGIN);
        need(a.as_path.is_some(), code::AS_PATH);
        need(self.nlri.is_empty() || a.next_hop.is_some(), code::NEXT_HOP);
        missing
    }

    /// Encodes the body.
    pub fn encode(&self, out: &mut BytesMut, cx: &Context) {
        let v4_add_path = cx.add_path_send.contains(&Family::Ipv4Unicast);
        let mut withdrawn = BytesMut::new();
        encode_prefixes(&mut withdrawn, &self.withdrawn, v4_add_path);
        out.put_u16(withdrawn.len() as u16);
        out.put_slice(&withdrawn);
        let mut attributes = BytesMut::new();
        self.attributes.encode(&mut attributes, cx);
        out.put_u16(attributes.len() as u16);
        out.put_slice(&attributes);
        encode_prefixes(out, &self.nlri, v4_add_path);
    }
}

/// Walks the attribute block. An attribute whose length overruns the block ends the walk
/// with treat-as-withdraw (RFC 7606 §4).
fn decode_attributes(bytes: &[u8], cx: &Context) -> Decoded {
    let mut decoded = Decoded::default();
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        let start = bytes.len() - reader.remaining();
        let header = (|| {
            let flags_byte = reader.u8()?;
            let type_code = reader.u8()?;
            let len = if flags_byte & super::attribute::flags::EXTENDED_LENGTH != 0 {
                usize::from(reader.u16()?)
            } else {
                usize::from(reader.u8()?)
            };
            Ok::<_, BodyError>((flags_byte, type_code, len))
        })();
        let Ok((flags_byte, type_code, len)) = header else {
            decoded.errors.push(overrun(
                bytes.get(start + 1).copied().unwrap_or(0),
                &bytes[start..],
            ));
            break;
        };
        let Ok(value) = reader.take(len) else {
            decoded.errors.push(overrun(type_code, &bytes[start..]));
            break;
        };
        let raw = &bytes[start..bytes.len() - reader.remaining()];
        decoded.add(flags_byte, type_code, value, raw, cx);
    }
    decoded
}

fn overrun(type_code: u8, raw: &[u8]) -> AttributeError {
    // An MP attribute we cannot read means NLRI we cannot find: that resets the session.
    let remedy = if matches!(type_code, code::MP_REACH_NLRI | code::MP_UNREACH_NLRI) {
        Remedy::Reset(1)
    } else {
        Remedy::TreatAsWithdraw
    };
    AttributeError {
        code: type_code,
        remedy,
        data: Bytes::copy_from_slice(raw),
        reason: "attribute length overruns the attribute list",
    }
}

/// RFC 6793 §4.2.3: from a 2-octet peer, rebuild AS_PATH and AGGREGATOR from their AS4
/// forms; from a 4-octet peer, AS4 attributes are ignored.
fn merge_four_octet(decoded: &mut Decoded, cx: &Context) {
    if cx.four_octet_as {
        return;
    }
    let attributes = &mut decoded.attributes;
    let aggregator_is_trans = attributes
        .aggregator
        .is_some_and(|(asn, _)| asn == u32::from(AS_TRANS));
    if let (true, Some(as4)) = (aggregator_is_trans, decoded.as4_aggregator) {
        attributes.aggregator = Some(as4);
    } else if attributes.aggregator.is_some() && decoded.as4_aggregator.is_some() {
        // AGGREGATOR from a real 2-octet AS: the AS4 attributes are to be ignored.
        return;
    }
    if let (Some(path), Some(as4)) = (&attributes.as_path, &decoded.as4_path) {
        attributes.as_path = Some(path.merge_as4(as4));
    }
}
