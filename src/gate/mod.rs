//! The gate: every decision about an HTTP request on the public listener, made before any
//! WebSocket state exists, as pure functions of the request and a [`Policy`] snapshot. The async
//! handshake (`transport::ws::upgrade`) only reads the head, calls [`parse_head`] and
//! [`plan_upgrade`], and writes what they decide.
//!
//! The gate routes (raw room, envelope protocol, HTTP API, health and status pages), validates
//! the upgrade (RFC 6455 §4.2.1), checks the browser's origin, authenticates the token and
//! authorizes a raw room, negotiates the subprotocol and permessage-deflate, and admits
//! (connection limit, shutdown). Each refusal is a [`Rejection`] with its status.

mod info;

use std::borrow::Cow;
use std::sync::Arc;

use std::net::IpAddr;

use crate::admission::{client_ip, retry_after_secs, Admission, Holder, IpKey, Refusal, Tickets};
use crate::auth::origin::OriginRefusal;
use crate::auth::{self, Action, AuthError, Identity};
use crate::config::{Compression, Config};
use crate::protocol::deflate::{negotiate, DeflateMode, DeflateParams};
use crate::protocol::envelope::{Data, Format};
use crate::protocol::handshake::{
    http_response, parse_request, switching_protocols, HandshakeError, Request,
};
use crate::protocol::room_name::valid_room_name;

/// What the gate knows of the daemon when a request comes in.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// The configuration in force (limits, compression, auth, origins, room classes).
    pub cfg: &'a Config,
    /// Open WebSocket connections on the node.
    pub open_connections: usize,
    /// The daemon is shutting down.
    pub draining: bool,
    /// Who is asking, and the admission state to charge (`None`: no per-client limits).
    pub client: Option<Client<'a>>,
}

/// The connection a request came on, for admission.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The daemon-wide admission state.
    pub admission: &'a Arc<Admission>,
    /// The TCP peer's address.
    pub peer: IpAddr,
    /// The connection, for the per-user list.
    pub conn: Holder,
    /// Uniform in [0, 1): spreads `Retry-After`.
    pub jitter: f64,
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
    /// `GET /status` (and `GET /` without the demo pages): the status page.
    Status,
    /// An embedded file: the JavaScript client or a demo page (`http::assets`).
    Asset(&'static crate::http::assets::Asset),
    /// `POST /sse/{stream}`: a client operation for an open event stream (`http::sse`).
    SsePost,
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
    /// The verified token (`[auth] mode = "jwt"`).
    pub identity: Option<Arc<Identity>>,
    /// Its places in the per-IP and per-user counts, held while it is open.
    pub tickets: Tickets,
    /// A connection of the same user to close (`on_user_limit = "close_oldest"`).
    pub evict: Option<Holder>,
}

/// What an upgraded connection speaks.
#[derive(Debug, PartialEq)]
pub enum Target {
    /// The raw room with this (valid) name.
    Room {
        /// The room.
        name: String,
        /// The connection may publish to it (else `[auth] raw_readonly` applies).
        may_publish: bool,
    },
    /// The envelope protocol in `format`, with the connection's presence `info`.
    Envelope {
        /// JSON or CBOR.
        format: Format,
        /// `?info=` (JSON), `null` when absent.
        info: Arc<Data>,
        /// `?session=`: the client's own id across its reconnects (publish dedup).
        session: Option<Arc<str>>,
    },
    /// A Server-Sent Events stream (`GET /sse`): the envelope protocol's JSON frames as events,
    /// opening with a subscription to each of `subs`.
    Sse {
        /// `?info=`, as for `/ws`.
        info: Arc<Data>,
        /// `?session=`, as for `/ws`.
        session: Option<Arc<str>>,
        /// The rooms to subscribe to at once.
        subs: Vec<crate::protocol::sse::Sub>,
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
    /// `?session=` is not 1-64 bytes of `A-Za-z0-9_-` (400).
    #[error("session: 1-64 bytes of A-Za-z0-9_-")]
    BadSession,
    /// `GET /sse` with a query that does not name rooms and positions well (400).
    #[error("sse: {0}")]
    BadSse(crate::protocol::sse::SseError),
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
    /// No valid token (401).
    #[error("{0}")]
    Unauthorized(AuthError),
    /// A browser `Origin` not in `allowed_origins` (403).
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// No `Origin` and `require_origin = true` (403).
    #[error("origin required")]
    OriginRequired,
    /// The token may not subscribe to this raw room (403).
    #[error("room not allowed")]
    RoomNotAllowed,
    /// An admission limit (429 for one client's, 503 for the daemon's), with `Retry-After`.
    #[error("{refusal}")]
    Refused {
        /// Which limit.
        refusal: Refusal,
        /// Seconds, jittered.
        retry_after: u32,
    },
}

impl Rejection {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::Handshake(e) => e.status(),
            Rejection::NoSubprotocol
            | Rejection::BadRoom
            | Rejection::BadInfo(_)
            | Rejection::BadSession
            | Rejection::BadSse(_) => 400,
            Rejection::MethodNotAllowed => 405,
            Rejection::NotFound => 404,
            Rejection::AtCapacity | Rejection::Draining => 503,
            Rejection::Unauthorized(_) => 401,
            Rejection::OriginNotAllowed | Rejection::OriginRequired | Rejection::RoomNotAllowed => {
                403
            }
            Rejection::Refused { refusal, .. } => refusal.status(),
        }
    }

    /// An admission refusal, its `Retry-After` spread by `jitter` (uniform in [0, 1)).
    pub fn refused(refusal: Refusal, jitter: f64) -> Rejection {
        Rejection::Refused {
            refusal,
            retry_after: retry_after_secs(refusal.wait_ns(), jitter),
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
            Rejection::BadSession => "bad_session",
            Rejection::BadSse(_) => "bad_sse",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::NotFound => "not_found",
            Rejection::AtCapacity => "at_capacity",
            Rejection::Draining => "draining",
            Rejection::Unauthorized(e) => e.as_str(),
            Rejection::OriginNotAllowed => "origin_not_allowed",
            Rejection::OriginRequired => "origin_required",
            Rejection::RoomNotAllowed => "room_not_allowed",
            Rejection::Refused { refusal, .. } => refusal.as_str(),
        }
    }

    /// The whole HTTP response: status, the headers the status calls for, the reason as body.
    pub fn response(&self) -> Vec<u8> {
        let extra: Cow<'static, str> = match self {
            Rejection::Handshake(HandshakeError::UnsupportedVersion) => {
                "Sec-WebSocket-Version: 13\r\n".into()
            }
            Rejection::MethodNotAllowed => "Allow: GET\r\n".into(),
            Rejection::Unauthorized(_) => {
                "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n".into()
            }
            Rejection::Refused { retry_after, .. } => {
                format!("Retry-After: {retry_after}\r\n").into()
            }
            _ => "".into(),
        };
        let body = format!("{self}\n");
        http_response(self.status(), "text/plain; charset=utf-8", &extra, &body)
    }
}

