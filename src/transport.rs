//! How connections are accepted: `TCP_NODELAY` on every socket, TLS
//! handshakes off the accept loop, and certificates re-read when the files
//! change.
//!
//! Why not tonic's own `Server::tls_config`: its configuration is fixed for
//! the life of the server, so a rotated Kubernetes Secret would need a
//! restart, and its errors say only "transport error". Here the rustls
//! configuration sits behind an [`ArcSwap`]: each new connection uses the
//! newest one, established connections keep theirs, and every error names
//! the file and the reason.
//!
//! Why the accept loop sets `TCP_NODELAY` itself: the builder's
//! `tcp_nodelay(true)` does not reach sockets handed to
//! `serve_with_incoming`, and Nagle's algorithm then meets the client's
//! delayed ACK, stalling every response larger than a segment by 40 ms.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The files of a TLS configuration.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {path}: {error}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{flag} {path} holds no {what} PEM block")]
    Missing {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{flag} {path} is not valid PEM: {reason}")]
    Pem {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--client-ca {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("--tls-cert {cert} and --tls-key {key} cannot be used together: {reason}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        error,
    })
}

fn certs(flag: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            flag,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            flag,
            path: path.to_path_buf(),
            what: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The files' contents, hashed: a reload happens only when they change.
fn fingerprint(files: &TlsFiles) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    for p in [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
    {
        h.update(std::fs::read(p).ok()?);
        h.update([0]);
    }
    Some(h.finalize().into())
}

/// What the gRPC server offers in ALPN: HTTP/2 only.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// What an HTTPS server (the operator's admission webhook) offers.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Builds the server configuration from the files, naming the file and the
/// reason on any error.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_pem = read("--tls-cert", &files.cert)?;
    let chain = certs("--tls-cert", &files.cert, &cert_pem)?;
    let key_pem = read("--tls-key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            flag: "--tls-key",
            path: files.key.clone(),
            what: "PRIVATE KEY (PKCS#8, RSA or EC)",
        },
        e => TlsError::Pem {
            flag: "--tls-key",
            path: files.key.clone(),
            reason: e.to_string(),
        },
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = read("--client-ca", ca)?;
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("--client-ca", ca, &pem)? {
                roots.add(c).map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The current TLS configuration, replaced when its files change.
pub struct TlsReloader {
    files: TlsFiles,
    alpn: &'static [&'static [u8]],
    acceptor: ArcSwap<TlsAcceptor>,
    seen: std::sync::Mutex<Option<[u8; 32]>>,
}

impl TlsReloader {
    /// For the gRPC server.
    pub fn new(files: TlsFiles) -> Result<Arc<TlsReloader>, TlsError> {
        TlsReloader::with_alpn(files, ALPN_GRPC)
    }

    pub fn with_alpn(files: TlsFiles, alpn: &'static [&'static [u8]]) -> Result<Arc<TlsReloader>, TlsError> {
        let seen = fingerprint(&files);
        let config = server_config(&files, alpn)?;
        Ok(Arc::new(TlsReloader {
            files,
            alpn,
            acceptor: ArcSwap::from_pointee(TlsAcceptor::from(Arc::new(config))),
            seen: std::sync::Mutex::new(seen),
        }))
    }

    /// Re-reads the files if their contents changed. `Ok(true)` when a new
    /// configuration is in use; on an error the previous one stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let now = fingerprint(&self.files);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_none() || now == *seen {
            // Unchanged, or mid-rotation with a file missing: try again later.
            return Ok(false);
        }
        let config = server_config(&self.files, self.alpn);
        // Whatever the outcome, this content was judged; do not log the same
        // bad files every poll.
        *seen = now;
        let config = config?;
        self.acceptor.store(Arc::new(TlsAcceptor::from(Arc::new(config))));
        Ok(true)
    }

    fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }
}

/// The longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

fn accepted(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}

/// Plaintext connections, with `TCP_NODELAY`.
pub fn plain(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    accepted(&stream);
                    return Some((Ok(stream), listener));
                }
                // A failed accept (the peer reset, too many open files) must
                // not end the server; back off briefly and go on.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// TLS connections: each handshake runs in its own task with a timeout, so
/// a slow or silent client never holds up the others.
pub fn tls(
    listener: TcpListener,
    tls: Arc<TlsReloader>,
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsStream<TcpStream>>>(64);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            accepted(&stream);
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
