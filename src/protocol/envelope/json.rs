//! JSON encoding: server and client frames written straight into a `Vec<u8>` (`"op"` first),
//! payload data through serde_json with the mapping of [`data_to_json`](super::data_to_json).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{untag_ref, ClientOp, Data, EncodeError, ServerOp, RATE_LIMITED_REASON};

pub(super) fn json_server(op: &ServerOp<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    json_open(out, op.name());
    match *op {
        ServerOp::Welcome { conn, user, exp } => json_welcome(out, conn, user, exp),
        ServerOp::Subscribed {
            room,
            seq,
            epoch,
            recovered,
            id,
        } => {
            json_subscribed(out, room, seq, epoch, recovered);
            json_opt_id(out, id)?;
        }
        ServerOp::Unsubscribed { room, reason, id } => {
            json_room(out, room);
            json_opt_entry_str(out, "reason", reason);
            json_opt_id(out, id)?;
        }
        ServerOp::Message {
            room,
            seq,
            from,
            data,
        } => json_message(out, room, seq, from, data)?,
        ServerOp::Join {
            room,
            conn,
            user,
            info,
        }
        | ServerOp::Leave {
            room,
            conn,
            user,
            info,
        } => json_join_leave(out, room, conn, user, info)?,
        ServerOp::Presence { room, members, id } => {
            json_presence(out, room, members)?;
            json_opt_id(out, id)?;
        }
        ServerOp::PresenceByUser { room, users, id } => {
            json_presence_by_user(out, room, users)?;
            json_opt_id(out, id)?;
        }
        ServerOp::History {
            room,
            epoch,
            messages,
            complete,
            id,
        } => {
            json_history(out, room, epoch, messages, complete)?;
            json_opt_id(out, id)?;
        }
        ServerOp::Ack { id, seq } => json_ack(out, id, seq)?,
        ServerOp::Refreshed { exp, id } => {
            json_key(out, "exp");
            json_u64(out, exp);
            json_opt_id(out, id)?;
        }
        ServerOp::Error { code, reason, id } => json_error(out, code, reason, id)?,
        ServerOp::Reconnect { after_ms } => {
            json_key(out, "after_ms");
            json_u64(out, after_ms);
        }
        ServerOp::RateLimited { retry_after_ms, id } => {
            json_key(out, "code");
            json_str(out, "rate_limited");
            json_key(out, "reason");
            json_str(out, RATE_LIMITED_REASON);
            json_key(out, "retry_after_ms");
            json_u64(out, retry_after_ms);
            json_opt_id(out, id)?;
        }
    }
    out.push(b'}');
    Ok(())
}

/// The fields of `welcome` after `op`.
fn json_welcome(out: &mut Vec<u8>, conn: u64, user: Option<&str>, exp: Option<u64>) {
    json_key(out, "conn");
    json_u64(out, conn);
    json_opt_entry_str(out, "user", user);
    if let Some(exp) = exp {
        json_key(out, "exp");
        json_u64(out, exp);
    }
}

/// The fields of `subscribed` after `op`.
fn json_subscribed(out: &mut Vec<u8>, room: &str, seq: u64, epoch: u64, recovered: bool) {
    json_room(out, room);
    json_key(out, "seq");
    json_u64(out, seq);
    json_key(out, "epoch");
    json_u64(out, epoch);
    json_key(out, "recovered");
    json_bool(out, recovered);
}

/// The fields of `message` after `op`.
fn json_message(
    out: &mut Vec<u8>,
    room: &str,
    seq: u64,
    from: Option<u64>,
    data: &Data,
) -> Result<(), EncodeError> {
    json_room(out, room);
    json_key(out, "seq");
    json_u64(out, seq);
    json_key(out, "from");
    json_opt_u64(out, from);
    json_key(out, "data");
    json_payload_and_enc(out, data)
}

