//! Encoding entry points: pick the writer for the connection's format (`json.rs` or `cbor.rs`)
//! and size the output buffer.

use super::cbor::{cbor_client, cbor_server};
use super::json::{json_client, json_server};
use super::{ClientOp, Data, Format, ServerOp};

/// Encode a server frame's payload in `format` (the daemon frames it as a text message for
/// JSON, binary for CBOR).
pub fn encode_server(op: &ServerOp<'_>, format: Format) -> Vec<u8> {
    let mut out = Vec::with_capacity(server_size_hint(op));
    encode_server_into(op, format, &mut out);
    out
}

/// [`encode_server`], appending to `out` (e.g. after room reserved for a frame header).
pub fn encode_server_into(op: &ServerOp<'_>, format: Format, out: &mut Vec<u8>) {
    let start = out.len();
    let result = match format {
        Format::Json => json_server(op, out),
        Format::Cbor => cbor_server(op, out),
    };
    if let Err(error) = result {
        // Unreachable in practice: the writers are `Vec`s and every map key is text.
        tracing::error!(%error, op = op.name(), format = format.as_str(), "envelope encoding failed");
        out.truncate(start);
        let fallback = ServerOp::Error {
            code: "internal",
            reason: "the server could not encode a frame",
            id: None,
        };
        let _ = match format {
            Format::Json => json_server(&fallback, out),
            Format::Cbor => cbor_server(&fallback, out),
        };
    }
}

/// What [`mark_gap`] made of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GapMark {
    /// The message with `"gap": true` added after its `op`.
    Marked(Vec<u8>),
    /// A message that carries the flag already.
    AlreadyMarked,
    /// Not a `message` made by [`encode_server`] (an event, a reply).
    NotAMessage,
}

