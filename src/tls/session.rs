//! One TLS connection, sans-io: [`TlsState`] wraps a rustls `ServerConnection` and moves bytes
//! between caller-owned buffers only, so the reader, the writer and the handshake phase each
//! keep their own I/O (readiness + one `recv`, owned-buffer sends) and this code is tested
//! without a socket.
//!
//! Nothing is buffered here beyond one call: [`TlsState::decrypt`] hands out all the plaintext
//! the given ciphertext completes (a partial record stays in rustls' deframer, at most one
//! record), and [`TlsState::encrypt`] drains every record it makes into the caller's buffer
//! (rustls' own send-buffer limit is lifted because the caller bounds what it encrypts: the
//! writer's batch, itself bounded by `max_buffered_bytes`).

use std::io::{IoSlice, Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use rustls::ServerConnection;
use smallvec::SmallVec;

/// A TLS-level failure of one connection (its alert, if any, is queued: [`TlsState::output`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsFault {
    /// The peer sent something rustls refused (bad record, failed handshake, bad MAC).
    #[error("tls: {0}")]
    Protocol(#[from] rustls::Error),
    /// rustls' internal buffers refused more (cannot happen with the call pattern here; kept
    /// typed instead of a panic).
    #[error("tls: {0}")]
    Buffer(std::io::Error),
}

impl TlsFault {
    /// A metric/log label.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            TlsFault::Protocol(_) => "tls_protocol",
            TlsFault::Buffer(_) => "tls_buffer",
        }
    }
}

/// The TLS state of one connection (boxed in its `Conn`: plain connections hold a `None`).
pub(crate) struct TlsState {
    conn: ServerConnection,
    /// The peer sent close_notify: no more plaintext will come.
    peer_closed: bool,
    /// Our close_notify is queued or sent.
    closing: bool,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("handshaking", &self.conn.is_handshaking())
            .field("peer_closed", &self.peer_closed)
            .field("closing", &self.closing)
            .finish()
    }
}

