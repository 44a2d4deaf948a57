//! The writer task of one connection: spawned when something is queued (by the shard's `kick`),
//! it writes everything queued with one send (one segment) or one `writev` per batch, parks while
//! the queue is empty, and retires after a quiet spell, handing the write half back, so an idle
//! connection has no task.
//!
//! Generic over its [`Host`] (the shard) so that it depends only on the connection table.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use monoio::buf::IoVecBuf;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, OwnedWriteHalf};
use monoio::net::TcpStream;

use super::Conns;
use crate::config::Compression;
use crate::ids::{ConnId, Tick};
use crate::metrics::ShardStats;
use crate::protocol::deflate::{Compressor, DeflateMode, DeflateParams};
use crate::protocol::frame::{decode_header, HeaderRules, OpCode};

/// Most iovecs handed to one `writev`.
const MAX_IOV: usize = 256;

/// What a writer needs from the shard it runs on.
pub(crate) trait Host: 'static {
    /// The shard's connections.
    fn conns_mut(&mut self) -> &mut Conns;
    /// The shard's counters.
    fn stats(&self) -> &ShardStats;
}

/// Frames handed to one `writev`: owned `Bytes` (refcounted, shared with other recipients) and
/// the iovec array pointing into them.
#[derive(Default)]
struct WriteBatch {
    bufs: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    /// The front buffer is partly written (it must be finished: frames are never cut).
    front_started: bool,
}

// SAFETY: `iov` points into `bufs`, whose heap data never moves while the batch is owned by the
// runtime (Bytes data is immutable and refcounted; we rebuild `iov` before each submission).
unsafe impl IoVecBuf for WriteBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.iov.len()
    }
}

impl WriteBatch {
    fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    fn fill_iov(&mut self) {
        self.iov.clear();
        self.iov.extend(self.bufs.iter().map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        }));
    }

    /// Drop `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        let mut done = 0;
        let mut partial = false;
        for b in self.bufs.iter_mut() {
            if n >= b.len() {
                n -= b.len();
                done += 1;
            } else {
                if n > 0 {
                    b.advance(n);
                    partial = true;
                }
                break;
            }
        }
        // The new front is started if it was just cut, or it is the old, already started one.
        self.front_started = partial || (done == 0 && self.front_started);
        self.bufs.drain(..done);
    }

    /// Drop every buffer not yet started (all but a partly written front one); their bytes.
    fn drop_unstarted(&mut self) -> usize {
        let keep = usize::from(self.front_started).min(self.bufs.len());
        self.bufs.drain(keep..).map(|b| b.len()).sum()
    }

    /// Keep an idle connection's footprint small after a burst.
    fn trim(&mut self) {
        if self.bufs.capacity() > 8 {
            self.bufs = Vec::new();
            self.iov = Vec::new();
        }
    }
}

/// Dedicated-mode compression state of one connection (its own context, kept between messages
/// unless the client asked for `server_no_context_takeover`).
#[derive(Debug)]
pub(crate) struct Dedicated {
    /// Created on the first message that is compressed: an idle connection holds no zlib state.
    comp: Option<Compressor>,
    level: u32,
    window_bits: u8,
    reset: bool,
    threshold: usize,
}

/// The dedicated-mode compression state for a connection that negotiated `params`, when
/// `[compression] mode = "dedicated"`.
pub(crate) fn dedicated_compressor(
    z: &Compression,
    params: Option<DeflateParams>,
) -> Option<Box<Dedicated>> {
    let p = params?;
    (z.mode == DeflateMode::Dedicated).then(|| {
        Box::new(Dedicated {
            comp: None,
            level: z.level,
            window_bits: p.compress_window_bits(),
            reset: p.server_no_context_takeover,
            threshold: z.threshold_bytes,
        })
    })
}

