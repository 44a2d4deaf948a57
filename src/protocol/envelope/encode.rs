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

/// Encode a client frame (for tests, load generators and client libraries).
pub fn encode_client(op: &ClientOp, format: Format) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + op.room().len());
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

/// A first guess at a server frame's size, so most frames are written without regrowing.
fn server_size_hint(op: &ServerOp<'_>) -> usize {
    fn data_hint(data: &Data) -> usize {
        match data {
            Data::Bytes(b) => b.len() / 3 * 4 + 8,
            Data::Text(t) => t.len() + 8,
            Data::Array(a) => 8 + a.len() * 8,
            Data::Map(m) => 8 + m.len() * 16,
            _ => 24,
        }
    }
    64 + match op {
        ServerOp::Welcome { .. } => 0,
        ServerOp::Subscribed { room, .. } | ServerOp::Unsubscribed { room } => room.len(),
        ServerOp::Message { room, data, .. } => room.len() + data_hint(data),
        ServerOp::Join { room, info, .. } | ServerOp::Leave { room, info, .. } => {
            room.len() + data_hint(info)
        }
        ServerOp::Presence { room, members } => {
            room.len()
                + members
                    .iter()
                    .map(|(_, i)| 32 + data_hint(i))
                    .sum::<usize>()
        }
        ServerOp::History { room, messages, .. } => {
            room.len()
                + messages
                    .iter()
                    .map(|(_, _, d)| 48 + data_hint(d))
                    .sum::<usize>()
        }
        ServerOp::Ack { id, .. } => data_hint(id),
        ServerOp::Error { reason, id, .. } => reason.len() + id.map_or(0, data_hint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_server_into_appends() {
        let mut out = vec![0xAA, 0xBB];
        encode_server_into(&ServerOp::Welcome { conn: 1 }, Format::Json, &mut out);
        assert_eq!(out, b"\xAA\xBB{\"op\":\"welcome\",\"conn\":1}");
    }
}
