//! WebSocket over TCP: one accepted socket becomes a short-lived handshake task ([`upgrade`]),
//! then, once upgraded, two lean tasks sharing the connection's state through the shard's slab:
//! the reader ([`reader`]: frames in, messages to the session) and the writer (spawned on
//! demand: `conn::writer`). An idle connection holds no read buffer, no writer task and none of
//! the handshake's state.

pub(crate) mod reader;
pub(crate) mod sse;
pub(crate) mod upgrade;

use bytes::BytesMut;
use monoio::io::Splitable;
use monoio::net::TcpStream;

use super::tls::TlsStream;
use crate::admission::Tickets;
use crate::conn::writer::dedicated_compressor;
use crate::http::io::HttpIo;
use crate::ids::ConnId;
use crate::protocol::deflate::DeflateParams;
use crate::session::Session;
use crate::shard::ShardRef;
use crate::tls::session::TlsState;

/// What a successful upgrade leaves behind.
pub(crate) struct Upgraded {
    /// What the connection speaks.
    pub(crate) session: Session,
    /// Bytes the client sent after its request (already WebSocket frames).
    pub(crate) rbuf: BytesMut,
    /// permessage-deflate, if negotiated.
    pub(crate) deflate: Option<DeflateParams>,
    /// Its places in the admission counts, released when the connection ends.
    pub(crate) tickets: Tickets,
    /// A Server-Sent Events stream: the posts for its session (`None`: a WebSocket).
    pub(crate) posts: Option<flume::Receiver<Vec<u8>>>,
}

/// Bound what the kernel holds of this socket's unsent data to about `bytes`
/// (`[limits] socket_unsent_bytes`) with `TCP_NOTSENT_LOWAT`: a send is accepted only while less
/// than that is waiting to go out (data in flight, sent and not yet acknowledged, is not capped,
/// so fast links keep their window). Without it the kernel buffers up to `tcp_wmem`'s maximum
/// (4 MiB here) for a client that stopped reading. Together with `max_buffered_bytes` this
/// bounds a stalled client's cost end to end.
fn cap_unsent(fd: std::os::fd::RawFd, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local; `fd` is the
    // accepted socket, open for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_NOTSENT_LOWAT not set");
    }
}

/// Serve one accepted socket to the end: plain, or TLS when `[tls]` is in force.
pub(crate) async fn serve(shard: ShardRef, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    cap_unsent(fd, shard.borrow().cfg.socket_unsent_bytes);
    let id = shard.borrow_mut().add_conn(fd, std::time::Instant::now());
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let tls = shard.borrow().cfg.tls.as_ref().map(|t| t.server.clone());
    match tls {
        None => serve_io(shard, id, peer, stream, |s| (s, None)).await,
        Some(cfg) => match TlsStream::new(stream, cfg) {
            Ok(t) => {
                serve_io(shard, id, peer, t, |t| {
                    let (tcp, tls) = t.into_parts();
                    (tcp, Some(tls))
                })
                .await
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a TLS session");
                shard.borrow_mut().remove_conn(id, false);
            }
        },
    }
}

/// The handshake phase on `io`, then (upgraded) the reader task; `parts` gives the socket and
/// the TLS state (if any) back from `io`.
async fn serve_io<S: HttpIo>(
    shard: ShardRef,
    id: ConnId,
    peer: Option<std::net::IpAddr>,
    mut io: S,
    parts: impl FnOnce(S) -> (TcpStream, Option<Box<TlsState>>),
) {
    let mut admitted = false;
    match upgrade::handshake(&shard, id, peer, &mut io, &mut admitted).await {
        Some(mut up) => {
            let (stream, tls) = parts(io);
            let (rh, wh) = stream.into_split();
            // No writer task yet: one is spawned when something is queued (ShardCore::kick).
            {
                let mut s = shard.borrow_mut();
                let dedicated = dedicated_compressor(&s.cfg.compression, up.deflate);
                if let Some(c) = s.conns.get_mut(id.0) {
                    c.wh = Some(wh);
                    c.dedicated = dedicated;
                    c.tls = tls;
                }
                // Anything queued during the upgrade (the envelope `welcome`) goes out now.
                s.kick(id);
            }
            match up.posts.take() {
                Some(posts) => monoio::spawn(sse::stream_task(shard, id, rh, up, posts)),
                None => monoio::spawn(reader::reader_task(shard, id, rh, up)),
            };
        }
        None => {
            // The stream (and its fd) goes, and the connection is forgotten in the same
            // synchronous step (see `Conn::kill`).
            drop(io);
            shard.borrow_mut().remove_conn(id, admitted);
        }
    }
}