impl Dedicated {
    /// Replace the batch's frames by their compressed form (data frames over the threshold),
    /// as one contiguous buffer. Returns (bytes before, bytes after) and what was compressed:
    /// (frames, payload bytes in, frame bytes out).
    fn transform(&mut self, batch: &mut WriteBatch) -> ((usize, usize), (u64, u64, u64)) {
        let rules = HeaderRules {
            allow_rsv1: true,
            require_mask: false,
            max_frame_bytes: u64::MAX,
        };
        let before: usize = batch.bufs.iter().map(Bytes::len).sum();
        let mut out = BytesMut::with_capacity(before);
        let mut done = (0u64, 0u64, 0u64);
        for chunk in batch.bufs.drain(..) {
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                // Our own frames: always complete and well-formed.
                let Ok(Some(h)) = decode_header(rest, &rules) else {
                    out.extend_from_slice(rest);
                    break;
                };
                let end = h.header_len + h.payload_len as usize;
                let Some(frame) = rest.get(..end) else {
                    out.extend_from_slice(rest);
                    break;
                };
                let payload = &frame[h.header_len..];
                if matches!(h.opcode, OpCode::Text | OpCode::Binary)
                    && !h.rsv1
                    && payload.len() >= self.threshold
                {
                    let (level, bits) = (self.level, self.window_bits);
                    let comp = self
                        .comp
                        .get_or_insert_with(|| Compressor::new(level, bits));
                    let z = comp.compress_frame(h.opcode, payload, self.reset);
                    done = (
                        done.0 + 1,
                        done.1 + payload.len() as u64,
                        done.2 + z.len() as u64,
                    );
                    out.extend_from_slice(&z);
                } else {
                    out.extend_from_slice(frame);
                }
                rest = &rest[end..];
            }
        }
        let after = out.len();
        batch.bufs.push(out.freeze());
        ((before, after), done)
    }
}

/// How a writer's wait for work ended.
enum Next {
    /// Frames were moved into the batch.
    Write,
    /// The connection is finished or killed: drop the write half (FIN) and exit.
    Exit,
    /// Idle for a while: hand the write half back to the connection and exit.
    Retire,
}

/// The writer task of one connection (see the module doc).
pub(crate) async fn write_loop<H: Host>(
    shard: Rc<RefCell<H>>,
    id: ConnId,
    mut wh: OwnedWriteHalf<TcpStream>,
    mut dedicated: Option<Box<Dedicated>>,
    tls: bool,
) {
    let mut batch = WriteBatch::default();
    loop {
        match next_batch(&shard, id, &mut batch).await {
            Next::Write => {}
            Next::Exit => {
                if tls {
                    close_notify(&shard, id, &mut wh).await;
                }
                break;
            }
            Next::Retire => {
                retire(&shard, id, wh, dedicated);
                return;
            }
        }
        if let Some(d) = dedicated.as_mut() {
            let ((before, after), (frames, zin, zout)) = d.transform(&mut batch);
            let mut s = shard.borrow_mut();
            if frames > 0 {
                let st = s.stats();
                ShardStats::add(&st.dedicated_compressions, frames);
                ShardStats::add(&st.deflate_in_bytes, zin);
                ShardStats::add(&st.deflate_out_bytes, zout);
            }
            if let Some(c) = s.conns_mut().get_mut(id.0) {
                c.buffered = c.buffered.saturating_sub(before) + after;
            }
        }
        if tls {
            encrypt(&shard, id, &mut batch);
        }
        let Some(calls) = write_batch(&shard, id, &mut wh, &mut batch).await else {
            // The peer is gone: stop both sides.
            if let Some(c) = shard.borrow_mut().conns_mut().get_mut(id.0) {
                c.kill();
            }
            writer_exited(&shard, id);
            return;
        };
        let fin = {
            let mut s = shard.borrow_mut();
            ShardStats::add(&s.stats().write_calls, calls);
            s.conns_mut()
                .get(id.0)
                .is_some_and(|c| c.fin_after_flush && c.sealed && c.queue.is_empty())
        };
        if fin {
            if tls {
                close_notify(&shard, id, &mut wh).await;
            }
            let _ = wh.shutdown().await;
            if let Some(c) = shard.borrow_mut().conns_mut().get_mut(id.0) {
                c.fin_after_flush = false;
            }
        }
        batch.trim();
    }
    writer_exited(&shard, id);
    // `wh` drops here: FIN to the peer.
}

/// TLS: replace the batch's frames (shared with other recipients) by this connection's own
/// encryption of them, as one buffer, with any TLS records rustls had pending before them;
/// `buffered` then counts the ciphertext in flight (as it counts a dedicated-mode compression).
fn encrypt<H: Host>(shard: &Rc<RefCell<H>>, id: ConnId, batch: &mut WriteBatch) {
    let mut s = shard.borrow_mut();
    let Some(c) = s.conns_mut().get_mut(id.0) else {
        return;
    };
    let Some(tls) = c.tls.as_mut() else {
        return;
    };
    let before: usize = batch.bufs.iter().map(Bytes::len).sum();
    // Record overhead: at most 29 bytes per 16 KiB record (TLS 1.2 AES-GCM), plus slack for
    // pending handshake records.
    let mut out = BytesMut::with_capacity(before + (before / 16384 + 1) * 29 + 64);
    let after = tls.encrypt(&batch.bufs, &mut out);
    batch.bufs.clear();
    if after > 0 {
        batch.bufs.push(out.freeze());
    }
    c.buffered = c.buffered.saturating_sub(before) + after;
}

