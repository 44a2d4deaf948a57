//! Server-Sent Events streams (`GET /sse`, the fallback transport) as sessions: an envelope
//! JSON session whose frames go out as events (`Wire::Sse`, encoded once per message like every
//! wire) and whose requests come as `POST /sse/{stream}` (handed to the stream's task by
//! `shard::streams`, then through [`Session::on_message`](super::Session::on_message) like a
//! WebSocket frame). This module makes the stream's first frames.

use bytes::Bytes;

use crate::auth::Identity;
use crate::protocol::envelope::{encode_client, encode_server, ClientOp, Format, ServerOp};
use crate::protocol::frame::{encode_server_frame, OpCode};
use crate::protocol::sse::{stream_id, Sub};

/// `welcome` with the stream's id: `{"op":"welcome","conn":N,...,"stream":"..."}`, as the
/// WebSocket text frame every reply is made as (re-framed as an event when queued).
pub(crate) fn welcome(uid: u64, identity: Option<&Identity>, secret: u64) -> Bytes {
    let op = ServerOp::Welcome {
        conn: uid,
        user: identity.map(|i| &*i.sub),
        exp: identity.map(|i| i.exp),
    };
    let mut json = encode_server(&op, Format::Json);
    json.pop();
    json.extend_from_slice(format!(",\"stream\":\"{}\"}}", stream_id(uid, secret)).as_bytes());
    encode_server_frame(OpCode::Text, false, &json)
}

/// The `subscribe` frames (JSON) that open the stream's rooms of the query.
pub(crate) fn subscribes(subs: Vec<Sub>) -> Vec<Vec<u8>> {
    subs.into_iter()
        .map(|s| {
            let op = ClientOp::Subscribe {
                room: s.room,
                since: s.since,
                epoch: s.epoch,
                presence: s.presence,
            };
            encode_client(&op, Format::Json)
        })
        .collect()
}
