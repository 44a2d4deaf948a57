//! The HTTP API (`/api/...`, on only when `[api] key` is set): `POST /api/publish`,
//! `GET /api/rooms`, `GET /api/rooms/{room}/presence`, each behind `Authorization: Bearer KEY`.
//! Requests are answered by the room's home shard (or every shard, for `rooms`) through the
//! bus; see docs/protocol.md, "HTTP API".

use std::sync::Arc;

use bytes::BytesMut;

use super::io::HttpIo;
use super::response::{api_error, json};
use crate::auth::{same_key, Verifier};
use crate::cluster::Command;
use crate::ids::ShardId;
use crate::protocol::envelope::{self, ClientOp, Data, Format};
use crate::protocol::handshake::{http_response, Request};
use crate::protocol::room_name::valid_room_name;
use crate::room::home::home_index;
use crate::room::requests::{ApiAnswer, ApiReq};
use crate::shard::bus::ShardMsg;
use crate::shard::ShardRef;

/// Why an API request was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// No key and no valid token.
    Unauthorized,
    /// A valid token without `"api": true`.
    NotApi,
}

/// The API key, or (`[auth] mode = "jwt"`) a token with `"api": true`.
fn authorize(given: Option<&str>, key: Option<&str>, v: Option<&Verifier>) -> Result<(), Refused> {
    let Some(given) = given else {
        return Err(Refused::Unauthorized);
    };
    if key.is_some_and(|k| same_key(given.as_bytes(), k.as_bytes())) {
        return Ok(());
    }
    match v.map(|v| v.verify(given)) {
        Some(Ok(id)) if id.api => Ok(()),
        Some(Ok(_)) => Err(Refused::NotApi),
        _ => Err(Refused::Unauthorized),
    }
}

/// Serve one HTTP API request on `stream`; `early` holds the body bytes read with the head.
pub(crate) async fn serve<S: HttpIo>(
    shard: &ShardRef,
    stream: &mut S,
    req: &Request,
    early: &[u8],
) {
    let resp = respond(shard, stream, req, early).await;
    answer(stream, resp).await;
}

/// Send `resp` and end the connection.
pub(crate) async fn answer<S: HttpIo>(stream: &mut S, resp: Vec<u8>) {
    let _ = stream.send(resp).await;
    stream.finish().await;
}

/// An API route.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Publish,
    Rooms,
    Presence(&'a str),
    WrongMethod,
    NotFound,
}

/// Route `/api/{path}` (pure).
fn endpoint<'a>(method: &str, path: &'a str) -> Endpoint<'a> {
    let read = matches!(method, "GET" | "HEAD");
    match path {
        "publish" if method == "POST" => Endpoint::Publish,
        "rooms" if read => Endpoint::Rooms,
        "publish" | "rooms" => Endpoint::WrongMethod,
        p => match p
            .strip_prefix("rooms/")
            .and_then(|r| r.strip_suffix("/presence"))
        {
            Some(room) if read => Endpoint::Presence(room),
            Some(_) => Endpoint::WrongMethod,
            None => Endpoint::NotFound,
        },
    }
}

async fn respond<S: HttpIo>(
    shard: &ShardRef,
    stream: &mut S,
    req: &Request,
    early: &[u8],
) -> Vec<u8> {
    let (key, verifier) = {
        let s = shard.borrow();
        (s.cfg.api_key.clone(), s.cfg.auth.verifier.clone())
    };
    if key.is_none() && verifier.is_none() {
        return api_error(404, "api_disabled", "the HTTP API is off: set [api] key");
    }
    let given = req.authorization.as_deref().and_then(crate::gate::bearer);
    match authorize(given, key.as_deref(), verifier.as_deref()) {
        Ok(()) => {}
        Err(Refused::Unauthorized) => {
            return http_response(
                401,
                "application/json",
                "WWW-Authenticate: Bearer\r\n",
                "{\"error\":\"unauthorized\",\"reason\":\"Authorization: Bearer KEY required\"}\n",
            )
        }
        Err(Refused::NotApi) => {
            return api_error(403, "forbidden", "the token has no \"api\": true claim")
        }
    }
    let path = req.path.strip_prefix("/api/").unwrap_or("");
    match endpoint(&req.method, path) {
        Endpoint::Publish => publish(shard, stream, req, early).await,
        Endpoint::Rooms => rooms(shard).await,
        Endpoint::Presence(room) => presence(shard, room).await,
        Endpoint::WrongMethod => api_error(405, "method_not_allowed", "wrong method"),
        Endpoint::NotFound => api_error(404, "not_found", "no such API endpoint"),
    }
}

