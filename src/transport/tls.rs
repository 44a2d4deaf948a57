//! The handshake phase of a TLS connection: the TLS handshake and then the HTTP request and
//! answer (the `101`, a page, the HTTP API) run over [`TlsStream`], an [`HttpIo`] on the
//! monoio stream driving a [`TlsState`]. Once upgraded, [`TlsStream::into_parts`] gives the
//! socket and the TLS state back: the state moves into the connection (`Conn::tls`), where the
//! reader decrypts what it receives and the writer encrypts what it sends.
//!
//! The TLS handshake counts against `limits.handshake_timeout` like the HTTP head (the sweep
//! kills a connection still in the handshake phase at its deadline).

use std::os::fd::RawFd;

use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::http::io::HttpIo;
use crate::ids::ConnId;
use crate::protocol::handshake::http_response;
use crate::shard::ShardRef;
use crate::tls::session::{looks_like_plain_http, TlsFault, TlsState};

/// Ciphertext read at once in the handshake phase (a ClientHello, a request head).
const HANDSHAKE_READ: usize = 4096;

/// A TCP stream carrying TLS, in the handshake phase.
pub(crate) struct TlsStream {
    tcp: TcpStream,
    tls: Box<TlsState>,
    /// Nothing has been read yet (the first bytes tell a TLS client from a plain HTTP one).
    first: bool,
}

impl TlsStream {
    /// Start serving TLS on an accepted socket.
    pub(crate) fn new(
        tcp: TcpStream,
        cfg: std::sync::Arc<rustls::ServerConfig>,
    ) -> Result<TlsStream, TlsFault> {
        Ok(TlsStream {
            tcp,
            tls: Box::new(TlsState::new(cfg)?),
            first: true,
        })
    }

    /// The socket and the TLS state, for the upgraded connection. All plaintext received so far
    /// has been handed out (each read drains what it decrypts).
    pub(crate) fn into_parts(self) -> (TcpStream, Box<TlsState>) {
        (self.tcp, self.tls)
    }

    /// Send what rustls has queued (handshake messages, tickets, an alert).
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.tls.wants_write() {
            return Ok(());
        }
        let mut out = BytesMut::new();
        self.tls.output(&mut out);
        self.tcp.write_all(out).await.0.map(|_| ())
    }

    /// A plain HTTP request on the TLS port: answer in plain text (like nginx's "plain HTTP
    /// request was sent to HTTPS port"), so a `curl http://` user sees why.
    async fn refuse_plain_http(&mut self) {
        let resp = http_response(
            400,
            "text/plain",
            "Connection: close\r\n",
            "this port speaks TLS: use https:// or wss://\n",
        );
        let _ = self.tcp.write_all(resp).await;
        let _ = self.tcp.shutdown().await;
    }
}

impl HttpIo for TlsStream {
    async fn read_append(&mut self, mut buf: BytesMut) -> (std::io::Result<usize>, BytesMut) {
        loop {
            if let Err(e) = self.flush().await {
                return (Err(e), buf);
            }
            if self.tls.peer_closed() {
                return (Ok(0), buf);
            }
            let cipher = BytesMut::with_capacity(HANDSHAKE_READ);
            let (res, cipher) = self.tcp.read(cipher).await;
            match res {
                Ok(0) => return (Ok(0), buf),
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
            if std::mem::take(&mut self.first) && looks_like_plain_http(&cipher) {
                self.refuse_plain_http().await;
                return (Err(std::io::ErrorKind::InvalidData.into()), buf);
            }
            match self.tls.decrypt(&cipher, &mut buf) {
                Ok(0) => continue,
                Ok(n) => return (Ok(n), buf),
                Err(e) => {
                    // Its alert goes out, then the connection ends.
                    let _ = self.flush().await;
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return (Err(std::io::Error::other(e)), buf);
                }
            }
        }
    }

    async fn send(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        let mut out = BytesMut::with_capacity(data.len() + 64);
        self.tls.encrypt(&[data.into()], &mut out);
        self.tcp.write_all(out).await.0.map(|_| ())
    }

    async fn finish(&mut self) {
        let mut out = BytesMut::new();
        if self.tls.close_notify(&mut out) {
            let _ = self.tcp.write_all(out).await;
        }
        let _ = self.tcp.shutdown().await;
    }
}

/// What ciphertext received by an upgraded connection gave.
pub(crate) enum Decrypted {
    /// This many plaintext bytes were appended (0: no record completed yet).
    Plain(usize),
    /// The stream is over: the peer sent close_notify, or a TLS error (its alert was sent).
    End,
}

/// Decrypt `cipher`, received by upgraded connection `id`, into `rbuf`. Records rustls wants to
/// send in answer (a key update) are handed to the writer; on a TLS error the alert is sent with
/// one non-blocking `send` (best effort: the connection ends either way).
pub(crate) fn decrypt(
    shard: &ShardRef,
    id: ConnId,
    fd: RawFd,
    cipher: &[u8],
    rbuf: &mut BytesMut,
) -> Decrypted {
    let mut s = shard.borrow_mut();
    let Some(c) = s.conns.get_mut(id.0) else {
        return Decrypted::End;
    };
    let Some(tls) = c.tls.as_mut() else {
        return Decrypted::End;
    };
    match tls.decrypt(cipher, rbuf) {
        Ok(n) => {
            let end = n == 0 && tls.peer_closed();
            if tls.wants_write() {
                // An empty frame wakes the writer, whose encryption step sends what is pending.
                c.push_control(Bytes::new());
                s.kick(id);
            }
            if end {
                Decrypted::End
            } else {
                Decrypted::Plain(n)
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, label = e.as_str(), "TLS error on an open connection");
            let mut alert = BytesMut::new();
            tls.output(&mut alert);
            send_best_effort(fd, &alert);
            Decrypted::End
        }
    }
}

/// One non-blocking `send` of a few bytes (an alert), ignoring the outcome.
fn send_best_effort(fd: RawFd, data: &[u8]) {
    if data.is_empty() || fd < 0 {
        return;
    }
    // SAFETY: the fd is open while the connection is in the slab (the caller holds the shard);
    // the kernel reads at most `data.len()` bytes from memory we hold.
    unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}
