//! The task of a Server-Sent Events stream (`GET /sse`): it runs the stream's envelope session
//! on the posts `shard::streams` hands it (`POST /sse/{stream}`, bounded), and watches the
//! stream's socket only for its end (a client sends nothing on it; whatever it sends is
//! discarded). Events go out through the connection's queue and writer like WebSocket frames.

use std::time::Instant;

use monoio::io::OwnedReadHalf;
use monoio::net::TcpStream;

use super::reader::finish;
use super::Upgraded;
use crate::ids::ConnId;
use crate::metrics::ShardStats;
use crate::protocol::decoder::Message;
use crate::protocol::frame::OpCode;
use crate::shard::ShardRef;

/// Run the stream on connection `id` until its socket ends, then close it down.
pub(crate) async fn stream_task(
    shard: ShardRef,
    id: ConnId,
    rh: OwnedReadHalf<TcpStream>,
    up: Upgraded,
    posts: flume::Receiver<Vec<u8>>,
) {
    // The admission tickets are released when the stream ends.
    let Upgraded {
        mut session,
        tickets: _tickets,
        ..
    } = up;
    // SAFETY: a shared reference to the stream only to read its fd and poll for readiness:
    // `readable` takes `&self` and only submits a poll; the write half never moves or mutates
    // the stream while it is shared (as in `ws::reader`).
    let stream: &TcpStream = unsafe { &*rh.0.get() };
    let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
    loop {
        monoio::select! {
            r = stream.readable(false) => {
                if r.is_err() || !discard_input(fd) {
                    break;
                }
            }
            p = posts.recv_async() => {
                let Ok(body) = p else { break };
                let mut s = shard.borrow_mut();
                ShardStats::add(&s.my_stats().messages_in, 1);
                if s.conns.get(id.0).is_some_and(|c| !c.sealed) {
                    let m = Message::from_payload(OpCode::Text, &body);
                    session.on_message(&mut s, id, m, Instant::now());
                }
            }
        }
    }
    shard.borrow_mut().close_stream_of(id);
    finish(&shard, id, rh).await;
}

/// Read and drop what the client sent; `false` at the end of the stream (EOF or an error).
fn discard_input(fd: std::os::fd::RawFd) -> bool {
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into the local buffer; `fd` is the
        // stream's socket, open while its read half lives (we hold it).
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        match n {
            0 => return false,
            n if n > 0 => continue,
            _ => {
                let e = std::io::Error::last_os_error();
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                );
            }
        }
    }
}