/// Parse the request head at the front of `buf`: `Ok(None)` until it is complete; then the
/// request and the bytes it used (what follows belongs to the WebSocket stream or the body).
pub fn parse_head(buf: &[u8], policy: &Policy) -> Result<Option<(Request, usize)>, Rejection> {
    parse_request(buf, policy.cfg.max_header_bytes).map_err(Rejection::Handshake)
}

/// Decide what to do with a complete request head.
pub fn plan_upgrade(req: &Request, policy: &Policy) -> Result<Plan, Rejection> {
    let target = match route(req, policy)? {
        Routed::Plan(plan) => return Ok(plan),
        Routed::Upgrade(target) => target,
    };
    let accept = match target {
        // An event stream is a plain GET: no upgrade headers.
        Target::Sse { .. } => String::new(),
        _ => req.validate_upgrade().map_err(Rejection::Handshake)?,
    };
    let cfg = policy.cfg;
    cfg.origins
        .check(req.origin.as_deref())
        .map_err(|r| match r {
            OriginRefusal::NotAllowed => Rejection::OriginNotAllowed,
            OriginRefusal::Missing => Rejection::OriginRequired,
        })?;
    admit(policy)?;
    // Rates and caps before the token: a flood of bad tokens costs no signature checks.
    let mut tickets = Tickets::default();
    if let Some(c) = &policy.client {
        let trusted = &cfg.admission.trusted_proxies;
        let ip = client_ip(
            c.peer,
            req.forwarded.as_deref(),
            req.x_forwarded_for.as_deref(),
            trusted,
        );
        let t = c.admission.admit_ip(&cfg.admission, IpKey::of(ip));
        tickets.ip = Some(t.map_err(|r| Rejection::refused(r, c.jitter))?);
    }
    let identity = authenticate(req, cfg)?.map(Arc::new);
    let target = authorize(target, identity.as_deref(), cfg)?;
    let mut evict = None;
    if let (Some(c), Some(id)) = (&policy.client, &identity) {
        let (t, e) = c
            .admission
            .admit_user(&cfg.admission, &id.sub, c.conn)
            .map_err(|r| Rejection::refused(r, c.jitter))?;
        tickets.user = Some(t);
        evict = e;
    }
    let mut up = upgrade(req, target, &accept, &cfg.compression);
    up.identity = identity;
    up.tickets = tickets;
    up.evict = evict;
    Ok(Plan::Upgrade(up))
}

/// The request's token: `Authorization: Bearer`, then the query parameter, then the cookie.
pub fn token<'r>(req: &'r Request, cfg: &Config) -> Option<Cow<'r, str>> {
    if let Some(t) = req.authorization.as_deref().and_then(bearer) {
        return Some(Cow::Borrowed(t));
    }
    if let Some(q) = req.query_value(&cfg.auth.token_query) {
        // An undecodable parameter is passed on as it is (and refused as malformed).
        let decoded = info::percent_decode(q).and_then(|b| String::from_utf8(b).ok());
        return Some(decoded.map_or(Cow::Borrowed(q), Cow::Owned));
    }
    let name = cfg.auth.token_cookie.as_deref()?;
    req.cookie_value(name).map(Cow::Borrowed)
}

