//! The BGP-4 wire codec (RFC 4271 §4), pure: bytes in, messages out, and back.
//!
//! - [`Message::decode`] frames one message from the front of a buffer; it never panics on
//!   any input. A decode error *is* the NOTIFICATION to send ([`NotificationMsg`]); an
//!   UPDATE whose attributes are malformed in a way RFC 7606 lets a speaker survive decodes
//!   successfully with its [`update::ErrorAction`] set (treat-as-withdraw, attribute discard).
//! - [`Message::encode`] writes a message as the negotiated capabilities require.
//! - [`Context`] carries what the session negotiated: 4-octet AS numbers, add-path per
//!   family, extended messages.

pub mod attribute;
pub mod notification;
pub mod open;
pub mod prefix;
pub mod reader;
pub mod update;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};

pub use self::notification::{ErrorCode, NotificationMsg};
pub use self::open::{Capability, OpenMsg};
pub use self::prefix::{Family, Nlri};
pub use self::update::UpdateMsg;

/// Header length: 16-octet marker, 2-octet length, 1-octet type (RFC 4271 §4.1).
pub const HEADER_LEN: usize = 19;

/// Largest message without the extended message capability (RFC 4271 §4.1).
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Largest message with the extended message capability (RFC 8654).
pub const MAX_EXTENDED_MESSAGE_LEN: usize = 65535;

/// What a session negotiated, which changes how messages are encoded and decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// Both sides announced 4-octet AS support (RFC 6793): AS_PATH carries 4-octet numbers.
    pub four_octet_as: bool,
    /// Both sides announced extended messages (RFC 8654): messages up to 65535 octets.
    pub extended_messages: bool,
    /// Families whose NLRI we receive with path identifiers (RFC 7911).
    pub add_path_receive: BTreeSet<Family>,
    /// Families whose NLRI we send with path identifiers (RFC 7911).
    pub add_path_send: BTreeSet<Family>,
}

impl Context {
    /// The context before OPENs are exchanged (and for OPEN messages themselves).
    pub fn initial() -> Context {
        Context::default()
    }

    /// The largest message allowed.
    pub fn max_message_len(&self) -> usize {
        if self.extended_messages {
            MAX_EXTENDED_MESSAGE_LEN
        } else {
            MAX_MESSAGE_LEN
        }
    }
}

/// Message types (RFC 4271 §4.1, RFC 2918 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// OPEN.
    Open = 1,
    /// UPDATE.
    Update = 2,
    /// NOTIFICATION.
    Notification = 3,
    /// KEEPALIVE.
    Keepalive = 4,
    /// ROUTE-REFRESH.
    RouteRefresh = 5,
}

/// A ROUTE-REFRESH message (RFC 2918, with the RFC 7313 subtypes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefreshMsg {
    /// The family to refresh.
    pub family: Family,
    /// 0 normal request, 1 beginning of route refresh, 2 end of route refresh (RFC 7313).
    pub subtype: u8,
}

/// A BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN (RFC 4271 §4.2).
    Open(OpenMsg),
    /// UPDATE (RFC 4271 §4.3), boxed: it is far larger than the others.
    Update(Box<UpdateMsg>),
    /// NOTIFICATION (RFC 4271 §4.5).
    Notification(NotificationMsg),
    /// KEEPALIVE (RFC 4271 §4.4).
    Keepalive,
    /// ROUTE-REFRESH (RFC 2918, RFC 7313).
    RouteRefresh(RouteRefreshMsg),
}

