//! Client certificates: who a caller is by the certificate mTLS verified.
//!
//! The server's TLS config requires a certificate chaining to `--client-ca`
//! on every connection when one is given, so a certificate seen here has
//! been verified. Its subject (RFC 4514 text, `CN=frontend,O=acme`) is the
//! caller's name when the server has no API keys, and is recorded with
//! every audit event and refusal either way.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tonic::Request;

/// Subjects of the certificates seen, so a check does not parse its
/// connection's certificate again for every request. Read without a lock;
/// a new certificate copies the map (clients are few and long-lived), and
/// the map is emptied when it reaches [`Subjects::MAX`].
#[derive(Debug, Default)]
pub struct Subjects {
    seen: ArcSwap<HashMap<Vec<u8>, Arc<str>>>,
}

impl Subjects {
    pub const MAX: usize = 4096;

    /// The subject of the request's verified client certificate, if any.
    pub fn of<T>(&self, req: &Request<T>) -> Option<Arc<str>> {
        let certs = req.peer_certs()?;
        let der = certs.first()?.as_ref();
        if let Some(s) = self.seen.load().get(der) {
            return Some(s.clone());
        }
        let subject: Arc<str> = subject(der)?.into();
        self.seen.rcu(|m| {
            let mut m = if m.len() >= Self::MAX {
                HashMap::new()
            } else {
                HashMap::clone(m)
            };
            m.insert(der.to_vec(), subject.clone());
            m
        });
        Some(subject)
    }
}

/// The subject of a DER certificate, as RFC 4514 text; `None` when it does
/// not parse (rustls verified it, so only an exotic encoding gets here).
pub fn subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let s = cert.subject().to_string();
    Some(if s.is_empty() { "(empty subject)".into() } else { s })
}

/// The subject of the request's verified client certificate, parsed now:
/// for writes and refusals, which are rare enough not to need the cache.
pub fn subject_of<T>(req: &Request<T>) -> Option<String> {
    subject(req.peer_certs()?.first()?.as_ref())
}
