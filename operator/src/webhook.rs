//! The admission webhook's HTTPS endpoint, `POST /validate`.
//!
//! Every replica serves it, leading or not: admission must not wait for an
//! election. TLS reuses the service's accept loop ([`portcullis::transport`]):
//! handshakes off the accept path with a timeout, and the certificate
//! re-read when its Secret is rotated (cert-manager renews in place).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use portcullis::transport::{self, ALPN_HTTP, TlsFiles, TlsReloader};
use portcullis_client::Client as Service;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::admission::{self, FailurePolicy};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct WebhookOptions {
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    pub failure_policy: FailurePolicy,
    /// How long the service may take to validate; keep it below the
    /// webhook configuration's `timeoutSeconds`, so the answer is this
    /// webhook's (with its message) rather than the API server's timeout.
    pub validate_timeout: Duration,
    /// How often the certificate files are checked for a rotation.
    pub reload_interval: Duration,
}

/// An AdmissionReview holds the object twice (new and old), each up to the
/// API server's 1.5 MiB; anything larger is not from an API server.
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone)]
struct Shared {
    service: Service,
    metrics: Metrics,
    policy: FailurePolicy,
    timeout: Duration,
}

/// TLS connections as an axum listener.
struct TlsListener {
    incoming: std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send>>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(s)) => {
                    let peer = s.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (s, peer);
                }
                Some(Err(_)) => continue,
                // The accept loop ended: the server is stopping.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn validate(
    State(s): State<Shared>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => return Json(AdmissionResponse::invalid("an AdmissionReview without a request").into_review()),
    };
    let service = s.service.clone();
    let timeout = s.timeout;
    let (resp, kind, verdict) = admission::review(&req, s.policy, |r| async move {
        match tokio::time::timeout(timeout, service.plan_changes(r)).await {
            Ok(answer) => answer,
            Err(_) => Err(portcullis_client::Error::from(tonic::Status::deadline_exceeded(
                format!("no answer within {} ms", timeout.as_millis()),
            ))),
        }
    })
    .await;
    let kind = kind.map(|k| k.label()).unwrap_or("other");
    s.metrics.admission.with_label_values(&[kind, verdict.label()]).inc();
    tracing::info!(
        uid = %req.uid,
        kind,
        name = %req.name,
        namespace = req.namespace.as_deref().unwrap_or(""),
        operation = ?req.operation,
        dry_run = req.dry_run,
        verdict = verdict.label(),
        message = %resp.result.message,
        "admission review"
    );
    Json(resp.into_review())
}

/// Starts serving; the address is the bound one (port 0 picks a free one).
pub async fn serve(
    opts: WebhookOptions,
    service: Service,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), WebhookError> {
    let tls = TlsReloader::with_alpn(opts.tls.clone(), ALPN_HTTP)?;
    let listener = TcpListener::bind(opts.listen).await.map_err(WebhookError::Listen)?;
    let local = listener.local_addr().map_err(WebhookError::Listen)?;
    let incoming = Box::pin(transport::tls(listener, tls.clone()));
    let shared = Shared {
        service,
        metrics,
        policy: opts.failure_policy,
        timeout: opts.validate_timeout,
    };
    let app = Router::new()
        .route("/validate", post(validate))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(shared);
    let reload_every = opts.reload_interval;
    let task = tokio::spawn(async move {
        let reloads = reload(tls, reload_every);
        let server = axum::serve(TlsListener { incoming, local }, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|v| *v).await;
        });
        tokio::select! {
            r = server.into_future() => if let Err(e) = r { tracing::warn!(error = %e, "webhook server ended") },
            _ = reloads => {}
        }
    });
    Ok((local, task))
}

async fn reload(tls: Arc<TlsReloader>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match tls.reload() {
            Ok(true) => tracing::info!("webhook certificate reloaded"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "webhook certificate not reloaded; the previous one stays"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook certificate: {0}")]
    Tls(#[from] portcullis::transport::TlsError),
    #[error("webhook listener: {0}")]
    Listen(std::io::Error),
}
