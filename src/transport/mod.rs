//! Transports: how bytes reach a session. Today one, [`ws`] (RFC 6455 over TCP, with
//! permessage-deflate); an SSE fallback would sit beside it, behind the same gate and the same
//! sessions.

pub(crate) mod tls;
pub(crate) mod ws;
