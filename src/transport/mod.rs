//! Transports: how bytes reach a session: [`ws`] (RFC 6455 over TCP, with permessage-deflate;
//! its handshake phase also opens Server-Sent Events streams, whose task is `ws::sse`), behind
//! the same gate and the same sessions.

pub(crate) mod tls;
pub(crate) mod ws;
