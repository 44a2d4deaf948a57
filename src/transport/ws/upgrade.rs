//! The HTTP side of a new connection: read the request head (bounded by
//! `limits.max_header_bytes` and the handshake deadline the sweep enforces), ask the gate, and
//! write what it decided: a refusal, a page, the HTTP API's answer, or `101` and the session.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::Upgraded;
use crate::admission::Holder;
use crate::auth::Identity;
use crate::conn::Phase;
use crate::gate::{self, Client, Plan, Policy, Rejection, Target, Upgrade};
use crate::http;
use crate::http::io::HttpIo;
use crate::ids::{ConnId, Tick};
use crate::metrics::ShardStats;
use crate::protocol::envelope::ServerOp;
use crate::protocol::handshake::Request;
use crate::session::envelope::expiry;
use crate::session::Session;
use crate::shard::{ShardCore, ShardRef};
use crate::wire::{envelope_frame, Wire};

/// The gate's view of this shard now; with `client`, the connection to admit.
fn policy<'a>(s: &'a ShardCore, client: Option<Client<'a>>) -> Policy<'a> {
    Policy {
        cfg: &s.cfg,
        open_connections: s.open_connections(),
        draining: s.life.shutdown.is_some(),
        client,
    }
}

/// Ask the gate about a complete request from `peer` on connection `id`.
fn plan(
    s: &mut ShardCore,
    req: &Request,
    id: ConnId,
    peer: Option<IpAddr>,
) -> Result<Plan, Rejection> {
    let jitter = s.life.jitter.next_unit();
    let uid = s.conns.get(id.0).map_or(0, |c| c.uid);
    let s = &*s;
    let client = peer.map(|peer| Client {
        admission: &s.life.admission,
        peer,
        conn: Holder {
            shard: s.id,
            id,
            uid,
        },
        jitter,
    });
    gate::plan_upgrade(req, &policy(s, client))
}

/// `[log] access_log`: one line per request on the public listener.
fn access_line(
    req: &Request,
    peer: Option<IpAddr>,
    plan: &Result<Plan, Rejection>,
    started: Instant,
) {
    let (status, result, protocol, user) = match plan {
        Ok(Plan::Upgrade(u)) => {
            let proto = match &u.target {
                Target::Envelope { format, .. } => format.name(),
                Target::Room { .. } => "raw",
                Target::Sse { .. } => "sse",
            };
            let user = u.identity.as_ref().map(|i| i.sub.to_string());
            (101, "upgrade", proto, user)
        }
        Ok(_) => (200, "http", "", None),
        Err(r) => (r.status(), r.as_str(), "", None),
    };
    tracing::info!(
        target: "shardcast::access",
        remote = %peer.map_or_else(|| "-".to_string(), |p| p.to_string()),
        method = %req.method,
        path = %req.path,
        protocol,
        user = user.as_deref().unwrap_or("-"),
        status,
        result,
        duration_us = started.elapsed().as_micros() as u64,
        "access"
    );
}

/// Count a refusal by its reason.
fn count_refusal(s: &ShardCore, r: &Rejection) {
    match r {
        Rejection::Unauthorized(e) => s.my_stats().count_auth_failure(e.as_str()),
        Rejection::Refused { refusal, .. } => s.my_stats().count_admission_refusal(refusal.index()),
        _ => {}
    }
}

