//! Decoding client frames: parse the payload in the connection's format, collect the known
//! fields in one pass, then check them (see the module docs for the rules).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::super::room_name::valid_room_name;
use super::{
    untag, untag_ref, ClientOp, Data, EnvelopeError, Format, Rejected, ENC_BASE64, MAX_DEPTH,
    MAX_TOKEN_BYTES,
};

/// An op name (as sent by a client) longer than this is cut in [`EnvelopeError::UnknownOp`].
const MAX_REPORTED_OP: usize = 32;

/// Decode one client frame (a whole message payload) in `format`.
pub fn decode_client(payload: &[u8], format: Format) -> Result<ClientOp, EnvelopeError> {
    decode_client_with_id(payload, format).map_err(|r| r.error)
}

/// [`decode_client`], but a rejection also returns the frame's `id` (for the `error` frame).
pub fn decode_client_with_id(payload: &[u8], format: Format) -> Result<ClientOp, Rejected> {
    decode_request(payload, format).map(|(op, _)| op)
}

/// Decode one client frame and also return its `id` (any op may carry one; the daemon echoes it
/// in an `error` about the request, and `publish` keeps it for the `ack`).
pub fn decode_request(
    payload: &[u8],
    format: Format,
) -> Result<(ClientOp, Option<Data>), Rejected> {
    let no_id = |error| Rejected { error, id: None };
    let entries = match untag(parse(payload, format).map_err(no_id)?) {
        Data::Map(entries) => entries,
        _ => return Err(no_id(EnvelopeError::NotAMap)),
    };
    let mut fields = Fields::default();
    let mut first_error = None;
    for (key, value) in entries {
        let Data::Text(key) = key else { continue };
        if let Err(e) = fields.set(&key, value) {
            first_error.get_or_insert(e);
        }
    }
    let id = match fields.id.take() {
        Some(Data::Null) | None => None,
        Some(id) => Some(id),
    };
    let result = match first_error {
        Some(e) => Err(e),
        None => fields.into_op(),
    };
    match result {
        Ok(ClientOp::Publish { room, data, .. }) => Ok((
            ClientOp::Publish {
                room,
                data,
                id: id.clone(),
            },
            id,
        )),
        Ok(op) => Ok((op, id)),
        Err(error) => Err(Rejected { error, id }),
    }
}

fn parse(payload: &[u8], format: Format) -> Result<Data, EnvelopeError> {
    match format {
        Format::Json => {
            serde_json::from_slice::<Data>(payload).map_err(|_| EnvelopeError::Malformed(format))
        }
        Format::Cbor => {
            let mut rest = payload;
            let value: Data = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_DEPTH)
                .map_err(|_| EnvelopeError::Malformed(format))?;
            if rest.is_empty() {
                Ok(value)
            } else {
                Err(EnvelopeError::TrailingBytes)
            }
        }
    }
}

/// Whether every map inside `value` has scalar keys. A CBOR map key may be an array or a map;
/// in JSON it becomes its compact JSON text, escaped as a string, so keys nested in keys would
/// double in size at each level (a 4 KiB frame could expand past any memory): refused instead.
fn scalar_keys(value: &Data) -> bool {
    match untag_ref(value) {
        Data::Array(items) => items.iter().all(scalar_keys),
        Data::Map(entries) => entries
            .iter()
            .all(|(k, v)| !matches!(untag_ref(k), Data::Array(_) | Data::Map(_)) && scalar_keys(v)),
        _ => true,
    }
}

/// The known keys of a client frame, collected in one pass.
#[derive(Default)]
struct Fields {
    op: Option<Data>,
    room: Option<Data>,
    since: Option<Data>,
    epoch: Option<Data>,
    presence: Option<Data>,
    data: Option<Data>,
    id: Option<Data>,
    limit: Option<Data>,
    enc: Option<Data>,
    by: Option<Data>,
    token: Option<Data>,
}

impl Fields {
    fn set(&mut self, key: &str, value: Data) -> Result<(), EnvelopeError> {
        let (slot, name) = match key {
            "op" => (&mut self.op, "op"),
            "room" => (&mut self.room, "room"),
            "since" => (&mut self.since, "since"),
            "epoch" => (&mut self.epoch, "epoch"),
            "presence" => (&mut self.presence, "presence"),
            "data" => (&mut self.data, "data"),
            "id" => (&mut self.id, "id"),
            "limit" => (&mut self.limit, "limit"),
            "enc" => (&mut self.enc, "enc"),
            "by" => (&mut self.by, "by"),
            "token" => (&mut self.token, "token"),
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err(EnvelopeError::DuplicateField(name));
        }
        if !scalar_keys(&value) {
            return Err(EnvelopeError::BadField {
                field: name,
                expected: "a value whose map keys are not arrays or maps",
            });
        }
        *slot = Some(value);
        Ok(())
    }

