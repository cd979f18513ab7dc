//! A tower [`Layer`] that checks every request with Portcullis before the
//! handler runs, for tonic and axum (any `http` service) alike.
//!
//! The calling service says how a request maps to a [`Permission`] (who
//! asks, to do what, on which resource); the layer answers refusals
//! itself, so a handler only ever sees allowed requests:
//!
//! | outcome | gRPC request | HTTP request |
//! |---|---|---|
//! | no subject (the mapping returned `None`) | UNAUTHENTICATED | 401 |
//! | denied, or the check was refused | PERMISSION_DENIED | 403 |
//! | Portcullis unreachable or overloaded | UNAVAILABLE | 503 |
//!
//! Every failure is closed: nothing reaches the handler unless Portcullis
//! answered ALLOWED. An allowed request carries its [`Decision`] in its
//! extensions.
//!
//! ```no_run
//! # async fn run(client: portcullis_client::Client) {
//! use portcullis_client::layer::{CheckLayer, Permission};
//!
//! let layer = CheckLayer::new(client, |req: &http::Request<axum::body::Body>| {
//!     // In a real service the subject comes from a verified token.
//!     let user = req.headers().get("x-user")?.to_str().ok()?;
//!     let action = if req.method() == http::Method::GET { "notes:read" } else { "notes:write" };
//!     let id = req.uri().path().trim_start_matches("/notes/");
//!     Some(Permission::new("acme", "notes", format!("user:{user}"), action, format!("note:{id}")))
//! });
//! let app: axum::Router = axum::Router::new()
//!     .route("/notes/{id}", axum::routing::get(|| async { "a note" }))
//!     .layer(layer);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Code;
use tower::{Layer, Service};

use crate::{Client, Decision, Error};

/// What a request asks Portcullis: may `subject` do `action` on
/// `resource` in `tenant`'s `vault`?
#[derive(Debug, Clone, PartialEq)]
pub struct Permission {
    pub tenant: String,
    pub vault: String,
    pub subject: String,
    pub action: String,
    pub resource: String,
    pub context: Option<prost_types::Struct>,
}

impl Permission {
    pub fn new(
        tenant: impl Into<String>,
        vault: impl Into<String>,
        subject: impl Into<String>,
        action: impl Into<String>,
        resource: impl Into<String>,
    ) -> Permission {
        Permission {
            tenant: tenant.into(),
            vault: vault.into(),
            subject: subject.into(),
            action: action.into(),
            resource: resource.into(),
            context: None,
        }
    }

    /// The request context conditions read (`context.*`).
    pub fn with_context(mut self, context: prost_types::Struct) -> Permission {
        self.context = Some(context);
        self
    }
}

/// How a service's requests map to permissions: `None` when the request
/// names no subject (it is refused as unauthenticated).
pub trait Authorize<B>: Clone + Send + Sync + 'static {
    fn permission(&self, request: &http::Request<B>) -> Option<Permission>;
}

impl<B, F> Authorize<B> for F
where
    F: Fn(&http::Request<B>) -> Option<Permission> + Clone + Send + Sync + 'static,
{
    fn permission(&self, request: &http::Request<B>) -> Option<Permission> {
        self(request)
    }
}

/// Checks each request with Portcullis before the inner service sees it.
#[derive(Clone)]
pub struct CheckLayer<M> {
    client: Client,
    authorize: M,
}

impl<M> CheckLayer<M> {
    /// Checks through `client` (its decision cache and default consistency
    /// apply) what `authorize` says each request asks.
    pub fn new(client: Client, authorize: M) -> CheckLayer<M> {
        CheckLayer { client, authorize }
    }
}

impl<S, M: Clone> Layer<S> for CheckLayer<M> {
    type Service = CheckService<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckService {
            inner,
            client: self.client.clone(),
            authorize: self.authorize.clone(),
        }
    }
}

/// The service [`CheckLayer`] wraps around another.
#[derive(Clone)]
pub struct CheckService<S, M> {
    inner: S,
    client: Client,
    authorize: M,
}

/// Why the layer refused a request, in its extensions-free response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NoSubject,
    Denied,
    Unavailable,
}

impl Refusal {
    fn of(e: &Error) -> Refusal {
        if e.is_unavailable() || e.code() == Code::ResourceExhausted {
            Refusal::Unavailable
        } else {
            Refusal::Denied
        }
    }

    fn response<B: Default>(self, grpc: bool) -> http::Response<B> {
        if grpc {
            let (code, message) = match self {
                Refusal::NoSubject => (Code::Unauthenticated, "the request names no subject"),
                Refusal::Denied => (Code::PermissionDenied, "denied by Portcullis"),
                Refusal::Unavailable => (Code::Unavailable, "Portcullis could not be asked"),
            };
            tonic::Status::new(code, message).into_http()
        } else {
            let status = match self {
                Refusal::NoSubject => http::StatusCode::UNAUTHORIZED,
                Refusal::Denied => http::StatusCode::FORBIDDEN,
                Refusal::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
            };
            let mut r = http::Response::new(B::default());
            *r.status_mut() = status;
            r
        }
    }
}

fn is_grpc<B>(r: &http::Request<B>) -> bool {
    r.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl<S, M, B, RB> Service<http::Request<B>> for CheckService<S, M>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    M: Authorize<B>,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let permission = self.authorize.permission(&request);
        // The service that was polled ready handles this request; its
        // clone stays for the next (tower's documented pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let client = self.client.clone();
        Box::pin(async move {
            let grpc = is_grpc(&request);
            let Some(p) = permission else {
                return Ok(Refusal::NoSubject.response(grpc));
            };
            let mut check = client.check(p.tenant, p.vault, p.subject, p.action, p.resource);
            if let Some(c) = p.context {
                check = check.context(c);
            }
            match check.await {
                Ok(d) if d.allowed => {
                    request.extensions_mut().insert::<Decision>(d);
                    inner.call(request).await
                }
                Ok(_) => Ok(Refusal::Denied.response(grpc)),
                Err(e) => Ok(Refusal::of(&e).response(grpc)),
            }
        })
    }
}
