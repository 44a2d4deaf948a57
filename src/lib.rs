//! # shardcast
//!
//! A thread-per-core WebSocket gateway: raw rooms over RFC 6455 with encode-once fan-out.
//!
//! # Layout
//! - [`config`]: TOML file → validated typed [`config::Config`].
//! - [`protocol`]: sans-io RFC 6455 (handshake, frame codec, reassembly, close codes).

#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod connection;
pub mod fanout;
pub mod heartbeat;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod protocol;
pub mod room;
pub mod server;
pub mod shard;