/// The fields of `join` or `leave` after `op`.
fn json_join_leave(
    out: &mut Vec<u8>,
    room: &str,
    conn: u64,
    user: Option<&str>,
    info: &Data,
) -> Result<(), EncodeError> {
    json_room(out, room);
    json_key(out, "conn");
    json_u64(out, conn);
    json_opt_entry_str(out, "user", user);
    json_key(out, "info");
    json_payload_and_enc(out, info)
}

/// The fields of `presence` after `op`.
fn json_presence(
    out: &mut Vec<u8>,
    room: &str,
    members: &[(u64, Option<&str>, Data)],
) -> Result<(), EncodeError> {
    json_room(out, room);
    json_key(out, "members");
    out.push(b'[');
    for (i, (conn, user, info)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"conn\":");
        json_u64(out, *conn);
        json_opt_entry_str(out, "user", *user);
        json_key(out, "info");
        json_payload_and_enc(out, info)?;
        out.push(b'}');
    }
    out.push(b']');
    Ok(())
}

/// The fields of `presence` with `"by":"user"` after `op`.
fn json_presence_by_user(
    out: &mut Vec<u8>,
    room: &str,
    users: &[(Option<&str>, u32, Data)],
) -> Result<(), EncodeError> {
    json_room(out, room);
    json_key(out, "by");
    json_str(out, "user");
    json_key(out, "members");
    out.push(b'[');
    for (i, (user, connections, info)) in users.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"user\":");
        match user {
            Some(user) => json_str(out, user),
            None => out.extend_from_slice(b"null"),
        }
        json_key(out, "connections");
        json_u64(out, u64::from(*connections));
        json_key(out, "info");
        json_payload_and_enc(out, info)?;
        out.push(b'}');
    }
    out.push(b']');
    Ok(())
}

/// The fields of `history` after `op`.
fn json_history(
    out: &mut Vec<u8>,
    room: &str,
    epoch: u64,
    messages: &[(u64, Option<u64>, Data)],
    complete: bool,
) -> Result<(), EncodeError> {
    json_room(out, room);
    json_key(out, "epoch");
    json_u64(out, epoch);
    json_key(out, "messages");
    out.push(b'[');
    for (i, (seq, from, data)) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"seq\":");
        json_u64(out, *seq);
        json_key(out, "from");
        json_opt_u64(out, *from);
        json_key(out, "data");
        json_payload_and_enc(out, data)?;
        out.push(b'}');
    }
    out.push(b']');
    json_key(out, "complete");
    json_bool(out, complete);
    Ok(())
}

/// The fields of `ack` after `op`.
fn json_ack(out: &mut Vec<u8>, id: &Data, seq: u64) -> Result<(), EncodeError> {
    json_key(out, "id");
    let enc = json_payload(out, id)?;
    json_key(out, "seq");
    json_u64(out, seq);
    json_enc(out, enc);
    Ok(())
}

/// The fields of `error` after `op`.
fn json_error(
    out: &mut Vec<u8>,
    code: &str,
    reason: &str,
    id: Option<&Data>,
) -> Result<(), EncodeError> {
    json_key(out, "code");
    json_str(out, code);
    json_key(out, "reason");
    json_str(out, reason);
    json_opt_id(out, id)
}

/// `,"id":ID` (and its `enc` marker, last) when there is an id.
fn json_opt_id(out: &mut Vec<u8>, id: Option<&Data>) -> Result<(), EncodeError> {
    if let Some(id) = id {
        json_key(out, "id");
        json_payload_and_enc(out, id)?;
    }
    Ok(())
}