/// The credentials of `Authorization: Bearer X` (the scheme is case-insensitive, RFC 7235).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// In `mode = "jwt"`, the verified token (or why not); `None` in mode none.
fn authenticate(req: &Request, cfg: &Config) -> Result<Option<Identity>, Rejection> {
    let Some(verifier) = &cfg.auth.verifier else {
        return Ok(None);
    };
    let t = token(req, cfg).ok_or(Rejection::Unauthorized(AuthError::Missing))?;
    verifier
        .verify(&t)
        .map(Some)
        .map_err(Rejection::Unauthorized)
}

/// A raw room needs the right to subscribe; whether it may publish rides along. An envelope
/// connection's token `info` replaces `?info=`.
fn authorize(t: Target, id: Option<&Identity>, cfg: &Config) -> Result<Target, Rejection> {
    match t {
        Target::Room { name, .. } => {
            let class = cfg.class_rights(&name);
            if !auth::may(id, &class, Action::Subscribe, &name) {
                return Err(Rejection::RoomNotAllowed);
            }
            let may_publish = auth::may(id, &class, Action::Publish, &name);
            Ok(Target::Room { name, may_publish })
        }
        Target::Envelope {
            format,
            info,
            session,
        } => Ok(Target::Envelope {
            format,
            info: id.map_or(info, |i| i.info.clone()),
            session,
        }),
        Target::Sse {
            info,
            session,
            subs,
        } => Ok(Target::Sse {
            info: id.map_or(info, |i| i.info.clone()),
            session,
            subs,
        }),
    }
}

/// A routed request: a plan already, or an upgrade still to validate and admit.
enum Routed {
    Plan(Plan),
    Upgrade(Target),
}

fn route(req: &Request, policy: &Policy) -> Result<Routed, Rejection> {
    if req.path == "/ws" {
        let format = Format::negotiate(&req.protocols).ok_or(Rejection::NoSubprotocol)?;
        let info = info::parse(req.query.as_deref(), policy.cfg.max_info_bytes)
            .map_err(Rejection::BadInfo)?;
        let info = Arc::new(info);
        let session = info::session(req.query.as_deref()).map_err(|()| Rejection::BadSession)?;
        return Ok(Routed::Upgrade(Target::Envelope {
            format,
            info,
            session,
        }));
    }
    if req.path == "/sse" && req.method == "GET" {
        let info = info::parse(req.query.as_deref(), policy.cfg.max_info_bytes)
            .map_err(Rejection::BadInfo)?;
        let session = info::session(req.query.as_deref()).map_err(|()| Rejection::BadSession)?;
        let subs =
            crate::protocol::sse::parse_open(req.query.as_deref(), req.last_event_id.as_deref())
                .map_err(Rejection::BadSse)?;
        return Ok(Routed::Upgrade(Target::Sse {
            info: Arc::new(info),
            session,
            subs,
        }));
    }
    if req.path.starts_with("/sse/") && req.method == "POST" {
        return Ok(Routed::Plan(Plan::SsePost));
    }
    if req.path.starts_with("/api/") {
        return Ok(Routed::Plan(Plan::Api));
    }
    if let Some(name) = req.path.strip_prefix("/ws/") {
        if !valid_room_name(name) {
            return Err(Rejection::BadRoom);
        }
        return Ok(Routed::Upgrade(Target::Room {
            name: name.to_string(),
            may_publish: true,
        }));
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Err(Rejection::MethodNotAllowed);
    }
    match req.path.as_str() {
        "/healthz" => Ok(Routed::Plan(Plan::Health)),
        "/status" => Ok(Routed::Plan(Plan::Status)),
        path => match crate::http::assets::find(path, policy.cfg.demo_pages) {
            Some(asset) => Ok(Routed::Plan(Plan::Asset(asset))),
            None if path == "/" => Ok(Routed::Plan(Plan::Status)),
            None => Err(Rejection::NotFound),
        },
    }
}

/// Admission: refuse while draining or at the connection limit.
fn admit(policy: &Policy) -> Result<(), Rejection> {
    if policy.draining {
        return Err(Rejection::Draining);
    }
    if policy.open_connections >= policy.cfg.max_connections {
        return Err(Rejection::AtCapacity);
    }
    Ok(())
}

/// The 101 response with the negotiated extension and subprotocol.
fn upgrade(req: &Request, target: Target, accept: &str, z: &Compression) -> Upgrade {
    if let Target::Sse { .. } = target {
        return Upgrade {
            target,
            response: crate::protocol::sse::RESPONSE_HEAD.to_vec(),
            deflate: None,
            shared_deflate: false,
            identity: None,
            tickets: Tickets::default(),
            evict: None,
        };
    }
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
        identity: None,
        tickets: Tickets::default(),
        evict: None,
    }
}

#[cfg(test)]
mod tests;
