//! The envelope protocol on `GET /ws`: many rooms per connection, presence, history and resume.
//!
//! Sans-io like the rest of [`protocol`](super): a complete message payload (already reassembled,
//! inflated and, for text, UTF-8 checked) in, a [`ClientOp`] out; a [`ServerOp`] in, a payload out
//! (the daemon frames it). The wire format is chosen once per connection by the subprotocol:
//!
//! - [`JSON_SUBPROTOCOL`] (`shardcast.v1.json`): one JSON object per text message;
//! - [`CBOR_SUBPROTOCOL`] (`shardcast.v1.cbor`): one CBOR map per binary message (RFC 8949).
//!
//! Both carry the same maps, keyed by text strings, with `"op"` naming the frame; the server
//! always writes `op` first. `docs/protocol.md` documents every frame with examples in both
//! formats (the examples are checked by the `doc_examples` test at the end of this file).
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
//! | `ack`, `error`, `refreshed`| `id`          |
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
//!   `enc`, `by`, `token`) appearing twice is rejected (`bad_field`).
//! - An optional field set to `null` is the same as an absent one; `data` is required and may
//!   be `null`.
//! - Tags around the envelope's own fields (`op`, `room`, `since`, ...) are ignored; `data` and
//!   `id` are kept exactly as sent.
//! - Nesting is limited to [`MAX_DEPTH`] levels in both formats.
//!
//! # Layout
//! This file holds the types (and the few helpers the submodules share, so that they depend on
//! this module rather than on each other); `decode.rs` parses client frames, `encode.rs` holds
//! the encoding entry points, which call the writers in `json.rs` and `cbor.rs`; `data.rs`
//! converts payload data (JSON values, raw clients' messages). Everything public is re-exported
//! here.

mod cbor;
mod data;
mod decode;
mod encode;
mod json;

#[cfg(test)]
mod fixtures;

pub use data::{data_from_json, data_to_json, data_to_raw, raw_frame_data};
pub use decode::{decode_client, decode_client_with_id, decode_request};
pub use encode::{encode_client, encode_server, encode_server_into, mark_gap, GapMark};

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

/// Longest `token` accepted in a `refresh` (bytes of its UTF-8 text): 8 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

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

/// A frame from an envelope client. Its `Debug` output hides a `refresh` token's text.
#[derive(Clone, PartialEq)]
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
    /// `{"op":"presence","room":R,"by":"conn"|"user"?}`: list the room's members.
    Presence {
        /// Room name (validated).
        room: String,
        /// `"by":"user"`: one entry per user rather than per connection (absent or `"conn"`:
        /// false).
        by_user: bool,
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
    /// `{"op":"refresh","token":TOKEN}`: replace the connection's token (answered by
    /// `refreshed`).
    Refresh {
        /// The new token as sent: text of at most [`MAX_TOKEN_BYTES`] bytes (its signature and
        /// claims are the daemon's to check).
        token: String,
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
            ClientOp::Refresh { .. } => "refresh",
        }
    }

    /// The room the op is about; `None` for `refresh`, which is about the connection.
    pub fn room(&self) -> Option<&str> {
        match self {
            ClientOp::Subscribe { room, .. }
            | ClientOp::Unsubscribe { room }
            | ClientOp::Publish { room, .. }
            | ClientOp::Presence { room, .. }
            | ClientOp::History { room, .. } => Some(room),
            ClientOp::Refresh { .. } => None,
        }
    }
}