/// `POST /api/publish`.
async fn publish<S: HttpIo>(
    shard: &ShardRef,
    stream: &mut S,
    req: &Request,
    early: &[u8],
) -> Vec<u8> {
    let (max_body, shards) = {
        let s = shard.borrow();
        (s.cfg.max_message_bytes, s.shards())
    };
    let body = match body(stream, req, early, max_body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let (room, data) = match parse_publish(&body) {
        Ok(x) => x,
        Err((code, reason)) => return api_error(400, code, &reason),
    };
    let home = ShardId(home_index(&room, shards));
    let room: Arc<str> = Arc::from(room);
    let req = ApiReq::Publish {
        room: room.clone(),
        data,
    };
    match ask(shard, home, req).await {
        Some(ApiAnswer::Seq(seq)) => json(200, &serde_json::json!({ "room": &*room, "seq": seq })),
        Some(ApiAnswer::Unavailable) => api_error(503, "unavailable", "cluster: redis unavailable"),
        _ => api_error(503, "unavailable", "shutting down"),
    }
}

/// `GET /api/rooms`: every room with members, from every shard (in cluster mode: from every
/// node, through Redis; `cluster::rooms`).
async fn rooms(shard: &ShardRef) -> Vec<u8> {
    let link = shard.borrow().cluster.as_ref().map(|c| c.link.clone());
    let all = match link {
        Some(link) => {
            let (tx, rx) = flume::bounded(1);
            let asked = link.send(Command::Rooms { reply: tx });
            match (asked, rx.recv_async().await) {
                (Ok(()), Ok(Ok(all))) => all,
                _ => return api_error(503, "unavailable", "cluster: redis unavailable"),
            }
        }
        None => local_rooms(shard).await,
    };
    let rooms: Vec<serde_json::Value> = all
        .iter()
        .map(|(r, n)| serde_json::json!({ "room": &**r, "members": n }))
        .collect();
    json(200, &serde_json::json!({ "rooms": rooms }))
}

/// Every room with members on this node.
async fn local_rooms(shard: &ShardRef) -> Vec<(Arc<str>, u64)> {
    let shards = shard.borrow().shards();
    let mut all: Vec<(Arc<str>, u64)> = Vec::new();
    for i in 0..shards {
        if let Some(ApiAnswer::Rooms(r)) = ask(shard, ShardId(i), ApiReq::Rooms).await {
            all.extend(r);
        }
    }
    all.sort();
    all
}

/// `GET /api/rooms/{room}/presence`.
async fn presence(shard: &ShardRef, room: &str) -> Vec<u8> {
    if !valid_room_name(room) {
        return api_error(
            400,
            "bad_room",
            "room name must be 1-128 bytes of A-Z a-z 0-9 _ . : -",
        );
    }
    let home = ShardId(home_index(room, shard.borrow().shards()));
    let room: Arc<str> = Arc::from(room);
    match ask(shard, home, ApiReq::Presence { room: room.clone() }).await {
        Some(ApiAnswer::Members(m)) => {
            let members: Vec<serde_json::Value> = m
                .iter()
                .map(|(c, u, i)| match u {
                    Some(u) => serde_json::json!({ "conn": c, "user": &**u, "info": envelope::data_to_json(i) }),
                    None => serde_json::json!({ "conn": c, "info": envelope::data_to_json(i) }),
                })
                .collect();
            let body = serde_json::json!({ "room": &*room, "members": members });
            json(200, &body)
        }
        _ => api_error(503, "unavailable", "shutting down"),
    }
}

/// `{"room":R,"data":ANY(,"enc":"base64")}`, checked by the envelope decoder's `publish` rules.
fn parse_publish(body: &[u8]) -> Result<(String, Data), (&'static str, String)> {
    let mut v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ("bad_request", format!("body is not JSON: {e}")))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(("bad_request", "body must be a JSON object".into()));
    };
    obj.remove("id");
    obj.insert("op".into(), serde_json::Value::from("publish"));
    let frame = serde_json::to_vec(&v).map_err(|e| ("bad_request", e.to_string()))?;
    match envelope::decode_client(&frame, Format::Json) {
        Ok(ClientOp::Publish { room, data, .. }) => Ok((room, data)),
        Ok(_) => Err(("bad_request", "not a publish".into())),
        Err(e) => Err((e.code(), e.to_string())),
    }
}

