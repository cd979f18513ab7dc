//! Connecting: the endpoint, TLS or mTLS, and the API key every call sends.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{Client, Error, RetryPolicy};

/// Adds `authorization: Bearer <key>` to every call (nothing without a
/// key), and `x-portcullis-on-behalf-of` when the caller acts for someone
/// (the server records it in the audit trail).
#[derive(Clone, Default)]
pub struct Bearer {
    key: Option<MetadataValue<Ascii>>,
    on_behalf_of: Option<MetadataValue<Ascii>>,
}

impl Bearer {
    /// Sends no key (a server on loopback without keys).
    pub fn none() -> Bearer {
        Bearer::default()
    }

    /// Sends `key`, trimmed; refused unless it is printable ASCII.
    pub fn new(key: &str) -> Result<Bearer, Error> {
        format!("Bearer {}", key.trim())
            .parse()
            .map(|v| Bearer {
                key: Some(v),
                on_behalf_of: None,
            })
            .map_err(|_| Error::config("the API key must be printable ASCII"))
    }

    /// The same key, acting for `who` (printable ASCII, at most 512 bytes).
    pub fn on_behalf_of(&self, who: &str) -> Result<Bearer, Error> {
        if who.is_empty() || who.len() > 512 {
            return Err(Error::config("on-behalf-of must be 1 to 512 bytes"));
        }
        let v = who
            .parse()
            .map_err(|_| Error::config("on-behalf-of must be printable ASCII"))?;
        Ok(Bearer {
            key: self.key.clone(),
            on_behalf_of: Some(v),
        })
    }

    /// [`Bearer::new`] when there is a key, [`Bearer::none`] otherwise.
    pub fn optional(key: Option<&str>) -> Result<Bearer, Error> {
        key.map_or(Ok(Bearer::none()), Bearer::new)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.key {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(v) = &self.on_behalf_of {
            req.metadata_mut().insert("x-portcullis-on-behalf-of", v.clone());
        }
        Ok(req)
    }
}

/// A channel that sends the API key.
pub type Authed = InterceptedService<Channel, Bearer>;

/// How to reach a Portcullis server.
#[derive(Clone, Debug)]
pub struct Config {
    endpoint: String,
    token: Option<String>,
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
    connect_timeout: Duration,
    timeout: Option<Duration>,
    retry: RetryPolicy,
}

impl Config {
    /// `http://host:port` for plaintext (loopback only: the server refuses
    /// keys in the clear elsewhere), `https://host:port` for TLS.
    pub fn new(endpoint: impl Into<String>) -> Config {
        Config {
            endpoint: endpoint.into(),
            token: None,
            ca: None,
            identity: None,
            domain: None,
            connect_timeout: Duration::from_secs(5),
            timeout: None,
            retry: RetryPolicy::default(),
        }
    }

    /// The API key to send.
    pub fn token(mut self, key: impl Into<String>) -> Config {
        self.token = Some(key.into());
        self
    }

    /// [`Config::token`] when there is one.
    pub fn optional_token(mut self, key: Option<String>) -> Config {
        self.token = key;
        self
    }

    /// Trust this CA (PEM) for the server's certificate; implies TLS, and
    /// TLS needs it.
    pub fn ca_certificate(mut self, pem: Vec<u8>) -> Config {
        self.ca = Some(pem);
        self
    }

    /// Present this client certificate and key (PEM): mTLS.
    pub fn client_identity(mut self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Config {
        self.identity = Some((cert_pem, key_pem));
        self
    }

    /// The name to verify the server's certificate against, when it is not
    /// the endpoint's host.
    pub fn tls_domain(mut self, name: impl Into<String>) -> Config {
        self.domain = Some(name.into());
        self
    }

    pub fn connect_timeout(mut self, d: Duration) -> Config {
        self.connect_timeout = d;
        self
    }

    /// The deadline of every call.
    pub fn timeout(mut self, d: Duration) -> Config {
        self.timeout = Some(d);
        self
    }

    pub fn retry(mut self, r: RetryPolicy) -> Config {
        self.retry = r;
        self
    }

    fn endpoint(&self) -> Result<(Endpoint, Bearer), Error> {
        let mut e = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|err| Error::config(format!("invalid endpoint {:?}: {err}", self.endpoint)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some(t) = self.timeout {
            e = e.timeout(t);
        }
        let tls = self.ca.is_some() || self.identity.is_some() || self.endpoint.starts_with("https://");
        if tls {
            let mut c = ClientTlsConfig::new();
            // No built-in roots: Portcullis runs behind a private CA, so
            // trusting the public ones by default would only widen trust.
            if let Some(pem) = &self.ca {
                c = c.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &self.identity {
                c = c.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = &self.domain {
                c = c.domain_name(d.clone());
            }
            e = e
                .tls_config(c)
                .map_err(|err| Error::config(format!("TLS configuration: {err}")))?;
        }
        Ok((e, Bearer::optional(self.token.as_deref())?))
    }

    /// Connects now; fails when the server cannot be reached.
    pub async fn connect(self) -> Result<Client, Error> {
        let (e, bearer) = self.endpoint()?;
        let channel = e.connect().await.map_err(|err| {
            Error::unreachable(format!("cannot connect to {}: {}", self.endpoint, source_chain(&err)))
        })?;
        Ok(Client::new(channel, bearer, self.retry))
    }

    /// Connects on first use, and reconnects as needed: a client that
    /// starts before its server (the operator) reports UNAVAILABLE meanwhile.
    pub fn connect_lazy(self) -> Result<Client, Error> {
        let (e, bearer) = self.endpoint()?;
        Ok(Client::new(e.connect_lazy(), bearer, self.retry))
    }
}

/// An error with its causes, which for transport errors say what failed.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