/// Like a derived `Debug`, except that a `refresh` shows only its token's length, so that logging
/// an op never writes a credential.
impl std::fmt::Debug for ClientOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientOp::Subscribe {
                room,
                since,
                epoch,
                presence,
            } => f
                .debug_struct("Subscribe")
                .field("room", room)
                .field("since", since)
                .field("epoch", epoch)
                .field("presence", presence)
                .finish(),
            ClientOp::Unsubscribe { room } => {
                f.debug_struct("Unsubscribe").field("room", room).finish()
            }
            ClientOp::Publish { room, data, id } => f
                .debug_struct("Publish")
                .field("room", room)
                .field("data", data)
                .field("id", id)
                .finish(),
            ClientOp::Presence { room, by_user } => f
                .debug_struct("Presence")
                .field("room", room)
                .field("by_user", by_user)
                .finish(),
            ClientOp::History { room, since, limit } => f
                .debug_struct("History")
                .field("room", room)
                .field("since", since)
                .field("limit", limit)
                .finish(),
            ClientOp::Refresh { token } => f
                .debug_struct("Refresh")
                .field("token", &format_args!("<{} bytes>", token.len()))
                .finish(),
        }
    }
}

/// A frame to an envelope client, borrowing everything it carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServerOp<'a> {
    /// `{"op":"welcome","conn":CONN,"user":USER?,"exp":EXP?}` right after the upgrade.
    Welcome {
        /// The connection's id.
        conn: u64,
        /// The user its token names (`None`: no token; then the key is absent).
        user: Option<&'a str>,
        /// When its token expires, in seconds since the Unix epoch (`None`: key absent).
        exp: Option<u64>,
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
        /// The `id` of the `subscribe`, if it had one.
        id: Option<&'a Data>,
    },
    /// `{"op":"unsubscribed","room":R,"reason":TEXT?}`: the answer to `unsubscribe`, or (with a
    /// `reason`) the server ending the subscription; nothing of the room follows.
    Unsubscribed {
        /// Room name.
        room: &'a str,
        /// Why the server ended it (`"forbidden"`); `None` (key absent) answers an `unsubscribe`.
        reason: Option<&'a str>,
        /// The `id` of the `unsubscribe`, if it had one.
        id: Option<&'a Data>,
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
    /// `{"op":"join","room":R,"conn":CONN,"user":USER?,"info":ANY}`
    Join {
        /// Room name.
        room: &'a str,
        /// The connection that joined.
        conn: u64,
        /// Its user (`None`: no token; key absent).
        user: Option<&'a str>,
        /// Its info.
        info: &'a Data,
    },
    /// `{"op":"leave","room":R,"conn":CONN,"user":USER?,"info":ANY}`
    Leave {
        /// Room name.
        room: &'a str,
        /// The connection that left.
        conn: u64,
        /// Its user (`None`: no token; key absent).
        user: Option<&'a str>,
        /// Its info.
        info: &'a Data,
    },
    /// `{"op":"presence","room":R,"members":[{"conn":CONN,"user":USER?,"info":ANY},...]}`
    Presence {
        /// Room name.
        room: &'a str,
        /// `(conn, user, info)` of each member (`user` key absent when `None`).
        members: &'a [(u64, Option<&'a str>, Data)],
        /// The `id` of the `presence` request, if it had one.
        id: Option<&'a Data>,
    },
    /// `{"op":"presence","room":R,"by":"user","members":[{"user":USER|null,"connections":N,
    /// "info":ANY},...]}`: the answer to `presence` with `"by":"user"`.
    PresenceByUser {
        /// Room name.
        room: &'a str,
        /// `(user, connections, info)` of each entry; a `None` user is written as `null`.
        users: &'a [(Option<&'a str>, u32, Data)],
        /// The `id` of the `presence` request, if it had one.
        id: Option<&'a Data>,
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
        /// The `id` of the `history` request, if it had one.
        id: Option<&'a Data>,
    },
    /// `{"op":"ack","id":ID,"seq":N}`
    Ack {
        /// The `id` of the publish.
        id: &'a Data,
        /// The seq the message got.
        seq: u64,
    },
    /// `{"op":"refreshed","exp":EXP,"id":ID?}`: the answer to a `refresh` that was accepted.
    Refreshed {
        /// When the new token expires, in seconds since the Unix epoch.
        exp: u64,
        /// The `id` of the `refresh`, if it had one.
        id: Option<&'a Data>,
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
    /// `{"op":"reconnect","after_ms":N}`: the server is draining (restart, upgrade); this
    /// connection will be closed with 1012 in about `after_ms`; reconnect then (or earlier, to
    /// another node), resuming with `since`/`epoch`.
    Reconnect {
        /// Milliseconds until this connection's close.
        after_ms: u64,
    },
    /// `{"op":"error","code":"rate_limited","reason":TEXT,"retry_after_ms":N,"id":ID?}`: the
    /// connection is over `[limits] messages_per_second`; the request was not carried out.
    RateLimited {
        /// When the next message would be accepted.
        retry_after_ms: u64,
        /// The `id` of the refused request, if it had one.
        id: Option<&'a Data>,
    },
}

