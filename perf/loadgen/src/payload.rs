//! Message payloads: the 64-byte-style binary layout, and a compressible JSON text layout with
//! the same three numbers at fixed positions.
//!
//! JSON (`--payload json`, a TEXT message of exactly `--size` bytes):
//!
//! ```text
//! {"t":             123456789,"s":                  42,"p":         0,"d":[{"user":"user-1","x":123,"y":456,"color":"#ff8800"},...]}
//! ```
//!
//! The numbers are right-aligned in fixed-width fields padded with spaces (whitespace before a
//! value is valid JSON; leading zeros would not be), so the sender writes them in place into a
//! pre-built frame and the receiver reads them at fixed offsets. The array holds cursor objects;
//! every message rewrites their `x`/`y` digits with fresh pseudo-random values (users and colors
//! stay), so consecutive messages are similar but not identical: a compressor that keeps its
//! context across messages gains from the structure, not from exact repeats. Spaces before `]}`
//! pad the message to the exact size.

/// Binary layout: send timestamp (8, LE), sequence (8, LE), publisher id (4, LE).
pub const BINARY_HEADER_BYTES: usize = 20;

const T_KEY: &[u8] = b"{\"t\":";
const S_KEY: &[u8] = b",\"s\":";
const P_KEY: &[u8] = b",\"p\":";
const D_KEY: &[u8] = b",\"d\":[";
const T_W: usize = 20;
const S_W: usize = 20;
const P_W: usize = 10;
const T_OFF: usize = 5;
const S_OFF: usize = T_OFF + T_W + 5;
const P_OFF: usize = S_OFF + S_W + 5;
/// `{"t":<20>,"s":<20>,"p":<10>,"d":[`
pub const JSON_HEAD: usize = P_OFF + P_W + 6;
/// The smallest JSON message: the head and `]}`.
pub const JSON_MIN_BYTES: usize = JSON_HEAD + 2;

const COLORS: [&str; 8] = [
    "#ff8800", "#0088ff", "#22cc66", "#cc2266", "#8844ff", "#ffcc00", "#00cccc", "#666666",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Binary,
    Json,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Binary => "binary",
            Kind::Json => "json",
        }
    }
    pub fn min_size(self) -> usize {
        match self {
            Kind::Binary => BINARY_HEADER_BYTES,
            Kind::Json => JSON_MIN_BYTES,
        }
    }
    pub fn default_size(self) -> usize {
        match self {
            Kind::Binary => 64,
            Kind::Json => 1024,
        }
    }
}

/// A JSON payload of exactly `size` bytes (>= JSON_MIN_BYTES) with zeros in the header fields,
/// and the offsets of its 3-digit `x`/`y` values.
pub fn json_template(size: usize) -> (Vec<u8>, Vec<usize>) {
    assert!(size >= JSON_MIN_BYTES);
    let mut p = Vec::with_capacity(size);
    p.extend_from_slice(T_KEY);
    p.resize(p.len() + T_W, b' ');
    p.extend_from_slice(S_KEY);
    p.resize(p.len() + S_W, b' ');
    p.extend_from_slice(P_KEY);
    p.resize(p.len() + P_W, b' ');
    p.extend_from_slice(D_KEY);
    debug_assert_eq!(p.len(), JSON_HEAD);
    let mut digits = Vec::new();
    let mut k = 0usize;
    loop {
        let sep = if k == 0 { "" } else { "," };
        let pre = format!("{sep}{{\"user\":\"user-{}\",\"x\":", 1 + k * 7 % 97);
        let mid = ",\"y\":";
        let post = format!(",\"color\":\"{}\"}}", COLORS[k % COLORS.len()]);
        let len = pre.len() + 3 + mid.len() + 3 + post.len();
        if p.len() + len + 2 > size {
            break;
        }
        p.extend_from_slice(pre.as_bytes());
        digits.push(p.len());
        p.extend_from_slice(b"100");
        p.extend_from_slice(mid.as_bytes());
        digits.push(p.len());
        p.extend_from_slice(b"100");
        p.extend_from_slice(post.as_bytes());
        k += 1;
    }
    p.resize(size - 2, b' ');
    p.extend_from_slice(b"]}");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    vary(&mut p, &digits, &mut rng);
    put_num(&mut p[T_OFF..T_OFF + T_W], 0);
    put_num(&mut p[S_OFF..S_OFF + S_W], 0);
    put_num(&mut p[P_OFF..P_OFF + P_W], 0);
    (p, digits)
}

/// Write timestamp, sequence and publisher id into a JSON payload built by `json_template`.
#[cfg_attr(not(test), allow(dead_code))]
#[inline]
pub fn write_json_header(p: &mut [u8], ts: u64, seq: u64, pid: u32) {
    put_num(&mut p[T_OFF..T_OFF + T_W], ts);
    put_num(&mut p[S_OFF..S_OFF + S_W], seq);
    put_num(&mut p[P_OFF..P_OFF + P_W], pid as u64);
}

/// Offsets of the timestamp, sequence and publisher-id fields in a JSON payload.
pub const JSON_FIELDS: [usize; 3] = [T_OFF, S_OFF, P_OFF];

/// `write_json_header` for a copy of the payload whose fields start at `at` (the JSON payload
/// escaped into a JSON string: its fields move, their widths do not).
#[inline]
pub fn write_json_header_at(p: &mut [u8], at: &[usize; 3], ts: u64, seq: u64, pid: u32) {
    put_num(&mut p[at[0]..at[0] + T_W], ts);
    put_num(&mut p[at[1]..at[1] + S_W], seq);
    put_num(&mut p[at[2]..at[2] + P_W], pid as u64);
}