/// The request's body (`Content-Length` bytes, at most `max`), or the response refusing it.
pub(crate) async fn body<S: HttpIo>(
    stream: &mut S,
    req: &Request,
    early: &[u8],
    max: usize,
) -> Result<Vec<u8>, Vec<u8>> {
    let Some(len) = req.content_length else {
        return Err(api_error(411, "length_required", "Content-Length required"));
    };
    if len > max {
        return Err(api_error(
            413,
            "too_large",
            "body larger than limits.max_message_bytes",
        ));
    }
    read_body(stream, early, len)
        .await
        .ok_or_else(|| api_error(400, "bad_request", "incomplete body"))
}

/// Read a request body of `len` bytes, starting with what came with the head.
async fn read_body<S: HttpIo>(stream: &mut S, early: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(&early[..early.len().min(len)]);
    while body.len() < len {
        let buf = BytesMut::with_capacity((len - body.len()).min(64 * 1024));
        let (res, buf) = stream.read_append(buf).await;
        match res {
            Ok(0) | Err(_) => return None,
            Ok(_) => body.extend_from_slice(&buf[..buf.len().min(len - body.len())]),
        }
    }
    Some(body)
}

/// Ask shard `to` (possibly this one, through its own inbox) and wait for the answer.
pub(crate) async fn ask(shard: &ShardRef, to: ShardId, req: ApiReq) -> Option<ApiAnswer> {
    let peer = shard.borrow().bus.peers.get(to.0)?.clone();
    let (tx, rx) = flume::bounded(1);
    peer.send_async(ShardMsg::Api(req, tx)).await.ok()?;
    rx.recv_async().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("POST", "publish"), Endpoint::Publish);
        assert_eq!(endpoint("GET", "publish"), Endpoint::WrongMethod);
        assert_eq!(endpoint("GET", "rooms"), Endpoint::Rooms);
        assert_eq!(endpoint("HEAD", "rooms"), Endpoint::Rooms);
        assert_eq!(endpoint("POST", "rooms"), Endpoint::WrongMethod);
        assert_eq!(
            endpoint("GET", "rooms/a:b/presence"),
            Endpoint::Presence("a:b")
        );
        assert_eq!(
            endpoint("DELETE", "rooms/a/presence"),
            Endpoint::WrongMethod
        );
        // `rooms/presence` once sliced `&p[6..5]` and aborted the daemon.
        assert_eq!(endpoint("GET", "rooms/presence"), Endpoint::NotFound);
        assert_eq!(endpoint("GET", "rooms//presence"), Endpoint::Presence(""));
        assert_eq!(endpoint("GET", "rooms/"), Endpoint::NotFound);
        assert_eq!(endpoint("GET", "/presence"), Endpoint::NotFound);
        assert_eq!(endpoint("GET", ""), Endpoint::NotFound);
    }
}
