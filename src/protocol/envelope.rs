//! The envelope protocol on `GET /ws`: many rooms per connection, presence, history and resume.
//!
//! Sans-io like the rest of [`crate::protocol`]: a complete message payload (already reassembled,
//! inflated and, for text, UTF-8 checked) in, a [`ClientOp`] out; a [`ServerOp`] in, a payload out
//! (the daemon frames it). The wire format is chosen once per connection by the subprotocol:
//!
//! - [`JSON_SUBPROTOCOL`] (`shardcast.v1.json`): one JSON object per text message;
//! - [`CBOR_SUBPROTOCOL`] (`shardcast.v1.cbor`): one CBOR map per binary message (RFC 8949).
//!
//! Both carry the same maps, keyed by text strings, with `"op"` naming the frame; the server
//! always writes `op` first. `docs/protocol.md` documents every frame with examples in both
//! formats (the examples are checked by the tests at the end of this file).
//!
//! # Payload data
//! Application payloads (`data`, `info`, `id`) are [`Data`], a CBOR data model value. JSON values
//! map onto it one to one ([`data_from_json`]); the way back ([`data_to_json`]) has to flatten
//! what JSON lacks:
//! - a byte string becomes its base64 (standard alphabet, padded) text, and when the byte string
//!   is a frame's *payload field* (see below) the enclosing map gets `"enc":"base64"` so the
//!   client knows to decode it;
//! - a tag is dropped, its content kept;
//! - a non-text map key becomes text: base64 for a byte string, otherwise the compact JSON of the
//!   key (`1` → `"1"`, `true` → `"true"`);
//! - an integer outside the range of `i64`/`u64` becomes a float; a NaN or infinite float
//!   becomes `null`.
//!
//! # `enc`
//! Each map that carries application data has exactly one payload field:
//!
//! | map                        | payload field |
//! |----------------------------|---------------|
//! | `message`                  | `data`        |
//! | each entry of `history`    | `data`        |
//! | `publish` (client)         | `data`        |
//! | `join`, `leave`            | `info`        |
//! | each member of `presence`  | `info`        |
//! | `ack`, `error`             | `id`          |
//!
//! When a JSON frame is encoded and the payload field holds a byte string (after dropping tags),
//! the field is written as its base64 text and the map gets `"enc":"base64"` as its last key.
//! Byte strings nested deeper inside the payload are written as base64 text without a marker.
//! CBOR frames never carry `enc` from the server: byte strings are native there. A client may
//! send `"enc":"base64"` in a `publish` in either format; `data` must then be base64 text and is
//! decoded into a byte string, which raw clients receive as a binary message.
//!
//! # Decoding rules
//! - A frame must be exactly one map (nothing after it). Keys that are not text strings and keys
//!   this module does not know are ignored, so clients may add fields.
//! - A key this module knows (`op`, `room`, `since`, `epoch`, `presence`, `data`, `id`, `limit`,
//!   `enc`) appearing twice is rejected (`bad_field`).
//! - An optional field set to `null` is the same as an absent one; `data` is required and may
//!   be `null`.
//! - Tags around the envelope's own fields (`op`, `room`, `since`, ...) are ignored; `data` and
//!   `id` are kept exactly as sent.
//! - Nesting is limited to [`MAX_DEPTH`] levels in both formats.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::room_name::valid_room_name;

/// The JSON subprotocol: text messages, one JSON object each.
pub const JSON_SUBPROTOCOL: &str = "shardcast.v1.json";

/// The CBOR subprotocol: binary messages, one CBOR map each.
pub const CBOR_SUBPROTOCOL: &str = "shardcast.v1.cbor";

/// Every envelope subprotocol, in the server's order of preference.
pub const SUBPROTOCOLS: [&str; 2] = [JSON_SUBPROTOCOL, CBOR_SUBPROTOCOL];

/// The only value of the `enc` key.
pub const ENC_BASE64: &str = "base64";

/// Deepest nesting of arrays, maps and tags accepted in a client frame (the frame's own map
/// counts as one level): serde_json's fixed limit, given to the CBOR decoder too.
pub const MAX_DEPTH: usize = 127;

/// An op name (as sent by a client) longer than this is cut in [`EnvelopeError::UnknownOp`].
const MAX_REPORTED_OP: usize = 32;

/// The universal payload type: JSON values map onto it, CBOR byte strings stay bytes.
pub type Data = ciborium::Value;

/// The wire format of an envelope connection, fixed by its subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `shardcast.v1.json`: JSON objects in text messages.
    Json,
    /// `shardcast.v1.cbor`: CBOR maps in binary messages.
    Cbor,
}

impl Format {
    /// The format a subprotocol name selects (exact, case-sensitive match), if any.
    pub fn from_subprotocol(name: &str) -> Option<Format> {
        match name {
            JSON_SUBPROTOCOL => Some(Format::Json),
            CBOR_SUBPROTOCOL => Some(Format::Cbor),
            _ => None,
        }
    }

    /// The subprotocol name (what `Sec-WebSocket-Protocol` carries in the response).
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => JSON_SUBPROTOCOL,
            Format::Cbor => CBOR_SUBPROTOCOL,
        }
    }

    /// Whether frames of this format are text messages (JSON) rather than binary (CBOR).
    pub fn is_text(self) -> bool {
        matches!(self, Format::Json)
    }

    /// Pick the format from a client's `Sec-WebSocket-Protocol` offers, honouring the client's
    /// order: the first offer naming an envelope subprotocol wins. Each item may itself be a
    /// comma-separated list (a raw header value).
    pub fn negotiate<I, S>(offers: I) -> Option<Format>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        offers.into_iter().find_map(|offer| {
            offer
                .as_ref()
                .split(',')
                .find_map(|p| Format::from_subprotocol(p.trim()))
        })
    }

    /// Static label, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Cbor => "cbor",
        }
    }

    /// The encoding's name for humans.
    fn acronym(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Cbor => "CBOR",
        }
    }
}