/// `io::Write` into a `BytesMut` that takes every slice of a vectored write (the default
/// `write_vectored` writes only the first, which would make rustls' `write_tls` one call per
/// record).
struct Sink<'a>(&'a mut BytesMut);

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.put_slice(buf);
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        self.0.reserve(n);
        for b in bufs {
            self.0.put_slice(b);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TlsState {
    /// A new server-side connection under `cfg`.
    pub(crate) fn new(cfg: std::sync::Arc<rustls::ServerConfig>) -> Result<TlsState, TlsFault> {
        let mut conn = ServerConnection::new(cfg)?;
        // The caller bounds what it encrypts (see the module doc).
        conn.set_buffer_limit(None);
        Ok(TlsState {
            conn,
            peer_closed: false,
            closing: false,
        })
    }

    /// The peer sent close_notify.
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// rustls has records to send that no [`TlsState::encrypt`] drained yet (handshake
    /// messages, session tickets, a key update, an alert).
    pub(crate) fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Feed `cipher` (all of it is consumed) and append the plaintext it completes to `plain`.
    /// Returns the plaintext byte count. On an error, rustls' alert is queued for
    /// [`TlsState::output`].
    pub(crate) fn decrypt(
        &mut self,
        mut cipher: &[u8],
        plain: &mut BytesMut,
    ) -> Result<usize, TlsFault> {
        let start = plain.len();
        while !cipher.is_empty() && !self.peer_closed {
            // Takes at most one read's worth (4 KiB) per call; processed at once, so rustls'
            // buffers never fill.
            self.conn.read_tls(&mut cipher).map_err(TlsFault::Buffer)?;
            let io = self.conn.process_new_packets()?;
            self.take_plaintext(io.plaintext_bytes_to_read(), plain)?;
            if io.peer_has_closed() {
                self.peer_closed = true;
            }
        }
        Ok(plain.len() - start)
    }

    fn take_plaintext(&mut self, n: usize, plain: &mut BytesMut) -> Result<(), TlsFault> {
        if n == 0 {
            return Ok(());
        }
        let at = plain.len();
        plain.resize(at + n, 0);
        let mut got = 0;
        while got < n {
            match self.conn.reader().read(&mut plain[at + got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    plain.truncate(at + got);
                    return Err(TlsFault::Buffer(e));
                }
            }
        }
        plain.truncate(at + got);
        Ok(())
    }

    /// Encrypt `chunks` (in order, as one stream: rustls fills records across chunk
    /// boundaries) and append every pending record to `out`, after anything rustls had queued
    /// before (handshake messages, tickets). Returns the ciphertext byte count appended.
    pub(crate) fn encrypt(&mut self, chunks: &[Bytes], out: &mut BytesMut) -> usize {
        let start = out.len();
        if !self.closing {
            let mut rest: SmallVec<[IoSlice<'_>; 8]> = chunks
                .iter()
                .filter(|c| !c.is_empty())
                .map(|c| IoSlice::new(c))
                .collect();
            let mut rest = &mut rest[..];
            // With the buffer limit lifted, rustls takes everything in one call; loop anyway
            // rather than assume it.
            while !rest.is_empty() {
                match self.conn.writer().write_vectored(rest) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => IoSlice::advance_slices(&mut rest, n),
                }
            }
        }
        self.output(out);
        out.len() - start
    }

    /// Append every record rustls has queued (handshake messages, alerts, close_notify) to
    /// `out`.
    pub(crate) fn output(&mut self, out: &mut BytesMut) {
        let mut sink = Sink(out);
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Queue close_notify (once) and append it, with anything queued before it, to `out`.
    /// Returns `false` if it had already been sent.
    pub(crate) fn close_notify(&mut self, out: &mut BytesMut) -> bool {
        if self.closing {
            return false;
        }
        self.closing = true;
        self.conn.send_close_notify();
        self.output(out);
        true
    }
}

/// Does the first data on a TLS port look like a plain HTTP request (an ASCII method) rather
/// than a TLS record (content type 0x16, handshake)? Then it gets a plain-text 400 instead of
/// a TLS alert it could not read.
pub(crate) fn looks_like_plain_http(first: &[u8]) -> bool {
    first.first().is_some_and(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::ClientConnection;

    fn client(cert_pem: &str, alpn: &[&[u8]]) -> ClientConnection {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        ClientConnection::new(Arc::new(cfg), ServerName::try_from("localhost").unwrap()).unwrap()
    }

    /// Move every pending record of the client to the server and back until both are quiet;
    /// returns the plaintext the server decrypted.
    fn pump(c: &mut ClientConnection, s: &mut TlsState) -> Result<BytesMut, TlsFault> {
        let mut plain = BytesMut::new();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.decrypt(&wire, &mut plain)?;
            let mut back = BytesMut::new();
            s.output(&mut back);
            if wire.is_empty() && back.is_empty() {
                break;
            }
            let mut rd = &back[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
        }
        Ok(plain)
    }

    fn server(dir: &str) -> (TlsState, String) {
        let (files, cert_pem) = crate::tls::tests::self_signed(dir);
        let cfg = crate::tls::load(&files).unwrap();
        (TlsState::new(cfg).unwrap(), cert_pem)
    }

    #[test]
    fn handshake_then_both_directions() {
        let (mut s, pem) = server("tls-session-rt");
        let mut c = client(&pem, &[b"http/1.1"]);
        c.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let plain = pump(&mut c, &mut s).unwrap();
        assert!(!s.conn.is_handshaking() && !c.is_handshaking());
        assert_eq!(&plain[..], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.alpn_protocol(), Some(&b"http/1.1"[..]));
        // Two frames shared with other connections: encrypted as one stream.
        let frames = [
            Bytes::from_static(b"\x82\x02hi"),
            Bytes::from_static(b"\x82\x01!"),
        ];
        let mut out = BytesMut::new();
        let n = s.encrypt(&frames, &mut out);
        assert_eq!(n, out.len());
        assert!(!s.wants_write(), "everything was drained into out");
        let mut rd = &out[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets().unwrap();
        let mut got = Vec::new();
        let _ = c.reader().read_to_end(&mut got);
        assert_eq!(got, b"\x82\x02hi\x82\x01!");
        // close_notify: once.
        let mut out = BytesMut::new();
        assert!(s.close_notify(&mut out) && !out.is_empty());
        assert!(!s.close_notify(&mut BytesMut::new()));
        // The client's close_notify is seen.
        c.send_close_notify();
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        assert_eq!(s.decrypt(&wire, &mut BytesMut::new()).unwrap(), 0);
        assert!(s.peer_closed());
    }

    #[test]
    fn ciphertext_split_anywhere_gives_the_same_plaintext() {
        let (mut s, pem) = server("tls-session-split");
        let mut c = client(&pem, &[]);
        pump(&mut c, &mut s).unwrap();
        let msg: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        c.writer().write_all(&msg).unwrap();
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let mut plain = BytesMut::new();
        for piece in wire.chunks(777) {
            s.decrypt(piece, &mut plain).unwrap();
        }
        assert_eq!(&plain[..], &msg[..]);
    }

    #[test]
    fn garbage_and_wrong_alpn_fail_with_an_alert() {
        let (mut s, _) = server("tls-session-bad");
        let e = s
            .decrypt(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut BytesMut::new())
            .unwrap_err();
        assert_eq!(e.as_str(), "tls_protocol");
        let mut alert = BytesMut::new();
        s.output(&mut alert);
        assert_eq!(alert.first(), Some(&0x15), "an alert record");
        // A client that offers only h2 is refused (no_application_protocol).
        let (mut s, pem) = server("tls-session-alpn");
        let mut c = client(&pem, &[b"h2"]);
        assert!(pump(&mut c, &mut s).is_err());
    }

    #[test]
    fn plain_http_is_told_apart_from_a_client_hello() {
        assert!(looks_like_plain_http(b"GET / HTTP/1.1"));
        assert!(!looks_like_plain_http(&[0x16, 0x03, 0x01]));
        assert!(!looks_like_plain_http(b""));
    }
}