/// Fresh 3-digit values (100..=999) at the given offsets.
#[inline]
pub fn vary(p: &mut [u8], digits: &[usize], rng: &mut u64) {
    for &o in digits {
        // xorshift64
        let mut x = *rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *rng = x;
        let v = 100 + (x >> 32) % 900;
        p[o] = b'0' + (v / 100) as u8;
        p[o + 1] = b'0' + (v / 10 % 10) as u8;
        p[o + 2] = b'0' + (v % 10) as u8;
    }
}

/// Timestamp, sequence, publisher id of a JSON payload; None if it is not one of ours.
#[inline]
pub fn parse_json_header(p: &[u8]) -> Option<(u64, u64, u32)> {
    if p.len() < JSON_MIN_BYTES
        || &p[..T_OFF] != T_KEY
        || &p[T_OFF + T_W..S_OFF] != S_KEY
        || &p[S_OFF + S_W..P_OFF] != P_KEY
    {
        return None;
    }
    let ts = get_num(&p[T_OFF..T_OFF + T_W])?;
    let seq = get_num(&p[S_OFF..S_OFF + S_W])?;
    let pid = get_num(&p[P_OFF..P_OFF + P_W])?;
    Some((ts, seq, u32::try_from(pid).ok()?))
}

/// The same for the payload escaped into a JSON string's content (as the server writes it:
/// every `"` as `\"`), read in place: `{\"t\":<20>,\"s\":<20>,\"p\":<10>`. None for any other
/// form (the caller may unescape and use `parse_json_header`).
#[inline]
pub fn parse_escaped_json_header(p: &[u8]) -> Option<(u64, u64, u32)> {
    const T: &[u8] = b"{\\\"t\\\":";
    const S: &[u8] = b",\\\"s\\\":";
    const P: &[u8] = b",\\\"p\\\":";
    const T0: usize = T.len();
    const S0: usize = T0 + T_W + S.len();
    const P0: usize = S0 + S_W + P.len();
    if p.len() < P0 + P_W || &p[..T0] != T || &p[T0 + T_W..S0] != S || &p[S0 + S_W..P0] != P {
        return None;
    }
    let ts = get_num(&p[T0..T0 + T_W])?;
    let seq = get_num(&p[S0..S0 + S_W])?;
    let pid = get_num(&p[P0..P0 + P_W])?;
    Some((ts, seq, u32::try_from(pid).ok()?))
}

/// Timestamp, sequence, publisher id of a binary payload.
#[inline]
pub fn parse_binary_header(p: &[u8]) -> Option<(u64, u64, u32)> {
    if p.len() < BINARY_HEADER_BYTES {
        return None;
    }
    Some((
        u64::from_le_bytes(p[0..8].try_into().unwrap()),
        u64::from_le_bytes(p[8..16].try_into().unwrap()),
        u32::from_le_bytes(p[16..20].try_into().unwrap()),
    ))
}

/// Right-aligned decimal, space-padded on the left. `dst` must hold all digits.
#[inline]
fn put_num(dst: &mut [u8], mut v: u64) {
    let mut i = dst.len();
    loop {
        i -= 1;
        dst[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    dst[..i].fill(b' ');
}

/// Spaces, then at least one digit, up to the end of the field.
#[inline]
fn get_num(src: &[u8]) -> Option<u64> {
    let start = src.iter().position(|&b| b != b' ')?;
    let mut v: u64 = 0;
    for &b in &src[start..] {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_exact_size_and_round_trips() {
        for size in [JSON_MIN_BYTES, 100, 200, 1024, 4096] {
            let (mut p, digits) = json_template(size);
            assert_eq!(p.len(), size);
            assert!(p.is_ascii());
            assert!(p.ends_with(b"]}"));
            assert_eq!(&p[JSON_HEAD - 6..JSON_HEAD], D_KEY);
            write_json_header(&mut p, u64::MAX, 42, u32::MAX);
            assert_eq!(parse_json_header(&p), Some((u64::MAX, 42, u32::MAX)));
            write_json_header(&mut p, 0, 7, 3);
            assert_eq!(parse_json_header(&p), Some((0, 7, 3)));
            let mut rng = 1;
            let before = p.clone();
            vary(&mut p, &digits, &mut rng);
            assert_eq!(p.len(), size);
            assert_eq!(parse_json_header(&p), Some((0, 7, 3)));
            if size >= 1024 {
                assert!(digits.len() >= 30, "{}", digits.len());
                assert_ne!(p, before);
            }
        }
    }

    #[test]
    fn sample_cursor_object() {
        let (p, _) = json_template(1024);
        let s = String::from_utf8(p).unwrap();
        assert!(s.contains("{\"user\":\"user-1\",\"x\":"), "{s}");
        assert!(s.contains(",\"color\":\"#ff8800\"}"), "{s}");
    }

    #[test]
    fn escaped_header() {
        let (mut p, _) = json_template(300);
        write_json_header(&mut p, 11, 22, 33);
        let esc: Vec<u8> = p
            .iter()
            .flat_map(|&b| if b == b'"' { vec![b'\\', b] } else { vec![b] })
            .collect();
        assert!(esc.starts_with(b"{\\\"t\\\":"));
        assert_eq!(parse_escaped_json_header(&esc), Some((11, 22, 33)));
        assert_eq!(parse_escaped_json_header(&p), None);
        assert_eq!(parse_escaped_json_header(&esc[..60]), None);
    }

    #[test]
    fn rejects_foreign() {
        assert_eq!(parse_json_header(b"{\"t\":1}"), None);
        let (mut p, _) = json_template(200);
        p[T_OFF + T_W - 1] = b'x';
        assert_eq!(parse_json_header(&p), None);
        let (mut p, _) = json_template(200);
        p[S_OFF..S_OFF + S_W].fill(b' ');
        assert_eq!(parse_json_header(&p), None);
    }
}
