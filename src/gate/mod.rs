//! The gate: every decision about an HTTP request on the public listener, made before any
//! WebSocket state exists, as pure functions of the request and a [`Policy`] snapshot. The async
//! handshake (`transport::ws::upgrade`) only reads the head, calls [`parse_head`] and
//! [`plan_upgrade`], and writes what they decide.
//!
//! Today the gate routes (raw room, envelope protocol, HTTP API, health and status pages),
//! validates the upgrade (RFC 6455 §4.2.1), negotiates the subprotocol and permessage-deflate,
//! and admits (connection limit, shutdown). Authentication, origin checks and rate limits come
//! in as further steps of [`plan_upgrade`], each a [`Rejection`] with its status.

mod info;

use std::sync::Arc;

use crate::config::Compression;
use crate::protocol::deflate::{negotiate, DeflateMode, DeflateParams};
use crate::protocol::envelope::{Data, Format};
use crate::protocol::handshake::{
    http_response, parse_request, switching_protocols, HandshakeError, Request,
};
use crate::protocol::room_name::valid_room_name;

/// What the gate knows of the daemon when a request comes in.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `limits.max_header_bytes`.
    pub max_header_bytes: usize,
    /// `envelope.max_info_bytes`.
    pub max_info_bytes: usize,
    /// `[compression]`.
    pub compression: Compression,
    /// Open WebSocket connections on the node.
    pub open_connections: usize,
    /// `limits.max_connections`.
    pub max_connections: usize,
    /// The daemon is shutting down.
    pub draining: bool,
}

/// Where an accepted request goes.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Upgrade to a WebSocket.
    Upgrade(Upgrade),
    /// The HTTP API (`/api/...`): authenticated and answered by `http::api`.
    Api,
    /// `GET /healthz`.
    Health,
    /// `GET /`: the status page.
    Status,
}

/// An admitted WebSocket upgrade.
#[derive(Debug, PartialEq)]
pub struct Upgrade {
    /// What the connection speaks.
    pub target: Target,
    /// The `101 Switching Protocols` response, every negotiated header included.
    pub response: Vec<u8>,
    /// permessage-deflate parameters, if negotiated.
    pub deflate: Option<DeflateParams>,
    /// Broadcasts reach it in their shared compressed variant (shared mode with a 15-bit
    /// window; a client that asked for a smaller server window gets plain frames, always valid).
    pub shared_deflate: bool,
}

/// What an upgraded connection speaks.
#[derive(Debug, PartialEq)]
pub enum Target {
    /// The raw room with this (valid) name.
    Room(String),
    /// The envelope protocol in `format`, with the connection's presence `info`.
    Envelope {
        /// JSON or CBOR.
        format: Format,
        /// `?info=` (JSON), `null` when absent.
        info: Arc<Data>,
    },
}

/// Why the gate refused a request. Each maps to an HTTP status and a one-line body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The head is malformed, too large, or not a valid WebSocket upgrade (400, 426, 431).
    #[error("{0}")]
    Handshake(HandshakeError),
    /// `/ws` without one of the envelope subprotocols (400).
    #[error(
        "/ws speaks the envelope protocol: ask for it with a Sec-WebSocket-Protocol header \
         naming shardcast.v1.json or shardcast.v1.cbor (see docs/protocol.md); raw rooms are \
         at /ws/{{room}}"
    )]
    NoSubprotocol,
    /// `/ws/{room}` with an invalid room name (400).
    #[error("invalid room name: 1-128 bytes of [A-Za-z0-9_.:-]")]
    BadRoom,
    /// `?info=` is not percent-encoded JSON within `max_info_bytes` (400).
    #[error("info: {0}")]
    BadInfo(String),
    /// A method other than GET/HEAD outside the API (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No such page (404).
    #[error("not found")]
    NotFound,
    /// `limits.max_connections` reached (503).
    #[error("server at capacity")]
    AtCapacity,
    /// The daemon is draining (503).
    #[error("server shutting down")]
    Draining,
}

