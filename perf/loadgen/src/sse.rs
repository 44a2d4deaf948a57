//! Server-Sent Events, client side, as much as `fanout --transport sse` needs: the request that
//! opens `GET /sse?rooms=R`, the check of its `200 text/event-stream` answer, and an incremental
//! event parser over the byte stream (docs/protocol.md "Server-Sent Events"; the WHATWG
//! event-stream format).
//!
//! The parser works on whatever bytes a connection holds: `next_event` returns the first whole
//! event (one ends at a blank line) and how many bytes it used, or `Incomplete` when the buffer
//! ends inside one: the caller keeps the rest and calls again once more bytes came, so an event
//! may span any number of reads. Lines end in `\n` or `\r\n` (a lone `\r` is not treated as a line
//! end: the daemon never sends one). An event's single `data:` line (what shardcast sends) is
//! handed out as a slice of the input, without copying; only an event of several `data:` lines is
//! joined (with `\n`, as the format says) into a scratch buffer the caller owns and reuses.

/// What the parser found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    /// No blank line yet: the buffer ends inside an event (keep it, read more).
    Incomplete,
    /// A whole event and the bytes it took (blank line included).
    Event(Event<'a>, usize),
}

/// One event. Fields the format defines but loadgen does not need (`retry`) are skipped, and so
/// are unknown ones.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Event<'a> {
    /// The last `id:` line's value.
    pub id: Option<&'a [u8]>,
    /// The last `event:` line's value (None: the default type, `message`).
    pub kind: Option<&'a [u8]>,
    /// The data: None when the event had no `data:` line (it dispatches nothing).
    pub data: Option<&'a [u8]>,
    /// Comment lines (`: ping`, the heartbeat).
    pub comments: u32,
}

/// The first event of `buf`. `scratch` holds the joined data of a multi-line event (the
/// returned `data` then borrows it).
pub fn next_event<'a>(buf: &'a [u8], scratch: &'a mut Vec<u8>) -> Next<'a> {
    let mut ev = Event::default();
    let mut pos = 0;
    // Data lines: the first as a slice; from the second on, everything joined in `scratch`.
    let mut data_lines = 0u32;
    loop {
        let Some(nl) = memchr_nl(&buf[pos..]) else {
            return Next::Incomplete;
        };
        let end = pos + nl;
        let line = strip_cr(&buf[pos..end]);
        pos = end + 1;
        if line.is_empty() {
            if data_lines > 1 {
                ev.data = Some(&scratch[..]);
            }
            return Next::Event(ev, pos);
        }
        if line[0] == b':' {
            ev.comments += 1;
            continue;
        }
        let (name, value) = field(line);
        match name {
            b"data" => {
                data_lines += 1;
                match data_lines {
                    1 => ev.data = Some(value),
                    2 => {
                        scratch.clear();
                        scratch.extend_from_slice(ev.data.unwrap_or(b""));
                        scratch.push(b'\n');
                        scratch.extend_from_slice(value);
                    }
                    _ => {
                        scratch.push(b'\n');
                        scratch.extend_from_slice(value);
                    }
                }
            }
            b"id" => ev.id = Some(value),
            b"event" => ev.kind = Some(value),
            _ => {}
        }
    }
}

/// `name: value` (one space after the colon is dropped); a line without a colon is a field name
/// with an empty value.
fn field(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b':') {
        Some(c) => {
            let v = &line[c + 1..];
            (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, b""),
    }
}

#[inline]
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The first `\n` of `b`, eight bytes at a time (an event's data line is the whole JSON frame:
/// a byte-by-byte search over it was most of the parser's time).
#[inline]
fn memchr_nl(b: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let mut chunks = b.chunks_exact(8);
    let mut j = 0;
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ NL;
        // A zero byte of w is a match; the lowest flagged byte is always a true match.
        let m = w.wrapping_sub(LO) & !w & HI;
        if m != 0 {
            return Some(j + (m.trailing_zeros() / 8) as usize);
        }
        j += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'\n')
        .map(|k| j + k)
}

/// `GET {prefix}/sse?rooms=ROOM` with `Accept: text/event-stream` (and the bearer header, if
/// any). Room names need no percent-encoding (A-Z a-z 0-9 _ . : -).
pub fn open_request(prefix: &str, room: &str, host: &str, authz: &str) -> String {
    format!(
        "GET {prefix}/sse?rooms={room} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\n{authz}\r\n"
    )
}

/// Why a stream's response head is refused (the handshake-failure kind in the report).
pub fn check_head(head: &str) -> Result<(), String> {
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("HTTP {status}"));
    }
    let ctype = head.lines().skip(1).find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.trim())
    });
    match ctype {
        Some(t) if t.to_ascii_lowercase().starts_with("text/event-stream") => Ok(()),
        _ => Err("not text/event-stream".into()),
    }
}

