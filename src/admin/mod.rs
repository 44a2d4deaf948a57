//! The admin listener (`[admin] listen`, default `127.0.0.1:9090`; never the public listener):
//! `/metrics` (Prometheus text), `/healthz`, `/readyz`, the live admin page `/` with its
//! once-a-second stream `/events` (SSE), and `POST /reload`. Everything but the two health
//! checks needs `[admin] key` when one is set (`Authorization: Bearer KEY` or `?key=KEY`).
//!
//! It runs on its own thread, away from the shards, so a stuck shard cannot take its
//! `/readyz` or the watchdog down with it; each request gets a short-lived thread (at most
//! [`MAX_CLIENTS`] at once, the rest answered 503). It reads the shards' counters and health
//! (atomics) and talks to them only through [`crate::server::Control`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::gate::bearer;
use crate::health::{Health, Readiness};
use crate::metrics::export::{classic, render, Process};
use crate::metrics::Stats;
use crate::protocol::handshake::{http_response, parse_request, Request};
use crate::server::Control;

/// Admin requests served at once.
pub const MAX_CLIENTS: usize = 32;

/// What a reload did: `Ok(summary)` or `Err(why)` (the old config stays).
pub type Reloader = dyn Fn() -> Result<String, String> + Send + Sync;

/// What the admin listener serves from.
pub struct Admin {
    /// Every shard's counters.
    pub stats: Stats,
    /// Pulses and readiness.
    pub health: Arc<Health>,
    /// The I/O driver in use (set once the shards run).
    pub io_driver: Arc<std::sync::OnceLock<&'static str>>,
    /// `[admin] key`.
    pub key: Option<String>,
    /// Re-reads the config file and puts it in force.
    pub reload: Box<Reloader>,
    /// Begins a rolling drain over the given window (as SIGTERM does over `drain_timeout`).
    pub drain: Box<dyn Fn(Duration) + Send + Sync>,
    /// The shards, for test hooks.
    pub control: Control,
    /// `SHARDCAST_TEST_HOOKS=1`: `POST /test/stall?shard=N&ms=M` is served.
    pub test_hooks: bool,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`.
    Health,
    /// `GET /readyz`.
    Ready,
    /// `GET /metrics`: OpenMetrics when the scraper accepts it, else the classic text format.
    Metrics {
        /// `Accept` names `application/openmetrics-text`.
        openmetrics: bool,
    },
    /// `GET /`.
    Page,
    /// `GET /events`.
    Events,
    /// `POST /reload`.
    Reload,
    /// `POST /drain?over=30s`: a rolling drain over that window (default `drain_timeout`).
    Drain {
        /// The window, if given.
        over: Option<Duration>,
    },
    /// `POST /test/stall` (test hooks only).
    Stall {
        /// Which shard.
        shard: usize,
        /// For how long.
        ms: u64,
    },
    /// A refusal: status and reason.
    Refuse(u16, &'static str),
}

/// Route a request (pure): `authorized` says whether it carried the key (or none is needed).
pub fn route(req: &Request, authorized: bool, test_hooks: bool) -> Route {
    let open = match (req.method.as_str(), req.path.as_str()) {
        ("GET" | "HEAD", "/healthz") => Some(Route::Health),
        ("GET" | "HEAD", "/readyz") => Some(Route::Ready),
        _ => None,
    };
    if let Some(r) = open {
        return r;
    }
    let r = match (req.method.as_str(), req.path.as_str()) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics {
            openmetrics: req
                .accept
                .as_deref()
                .is_some_and(|a| a.contains("application/openmetrics-text")),
        },
        ("GET" | "HEAD", "/") => Route::Page,
        ("GET", "/events") => Route::Events,
        ("POST", "/reload") => Route::Reload,
        ("POST", "/drain") => match req.query_value("over").map(humantime::parse_duration) {
            Some(Err(_)) => return Route::Refuse(400, "over: a duration such as 30s"),
            over => Route::Drain {
                over: over.and_then(Result::ok),
            },
        },
        ("POST", "/test/stall") if test_hooks => {
            let num = |k| req.query_value(k).and_then(|v| v.parse().ok());
            match (num("shard"), num("ms")) {
                (Some(shard), Some(ms)) => Route::Stall {
                    shard: shard as usize,
                    ms,
                },
                _ => return Route::Refuse(400, "shard and ms required"),
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/" | "/events" | "/reload" | "/drain") => {
            return Route::Refuse(405, "method not allowed")
        }
        _ => return Route::Refuse(404, "not found"),
    };
    if authorized {
        r
    } else {
        Route::Refuse(401, "admin key required")
    }
}

/// Does `req` carry `key` (Bearer or `?key=`)? Always true without a key.
pub fn authorized(req: &Request, key: Option<&str>) -> bool {
    let Some(key) = key else { return true };
    let given = req
        .authorization
        .as_deref()
        .and_then(bearer)
        .or_else(|| req.query_value("key"));
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Bind `addr` and serve on a thread of its own.
pub fn spawn(addr: SocketAddr, admin: Admin) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let admin = Arc::new(admin);
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || accept_loop(listener, admin))?;
    Ok(local)
}

/// Serve once `addr` can be bound (a takeover: the old process still holds it until it has
/// drained), retrying every 250 ms on a thread of its own.
pub fn spawn_when_free(addr: SocketAddr, admin: Admin) -> std::io::Result<()> {
    let admin = Arc::new(admin);
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || loop {
            match TcpListener::bind(addr) {
                Ok(l) => {
                    tracing::info!(admin = %addr, "admin listener (after the takeover)");
                    return accept_loop(l, admin);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        })
        .map(|_| ())
}

fn accept_loop(listener: TcpListener, admin: Arc<Admin>) {
    let busy = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            busy.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.write_all(&text(503, "admin listener busy"));
            continue;
        }
        let (admin, busy) = (admin.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("admin-req".into())
            .spawn(move || {
                serve(&admin, stream);
                busy.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            tracing::warn!("admin: could not start a request thread");
        }
    }
}

fn text(status: u16, body: &str) -> Vec<u8> {
    http_response(
        status,
        "text/plain; charset=utf-8",
        "",
        &format!("{body}\n"),
    )
}

/// Read one request head (at most 8 KiB, 5 s), answer it, close.
fn serve(admin: &Admin, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let req = loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        match parse_request(&buf, 8192) {
            Ok(Some((req, _))) => break req,
            Ok(None) => continue,
            Err(e) => {
                let _ = stream.write_all(&text(e.status(), &e.to_string()));
                return;
            }
        }
    };
    let ok = authorized(&req, admin.key.as_deref());
    let answer = match route(&req, ok, admin.test_hooks) {
        Route::Events => return events(admin, stream),
        r => answer(admin, r),
    };
    let _ = stream.write_all(&answer);
}

fn answer(admin: &Admin, r: Route) -> Vec<u8> {
    match r {
        Route::Health => text(200, "ok"),
        Route::Ready => match admin.health.readiness() {
            Readiness::Ready => text(200, "ready"),
            Readiness::Starting(i) => {
                text(503, &format!("starting: shard {i} is not accepting yet"))
            }
            Readiness::Draining => text(503, "draining"),
            Readiness::Deaf => text(503, "cluster: redis unreachable or deaf"),
        },
        Route::Metrics { openmetrics } => {
            let text = render(
                &admin.stats,
                &Process {
                    io_driver: admin.io_driver.get().copied().unwrap_or("starting"),
                },
            );
            if openmetrics {
                let ct = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                http_response(200, ct, "", &text)
            } else {
                let ct = "text/plain; version=0.0.4; charset=utf-8";
                http_response(200, ct, "", &classic(&text))
            }
        }
        Route::Page => http_response(200, "text/html; charset=utf-8", "", page::PAGE),
        Route::Reload => match (admin.reload)() {
            Ok(summary) => text(200, &summary),
            Err(why) => text(400, &why),
        },
        Route::Drain { over } => {
            (admin.drain)(over.unwrap_or(Duration::ZERO));
            text(200, "draining")
        }
        Route::Stall { shard, ms } => {
            if admin.control.stall(shard, Duration::from_millis(ms)) {
                text(200, "stalling")
            } else {
                text(404, "no such shard")
            }
        }
        Route::Refuse(status, why) => {
            let extra = if status == 401 {
                "WWW-Authenticate: Bearer\r\n"
            } else {
                ""
            };
            http_response(
                status,
                "text/plain; charset=utf-8",
                extra,
                &format!("{why}\n"),
            )
        }
        Route::Events => text(500, "unreachable"),
    }
}

/// `GET /events`: one `data:` line of JSON (see [`page::snapshot`]) per second until the
/// client goes.
fn events(admin: &Admin, mut stream: TcpStream) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    loop {
        let rooms = admin.control.room_stats(Duration::from_millis(250));
        let line = format!(
            "data: {}\n\n",
            page::snapshot(&admin.stats, &admin.health, &rooms)
        );
        if stream.write_all(line.as_bytes()).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub mod page;

#[cfg(test)]
mod tests;