pub(super) fn json_client(op: &ClientOp, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    json_open(out, op.name());
    if let Some(room) = op.room() {
        json_room(out, room);
    }
    match op {
        ClientOp::Subscribe {
            since,
            epoch,
            presence,
            ..
        } => {
            if let Some(since) = since {
                json_key(out, "since");
                json_u64(out, *since);
            }
            if let Some(epoch) = epoch {
                json_key(out, "epoch");
                json_u64(out, *epoch);
            }
            if *presence {
                json_key(out, "presence");
                json_bool(out, true);
            }
        }
        ClientOp::Publish { data, id, .. } => {
            json_key(out, "data");
            let enc = json_payload(out, data)?;
            if let Some(id) = id {
                json_key(out, "id");
                json_data(out, id)?;
            }
            json_enc(out, enc);
        }
        ClientOp::History { since, limit, .. } => {
            if let Some(since) = since {
                json_key(out, "since");
                json_u64(out, *since);
            }
            if let Some(limit) = limit {
                json_key(out, "limit");
                json_u64(out, u64::from(*limit));
            }
        }
        ClientOp::Presence { by_user, .. } => {
            if *by_user {
                json_key(out, "by");
                json_str(out, "user");
            }
        }
        ClientOp::Refresh { token } => {
            json_key(out, "token");
            json_str(out, token);
        }
        ClientOp::Unsubscribe { .. } => {}
    }
    out.push(b'}');
    Ok(())
}

/// `{"op":"NAME"` (op names are fixed ASCII words).
fn json_open(out: &mut Vec<u8>, op: &str) {
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(op.as_bytes());
    out.push(b'"');
}

/// `,"KEY":` (keys are fixed ASCII words).
fn json_key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

fn json_room(out: &mut Vec<u8>, room: &str) {
    json_key(out, "room");
    json_str(out, room);
}

/// `,"KEY":"VALUE"` when there is a value, nothing otherwise.
fn json_opt_entry_str(out: &mut Vec<u8>, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        json_key(out, key);
        json_str(out, value);
    }
}

fn json_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn json_opt_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => json_u64(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// A JSON string, escaped the way serde_json escapes (`"`, `\`, and control characters).
fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Base64 text of `bytes`, written straight into `out`.
fn json_base64(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), EncodeError> {
    let len = base64::encoded_len(bytes.len(), true).ok_or(EncodeError::Base64)?;
    out.push(b'"');
    let at = out.len();
    out.resize(at + len, 0);
    let written = BASE64
        .encode_slice(bytes, &mut out[at..])
        .map_err(|_| EncodeError::Base64)?;
    out.truncate(at + written);
    out.push(b'"');
    Ok(())
}

/// A payload field's value; returns whether it was a byte string written as base64.
fn json_payload(out: &mut Vec<u8>, data: &Data) -> Result<bool, EncodeError> {
    match untag_ref(data) {
        Data::Bytes(bytes) => {
            json_base64(out, bytes)?;
            Ok(true)
        }
        Data::Text(text) => {
            json_str(out, text);
            Ok(false)
        }
        other => {
            json_data(out, other)?;
            Ok(false)
        }
    }
}

/// `,"enc":"base64"` if `enc`.
fn json_enc(out: &mut Vec<u8>, enc: bool) {
    if enc {
        out.extend_from_slice(b",\"enc\":\"base64\"");
    }
}

/// A payload field followed by its `enc` marker (the last entry of its map).
fn json_payload_and_enc(out: &mut Vec<u8>, data: &Data) -> Result<(), EncodeError> {
    let enc = json_payload(out, data)?;
    json_enc(out, enc);
    Ok(())
}

/// Any value, through serde_json, with the JSON mapping of [`data_to_json`](super::data_to_json).
pub(super) fn json_data(out: &mut Vec<u8>, data: &Data) -> Result<(), EncodeError> {
    serde_json::to_writer(&mut *out, &JsonData(data))?;
    Ok(())
}

/// Serializes a [`Data`] the way [`data_to_json`](super::data_to_json) converts it, without
/// building the JSON value.
struct JsonData<'a>(&'a Data);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match untag_ref(self.0) {
            Data::Null => s.serialize_unit(),
            Data::Bool(b) => s.serialize_bool(*b),
            Data::Integer(n) => {
                let n = i128::from(*n);
                if let Ok(u) = u64::try_from(n) {
                    s.serialize_u64(u)
                } else if let Ok(i) = i64::try_from(n) {
                    s.serialize_i64(i)
                } else {
                    s.serialize_f64(n as f64)
                }
            }
            Data::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Data::Float(_) => s.serialize_unit(),
            Data::Text(t) => s.serialize_str(t),
            Data::Bytes(b) => s.serialize_str(&BASE64.encode(b)),
            Data::Array(items) => s.collect_seq(items.iter().map(JsonData)),
            Data::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    match untag_ref(k) {
                        Data::Text(k) => map.serialize_entry(k.as_str(), &JsonData(v))?,
                        other => map.serialize_entry(&json_key_text(other), &JsonData(v))?,
                    }
                }
                map.end()
            }
            // `Value` is non-exhaustive; nothing else exists in ciborium 0.2.
            _ => s.serialize_unit(),
        }
    }
}