    /// Interpret the fields; a publish's `id` is filled in by the caller.
    fn into_op(self) -> Result<ClientOp, EnvelopeError> {
        let op = match self.op.map(untag) {
            None => return Err(EnvelopeError::MissingField("op")),
            Some(Data::Text(op)) => op,
            Some(_) => {
                return Err(EnvelopeError::BadField {
                    field: "op",
                    expected: "a string",
                })
            }
        };
        match op.as_str() {
            "subscribe" => Ok(ClientOp::Subscribe {
                room: room(self.room)?,
                since: opt_u64(self.since, "since")?,
                epoch: opt_u64(self.epoch, "epoch")?,
                presence: opt_bool(self.presence, "presence")?,
            }),
            "unsubscribe" => Ok(ClientOp::Unsubscribe {
                room: room(self.room)?,
            }),
            "publish" => Ok(ClientOp::Publish {
                room: room(self.room)?,
                data: publish_data(self.data, self.enc)?,
                id: None,
            }),
            "presence" => Ok(ClientOp::Presence {
                room: room(self.room)?,
                by_user: opt_by(self.by)?,
            }),
            "history" => Ok(ClientOp::History {
                room: room(self.room)?,
                since: opt_u64(self.since, "since")?,
                limit: opt_u32(self.limit, "limit")?,
            }),
            "refresh" => Ok(ClientOp::Refresh {
                token: token(self.token)?,
            }),
            _ => Err(EnvelopeError::UnknownOp(cut(op, MAX_REPORTED_OP))),
        }
    }
}

/// A publish's `data` (required, may be `null`), decoded from base64 when `enc` says so.
fn publish_data(data: Option<Data>, enc: Option<Data>) -> Result<Data, EnvelopeError> {
    let data = data.ok_or(EnvelopeError::MissingField("data"))?;
    if !opt_enc(enc)? {
        return Ok(data);
    }
    match untag(data) {
        Data::Text(text) => BASE64
            .decode(text.as_bytes())
            .map(Data::Bytes)
            .map_err(|_| EnvelopeError::BadField {
                field: "data",
                expected: "padded standard base64 when `enc` is \"base64\"",
            }),
        _ => Err(EnvelopeError::BadField {
            field: "data",
            expected: "a string when `enc` is \"base64\"",
        }),
    }
}

/// `s` cut to at most `max` bytes, at a char boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn room(value: Option<Data>) -> Result<String, EnvelopeError> {
    match value.map(untag) {
        None => Err(EnvelopeError::MissingField("room")),
        Some(Data::Text(room)) if valid_room_name(&room) => Ok(room),
        Some(Data::Text(_)) => Err(EnvelopeError::BadRoom),
        Some(_) => Err(EnvelopeError::BadField {
            field: "room",
            expected: "a string",
        }),
    }
}

fn opt_u64(value: Option<Data>, field: &'static str) -> Result<Option<u64>, EnvelopeError> {
    opt_uint(value, field, "an integer from 0 to 2^64-1")
}

fn opt_u32(value: Option<Data>, field: &'static str) -> Result<Option<u32>, EnvelopeError> {
    opt_uint(value, field, "an integer from 0 to 2^32-1")
}

/// An optional unsigned integer field (absent and `null` are the same).
fn opt_uint<T: TryFrom<ciborium::value::Integer>>(
    value: Option<Data>,
    field: &'static str,
    expected: &'static str,
) -> Result<Option<T>, EnvelopeError> {
    let bad = EnvelopeError::BadField { field, expected };
    match value.map(untag) {
        None | Some(Data::Null) => Ok(None),
        Some(Data::Integer(n)) => T::try_from(n).map(Some).map_err(|_| bad),
        Some(_) => Err(bad),
    }
}

fn opt_bool(value: Option<Data>, field: &'static str) -> Result<bool, EnvelopeError> {
    match value.map(untag) {
        None | Some(Data::Null) => Ok(false),
        Some(Data::Bool(b)) => Ok(b),
        Some(_) => Err(EnvelopeError::BadField {
            field,
            expected: "a boolean",
        }),
    }
}

/// `by` (of `presence`): absent/null or `"conn"` → false, `"user"` → true.
fn opt_by(value: Option<Data>) -> Result<bool, EnvelopeError> {
    match value.map(untag) {
        None | Some(Data::Null) => Ok(false),
        Some(Data::Text(by)) if by == "conn" => Ok(false),
        Some(Data::Text(by)) if by == "user" => Ok(true),
        Some(_) => Err(EnvelopeError::BadField {
            field: "by",
            expected: "\"conn\" or \"user\"",
        }),
    }
}

