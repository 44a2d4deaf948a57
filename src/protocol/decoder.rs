//! Client stream decoder: frames in, complete messages and control events out.
//!
//! Handles fragmentation and reassembly, interleaved control frames, UTF-8 validation of text
//! (incrementally across fragments, so an invalid sequence fails fast), size limits counted in
//! bytes (never in fragments), and close frame validation. A complete data message comes out
//! already encoded as one unmasked server frame, so fan-out never re-encodes it.

use bytes::{Buf, Bytes, BytesMut};

use super::close::{parse_close_payload, CloseCode};
use super::frame::{
    decode_header, server_header_len, unmask, write_server_header, FrameHeader, HeaderRules, OpCode,
};
use super::ProtocolError;

/// Space reserved at the front of a reassembly buffer for the largest server header.
const HEADROOM: usize = 10;

/// A complete data message, held as a ready-to-send server frame.
#[derive(Debug, Clone)]
pub struct Message {
    /// `Text` or `Binary`.
    pub opcode: OpCode,
    /// RSV1 of the first frame (compressed, under permessage-deflate).
    pub rsv1: bool,
    frame: Bytes,
    header_len: usize,
}

impl Message {
    /// A message from an already unmasked (or inflated) payload: one copy into a server frame.
    pub fn from_payload(opcode: OpCode, payload: &[u8]) -> Message {
        let frame = super::frame::encode_server_frame(opcode, false, payload);
        Message {
            opcode,
            rsv1: false,
            header_len: server_header_len(payload.len()),
            frame,
        }
    }

    /// The whole unmasked server frame: header then payload.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.header_len..]
    }

    /// Take the server frame.
    pub fn into_frame(self) -> Bytes {
        self.frame
    }
}

/// What the decoder produced.
#[derive(Debug)]
pub enum Event {
    /// A complete text or binary message.
    Message(Message),
    /// A ping with its payload (answer with a pong carrying the same payload).
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A valid close frame; `None` when it carried no code.
    Close(Option<CloseCode>),
}

/// Result of one decoding step.
#[derive(Debug)]
pub enum Progress {
    /// One event; call again for more.
    Event(Event),
    /// The buffer holds no complete frame: at least this many bytes (counted from the buffer's
    /// start) are needed before the next event.
    NeedMore(usize),
}

#[derive(Debug)]
struct Partial {
    opcode: OpCode,
    rsv1: bool,
    buf: BytesMut,
    utf8_checked: usize,
}

/// Decoder state for one connection.
#[derive(Debug)]
pub struct Decoder {
    rules: HeaderRules,
    max_message_bytes: usize,
    /// Boxed: rarely present, and it keeps an idle connection's state small.
    partial: Option<Box<Partial>>,
}

impl Decoder {
    /// A server-side decoder (masked frames required).
    pub fn new(max_frame_bytes: usize, max_message_bytes: usize, allow_rsv1: bool) -> Decoder {
        Decoder {
            rules: HeaderRules {
                allow_rsv1,
                require_mask: true,
                max_frame_bytes: max_frame_bytes as u64,
            },
            max_message_bytes,
            partial: None,
        }
    }

    /// Is a fragmented message in progress?
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Decode the next event from the front of `buf`, consuming the bytes it used.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Progress, ProtocolError> {
        loop {
            let Some(h) = decode_header(buf, &self.rules)? else {
                // Header incomplete: ask for one more byte, never more than the longest header.
                return Ok(Progress::NeedMore((buf.len() + 1).clamp(2, 14)));
            };
            let len = h.payload_len as usize; // bounded by max_frame_bytes (a usize)
            if !h.opcode.is_control() {
                self.check_data_header(&h, len)?;
            }
            let total = h.header_len + len;
            if buf.len() < total {
                return Ok(Progress::NeedMore(total));
            }
            let mask = h.mask.unwrap_or([0; 4]);
            match h.opcode {
                OpCode::Ping | OpCode::Pong | OpCode::Close => {
                    return control_event(buf, &h, total, mask);
                }
                OpCode::Text | OpCode::Binary if h.fin => {
                    return single_frame_message(buf, &h, len, total, mask);
                }
                OpCode::Text | OpCode::Binary => self.start_message(&h, len),
                OpCode::Continuation => {}
            }
            if let Some(progress) = self.append_fragment(buf, &h, total, mask)? {
                return Ok(progress);
            }
        }
    }

