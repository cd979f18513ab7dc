//! Connecting: the endpoint, TLS or mTLS, and the API key every call sends.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cache::{CacheConfig, DecisionCache};
use crate::{Client, Consistency, Error, RetryPolicy};

/// Adds `authorization: Bearer <key>` to every call (nothing without a
/// key), and `x-portcullis-on-behalf-of` when the caller acts for someone
/// (the server records it in the audit trail).
#[derive(Clone, Default)]
pub struct Bearer {
    // Swappable: a key read from a file is replaced when the file changes,
    // in every clone at once.
    key: Option<Arc<ArcSwap<MetadataValue<Ascii>>>>,
    on_behalf_of: Option<MetadataValue<Ascii>>,
}

fn header_of(key: &str) -> Result<MetadataValue<Ascii>, Error> {
    format!("Bearer {}", key.trim())
        .parse()
        .map_err(|_| Error::config("the API key must be printable ASCII"))
}

fn read_key(path: &Path) -> Result<MetadataValue<Ascii>, Error> {
    let key = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("cannot read the API key file {}: {e}", path.display())))?;
    if key.trim().is_empty() {
        return Err(Error::config(format!("the API key file {} is empty", path.display())));
    }
    header_of(&key)
}

/// Re-reads the key file every `every` until the last clone of the key is
/// dropped. A file that cannot be read or holds no valid key keeps the
/// old key (a rotation writes the file, it never removes it on purpose).
async fn reload_key(cell: Weak<ArcSwap<MetadataValue<Ascii>>>, path: PathBuf, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(cell) = cell.upgrade() else { return };
        if let Ok(v) = read_key(&path)
            && **cell.load() != v
        {
            cell.store(Arc::new(v));
        }
    }
}

impl Bearer {
    /// Sends no key (a server on loopback without keys).
    pub fn none() -> Bearer {
        Bearer::default()
    }

    /// Sends `key`, trimmed; refused unless it is printable ASCII.
    pub fn new(key: &str) -> Result<Bearer, Error> {
        Ok(Bearer {
            key: Some(Arc::new(ArcSwap::from_pointee(header_of(key)?))),
            on_behalf_of: None,
        })
    }

    /// The key in `path` (a mounted Kubernetes Secret), re-read every
    /// `every` so a rotated key is used without a restart. Needs a Tokio
    /// runtime; fails now when the file cannot be read.
    pub fn from_file(path: impl Into<PathBuf>, every: Duration) -> Result<Bearer, Error> {
        let path = path.into();
        let cell = Arc::new(ArcSwap::from_pointee(read_key(&path)?));
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::config("reloading the API key file needs a Tokio runtime"))?;
        rt.spawn(reload_key(Arc::downgrade(&cell), path, every));
        Ok(Bearer {
            key: Some(cell),
            on_behalf_of: None,
        })
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
            req.metadata_mut()
                .insert("authorization", MetadataValue::clone(&v.load()));
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
    /// More endpoints to balance over, beside `endpoint`.
    more: Vec<String>,
    token: Option<String>,
    token_file: Option<(PathBuf, Duration)>,
    cache: Option<CacheConfig>,
    consistency: Consistency,
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
            more: Vec::new(),
            token: None,
            token_file: None,
            cache: None,
            consistency: Consistency::default(),
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

    /// Read the API key from `path` and re-read it every 10 seconds, so a
    /// rotated Secret is picked up without a restart; instead of
    /// [`Config::token`].
    pub fn token_file(self, path: impl Into<PathBuf>) -> Config {
        self.token_file_every(path, Duration::from_secs(10))
    }

    /// [`Config::token_file`], re-read every `every`.
    pub fn token_file_every(mut self, path: impl Into<PathBuf>, every: Duration) -> Config {
        self.token_file = Some((path.into(), every));
        self
    }

    /// Balance calls over this endpoint too (replicas addressed one by
    /// one, e.g. a headless Service's pods): each call goes to a ready
    /// endpoint, and one that fails is routed around until it reconnects.
    /// With more than one endpoint the client connects lazily.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Config {
        self.more.push(endpoint.into());
        self
    }

    /// Cache decisions in the client ([`crate::DecisionCache`]).
    pub fn decision_cache(mut self, c: CacheConfig) -> Config {
        self.cache = Some(c);
        self
    }

    /// The consistency typed calls ask for unless told otherwise; the
    /// default is [`Consistency::MinimizeLatency`].
    pub fn consistency(mut self, c: Consistency) -> Config {
        self.consistency = c;
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

    fn endpoints(&self) -> Result<(Vec<Endpoint>, Bearer), Error> {
        let endpoints = std::iter::once(&self.endpoint)
            .chain(&self.more)
            .map(|e| self.endpoint_of(e))
            .collect::<Result<_, _>>()?;
        let bearer = match &self.token_file {
            Some((path, every)) => Bearer::from_file(path.clone(), *every)?,
            None => Bearer::optional(self.token.as_deref())?,
        };
        Ok((endpoints, bearer))
    }

    fn endpoint_of(&self, endpoint: &str) -> Result<Endpoint, Error> {
        let mut e = Endpoint::from_shared(endpoint.to_string())
            .map_err(|err| Error::config(format!("invalid endpoint {endpoint:?}: {err}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some(t) = self.timeout {
            e = e.timeout(t);
        }
        let tls = self.ca.is_some() || self.identity.is_some() || endpoint.starts_with("https://");
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
        Ok(e)
    }

    /// Connects now; fails when the server cannot be reached. With several
    /// endpoints ([`Config::endpoint`]), connects lazily.
    pub async fn connect(self) -> Result<Client, Error> {
        let (mut endpoints, bearer) = self.endpoints()?;
        let channel = if endpoints.len() == 1 {
            let e = endpoints.remove(0);
            e.connect().await.map_err(|err| {
                Error::unreachable(format!("cannot connect to {}: {}", self.endpoint, source_chain(&err)))
            })?
        } else {
            Channel::balance_list(endpoints.into_iter())
        };
        self.finish(channel, bearer)
    }

    /// Connects on first use, and reconnects as needed: a client that
    /// starts before its server (the operator) reports UNAVAILABLE meanwhile.
    /// A key file or a watched decision cache needs a Tokio runtime.
    pub fn connect_lazy(self) -> Result<Client, Error> {
        let (mut endpoints, bearer) = self.endpoints()?;
        let channel = if endpoints.len() == 1 {
            endpoints.remove(0).connect_lazy()
        } else {
            Channel::balance_list(endpoints.into_iter())
        };
        self.finish(channel, bearer)
    }

    fn finish(self, channel: Channel, bearer: Bearer) -> Result<Client, Error> {
        let mut client = Client::new(channel, bearer, self.retry);
        client.consistency = self.consistency;
        if let Some(c) = &self.cache {
            let cache = Arc::new(DecisionCache::new(c));
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(Error::config("a decision cache needs a Tokio runtime"));
            }
            cache.watch(c, client.watch.clone());
            client.cache = Some(cache);
        }
        Ok(client)
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