/// `code` of a `{"op":"close","code":N,...}` event (the daemon's last event on a stream it
/// ends); 1005 when absent or not a number that fits.
pub fn close_code(json: &[u8]) -> u16 {
    let key = b"\"code\":";
    let Some(at) = json.windows(key.len()).position(|w| w == key) else {
        return 1005;
    };
    let rest = &json[at + key.len()..];
    let rest = &rest[rest.iter().take_while(|b| **b == b' ').count()..];
    let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..n])
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(1005)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event of `stream` fed in pieces of `chunk` bytes, the way `engine` keeps a
    /// partial event between reads: (id, kind, data, comments) per event, and what is left.
    fn feed(stream: &[u8], chunk: usize) -> (Vec<(String, String, String, u32)>, usize) {
        let mut out = Vec::new();
        let mut held: Vec<u8> = Vec::new();
        let mut scratch = Vec::new();
        for piece in stream.chunks(chunk) {
            held.extend_from_slice(piece);
            let mut p = 0;
            while let Next::Event(e, used) = next_event(&held[p..], &mut scratch) {
                let s = |x: Option<&[u8]>| x.map(|b| String::from_utf8_lossy(b).into_owned());
                out.push((
                    s(e.id).unwrap_or_default(),
                    s(e.kind).unwrap_or_default(),
                    s(e.data).unwrap_or_else(|| "<none>".into()),
                    e.comments,
                ));
                p += used;
            }
            held.drain(..p);
        }
        (out, held.len())
    }

    #[test]
    fn the_docs_stream_in_every_split() {
        // docs/protocol.md's example, as the daemon writes it.
        let stream = b"data: {\"op\":\"welcome\",\"conn\":1025,\"stream\":\"1025-4a90d3844d81ba86\"}\n\n\
data: {\"op\":\"subscribed\",\"room\":\"chat:42\",\"seq\":20,\"epoch\":3,\"recovered\":true}\n\n\
id: chat:42:21\ndata: {\"op\":\"message\",\"room\":\"chat:42\",\"seq\":21,\"from\":12,\"data\":{\"text\":\"hi\"}}\n\n\
: ping\n\n";
        for chunk in 1..=stream.len() {
            let (evs, left) = feed(stream, chunk);
            assert_eq!(left, 0, "chunk {chunk}");
            assert_eq!(evs.len(), 4, "chunk {chunk}");
            assert!(evs[0].2.starts_with("{\"op\":\"welcome\""));
            assert_eq!(evs[2].0, "chat:42:21");
            assert!(evs[2].2.ends_with("{\"text\":\"hi\"}}"));
            assert_eq!((evs[3].2.as_str(), evs[3].3), ("<none>", 1));
        }
    }

    #[test]
    fn crlf_multiline_data_fields_and_partial_tail() {
        let stream =
            b"event: note\r\nretry: 10\r\ndata:a\r\ndata: b\r\ndata\r\nid\r\n\r\nx: 1\ndata: par";
        let (evs, left) = feed(stream, 3);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0], ("".into(), "note".into(), "a\nb\n".into(), 0));
        assert_eq!(left, b"x: 1\ndata: par".len());
        let mut s = Vec::new();
        assert_eq!(next_event(b"data: x\n", &mut s), Next::Incomplete);
        assert_eq!(next_event(b"", &mut s), Next::Incomplete);
        // Odd bytes are data, never a panic.
        let (evs, _) = feed(b":\n\n:\n\0\xff\n\n\n\n", 1);
        assert_eq!(evs.len(), 4);
    }

    #[test]
    fn newline_search_at_every_position() {
        for n in 0..40 {
            assert_eq!(memchr_nl(&vec![b'a'; n]), None);
            assert_eq!(memchr_nl(&vec![b'\n' ^ 0x80; n]), None);
            assert_eq!(memchr_nl(&vec![b'\n' + 1; n]), None);
            for at in 0..n {
                let mut v = vec![b'x'; n];
                v[at] = b'\n';
                if at + 1 < n {
                    v[at + 1] = b'\n'; // a later match must not win
                }
                if at > 0 {
                    v[at - 1] = b'\n' + 1; // nor a near miss before it
                }
                assert_eq!(memchr_nl(&v), Some(at), "n={n} at={at}");
            }
        }
    }

    #[test]
    fn heads_and_close_codes() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache";
        assert_eq!(check_head(ok), Ok(()));
        assert_eq!(
            check_head("HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain"),
            Err("HTTP 401".into())
        );
        assert_eq!(
            check_head("HTTP/1.1 200 OK\r\nContent-Type: text/plain"),
            Err("not text/event-stream".into())
        );
        assert_eq!(check_head(""), Err("HTTP ?".into()));
        assert_eq!(
            close_code(br#"{"op":"close","code":1008,"reason":"slow"}"#),
            1008
        );
        assert_eq!(close_code(br#"{"op":"close","code":99999}"#), 1005);
        assert_eq!(close_code(br#"{"op":"close"}"#), 1005);
        assert_eq!(close_code(br#"{"op":"close","code":null}"#), 1005);
        let r = open_request("/p", "fanout", "127.0.0.1:9300", "");
        assert!(r.starts_with("GET /p/sse?rooms=fanout HTTP/1.1\r\n"));
        assert!(r.ends_with("Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"));
    }
}
