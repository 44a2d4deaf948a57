//! # shardcast
//!
//! A thread-per-core WebSocket gateway: raw rooms over RFC 6455 with encode-once fan-out.
//!
//! # Layout
//! - [`config`]: TOML file → validated typed [`config::Config`].
//! - [`protocol`]: sans-io RFC 6455 and RFC 7692 (handshake, frame codec, reassembly, close
//!   codes, permessage-deflate negotiation, compressor and bounded inflater).
//! - [`listener`]: one SO_REUSEPORT listener per shard.
//! - [`server`]: shard threads, monoio runtimes (io_uring or epoll), accept loops, the handle.
//! - [`shard`]: what one shard owns (connections, rooms, pools) and per-connection state.
//! - [`connection`]: per-connection tasks: handshake, reader, writer.
//! - [`room`]: per-shard room registry.
//! - [`fanout`]: encode-once broadcast, per-turn coalescing, cross-shard inboxes.
//! - [`home`]: each room's home shard: seq, epoch, history ring, presence, member census.
//! - [`heartbeat`]: the per-shard timer sweep (pings, timeouts, drain).
//! - [`http`]: plain HTTP answers (`/healthz`, status page, errors) and the HTTP API.
//! - [`metrics`]: per-shard counters.

#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod connection;
pub mod fanout;
pub mod heartbeat;
pub mod home;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod protocol;
pub mod room;
pub mod server;
pub mod shard;