/// A frame from an envelope client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOp {
    /// `{"op":"subscribe","room":R,"since":SEQ?,"epoch":E?,"presence":bool?}`
    Subscribe {
        /// Room name (validated).
        room: String,
        /// Last seq the client received: replay everything after it.
        since: Option<u64>,
        /// The room epoch `since` belongs to.
        epoch: Option<u64>,
        /// Receive `join`/`leave` frames for this room (absent: false).
        presence: bool,
    },
    /// `{"op":"unsubscribe","room":R}`
    Unsubscribe {
        /// Room name (validated).
        room: String,
    },
    /// `{"op":"publish","room":R,"data":ANY,"id":ID?}`; an `ack` answers when `id` is given.
    Publish {
        /// Room name (validated).
        room: String,
        /// The message (a byte string if the frame said `"enc":"base64"`).
        data: Data,
        /// Correlation id, echoed in the `ack` (or `error`).
        id: Option<Data>,
    },
    /// `{"op":"presence","room":R}`: list the room's members.
    Presence {
        /// Room name (validated).
        room: String,
    },
    /// `{"op":"history","room":R,"since":SEQ?,"limit":N?}`
    History {
        /// Room name (validated).
        room: String,
        /// Only messages after this seq.
        since: Option<u64>,
        /// At most this many messages.
        limit: Option<u32>,
    },
}

impl ClientOp {
    /// The op name on the wire; also a static metric label.
    pub fn name(&self) -> &'static str {
        match self {
            ClientOp::Subscribe { .. } => "subscribe",
            ClientOp::Unsubscribe { .. } => "unsubscribe",
            ClientOp::Publish { .. } => "publish",
            ClientOp::Presence { .. } => "presence",
            ClientOp::History { .. } => "history",
        }
    }

    /// The room the op is about.
    pub fn room(&self) -> &str {
        match self {
            ClientOp::Subscribe { room, .. }
            | ClientOp::Unsubscribe { room }
            | ClientOp::Publish { room, .. }
            | ClientOp::Presence { room }
            | ClientOp::History { room, .. } => room,
        }
    }
}

/// A frame to an envelope client, borrowing everything it carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServerOp<'a> {
    /// `{"op":"welcome","conn":CONN}` right after the upgrade.
    Welcome {
        /// The connection's id.
        conn: u64,
    },
    /// `{"op":"subscribed","room":R,"seq":LAST,"epoch":E,"recovered":bool}`
    Subscribed {
        /// Room name.
        room: &'a str,
        /// The room's last seq (live messages continue at `seq + 1`).
        seq: u64,
        /// The room's current epoch.
        epoch: u64,
        /// Whether every message after the requested `since` was (or will be) replayed.
        recovered: bool,
    },
    /// `{"op":"unsubscribed","room":R}`: the answer to `unsubscribe`; nothing of the room follows.
    Unsubscribed {
        /// Room name.
        room: &'a str,
    },
    /// `{"op":"message","room":R,"seq":N,"from":CONN|null,"data":ANY}`
    Message {
        /// Room name.
        room: &'a str,
        /// The message's seq in the room.
        seq: u64,
        /// Publishing connection; `None` for the HTTP API (and raw clients of other nodes).
        from: Option<u64>,
        /// The message.
        data: &'a Data,
    },
    /// `{"op":"join","room":R,"conn":CONN,"info":ANY}`
    Join {
        /// Room name.
        room: &'a str,
        /// The connection that joined.
        conn: u64,
        /// Its info.
        info: &'a Data,
    },
    /// `{"op":"leave","room":R,"conn":CONN,"info":ANY}`
    Leave {
        /// Room name.
        room: &'a str,
        /// The connection that left.
        conn: u64,
        /// Its info.
        info: &'a Data,
    },
    /// `{"op":"presence","room":R,"members":[{"conn":CONN,"info":ANY},...]}`
    Presence {
        /// Room name.
        room: &'a str,
        /// `(conn, info)` of each member.
        members: &'a [(u64, Data)],
    },
    /// `{"op":"history","room":R,"epoch":E,"messages":[{"seq":N,"from":..,"data":..},...],
    /// "complete":bool}`
    History {
        /// Room name.
        room: &'a str,
        /// The room's current epoch.
        epoch: u64,
        /// `(seq, from, data)` of each message, oldest first.
        messages: &'a [(u64, Option<u64>, Data)],
        /// Whether no message after the requested `since` is missing (none expired).
        complete: bool,
    },
    /// `{"op":"ack","id":ID,"seq":N}`
    Ack {
        /// The `id` of the publish.
        id: &'a Data,
        /// The seq the message got.
        seq: u64,
    },
    /// `{"op":"error","code":CODE,"reason":TEXT,"id":ID?}`
    Error {
        /// Stable machine-readable code (see [`EnvelopeError::code`]).
        code: &'a str,
        /// Human-readable text.
        reason: &'a str,
        /// The `id` of the failed request, if it had one.
        id: Option<&'a Data>,
    },
}

impl ServerOp<'_> {
    /// The op name on the wire; also a static metric label.
    pub fn name(&self) -> &'static str {
        match self {
            ServerOp::Welcome { .. } => "welcome",
            ServerOp::Subscribed { .. } => "subscribed",
            ServerOp::Unsubscribed { .. } => "unsubscribed",
            ServerOp::Message { .. } => "message",
            ServerOp::Join { .. } => "join",
            ServerOp::Leave { .. } => "leave",
            ServerOp::Presence { .. } => "presence",
            ServerOp::History { .. } => "history",
            ServerOp::Ack { .. } => "ack",
            ServerOp::Error { .. } => "error",
        }
    }
}

/// Why a client frame was rejected. The daemon answers with an `error` frame carrying
/// [`code`](EnvelopeError::code) and the `Display` text as `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The payload does not parse in the connection's format.
    #[error("frame is not a well-formed {} item", .0.acronym())]
    Malformed(Format),
    /// CBOR: bytes follow the first item.
    #[error("bytes follow the CBOR item")]
    TrailingBytes,
    /// The frame parses but is not a map.
    #[error("frame is not a map")]
    NotAMap,
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong type or an out-of-range value.
    #[error("field `{field}` must be {expected}")]
    BadField {
        /// The field's key.
        field: &'static str,
        /// What it must be, for the reason text.
        expected: &'static str,
    },
    /// A known key appears twice in the frame.
    #[error("field `{0}` appears more than once")]
    DuplicateField(&'static str),
    /// `op` names no client op (the name is cut to 32 bytes).
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    /// `room` is not 1-128 bytes of `[A-Za-z0-9_.:-]`.
    #[error("room name must be 1-128 bytes of A-Z a-z 0-9 _ . : -")]
    BadRoom,
}

