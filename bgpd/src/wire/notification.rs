//! NOTIFICATION (RFC 4271 §4.5) and the error codes of RFC 4271 §6, RFC 4486, RFC 7313.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// NOTIFICATION error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: Message Header Error.
    MessageHeader,
    /// 2: OPEN Message Error.
    OpenMessage,
    /// 3: UPDATE Message Error.
    UpdateMessage,
    /// 4: Hold Timer Expired.
    HoldTimerExpired,
    /// 5: Finite State Machine Error.
    FiniteStateMachine,
    /// 6: Cease.
    Cease,
    /// 7: ROUTE-REFRESH Message Error (RFC 7313).
    RouteRefresh,
    /// 8: Send Hold Timer Expired (RFC 9687).
    SendHoldTimerExpired,
    /// Any other code, as received.
    Other(u8),
}

impl ErrorCode {
    /// The code's number.
    pub fn code(self) -> u8 {
        match self {
            ErrorCode::MessageHeader => 1,
            ErrorCode::OpenMessage => 2,
            ErrorCode::UpdateMessage => 3,
            ErrorCode::HoldTimerExpired => 4,
            ErrorCode::FiniteStateMachine => 5,
            ErrorCode::Cease => 6,
            ErrorCode::RouteRefresh => 7,
            ErrorCode::SendHoldTimerExpired => 8,
            ErrorCode::Other(code) => code,
        }
    }

    /// From a number.
    pub fn from_code(code: u8) -> ErrorCode {
        match code {
            1 => ErrorCode::MessageHeader,
            2 => ErrorCode::OpenMessage,
            3 => ErrorCode::UpdateMessage,
            4 => ErrorCode::HoldTimerExpired,
            5 => ErrorCode::FiniteStateMachine,
            6 => ErrorCode::Cease,
            7 => ErrorCode::RouteRefresh,
            8 => ErrorCode::SendHoldTimerExpired,
            other => ErrorCode::Other(other),
        }
    }
}

/// A NOTIFICATION message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationMsg {
    /// Error code.
    pub code: ErrorCode,
    /// Error subcode (meaning depends on the code).
    pub subcode: u8,
    /// Diagnostic data.
    pub data: Bytes,
}

impl NotificationMsg {
    /// A notification.
    pub fn new(code: ErrorCode, subcode: u8, data: Bytes) -> NotificationMsg {
        NotificationMsg {
            code,
            subcode,
            data,
        }
    }

    /// An UPDATE Message Error (code 3) with `subcode` and `data`.
    pub fn update(subcode: u8, data: &[u8]) -> NotificationMsg {
        NotificationMsg::new(
            ErrorCode::UpdateMessage,
            subcode,
            Bytes::copy_from_slice(data),
        )
    }

    /// Decodes a NOTIFICATION body; `None` when it is shorter than 2 octets.
    pub fn decode(body: &[u8]) -> Option<NotificationMsg> {
        let (&code, rest) = body.split_first()?;
        let (&subcode, data) = rest.split_first()?;
        Some(NotificationMsg::new(
            ErrorCode::from_code(code),
            subcode,
            Bytes::copy_from_slice(data),
        ))
    }

    /// Encodes the body.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.code.code());
        out.put_u8(self.subcode);
        out.put_slice(&self.data);
    }

    /// What the code and subcode mean, in RFC words.
    pub fn meaning(&self) -> &'static str {
        match (self.code, self.subcode) {
            (ErrorCode::MessageHeader, 1) => "Message Header Error: Connection Not Synchronized",
            (ErrorCode::MessageHeader, 2) => "Message Header Error: Bad Message Length",
            (ErrorCode::MessageHeader, 3) => "Message Header Error: Bad Message Type",
            (ErrorCode::OpenMessage, 1) => "OPEN Message Error: Unsupported Version Number",
            (ErrorCode::OpenMessage, 2) => "OPEN Message Error: Bad Peer AS",
            (ErrorCode::OpenMessage, 3) => "OPEN Message Error: Bad BGP Identifier",
            (ErrorCode::OpenMessage, 4) => "OPEN Message Error: Unsupported Optional Parameter",
            (ErrorCode::OpenMessage, 6) => "OPEN Message Error: Unacceptable Hold Time",
            (ErrorCode::OpenMessage, 7) => "OPEN Message Error: Unsupported Capability",
            (ErrorCode::OpenMessage, _) => "OPEN Message Error",
            (ErrorCode::UpdateMessage, 1) => "UPDATE Message Error: Malformed Attribute List",
            (ErrorCode::UpdateMessage, 2) => {
                "UPDATE Message Error: Unrecognized Well-known Attribute"
            }
            (ErrorCode::UpdateMessage, 3) => "UPDATE Message Error: Missing Well-known Attribute",
            (ErrorCode::UpdateMessage, 4) => "UPDATE Message Error: Attribute Flags Error",
            (ErrorCode::UpdateMessage, 5) => "UPDATE Message Error: Attribute Length Error",
            (ErrorCode::UpdateMessage, 6) => "UPDATE Message Error: Invalid ORIGIN Attribute",
            (ErrorCode::UpdateMessage, 8) => "UPDATE Message Error: Invalid NEXT_HOP Attribute",
            (ErrorCode::UpdateMessage, 9) => "UPDATE Message Error: Optional Attribute Error",
            (ErrorCode::UpdateMessage, 10) => "UPDATE Message Error: Invalid Network Field",
            (ErrorCode::UpdateMessage, 11) => "UPDATE Message Error: Malformed AS_PATH",
            (ErrorCode::UpdateMessage, _) => "UPDATE Message Error",
            (ErrorCode::HoldTimerExpired, _) => "Hold Timer Expired",
            (ErrorCode::FiniteStateMachine, _) => "Finite State Machine Error",
            (ErrorCode::Cease, 1) => "Cease: Maximum Number of Prefixes Reached",
            (ErrorCode::Cease, 2) => "Cease: Administrative Shutdown",
            (ErrorCode::Cease, 3) => "Cease: Peer De-configured",
            (ErrorCode::Cease, 4) => "Cease: Administrative Reset",
            (ErrorCode::Cease, 5) => "Cease: Connection Rejected",
            (ErrorCode::Cease, 6) => "Cease: Other Configuration Change",
            (ErrorCode::Cease, 7) => "Cease: Connection Collision Resolution",
            (ErrorCode::Cease, 8) => "Cease: Out of Resources",
            (ErrorCode::Cease, _) => "Cease",
            (ErrorCode::MessageHeader, _) => "Message Header Error",
            (ErrorCode::RouteRefresh, _) => "ROUTE-REFRESH Message Error",
            (ErrorCode::SendHoldTimerExpired, _) => "Send Hold Timer Expired",
            (ErrorCode::Other(_), _) => "unknown error code",
        }
    }
}

impl fmt::Display for NotificationMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}/{})",
            self.meaning(),
            self.code.code(),
            self.subcode
        )?;
        if !self.data.is_empty() {
            f.write_str(" data ")?;
            for byte in self.data.iter().take(32) {
                write!(f, "{byte:02x}")?;
            }
        }
        Ok(())
    }
}
