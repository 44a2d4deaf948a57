//! Frame header codec (RFC 6455 §5.2). Carries RSV1 so permessage-deflate (RFC 7692) can build on it.

use bytes::{BufMut, Bytes, BytesMut};

use super::close::CloseCode;
use super::ProtocolError;

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0
    Continuation = 0x0,
    /// 0x1
    Text = 0x1,
    /// 0x2
    Binary = 0x2,
    /// 0x8
    Close = 0x8,
    /// 0x9
    Ping = 0x9,
    /// 0xA
    Pong = 0xA,
}

impl OpCode {
    /// Decode the low nibble of the first header byte.
    pub fn from_u8(v: u8) -> Result<OpCode, ProtocolError> {
        Ok(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::UnknownOpcode(other)),
        })
    }

    /// Close, Ping and Pong.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit.
    pub fin: bool,
    /// RSV1 bit (permessage-deflate's "compressed" flag).
    pub rsv1: bool,
    /// Opcode.
    pub opcode: OpCode,
    /// Masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub payload_len: u64,
    /// Header length in bytes (2..=14).
    pub header_len: usize,
}

/// Rules the decoder applies to every header.
#[derive(Debug, Clone, Copy)]
pub struct HeaderRules {
    /// RSV1 may be set (an extension such as permessage-deflate was negotiated).
    pub allow_rsv1: bool,
    /// Frames must be masked (server side).
    pub require_mask: bool,
    /// Largest accepted payload.
    pub max_frame_bytes: u64,
}

/// Decode one frame header from the front of `buf`.
/// `Ok(None)` means more bytes are needed; never allocates.
pub fn decode_header(
    buf: &[u8],
    rules: &HeaderRules,
) -> Result<Option<FrameHeader>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !rules.allow_rsv1) {
        return Err(ProtocolError::ReservedBits);
    }
    let opcode = OpCode::from_u8(b0 & 0x0F)?;
    let masked = b1 & 0x80 != 0;
    if rules.require_mask && !masked {
        return Err(ProtocolError::Unmasked);
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() && (!fin || len7 > 125) {
        return Err(ProtocolError::InvalidControlFrame);
    }
    if opcode.is_control() && rsv1 {
        return Err(ProtocolError::ReservedBits);
    }
    let (payload_len, mut pos) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n >> 63 != 0 {
                return Err(ProtocolError::InvalidLength);
            }
            (n, 10)
        }
        n => (n as u64, 2),
    };
    if payload_len > rules.max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge(payload_len));
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        rsv1,
        opcode,
        mask,
        payload_len,
        header_len: pos,
    }))
}

