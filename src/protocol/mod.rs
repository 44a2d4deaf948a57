//! Sans-io protocol code: RFC 6455 (handshake, frame codec, message reassembly, close codes),
//! RFC 7692 permessage-deflate (negotiation, compressor, bounded inflater), the envelope
//! protocol's JSON/CBOR codec and room-name validation.
//!
//! Nothing in here touches a socket or a runtime, and nothing depends on the rest of the crate:
//! it works on byte slices and `Bytes`, so it is tested and benched on its own: unit tests,
//! property-style unit tests that feed the envelope decoder and the inflater random, mutated and
//! truncated input from a fixed-seed generator, coverage-guided fuzz targets in `fuzz/` (frame
//! decoder, handshake, inflater, envelope decoders; see docs/conformance.md), and criterion
//! benches in `benches/`.

pub mod close;
pub mod decoder;
pub mod deflate;
pub mod envelope;
pub mod frame;
pub mod handshake;
pub mod room_name;
pub mod session;
pub mod sse;

use close::CloseCode;

/// A violation of RFC 6455 (or of a configured limit) by the client, with the close code it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// RSV bit set without a negotiated extension defining it.
    #[error("reserved bits set without an extension")]
    ReservedBits,
    /// Opcode 3-7 or 0xB-0xF.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// Client frames must be masked (RFC 6455 §5.1).
    #[error("client frame is not masked")]
    Unmasked,
    /// Control frame with FIN clear or payload over 125 bytes.
    #[error("invalid control frame")]
    InvalidControlFrame,
    /// 64-bit length with the most significant bit set.
    #[error("invalid payload length")]
    InvalidLength,
    /// Continuation frame with no message in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// New data frame while a fragmented message is in progress.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// Text message (or close reason) is not valid UTF-8.
    #[error("invalid UTF-8 in text")]
    InvalidUtf8,
    /// Close frame with a 1-byte payload or a code that may not be sent.
    #[error("invalid close frame")]
    InvalidClose,
    /// A frame exceeds `max_frame_bytes`.
    #[error("frame of {0} bytes exceeds the frame limit")]
    FrameTooLarge(u64),
    /// A message exceeds `max_message_bytes` (also while inflating it).
    #[error("message exceeds the message limit")]
    MessageTooLarge,
    /// A compressed message does not inflate (permessage-deflate).
    #[error("invalid compressed data")]
    InvalidCompressedData,
}

impl ProtocolError {
    /// The close code to send for this error.
    pub fn close_code(self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCompressedData => {
                CloseCode::INVALID_PAYLOAD
            }
            ProtocolError::FrameTooLarge(_) | ProtocolError::MessageTooLarge => CloseCode::TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// Static label, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolError::ReservedBits => "reserved_bits",
            ProtocolError::UnknownOpcode(_) => "unknown_opcode",
            ProtocolError::Unmasked => "unmasked",
            ProtocolError::InvalidControlFrame => "invalid_control_frame",
            ProtocolError::InvalidLength => "invalid_length",
            ProtocolError::UnexpectedContinuation => "unexpected_continuation",
            ProtocolError::ExpectedContinuation => "expected_continuation",
            ProtocolError::InvalidUtf8 => "invalid_utf8",
            ProtocolError::InvalidClose => "invalid_close",
            ProtocolError::FrameTooLarge(_) => "frame_too_large",
            ProtocolError::MessageTooLarge => "message_too_large",
            ProtocolError::InvalidCompressedData => "invalid_compressed_data",
        }
    }
}
