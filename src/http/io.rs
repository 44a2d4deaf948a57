//! The byte stream the HTTP side of a connection (request head, pages, the HTTP API, the `101`)
//! reads and writes: a plain `TcpStream`, or a TLS stream in its handshake phase
//! (`transport::tls::TlsStream`). Generic, so plain connections run exactly the code they ran
//! before TLS existed.

use bytes::BytesMut;
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::AsyncReadRent;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// What the handshake phase needs from a stream.
pub(crate) trait HttpIo {
    /// Read once, appending to `buf`'s spare capacity (reserving some if it has none).
    /// `Ok(0)`: the peer closed.
    async fn read_append(&mut self, buf: BytesMut) -> (std::io::Result<usize>, BytesMut);
    /// Write all of `data`.
    async fn send(&mut self, data: Vec<u8>) -> std::io::Result<()>;
    /// End the stream after what was written (FIN; for TLS, close_notify first).
    async fn finish(&mut self);
}

impl HttpIo for TcpStream {
    async fn read_append(&mut self, buf: BytesMut) -> (std::io::Result<usize>, BytesMut) {
        read_append(self, buf).await
    }
    async fn send(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        AsyncWriteRentExt::write_all(self, data).await.0.map(|_| ())
    }
    async fn finish(&mut self) {
        let _ = AsyncWriteRent::shutdown(self).await;
    }
}

/// The spare capacity of `buf` (after the bytes it already holds) as a read target: monoio's
/// plain `read` would write from the start of the buffer.
fn spare(mut buf: BytesMut) -> SliceMut<BytesMut> {
    if buf.capacity() == buf.len() {
        buf.reserve(4096);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    buf.slice_mut(len..cap)
}

/// Read into the spare capacity of `buf`.
async fn read_append<R: AsyncReadRent>(
    r: &mut R,
    buf: BytesMut,
) -> (std::io::Result<usize>, BytesMut) {
    let (res, slice) = r.read(spare(buf)).await;
    (res, slice.into_inner())
}