/// `token` (of `refresh`): required text of at most [`MAX_TOKEN_BYTES`] bytes.
fn token(value: Option<Data>) -> Result<String, EnvelopeError> {
    match value.map(untag) {
        None => Err(EnvelopeError::MissingField("token")),
        Some(Data::Text(token)) if token.len() <= MAX_TOKEN_BYTES => Ok(token),
        Some(_) => Err(EnvelopeError::BadField {
            field: "token",
            expected: "a string of at most 8192 bytes",
        }),
    }
}

/// `enc`: absent/null → false, `"base64"` → true.
fn opt_enc(value: Option<Data>) -> Result<bool, EnvelopeError> {
    match value.map(untag) {
        None | Some(Data::Null) => Ok(false),
        Some(Data::Text(enc)) if enc == ENC_BASE64 => Ok(true),
        Some(_) => Err(EnvelopeError::BadField {
            field: "enc",
            expected: "\"base64\"",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::cbor::cbor_text;
    use super::super::fixtures::{cbor_bytes, client_ops, int, map, text, DOC_CLIENT_EXAMPLES};
    use super::super::{data_from_json, data_to_json, encode_client};
    use super::*;

    #[test]
    fn client_ops_round_trip() {
        for format in [Format::Json, Format::Cbor] {
            for op in client_ops() {
                let bytes = encode_client(&op, format);
                assert_eq!(
                    decode_client(&bytes, format),
                    Ok(op.clone()),
                    "{format:?} {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }

    #[test]
    fn client_json_as_written_by_hand() {
        let cases: &[(&str, ClientOp)] = &[
            (
                r#" { "room" : "r", "op" : "subscribe", "since": 5, "epoch": null, "extra": [1, {"x": 2}] } "#,
                ClientOp::Subscribe {
                    room: "r".into(),
                    since: Some(5),
                    epoch: None,
                    presence: false,
                },
            ),
            (
                r#"{"op":"subscribe","room":"r","presence":false,"limit":"ignored here"}"#,
                ClientOp::Subscribe {
                    room: "r".into(),
                    since: None,
                    epoch: None,
                    presence: false,
                },
            ),
            (
                r#"{"op":"publish","room":"r","data":{"a":[1,-2,3.25,"x",null,true]},"id":null}"#,
                ClientOp::Publish {
                    room: "r".into(),
                    data: map(&[(
                        "a",
                        Data::Array(vec![
                            int(1),
                            int(-2),
                            Data::Float(3.25),
                            text("x"),
                            Data::Null,
                            Data::Bool(true),
                        ]),
                    )]),
                    id: None,
                },
            ),
            (
                r#"{"op":"publish","room":"r","data":"AAEC","enc":"base64","id":"m1"}"#,
                ClientOp::Publish {
                    room: "r".into(),
                    data: Data::Bytes(vec![0, 1, 2]),
                    id: Some(text("m1")),
                },
            ),
            (
                r#"{"op":"history","room":"r","limit":0}"#,
                ClientOp::History {
                    room: "r".into(),
                    since: None,
                    limit: Some(0),
                },
            ),
            (
                r#"{"op":"presence","room":"r","by":"conn"}"#,
                ClientOp::Presence {
                    room: "r".into(),
                    by_user: false,
                },
            ),
            (
                r#"{"op":"presence","room":"r","by":null}"#,
                ClientOp::Presence {
                    room: "r".into(),
                    by_user: false,
                },
            ),
            (
                r#"{"by":"user","op":"presence","room":"r"}"#,
                ClientOp::Presence {
                    room: "r".into(),
                    by_user: true,
                },
            ),
            (
                // `by` and `token` mean nothing to other ops, `room` nothing to `refresh`.
                r#"{"op":"unsubscribe","room":"r","by":7,"token":false}"#,
                ClientOp::Unsubscribe { room: "r".into() },
            ),
            (
                r#"{"op":"refresh","token":"abc.def.ghi","room":"not a room","by":1}"#,
                ClientOp::Refresh {
                    token: "abc.def.ghi".into(),
                },
            ),
            (
                r#"{"op":"refresh","token":""}"#,
                ClientOp::Refresh {
                    token: String::new(),
                },
            ),
        ];
        for (json, op) in cases {
            assert_eq!(
                decode_client(json.as_bytes(), Format::Json).as_ref(),
                Ok(op),
                "{json}"
            );
        }
    }

    #[test]
    fn client_cbor_with_tags_and_odd_keys() {
        // Tags around envelope fields are ignored, non-text keys are skipped, data keeps its tags.
        let frame = Data::Map(vec![
            (int(1), text("ignored")),
            (text("op"), Data::Tag(24, Box::new(text("publish")))),
            (text("room"), text("r")),
            (text("data"), Data::Tag(1, Box::new(int(1_700_000_000)))),
            (Data::Bytes(vec![1]), Data::Null),
        ]);
        assert_eq!(
            decode_client(&cbor_bytes(&frame), Format::Cbor),
            Ok(ClientOp::Publish {
                room: "r".into(),
                data: Data::Tag(1, Box::new(int(1_700_000_000))),
                id: None
            })
        );
        // Bignum-encoded seq that still fits u64 (ciborium turns it into an integer).
        let frame = map(&[
            ("op", text("subscribe")),
            ("room", text("r")),
            ("since", int(u64::MAX.into())),
        ]);
        let op = decode_client(&cbor_bytes(&frame), Format::Cbor).unwrap();
        assert!(matches!(
            op,
            ClientOp::Subscribe {
                since: Some(u64::MAX),
                ..
            }
        ));
    }

    #[test]
    fn errors_and_codes() {
        use EnvelopeError as E;
        /// The expected error: exactly this one, or a `BadField` for this key.
        enum Want {
            Is(E),
            Bad(&'static str),
        }
        use Want::{Bad, Is};
        let json_cases: Vec<(&str, Want, &str)> = vec![
            ("", Is(E::Malformed(Format::Json)), "bad_frame"),
            ("{\"op\":", Is(E::Malformed(Format::Json)), "bad_frame"),
            (
                "{\"op\":\"presence\",\"room\":\"r\"} x",
                Is(E::Malformed(Format::Json)),
                "bad_frame",
            ),
            ("[\"op\",\"presence\"]", Is(E::NotAMap), "bad_frame"),
            ("\"presence\"", Is(E::NotAMap), "bad_frame"),
            (
                "{\"room\":\"r\"}",
                Is(E::MissingField("op")),
                "missing_field",
            ),
            ("{\"op\":7,\"room\":\"r\"}", Bad("op"), "bad_field"),
            (
                "{\"op\":\"shout\",\"room\":\"r\"}",
                Is(E::UnknownOp("shout".into())),
                "unknown_op",
            ),
            (
                "{\"op\":\"Subscribe\",\"room\":\"r\"}",
                Is(E::UnknownOp("Subscribe".into())),
                "unknown_op",
            ),
            (
                "{\"op\":\"subscribe\"}",
                Is(E::MissingField("room")),
                "missing_field",
            ),
            (
                "{\"op\":\"publish\",\"room\":\"r\"}",
                Is(E::MissingField("data")),
                "missing_field",
            ),
            (
                "{\"op\":\"unsubscribe\",\"room\":\"a/b\"}",
                Is(E::BadRoom),
                "bad_room",
            ),
            (
                "{\"op\":\"unsubscribe\",\"room\":\"\"}",
                Is(E::BadRoom),
                "bad_room",
            ),
            ("{\"op\":\"presence\",\"room\":5}", Bad("room"), "bad_field"),
            (
                "{\"op\":\"presence\",\"room\":null}",
                Bad("room"),
                "bad_field",
            ),
            (
                "{\"op\":\"subscribe\",\"room\":\"r\",\"since\":-1}",
                Bad("since"),
                "bad_field",
            ),
            (
                "{\"op\":\"subscribe\",\"room\":\"r\",\"since\":\"5\"}",
                Bad("since"),
                "bad_field",
            ),
            (
                "{\"op\":\"subscribe\",\"room\":\"r\",\"since\":5.0}",
                Bad("since"),
                "bad_field",
            ),
            (
                "{\"op\":\"subscribe\",\"room\":\"r\",\"since\":18446744073709551616}",
                Bad("since"),
                "bad_field",
            ),
            (
                "{\"op\":\"subscribe\",\"room\":\"r\",\"epoch\":-3}",
                Bad("epoch"),
                "bad_field",
            ),
            (
                "{\"op\":\"subscribe\",\"room\":\"r\",\"presence\":1}",
                Bad("presence"),
                "bad_field",
            ),
            (
                "{\"op\":\"history\",\"room\":\"r\",\"limit\":4294967296}",
                Bad("limit"),
                "bad_field",
            ),
            (
                "{\"op\":\"history\",\"room\":\"r\",\"limit\":-1}",
                Bad("limit"),
                "bad_field",
            ),
            (
                "{\"op\":\"history\",\"room\":\"r\",\"since\":-1}",
                Bad("since"),
                "bad_field",
            ),
            (
                "{\"op\":\"presence\",\"room\":\"r\",\"room\":\"s\"}",
                Is(E::DuplicateField("room")),
                "bad_field",
            ),
            (
                "{\"op\":\"presence\",\"room\":\"r\",\"by\":\"User\"}",
                Bad("by"),
                "bad_field",
            ),
            (
                "{\"op\":\"presence\",\"room\":\"r\",\"by\":true}",
                Bad("by"),
                "bad_field",
            ),
            (
                "{\"op\":\"presence\",\"room\":\"r\",\"by\":[\"user\"]}",
                Bad("by"),
                "bad_field",
            ),
            (
                "{\"op\":\"presence\",\"by\":\"user\"}",
                Is(E::MissingField("room")),
                "missing_field",
            ),
            (
                "{\"op\":\"presence\",\"room\":\"a b\",\"by\":\"x\"}",
                Is(E::BadRoom),
                "bad_room",
            ),
            (
                "{\"op\":\"presence\",\"room\":\"r\",\"by\":\"user\",\"by\":\"conn\"}",
                Is(E::DuplicateField("by")),
                "bad_field",
            ),
            (
                "{\"op\":\"refresh\"}",
                Is(E::MissingField("token")),
                "missing_field",
            ),
            (
                "{\"op\":\"refresh\",\"room\":\"r\"}",
                Is(E::MissingField("token")),
                "missing_field",
            ),
            (
                "{\"op\":\"refresh\",\"token\":null}",
                Bad("token"),
                "bad_field",
            ),
            (
                "{\"op\":\"refresh\",\"token\":42}",
                Bad("token"),
                "bad_field",
            ),
            (
                "{\"op\":\"refresh\",\"token\":{\"jwt\":\"x\"}}",
                Bad("token"),
                "bad_field",
            ),
            (
                "{\"op\":\"refresh\",\"token\":\"a\",\"token\":\"b\"}",
                Is(E::DuplicateField("token")),
                "bad_field",
            ),
            (
                "{\"op\":\"Refresh\",\"token\":\"a\"}",
                Is(E::UnknownOp("Refresh".into())),
                "unknown_op",
            ),
        ];
        for (json, check, code) in &json_cases {
            let err = decode_client(json.as_bytes(), Format::Json).expect_err(json);
            match check {
                Is(want) => assert_eq!(&err, want, "{json}"),
                Bad(field) => assert!(
                    matches!(err, E::BadField { field: f, .. } if f == *field),
                    "{json}: {err:?}"
                ),
            }
            assert_eq!(err.code(), *code, "{json}");
            assert!(!err.to_string().is_empty());
            // Same map in CBOR (where it is JSON at all) gives the same error, except parse errors.
            // (serde_json's map keeps only the last of duplicate keys: skip that case.)
            if let (Ok(value), false) = (
                serde_json::from_str::<serde_json::Value>(json),
                err.as_str() == "duplicate_field",
            ) {
                let cbor = cbor_bytes(&data_from_json(value));
                match decode_client(&cbor, Format::Cbor) {
                    Err(cerr) if err.code() == "bad_frame" => assert_eq!(cerr.code(), "bad_frame"),
                    Err(cerr) => assert_eq!(cerr, err, "{json}"),
                    Ok(op) => panic!("{json} decoded as {op:?} in CBOR"),
                }
            }
        }
        // CBOR-only shapes.
        let frame = map(&[("op", text("presence")), ("room", text("r"))]);
        let mut trailing = cbor_bytes(&frame);
        trailing.push(0x00);
        assert_eq!(
            decode_client(&trailing, Format::Cbor),
            Err(E::TrailingBytes)
        );
        assert_eq!(
            decode_client(&[], Format::Cbor),
            Err(E::Malformed(Format::Cbor))
        );
        assert_eq!(
            decode_client(&[0xff], Format::Cbor),
            Err(E::Malformed(Format::Cbor))
        );
        assert_eq!(
            decode_client(&cbor_bytes(&int(5)), Format::Cbor),
            Err(E::NotAMap)
        );
        let since_neg = map(&[
            ("op", text("subscribe")),
            ("room", text("r")),
            ("since", int(-1)),
        ]);
        assert!(matches!(
            decode_client(&cbor_bytes(&since_neg), Format::Cbor),
            Err(E::BadField { field: "since", .. })
        ));
        let since_big = map(&[
            ("op", text("subscribe")),
            ("room", text("r")),
            ("since", int(-(1 << 64))),
        ]);
        assert!(matches!(
            decode_client(&cbor_bytes(&since_big), Format::Cbor),
            Err(E::BadField { field: "since", .. })
        ));
        let room_bytes = map(&[
            ("op", text("presence")),
            ("room", Data::Bytes(b"r".to_vec())),
        ]);
        assert!(matches!(
            decode_client(&cbor_bytes(&room_bytes), Format::Cbor),
            Err(E::BadField { field: "room", .. })
        ));
        // A binary (CBOR) payload on a JSON connection and vice versa.
        assert_eq!(
            decode_client(&cbor_bytes(&frame), Format::Json),
            Err(E::Malformed(Format::Json))
        );
        assert_eq!(
            decode_client(br#"{"op":"presence","room":"r"}"#, Format::Cbor).map_err(|e| e.code()),
            Err("bad_frame")
        );
        let dup = Data::Map(vec![
            (text("op"), text("presence")),
            (text("room"), text("r")),
            (text("op"), text("presence")),
        ]);
        assert_eq!(
            decode_client(&cbor_bytes(&dup), Format::Cbor),
            Err(E::DuplicateField("op"))
        );
        // A long unknown op is cut in the error.
        let long = format!(r#"{{"op":"{}","room":"r"}}"#, "é".repeat(40));
        match decode_client(long.as_bytes(), Format::Json) {
            Err(E::UnknownOp(name)) => assert_eq!(name, "é".repeat(16)),
            other => panic!("{other:?}"),
        }
        // Reasons quoted in docs/protocol.md, and labels.
        assert_eq!(
            E::Malformed(Format::Json).to_string(),
            "frame is not a well-formed JSON item"
        );
        assert_eq!(E::TrailingBytes.to_string(), "bytes follow the CBOR item");
        assert_eq!(E::MissingField("room").to_string(), "missing field `room`");
        assert_eq!(
            E::UnknownOp("shout".into()).to_string(),
            "unknown op \"shout\""
        );
        assert_eq!(E::Malformed(Format::Cbor).as_str(), "malformed_cbor");
        assert_eq!(E::DuplicateField("op").as_str(), "duplicate_field");
        assert_eq!(E::DuplicateField("op").code(), "bad_field");
    }

    #[test]
    fn decode_request_returns_any_ops_id() {
        let (op, id) =
            decode_request(br#"{"op":"subscribe","room":"a","id":"dup"}"#, Format::Json).unwrap();
        assert_eq!(op.name(), "subscribe");
        assert_eq!(id, Some(text("dup")));
        let (_, id) =
            decode_request(br#"{"op":"presence","room":"a","id":null}"#, Format::Json).unwrap();
        assert_eq!(id, None);
        let (op, id) =
            decode_request(br#"{"op":"refresh","token":"t","id":[1]}"#, Format::Json).unwrap();
        assert_eq!(op, ClientOp::Refresh { token: "t".into() });
        assert_eq!(id, Some(Data::Array(vec![int(1)])));
        let (op, id) = decode_request(
            br#"{"op":"presence","room":"a","by":"user","id":"p"}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(
            op,
            ClientOp::Presence {
                room: "a".into(),
                by_user: true
            }
        );
        assert_eq!(id, Some(text("p")));
    }

    #[test]
    fn refresh_token_limits_and_id() {
        let frame = |token: &str, format: Format| {
            let frame = map(&[
                ("op", text("refresh")),
                ("token", text(token)),
                ("id", int(3)),
            ]);
            match format {
                Format::Json => serde_json::to_vec(&data_to_json(&frame)).unwrap(),
                Format::Cbor => cbor_bytes(&frame),
            }
        };
        for format in [Format::Json, Format::Cbor] {
            // Exactly MAX_TOKEN_BYTES (in UTF-8 bytes, not chars) is accepted, one more is not.
            let at_limit = format!("{}é", "t".repeat(MAX_TOKEN_BYTES - 2));
            assert_eq!(at_limit.len(), MAX_TOKEN_BYTES);
            assert_eq!(
                decode_request(&frame(&at_limit, format), format),
                Ok((ClientOp::Refresh { token: at_limit }, Some(int(3))))
            );
            let over = format!("{}é", "t".repeat(MAX_TOKEN_BYTES - 1));
            let r = decode_request(&frame(&over, format), format).unwrap_err();
            assert!(
                matches!(r.error, EnvelopeError::BadField { field: "token", .. }),
                "{:?}",
                r.error
            );
            assert_eq!(r.error.code(), "bad_field");
            assert_eq!(
                r.error.to_string(),
                format!("field `token` must be a string of at most {MAX_TOKEN_BYTES} bytes")
            );
            assert_eq!(r.id, Some(int(3)), "the error echoes the refresh's id");
        }
        // CBOR: a tag around the token is ignored like around any envelope field; a byte string
        // is not text.
        let tagged = map(&[
            ("op", text("refresh")),
            ("token", Data::Tag(32, Box::new(text("tok")))),
        ]);
        assert_eq!(
            decode_client(&cbor_bytes(&tagged), Format::Cbor),
            Ok(ClientOp::Refresh {
                token: "tok".into()
            })
        );
        let bytes = map(&[
            ("op", text("refresh")),
            ("token", Data::Bytes(b"tok".to_vec())),
        ]);
        assert!(matches!(
            decode_client(&cbor_bytes(&bytes), Format::Cbor),
            Err(EnvelopeError::BadField { field: "token", .. })
        ));
        // The reason text for `by`.
        assert_eq!(
            decode_client(br#"{"op":"presence","room":"r","by":"x"}"#, Format::Json)
                .unwrap_err()
                .to_string(),
            "field `by` must be \"conn\" or \"user\""
        );
    }

    #[test]
    fn refresh_op_accessors_and_debug_hide_the_token() {
        let op = ClientOp::Refresh {
            token: "secret.jwt.value".into(),
        };
        assert_eq!(op.name(), "refresh");
        assert_eq!(op.room(), None);
        let debug = format!("{op:?}");
        assert_eq!(debug, "Refresh { token: <16 bytes> }");
        assert!(!debug.contains("secret"));
        let presence = ClientOp::Presence {
            room: "r".into(),
            by_user: true,
        };
        assert_eq!(presence.room(), Some("r"));
        assert_eq!(
            format!("{presence:?}"),
            r#"Presence { room: "r", by_user: true }"#
        );
        // Every other op's Debug is what a derive would print.
        assert_eq!(
            format!(
                "{:?}",
                ClientOp::Subscribe {
                    room: "r".into(),
                    since: Some(1),
                    epoch: None,
                    presence: false
                }
            ),
            r#"Subscribe { room: "r", since: Some(1), epoch: None, presence: false }"#
        );
        for op in client_ops() {
            assert!(!op.name().is_empty());
            if let ClientOp::Refresh { token } = &op {
                assert!(op.room().is_none());
                assert!(token.is_empty() || !format!("{op:?}").contains(token.as_str()));
            } else {
                assert!(op.room().is_some());
            }
        }
    }

    #[test]
    fn rejections_carry_the_id() {
        let r = decode_client_with_id(
            br#"{"op":"publish","room":"a b","data":1,"id":"m9"}"#,
            Format::Json,
        )
        .unwrap_err();
        assert_eq!(
            r,
            Rejected {
                error: EnvelopeError::BadRoom,
                id: Some(text("m9"))
            }
        );
        let r = decode_client_with_id(br#"{"op":"nope","id":4}"#, Format::Json).unwrap_err();
        assert_eq!(r.id, Some(int(4)));
        let r = decode_client_with_id(br#"{"op":"publish","room":"r","id":null}"#, Format::Json)
            .unwrap_err();
        assert_eq!(
            r,
            Rejected {
                error: EnvelopeError::MissingField("data"),
                id: None
            }
        );
        let r = decode_client_with_id(b"[1]", Format::Json).unwrap_err();
        assert_eq!(r.id, None);
    }

    /// Found by the `envelope_json` fuzz target (fuzz/corpus/envelope_json/regress-float-1ulp):
    /// serde_json's default float parser may be one ULP off, so a published number reached JSON
    /// subscribers changed (1.8446744073737094e27 came out as 1.8446744073737097e27). Parsing is
    /// correctly rounded now (serde_json's `float_roundtrip`), like `JSON.parse` and Python.
    #[test]
    fn json_numbers_are_relayed_exactly() {
        for text in [
            "1.8446744073737094e27",
            "0.30000000000000004",
            "2.2250738585072014e-308",
        ] {
            let frame = format!(r#"{{"op":"publish","room":"r","data":{text}}}"#);
            let Ok(ClientOp::Publish { data, .. }) = decode_client(frame.as_bytes(), Format::Json)
            else {
                panic!("{frame} does not decode");
            };
            let expected: f64 = text.parse().unwrap();
            assert_eq!(data, Data::Float(expected), "{text}");
            // What JSON subscribers get reads back (correctly rounded) as the same number.
            let relayed: f64 = data_to_json(&data).to_string().parse().unwrap();
            assert_eq!(relayed, expected, "{text}");
        }
    }

    #[test]
    fn map_keys_that_are_arrays_or_maps_are_refused() {
        // {"op":"publish","room":"r","data": K} with K = a map whose key is a map whose key
        // is ... (60 levels): JSON would escape each level's key text again (2^60 bytes).
        let head = cbor_bytes(&map(&[("op", text("publish")), ("room", text("r"))]));
        let mut frame = vec![head[0] + 1];
        frame.extend_from_slice(&head[1..]);
        frame.extend_from_slice(&[0x64, b'd', b'a', b't', b'a']);
        frame.extend(std::iter::repeat_n(0xa1, 60));
        frame.push(0x00); // the innermost key
        frame.extend(std::iter::repeat_n(0x00, 60)); // each level's value
        let refused = EnvelopeError::BadField {
            field: "data",
            expected: "a value whose map keys are not arrays or maps",
        };
        assert_eq!(decode_client(&frame, Format::Cbor), Err(refused.clone()));
        // One level (an array key), deep inside an array, is refused too; scalar keys are fine.
        let mut frame = vec![head[0] + 1];
        frame.extend_from_slice(&head[1..]);
        frame.extend_from_slice(&[0x64, b'd', b'a', b't', b'a', 0x81, 0x81, 0xa1, 0x80, 0x00]);
        assert_eq!(decode_client(&frame, Format::Cbor), Err(refused));
        let mut frame = vec![head[0] + 1];
        frame.extend_from_slice(&head[1..]);
        frame.extend_from_slice(&[
            0x64, b'd', b'a', b't', b'a', 0xa2, 0x01, 0x00, 0x41, 0xff, 0xf6,
        ]);
        assert!(decode_client(&frame, Format::Cbor).is_ok());
    }

    #[test]
    fn deep_nesting_and_huge_lengths_are_rejected() {
        for depth in [MAX_DEPTH + 1, 100_000] {
            let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            assert_eq!(
                decode_client(json.as_bytes(), Format::Json),
                Err(EnvelopeError::Malformed(Format::Json))
            );
            let json = format!(
                r#"{{"op":"publish","room":"r","data":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            assert_eq!(
                decode_client(json.as_bytes(), Format::Json),
                Err(EnvelopeError::Malformed(Format::Json))
            );
            let mut cbor = vec![0x81; depth];
            cbor.push(0x00);
            assert_eq!(
                decode_client(&cbor, Format::Cbor),
                Err(EnvelopeError::Malformed(Format::Cbor))
            );
            let mut cbor = vec![0xc1; depth]; // nested tags
            cbor.push(0x00);
            assert_eq!(
                decode_client(&cbor, Format::Cbor),
                Err(EnvelopeError::Malformed(Format::Cbor))
            );
        }
        // The limit exactly: the frame's map plus MAX_DEPTH - 1 nested arrays decode in both
        // formats, one more array does not.
        for (arrays, ok) in [(MAX_DEPTH - 1, true), (MAX_DEPTH, false)] {
            let json = format!(
                r#"{{"op":"publish","room":"r","data":{}0{}}}"#,
                "[".repeat(arrays),
                "]".repeat(arrays)
            );
            assert_eq!(
                decode_client(json.as_bytes(), Format::Json).is_ok(),
                ok,
                "{arrays}"
            );
            let mut cbor = cbor_bytes(&map(&[("op", text("publish")), ("room", text("r"))]));
            cbor[0] += 1; // one more pair
            cbor_text(&mut cbor, "data");
            cbor.extend(std::iter::repeat_n(0x81, arrays));
            cbor.push(0x00);
            assert_eq!(decode_client(&cbor, Format::Cbor).is_ok(), ok, "{arrays}");
        }
        // Declared lengths far beyond the payload fail without allocating them.
        for head in [0x5b, 0x7b, 0x9b, 0xbb] {
            let mut cbor = vec![head];
            cbor.extend_from_slice(&u64::MAX.to_be_bytes());
            assert_eq!(
                decode_client(&cbor, Format::Cbor),
                Err(EnvelopeError::Malformed(Format::Cbor))
            );
        }
    }

    /// xorshift64*: deterministic, no dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn decoder_never_panics_on_random_or_truncated_frames() {
        let mut valid: Vec<(Vec<u8>, Format)> = Vec::new();
        for op in client_ops() {
            for format in [Format::Json, Format::Cbor] {
                valid.push((encode_client(&op, format), format));
            }
        }
        for (json, _) in DOC_CLIENT_EXAMPLES {
            valid.push((json.as_bytes().to_vec(), Format::Json));
        }
        let feed = |bytes: &[u8]| {
            let _ = decode_client(bytes, Format::Json);
            let _ = decode_client_with_id(bytes, Format::Cbor);
        };
        // Every truncation of every valid frame.
        let mut fed = 0usize;
        for (frame, _) in &valid {
            for len in 0..frame.len() {
                feed(&frame[..len]);
                fed += 1;
            }
        }
        // Random strings, biased towards the bytes that structure JSON and CBOR.
        let alphabet = b"{}[]\":,0123456789-.eEtrufalsnop \\\x80\x81\x9f\xa1\xa2\xbf\xc1\xc2\xd8\xf4\xf5\xf6\xf7\xf9\xfa\xfb\xff\x5b\x7b\x9b\xbb\x1b";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for i in 0..30_000 {
            let len = rng.below(if i % 10 == 0 { 512 } else { 48 }) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(2) == 0 {
                        alphabet[rng.below(alphabet.len() as u64) as usize]
                    } else {
                        rng.next() as u8
                    }
                })
                .collect();
            feed(&bytes);
            fed += 1;
        }
        // Mutations of valid frames: flip, insert or delete a few bytes.
        for _ in 0..30_000 {
            let (frame, _) = &valid[rng.below(valid.len() as u64) as usize];
            let mut bytes = frame.clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len() as u64 + 1) as usize;
                match rng.below(3) {
                    0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
                    1 => bytes.insert(at, rng.next() as u8),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            feed(&bytes);
            fed += 1;
        }
        assert!(fed >= 60_000);
    }
}