    /// Checks on a data frame's header, before its payload is there.
    fn check_data_header(&self, h: &FrameHeader, len: usize) -> Result<(), ProtocolError> {
        // Refuse an oversized message as soon as its header says so.
        let so_far = self.partial.as_ref().map_or(0, |p| p.buf.len() - HEADROOM);
        if so_far.saturating_add(len) > self.max_message_bytes {
            return Err(ProtocolError::MessageTooLarge);
        }
        match (h.opcode, &self.partial) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            _ => {}
        }
        if h.opcode == OpCode::Continuation && h.rsv1 {
            // RSV1 is only meaningful on the first frame of a message (RFC 7692 §6.1).
            return Err(ProtocolError::ReservedBits);
        }
        Ok(())
    }

    /// The first frame of a fragmented message: start the message in progress.
    fn start_message(&mut self, h: &FrameHeader, len: usize) {
        let mut pbuf = BytesMut::with_capacity(HEADROOM + len);
        pbuf.resize(HEADROOM, 0);
        self.partial = Some(Box::new(Partial {
            opcode: h.opcode,
            rsv1: h.rsv1,
            buf: pbuf,
            utf8_checked: 0,
        }));
    }

    /// Append this fragment (complete in `buf`) to the message in progress; the message once
    /// `h.fin`.
    fn append_fragment(
        &mut self,
        buf: &mut BytesMut,
        h: &FrameHeader,
        total: usize,
        mask: [u8; 4],
    ) -> Result<Option<Progress>, ProtocolError> {
        let Some(p) = self.partial.as_mut() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        let start = p.buf.len();
        p.buf.extend_from_slice(&buf[h.header_len..total]);
        buf.advance(total);
        unmask(&mut p.buf[start..], mask);
        if p.opcode == OpCode::Text && !p.rsv1 {
            check_utf8_incremental(p, h.fin)?;
        }
        if !h.fin {
            return Ok(None);
        }
        let Some(p) = self.partial.take() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        Ok(Some(finish_message(*p)))
    }
}

/// A control frame (complete in `buf`) as its event.
fn control_event(
    buf: &mut BytesMut,
    h: &FrameHeader,
    total: usize,
    mask: [u8; 4],
) -> Result<Progress, ProtocolError> {
    // Copy (at most 125 bytes) so no Bytes ever points into the caller's read buffer, which goes
    // back to the shard's pool.
    let mut payload = BytesMut::from(&buf[h.header_len..total]);
    buf.advance(total);
    unmask(&mut payload, mask);
    Ok(Progress::Event(match h.opcode {
        OpCode::Ping => Event::Ping(payload.freeze()),
        OpCode::Pong => Event::Pong,
        _ => Event::Close(parse_close_payload(&payload)?),
    }))
}

/// A single-frame data message (complete in `buf`): copy once into a server frame, unmask in
/// place.
fn single_frame_message(
    buf: &mut BytesMut,
    h: &FrameHeader,
    len: usize,
    total: usize,
    mask: [u8; 4],
) -> Result<Progress, ProtocolError> {
    let hl = server_header_len(len);
    let mut out = BytesMut::with_capacity(hl + len);
    out.resize(hl, 0);
    write_server_header(&mut out[..hl], true, h.rsv1, h.opcode, len);
    out.extend_from_slice(&buf[h.header_len..total]);
    buf.advance(total);
    unmask(&mut out[hl..], mask);
    if h.opcode == OpCode::Text && !h.rsv1 && simdutf8::basic::from_utf8(&out[hl..]).is_err() {
        return Err(ProtocolError::InvalidUtf8);
    }
    Ok(Progress::Event(Event::Message(Message {
        opcode: h.opcode,
        rsv1: h.rsv1,
        frame: out.freeze(),
        header_len: hl,
    })))
}

/// The last fragment is in: write the server header in front of the reassembled payload.
fn finish_message(p: Partial) -> Progress {
    let len = p.buf.len() - HEADROOM;
    let hl = server_header_len(len);
    let Partial {
        opcode,
        rsv1,
        buf: mut b,
        ..
    } = p;
    write_server_header(&mut b[HEADROOM - hl..HEADROOM], true, rsv1, opcode, len);
    let frame = b.freeze().slice(HEADROOM - hl..);
    Progress::Event(Event::Message(Message {
        opcode,
        rsv1,
        frame,
        header_len: hl,
    }))
}