impl EnvelopeError {
    /// The stable code sent in the `error` frame.
    pub fn code(&self) -> &'static str {
        match self {
            EnvelopeError::Malformed(_) | EnvelopeError::TrailingBytes | EnvelopeError::NotAMap => {
                "bad_frame"
            }
            EnvelopeError::MissingField(_) => "missing_field",
            EnvelopeError::BadField { .. } | EnvelopeError::DuplicateField(_) => "bad_field",
            EnvelopeError::UnknownOp(_) => "unknown_op",
            EnvelopeError::BadRoom => "bad_room",
        }
    }

    /// Static label, usable as a metric label (finer than [`code`](EnvelopeError::code)).
    pub fn as_str(&self) -> &'static str {
        match self {
            EnvelopeError::Malformed(Format::Json) => "malformed_json",
            EnvelopeError::Malformed(Format::Cbor) => "malformed_cbor",
            EnvelopeError::TrailingBytes => "trailing_bytes",
            EnvelopeError::NotAMap => "not_a_map",
            EnvelopeError::MissingField(_) => "missing_field",
            EnvelopeError::BadField { .. } => "bad_field",
            EnvelopeError::DuplicateField(_) => "duplicate_field",
            EnvelopeError::UnknownOp(_) => "unknown_op",
            EnvelopeError::BadRoom => "bad_room",
        }
    }
}

/// A rejected client frame with the `id` it carried (if it was a map with an `id`), so the
/// `error` frame can echo it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Why.
    pub error: EnvelopeError,
    /// The frame's `id`, when it had a non-null one.
    pub id: Option<Data>,
}

// ---------------------------------------------------------------------------------------------
// Decoding client frames
// ---------------------------------------------------------------------------------------------

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
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err(EnvelopeError::DuplicateField(name));
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
            "publish" => {
                let room = room(self.room)?;
                let data = self.data.ok_or(EnvelopeError::MissingField("data"))?;
                let data = match opt_enc(self.enc)? {
                    false => data,
                    true => match untag(data) {
                        Data::Text(text) => {
                            Data::Bytes(BASE64.decode(text.as_bytes()).map_err(|_| {
                                EnvelopeError::BadField {
                                    field: "data",
                                    expected: "padded standard base64 when `enc` is \"base64\"",
                                }
                            })?)
                        }
                        _ => {
                            return Err(EnvelopeError::BadField {
                                field: "data",
                                expected: "a string when `enc` is \"base64\"",
                            })
                        }
                    },
                };
                Ok(ClientOp::Publish {
                    room,
                    data,
                    id: None,
                })
            }
            "presence" => Ok(ClientOp::Presence {
                room: room(self.room)?,
            }),
            "history" => Ok(ClientOp::History {
                room: room(self.room)?,
                since: opt_u64(self.since, "since")?,
                limit: opt_u32(self.limit, "limit")?,
            }),
            _ => Err(EnvelopeError::UnknownOp(cut(op, MAX_REPORTED_OP))),
        }
    }
}

/// Drop any tags around a value.
fn untag(mut value: Data) -> Data {
    while let Data::Tag(_, inner) = value {
        value = *inner;
    }
    value
}