/// Length of an unmasked server frame header for a payload of `len` bytes.
pub fn server_header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Write an unmasked server frame header into `out` (which must be exactly
/// `server_header_len(len)` bytes long).
pub fn write_server_header(out: &mut [u8], fin: bool, rsv1: bool, opcode: OpCode, len: usize) {
    out[0] = (if fin { 0x80 } else { 0 }) | (if rsv1 { 0x40 } else { 0 }) | opcode as u8;
    match len {
        0..=125 => out[1] = len as u8,
        126..=65535 => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Encode a complete unmasked server frame (header and payload in one contiguous `Bytes`).
pub fn encode_server_frame(opcode: OpCode, rsv1: bool, payload: &[u8]) -> Bytes {
    let hl = server_header_len(payload.len());
    let mut out = BytesMut::with_capacity(hl + payload.len());
    out.resize(hl, 0);
    write_server_header(&mut out[..hl], true, rsv1, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// Encode a masked client frame (used by tests, tools and the load generator).
pub fn encode_client_frame(fin: bool, opcode: OpCode, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let hl = server_header_len(payload.len());
    let mut out = vec![0u8; hl + 4 + payload.len()];
    write_server_header(&mut out[..hl], fin, false, opcode, payload.len());
    out[1] |= 0x80;
    out[hl..hl + 4].copy_from_slice(&mask);
    out[hl + 4..].copy_from_slice(payload);
    fastwebsockets::unmask(&mut out[hl + 4..], mask);
    out
}

/// Encode a server close frame with a code and a short reason (truncated to fit 125 bytes).
pub fn encode_close(code: CloseCode, reason: &str) -> Bytes {
    let mut r = reason.as_bytes();
    if r.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        r = &r[..end];
    }
    let mut payload = Vec::with_capacity(2 + r.len());
    payload.extend_from_slice(&code.0.to_be_bytes());
    payload.extend_from_slice(r);
    encode_server_frame(OpCode::Close, false, &payload)
}

/// Unmask a payload in place (fastwebsockets' SIMD implementation).
#[inline]
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    fastwebsockets::unmask(payload, mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: HeaderRules = HeaderRules {
        allow_rsv1: false,
        require_mask: true,
        max_frame_bytes: 1 << 20,
    };

    #[test]
    fn round_trip_lengths() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 200_000] {
            let payload = vec![7u8; len];
            let f = encode_client_frame(true, OpCode::Binary, [1, 2, 3, 4], &payload);
            let h = decode_header(&f, &RULES).unwrap().unwrap();
            assert_eq!(h.payload_len as usize, len);
            assert_eq!(h.header_len + len, f.len());
            let mut p = f[h.header_len..].to_vec();
            unmask(&mut p, h.mask.unwrap());
            assert_eq!(p, payload);
            // Every strict prefix of the header asks for more bytes.
            for cut in 0..h.header_len {
                assert_eq!(decode_header(&f[..cut], &RULES), Ok(None));
            }
        }
    }

    #[test]
    fn server_frame_layout() {
        let f = encode_server_frame(OpCode::Text, false, b"hi");
        assert_eq!(&f[..], &[0x81, 2, b'h', b'i']);
        let f = encode_server_frame(OpCode::Binary, true, &[0; 300]);
        assert_eq!(&f[..4], &[0xC2, 126, 1, 44]);
    }

    #[test]
    fn rejects_bad_headers() {
        let unmasked = [0x81u8, 0x00];
        assert_eq!(
            decode_header(&unmasked, &RULES),
            Err(ProtocolError::Unmasked)
        );
        let rsv = [0xC1u8, 0x80, 0, 0, 0, 0];
        assert_eq!(
            decode_header(&rsv, &RULES),
            Err(ProtocolError::ReservedBits)
        );
        let rsv2 = [0xA1u8, 0x80, 0, 0, 0, 0];
        assert_eq!(
            decode_header(&rsv2, &RULES),
            Err(ProtocolError::ReservedBits)
        );
        let op = [0x83u8, 0x80, 0, 0, 0, 0];
        assert_eq!(
            decode_header(&op, &RULES),
            Err(ProtocolError::UnknownOpcode(3))
        );
        let ping_frag = [0x09u8, 0x80, 0, 0, 0, 0];
        assert_eq!(
            decode_header(&ping_frag, &RULES),
            Err(ProtocolError::InvalidControlFrame)
        );
        let ping_long = [0x89u8, 0xFE, 0, 126, 0, 0, 0, 0];
        assert_eq!(
            decode_header(&ping_long, &RULES),
            Err(ProtocolError::InvalidControlFrame)
        );
        let huge = [0x82u8, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            decode_header(&huge, &RULES),
            Err(ProtocolError::InvalidLength)
        );
        let big = [0x82u8, 0xFF, 0, 0, 0, 0, 0x10, 0, 0, 1, 0, 0, 0, 0];
        assert!(matches!(
            decode_header(&big, &RULES),
            Err(ProtocolError::FrameTooLarge(_))
        ));
        let rules = HeaderRules {
            allow_rsv1: true,
            ..RULES
        };
        assert!(decode_header(&rsv, &rules).unwrap().unwrap().rsv1);
    }

    #[test]
    fn close_reason_truncated_on_char_boundary() {
        let reason = "é".repeat(100);
        let f = encode_close(CloseCode::NORMAL, &reason);
        assert!(f.len() <= 127);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