/// Add `"gap": true` to a `message` payload made by [`encode_server`]: the first message a
/// client gets for a room after the server dropped some of that room's messages for it.
pub fn mark_gap(payload: &[u8], format: Format) -> GapMark {
    // (prefix every message starts with, the flag, where it goes)
    let (head, flag): (&[u8], &[u8]) = match format {
        Format::Json => (br#"{"op":"message","#, br#""gap":true,"#),
        // A map of fewer than 23 pairs (one header byte) whose first pair is op: "message".
        Format::Cbor => (b"\x62op\x67message", b"\x63gap\xf5"),
    };
    let (prefix, body) = match format {
        Format::Json => (0, payload),
        Format::Cbor => match payload.split_first() {
            Some((&h, rest)) if h & 0xe0 == 0xa0 && h & 0x1f < 23 => (1, rest),
            _ => return GapMark::NotAMessage,
        },
    };
    let Some(rest) = body.strip_prefix(head) else {
        return GapMark::NotAMessage;
    };
    if rest.starts_with(&flag[..flag.len() - 1]) {
        return GapMark::AlreadyMarked;
    }
    let mut out = Vec::with_capacity(payload.len() + flag.len());
    if prefix == 1 {
        out.push(payload[0] + 1);
    }
    out.extend_from_slice(head);
    out.extend_from_slice(flag);
    out.extend_from_slice(rest);
    GapMark::Marked(out)
}

/// Encode a client frame (for tests, load generators and client libraries).
pub fn encode_client(op: &ClientOp, format: Format) -> Vec<u8> {
    let mut out = Vec::with_capacity(client_size_hint(op));
    let result = match format {
        Format::Json => json_client(op, &mut out),
        Format::Cbor => cbor_client(op, &mut out),
    };
    if result.is_err() {
        // Unreachable in practice (see `encode_server_into`): send nothing rather than half a map.
        out.clear();
    }
    out
}

/// A first guess at a client frame's size.
fn client_size_hint(op: &ClientOp) -> usize {
    64 + match op {
        ClientOp::Refresh { token } => token.len(),
        ClientOp::Publish { room, data, id } => {
            room.len() + data_hint(data) + id.as_ref().map_or(0, data_hint)
        }
        other => other.room().map_or(0, str::len),
    }
}

/// A first guess at a server frame's size, so most frames are written without regrowing.
fn server_size_hint(op: &ServerOp<'_>) -> usize {
    64 + match op {
        ServerOp::Welcome { user, exp, .. } => opt_str_hint(*user) + exp.map_or(0, |_| 28),
        ServerOp::Subscribed { room, id, .. } => room.len() + id.map_or(0, data_hint),
        ServerOp::Unsubscribed { room, reason, id } => {
            room.len() + opt_str_hint(*reason) + id.map_or(0, data_hint)
        }
        ServerOp::Message { room, data, .. } => room.len() + data_hint(data),
        ServerOp::Join {
            room, user, info, ..
        }
        | ServerOp::Leave {
            room, user, info, ..
        } => room.len() + opt_str_hint(*user) + data_hint(info),
        ServerOp::Presence { room, members, id } => {
            room.len()
                + id.map_or(0, data_hint)
                + members
                    .iter()
                    .map(|(_, user, info)| 32 + opt_str_hint(*user) + data_hint(info))
                    .sum::<usize>()
        }
        ServerOp::PresenceByUser { room, users, id } => {
            16 + room.len()
                + id.map_or(0, data_hint)
                + users
                    .iter()
                    .map(|(user, _, info)| 48 + opt_str_hint(*user) + data_hint(info))
                    .sum::<usize>()
        }
        ServerOp::History {
            room, messages, id, ..
        } => {
            room.len()
                + id.map_or(0, data_hint)
                + messages
                    .iter()
                    .map(|(_, _, d)| 48 + data_hint(d))
                    .sum::<usize>()
        }
        ServerOp::Ack { id, .. } => data_hint(id),
        ServerOp::Refreshed { id, .. } => id.map_or(0, data_hint),
        ServerOp::Error { reason, id, .. } => reason.len() + id.map_or(0, data_hint),
        ServerOp::RateLimited { id, .. } => 64 + id.map_or(0, data_hint),
        ServerOp::Reconnect { .. } => 16,
    }
}

/// An optional text field: its key (about 10 bytes) and its text, or nothing.
fn opt_str_hint(value: Option<&str>) -> usize {
    value.map_or(0, |s| 10 + s.len())
}

/// A first guess at a payload's encoded size.
fn data_hint(data: &Data) -> usize {
    match data {
        Data::Bytes(b) => b.len() / 3 * 4 + 8,
        Data::Text(t) => t.len() + 8,
        Data::Array(a) => 8 + a.len() * 8,
        Data::Map(m) => 8 + m.len() * 16,
        _ => 24,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_server_into_appends() {
        let mut out = vec![0xAA, 0xBB];
        let welcome = ServerOp::Welcome {
            conn: 1,
            user: None,
            exp: None,
        };
        encode_server_into(&welcome, Format::Json, &mut out);
        assert_eq!(out, b"\xAA\xBB{\"op\":\"welcome\",\"conn\":1}");
    }

    #[test]
    fn size_hints_cover_the_auth_fields() {
        // Long text in the new fields: the first guess is still big enough in both formats.
        let long = "u".repeat(1000);
        let info = Data::Null;
        let members = vec![(1, Some(long.as_str()), Data::Null); 4];
        let users = vec![(Some(long.as_str()), u32::MAX, Data::Null); 4];
        let id = Data::Text(long.clone());
        let ops = [
            ServerOp::Welcome {
                conn: u64::MAX,
                user: Some(&long),
                exp: Some(u64::MAX),
            },
            ServerOp::Unsubscribed {
                room: "r",
                reason: Some(&long),
                id: None,
            },
            ServerOp::Join {
                room: "r",
                conn: u64::MAX,
                user: Some(&long),
                info: &info,
            },
            ServerOp::Presence {
                room: "r",
                members: &members,
                id: None,
            },
            ServerOp::PresenceByUser {
                room: "r",
                users: &users,
                id: None,
            },
            ServerOp::Refreshed {
                exp: u64::MAX,
                id: Some(&id),
            },
        ];
        for op in ops {
            for format in [Format::Json, Format::Cbor] {
                let len = encode_server(&op, format).len();
                assert!(len <= server_size_hint(&op), "{op:?} {format:?}: {len}");
            }
        }
        let refresh = ClientOp::Refresh {
            token: "t".repeat(8192),
        };
        for format in [Format::Json, Format::Cbor] {
            assert!(encode_client(&refresh, format).len() <= client_size_hint(&refresh));
        }
    }
}