impl Rejection {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::Handshake(e) => e.status(),
            Rejection::NoSubprotocol | Rejection::BadRoom | Rejection::BadInfo(_) => 400,
            Rejection::MethodNotAllowed => 405,
            Rejection::NotFound => 404,
            Rejection::AtCapacity | Rejection::Draining => 503,
        }
    }

    /// Static label, usable as a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rejection::Handshake(HandshakeError::HeadTooLarge) => "head_too_large",
            Rejection::Handshake(HandshakeError::Malformed(_)) => "malformed",
            Rejection::Handshake(HandshakeError::BadUpgrade(_)) => "bad_upgrade",
            Rejection::Handshake(HandshakeError::UnsupportedVersion) => "unsupported_version",
            Rejection::NoSubprotocol => "no_subprotocol",
            Rejection::BadRoom => "bad_room",
            Rejection::BadInfo(_) => "bad_info",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::NotFound => "not_found",
            Rejection::AtCapacity => "at_capacity",
            Rejection::Draining => "draining",
        }
    }

    /// The whole HTTP response: status, the headers the status calls for, the reason as body.
    pub fn response(&self) -> Vec<u8> {
        let extra = match self {
            Rejection::Handshake(HandshakeError::UnsupportedVersion) => {
                "Sec-WebSocket-Version: 13\r\n"
            }
            Rejection::MethodNotAllowed => "Allow: GET\r\n",
            _ => "",
        };
        let body = format!("{self}\n");
        http_response(self.status(), "text/plain; charset=utf-8", extra, &body)
    }
}

/// Parse the request head at the front of `buf`: `Ok(None)` until it is complete; then the
/// request and the bytes it used (what follows belongs to the WebSocket stream or the body).
pub fn parse_head(buf: &[u8], policy: &Policy) -> Result<Option<(Request, usize)>, Rejection> {
    parse_request(buf, policy.max_header_bytes).map_err(Rejection::Handshake)
}

/// Decide what to do with a complete request head.
pub fn plan_upgrade(req: &Request, policy: &Policy) -> Result<Plan, Rejection> {
    let target = match route(req, policy)? {
        Routed::Plan(plan) => return Ok(plan),
        Routed::Upgrade(target) => target,
    };
    let accept = req.validate_upgrade().map_err(Rejection::Handshake)?;
    admit(policy)?;
    Ok(Plan::Upgrade(upgrade(
        req,
        target,
        &accept,
        &policy.compression,
    )))
}

/// A routed request: a plan already, or an upgrade still to validate and admit.
enum Routed {
    Plan(Plan),
    Upgrade(Target),
}

fn route(req: &Request, policy: &Policy) -> Result<Routed, Rejection> {
    if req.path == "/ws" {
        let format = Format::negotiate(&req.protocols).ok_or(Rejection::NoSubprotocol)?;
        let info =
            info::parse(req.query.as_deref(), policy.max_info_bytes).map_err(Rejection::BadInfo)?;
        let info = Arc::new(info);
        return Ok(Routed::Upgrade(Target::Envelope { format, info }));
    }
    if req.path.starts_with("/api/") {
        return Ok(Routed::Plan(Plan::Api));
    }
    if let Some(name) = req.path.strip_prefix("/ws/") {
        if !valid_room_name(name) {
            return Err(Rejection::BadRoom);
        }
        return Ok(Routed::Upgrade(Target::Room(name.to_string())));
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Err(Rejection::MethodNotAllowed);
    }
    match req.path.as_str() {
        "/healthz" => Ok(Routed::Plan(Plan::Health)),
        "/" => Ok(Routed::Plan(Plan::Status)),
        _ => Err(Rejection::NotFound),
    }
}

/// Admission: refuse while draining or at the connection limit.
fn admit(policy: &Policy) -> Result<(), Rejection> {
    if policy.draining {
        return Err(Rejection::Draining);
    }
    if policy.open_connections >= policy.max_connections {
        return Err(Rejection::AtCapacity);
    }
    Ok(())
}

/// The 101 response with the negotiated extension and subprotocol.
fn upgrade(req: &Request, target: Target, accept: &str, z: &Compression) -> Upgrade {
    let deflate = if z.enabled {
        negotiate(&req.extensions, z.mode)
    } else {
        None
    };
    let mut extra = match &deflate {
        Some((_, resp)) => format!("Sec-WebSocket-Extensions: {resp}\r\n"),
        None => String::new(),
    };
    if let Target::Envelope { format, .. } = &target {
        extra.push_str(&format!("Sec-WebSocket-Protocol: {}\r\n", format.name()));
    }
    let deflate = deflate.map(|(p, _)| p);
    let shared_deflate =
        deflate.is_some_and(|p| p.server_max_window_bits == 15) && z.mode == DeflateMode::Shared;
    Upgrade {
        target,
        response: switching_protocols(accept, &extra),
        deflate,
        shared_deflate,
    }
}

#[cfg(test)]
mod tests;
