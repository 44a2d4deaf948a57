//! `envelope_json`, `envelope_cbor`: the envelope protocol's client frame decoders
//! (`protocol::envelope::decode_request`, `decode_client`) and the server frames a decoded frame
//! leads to.
//!
//! Input: one client frame's payload (the whole WebSocket message) in the target's format.
//!
//! Properties: no panic; `decode_client` and `decode_request` agree; a decoded op names a valid
//! room (when it has one) and a `refresh` token within its limit; re-encoding the op as a client
//! frame decodes to the same op. What the daemon then sends must be well-formed in every format a
//! subscriber may speak: a publish's `message` (JSON, CBOR: one item, a map whose `op` is
//! `"message"`, never the `internal` fallback) which `mark_gap` can always mark, its raw-client
//! form, the `ack` echoing the id, and the `error` frame (with the id) for a rejected frame.

use shardcast::protocol::envelope::{
    data_to_raw, decode_client, decode_request, encode_client, encode_server, mark_gap, ClientOp,
    Data, Format, GapMark, ServerOp, MAX_TOKEN_BYTES,
};
use shardcast::protocol::room_name::valid_room_name;

/// The `envelope_json` target.
pub fn envelope_json(data: &[u8]) {
    envelope(data, Format::Json);
}

/// The `envelope_cbor` target.
pub fn envelope_cbor(data: &[u8]) {
    envelope(data, Format::Cbor);
}

fn envelope(payload: &[u8], format: Format) {
    let request = decode_request(payload, format);
    let client = decode_client(payload, format);
    // Debug text, not `==`: a NaN in the data is not equal to itself.
    match (&request, &client) {
        (Ok((op, _)), Ok(same)) => assert_eq!(format!("{op:?}"), format!("{same:?}")),
        (Err(rejected), Err(error)) => assert_eq!(&rejected.error, error),
        _ => panic!("decode_request {request:?} but decode_client {client:?}"),
    }
    match request {
        Ok((op, id)) => {
            check_op(&op, format);
            if let ClientOp::Publish { room, data, .. } = &op {
                fan_out(room, data);
            }
            if let Some(id) = &id {
                // The ack goes back to the publisher, in its own format.
                let ack = ServerOp::Ack {
                    id,
                    seq: 1,
                    duplicate: false,
                };
                check_server(&encode_server(&ack, format), format, "ack");
            }
        }
        Err(rejected) => {
            let (code, reason) = (rejected.error.code(), rejected.error.to_string());
            let _ = rejected.error.as_str();
            let error = ServerOp::Error {
                code,
                reason: &reason,
                id: rejected.id.as_ref(),
            };
            let frame = encode_server(&error, format);
            let map = check_server(&frame, format, "error");
            assert!(lookup(&map, "code") == Some(&Data::Text(code.into())));
        }
    }
}

fn check_op(op: &ClientOp, format: Format) {
    let _ = op.name();
    if let Some(room) = op.room() {
        assert!(valid_room_name(room), "room {room:?}");
    }
    if let ClientOp::Refresh { token } = op {
        assert!(token.len() <= MAX_TOKEN_BYTES);
    }
    let again = encode_client(op, format);
    match decode_client(&again, format) {
        Ok(back) => assert_eq!(format!("{op:?}"), format!("{back:?}"), "client re-encoding"),
        Err(e) => panic!("re-encoded {op:?} does not decode: {e:?}"),
    }
}

/// A publish as every kind of subscriber receives it.
fn fan_out(room: &str, data: &Data) {
    let message = ServerOp::Message {
        room,
        seq: 7,
        from: Some(3),
        data,
    };
    for format in [Format::Json, Format::Cbor] {
        let frame = encode_server(&message, format);
        check_server(&frame, format, "message");
        match mark_gap(&frame, format) {
            GapMark::Marked(marked) => {
                let map = check_server(&marked, format, "message");
                assert!(
                    lookup(&map, "gap") == Some(&Data::Bool(true)),
                    "gap not marked"
                );
            }
            other => panic!("mark_gap on our own message: {other:?}"),
        }
    }
    let _ = data_to_raw(data);
}

/// A server frame parses in `format` as one map whose `op` is `op`; returns the map.
fn check_server(frame: &[u8], format: Format, op: &str) -> Data {
    let value = match format {
        Format::Json => {
            let v: serde_json::Value = serde_json::from_slice(frame).unwrap_or_else(|e| {
                panic!(
                    "server JSON does not parse: {e}: {}",
                    String::from_utf8_lossy(frame)
                )
            });
            shardcast::protocol::envelope::data_from_json(v)
        }
        Format::Cbor => {
            let mut rest = frame;
            let v: Data = ciborium::de::from_reader(&mut rest)
                .unwrap_or_else(|e| panic!("server CBOR does not parse: {e:?}: {frame:02x?}"));
            assert!(rest.is_empty(), "bytes after the server's CBOR item");
            v
        }
    };
    assert!(
        lookup(&value, "op") == Some(&Data::Text(op.into())),
        "expected op {op}: {value:?}"
    );
    value
}

fn lookup<'a>(map: &'a Data, key: &str) -> Option<&'a Data> {
    let Data::Map(entries) = map else {
        return None;
    };
    entries
        .iter()
        .find(|(k, _)| matches!(k, Data::Text(t) if t == key))
        .map(|(_, v)| v)
}