/// TLS: send close_notify before the stream ends (best effort, not when the socket was killed:
/// a write to a shut-down socket fails at once anyway).
async fn close_notify<H: Host>(
    shard: &Rc<RefCell<H>>,
    id: ConnId,
    wh: &mut OwnedWriteHalf<TcpStream>,
) {
    let mut out = BytesMut::new();
    let queued = {
        let mut s = shard.borrow_mut();
        match s.conns_mut().get_mut(id.0) {
            Some(c) if !c.killed => c.tls.as_mut().is_some_and(|t| t.close_notify(&mut out)),
            _ => false,
        }
    };
    if queued && !out.is_empty() {
        let _ = wh.write_all(out.freeze()).await;
    }
}

/// Wait until something is queued (moved into `batch`), the connection ends, or the sweep asks
/// this idle writer to retire.
async fn next_batch<H: Host>(shard: &Rc<RefCell<H>>, id: ConnId, batch: &mut WriteBatch) -> Next {
    poll_fn(|cx| {
        let mut s = shard.borrow_mut();
        let Some(c) = s.conns_mut().get_mut(id.0) else {
            return Poll::Ready(Next::Exit);
        };
        if c.killed {
            return Poll::Ready(Next::Exit);
        }
        if c.queue.is_empty() {
            if c.finishing {
                return Poll::Ready(Next::Exit);
            }
            if c.retire {
                return Poll::Ready(Next::Retire);
            }
            if c.writer_waker.is_none() {
                c.writer_parked = Tick::at(Instant::now());
            }
            match &c.writer_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => c.writer_waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        c.retire = false;
        let n = c.queue.len().min(MAX_IOV);
        batch.bufs.extend(c.queue.drain(..n).map(|(b, _)| b));
        Poll::Ready(Next::Write)
    })
    .await
}

/// Write the whole batch. Returns the number of send ops, or `None` when the socket failed.
async fn write_batch<H: Host>(
    shard: &Rc<RefCell<H>>,
    id: ConnId,
    wh: &mut OwnedWriteHalf<TcpStream>,
    batch: &mut WriteBatch,
) -> Option<u64> {
    let mut calls = 0u64;
    while !batch.is_empty() {
        let res = match batch.bufs.pop() {
            // One segment (the common case with coalesced fan-out): a plain send op, so the
            // kernel has no iovec array to import.
            Some(one) if batch.bufs.is_empty() => {
                let (res, mut one) = wh.write(one).await;
                if let Ok(n) = res {
                    if n < one.len() {
                        one.advance(n);
                        batch.bufs.push(one);
                        batch.front_started |= n > 0;
                    } else {
                        batch.front_started = false;
                    }
                }
                res
            }
            Some(last) => {
                batch.bufs.push(last);
                batch.fill_iov();
                let (res, b) = wh.writev(std::mem::take(batch)).await;
                *batch = b;
                if let Ok(n) = res {
                    batch.advance(n);
                }
                res
            }
            None => break,
        };
        calls += 1;
        match res {
            Ok(n) if n > 0 => {
                if let Some(c) = shard.borrow_mut().conns_mut().get_mut(id.0) {
                    c.buffered = c.buffered.saturating_sub(n);
                    if c.drop_in_flight {
                        // Closed as a slow consumer: what it has not started receiving goes,
                        // so its close frame follows the frame in progress, not megabytes.
                        let freed = batch.drop_unstarted();
                        c.buffered = c.buffered.saturating_sub(freed);
                    }
                }
            }
            _ => return None,
        }
    }
    Some(calls)
}

/// Hand the write half (and compression state) back to the idle connection and exit.
fn retire<H: Host>(
    shard: &Rc<RefCell<H>>,
    id: ConnId,
    wh: OwnedWriteHalf<TcpStream>,
    dedicated: Option<Box<Dedicated>>,
) {
    let mut s = shard.borrow_mut();
    if let Some(c) = s.conns_mut().get_mut(id.0) {
        c.writer_alive = false;
        c.writer_waker = None;
        c.wh = Some(wh);
        c.dedicated = dedicated;
        if let Some(w) = c.reader_waker.take() {
            w.wake();
        }
    }
}

/// The writer task is gone for good: let a reader waiting on it finish the teardown.
fn writer_exited<H: Host>(shard: &Rc<RefCell<H>>, id: ConnId) {
    if let Some(c) = shard.borrow_mut().conns_mut().get_mut(id.0) {
        c.writer_alive = false;
        c.writer_waker = None;
        if let Some(w) = c.reader_waker.take() {
            w.wake();
        }
    }
}