/// The text a non-text map key becomes in JSON: base64 for bytes, else its compact JSON.
pub(super) fn json_key_text(key: &Data) -> String {
    match untag_ref(key) {
        Data::Text(t) => t.clone(),
        Data::Bytes(b) => BASE64.encode(b),
        other => serde_json::to_string(&JsonData(other)).unwrap_or_else(|_| String::from("null")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{cbor_bytes, cbor_value, int, json_text, map, text};
    use super::super::{
        decode_client, encode_client, encode_server, ClientOp, EnvelopeError, Format,
    };
    use super::*;

    #[test]
    fn server_ops_json_text() {
        let data = map(&[("text", text("hi"))]);
        let info = map(&[("name", text("ada"))]);
        let members = [(12, None, info.clone()), (15, None, Data::Null)];
        let messages = [
            (21, Some(12), data.clone()),
            (22, None, Data::Bytes(vec![0, 1, 2])),
        ];
        let id = int(7);
        let quoted = text("a\"b");
        let cases: Vec<(ServerOp<'_>, &str)> = vec![
            (
                ServerOp::Welcome {
                    conn: 12,
                    user: None,
                    exp: None,
                },
                r#"{"op":"welcome","conn":12}"#,
            ),
            (
                ServerOp::Subscribed {
                    room: "chat:42",
                    seq: 20,
                    epoch: 3,
                    recovered: true,
                    id: None,
                },
                r#"{"op":"subscribed","room":"chat:42","seq":20,"epoch":3,"recovered":true}"#,
            ),
            (
                ServerOp::Subscribed {
                    room: "r",
                    seq: 0,
                    epoch: u64::MAX,
                    recovered: false,
                    id: None,
                },
                r#"{"op":"subscribed","room":"r","seq":0,"epoch":18446744073709551615,"recovered":false}"#,
            ),
            (
                ServerOp::Message {
                    room: "chat:42",
                    seq: 21,
                    from: Some(12),
                    data: &data,
                },
                r#"{"op":"message","room":"chat:42","seq":21,"from":12,"data":{"text":"hi"}}"#,
            ),
            (
                ServerOp::Message {
                    room: "r",
                    seq: 1,
                    from: None,
                    data: &quoted,
                },
                r#"{"op":"message","room":"r","seq":1,"from":null,"data":"a\"b"}"#,
            ),
            (
                ServerOp::Join {
                    room: "chat:42",
                    conn: 12,
                    user: None,
                    info: &info,
                },
                r#"{"op":"join","room":"chat:42","conn":12,"info":{"name":"ada"}}"#,
            ),
            (
                ServerOp::Leave {
                    room: "chat:42",
                    conn: 12,
                    user: None,
                    info: &Data::Null,
                },
                r#"{"op":"leave","room":"chat:42","conn":12,"info":null}"#,
            ),
            (
                ServerOp::Presence {
                    room: "chat:42",
                    members: &members,
                    id: None,
                },
                r#"{"op":"presence","room":"chat:42","members":[{"conn":12,"info":{"name":"ada"}},{"conn":15,"info":null}]}"#,
            ),
            (
                ServerOp::Presence {
                    room: "r",
                    members: &[],
                    id: None,
                },
                r#"{"op":"presence","room":"r","members":[]}"#,
            ),
            (
                ServerOp::History {
                    room: "chat:42",
                    epoch: 3,
                    messages: &messages,
                    complete: true,
                    id: None,
                },
                r#"{"op":"history","room":"chat:42","epoch":3,"messages":[{"seq":21,"from":12,"data":{"text":"hi"}},{"seq":22,"from":null,"data":"AAEC","enc":"base64"}],"complete":true}"#,
            ),
            (
                ServerOp::History {
                    room: "r",
                    epoch: 0,
                    messages: &[],
                    complete: false,
                    id: None,
                },
                r#"{"op":"history","room":"r","epoch":0,"messages":[],"complete":false}"#,
            ),
            (
                ServerOp::Ack { id: &id, seq: 21 },
                r#"{"op":"ack","id":7,"seq":21}"#,
            ),
            (
                ServerOp::Error {
                    code: "bad_room",
                    reason: "no \"such\"\troom",
                    id: Some(&id),
                },
                r#"{"op":"error","code":"bad_room","reason":"no \"such\"\troom","id":7}"#,
            ),
            (
                ServerOp::Error {
                    code: "bad_frame",
                    reason: "frame is not a map",
                    id: None,
                },
                r#"{"op":"error","code":"bad_frame","reason":"frame is not a map"}"#,
            ),
        ];
        for (op, expected) in cases {
            let got = json_text(&op);
            assert_eq!(got, expected);
            // Valid JSON with "op" first.
            let v: serde_json::Value = serde_json::from_str(&got).unwrap();
            assert_eq!(v["op"], op.name());
            assert!(got.starts_with(&format!("{{\"op\":\"{}\"", op.name())));
        }
    }

    #[test]
    fn bytes_in_json() {
        let bytes = Data::Bytes(vec![0xde, 0xad, 0xbe, 0xef, 0x00]);
        let tagged = Data::Tag(42, Box::new(bytes.clone()));
        assert_eq!(
            json_text(&ServerOp::Message {
                room: "r",
                seq: 1,
                from: Some(2),
                data: &bytes
            }),
            r#"{"op":"message","room":"r","seq":1,"from":2,"data":"3q2+7wA=","enc":"base64"}"#
        );
        // A tag around the payload is dropped first.
        assert_eq!(
            json_text(&ServerOp::Message {
                room: "r",
                seq: 1,
                from: Some(2),
                data: &tagged
            }),
            r#"{"op":"message","room":"r","seq":1,"from":2,"data":"3q2+7wA=","enc":"base64"}"#
        );
        // Nested bytes: base64 without a marker.
        let nested = map(&[("blob", bytes.clone())]);
        assert_eq!(
            json_text(&ServerOp::Message {
                room: "r",
                seq: 1,
                from: None,
                data: &nested
            }),
            r#"{"op":"message","room":"r","seq":1,"from":null,"data":{"blob":"3q2+7wA="}}"#
        );
        assert_eq!(
            json_text(&ServerOp::Join {
                room: "r",
                conn: 1,
                user: None,
                info: &bytes
            }),
            r#"{"op":"join","room":"r","conn":1,"info":"3q2+7wA=","enc":"base64"}"#
        );
        let members = [(1, None, bytes.clone()), (2, None, text("x"))];
        assert_eq!(
            json_text(&ServerOp::Presence {
                room: "r",
                members: &members,
                id: None
            }),
            r#"{"op":"presence","room":"r","members":[{"conn":1,"info":"3q2+7wA=","enc":"base64"},{"conn":2,"info":"x"}]}"#
        );
        assert_eq!(
            json_text(&ServerOp::Ack { id: &bytes, seq: 9 }),
            r#"{"op":"ack","id":"3q2+7wA=","seq":9,"enc":"base64"}"#
        );
        assert_eq!(
            json_text(&ServerOp::Error {
                code: "c",
                reason: "r",
                id: Some(&bytes)
            }),
            r#"{"op":"error","code":"c","reason":"r","id":"3q2+7wA=","enc":"base64"}"#
        );
        let empty = Data::Bytes(vec![]);
        assert_eq!(
            json_text(&ServerOp::Message {
                room: "r",
                seq: 1,
                from: None,
                data: &empty
            }),
            r#"{"op":"message","room":"r","seq":1,"from":null,"data":"","enc":"base64"}"#
        );
        // CBOR never says enc.
        let cbor = cbor_value(&encode_server(
            &ServerOp::Message {
                room: "r",
                seq: 1,
                from: None,
                data: &bytes,
            },
            Format::Cbor,
        ));
        assert_eq!(
            cbor,
            map(&[
                ("op", text("message")),
                ("room", text("r")),
                ("seq", int(1)),
                ("from", Data::Null),
                ("data", bytes.clone())
            ])
        );

        // Client side: enc on publish, in both formats.
        let publish = |data: Data, enc: Data| {
            map(&[
                ("op", text("publish")),
                ("room", text("r")),
                ("data", data),
                ("enc", enc),
            ])
        };
        let expect = Ok(ClientOp::Publish {
            room: "r".into(),
            data: bytes.clone(),
            id: None,
        });
        assert_eq!(
            decode_client(
                br#"{"op":"publish","room":"r","data":"3q2+7wA=","enc":"base64"}"#,
                Format::Json
            ),
            expect
        );
        assert_eq!(
            decode_client(
                &cbor_bytes(&publish(text("3q2+7wA="), text("base64"))),
                Format::Cbor
            ),
            expect
        );
        for (frame, field) in [
            (
                &br#"{"op":"publish","room":"r","data":"3q2+7wA","enc":"base64"}"#[..],
                "data",
            ),
            (
                br#"{"op":"publish","room":"r","data":"!!!!","enc":"base64"}"#,
                "data",
            ),
            (
                br#"{"op":"publish","room":"r","data":[1],"enc":"base64"}"#,
                "data",
            ),
            (
                br#"{"op":"publish","room":"r","data":"AA==","enc":"hex"}"#,
                "enc",
            ),
            (
                br#"{"op":"publish","room":"r","data":"AA==","enc":1}"#,
                "enc",
            ),
        ] {
            match decode_client(frame, Format::Json) {
                Err(EnvelopeError::BadField { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{other:?} for {}", String::from_utf8_lossy(frame)),
            }
        }
        // "enc": null means no encoding.
        assert_eq!(
            decode_client(
                br#"{"op":"publish","room":"r","data":"AA==","enc":null}"#,
                Format::Json
            ),
            Ok(ClientOp::Publish {
                room: "r".into(),
                data: text("AA=="),
                id: None
            })
        );
    }

    #[test]
    fn auth_fields_json_text() {
        let info = map(&[("name", text("ada"))]);
        let bytes = Data::Bytes(vec![0xde, 0xad, 0xbe, 0xef, 0x00]);
        let id = text("r-1");
        let members = [
            (12, Some("ada"), info.clone()),
            (15, None, Data::Null),
            (16, Some("a\"b"), bytes.clone()),
        ];
        let users = [
            (Some("ada"), 2, info.clone()),
            (None, 1, Data::Null),
            (Some("bob"), u32::MAX, bytes.clone()),
        ];
        let cases: Vec<(ServerOp<'_>, &str)> = vec![
            (
                ServerOp::Welcome {
                    conn: 12,
                    user: Some("ada"),
                    exp: Some(1_767_225_600),
                },
                r#"{"op":"welcome","conn":12,"user":"ada","exp":1767225600}"#,
            ),
            (
                ServerOp::Welcome {
                    conn: 12,
                    user: Some("ada"),
                    exp: None,
                },
                r#"{"op":"welcome","conn":12,"user":"ada"}"#,
            ),
            (
                ServerOp::Welcome {
                    conn: 1,
                    user: None,
                    exp: Some(u64::MAX),
                },
                r#"{"op":"welcome","conn":1,"exp":18446744073709551615}"#,
            ),
            (
                ServerOp::Welcome {
                    conn: 1,
                    user: Some("\u{1}é\n"),
                    exp: None,
                },
                r#"{"op":"welcome","conn":1,"user":"\u0001é\n"}"#,
            ),
            (
                ServerOp::Unsubscribed {
                    room: "chat:42",
                    reason: None,
                    id: None,
                },
                r#"{"op":"unsubscribed","room":"chat:42"}"#,
            ),
            (
                ServerOp::Unsubscribed {
                    room: "chat:42",
                    reason: Some("forbidden"),
                    id: None,
                },
                r#"{"op":"unsubscribed","room":"chat:42","reason":"forbidden"}"#,
            ),
            (
                ServerOp::Join {
                    room: "r",
                    conn: 15,
                    user: Some("ada"),
                    info: &info,
                },
                r#"{"op":"join","room":"r","conn":15,"user":"ada","info":{"name":"ada"}}"#,
            ),
            (
                ServerOp::Leave {
                    room: "r",
                    conn: 15,
                    user: Some("ada"),
                    info: &bytes,
                },
                r#"{"op":"leave","room":"r","conn":15,"user":"ada","info":"3q2+7wA=","enc":"base64"}"#,
            ),
            (
                ServerOp::Presence {
                    room: "r",
                    members: &members,
                    id: None,
                },
                r#"{"op":"presence","room":"r","members":[{"conn":12,"user":"ada","info":{"name":"ada"}},{"conn":15,"info":null},{"conn":16,"user":"a\"b","info":"3q2+7wA=","enc":"base64"}]}"#,
            ),
            (
                ServerOp::PresenceByUser {
                    room: "r",
                    users: &users,
                    id: None,
                },
                r#"{"op":"presence","room":"r","by":"user","members":[{"user":"ada","connections":2,"info":{"name":"ada"}},{"user":null,"connections":1,"info":null},{"user":"bob","connections":4294967295,"info":"3q2+7wA=","enc":"base64"}]}"#,
            ),
            (
                ServerOp::PresenceByUser {
                    room: "r",
                    users: &[],
                    id: None,
                },
                r#"{"op":"presence","room":"r","by":"user","members":[]}"#,
            ),
            (
                ServerOp::Refreshed {
                    exp: 1_767_229_200,
                    id: None,
                },
                r#"{"op":"refreshed","exp":1767229200}"#,
            ),
            (
                ServerOp::Refreshed {
                    exp: 0,
                    id: Some(&id),
                },
                r#"{"op":"refreshed","exp":0,"id":"r-1"}"#,
            ),
            (
                ServerOp::Refreshed {
                    exp: 5,
                    id: Some(&bytes),
                },
                r#"{"op":"refreshed","exp":5,"id":"3q2+7wA=","enc":"base64"}"#,
            ),
        ];
        for (op, expected) in cases {
            let got = json_text(&op);
            assert_eq!(got, expected);
            let v: serde_json::Value = serde_json::from_str(&got).unwrap();
            assert_eq!(v["op"], op.name());
        }
        // Client side: the new and changed ops, as encode_client writes them.
        for (op, expected) in [
            (
                ClientOp::Presence {
                    room: "r".into(),
                    by_user: false,
                },
                r#"{"op":"presence","room":"r"}"#,
            ),
            (
                ClientOp::Presence {
                    room: "r".into(),
                    by_user: true,
                },
                r#"{"op":"presence","room":"r","by":"user"}"#,
            ),
            (
                ClientOp::Refresh {
                    token: "a.b\"c".into(),
                },
                r#"{"op":"refresh","token":"a.b\"c"}"#,
            ),
        ] {
            let got = encode_client(&op, Format::Json);
            assert_eq!(String::from_utf8(got.clone()).unwrap(), expected);
            assert_eq!(decode_client(&got, Format::Json), Ok(op));
        }
    }

    #[test]
    fn json_strings_are_escaped_like_serde_json() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€𝄞\u{7f}\u{2028}");
        for s in [
            all.as_str(),
            "",
            "plain",
            "\"",
            "\\\\",
            "a\u{0}b",
            "tab\tand\nnewline",
            "\u{1f}\u{8}\u{c}",
        ] {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }
}