/// Read and answer the HTTP request. On a successful upgrade, returns the session and any
/// early frames. Everything allocated for the handshake is freed when this returns.
pub(crate) async fn handshake<S: HttpIo>(
    shard: &ShardRef,
    id: ConnId,
    peer: Option<IpAddr>,
    stream: &mut S,
    admitted: &mut bool,
) -> Option<Upgraded> {
    let pending = {
        let mut s = shard.borrow_mut();
        let jitter = s.life.jitter.next_unit();
        let p = s.life.admission.begin_handshake(&s.cfg.admission);
        p.map_err(|r| Rejection::refused(r, jitter))
    };
    let _pending = match pending {
        Ok(p) => p,
        Err(r) => {
            count_refusal(&shard.borrow(), &r);
            return reject(shard, stream, &r).await;
        }
    };
    let started = Instant::now();
    let (req, buf, used) = read_head(shard, stream).await?;
    let plan = plan(&mut shard.borrow_mut(), &req, id, peer);
    if shard.borrow().cfg.access_log {
        access_line(&req, peer, &plan, started);
    }
    let up = match plan {
        Err(r) => {
            count_refusal(&shard.borrow(), &r);
            return reject(shard, stream, &r).await;
        }
        Ok(Plan::Health) => return respond(stream, http::response::text(200, "ok\n")).await,
        Ok(Plan::Status) => {
            let page = http::pages::status(&shard.borrow().stats);
            return respond(stream, page).await;
        }
        Ok(Plan::Asset(asset)) => {
            let head = req.method == "HEAD";
            return respond(stream, http::assets::response(asset, head)).await;
        }
        Ok(Plan::Api) => {
            http::api::serve(shard, stream, &req, &buf[used..]).await;
            return None;
        }
        Ok(Plan::SsePost) => {
            let resp = http::sse::respond(shard, stream, &req, &buf[used..]).await;
            http::api::answer(stream, resp).await;
            return None;
        }
        Ok(Plan::Upgrade(up)) => up,
    };
    // The gate saw room; counting is atomic across shards and may still lose a race.
    if !shard.borrow().admit() {
        return reject(shard, stream, &Rejection::AtCapacity).await;
    }
    *admitted = true;
    let Upgrade {
        target,
        response,
        deflate,
        shared_deflate,
        identity,
        tickets,
        evict,
    } = up;
    stream.send(response).await.ok()?;
    let session = open(
        &mut shard.borrow_mut(),
        id,
        target,
        shared_deflate,
        identity,
    )?;
    // Keep only the bytes after the request head, in a buffer of their own size.
    let rbuf = match buf.get(used..) {
        Some(rest) if !rest.is_empty() => BytesMut::from(rest),
        _ => BytesMut::new(),
    };
    if let Some(h) = evict {
        shard.borrow_mut().evict(h, Instant::now());
    }
    Some(Upgraded {
        session,
        rbuf,
        deflate,
        tickets,
    })
}

/// Read until the request head is complete. `None`: the client went away or was refused.
async fn read_head<S: HttpIo>(
    shard: &ShardRef,
    stream: &mut S,
) -> Option<(Request, BytesMut, usize)> {
    let max_header = shard.borrow().cfg.max_header_bytes;
    let mut buf = BytesMut::with_capacity(1024.min(max_header));
    loop {
        let room_left = max_header.saturating_sub(buf.len()).clamp(1, 4096);
        buf.reserve(room_left);
        let (res, b) = stream.read_append(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let parsed = gate::parse_head(&buf, &policy(&shard.borrow(), None));
        match parsed {
            Ok(None) => continue,
            Ok(Some((req, used))) => return Some((req, buf, used)),
            Err(r) => return reject(shard, stream, &r).await,
        }
    }
}

/// The connection is upgraded: open its session (join its raw room, or queue `welcome`).
fn open(
    s: &mut ShardCore,
    id: ConnId,
    target: Target,
    compressed: bool,
    identity: Option<Arc<Identity>>,
) -> Option<Session> {
    let now = Tick::at(Instant::now());
    let leeway = s.cfg.auth.verifier.as_ref().map(|v| v.leeway());
    let c = s.conns.get_mut(id.0)?;
    c.phase = Phase::Open;
    c.last_seen = now;
    c.last_ping = now;
    if let (Some(i), Some(leeway)) = (&identity, leeway) {
        c.expires = expiry(i.exp, leeway);
    }
    match target {
        Target::Room { name, may_publish } => {
            c.wire = Wire::of(None, compressed);
            let room = s.join_raw(id, &name)?;
            Some(Session::raw(room, may_publish))
        }
        Target::Sse { info, subs, .. } => s.open_sse(id, info, identity, subs, Instant::now()),
        Target::Envelope {
            format,
            info,
            session: _,
        } => {
            c.wire = Wire::of(Some(format), compressed);
            let welcome = ServerOp::Welcome {
                conn: c.uid,
                user: identity.as_ref().map(|i| &*i.sub),
                exp: identity.as_ref().map(|i| i.exp),
            };
            // Written as soon as the write half is in place (see `serve`).
            c.push_control(envelope_frame(&welcome, format));
            Some(Session::envelope(format, info, identity))
        }
    }
}

/// Refuse: the status and reason, counted, then a half-close so the client reads the whole
/// response before the socket goes.
async fn reject<T, S: HttpIo>(shard: &ShardRef, stream: &mut S, r: &Rejection) -> Option<T> {
    ShardStats::add(&shard.borrow().my_stats().http_rejected, 1);
    let _ = stream.send(r.response()).await;
    stream.finish().await;
    None
}

/// Answer a page and end.
async fn respond<T, S: HttpIo>(stream: &mut S, resp: Vec<u8>) -> Option<T> {
    let _ = stream.send(resp).await;
    stream.finish().await;
    None
}
