//! Plain HTTP answers on the WebSocket listener: routing, `/healthz`, the status page, errors,
//! and the HTTP API (`/api/...`, enabled by `[api] key`).

use std::sync::Arc;

use bytes::BytesMut;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::fanout::ShardMsg;
use crate::home::{ApiAnswer, ApiReq};
use crate::metrics::Stats;
use crate::protocol::envelope::{self, ClientOp, Data, Format};
use crate::protocol::handshake::{http_response, HandshakeError, Request};
use crate::room::valid_room_name;
use crate::shard::{ShardId, ShardRef};

/// Where a request goes.
#[derive(Debug, PartialEq)]
pub(crate) enum Route {
    /// Upgrade into the raw room `name`.
    Room { name: String, accept: String },
    /// Upgrade into the envelope protocol.
    Envelope {
        format: Format,
        info: Arc<Data>,
        accept: String,
    },
    /// The HTTP API.
    Api,
    /// Answer with this response and close.
    Respond(Vec<u8>),
}

/// Route a parsed request head.
pub(crate) fn route(req: &Request, stats: &Stats, max_info_bytes: usize) -> Route {
    if req.path == "/ws" {
        let Some(format) = Format::negotiate(&req.protocols) else {
            return Route::Respond(text(
                400,
                "/ws speaks the envelope protocol: ask for it with a \
                 Sec-WebSocket-Protocol header naming shardcast.v1.json or shardcast.v1.cbor \
                 (see docs/protocol.md); raw rooms are at /ws/{room}\n",
            ));
        };
        let info = match parse_info(req.query.as_deref(), max_info_bytes) {
            Ok(i) => i,
            Err(reason) => return Route::Respond(text(400, &format!("{reason}\n"))),
        };
        return match req.validate_upgrade() {
            Ok(accept) => Route::Envelope {
                format,
                info: Arc::new(info),
                accept,
            },
            Err(e) => Route::Respond(handshake_error(&e)),
        };
    }
    if req.path.starts_with("/api/") {
        return Route::Api;
    }
    if let Some(name) = req.path.strip_prefix("/ws/") {
        if !valid_room_name(name) {
            return Route::Respond(text(
                400,
                "invalid room name: 1-128 bytes of [A-Za-z0-9_.:-]\n",
            ));
        }
        return match req.validate_upgrade() {
            Ok(accept) => Route::Room {
                name: name.to_string(),
                accept,
            },
            Err(e) => Route::Respond(handshake_error(&e)),
        };
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Route::Respond(http_response(
            405,
            "text/plain",
            "Allow: GET\r\n",
            "method not allowed\n",
        ));
    }
    match req.path.as_str() {
        "/healthz" => Route::Respond(text(200, "ok\n")),
        "/" => Route::Respond(http_response(
            200,
            "text/html; charset=utf-8",
            "",
            &status_page(stats),
        )),
        _ => Route::Respond(text(404, "not found\n")),
    }
}

/// A plain-text response.
pub(crate) fn text(status: u16, body: &str) -> Vec<u8> {
    http_response(status, "text/plain; charset=utf-8", "", body)
}

/// The response for a refused handshake.
pub(crate) fn handshake_error(e: &HandshakeError) -> Vec<u8> {
    let extra = if matches!(e, HandshakeError::UnsupportedVersion) {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    http_response(
        e.status(),
        "text/plain; charset=utf-8",
        extra,
        &format!("{e}\n"),
    )
}

fn status_page(stats: &Stats) -> String {
    let s = stats.snapshot();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>shardcast</title></head><body>\
<h1>shardcast {version}</h1>\
<p>WebSocket gateway. Connect any WebSocket client to <code>ws://HOST:PORT/ws/ROOM</code>: every message is broadcast to the room. \
Rooms with presence, history and resume: <code>ws://HOST:PORT/ws</code> with subprotocol <code>shardcast.v1.json</code> or <code>shardcast.v1.cbor</code>.</p>\
<table><tr><td>shards</td><td>{shards}</td></tr>\
<tr><td>connections</td><td>{conns}</td></tr>\
<tr><td>messages in</td><td>{msgs}</td></tr>\
<tr><td>deliveries</td><td>{deliv}</td></tr>\
<tr><td>writes</td><td>{writes}</td></tr>\
<tr><td>dropped frames</td><td>{dropped}</td></tr>\
<tr><td>slow-consumer closes</td><td>{slow}</td></tr>\
<tr><td>heartbeat timeouts</td><td>{hb}</td></tr>\
<tr><td>compressions</td><td>{comp}</td></tr>\
<tr><td>inflations</td><td>{infl}</td></tr>\
<tr><td>envelope encodings</td><td>{enc}</td></tr></table>\
<p><a href=\"/healthz\">/healthz</a></p></body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
        shards = stats.shard_count(),
        conns = s.connections,
        msgs = s.messages_in,
        deliv = s.deliveries,
        writes = s.write_calls,
        dropped = s.dropped_frames,
        slow = s.slow_consumer_closes,
        hb = s.heartbeat_timeouts,
        comp = s.compressions,
        infl = s.inflations,
        enc = s.envelope_encodings,
    )
}