fn check_utf8_incremental(p: &mut Partial, fin: bool) -> Result<(), ProtocolError> {
    let data = &p.buf[HEADROOM + p.utf8_checked..];
    match simdutf8::compat::from_utf8(data) {
        Ok(_) => p.utf8_checked += data.len(),
        Err(e) => {
            if e.error_len().is_some() {
                return Err(ProtocolError::InvalidUtf8);
            }
            // Incomplete sequence at the end: fine unless this was the last fragment.
            p.utf8_checked += e.valid_up_to();
            if fin {
                return Err(ProtocolError::InvalidUtf8);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::frame::encode_client_frame;
    use super::*;

    fn dec() -> Decoder {
        Decoder::new(1 << 16, 1 << 17, false)
    }

    fn events(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Event>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Progress::Event(e) = d.next(&mut buf)? {
            out.push(e);
        }
        Ok(out)
    }

    const M: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    #[test]
    fn single_text_message_becomes_server_frame() {
        let f = encode_client_frame(true, OpCode::Text, M, b"hello");
        let ev = events(&mut dec(), &f).unwrap();
        let Event::Message(m) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(m.payload(), b"hello");
        assert_eq!(&m.frame()[..], b"\x81\x05hello");
    }

    #[test]
    fn fragments_reassemble_with_interleaved_ping() {
        let mut bytes = encode_client_frame(false, OpCode::Binary, M, &[1, 2, 3]);
        bytes.extend(encode_client_frame(true, OpCode::Ping, M, b"p"));
        bytes.extend(encode_client_frame(
            false,
            OpCode::Continuation,
            M,
            &[4; 200],
        ));
        bytes.extend(encode_client_frame(true, OpCode::Continuation, M, &[5]));
        let ev = events(&mut dec(), &bytes).unwrap();
        assert!(matches!(&ev[0], Event::Ping(p) if &p[..] == b"p"));
        let Event::Message(m) = &ev[1] else { panic!() };
        assert_eq!(m.opcode, OpCode::Binary);
        assert_eq!(m.payload().len(), 204);
        assert_eq!(&m.frame()[..4], &[0x82, 126, 0, 204]);
    }

    #[test]
    fn byte_at_a_time_gives_same_result() {
        let mut bytes = encode_client_frame(false, OpCode::Text, M, "κό".as_bytes());
        bytes.extend(encode_client_frame(
            true,
            OpCode::Continuation,
            M,
            "σμε".as_bytes(),
        ));
        let mut d = dec();
        let mut buf = BytesMut::new();
        let mut got = None;
        for b in bytes {
            buf.extend_from_slice(&[b]);
            if let Progress::Event(Event::Message(m)) = d.next(&mut buf).unwrap() {
                got = Some(m);
            }
        }
        assert_eq!(got.unwrap().payload(), "κόσμε".as_bytes());
    }

    #[test]
    fn utf8_split_across_fragments_is_fine_but_invalid_fails_fast() {
        let s = "€".as_bytes(); // 3 bytes
        let mut ok = encode_client_frame(false, OpCode::Text, M, &s[..1]);
        ok.extend(encode_client_frame(true, OpCode::Continuation, M, &s[1..]));
        assert!(events(&mut dec(), &ok).is_ok());

        let bad = encode_client_frame(false, OpCode::Text, M, &[0xce, 0xba, 0xff]);
        assert_eq!(
            events(&mut dec(), &bad).unwrap_err(),
            ProtocolError::InvalidUtf8
        );

        let truncated = encode_client_frame(true, OpCode::Text, M, &s[..2]);
        assert_eq!(
            events(&mut dec(), &truncated).unwrap_err(),
            ProtocolError::InvalidUtf8
        );
    }

    #[test]
    fn size_limits_count_bytes() {
        let mut d = Decoder::new(1 << 16, 100, false);
        let mut bytes = Vec::new();
        bytes.extend(encode_client_frame(false, OpCode::Binary, M, &[]));
        for _ in 0..1000 {
            bytes.extend(encode_client_frame(false, OpCode::Continuation, M, &[]));
        }
        bytes.extend(encode_client_frame(
            true,
            OpCode::Continuation,
            M,
            &[9; 100],
        ));
        let ev = events(&mut d, &bytes).unwrap();
        assert_eq!(
            ev.len(),
            1,
            "1001 empty fragments plus 100 bytes is one message"
        );

        let too_big = encode_client_frame(true, OpCode::Binary, M, &[0; 101]);
        assert_eq!(
            events(&mut d, &too_big).unwrap_err(),
            ProtocolError::MessageTooLarge
        );
    }

    #[test]
    fn sequencing_errors() {
        let cont = encode_client_frame(true, OpCode::Continuation, M, b"x");
        assert_eq!(
            events(&mut dec(), &cont).unwrap_err(),
            ProtocolError::UnexpectedContinuation
        );
        let mut two = encode_client_frame(false, OpCode::Text, M, b"a");
        two.extend(encode_client_frame(true, OpCode::Text, M, b"b"));
        assert_eq!(
            events(&mut dec(), &two).unwrap_err(),
            ProtocolError::ExpectedContinuation
        );
    }

    #[test]
    fn close_frames() {
        let c = encode_client_frame(true, OpCode::Close, M, &[0x03, 0xe8]);
        assert!(matches!(
            events(&mut dec(), &c).unwrap()[0],
            Event::Close(Some(CloseCode(1000)))
        ));
        let bad = encode_client_frame(true, OpCode::Close, M, &[0x03]);
        assert_eq!(
            events(&mut dec(), &bad).unwrap_err(),
            ProtocolError::InvalidClose
        );
    }

    #[test]
    fn need_more_reports_frame_size() {
        let f = encode_client_frame(true, OpCode::Binary, M, &[0; 1000]);
        let mut buf = BytesMut::from(&f[..10]);
        match dec().next(&mut buf).unwrap() {
            Progress::NeedMore(n) => assert_eq!(n, f.len()),
            e => panic!("{e:?}"),
        }
    }
}