impl Message {
    /// Decodes the message at the front of `buf`: `Ok(None)` when more bytes are needed,
    /// `Ok(Some((message, length)))` when one message of `length` octets was read, and
    /// `Err(notification)` when the bytes are not a valid message (send it and close).
    pub fn decode(buf: &[u8], cx: &Context) -> Result<Option<(Message, usize)>, NotificationMsg> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        // RFC 4271 §6.1: the marker must be all ones.
        if buf[..16].iter().any(|&b| b != 0xff) {
            return Err(NotificationMsg::new(
                ErrorCode::MessageHeader,
                1,
                Bytes::new(),
            ));
        }
        let length = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
        let kind = buf[18];
        let bad_length = || {
            NotificationMsg::new(
                ErrorCode::MessageHeader,
                2,
                Bytes::copy_from_slice(&buf[16..18]),
            )
        };
        let max = if kind == MessageType::Open as u8 || kind == MessageType::Keepalive as u8 {
            MAX_MESSAGE_LEN
        } else {
            cx.max_message_len()
        };
        if !(HEADER_LEN..=max).contains(&length) {
            return Err(bad_length());
        }
        if buf.len() < length {
            return Ok(None);
        }
        let body = &buf[HEADER_LEN..length];
        let message = match kind {
            1 => Message::Open(OpenMsg::decode(body).map_err(|e| e.or_length(bad_length))?),
            2 => Message::Update(Box::new(
                UpdateMsg::decode(body, cx).map_err(|e| e.or_length(bad_length))?,
            )),
            3 => Message::Notification(NotificationMsg::decode(body).ok_or_else(bad_length)?),
            4 if body.is_empty() => Message::Keepalive,
            4 => return Err(bad_length()),
            5 => Message::RouteRefresh(decode_route_refresh(&buf[..length])?),
            _ => {
                return Err(NotificationMsg::new(
                    ErrorCode::MessageHeader,
                    3,
                    Bytes::copy_from_slice(&[kind]),
                ))
            }
        };
        Ok(Some((message, length)))
    }

    /// Encodes the message, header included.
    pub fn encode(&self, cx: &Context) -> Bytes {
        let mut body = BytesMut::new();
        let kind = match self {
            Message::Open(open) => {
                open.encode(&mut body);
                MessageType::Open
            }
            Message::Update(update) => {
                update.encode(&mut body, cx);
                MessageType::Update
            }
            Message::Notification(notification) => {
                notification.encode(&mut body);
                MessageType::Notification
            }
            Message::Keepalive => MessageType::Keepalive,
            Message::RouteRefresh(refresh) => {
                body.put_u16(refresh.family.afi());
                body.put_u8(refresh.subtype);
                body.put_u8(refresh.family.safi());
                MessageType::RouteRefresh
            }
        };
        frame(kind, &body)
    }
}

/// Puts the header in front of a body.
pub fn frame(kind: MessageType, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.put_bytes(0xff, 16);
    out.put_u16(u16::try_from(HEADER_LEN + body.len()).unwrap_or(u16::MAX));
    out.put_u8(kind as u8);
    out.put_slice(body);
    out.freeze()
}

/// RFC 2918 §3 / RFC 7313 §5: a ROUTE-REFRESH body is exactly 4 octets.
fn decode_route_refresh(message: &[u8]) -> Result<RouteRefreshMsg, NotificationMsg> {
    let body = &message[HEADER_LEN..];
    if body.len() != 4 {
        // RFC 7313 §5: ROUTE-REFRESH Message Error, Invalid Message Length, and the data is
        // the complete ROUTE-REFRESH message.
        return Err(NotificationMsg::new(
            ErrorCode::RouteRefresh,
            1,
            Bytes::copy_from_slice(message),
        ));
    }
    let family = Family::from_codes(u16::from_be_bytes([body[0], body[1]]), body[3]);
    Ok(RouteRefreshMsg {
        family,
        subtype: body[2],
    })
}

/// A decoding failure inside a message body: either a NOTIFICATION, or "the body is shorter
/// than its own fields say", which becomes Bad Message Length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Send this NOTIFICATION.
    Notify(NotificationMsg),
    /// The body ended early.
    Truncated,
}

impl BodyError {
    fn or_length(self, bad_length: impl FnOnce() -> NotificationMsg) -> NotificationMsg {
        match self {
            BodyError::Notify(notification) => notification,
            BodyError::Truncated => bad_length(),
        }
    }
}

impl From<NotificationMsg> for BodyError {
    fn from(notification: NotificationMsg) -> BodyError {
        BodyError::Notify(notification)
    }
}
