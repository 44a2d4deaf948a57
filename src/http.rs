//! Plain HTTP answers on the WebSocket listener: routing, `/healthz`, the status page and errors.

use crate::metrics::Stats;
use crate::protocol::handshake::{http_response, HandshakeError, Request};
use crate::room::valid_room_name;

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Upgrade into the raw room `name`.
    Room { name: String, accept: String },
    /// Answer with this response and close.
    Respond(Vec<u8>),
}

/// Route a parsed request head.
pub(crate) fn route(req: &Request, stats: &Stats) -> Route {
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
<p>WebSocket gateway. Connect any WebSocket client to <code>ws://HOST:PORT/ws/ROOM</code>: every message is broadcast to the room.</p>\
<table><tr><td>shards</td><td>{shards}</td></tr>\
<tr><td>connections</td><td>{conns}</td></tr>\
<tr><td>messages in</td><td>{msgs}</td></tr>\
<tr><td>deliveries</td><td>{deliv}</td></tr>\
<tr><td>writes</td><td>{writes}</td></tr>\
<tr><td>dropped frames</td><td>{dropped}</td></tr>\
<tr><td>slow-consumer closes</td><td>{slow}</td></tr>\
<tr><td>heartbeat timeouts</td><td>{hb}</td></tr>\
<tr><td>compressions</td><td>{comp}</td></tr>\
<tr><td>inflations</td><td>{infl}</td></tr></table>\
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
    )
}
