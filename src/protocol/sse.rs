//! Server-Sent Events, the fallback transport for networks that block WebSocket (`GET /sse`,
//! docs/protocol.md "SSE"): the query that opens a stream, the stream ids, and the events the
//! stream carries. Every envelope JSON frame becomes one event `data: <json>\n\n` (JSON never
//! holds a raw newline, so one `data:` line is enough); a `message` also gets `id: <room>:<seq>`
//! so that `EventSource` sends it back as `Last-Event-ID` when it reconnects. Sans-io.

use super::frame::OpCode;
use super::handshake::percent_decode;
use super::room_name::valid_room_name;

/// The response that opens a stream: no length, the events run until the connection closes;
/// no caching, and no buffering by nginx (`X-Accel-Buffering`).
pub const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n";

/// A comment line: keeps proxies from timing the stream out (sent for each heartbeat ping).
pub const PING: &[u8] = b": ping\n\n";

/// Rooms one `GET /sse` may name (more can be subscribed on the open stream).
pub const MAX_ROOMS: usize = 64;

/// One room a stream subscribes to when it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sub {
    /// The room.
    pub room: String,
    /// Resume after this seq (`since=room:seq`, or `Last-Event-ID`).
    pub since: Option<u64>,
    /// The epoch `since` belongs to (`epoch=room:e`).
    pub epoch: Option<u64>,
    /// Also receive `join`/`leave` (`presence=room,...`).
    pub presence: bool,
}

/// Why a `GET /sse` query is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A room name that is not valid.
    #[error("bad room name in {0}")]
    BadRoom(&'static str),
    /// A `room:N` pair whose number is not an integer.
    #[error("bad {0}: expected room:integer pairs")]
    BadPair(&'static str),
    /// A position for a room the query does not open.
    #[error("{0} names a room not in rooms")]
    UnknownRoom(&'static str),
    /// More than [`MAX_ROOMS`] rooms.
    #[error("too many rooms (at most {MAX_ROOMS})")]
    TooManyRooms,
    /// Bad percent-encoding.
    #[error("bad percent-encoding")]
    Encoding,
}

/// The value of query parameter `name` (first occurrence), percent-decoded.
fn param(query: Option<&str>, name: &str) -> Result<Option<String>, SseError> {
    let Some(raw) = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| {
        kv.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
    }) else {
        return Ok(None);
    };
    let bytes = percent_decode(raw).ok_or(SseError::Encoding)?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| SseError::Encoding)
}

/// `room:N` (the room may itself contain `:`; the number is after the last one).
pub fn position(pair: &str) -> Option<(&str, u64)> {
    let (room, n) = pair.rsplit_once(':')?;
    if n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((room, n.parse().ok()?))
}

/// The rooms a `GET /sse?rooms=a,b&since=a:17&epoch=a:3&presence=a` opens. `last_event_id`
/// (`room:seq`, from a reconnecting `EventSource`) overrides `since` for its room; one that does
/// not parse or names another room is ignored (the browser sends whatever id it saw last).
pub fn parse_open(query: Option<&str>, last_event_id: Option<&str>) -> Result<Vec<Sub>, SseError> {
    let mut subs: Vec<Sub> = Vec::new();
    if let Some(rooms) = param(query, "rooms")? {
        for r in rooms.split(',').filter(|r| !r.is_empty()) {
            if !valid_room_name(r) {
                return Err(SseError::BadRoom("rooms"));
            }
            if !subs.iter().any(|s| s.room == r) {
                subs.push(Sub {
                    room: r.to_string(),
                    since: None,
                    epoch: None,
                    presence: false,
                });
            }
        }
    }
    if subs.len() > MAX_ROOMS {
        return Err(SseError::TooManyRooms);
    }
    for (key, is_since) in [("since", true), ("epoch", false)] {
        let Some(list) = param(query, key)? else {
            continue;
        };
        for pair in list.split(',').filter(|p| !p.is_empty()) {
            let (room, n) = position(pair).ok_or(SseError::BadPair(key))?;
            let sub = subs
                .iter_mut()
                .find(|s| s.room == room)
                .ok_or(SseError::UnknownRoom(key))?;
            if is_since {
                sub.since = Some(n);
            } else {
                sub.epoch = Some(n);
            }
        }
    }
    if let Some(list) = param(query, "presence")? {
        for room in list.split(',').filter(|p| !p.is_empty()) {
            let sub = subs
                .iter_mut()
                .find(|s| s.room == room)
                .ok_or(SseError::UnknownRoom("presence"))?;
            sub.presence = true;
        }
    }
    if let Some((room, seq)) = last_event_id.and_then(position) {
        if let Some(sub) = subs.iter_mut().find(|s| s.room == room) {
            sub.since = Some(seq);
        }
    }
    Ok(subs)
}