/// The `info` query parameter: percent-encoded JSON, at most `max` bytes once decoded.
fn parse_info(query: Option<&str>, max: usize) -> Result<Data, String> {
    let Some(raw) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("info="))
    else {
        return Ok(Data::Null);
    };
    let bytes = percent_decode(raw).ok_or("info: bad percent-encoding")?;
    if bytes.len() > max {
        return Err(format!("info: larger than {max} bytes"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("info: not JSON: {e}"))?;
    Ok(envelope::data_from_json(value))
}

/// Decode `%XX` escapes (and `+` as a space, as forms write it).
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// A JSON response.
fn json(status: u16, body: &serde_json::Value) -> Vec<u8> {
    http_response(status, "application/json", "", &format!("{body}\n"))
}

/// A JSON error response `{"error":CODE,"reason":TEXT}`.
fn api_error(status: u16, code: &str, reason: &str) -> Vec<u8> {
    json(
        status,
        &serde_json::json!({ "error": code, "reason": reason }),
    )
}

/// Compare without an early exit on the first differing byte.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serve one HTTP API request on `stream`; `early` holds the body bytes read with the head.
pub(crate) async fn serve_api(
    shard: &ShardRef,
    stream: &mut TcpStream,
    req: &Request,
    early: &[u8],
) {
    let resp = api_response(shard, stream, req, early).await;
    let _ = stream.write_all(resp).await;
    let _ = stream.shutdown().await;
}

async fn api_response(
    shard: &ShardRef,
    stream: &mut TcpStream,
    req: &Request,
    early: &[u8],
) -> Vec<u8> {
    let (key, max_body, shards) = {
        let s = shard.borrow();
        (
            s.cfg.api_key.clone(),
            s.cfg.max_message_bytes,
            s.peers.len(),
        )
    };
    let Some(key) = key else {
        return api_error(404, "api_disabled", "the HTTP API is off: set [api] key");
    };
    let given = req
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim);
    if !given.is_some_and(|g| same_key(g.as_bytes(), key.as_bytes())) {
        return http_response(
            401,
            "application/json",
            "WWW-Authenticate: Bearer\r\n",
            "{\"error\":\"unauthorized\",\"reason\":\"Authorization: Bearer KEY required\"}\n",
        );
    }
    let path = &req.path["/api/".len()..];
    match (req.method.as_str(), path) {
        ("POST", "publish") => {
            let Some(len) = req.content_length else {
                return api_error(411, "length_required", "Content-Length required");
            };
            if len > max_body {
                return api_error(
                    413,
                    "too_large",
                    "body larger than limits.max_message_bytes",
                );
            }
            let Some(body) = read_body(stream, early, len).await else {
                return api_error(400, "bad_request", "incomplete body");
            };
            let (room, data) = match parse_publish(&body) {
                Ok(x) => x,
                Err((code, reason)) => return api_error(400, code, &reason),
            };
            let home = ShardId(crate::home::home_index(&room, shards));
            let room: Arc<str> = Arc::from(room);
            match ask(
                shard,
                home,
                ApiReq::Publish {
                    room: room.clone(),
                    data,
                },
            )
            .await
            {
                Some(ApiAnswer::Seq(seq)) => {
                    json(200, &serde_json::json!({ "room": &*room, "seq": seq }))
                }
                _ => api_error(503, "unavailable", "shutting down"),
            }
        }
        ("GET" | "HEAD", "rooms") => {
            let mut all: Vec<(Arc<str>, u64)> = Vec::new();
            for i in 0..shards {
                if let Some(ApiAnswer::Rooms(r)) = ask(shard, ShardId(i), ApiReq::Rooms).await {
                    all.extend(r);
                }
            }
            all.sort();
            let rooms: Vec<serde_json::Value> = all
                .iter()
                .map(|(r, n)| serde_json::json!({ "room": &**r, "members": n }))
                .collect();
            json(200, &serde_json::json!({ "rooms": rooms }))
        }
        ("GET" | "HEAD", p) if p.starts_with("rooms/") && p.ends_with("/presence") => {
            let room = &p["rooms/".len()..p.len() - "/presence".len()];
            if !valid_room_name(room) {
                return api_error(
                    400,
                    "bad_room",
                    "room name must be 1-128 bytes of A-Z a-z 0-9 _ . : -",
                );
            }
            let home = ShardId(crate::home::home_index(room, shards));
            let room: Arc<str> = Arc::from(room);
            match ask(shard, home, ApiReq::Presence { room: room.clone() }).await {
                Some(ApiAnswer::Members(m)) => {
                    let members: Vec<serde_json::Value> = m
                        .iter()
                        .map(|(c, i)| serde_json::json!({ "conn": c, "info": envelope::data_to_json(i) }))
                        .collect();
                    json(
                        200,
                        &serde_json::json!({ "room": &*room, "members": members }),
                    )
                }
                _ => api_error(503, "unavailable", "shutting down"),
            }
        }
        (_, "publish" | "rooms") => api_error(405, "method_not_allowed", "wrong method"),
        _ => api_error(404, "not_found", "no such API endpoint"),
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

/// Read a request body of `len` bytes, starting with what came with the head.
async fn read_body(stream: &mut TcpStream, early: &[u8], len: usize) -> Option<Vec<u8>> {
    use monoio::io::AsyncReadRent;
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(&early[..early.len().min(len)]);
    while body.len() < len {
        let buf = BytesMut::with_capacity((len - body.len()).min(64 * 1024));
        let (res, buf) = stream.read(buf).await;
        match res {
            Ok(0) | Err(_) => return None,
            Ok(_) => body.extend_from_slice(&buf[..buf.len().min(len - body.len())]),
        }
    }
    Some(body)
}

/// Ask shard `to` (possibly this one, through its own inbox) and wait for the answer.
async fn ask(shard: &ShardRef, to: ShardId, req: ApiReq) -> Option<ApiAnswer> {
    let peer = shard.borrow().peers.get(to.0)?.clone();
    let (tx, rx) = flume::bounded(1);
    peer.send_async(ShardMsg::Api(req, tx)).await.ok()?;
    rx.recv_async().await.ok()
}
