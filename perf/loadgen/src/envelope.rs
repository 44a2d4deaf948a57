//! shardcast's envelope protocol (docs/protocol.md), client side, as much as loadgen needs:
//! `--envelope json|cbor` connects to `/ws` with subprotocol `shardcast.v1.json` / `.cbor`,
//! subscribes each connection to its room and publishes `{"op":"publish","room":R,"data":D}`.
//!
//! No serde: frames loadgen sends are built once as templates (the payload's fixed-size fields are
//! patched in place per message), and frames it receives are read by a light scanner over the
//! top-level map (JSON) or a tiny walker over it (CBOR), without allocating. Nested values are
//! skipped, keys may come in any order, unknown keys are ignored. The server's own `message`
//! layout (op, room, seq, from, data[, enc]: docs/protocol.md) is first tried straight through
//! (`json_message_fast`, `cbor_message_fast`): the hot path, ~20-40 ns per delivery cheaper.
//!
//! The payload `data` carries the same bytes as raw mode:
//! * binary payload: JSON `"data":"<base64>","enc":"base64"` (a byte string, standard alphabet,
//!   padded), CBOR a byte string;
//! * JSON payload (`--payload json`): a text string holding the JSON text (JSON: escaped, which
//!   only turns its `"` into `\"`; CBOR: the raw text).

use crate::payload::{self, Kind, BINARY_HEADER_BYTES, JSON_MIN_BYTES};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Envelope {
    Raw,
    Json,
    Cbor,
}

impl Envelope {
    pub fn name(self) -> &'static str {
        match self {
            Envelope::Raw => "raw",
            Envelope::Json => "json",
            Envelope::Cbor => "cbor",
        }
    }
    /// The `Sec-WebSocket-Protocol` name.
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            Envelope::Raw => None,
            Envelope::Json => Some("shardcast.v1.json"),
            Envelope::Cbor => Some("shardcast.v1.cbor"),
        }
    }
    /// WebSocket opcode of this encoding's frames (text for JSON, binary for CBOR).
    pub fn opcode(self) -> u8 {
        match self {
            Envelope::Cbor => 0x2,
            _ => 0x1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// base64 (standard alphabet, padded)

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Encode `src` into `dst` (exactly `b64_len(src.len())` bytes).
#[inline]
pub fn b64_encode(src: &[u8], dst: &mut [u8]) {
    let mut o = 0;
    let mut chunks = src.chunks_exact(3);
    for c in &mut chunks {
        let v = (c[0] as u32) << 16 | (c[1] as u32) << 8 | c[2] as u32;
        dst[o] = B64[(v >> 18) as usize & 63];
        dst[o + 1] = B64[(v >> 12) as usize & 63];
        dst[o + 2] = B64[(v >> 6) as usize & 63];
        dst[o + 3] = B64[v as usize & 63];
        o += 4;
    }
    let r = chunks.remainder();
    if !r.is_empty() {
        let v = (r[0] as u32) << 16 | (*r.get(1).unwrap_or(&0) as u32) << 8;
        dst[o] = B64[(v >> 18) as usize & 63];
        dst[o + 1] = B64[(v >> 12) as usize & 63];
        dst[o + 2] = if r.len() == 2 {
            B64[(v >> 6) as usize & 63]
        } else {
            b'='
        };
        dst[o + 3] = b'=';
    }
}

/// Value of each base64 character; 0x80 for `=`, 0xff for anything outside the alphabet.
const B64_DEC: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 64 {
        t[B64[i] as usize] = i as u8;
        i += 1;
    }
    t[b'=' as usize] = 0x80;
    t
};

/// Decode whole 4-character groups from the start of `src` until `dst` is full or `src` ends;
/// returns the bytes written. `=` padding ends the data. None on a character outside the
/// alphabet or a truncated group.
#[inline]
pub fn b64_decode_prefix(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let mut o = 0;
    for g in src.chunks(4) {
        if o >= dst.len() {
            break;
        }
        if g.len() < 4 {
            return None;
        }
        let [a, b, c, d] = [0, 1, 2, 3].map(|k| B64_DEC[g[k] as usize] as u32);
        let n = if (a | b | c | d) & 0x80 == 0 {
            3
        } else {
            // Padding (only at the end of a group: "xx==" or "xxx=") or a bad character.
            match (a | b, c, d) {
                (0..=63, 0x80, 0x80) => 1,
                (0..=63, 0..=63, 0x80) => 2,
                _ => return None,
            }
        };
        let v = a << 18 | b << 12 | (c & 63) << 6 | (d & 63);
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        // Byte by byte: a variable-length copy_from_slice of <= 3 bytes calls memcpy.
        for &x in &bytes[..n] {
            if o < dst.len() {
                dst[o] = x;
                o += 1;
            }
        }
        if n < 3 {
            break;
        }
    }
    Some(o)
}

// ---------------------------------------------------------------------------------------------
// Client frames

/// The WebSocket frame header of a masked client frame (mask key 0 0 0 0: masking is the
/// identity).
fn client_frame(opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 14);
    f.push(0x80 | opcode);
    let n = body.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(body);
    f
}

fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= 0xff {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn cbor_text(out: &mut Vec<u8>, s: &[u8]) {
    cbor_head(out, 3, s.len() as u64);
    out.extend_from_slice(s);
}

/// `{"op":"subscribe","room":ROOM}` as a whole client frame.
pub fn subscribe_frame(env: Envelope, room: &str) -> Vec<u8> {
    let mut b = Vec::new();
    match env {
        Envelope::Json => {
            b.extend_from_slice(b"{\"op\":\"subscribe\",\"room\":\"");
            b.extend_from_slice(room.as_bytes()); // room names need no escaping (A-Z a-z 0-9 _ . : -)
            b.extend_from_slice(b"\"}");
        }
        Envelope::Cbor => {
            cbor_head(&mut b, 5, 2);
            cbor_text(&mut b, b"op");
            cbor_text(&mut b, b"subscribe");
            cbor_text(&mut b, b"room");
            cbor_text(&mut b, room.as_bytes());
        }
        Envelope::Raw => unreachable!(),
    }
    client_frame(env.opcode(), &b)
}

/// A publish template and where its payload's patchable part starts in it.
pub struct PubTemplate {
    pub frame: Vec<u8>,
    /// Offset in `frame` of the data: the raw payload (CBOR, raw mode), its base64 (JSON,
    /// binary payload) or its escaped text (JSON, JSON payload).
    pub off: usize,
}

/// How the sender patches a template, and the receiver reads a message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Wire {
    /// Raw binary payload at `off` (raw mode, CBOR byte string).
    Bin,
    /// Raw JSON payload text at `off` (raw mode, CBOR text string).
    JsonText,
    /// Base64 of the binary payload at `off` (JSON envelope).
    B64,
    /// The JSON payload as an escaped JSON string at `off` (JSON envelope).
    EscJson,
}

pub fn wire(env: Envelope, kind: Kind) -> Wire {
    match (env, kind) {
        (Envelope::Json, Kind::Binary) => Wire::B64,
        (Envelope::Json, Kind::Json) => Wire::EscJson,
        (_, Kind::Binary) => Wire::Bin,
        (_, Kind::Json) => Wire::JsonText,
    }
}

/// Escape a JSON text into a JSON string's content (`"` and `\` only: our payloads hold no
/// control characters). Returns the escaped bytes and, for every input offset, its output
/// offset.
pub fn escape(raw: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 4);
    let mut map = Vec::with_capacity(raw.len());
    for &b in raw {
        map.push(out.len());
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    (out, map)
}

/// `{"op":"publish","room":ROOM,"data":DATA}` around `payload` (the raw payload template), as a
/// whole client frame.
pub fn publish_template(env: Envelope, kind: Kind, room: &str, payload: &[u8]) -> PubTemplate {
    let mut b = Vec::with_capacity(payload.len() * 4 / 3 + 96);
    let off;
    match env {
        Envelope::Json => {
            b.extend_from_slice(b"{\"op\":\"publish\",\"room\":\"");
            b.extend_from_slice(room.as_bytes());
            b.extend_from_slice(b"\",\"data\":\"");
            off = b.len();
            match kind {
                Kind::Binary => {
                    let at = b.len();
                    b.resize(at + b64_len(payload.len()), 0);
                    b64_encode(payload, &mut b[at..]);
                    b.extend_from_slice(b"\",\"enc\":\"base64\"}");
                }
                Kind::Json => {
                    b.extend_from_slice(&escape(payload).0);
                    b.extend_from_slice(b"\"}");
                }
            }
        }
        Envelope::Cbor => {
            cbor_head(&mut b, 5, 3);
            cbor_text(&mut b, b"op");
            cbor_text(&mut b, b"publish");
            cbor_text(&mut b, b"room");
            cbor_text(&mut b, room.as_bytes());
            cbor_text(&mut b, b"data");
            let major = match kind {
                Kind::Binary => 2,
                Kind::Json => 3,
            };
            cbor_head(&mut b, major, payload.len() as u64);
            off = b.len();
            b.extend_from_slice(payload);
        }
        Envelope::Raw => {
            off = 0;
            b.extend_from_slice(payload);
        }
    }
    let opcode = match env {
        Envelope::Raw => match kind {
            Kind::Binary => 0x2,
            Kind::Json => 0x1,
        },
        e => e.opcode(),
    };
    let frame = client_frame(opcode, &b);
    let off = off + frame.len() - b.len();
    PubTemplate { frame, off }
}

/// Bytes of the binary payload whose base64 is rewritten per message: the 20 header bytes,
/// rounded up to whole 3-byte groups (the 21st byte is padding, always 0), or the whole payload
/// if it is shorter.
pub fn b64_patch_bytes(size: usize) -> usize {
    size.min(BINARY_HEADER_BYTES.div_ceil(3) * 3)
}

/// Write the binary header (timestamp, seq, publisher id) as base64 at the start of `dst`
/// (the base64 of a payload of `size` bytes whose other bytes are zero).
#[inline]
pub fn write_b64_header(dst: &mut [u8], size: usize, ts: u64, seq: u64, pid: u32) {
    let mut h = [0u8; 21];
    h[0..8].copy_from_slice(&ts.to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..20].copy_from_slice(&pid.to_le_bytes());
    let n = b64_patch_bytes(size);
    b64_encode(&h[..n], &mut dst[..b64_len(n)]);
}

// ---------------------------------------------------------------------------------------------
// Server frames

/// The `data` of a received frame, as found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Data<'a> {
    Absent,
    /// A byte string (CBOR).
    Bytes(&'a [u8]),
    /// A text string: CBOR text, or a JSON string's content (`esc`: it may hold `\` escapes,
    /// so `payload_header` unescapes the prefix it reads).
    Text {
        s: &'a [u8],
        esc: bool,
    },
    /// Anything else (a number, a map, ...).
    Other,
}

/// The top-level fields loadgen reads from a server frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Frame<'a> {
    /// `op` (JSON: the string's raw content; ops never need escapes).
    pub op: &'a [u8],
    pub room: &'a [u8],
    /// `seq`, when an unsigned integer.
    pub seq: Option<u64>,
    pub data: Data<'a>,
    /// JSON: `"enc":"base64"` (data is base64 of a byte string).
    pub b64: bool,
}

