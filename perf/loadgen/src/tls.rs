//! TLS client side (`--url wss://…`, `--ca FILE`): a rustls `ClientConnection` per connection
//! between the socket and the engine's plaintext paths. Reads: ciphertext from the socket →
//! `read_tls` / `process_new_packets` → plaintext to the same parser as plain connections.
//! Writes: the connection's outgoing plaintext → `writer()` → `write_tls` to the socket.

use std::io::{self, Read};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection};

/// A client configuration trusting only the CA certificates in `ca_file` (PEM): TLS 1.2 and
/// 1.3, ALPN http/1.1, session resumption off (every handshake in a handshake benchmark is a
/// full one).
pub fn client_config(ca_file: &str) -> Result<Arc<ClientConfig>, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("--ca {ca_file}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("--ca {ca_file}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca {ca_file}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("--ca {ca_file}: no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// A new client session for `host` (the URL's host: a name or an IP address).
pub fn connect(cfg: &Arc<ClientConfig>, host: &str) -> io::Result<Box<ClientConnection>> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut c = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
    c.set_buffer_limit(None);
    Ok(Box::new(c))
}

/// Feed `cipher` and append the plaintext it completes to `plain`. `Ok(true)`: the server sent
/// close_notify.
pub fn decrypt(
    c: &mut ClientConnection,
    mut cipher: &[u8],
    plain: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut closed = false;
    while !cipher.is_empty() {
        c.read_tls(&mut cipher)?;
        let st = c.process_new_packets().map_err(io::Error::other)?;
        let n = st.plaintext_bytes_to_read();
        if n > 0 {
            let at = plain.len();
            plain.resize(at + n, 0);
            c.reader().read_exact(&mut plain[at..])?;
        }
        if st.peer_has_closed() {
            closed = true;
            break;
        }
    }
    Ok(closed)
}