/// One event: `id: room:seq` (messages) and the JSON frame as its data.
pub fn event(id: Option<(&str, u64)>, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 16 + id.map_or(0, |(r, _)| r.len() + 26));
    if let Some((room, seq)) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(room.as_bytes());
        out.push(b':');
        out.extend_from_slice(seq.to_string().as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    out
}

/// The event that ends a stream: `{"op":"close","code":N,"reason":TEXT}` (the WebSocket close
/// code the connection would have got).
pub fn close_event(code: u16, reason: &str) -> Vec<u8> {
    let json = serde_json::json!({"op": "close", "code": code, "reason": reason});
    event(None, json.to_string().as_bytes())
}

/// Stream ids: `<connection id>-<secret>` (hex). The connection id's low 10 bits name the
/// shard; the secret (random per stream) keeps anyone who only saw the connection id in a
/// presence list from posting on the stream.
pub fn stream_id(conn: u64, secret: u64) -> String {
    format!("{conn}-{secret:016x}")
}

/// The parts of a stream id, if it is one.
pub fn parse_stream_id(s: &str) -> Option<(u64, u64)> {
    let (conn, secret) = s.split_once('-')?;
    if secret.len() != 16 {
        return None;
    }
    Some((conn.parse().ok()?, u64::from_str_radix(secret, 16).ok()?))
}

/// One of our own server WebSocket frames as SSE: a text frame's payload as a `data:` event,
/// a ping as a comment (the heartbeat), a close as the close event; a pong or a binary frame
/// (never sent to a JSON client) as nothing. Several frames in `frames` are converted one by
/// one.
pub fn from_ws_frames(frames: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = frames;
    while let Some((op, payload, used)) = split_one(rest) {
        match op {
            OpCode::Text => out.extend_from_slice(&event(None, payload)),
            OpCode::Ping => out.extend_from_slice(PING),
            OpCode::Close => {
                let code = payload
                    .get(..2)
                    .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                let reason = payload
                    .get(2..)
                    .and_then(|r| std::str::from_utf8(r).ok())
                    .unwrap_or("");
                out.extend_from_slice(&close_event(code, reason));
            }
            _ => {}
        }
        rest = &rest[used..];
    }
    out
}

/// The first unmasked server frame of `buf`: opcode, payload, bytes used.
fn split_one(buf: &[u8]) -> Option<(OpCode, &[u8], usize)> {
    let b0 = *buf.first()?;
    let (hl, len) = match buf.get(1)? & 0x7f {
        126 => (
            4usize,
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        ),
        127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => (2, u64::from(n)),
    };
    let end = hl.checked_add(usize::try_from(len).ok()?)?;
    let payload = buf.get(hl..end)?;
    let op = match b0 & 0x0f {
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        0x8 => OpCode::Close,
        0x9 => OpCode::Ping,
        0xA => OpCode::Pong,
        _ => OpCode::Continuation,
    };
    Some((op, payload, end))
}