impl<'a> Frame<'a> {
    fn new() -> Self {
        Frame {
            op: b"",
            room: b"",
            seq: None,
            data: Data::Absent,
            b64: false,
        }
    }

    /// Timestamp, sequence and publisher id of our payload in `data`; None if it is not one
    /// of ours.
    #[inline]
    pub fn payload_header(&self) -> Option<(u64, u64, u32)> {
        match self.data {
            Data::Bytes(b) => payload::parse_binary_header(b),
            Data::Text { s, esc } if self.b64 => {
                // A backslash is outside the alphabet: the fast decoder refuses it.
                if let Some(h) = b64_binary_header(s) {
                    return Some(h);
                }
                let mut tmp = [0u8; 28];
                let mut src = &s[..s.len().min(28)];
                if esc && src.contains(&b'\\') {
                    let n = unescape_prefix(s, &mut tmp)?;
                    src = &tmp[..n];
                }
                // Short, padded (a 20-byte payload) or bad: the general decoder.
                let mut h = [0u8; 21];
                let n = b64_decode_prefix(src, &mut h)?;
                payload::parse_binary_header(&h[..n])
            }
            Data::Text { s, esc: false } => payload::parse_json_header(s),
            Data::Text { s, esc: true } => {
                if let Some(h) = payload::parse_escaped_json_header(s) {
                    return Some(h);
                }
                if !s[..s.len().min(JSON_MIN_BYTES)].contains(&b'\\') {
                    return payload::parse_json_header(s);
                }
                let mut tmp = [0u8; JSON_MIN_BYTES];
                let n = unescape_prefix(s, &mut tmp)?;
                payload::parse_json_header(&tmp[..n])
            }
            Data::Absent | Data::Other => None,
        }
    }
}

/// The binary header (timestamp, seq, publisher id) from the first 28 base64 characters of a
/// payload of at least 21 bytes, in registers (no padding allowed: None sends the caller to
/// the general decoder).
#[inline]
fn b64_binary_header(s: &[u8]) -> Option<(u64, u64, u32)> {
    let s: &[u8; 28] = s.get(..28)?.try_into().ok()?;
    let mut g = [0u32; 7];
    let mut bad = 0u32;
    for (k, v) in g.iter_mut().enumerate() {
        let [a, b, c, d] = [0, 1, 2, 3].map(|j| B64_DEC[s[4 * k + j] as usize] as u32);
        bad |= a | b | c | d;
        *v = a << 18 | b << 12 | c << 6 | d;
    }
    if bad & 0x80 != 0 {
        return None;
    }
    // Byte k of the payload is byte k % 3 (big-endian) of group k / 3; the fields are LE.
    let byte = |k: usize| ((g[k / 3] >> (16 - 8 * (k % 3))) & 0xff) as u64;
    let field = |from: usize, n: usize| (0..n).fold(0u64, |acc, j| acc | byte(from + j) << (8 * j));
    Some((field(0, 8), field(8, 8), field(16, 4) as u32))
}

/// Unescape the start of a JSON string's content into `dst` until it is full or `s` ends;
/// returns the bytes written. `\uXXXX` is accepted for ASCII only (our payloads are ASCII).
fn unescape_prefix(s: &[u8], dst: &mut [u8]) -> Option<usize> {
    let (mut i, mut o) = (0, 0);
    while o < dst.len() && i < s.len() {
        let b = s[i];
        if b != b'\\' {
            dst[o] = b;
            i += 1;
        } else {
            let e = *s.get(i + 1)?;
            dst[o] = match e {
                b'"' | b'\\' | b'/' => e,
                b'b' => 8,
                b'f' => 12,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'u' => {
                    let h = std::str::from_utf8(s.get(i + 2..i + 6)?).ok()?;
                    let v = u32::from_str_radix(h, 16).ok()?;
                    if v >= 0x80 {
                        return None;
                    }
                    i += 4;
                    v as u8
                }
                _ => return None,
            };
            i += 2;
        }
        o += 1;
    }
    Some(o)
}

// JSON -----------------------------------------------------------------------------------------

