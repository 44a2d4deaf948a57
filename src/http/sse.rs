//! `POST /sse/{stream}`: one client operation (an envelope JSON frame: publish, subscribe,
//! unsubscribe, presence, history, refresh) for an open Server-Sent Events stream, carried to
//! the shard serving the stream (the stream id names it) and handed to the stream's session;
//! the answer comes on the stream. The post carries the same token as the stream (in auth mode
//! `jwt`): a token for another user is refused with 403.

use super::api::{ask, body};
use super::io::HttpIo;
use super::response::api_error;
use crate::ids::ShardId;
use crate::protocol::handshake::{http_response, Request};
use crate::protocol::sse::parse_stream_id;
use crate::room::requests::{ApiAnswer, ApiReq};
use crate::session::sse::Posted;
use crate::shard::ShardRef;

/// The answer to one post on `stream`; `early` holds the body bytes read with the head.
pub(crate) async fn respond<S: HttpIo>(
    shard: &ShardRef,
    stream: &mut S,
    req: &Request,
    early: &[u8],
) -> Vec<u8> {
    let cfg = shard.borrow().cfg.clone();
    let shards = shard.borrow().shards();
    let Some((uid, secret)) = req.path.strip_prefix("/sse/").and_then(parse_stream_id) else {
        return api_error(404, "not_found", "no such stream");
    };
    let home = (uid & 1023) as usize;
    if home >= shards {
        return api_error(404, "not_found", "no such stream");
    }
    let user = match &cfg.auth.verifier {
        None => None,
        Some(v) => {
            let Some(token) = crate::gate::token(req, &cfg) else {
                return unauthorized("token missing");
            };
            match v.verify(&token) {
                Ok(id) => Some(id.sub.to_string()),
                Err(e) => return unauthorized(&e.to_string()),
            }
        }
    };
    let body = match body(stream, req, early, cfg.max_message_bytes).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    if !serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.is_object()) {
        return api_error(
            400,
            "bad_request",
            "body must be one JSON object (an envelope frame)",
        );
    }
    let post = ApiReq::SsePost {
        stream: (uid, secret),
        user,
        body,
    };
    match ask(shard, ShardId(home), post).await {
        Some(ApiAnswer::Posted(p)) => match p {
            Posted::Accepted => http_response(202, "text/plain; charset=utf-8", "", ""),
            Posted::NotFound => api_error(404, "not_found", "no such stream"),
            Posted::Forbidden => api_error(403, "forbidden", "the token is for another user"),
        },
        _ => api_error(503, "unavailable", "shutting down"),
    }
}

fn unauthorized(reason: &str) -> Vec<u8> {
    http_response(
        401,
        "text/plain; charset=utf-8",
        "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n",
        &format!("{reason}\n"),
    )
}