/// The data lines of the events in `buf` with the first one for which `f` gives a
/// replacement replaced (its `id:` line kept): for the gap marker on a queued batch.
pub fn replace_first_data(buf: &[u8], f: impl Fn(&[u8]) -> Option<Vec<u8>>) -> Option<Vec<u8>> {
    let mut at = 0;
    while at < buf.len() {
        let end = find(&buf[at..], b"\n\n").map_or(buf.len(), |i| at + i + 2);
        let ev = &buf[at..end];
        if let Some(d) = find(ev, b"data: ") {
            let line_end = find(&ev[d..], b"\n").map_or(ev.len(), |i| d + i);
            if let Some(new) = f(&ev[d + 6..line_end]) {
                let mut out = Vec::with_capacity(buf.len() + 16);
                out.extend_from_slice(&buf[..at + d + 6]);
                out.extend_from_slice(&new);
                out.extend_from_slice(&buf[at + line_end..]);
                return Some(out);
            }
        }
        at = end;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::close::CloseCode;
    use crate::protocol::frame::{encode_close, encode_server_frame};

    fn sub(room: &str, since: Option<u64>, epoch: Option<u64>, presence: bool) -> Sub {
        Sub {
            room: room.into(),
            since,
            epoch,
            presence,
        }
    }

    #[test]
    fn the_open_query_names_rooms_positions_and_presence() {
        assert_eq!(parse_open(None, None), Ok(vec![]));
        assert_eq!(
            parse_open(
                Some("rooms=a,chat:42&since=a:17,chat:42:3&epoch=a:5&presence=chat:42"),
                None
            ),
            Ok(vec![
                sub("a", Some(17), Some(5), false),
                sub("chat:42", Some(3), None, true)
            ])
        );
        // Percent-encoded commas and colons, and a duplicate room.
        assert_eq!(
            parse_open(Some("rooms=a%2Cb%2Ca&since=b%3A2"), None),
            Ok(vec![
                sub("a", None, None, false),
                sub("b", Some(2), None, false)
            ])
        );
        // Last-Event-ID overrides since for its room; one for another room is ignored.
        assert_eq!(
            parse_open(Some("rooms=a,b&since=a:1"), Some("a:9")),
            Ok(vec![
                sub("a", Some(9), None, false),
                sub("b", None, None, false)
            ])
        );
        assert_eq!(
            parse_open(Some("rooms=a"), Some("zz:9")),
            Ok(vec![sub("a", None, None, false)])
        );
        assert_eq!(
            parse_open(Some("rooms=a"), Some("garbage")),
            Ok(vec![sub("a", None, None, false)])
        );
    }

    #[test]
    fn bad_open_queries_are_refused_with_a_reason() {
        assert_eq!(
            parse_open(Some("rooms=bad!room"), None),
            Err(SseError::BadRoom("rooms"))
        );
        assert_eq!(
            parse_open(Some("rooms=a&since=a:x"), None),
            Err(SseError::BadPair("since"))
        );
        assert_eq!(
            parse_open(Some("rooms=a&since=a:-1"), None),
            Err(SseError::BadPair("since"))
        );
        assert_eq!(
            parse_open(Some("rooms=a&epoch=b:1"), None),
            Err(SseError::UnknownRoom("epoch"))
        );
        assert_eq!(
            parse_open(Some("rooms=a&presence=b"), None),
            Err(SseError::UnknownRoom("presence"))
        );
        assert_eq!(parse_open(Some("rooms=%zz"), None), Err(SseError::Encoding));
        let many: Vec<String> = (0..=MAX_ROOMS).map(|i| format!("r{i}")).collect();
        let q = format!("rooms={}", many.join(","));
        assert_eq!(parse_open(Some(&q), None), Err(SseError::TooManyRooms));
    }

    #[test]
    fn events_and_stream_ids() {
        assert_eq!(event(None, b"{}"), b"data: {}\n\n");
        assert_eq!(
            event(Some(("chat:1", 42)), b"{}"),
            b"id: chat:1:42\ndata: {}\n\n"
        );
        assert_eq!(position("chat:1:42"), Some(("chat:1", 42)));
        let id = stream_id(1025, 0xdead_beef);
        assert_eq!(id, "1025-00000000deadbeef");
        assert_eq!(parse_stream_id(&id), Some((1025, 0xdead_beef)));
        assert_eq!(parse_stream_id("1025-beef"), None);
        assert_eq!(parse_stream_id("x-00000000deadbeef"), None);
    }

    #[test]
    fn websocket_frames_become_events() {
        let mut frames = encode_server_frame(OpCode::Text, false, b"{\"op\":\"a\"}").to_vec();
        frames.extend_from_slice(&encode_server_frame(OpCode::Ping, false, b""));
        frames.extend_from_slice(&encode_server_frame(OpCode::Pong, false, b"x"));
        frames.extend_from_slice(&encode_close(CloseCode::SERVICE_RESTART, "restart"));
        let out = String::from_utf8(from_ws_frames(&frames)).unwrap();
        assert_eq!(
            out,
            "data: {\"op\":\"a\"}\n\n: ping\n\n\
             data: {\"code\":1012,\"op\":\"close\",\"reason\":\"restart\"}\n\n"
        );
        // A long frame (16-bit length).
        let big = vec![b'x'; 300];
        let f = encode_server_frame(OpCode::Text, false, &big);
        assert_eq!(from_ws_frames(&f), event(None, &big));
        // Truncated input stops cleanly.
        assert_eq!(from_ws_frames(&f[..10]), b"");
    }

    #[test]
    fn the_first_matching_event_is_replaced() {
        let mut buf = event(None, b"{\"op\":\"join\"}");
        buf.extend_from_slice(&event(Some(("r", 5)), b"{\"op\":\"message\"}"));
        buf.extend_from_slice(&event(Some(("r", 6)), b"{\"op\":\"message\"}"));
        let out = replace_first_data(&buf, |d| {
            (d == b"{\"op\":\"message\"}").then(|| b"{\"op\":\"message\",\"gap\":true}".to_vec())
        })
        .unwrap();
        let mut want = event(None, b"{\"op\":\"join\"}");
        want.extend_from_slice(&event(Some(("r", 5)), b"{\"op\":\"message\",\"gap\":true}"));
        want.extend_from_slice(&event(Some(("r", 6)), b"{\"op\":\"message\"}"));
        assert_eq!(out, want);
        assert_eq!(replace_first_data(&buf, |_| None), None);
    }
}