#[inline]
fn ws(p: &[u8], mut i: usize) -> usize {
    while i < p.len() && matches!(p[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Index of the first `"` or `\\` at or after `j` (`p.len()` if none): 8 bytes at a time (a
/// 1 KiB payload's base64 is ~1.4 KB of string to cross per received message).
#[inline]
fn find_quote_or_backslash(p: &[u8], mut j: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const Q: u64 = LO * b'"' as u64;
    const B: u64 = LO * b'\\' as u64;
    while j + 8 <= p.len() {
        let w = u64::from_le_bytes(p[j..j + 8].try_into().unwrap());
        let (q, b) = (w ^ Q, w ^ B);
        // A zero byte of q or b is a match; the lowest flagged byte is always a true match.
        let m = ((q.wrapping_sub(LO) & !q) | (b.wrapping_sub(LO) & !b)) & HI;
        if m != 0 {
            return j + (m.trailing_zeros() / 8) as usize;
        }
        j += 8;
    }
    while j < p.len() && p[j] != b'"' && p[j] != b'\\' {
        j += 1;
    }
    j
}

/// `p[i]` is the opening quote: returns (content, has escapes, index after the closing quote).
#[inline]
fn json_string(p: &[u8], i: usize) -> Option<(&[u8], bool, usize)> {
    let start = i + 1;
    let mut j = start;
    let mut esc = false;
    loop {
        j = find_quote_or_backslash(p, j);
        match p.get(j)? {
            b'"' => return Some((&p[start..j], esc, j + 1)),
            _ => {
                esc = true;
                j += 2;
            }
        }
    }
}

/// Skip one JSON value starting at `p[i]` (no whitespace before it); returns the index after it.
/// Not a validator: enough to step over well-formed values.
fn json_skip(p: &[u8], i: usize) -> Option<usize> {
    match *p.get(i)? {
        b'"' => json_string(p, i).map(|(_, _, e)| e),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < p.len() {
                match p[j] {
                    b'"' => {
                        j = json_string(p, j)?.2;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            // number, true, false, null
            let mut j = i;
            while j < p.len()
                && matches!(p[j], b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'-' | b'+' | b'.')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// What follows `data` when it is the server's last key but `enc`: the data string's closing
/// quote and either `,"enc":"base64"}` or `}`.
const TAIL_ENC: &[u8] = b"\",\"enc\":\"base64\"}";
const TAIL_END: &[u8] = b"\"}";

/// Fast path for the data string starting at `start` (after its opening quote): the server
/// writes `data` last (only `enc` after it), so when the frame ends with one of the two tails
/// and the quote opening that tail is not escaped, the string's content runs up to it, and
/// `enc` is known, without crossing the content (~1.4 KB for a 1 KiB payload in base64, or an
/// escaped JSON payload with a `\"` every few bytes). Only a prefix of the content is read
/// afterwards (`payload_header`), which is right wherever the string really ends: a frame
/// whose real data string is shorter than that prefix fails to decode (counted), never misreads.
/// Returns (content, enc is base64).
#[inline]
fn data_last(p: &[u8], start: usize) -> Option<(&[u8], bool)> {
    let (e, b64) = if p.ends_with(TAIL_ENC) {
        (p.len() - TAIL_ENC.len(), true)
    } else if p.ends_with(TAIL_END) {
        (p.len() - TAIL_END.len(), false)
    } else {
        return None;
    };
    if e < start {
        return None;
    }
    // An odd run of backslashes before the quote escapes it.
    let run = p[start..e]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count();
    (run % 2 == 0).then(|| (&p[start..e], b64))
}

/// The server's `message` frame exactly as it writes it (op, room, seq, from, data[, enc], no
/// whitespace) with string data: read straight through. None: anything else (the general
/// scanner then reads it).
#[inline]
fn json_message_fast(p: &[u8]) -> Option<Frame<'_>> {
    const HEAD: &[u8] = b"{\"op\":\"message\",\"room\":\"";
    let rest = p.strip_prefix(HEAD)?;
    // Room names are A-Z a-z 0-9 _ . : - (no escapes).
    let rl = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    let room = &rest[..rl];
    let rest = rest[rl..].strip_prefix(b"\",\"seq\":")?;
    let dl = rest.iter().position(|b| !b.is_ascii_digit())?;
    if dl == 0 || dl > 20 {
        return None;
    }
    let seq = rest[..dl].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add((d - b'0') as u64)
    })?;
    let rest = rest[dl..].strip_prefix(b",\"from\":")?;
    let fl = rest.iter().position(|b| !b.is_ascii_alphanumeric())?;
    let rest = rest[fl..].strip_prefix(b",\"data\":\"")?;
    let (data, b64) = data_last(p, p.len() - rest.len())?;
    Some(Frame {
        op: b"message",
        room,
        seq: Some(seq),
        data: Data::Text { s: data, esc: true },
        b64,
    })
}

/// Read a JSON frame's top-level object. None if it is not a JSON object. Keys before `data`
/// may come in any order; from `data` on, the server's layout is used when it matches (see
/// `data_last`), else the rest is scanned too. The server's own `message` layout is read
/// straight through (`json_message_fast`).
pub fn parse_json(p: &[u8]) -> Option<Frame<'_>> {
    if let Some(f) = json_message_fast(p) {
        return Some(f);
    }
    let mut f = Frame::new();
    let mut i = ws(p, 0);
    if p.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(p, i + 1);
    if p.get(i) == Some(&b'}') {
        return Some(f);
    }
    loop {
        if p.get(i) != Some(&b'"') {
            return None;
        }
        let (key, _, e) = json_string(p, i)?;
        i = ws(p, e);
        if p.get(i) != Some(&b':') {
            return None;
        }
        i = ws(p, i + 1);
        let v = *p.get(i)?;
        match key {
            b"op" | b"room" | b"enc" if v == b'"' => {
                let (s, _, e) = json_string(p, i)?;
                match key {
                    b"op" => f.op = s,
                    b"room" => f.room = s,
                    _ => f.b64 = s == b"base64",
                }
                i = e;
            }
            b"data" => {
                if v == b'"' {
                    if let Some((s, b64)) = data_last(p, i + 1) {
                        f.data = Data::Text { s, esc: true };
                        f.b64 = b64;
                        return Some(f);
                    }
                    let (s, esc, e) = json_string(p, i)?;
                    f.data = Data::Text { s, esc };
                    i = e;
                } else {
                    f.data = Data::Other;
                    i = json_skip(p, i)?;
                }
            }
            b"seq" if v.is_ascii_digit() => {
                let mut n: u64 = 0;
                let mut j = i;
                while j < p.len() && p[j].is_ascii_digit() {
                    n = n.checked_mul(10)?.checked_add((p[j] - b'0') as u64)?;
                    j += 1;
                }
                // An integer only: 5.0 or 5e0 is not a seq.
                if !matches!(p.get(j), Some(b'.' | b'e' | b'E')) {
                    f.seq = Some(n);
                }
                i = json_skip(p, i)?;
            }
            _ => i = json_skip(p, i)?,
        }
        i = ws(p, i);
        match p.get(i)? {
            b',' => i = ws(p, i + 1),
            b'}' => return Some(f),
            _ => return None,
        }
    }
}

// CBOR -----------------------------------------------------------------------------------------

/// Head of the data item at `p[i]`: (major type, argument, index after the head). The argument
/// is None for an indefinite length (additional info 31).
#[inline]
fn cbor_item(p: &[u8], i: usize) -> Option<(u8, Option<u64>, usize)> {
    let b = *p.get(i)?;
    let major = b >> 5;
    let ai = b & 0x1f;
    let (arg, n) = match ai {
        0..=23 => (Some(ai as u64), 0),
        24 => (Some(*p.get(i + 1)? as u64), 1),
        25 => (
            Some(u16::from_be_bytes(p.get(i + 1..i + 3)?.try_into().ok()?) as u64),
            2,
        ),
        26 => (
            Some(u32::from_be_bytes(p.get(i + 1..i + 5)?.try_into().ok()?) as u64),
            4,
        ),
        27 => (
            Some(u64::from_be_bytes(p.get(i + 1..i + 9)?.try_into().ok()?)),
            8,
        ),
        31 if matches!(major, 2..=5 | 7) => (None, 0),
        _ => return None,
    };
    Some((major, arg, i + 1 + n))
}

/// Skip one CBOR data item; returns the index after it.
fn cbor_skip(p: &[u8], i: usize, depth: u32) -> Option<usize> {
    if depth > 128 {
        return None;
    }
    let (major, arg, mut j) = cbor_item(p, i)?;
    match (major, arg) {
        (0 | 1, Some(_)) => Some(j),
        (7, Some(_)) => Some(j), // simple values and floats: the head holds them
        (2 | 3, Some(n)) => {
            let e = j.checked_add(usize::try_from(n).ok()?)?;
            (e <= p.len()).then_some(e)
        }
        (4 | 5, Some(n)) => {
            let items = if major == 5 { n.checked_mul(2)? } else { n };
            for _ in 0..items {
                j = cbor_skip(p, j, depth + 1)?;
            }
            Some(j)
        }
        (6, Some(_)) => cbor_skip(p, j, depth + 1),
        (2..=5, None) => {
            // Indefinite length: items (chunks) until the "break" byte.
            while *p.get(j)? != 0xff {
                j = cbor_skip(p, j, depth + 1)?;
            }
            Some(j + 1)
        }
        (7, None) => None, // a lone "break"
        _ => None,
    }
}

/// A definite-length byte or text string at `p[i]`: (major, content, index after it).
#[inline]
fn cbor_str(p: &[u8], i: usize) -> Option<(u8, &[u8], usize)> {
    let (major, arg, j) = cbor_item(p, i)?;
    if !matches!(major, 2 | 3) {
        return None;
    }
    let e = j.checked_add(usize::try_from(arg?).ok()?)?;
    Some((major, p.get(j..e)?, e))
}

/// The server's `message` frame exactly as it writes it: a 5-pair map op, room, seq, from
/// (integer or null), data (a byte or text string, ending the frame). None: anything else
/// (the general walker then reads it).
#[inline]
fn cbor_message_fast(p: &[u8]) -> Option<Frame<'_>> {
    // {"op": "message", "room":
    const HEAD: &[u8] = b"\xa5\x62op\x67message\x64room";
    let (3, room, i) = cbor_str(p, HEAD.len()).filter(|_| p.starts_with(HEAD))? else {
        return None;
    };
    let i = i + 4;
    if p.get(i - 4..i)? != b"\x63seq" {
        return None;
    }
    let (0, Some(seq), i) = cbor_item(p, i)? else {
        return None;
    };
    let i = i + 5;
    if p.get(i - 5..i)? != b"\x64from" {
        return None;
    }
    let i = match *p.get(i)? {
        0xf6 => i + 1,
        _ => match cbor_item(p, i)? {
            (0, Some(_), j) => j,
            _ => return None,
        },
    };
    let i = i + 5;
    if p.get(i - 5..i)? != b"\x64data" {
        return None;
    }
    let (major, data, end) = cbor_str(p, i)?;
    if end != p.len() {
        return None;
    }
    Some(Frame {
        op: b"message",
        room,
        seq: Some(seq),
        data: if major == 2 {
            Data::Bytes(data)
        } else {
            Data::Text {
                s: data,
                esc: false,
            }
        },
        b64: false,
    })
}

/// Read a CBOR frame's top-level map. None if it is not a (well-formed enough) map. The
/// server's own `message` layout is read straight through (`cbor_message_fast`).
pub fn parse_cbor(p: &[u8]) -> Option<Frame<'_>> {
    if let Some(f) = cbor_message_fast(p) {
        return Some(f);
    }
    let mut f = Frame::new();
    let (major, arg, mut i) = cbor_item(p, 0)?;
    if major != 5 {
        return None;
    }
    let mut left = arg; // None: indefinite
    loop {
        match left {
            Some(0) => break,
            Some(ref mut n) => *n -= 1,
            None => {
                if *p.get(i)? == 0xff {
                    break;
                }
            }
        }
        // Key: text keys are read; any other key (or an indefinite text) is skipped.
        let key = match cbor_str(p, i) {
            Some((3, k, e)) => {
                i = e;
                Some(k)
            }
            _ => {
                i = cbor_skip(p, i, 1)?;
                None
            }
        };
        // Tags around values are ignored.
        let mut v = i;
        while let Some((6, Some(_), j)) = cbor_item(p, v) {
            v = j;
        }
        match key {
            Some(k @ (b"op" | b"room")) => match cbor_str(p, v) {
                Some((3, s, e)) => {
                    if k == b"op" {
                        f.op = s;
                    } else {
                        f.room = s;
                    }
                    i = e;
                }
                _ => i = cbor_skip(p, i, 1)?,
            },
            Some(b"seq") => {
                if let (0, Some(n), _) = cbor_item(p, v)? {
                    f.seq = Some(n);
                }
                i = cbor_skip(p, i, 1)?;
            }
            Some(b"data") => match cbor_str(p, v) {
                Some((2, s, e)) => {
                    f.data = Data::Bytes(s);
                    i = e;
                }
                Some((_, s, e)) => {
                    f.data = Data::Text { s, esc: false };
                    i = e;
                }
                None => {
                    f.data = Data::Other;
                    i = cbor_skip(p, i, 1)?;
                }
            },
            _ => i = cbor_skip(p, i, 1)?,
        }
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn body(frame: &[u8]) -> &[u8] {
        let n = (frame[1] & 0x7f) as usize;
        let h = match n {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        assert_eq!(frame[1] & 0x80, 0x80);
        &frame[h + 4..]
    }

    #[test]
    fn base64_round_trips() {
        for n in 0..40 {
            let src: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let mut enc = vec![0u8; b64_len(n)];
            b64_encode(&src, &mut enc);
            let mut dec = vec![0u8; n + 3];
            let m = b64_decode_prefix(&enc, &mut dec).unwrap();
            assert_eq!(&dec[..m], &src[..], "n={n}");
        }
        let mut e = [0u8; 4];
        b64_encode(&[0, 1, 2], &mut e);
        assert_eq!(&e, b"AAEC");
        let mut e = [0u8; 8];
        b64_encode(&[0xde, 0xad, 0xbe, 0xef, 0], &mut e);
        assert_eq!(&e, b"3q2+7wA=");
        assert!(b64_decode_prefix(b"AA*C", &mut [0u8; 3]).is_none());
        // The register decoder agrees with the general one.
        let mut p = [0u8; 30];
        for (k, b) in p.iter_mut().enumerate() {
            *b = (k as u8).wrapping_mul(97).wrapping_add(13);
        }
        let mut e = [0u8; 40];
        b64_encode(&p, &mut e);
        let mut h = [0u8; 21];
        b64_decode_prefix(&e, &mut h).unwrap();
        assert_eq!(b64_binary_header(&e), payload::parse_binary_header(&h));
        assert_eq!(b64_binary_header(&e[..27]), None);
        e[5] = b'=';
        assert_eq!(b64_binary_header(&e), None);
    }

    #[test]
    fn subscribe_frames_match_the_docs() {
        // docs/protocol.md: subscribe without options, same map order as the codec writes.
        let f = subscribe_frame(Envelope::Json, "chat:42");
        assert_eq!(f[0], 0x81);
        assert_eq!(body(&f), br#"{"op":"subscribe","room":"chat:42"}"#);
        let f = subscribe_frame(Envelope::Cbor, "chat:42");
        assert_eq!(f[0], 0x82);
        assert_eq!(
            body(&f),
            &hex("a2626f706973756273637269626564726f6f6d67636861743a3432")[..]
        );
    }

    #[test]
    fn publish_template_matches_the_docs() {
        let t = publish_template(Envelope::Cbor, Kind::Binary, "chat:42", &[0, 1, 2]);
        assert_eq!(
            body(&t.frame),
            &hex("a3626f70677075626c69736864726f6f6d67636861743a3432646461746143000102")[..]
        );
        assert_eq!(&t.frame[t.off..], &[0, 1, 2]);
        let t = publish_template(Envelope::Json, Kind::Binary, "chat:42", &[0, 1, 2]);
        assert_eq!(
            body(&t.frame),
            br#"{"op":"publish","room":"chat:42","data":"AAEC","enc":"base64"}"#
        );
        assert_eq!(&t.frame[t.off..t.off + 4], b"AAEC");
    }

    #[test]
    fn b64_patch_round_trips_through_a_message() {
        for size in [20, 21, 22, 64, 1000] {
            let payload = vec![0u8; size];
            let mut t = publish_template(Envelope::Json, Kind::Binary, "fanout", &payload);
            write_b64_header(&mut t.frame[t.off..], size, 123_456_789_012, 77, 3);
            // The server's message frame for it: op, room, seq, from, data, enc.
            let b = body(&t.frame);
            let s = std::str::from_utf8(b).unwrap();
            let data = s
                .split("\"data\":\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let msg = format!(
                r#"{{"op":"message","room":"fanout","seq":9,"from":1025,"data":"{data}","enc":"base64"}}"#
            );
            let f = parse_json(msg.as_bytes()).unwrap();
            assert_eq!(f.op, b"message");
            assert_eq!(f.seq, Some(9));
            assert!(f.b64);
            assert_eq!(
                f.payload_header(),
                Some((123_456_789_012, 77, 3)),
                "size {size}"
            );
            // And the whole base64 decodes to the payload with the header written.
            let mut full = vec![0u8; size];
            assert_eq!(b64_decode_prefix(data.as_bytes(), &mut full), Some(size));
            assert_eq!(&full[20..], &vec![0u8; size - 20][..]);
        }
    }

    #[test]
    fn json_payload_escaped_round_trips() {
        let (mut p, _) = payload::json_template(200);
        payload::write_json_header(&mut p, 5, 6, 7);
        let (esc, map) = escape(&p);
        assert_eq!(map.len(), p.len());
        let msg = format!(
            r#"{{"op":"message","room":"r","seq":1,"from":2,"data":"{}"}}"#,
            std::str::from_utf8(&esc).unwrap()
        );
        let f = parse_json(msg.as_bytes()).unwrap();
        assert!(matches!(f.data, Data::Text { esc: true, .. }));
        assert!(!f.b64);
        assert_eq!(f.payload_header(), Some((5, 6, 7)));
    }

    #[test]
    fn string_scan() {
        for n in 0..40 {
            for at in 0..n {
                for c in [b'"', b'\\'] {
                    let mut v = vec![b'a'; n];
                    v[at] = c;
                    if at + 1 < n {
                        v[at + 1] = b'"'; // a later match must not win
                    }
                    assert_eq!(find_quote_or_backslash(&v, 0), at, "n={n} at={at}");
                    assert_eq!(find_quote_or_backslash(&v, at), at);
                }
            }
            assert_eq!(find_quote_or_backslash(&vec![0x80u8 | b'"'; n], 0), n);
            assert_eq!(find_quote_or_backslash(&vec![b'!'; n], 0), n);
        }
        let p = br#""ab\"c\\d"x"#;
        assert_eq!(json_string(p, 0), Some((&br#"ab\"c\\d"#[..], true, 10)));
        assert_eq!(json_string(br#""abc"#, 0), None);
        assert_eq!(json_string(br#""abc\"#, 0), None);
    }

    #[test]
    fn message_fast_path_agrees_with_the_scanner() {
        let frames: [&[u8]; 6] = [
            br#"{"op":"message","room":"chat:42","seq":22,"from":null,"data":"AAEC","enc":"base64"}"#,
            br#"{"op":"message","room":"r","seq":1,"from":2,"data":"3q2+7wA=","enc":"base64"}"#,
            br#"{"op":"message","room":"r","seq":18446744073709551615,"from":9,"data":"a\"b"}"#,
            br#"{"op":"message","room":"r","seq":5,"from":9,"data":{"text":"hi"}}"#,
            br#"{"op":"message","room":"r","seq":5.5,"from":9,"data":"x"}"#,
            br#"{"op":"message","room":"r","seq":18446744073709551616,"from":9,"data":"x"}"#,
        ];
        for (k, fr) in frames.iter().enumerate() {
            let fast = json_message_fast(fr);
            assert_eq!(fast.is_some(), k < 3, "{k}");
            let mut general = fr.to_vec();
            general.insert(1, b' '); // no longer the exact layout
            assert!(json_message_fast(&general).is_none());
            let Some(g) = parse_json(&general) else {
                assert_eq!(k, 5); // seq beyond u64: a bad frame
                continue;
            };
            if let Some(f) = fast {
                assert_eq!(
                    (f.op, f.room, f.seq, f.b64),
                    (g.op, g.room, g.seq, g.b64),
                    "{k}"
                );
                assert_eq!(f.payload_header(), g.payload_header());
            } else if k > 3 {
                assert_eq!(g.seq, None, "{k}");
            }
        }
    }

    #[test]
    fn data_fast_path() {
        let f = parse_json(
            br#"{"op":"message","room":"r","seq":3,"from":null,"data":"AAEC","enc":"base64"}"#,
        )
        .unwrap();
        assert_eq!((f.seq, f.b64), (Some(3), true));
        assert_eq!(
            f.data,
            Data::Text {
                s: b"AAEC",
                esc: true
            }
        );
        let f = parse_json(br#"{"op":"message","seq":3,"data":"a\"b"}"#).unwrap();
        assert_eq!(
            f.data,
            Data::Text {
                s: br#"a\"b"#,
                esc: true
            }
        );
        assert!(!f.b64);
        // The tail's quote escaped: not the end of the string; scanned (and malformed here).
        assert!(parse_json(br#"{"op":"message","seq":1,"data":"ab\","enc":"base64"}"#).is_none());
        let f = parse_json(br#"{"op":"message","seq":1,"data":"ab\\","enc":"base64"}"#).unwrap();
        assert_eq!(
            f.data,
            Data::Text {
                s: br#"ab\\"#,
                esc: true
            }
        );
        assert!(f.b64);
        // A key after data that breaks the tail: scanned.
        let f = parse_json(br#"{"op":"message","seq":3,"data":"AAEC","x":1}"#).unwrap();
        assert_eq!(
            f.data,
            Data::Text {
                s: b"AAEC",
                esc: false
            }
        );
        // One that does not: the prefix read is wrong, and fails rather than misreads.
        let f = parse_json(br#"{"op":"message","seq":3,"data":"AAEC","x":"y"}"#).unwrap();
        assert_eq!(f.payload_header(), None);
    }

    #[test]
    fn json_frames() {
        let f = parse_json(br#"{"op":"welcome","conn":12}"#).unwrap();
        assert_eq!(f.op, b"welcome");
        let f = parse_json(
            br#"{"op":"subscribed","room":"chat:42","seq":20,"epoch":3,"recovered":true}"#,
        )
        .unwrap();
        assert_eq!(
            (f.op, f.room, f.seq),
            (&b"subscribed"[..], &b"chat:42"[..], Some(20))
        );
        // Docs example; nested data, null from, whitespace, keys in another order.
        let f = parse_json(
            br#"{"op":"message","room":"chat:42","seq":21,"from":12,"data":{"text":"hi"}}"#,
        )
        .unwrap();
        assert_eq!((f.seq, f.data), (Some(21), Data::Other));
        let f = parse_json(
            b" { \"data\" : \"AAEC\" , \"from\":null,\"x\":[1,{\"a\":\"}\"}],\"seq\" : 22,\"enc\":\"base64\",\"op\":\"message\" } ",
        )
        .unwrap();
        assert_eq!(f.op, b"message");
        assert_eq!(f.seq, Some(22));
        assert_eq!(
            f.data,
            Data::Text {
                s: b"AAEC",
                esc: false
            }
        );
        assert!(f.b64);
        assert_eq!(f.payload_header(), None); // 3 bytes: not one of ours
        let f = parse_json(br#"{"op":"join","room":"r","conn":15,"info":{"name":"ada"}}"#).unwrap();
        assert_eq!(f.op, b"join");
        assert_eq!(
            parse_json(br#"{"op":"message","seq":1.5}"#).unwrap().seq,
            None
        );
        assert!(parse_json(b"[1]").is_none());
        assert!(parse_json(br#"{"op":"message","data":"abc}"#).is_none());
    }

    #[test]
    fn cbor_frames_from_the_docs() {
        let b = hex("a2626f706777656c636f6d6564636f6e6e0c");
        let f = parse_cbor(&b).unwrap();
        assert_eq!(f.op, b"welcome");
        let b = hex("a5626f706a7375627363726962656464726f6f6d67636861743a343263736571146565706f636803697265636f7665726564f5");
        let f = parse_cbor(&b).unwrap();
        assert_eq!(
            (f.op, f.room, f.seq),
            (&b"subscribed"[..], &b"chat:42"[..], Some(20))
        );
        let b = hex("a5626f70676d65737361676564726f6f6d67636861743a343263736571166466726f6df6646461746143000102");
        let f = parse_cbor(&b).unwrap();
        assert_eq!(f.op, b"message");
        assert_eq!(f.seq, Some(22));
        assert_eq!(f.data, Data::Bytes(&[0, 1, 2]));
        let b = hex("a5626f70676d65737361676564726f6f6d67636861743a343263736571156466726f6d0c6464617461a16474657874626869");
        let f = parse_cbor(&b).unwrap();
        assert_eq!((f.seq, f.data), (Some(21), Data::Other));
        let b = hex("a4626f70656c6561766564726f6f6d67636861743a343264636f6e6e0f64696e666fa1646e616d6563616461");
        let f = parse_cbor(&b).unwrap();
        assert_eq!(f.op, b"leave");
        // Indefinite map, a non-text key, a tagged data byte string.
        let mut m = hex("bf626f70676d657373616765"); // {_ "op": "message"
        m.extend(hex("01f4")); // 1: false
        m.extend(hex("6373657118ff")); // "seq": 255
        m.extend(hex("6464617461d8184401020304")); // "data": 24(h'01020304')
        m.push(0xff);
        let f = parse_cbor(&m).unwrap();
        assert_eq!(f.seq, Some(255));
        assert_eq!(f.data, Data::Bytes(&[1, 2, 3, 4]));
        assert!(parse_cbor(&hex("a1626f70")).is_none()); // truncated
        assert!(parse_cbor(&hex("820102")).is_none()); // not a map
    }

    #[test]
    fn cbor_message_fast_path_agrees_with_the_walker() {
        let frames = [
            // docs/protocol.md: binary data from a raw client (from: null).
            "a5626f70676d65737361676564726f6f6d67636861743a343263736571166466726f6df6646461746143000102",
            // from: 12, data a text string "hi"; seq 1000 (two-byte argument).
            "a5626f70676d65737361676564726f6f6d67636861743a3432637365711903e86466726f6d0c64646174616268 69",
            // docs: map data (not a string): walker only.
            "a5626f70676d65737361676564726f6f6d67636861743a343263736571156466726f6d0c6464617461a16474657874626869",
            // A byte after the data: not the layout (and not one CBOR item; the walker reads the map).
            "a5626f70676d65737361676564726f6f6d67636861743a343263736571166466726f6df6646461746143000102 00",
        ];
        for (k, h) in frames.iter().enumerate() {
            let b = hex(&h.replace(' ', ""));
            let fast = cbor_message_fast(&b);
            assert_eq!(fast.is_some(), k < 2, "{k}");
            // The walker alone: the same map as an indefinite-length one.
            let mut indef = b.clone();
            indef[0] = 0xbf;
            indef.insert(indef.len() - if k == 3 { 1 } else { 0 }, 0xff);
            assert!(cbor_message_fast(&indef).is_none());
            let g = parse_cbor(&indef).unwrap_or_else(|| panic!("{k}"));
            if let Some(f) = fast {
                assert_eq!(f, g, "{k}");
            }
        }
    }

    #[test]
    fn cbor_payloads_round_trip() {
        let payload = vec![0u8; 64];
        let mut t = publish_template(Envelope::Cbor, Kind::Binary, "room7", &payload);
        t.frame[t.off..t.off + 8].copy_from_slice(&42u64.to_le_bytes());
        t.frame[t.off + 16..t.off + 20].copy_from_slice(&9u32.to_le_bytes());
        let b = body(&t.frame);
        let f = parse_cbor(b).unwrap();
        assert_eq!(f.op, b"publish");
        assert_eq!(f.room, b"room7");
        assert_eq!(f.payload_header(), Some((42, 0, 9)));
        let (mut p, _) = payload::json_template(1024);
        payload::write_json_header(&mut p, 1, 2, 3);
        let t = publish_template(Envelope::Cbor, Kind::Json, "room7", &p);
        assert_eq!(t.frame[0], 0x82);
        let f = parse_cbor(body(&t.frame)).unwrap();
        assert!(matches!(f.data, Data::Text { esc: false, .. }));
        assert_eq!(f.payload_header(), Some((1, 2, 3)));
    }
}
