//! `frame_decoder`: the RFC 6455 client stream decoder (`protocol::decoder::Decoder`, over
//! `protocol::frame::decode_header`).
//!
//! Input: `[config byte][chunk seed][stream...]`. The config byte picks RSV1 allowed or not and
//! the frame and message limits; the stream is decoded twice, once whole and once fed in pieces
//! (sizes from the chunk seed, down to one byte), as a socket delivers it.
//!
//! Properties: no panic; both runs give the same events and the same error (decoding depends on
//! the bytes, never on how they arrived); `NeedMore(n)` always asks for more than the buffer
//! holds and never more than a whole largest frame; each message is within `max_message_bytes`,
//! text is UTF-8 (unless compressed) and its ready-made server frame parses back to the same
//! opcode, RSV1 and payload; a ping carries at most 125 bytes.

use bytes::BytesMut;
use shardcast::protocol::decoder::{Decoder, Event, Progress};
use shardcast::protocol::frame::{decode_header, HeaderRules, OpCode};
use shardcast::protocol::ProtocolError;

use crate::Rng;

const FRAME_LIMITS: [usize; 4] = [125, 1024, 65_536, 1 << 20];
const MESSAGE_LIMITS: [usize; 4] = [125, 4096, 65_536, 1 << 20];

/// What the decoder produced, in a comparable form.
#[derive(Debug, PartialEq)]
enum Seen {
    Message {
        opcode: OpCode,
        rsv1: bool,
        payload: Vec<u8>,
    },
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

#[derive(Clone, Copy)]
struct Limits {
    allow_rsv1: bool,
    max_frame: usize,
    max_message: usize,
}

/// The `frame_decoder` target.
pub fn frame_decoder(data: &[u8]) {
    let [cfg, seed, stream @ ..] = data else {
        return;
    };
    let limits = Limits {
        allow_rsv1: cfg & 1 != 0,
        // A frame limit above the message limit is refused by config check: keep them ordered.
        max_frame: FRAME_LIMITS[usize::from((cfg >> 1) & 3)],
        max_message: MESSAGE_LIMITS[usize::from((cfg >> 3) & 3)],
    };
    let limits = Limits {
        max_frame: limits.max_frame.min(limits.max_message),
        ..limits
    };
    let whole = decode_in_pieces(limits, stream, &[stream.len()]);
    let pieces = piece_sizes(*seed, stream.len());
    let split = decode_in_pieces(limits, stream, &pieces);
    assert_eq!(whole, split, "pieces {pieces:?}");
}

/// Sizes summing to `len`: mostly small (1-16 bytes, headers cut anywhere), some large.
fn piece_sizes(seed: u8, len: usize) -> Vec<usize> {
    let mut rng = Rng::new(u64::from(seed));
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = match rng.below(4) {
            0 => 1,
            1 | 2 => 1 + rng.below(16),
            _ => 1 + rng.below(4096),
        }
        .min(left);
        out.push(n);
        left -= n;
    }
    out
}

/// Feed `stream` in `pieces`, draining events after each; stop at the first error.
fn decode_in_pieces(
    limits: Limits,
    stream: &[u8],
    pieces: &[usize],
) -> (Vec<Seen>, Option<ProtocolError>) {
    let mut dec = Decoder::new(limits.max_frame, limits.max_message, limits.allow_rsv1);
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    let mut at = 0;
    for &n in pieces {
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        loop {
            match dec.next(&mut buf) {
                Ok(Progress::Event(e)) => seen.push(check_event(e, limits)),
                Ok(Progress::NeedMore(want)) => {
                    assert!(
                        want > buf.len(),
                        "NeedMore({want}) with {} bytes",
                        buf.len()
                    );
                    assert!(
                        want <= limits.max_frame + 14,
                        "NeedMore({want}) beyond a frame"
                    );
                    break;
                }
                Err(e) => {
                    let _ = (e.close_code(), e.as_str());
                    return (seen, Some(e));
                }
            }
        }
    }
    (seen, None)
}

fn check_event(e: Event, limits: Limits) -> Seen {
    match e {
        Event::Message(m) => {
            let payload = m.payload().to_vec();
            assert!(
                payload.len() <= limits.max_message,
                "message over the limit"
            );
            assert!(matches!(m.opcode, OpCode::Text | OpCode::Binary));
            assert!(limits.allow_rsv1 || !m.rsv1, "RSV1 without the extension");
            if m.opcode == OpCode::Text && !m.rsv1 {
                assert!(std::str::from_utf8(&payload).is_ok(), "text is not UTF-8");
            }
            let rules = HeaderRules {
                allow_rsv1: true,
                require_mask: false,
                max_frame_bytes: u64::MAX >> 1,
            };
            let frame = m.frame();
            let h = decode_header(frame, &rules)
                .expect("server frame header")
                .expect("complete server frame header");
            assert!(h.fin && h.mask.is_none());
            assert_eq!((h.opcode, h.rsv1), (m.opcode, m.rsv1));
            assert_eq!(h.header_len as u64 + h.payload_len, frame.len() as u64);
            assert_eq!(&frame[h.header_len..], &payload[..]);
            Seen::Message {
                opcode: m.opcode,
                rsv1: m.rsv1,
                payload,
            }
        }
        Event::Ping(p) => {
            assert!(p.len() <= 125, "ping of {} bytes", p.len());
            Seen::Ping(p.to_vec())
        }
        Event::Pong => Seen::Pong,
        Event::Close(code) => {
            assert!(
                code.is_none_or(|c| c.is_sendable()),
                "close code {code:?} echoed"
            );
            Seen::Close(code.map(|c| c.0))
        }
    }
}
