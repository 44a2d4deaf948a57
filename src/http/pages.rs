//! Static and generated pages of the public listener: the status page.

use crate::metrics::Stats;
use crate::protocol::handshake::http_response;

/// `GET /`: the status page with the node's counters.
pub(crate) fn status(stats: &Stats) -> Vec<u8> {
    let body = status_html(stats);
    http_response(200, "text/html; charset=utf-8", "", &body)
}

fn status_html(stats: &Stats) -> String {
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
<tr><td>envelope encodings</td><td>{enc}</td></tr>\
<tr><td>dropped replies</td><td>{dropped_replies}</td></tr>\
<tr><td>auth failures</td><td>{auth}</td></tr>\
<tr><td>forbidden requests</td><td>{forbidden}</td></tr>\
<tr><td>token expiries</td><td>{expiries}</td></tr>\
<tr><td>admission refusals</td><td>{admission}</td></tr>\
<tr><td>rate-limited messages</td><td>{rate_limited}</td></tr>\
<tr><td>room full refusals</td><td>{room_full}</td></tr></table>\
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
        dropped_replies = s.dropped_replies,
        auth = s.auth_failures,
        forbidden = s.forbidden,
        expiries = s.token_expiries,
        admission = s.admission_refusals,
        rate_limited = s.rate_limited,
        room_full = s.room_full,
    )
}
