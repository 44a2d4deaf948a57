//! # shardcast
//!
//! A thread-per-core WebSocket gateway: rooms over RFC 6455 with encode-once fan-out, and the
//! envelope protocol (many rooms per connection, presence, history, resume).
//!
//! # Layout
//! Data flows accept → gate → shard → connection → session → room → fan-out → write; each module
//! imports only the ones before it (checked by `scripts/check-layout.py`).
//! - [`ids`]: `ShardId`, `ConnId`, `RoomId` and the compact `Tick` clock (a leaf).
//! - [`protocol`]: sans-io RFC 6455 and RFC 7692 (handshake, frames, reassembly, close codes,
//!   permessage-deflate), the envelope codec (JSON, CBOR), room names, session error codes.
//! - [`admission`]: which new connections are taken (handshake rates, per-IP and per-user
//!   caps, handshakes in progress); shared by the shards, decided by pure functions.
//! - [`config`]: TOML file schema → validated typed [`config::Config`], swappable per shard.
//! - [`metrics`]: per-shard counters, summed on read; their names in [`metrics::names`].
//! - [`cluster`]: cluster mode over Redis: the bridge thread, its channels, and the pure seq,
//!   resume and canary decisions the rooms' home shards apply.
//! - `wire`: wire formats, a message's encodings, the sequenced broadcast and its once-cells.
//! - `conn`: a connection as its shard owns it (queue, high-water mark, direct send, close) and
//!   its writer task.
//! - [`room`]: room registry, end-of-turn coalescing, the fan-out loop, each room's home state
//!   ([`room::home`]: seq, epoch, history, presence) and the home protocol's messages.
//! - [`heartbeat`]: the pure heartbeat verdict the sweep applies.
//! - [`health`]: shard pulses and accepting flags for `/readyz` and the systemd watchdog.
//! - [`gate`]: every decision about an HTTP request before any WebSocket state exists
//!   (routing, upgrade validation, subprotocol and deflate negotiation, admission).
//! - [`shard`]: one shard's state composed of those parts, and everything that needs more than
//!   one of them (membership, broadcasting, the home protocol's two sides, the shard-to-shard
//!   bus, sweep and drain).
//! - `session`: what an upgraded connection speaks (raw room or envelope) and what its messages
//!   do.
//! - `http`: the HTTP API, pages and responses on the public listener.
//! - `transport`: sockets to sessions: the WebSocket upgrade and reader.
//! - [`tls`]: rustls configuration from `[tls]` (reloadable `tls::load`) and the sans-io state
//!   of one TLS connection.
//! - [`listener`]: one SO_REUSEPORT listener per shard.
//! - [`admin`]: the operator's listener (metrics, health, readiness, admin page, reload), on
//!   its own thread.
//! - [`service`]: systemd notify (READY, STATUS, STOPPING) and the watchdog.
//! - [`server`]: shard threads and runtimes (io_uring or epoll), accept loops, the handle.

#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod admission;
pub mod assets;
pub mod auth;
pub mod cluster;
pub mod config;
pub(crate) mod conn;
pub mod gate;
pub mod health;
pub mod heartbeat;
pub(crate) mod http;
pub mod ids;
pub mod listener;
pub mod metrics;
pub mod protocol;
pub mod room;
pub mod server;
pub mod service;
pub(crate) mod session;
pub mod shard;
pub mod tls;
pub(crate) mod transport;
pub mod wire;