/// Drop any tags around a borrowed value.
fn untag_ref(mut value: &Data) -> &Data {
    while let Data::Tag(_, inner) = value {
        value = inner;
    }
    value
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

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

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

/// Why encoding failed; only possible through a bug (the writers are `Vec`s).
#[derive(Debug, thiserror::Error)]
enum EncodeError {
    #[error("JSON serialization: {0}")]
    Json(#[from] serde_json::Error),
    #[error("CBOR serialization: {0:?}")]
    Cbor(#[from] ciborium::ser::Error<std::io::Error>),
    #[error("base64 output does not fit")]
    Base64,
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

// --- JSON -------------------------------------------------------------------------------------

fn json_server(op: &ServerOp<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    json_open(out, op.name());
    match *op {
        ServerOp::Welcome { conn } => {
            json_key(out, "conn");
            json_u64(out, conn);
        }
        ServerOp::Subscribed {
            room,
            seq,
            epoch,
            recovered,
        } => {
            json_room(out, room);
            json_key(out, "seq");
            json_u64(out, seq);
            json_key(out, "epoch");
            json_u64(out, epoch);
            json_key(out, "recovered");
            json_bool(out, recovered);
        }
        ServerOp::Unsubscribed { room } => json_room(out, room),
        ServerOp::Message {
            room,
            seq,
            from,
            data,
        } => {
            json_room(out, room);
            json_key(out, "seq");
            json_u64(out, seq);
            json_key(out, "from");
            json_opt_u64(out, from);
            json_key(out, "data");
            json_payload_and_enc(out, data)?;
        }
        ServerOp::Join { room, conn, info } | ServerOp::Leave { room, conn, info } => {
            json_room(out, room);
            json_key(out, "conn");
            json_u64(out, conn);
            json_key(out, "info");
            json_payload_and_enc(out, info)?;
        }
        ServerOp::Presence { room, members } => {
            json_room(out, room);
            json_key(out, "members");
            out.push(b'[');
            for (i, (conn, info)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"conn\":");
                json_u64(out, *conn);
                json_key(out, "info");
                json_payload_and_enc(out, info)?;
                out.push(b'}');
            }
            out.push(b']');
        }
        ServerOp::History {
            room,
            epoch,
            messages,
            complete,
        } => {
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
        }
        ServerOp::Ack { id, seq } => {
            json_key(out, "id");
            let enc = json_payload(out, id)?;
            json_key(out, "seq");
            json_u64(out, seq);
            json_enc(out, enc);
        }
        ServerOp::Error { code, reason, id } => {
            json_key(out, "code");
            json_str(out, code);
            json_key(out, "reason");
            json_str(out, reason);
            if let Some(id) = id {
                json_key(out, "id");
                let enc = json_payload(out, id)?;
                json_enc(out, enc);
            }
        }
    }
    out.push(b'}');
    Ok(())
}

fn json_client(op: &ClientOp, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    json_open(out, op.name());
    json_room(out, op.room());
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
        ClientOp::Unsubscribe { .. } | ClientOp::Presence { .. } => {}
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

/// Any value, through serde_json, with the JSON mapping of [`data_to_json`].
fn json_data(out: &mut Vec<u8>, data: &Data) -> Result<(), EncodeError> {
    serde_json::to_writer(&mut *out, &JsonData(data))?;
    Ok(())
}

/// Serializes a [`Data`] the way [`data_to_json`] converts it, without building the JSON value.
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
fn json_key_text(key: &Data) -> String {
    match untag_ref(key) {
        Data::Text(t) => t.clone(),
        Data::Bytes(b) => BASE64.encode(b),
        other => serde_json::to_string(&JsonData(other)).unwrap_or_else(|_| String::from("null")),
    }
}

// --- CBOR -------------------------------------------------------------------------------------

const CBOR_UINT: u8 = 0;
const CBOR_TEXT: u8 = 3;
const CBOR_ARRAY: u8 = 4;
const CBOR_MAP: u8 = 5;
const CBOR_FALSE: u8 = 0xf4;
const CBOR_TRUE: u8 = 0xf5;
const CBOR_NULL: u8 = 0xf6;

fn cbor_server(op: &ServerOp<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match *op {
        ServerOp::Welcome { conn } => {
            cbor_open(out, op.name(), 2);
            cbor_text(out, "conn");
            cbor_u64(out, conn);
        }
        ServerOp::Subscribed {
            room,
            seq,
            epoch,
            recovered,
        } => {
            cbor_open(out, op.name(), 5);
            cbor_entry_text(out, "room", room);
            cbor_entry_u64(out, "seq", seq);
            cbor_entry_u64(out, "epoch", epoch);
            cbor_text(out, "recovered");
            cbor_bool(out, recovered);
        }
        ServerOp::Unsubscribed { room } => {
            cbor_open(out, op.name(), 2);
            cbor_entry_text(out, "room", room);
        }
        ServerOp::Message {
            room,
            seq,
            from,
            data,
        } => {
            cbor_open(out, op.name(), 5);
            cbor_entry_text(out, "room", room);
            cbor_entry_u64(out, "seq", seq);
            cbor_text(out, "from");
            cbor_opt_u64(out, from);
            cbor_text(out, "data");
            cbor_data(out, data)?;
        }
        ServerOp::Join { room, conn, info } | ServerOp::Leave { room, conn, info } => {
            cbor_open(out, op.name(), 4);
            cbor_entry_text(out, "room", room);
            cbor_entry_u64(out, "conn", conn);
            cbor_text(out, "info");
            cbor_data(out, info)?;
        }
        ServerOp::Presence { room, members } => {
            cbor_open(out, op.name(), 3);
            cbor_entry_text(out, "room", room);
            cbor_text(out, "members");
            cbor_head(out, CBOR_ARRAY, members.len() as u64);
            for (conn, info) in members {
                cbor_head(out, CBOR_MAP, 2);
                cbor_entry_u64(out, "conn", *conn);
                cbor_text(out, "info");
                cbor_data(out, info)?;
            }
        }
        ServerOp::History {
            room,
            epoch,
            messages,
            complete,
        } => {
            cbor_open(out, op.name(), 5);
            cbor_entry_text(out, "room", room);
            cbor_entry_u64(out, "epoch", epoch);
            cbor_text(out, "messages");
            cbor_head(out, CBOR_ARRAY, messages.len() as u64);
            for (seq, from, data) in messages {
                cbor_head(out, CBOR_MAP, 3);
                cbor_entry_u64(out, "seq", *seq);
                cbor_text(out, "from");
                cbor_opt_u64(out, *from);
                cbor_text(out, "data");
                cbor_data(out, data)?;
            }
            cbor_text(out, "complete");
            cbor_bool(out, complete);
        }
        ServerOp::Ack { id, seq } => {
            cbor_open(out, op.name(), 3);
            cbor_text(out, "id");
            cbor_data(out, id)?;
            cbor_entry_u64(out, "seq", seq);
        }
        ServerOp::Error { code, reason, id } => {
            cbor_open(out, op.name(), if id.is_some() { 4 } else { 3 });
            cbor_entry_text(out, "code", code);
            cbor_entry_text(out, "reason", reason);
            if let Some(id) = id {
                cbor_text(out, "id");
                cbor_data(out, id)?;
            }
        }
    }
    Ok(())
}

fn cbor_client(op: &ClientOp, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match op {
        ClientOp::Subscribe {
            room,
            since,
            epoch,
            presence,
        } => {
            let n =
                2 + u64::from(since.is_some()) + u64::from(epoch.is_some()) + u64::from(*presence);
            cbor_open(out, op.name(), n);
            cbor_entry_text(out, "room", room);
            if let Some(since) = since {
                cbor_entry_u64(out, "since", *since);
            }
            if let Some(epoch) = epoch {
                cbor_entry_u64(out, "epoch", *epoch);
            }
            if *presence {
                cbor_text(out, "presence");
                cbor_bool(out, true);
            }
        }
        ClientOp::Unsubscribe { room } | ClientOp::Presence { room } => {
            cbor_open(out, op.name(), 2);
            cbor_entry_text(out, "room", room);
        }
        ClientOp::Publish { room, data, id } => {
            cbor_open(out, op.name(), 3 + u64::from(id.is_some()));
            cbor_entry_text(out, "room", room);
            cbor_text(out, "data");
            cbor_data(out, data)?;
            if let Some(id) = id {
                cbor_text(out, "id");
                cbor_data(out, id)?;
            }
        }
        ClientOp::History { room, since, limit } => {
            cbor_open(
                out,
                op.name(),
                2 + u64::from(since.is_some()) + u64::from(limit.is_some()),
            );
            cbor_entry_text(out, "room", room);
            if let Some(since) = since {
                cbor_entry_u64(out, "since", *since);
            }
            if let Some(limit) = limit {
                cbor_entry_u64(out, "limit", u64::from(*limit));
            }
        }
    }
    Ok(())
}

/// An item head (RFC 8949 §3): major type and argument, in the shortest form.
fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if let Ok(n) = u8::try_from(n) {
        out.extend_from_slice(&[m | 24, n]);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(m | 25);
        out.extend_from_slice(&n.to_be_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(m | 26);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// A map of `pairs` entries whose first entry is `"op": NAME`.
fn cbor_open(out: &mut Vec<u8>, op: &str, pairs: u64) {
    cbor_head(out, CBOR_MAP, pairs);
    cbor_text(out, "op");
    cbor_text(out, op);
}

fn cbor_text(out: &mut Vec<u8>, s: &str) {
    cbor_head(out, CBOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn cbor_u64(out: &mut Vec<u8>, n: u64) {
    cbor_head(out, CBOR_UINT, n);
}

fn cbor_opt_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => cbor_u64(out, n),
        None => out.push(CBOR_NULL),
    }
}

fn cbor_bool(out: &mut Vec<u8>, b: bool) {
    out.push(if b { CBOR_TRUE } else { CBOR_FALSE });
}

fn cbor_entry_text(out: &mut Vec<u8>, key: &str, value: &str) {
    cbor_text(out, key);
    cbor_text(out, value);
}

fn cbor_entry_u64(out: &mut Vec<u8>, key: &str, value: u64) {
    cbor_text(out, key);
    cbor_u64(out, value);
}

fn cbor_data(out: &mut Vec<u8>, data: &Data) -> Result<(), EncodeError> {
    match data {
        Data::Text(t) => cbor_text(out, t),
        Data::Bytes(b) => {
            cbor_head(out, 2, b.len() as u64);
            out.extend_from_slice(b);
        }
        other => ciborium::ser::into_writer(other, &mut *out)?,
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// JSON conversions and raw clients
// ---------------------------------------------------------------------------------------------

/// A JSON value as [`Data`]: integers that fit `u64` or `i64` become integers, other numbers
/// floats, objects maps with text keys (in the object's order).
pub fn data_from_json(value: serde_json::Value) -> Data {
    match value {
        serde_json::Value::Null => Data::Null,
        serde_json::Value::Bool(b) => Data::Bool(b),
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Data::Integer(u.into())
            } else if let Some(i) = n.as_i64() {
                Data::Integer(i.into())
            } else {
                Data::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Data::Text(s),
        serde_json::Value::Array(items) => {
            Data::Array(items.into_iter().map(data_from_json).collect())
        }
        serde_json::Value::Object(map) => Data::Map(
            map.into_iter()
                .map(|(k, v)| (Data::Text(k), data_from_json(v)))
                .collect(),
        ),
    }
}

/// [`Data`] as a JSON value: bytes become base64 text (standard, padded), tags are dropped,
/// non-text map keys become text (base64 for bytes, else their compact JSON), integers beyond
/// `i64`/`u64` become floats, NaN and infinities become `null`. The module docs say where the
/// frames add `"enc":"base64"`; this function never does.
pub fn data_to_json(data: &Data) -> serde_json::Value {
    match untag_ref(data) {
        Data::Null => serde_json::Value::Null,
        Data::Bool(b) => serde_json::Value::Bool(*b),
        Data::Integer(n) => {
            let n = i128::from(*n);
            if let Ok(u) = u64::try_from(n) {
                u.into()
            } else if let Ok(i) = i64::try_from(n) {
                i.into()
            } else {
                float_to_json(n as f64)
            }
        }
        Data::Float(f) => float_to_json(*f),
        Data::Text(t) => serde_json::Value::String(t.clone()),
        Data::Bytes(b) => serde_json::Value::String(BASE64.encode(b)),
        Data::Array(items) => serde_json::Value::Array(items.iter().map(data_to_json).collect()),
        Data::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, v)| (json_key_text(k), data_to_json(v)))
                .collect(),
        ),
        _ => serde_json::Value::Null,
    }
}

fn float_to_json(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// What a raw client's message becomes for envelope subscribers: text → [`Data::Text`] (or
/// [`Data::Bytes`] should it not be UTF-8 after all), binary → [`Data::Bytes`].
pub fn raw_frame_data(opcode_is_text: bool, payload: &[u8]) -> Data {
    if opcode_is_text {
        if let Ok(text) = simdutf8::basic::from_utf8(payload) {
            return Data::Text(text.to_owned());
        }
    }
    Data::Bytes(payload.to_vec())
}

/// What raw clients receive for an envelope publish: `(is_text, payload)`. A string is sent as
/// a text message, a byte string as a binary message (tags dropped first), anything else as a
/// text message holding its compact JSON ([`data_to_json`]'s mapping).
pub fn data_to_raw(data: &Data) -> (bool, Vec<u8>) {
    match untag_ref(data) {
        Data::Text(t) => (true, t.as_bytes().to_vec()),
        Data::Bytes(b) => (false, b.clone()),
        other => {
            let mut out = Vec::new();
            if json_data(&mut out, other).is_err() {
                out.clear();
                out.extend_from_slice(b"null");
            }
            (true, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(n: i128) -> Data {
        Data::Integer(ciborium::value::Integer::try_from(n).unwrap())
    }

    fn text(s: &str) -> Data {
        Data::Text(s.to_owned())
    }

    fn map(entries: &[(&str, Data)]) -> Data {
        Data::Map(entries.iter().map(|(k, v)| (text(k), v.clone())).collect())
    }

    fn cbor_value(bytes: &[u8]) -> Data {
        ciborium::de::from_reader(bytes).unwrap()
    }

    fn cbor_bytes(value: &Data) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(value, &mut out).unwrap();
        out
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn json_text(op: &ServerOp<'_>) -> String {
        String::from_utf8(encode_server(op, Format::Json)).unwrap()
    }

    fn sample_data() -> Vec<Data> {
        vec![
            Data::Null,
            Data::Bool(true),
            int(0),
            int(-1),
            int(u64::MAX.into()),
            int(i64::MIN.into()),
            Data::Float(1.5),
            text(""),
            text("héllo \"quoted\" \\ \n\u{1}"),
            Data::Bytes(vec![]),
            Data::Bytes(vec![0, 1, 2, 0xff]),
            Data::Array(vec![int(1), text("two"), Data::Null]),
            map(&[
                ("text", text("hi")),
                ("n", int(3)),
                ("nested", map(&[("a", Data::Array(vec![]))])),
            ]),
        ]
    }

    #[test]
    fn formats() {
        assert_eq!(SUBPROTOCOLS, ["shardcast.v1.json", "shardcast.v1.cbor"]);
        for f in [Format::Json, Format::Cbor] {
            assert_eq!(Format::from_subprotocol(f.name()), Some(f));
        }
        assert_eq!(Format::from_subprotocol("Shardcast.v1.json"), None);
        assert_eq!(Format::from_subprotocol("shardcast.v2.json"), None);
        assert!(Format::Json.is_text() && !Format::Cbor.is_text());
        assert_eq!(
            Format::negotiate(["chat", "shardcast.v1.cbor", "shardcast.v1.json"]),
            Some(Format::Cbor)
        );
        assert_eq!(
            Format::negotiate(["chat, shardcast.v1.json"]),
            Some(Format::Json)
        );
        assert_eq!(Format::negotiate(Vec::<String>::new()), None);
        assert_eq!(Format::negotiate(["chat".to_string()]), None);
    }

    fn client_ops() -> Vec<ClientOp> {
        let mut ops = vec![
            ClientOp::Subscribe {
                room: "lobby".into(),
                since: None,
                epoch: None,
                presence: false,
            },
            ClientOp::Subscribe {
                room: "a.b:c-d_9".into(),
                since: Some(0),
                epoch: Some(u64::MAX),
                presence: true,
            },
            ClientOp::Subscribe {
                room: "x".repeat(128),
                since: Some(17),
                epoch: None,
                presence: false,
            },
            ClientOp::Unsubscribe {
                room: "lobby".into(),
            },
            ClientOp::Presence {
                room: "lobby".into(),
            },
            ClientOp::History {
                room: "lobby".into(),
                since: None,
                limit: None,
            },
            ClientOp::History {
                room: "lobby".into(),
                since: Some(u64::MAX),
                limit: Some(u32::MAX),
            },
            ClientOp::Publish {
                room: "lobby".into(),
                data: Data::Null,
                id: None,
            },
            ClientOp::Publish {
                room: "lobby".into(),
                data: text("hi"),
                id: Some(text("req-1")),
            },
            ClientOp::Publish {
                room: "lobby".into(),
                data: Data::Bytes(vec![1, 2, 3]),
                id: Some(int(7)),
            },
        ];
        for data in sample_data() {
            ops.push(ClientOp::Publish {
                room: "r".into(),
                data,
                id: Some(map(&[("k", int(1))])),
            });
        }
        ops
    }

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
    fn server_ops_json_text() {
        let data = map(&[("text", text("hi"))]);
        let info = map(&[("name", text("ada"))]);
        let members = [(12, info.clone()), (15, Data::Null)];
        let messages = [
            (21, Some(12), data.clone()),
            (22, None, Data::Bytes(vec![0, 1, 2])),
        ];
        let id = int(7);
        let quoted = text("a\"b");
        let cases: Vec<(ServerOp<'_>, &str)> = vec![
            (
                ServerOp::Welcome { conn: 12 },
                r#"{"op":"welcome","conn":12}"#,
            ),
            (
                ServerOp::Subscribed {
                    room: "chat:42",
                    seq: 20,
                    epoch: 3,
                    recovered: true,
                },
                r#"{"op":"subscribed","room":"chat:42","seq":20,"epoch":3,"recovered":true}"#,
            ),
            (
                ServerOp::Subscribed {
                    room: "r",
                    seq: 0,
                    epoch: u64::MAX,
                    recovered: false,
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
                    info: &info,
                },
                r#"{"op":"join","room":"chat:42","conn":12,"info":{"name":"ada"}}"#,
            ),
            (
                ServerOp::Leave {
                    room: "chat:42",
                    conn: 12,
                    info: &Data::Null,
                },
                r#"{"op":"leave","room":"chat:42","conn":12,"info":null}"#,
            ),
            (
                ServerOp::Presence {
                    room: "chat:42",
                    members: &members,
                },
                r#"{"op":"presence","room":"chat:42","members":[{"conn":12,"info":{"name":"ada"}},{"conn":15,"info":null}]}"#,
            ),
            (
                ServerOp::Presence {
                    room: "r",
                    members: &[],
                },
                r#"{"op":"presence","room":"r","members":[]}"#,
            ),
            (
                ServerOp::History {
                    room: "chat:42",
                    epoch: 3,
                    messages: &messages,
                    complete: true,
                },
                r#"{"op":"history","room":"chat:42","epoch":3,"messages":[{"seq":21,"from":12,"data":{"text":"hi"}},{"seq":22,"from":null,"data":"AAEC","enc":"base64"}],"complete":true}"#,
            ),
            (
                ServerOp::History {
                    room: "r",
                    epoch: 0,
                    messages: &[],
                    complete: false,
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
    fn server_ops_cbor() {
        let data = map(&[("text", text("hi"))]);
        let info = map(&[("name", text("ada"))]);
        let members = [(12, info.clone()), (15, Data::Null)];
        let bytes = Data::Bytes(vec![0, 1, 2]);
        let messages = [(21, Some(12), data.clone()), (22, None, bytes.clone())];
        let id = text("m-1");
        let cases: Vec<(ServerOp<'_>, Data)> = vec![
            (
                ServerOp::Welcome { conn: 12 },
                map(&[("op", text("welcome")), ("conn", int(12))]),
            ),
            (
                ServerOp::Subscribed {
                    room: "chat:42",
                    seq: 20,
                    epoch: u64::MAX,
                    recovered: false,
                },
                map(&[
                    ("op", text("subscribed")),
                    ("room", text("chat:42")),
                    ("seq", int(20)),
                    ("epoch", int(u64::MAX.into())),
                    ("recovered", Data::Bool(false)),
                ]),
            ),
            (
                ServerOp::Message {
                    room: "chat:42",
                    seq: 21,
                    from: Some(12),
                    data: &data,
                },
                map(&[
                    ("op", text("message")),
                    ("room", text("chat:42")),
                    ("seq", int(21)),
                    ("from", int(12)),
                    ("data", data.clone()),
                ]),
            ),
            (
                ServerOp::Message {
                    room: "chat:42",
                    seq: 300,
                    from: None,
                    data: &bytes,
                },
                map(&[
                    ("op", text("message")),
                    ("room", text("chat:42")),
                    ("seq", int(300)),
                    ("from", Data::Null),
                    ("data", bytes.clone()),
                ]),
            ),
            (
                ServerOp::Join {
                    room: "r",
                    conn: 70000,
                    info: &info,
                },
                map(&[
                    ("op", text("join")),
                    ("room", text("r")),
                    ("conn", int(70000)),
                    ("info", info.clone()),
                ]),
            ),
            (
                ServerOp::Leave {
                    room: "r",
                    conn: 1 << 40,
                    info: &Data::Null,
                },
                map(&[
                    ("op", text("leave")),
                    ("room", text("r")),
                    ("conn", int(1 << 40)),
                    ("info", Data::Null),
                ]),
            ),
            (
                ServerOp::Presence {
                    room: "r",
                    members: &members,
                },
                map(&[
                    ("op", text("presence")),
                    ("room", text("r")),
                    (
                        "members",
                        Data::Array(vec![
                            map(&[("conn", int(12)), ("info", info.clone())]),
                            map(&[("conn", int(15)), ("info", Data::Null)]),
                        ]),
                    ),
                ]),
            ),
            (
                ServerOp::History {
                    room: "r",
                    epoch: 3,
                    messages: &messages,
                    complete: true,
                },
                map(&[
                    ("op", text("history")),
                    ("room", text("r")),
                    ("epoch", int(3)),
                    (
                        "messages",
                        Data::Array(vec![
                            map(&[("seq", int(21)), ("from", int(12)), ("data", data.clone())]),
                            map(&[
                                ("seq", int(22)),
                                ("from", Data::Null),
                                ("data", bytes.clone()),
                            ]),
                        ]),
                    ),
                    ("complete", Data::Bool(true)),
                ]),
            ),
            (
                ServerOp::Ack { id: &id, seq: 21 },
                map(&[("op", text("ack")), ("id", id.clone()), ("seq", int(21))]),
            ),
            (
                ServerOp::Error {
                    code: "bad_field",
                    reason: "x",
                    id: Some(&bytes),
                },
                map(&[
                    ("op", text("error")),
                    ("code", text("bad_field")),
                    ("reason", text("x")),
                    ("id", bytes.clone()),
                ]),
            ),
            (
                ServerOp::Error {
                    code: "bad_frame",
                    reason: "frame is not a map",
                    id: None,
                },
                map(&[
                    ("op", text("error")),
                    ("code", text("bad_frame")),
                    ("reason", text("frame is not a map")),
                ]),
            ),
        ];
        for (op, expected) in cases {
            let got = encode_server(&op, Format::Cbor);
            // Decoded by ciborium, key order included ("op" first), and byte-identical to
            // ciborium's own (shortest-form) encoding of the same map.
            assert_eq!(cbor_value(&got), expected, "{}", op.name());
            assert_eq!(got, cbor_bytes(&expected), "{}", op.name());
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
                info: &bytes
            }),
            r#"{"op":"join","room":"r","conn":1,"info":"3q2+7wA=","enc":"base64"}"#
        );
        let members = [(1, bytes.clone()), (2, text("x"))];
        assert_eq!(
            json_text(&ServerOp::Presence {
                room: "r",
                members: &members
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

    #[test]
    fn json_conversions() {
        // Integers round-trip at the edges.
        for n in [
            0i128,
            1,
            -1,
            255,
            65536,
            i64::MIN.into(),
            i64::MAX.into(),
            u64::MAX.into(),
        ] {
            let json = data_to_json(&int(n));
            assert_eq!(json.to_string(), n.to_string());
            assert_eq!(data_from_json(json), int(n));
        }
        // Beyond i64: a float.
        assert_eq!(
            data_to_json(&int(-(1 << 64))),
            serde_json::json!(-18446744073709551616.0)
        );
        assert_eq!(
            data_to_json(&Data::Float(f64::NAN)),
            serde_json::Value::Null
        );
        assert_eq!(
            data_to_json(&Data::Float(f64::INFINITY)),
            serde_json::Value::Null
        );
        assert_eq!(data_from_json(serde_json::json!(2.5)), Data::Float(2.5));
        // Nested values, tags dropped, keys stringified.
        let data = Data::Map(vec![
            (
                text("a"),
                Data::Array(vec![
                    int(1),
                    Data::Float(0.5),
                    Data::Null,
                    Data::Bool(false),
                ]),
            ),
            (int(7), text("seven")),
            (Data::Bytes(vec![0xff]), text("bytes")),
            (Data::Bool(true), text("bool")),
            (
                Data::Tag(5, Box::new(text("k"))),
                Data::Tag(1, Box::new(int(99))),
            ),
            (
                Data::Array(vec![int(1), int(2)]),
                Data::Bytes(vec![1, 2, 3]),
            ),
        ]);
        let expected = serde_json::json!({
            "a": [1, 0.5, null, false],
            "7": "seven",
            "/w==": "bytes",
            "true": "bool",
            "k": 99,
            "[1,2]": "AQID",
        });
        assert_eq!(data_to_json(&data), expected);
        // The streaming writer agrees with data_to_json, and JSON → Data → JSON is the identity.
        let mut all = sample_data();
        all.push(data);
        for d in &all {
            let mut written = Vec::new();
            json_data(&mut written, d).unwrap();
            let reparsed: serde_json::Value = serde_json::from_slice(&written).unwrap();
            assert_eq!(reparsed, data_to_json(d), "{d:?}");
            assert_eq!(data_to_json(&data_from_json(reparsed.clone())), reparsed);
        }
        // Parsing JSON straight into Data (what decode_client does) equals data_from_json.
        let src =
            r#"{"x":[1,-2,18446744073709551615,-9223372036854775808,1.5,1e300,"s",true,null,{}]}"#;
        let direct: Data = serde_json::from_str(src).unwrap();
        assert_eq!(direct, data_from_json(serde_json::from_str(src).unwrap()));
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

    #[test]
    fn raw_conversions() {
        assert_eq!(raw_frame_data(true, b"hello"), text("hello"));
        assert_eq!(
            raw_frame_data(true, &[0xff, 0xfe]),
            Data::Bytes(vec![0xff, 0xfe])
        );
        assert_eq!(
            raw_frame_data(false, b"hello"),
            Data::Bytes(b"hello".to_vec())
        );
        assert_eq!(raw_frame_data(false, b""), Data::Bytes(vec![]));
        assert_eq!(data_to_raw(&text("hi")), (true, b"hi".to_vec()));
        assert_eq!(data_to_raw(&Data::Bytes(vec![1, 2])), (false, vec![1, 2]));
        assert_eq!(
            data_to_raw(&Data::Tag(9, Box::new(Data::Bytes(vec![3])))),
            (false, vec![3])
        );
        assert_eq!(data_to_raw(&int(42)), (true, b"42".to_vec()));
        assert_eq!(data_to_raw(&Data::Null), (true, b"null".to_vec()));
        assert_eq!(
            data_to_raw(&map(&[(
                "a",
                Data::Array(vec![int(1), Data::Bytes(vec![0])])
            )])),
            (true, br#"{"a":[1,"AA=="]}"#.to_vec())
        );
        // Raw → envelope → raw is the identity for both message kinds.
        for (is_text, payload) in [(true, &b"text"[..]), (false, &[0u8, 159, 146, 150][..])] {
            assert_eq!(
                data_to_raw(&raw_frame_data(is_text, payload)),
                (is_text, payload.to_vec())
            );
        }
    }

    #[test]
    fn encode_server_into_appends() {
        let mut out = vec![0xAA, 0xBB];
        encode_server_into(&ServerOp::Welcome { conn: 1 }, Format::Json, &mut out);
        assert_eq!(out, b"\xAA\xBB{\"op\":\"welcome\",\"conn\":1}");
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

    // --- docs/protocol.md examples ------------------------------------------------------------

    /// Client frames in docs/protocol.md: (JSON as documented, CBOR hex of the same frame).
    const DOC_CLIENT_EXAMPLES: [(&str, &str); 7] = [
        (r#"{"op":"subscribe","room":"chat:42","since":17,"epoch":3,"presence":true}"#, "a5626f706973756273637269626564726f6f6d67636861743a34326573696e6365116565706f6368036870726573656e6365f5"),
        (r#"{"op":"unsubscribe","room":"chat:42"}"#, "a2626f706b756e73756273637269626564726f6f6d67636861743a3432"),
        (r#"{"op":"publish","room":"chat:42","data":{"text":"hi"},"id":7}"#, "a4626f70677075626c69736864726f6f6d67636861743a34326464617461a1647465787462686962696407"),
        (r#"{"op":"publish","room":"chat:42","data":"AAEC","enc":"base64"}"#, "a3626f70677075626c69736864726f6f6d67636861743a3432646461746143000102"),
        (r#"{"op":"presence","room":"chat:42"}"#, "a2626f706870726573656e636564726f6f6d67636861743a3432"),
        (r#"{"op":"history","room":"chat:42","since":10,"limit":50}"#, "a4626f7067686973746f727964726f6f6d67636861743a34326573696e63650a656c696d69741832"),
        (r#"{"op":"history","room":"chat:42"}"#, "a2626f7067686973746f727964726f6f6d67636861743a3432"),
    ];

    #[test]
    fn doc_examples() {
        let mut mismatches = Vec::new();
        for (json, cbor_hex) in DOC_CLIENT_EXAMPLES {
            let op = decode_client(json.as_bytes(), Format::Json).unwrap();
            assert_eq!(
                String::from_utf8(encode_client(&op, Format::Json)).unwrap(),
                json
            );
            let cbor = encode_client(&op, Format::Cbor);
            assert_eq!(decode_client(&cbor, Format::Cbor).unwrap(), op);
            if hex(&cbor) != cbor_hex {
                mismatches.push(format!("{json}\n{}", hex(&cbor)));
            }
        }
        let data = map(&[("text", text("hi"))]);
        let info = map(&[("name", text("ada"))]);
        let bytes = Data::Bytes(vec![0, 1, 2]);
        let members = [(12, info.clone()), (15, Data::Null)];
        let messages = [(21, Some(12), data.clone()), (22, None, bytes.clone())];
        let id = int(7);
        let bad_room = EnvelopeError::BadRoom.to_string();
        let server: Vec<(ServerOp<'_>, &str)> = vec![
            (ServerOp::Welcome { conn: 12 }, "a2626f706777656c636f6d6564636f6e6e0c"),
            (ServerOp::Subscribed { room: "chat:42", seq: 20, epoch: 3, recovered: true }, "a5626f706a7375627363726962656464726f6f6d67636861743a343263736571146565706f636803697265636f7665726564f5"),
            (ServerOp::Message { room: "chat:42", seq: 21, from: Some(12), data: &data }, "a5626f70676d65737361676564726f6f6d67636861743a343263736571156466726f6d0c6464617461a16474657874626869"),
            (ServerOp::Message { room: "chat:42", seq: 22, from: None, data: &bytes }, "a5626f70676d65737361676564726f6f6d67636861743a343263736571166466726f6df6646461746143000102"),
            (ServerOp::Join { room: "chat:42", conn: 15, info: &info }, "a4626f70646a6f696e64726f6f6d67636861743a343264636f6e6e0f64696e666fa1646e616d6563616461"),
            (ServerOp::Leave { room: "chat:42", conn: 15, info: &info }, "a4626f70656c6561766564726f6f6d67636861743a343264636f6e6e0f64696e666fa1646e616d6563616461"),
            (ServerOp::Presence { room: "chat:42", members: &members }, "a3626f706870726573656e636564726f6f6d67636861743a3432676d656d6265727382a264636f6e6e0c64696e666fa1646e616d6563616461a264636f6e6e0f64696e666ff6"),
            (ServerOp::History { room: "chat:42", epoch: 3, messages: &messages, complete: true }, "a5626f7067686973746f727964726f6f6d67636861743a34326565706f636803686d6573736167657382a363736571156466726f6d0c6464617461a16474657874626869a363736571166466726f6df664646174614300010268636f6d706c657465f5"),
            (ServerOp::Ack { id: &id, seq: 21 }, "a3626f706361636b626964076373657115"),
            (ServerOp::Error { code: EnvelopeError::BadRoom.code(), reason: &bad_room, id: Some(&id) }, "a4626f70656572726f7264636f6465686261645f726f6f6d66726561736f6e7834726f6f6d206e616d65206d75737420626520312d313238206279746573206f6620412d5a20612d7a20302d39205f202e203a202d62696407"),
        ];
        for (op, cbor_hex) in server {
            let cbor = encode_server(&op, Format::Cbor);
            if hex(&cbor) != cbor_hex {
                mismatches.push(format!("{}\n{}", json_text(&op), hex(&cbor)));
            }
        }
        assert!(
            mismatches.is_empty(),
            "docs/protocol.md examples changed:\n{}",
            mismatches.join("\n")
        );
    }
}
