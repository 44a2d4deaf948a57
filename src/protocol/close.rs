//! Close codes (RFC 6455 §7.4) and close frame payloads.

/// A WebSocket close status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000 Normal Closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001 Going Away (server shutting down).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002 Protocol Error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003 Unsupported Data.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1007 Invalid Frame Payload Data (bad UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008 Policy Violation (slow consumer).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009 Message Too Big.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011 Internal Error.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// Service restart: the daemon is draining for a restart or an upgrade; reconnect.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// Try again later: the room is full (`max_subscribers`).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 4001 (private use): the connection's token expired without a `refresh`.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4001);

    /// May a peer send this code in a close frame? (RFC 6455 §7.4.1, §7.4.2)
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1011 | 3000..=4999)
    }
}

/// Parse a received close payload: empty, or a valid code followed by a UTF-8 reason.
/// Returns the code to echo back (1000 for an empty payload).
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseCode>, super::ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(super::ProtocolError::InvalidClose),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_sendable() {
                return Err(super::ProtocolError::InvalidClose);
            }
            if simdutf8::basic::from_utf8(&payload[2..]).is_err() {
                return Err(super::ProtocolError::InvalidUtf8);
            }
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert!(parse_close_payload(&[3]).is_err());
        assert_eq!(parse_close_payload(&[3, 232]), Ok(Some(CloseCode(1000))));
        assert!(parse_close_payload(&[3, 237]).is_err()); // 1005 may not be sent
        assert!(parse_close_payload(&[0x03, 0xe8, 0xff]).is_err()); // bad UTF-8 reason
        assert_eq!(
            parse_close_payload(&[0x0f, 0xa0, b'o', b'k']),
            Ok(Some(CloseCode(4000)))
        );
    }
}
