//! TLS with rustls: the server configuration built from `[tls]` ([`load`], which a reload can
//! call again; connections accepted after a new configuration is in force use its
//! certificates), and the sans-io state of one TLS connection ([`session::TlsState`]: ciphertext
//! in, plaintext out; plaintext frames in, records out).
//!
//! TLS 1.2 and 1.3 (rustls' `ring` provider), ALPN `http/1.1` (the WebSocket upgrade is
//! HTTP/1.1), no client certificates. The async side (the handshake phase on a monoio stream) is
//! `transport::tls`; once upgraded a connection's reader, writer and close path use its
//! `TlsState` in place (docs/architecture.md, "TLS").

pub(crate) mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Where the certificate chain and its private key are (`[tls] cert_file`, `key_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of the leaf certificate.
    pub key_file: PathBuf,
}

/// `[tls]` in force: the files and the rustls configuration loaded from them.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The files it was loaded from (a reload reads them again).
    pub files: TlsFiles,
    /// Shared by every shard; each new connection takes a reference.
    pub server: Arc<ServerConfig>,
}

/// Why `[tls]` could not be loaded. Each variant names the file (and so the config key) at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Which key named the file: `cert_file` or `key_file`.
        key: &'static str,
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The PEM could not be parsed, or holds nothing of the kind expected.
    #[error("{path}: {reason}")]
    Pem {
        /// `cert_file` or `key_file`.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate, or the key type
    /// is not supported).
    #[error("{0}")]
    Rustls(rustls::Error),
}

impl TlsError {
    /// The `[tls]` key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. } | TlsError::Pem { key, .. } => key,
            TlsError::Rustls(_) => "key_file",
        }
    }
}

/// The ALPN protocol offered: the WebSocket upgrade, the status page, `/healthz` and the HTTP
/// API are all HTTP/1.1.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Read the certificate chain and key and build the server configuration (TLS 1.2 and 1.3,
/// ALPN `http/1.1`). Called at start-up (through config validation, so `config check` catches
/// a bad file) and again by a reload.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(files)?;
    let key = read_key(files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Rustls)?;
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(cfg))
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(key: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Pem {
        key,
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn read_certs(files: &TlsFiles) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = &files.cert_file;
    let pem = read("cert_file", path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("cert_file", path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(
            "cert_file",
            path,
            "no CERTIFICATE block (expected a PEM certificate chain, leaf first)",
        ));
    }
    Ok(certs)
}

fn read_key(files: &TlsFiles) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = &files.key_file;
    let pem = read("key_file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let reason = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY block (expected PKCS#8, RSA or EC, unencrypted)".to_string()
            }
            e => format!("bad PEM: {e}"),
        };
        pem_error("key_file", path, reason)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` and its key, as PEM files in a fresh temp dir.
    pub(crate) fn self_signed(dir_name: &str) -> (TlsFiles, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = std::env::temp_dir().join(format!("shardcast-{dir_name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        };
        let cert_pem = ck.cert.pem();
        std::fs::write(&files.cert_file, &cert_pem).unwrap();
        std::fs::write(&files.key_file, ck.signing_key.serialize_pem()).unwrap();
        (files, cert_pem)
    }

    #[test]
    fn loads_a_pair_and_offers_http11() {
        let (files, _) = self_signed("tls-load");
        let cfg = load(&files).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // Loading is repeatable (a reload calls it again).
        load(&files).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let (files, _) = self_signed("tls-errors");
        let missing = TlsFiles {
            cert_file: files.cert_file.with_file_name("nope.pem"),
            ..files.clone()
        };
        let e = load(&missing).unwrap_err();
        assert_eq!(e.key(), "cert_file");
        assert!(e.to_string().contains("nope.pem"), "{e}");
        // A key file given as the certificate: no CERTIFICATE block.
        let swapped = TlsFiles {
            cert_file: files.key_file.clone(),
            key_file: files.key_file.clone(),
        };
        let e = load(&swapped).unwrap_err();
        assert_eq!(e.key(), "cert_file");
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        let no_key = TlsFiles {
            cert_file: files.cert_file.clone(),
            key_file: files.cert_file.clone(),
        };
        let e = load(&no_key).unwrap_err();
        assert_eq!(e.key(), "key_file");
        assert!(e.to_string().contains("no PRIVATE KEY"), "{e}");
        // Another certificate's key.
        let (other, _) = self_signed("tls-errors-other");
        let mismatch = TlsFiles {
            cert_file: files.cert_file.clone(),
            key_file: other.key_file.clone(),
        };
        let e = load(&mismatch).unwrap_err();
        assert_eq!(e.key(), "key_file", "{e}");
    }
}