/// The `reason` of a `rate_limited` error.
pub const RATE_LIMITED_REASON: &str = "too many messages on this connection";

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
            ServerOp::Presence { .. } | ServerOp::PresenceByUser { .. } => "presence",
            ServerOp::History { .. } => "history",
            ServerOp::Ack { .. } => "ack",
            ServerOp::Refreshed { .. } => "refreshed",
            ServerOp::Error { .. } | ServerOp::RateLimited { .. } => "error",
            ServerOp::Reconnect { .. } => "reconnect",
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

// Shared by the submodules (kept here so they depend on this module, not on each other).

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

#[cfg(test)]
mod tests {
    use super::fixtures::{int, json_text, map, text, DOC_CLIENT_EXAMPLES};
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn answers_echo_the_request_id_last() {
        let id = Data::Integer(7.into());
        let members = vec![(1u64, None, Data::Null)];
        let users = vec![(None, 1u32, Data::Null)];
        let messages = vec![(1u64, None, Data::Null)];
        let ops = [
            ServerOp::Subscribed {
                room: "r",
                seq: 1,
                epoch: 2,
                recovered: false,
                id: Some(&id),
            },
            ServerOp::Unsubscribed {
                room: "r",
                reason: None,
                id: Some(&id),
            },
            ServerOp::Presence {
                room: "r",
                members: &members,
                id: Some(&id),
            },
            ServerOp::PresenceByUser {
                room: "r",
                users: &users,
                id: Some(&id),
            },
            ServerOp::History {
                room: "r",
                epoch: 2,
                messages: &messages,
                complete: true,
                id: Some(&id),
            },
        ];
        for op in &ops {
            let json = String::from_utf8(encode_server(op, Format::Json)).unwrap();
            assert!(json.ends_with(",\"id\":7}"), "{json}");
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            // CBOR: the same map, the pair counted in its header.
            let cbor = encode_server(op, Format::Cbor);
            let c: ciborium::Value = ciborium::from_reader(&cbor[..]).unwrap();
            let m = c.as_map().unwrap();
            assert_eq!(m.len(), v.as_object().unwrap().len(), "{json}");
            assert_eq!(m.last().unwrap().0.as_text(), Some("id"));
        }
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

    #[test]
    fn mark_gap_adds_the_flag_to_messages_only() {
        let data = map(&[("text", text("hi"))]);
        let msg = ServerOp::Message {
            room: "chat:42",
            seq: 21,
            from: Some(12),
            data: &data,
        };
        let marked = |p: &[u8], f| match mark_gap(p, f) {
            GapMark::Marked(m) => m,
            other => panic!("{other:?}"),
        };
        let json = marked(&encode_server(&msg, Format::Json), Format::Json);
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"op":"message","gap":true,"room":"chat:42","seq":21,"from":12,"data":{"text":"hi"}}"#
        );
        let cbor = marked(&encode_server(&msg, Format::Cbor), Format::Cbor);
        let v: ciborium::Value = ciborium::from_reader(&cbor[..]).unwrap();
        let m = v.as_map().unwrap();
        assert_eq!(m.len(), 6);
        let get = |k: &str| {
            m.iter()
                .find(|(x, _)| x.as_text() == Some(k))
                .map(|(_, v)| v)
        };
        assert_eq!(get("gap"), Some(&ciborium::Value::Bool(true)));
        assert_eq!(get("seq"), Some(&ciborium::Value::Integer(21.into())));
        assert_eq!(mark_gap(&json, Format::Json), GapMark::AlreadyMarked);
        assert_eq!(mark_gap(&cbor, Format::Cbor), GapMark::AlreadyMarked);
        let ack = ServerOp::Ack { id: &data, seq: 1 };
        for f in [Format::Json, Format::Cbor] {
            assert_eq!(mark_gap(&encode_server(&ack, f), f), GapMark::NotAMessage);
            assert_eq!(mark_gap(b"", f), GapMark::NotAMessage);
        }
    }

    // --- docs/protocol.md examples ------------------------------------------------------------

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
        let members = [(12, None, info.clone()), (15, None, Data::Null)];
        let members_auth = [(12, Some("ada"), info.clone()), (15, None, Data::Null)];
        let users = [(Some("ada"), 2, info.clone()), (None, 1, Data::Null)];
        let messages = [(21, Some(12), data.clone()), (22, None, bytes.clone())];
        let id = int(7);
        let refresh_id = int(8);
        let bad_room = EnvelopeError::BadRoom.to_string();
        // (frame, its JSON as documented, its CBOR hex as documented)
        let server: Vec<(ServerOp<'_>, &str, &str)> = vec![
            (ServerOp::Welcome { conn: 12, user: None, exp: None }, r#"{"op":"welcome","conn":12}"#, "a2626f706777656c636f6d6564636f6e6e0c"),
            (ServerOp::Welcome { conn: 12, user: Some("ada"), exp: Some(1767225600) }, r#"{"op":"welcome","conn":12,"user":"ada","exp":1767225600}"#, "a4626f706777656c636f6d6564636f6e6e0c647573657263616461636578701a6955b900"),
            (ServerOp::Subscribed { room: "chat:42", seq: 20, epoch: 3, recovered: true, id: None  }, r#"{"op":"subscribed","room":"chat:42","seq":20,"epoch":3,"recovered":true}"#, "a5626f706a7375627363726962656464726f6f6d67636861743a343263736571146565706f636803697265636f7665726564f5"),
            (ServerOp::Unsubscribed { room: "chat:42", reason: None, id: None  }, r#"{"op":"unsubscribed","room":"chat:42"}"#, "a2626f706c756e7375627363726962656464726f6f6d67636861743a3432"),
            (ServerOp::Unsubscribed { room: "chat:42", reason: Some("forbidden"), id: None  }, r#"{"op":"unsubscribed","room":"chat:42","reason":"forbidden"}"#, "a3626f706c756e7375627363726962656464726f6f6d67636861743a343266726561736f6e69666f7262696464656e"),
            (ServerOp::Message { room: "chat:42", seq: 21, from: Some(12), data: &data }, r#"{"op":"message","room":"chat:42","seq":21,"from":12,"data":{"text":"hi"}}"#, "a5626f70676d65737361676564726f6f6d67636861743a343263736571156466726f6d0c6464617461a16474657874626869"),
            (ServerOp::Message { room: "chat:42", seq: 22, from: None, data: &bytes }, r#"{"op":"message","room":"chat:42","seq":22,"from":null,"data":"AAEC","enc":"base64"}"#, "a5626f70676d65737361676564726f6f6d67636861743a343263736571166466726f6df6646461746143000102"),
            (ServerOp::Join { room: "chat:42", conn: 15, user: None, info: &info }, r#"{"op":"join","room":"chat:42","conn":15,"info":{"name":"ada"}}"#, "a4626f70646a6f696e64726f6f6d67636861743a343264636f6e6e0f64696e666fa1646e616d6563616461"),
            (ServerOp::Join { room: "chat:42", conn: 15, user: Some("ada"), info: &info }, r#"{"op":"join","room":"chat:42","conn":15,"user":"ada","info":{"name":"ada"}}"#, "a5626f70646a6f696e64726f6f6d67636861743a343264636f6e6e0f64757365726361646164696e666fa1646e616d6563616461"),
            (ServerOp::Leave { room: "chat:42", conn: 15, user: None, info: &info }, r#"{"op":"leave","room":"chat:42","conn":15,"info":{"name":"ada"}}"#, "a4626f70656c6561766564726f6f6d67636861743a343264636f6e6e0f64696e666fa1646e616d6563616461"),
            (ServerOp::Leave { room: "chat:42", conn: 15, user: Some("ada"), info: &info }, r#"{"op":"leave","room":"chat:42","conn":15,"user":"ada","info":{"name":"ada"}}"#, "a5626f70656c6561766564726f6f6d67636861743a343264636f6e6e0f64757365726361646164696e666fa1646e616d6563616461"),
            (ServerOp::Presence { room: "chat:42", members: &members, id: None  }, r#"{"op":"presence","room":"chat:42","members":[{"conn":12,"info":{"name":"ada"}},{"conn":15,"info":null}]}"#, "a3626f706870726573656e636564726f6f6d67636861743a3432676d656d6265727382a264636f6e6e0c64696e666fa1646e616d6563616461a264636f6e6e0f64696e666ff6"),
            (ServerOp::Presence { room: "chat:42", members: &members_auth, id: None  }, r#"{"op":"presence","room":"chat:42","members":[{"conn":12,"user":"ada","info":{"name":"ada"}},{"conn":15,"info":null}]}"#, "a3626f706870726573656e636564726f6f6d67636861743a3432676d656d6265727382a364636f6e6e0c64757365726361646164696e666fa1646e616d6563616461a264636f6e6e0f64696e666ff6"),
            (ServerOp::PresenceByUser { room: "chat:42", users: &users, id: None  }, r#"{"op":"presence","room":"chat:42","by":"user","members":[{"user":"ada","connections":2,"info":{"name":"ada"}},{"user":null,"connections":1,"info":null}]}"#, "a4626f706870726573656e636564726f6f6d67636861743a34326262796475736572676d656d6265727382a36475736572636164616b636f6e6e656374696f6e730264696e666fa1646e616d6563616461a36475736572f66b636f6e6e656374696f6e730164696e666ff6"),
            (ServerOp::History { room: "chat:42", epoch: 3, messages: &messages, complete: true, id: None  }, r#"{"op":"history","room":"chat:42","epoch":3,"messages":[{"seq":21,"from":12,"data":{"text":"hi"}},{"seq":22,"from":null,"data":"AAEC","enc":"base64"}],"complete":true}"#, "a5626f7067686973746f727964726f6f6d67636861743a34326565706f636803686d6573736167657382a363736571156466726f6d0c6464617461a16474657874626869a363736571166466726f6df664646174614300010268636f6d706c657465f5"),
            (ServerOp::Ack { id: &id, seq: 21 }, r#"{"op":"ack","id":7,"seq":21}"#, "a3626f706361636b626964076373657115"),
            (ServerOp::Refreshed { exp: 1767229200, id: Some(&refresh_id) }, r#"{"op":"refreshed","exp":1767229200,"id":8}"#, "a3626f7069726566726573686564636578701a6955c71062696408"),
            (ServerOp::Error { code: EnvelopeError::BadRoom.code(), reason: &bad_room, id: Some(&id) }, r#"{"op":"error","code":"bad_room","reason":"room name must be 1-128 bytes of A-Z a-z 0-9 _ . : -","id":7}"#, "a4626f70656572726f7264636f6465686261645f726f6f6d66726561736f6e7834726f6f6d206e616d65206d75737420626520312d313238206279746573206f6620412d5a20612d7a20302d39205f202e203a202d62696407"),
            (ServerOp::Error { code: "forbidden", reason: "not allowed to publish in this room", id: Some(&id) }, r#"{"op":"error","code":"forbidden","reason":"not allowed to publish in this room","id":7}"#, "a4626f70656572726f7264636f646569666f7262696464656e66726561736f6e78236e6f7420616c6c6f77656420746f207075626c69736820696e207468697320726f6f6d62696407"),
        ];
        for (op, json, cbor_hex) in server {
            let cbor = encode_server(&op, Format::Cbor);
            if json_text(&op) != json || hex(&cbor) != cbor_hex {
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
