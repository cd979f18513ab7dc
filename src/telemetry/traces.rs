//! OpenTelemetry traces, off unless an OTLP endpoint is configured
//! (`--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! When on, every RPC is a server span (its parent is the caller's W3C
//! `traceparent`, when it sends one) and every store transaction a child
//! span of the RPC that ran it. Spans go to the OTLP collector over gRPC in
//! batches. The rest of the standard variables apply as the OpenTelemetry
//! SDK reads them (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`).
//!
//! When off, no span layer is installed and [`GrpcTraceLayer`] passes
//! requests straight through: nothing is created per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Why traces could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("the OTLP endpoint {endpoint:?} cannot be used: {detail}")]
    Exporter { endpoint: String, detail: String },
}

/// The tracer provider while traces are on; flushes and stops the exporter
/// when dropped.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// An exporter to `endpoint` (`http://collector:4317`) and the tracing
    /// layer that feeds it, or `None` when traces are off.
    pub(super) fn start<S>(endpoint: &str) -> Result<(Traces, impl tracing_subscriber::Layer<S>), TraceError>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| TraceError::Exporter {
                endpoint: endpoint.to_string(),
                detail: e.to_string(),
            })?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "portcullis".into()))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("portcullis"));
        Ok((Traces { provider }, layer))
    }

    /// Sends every finished span now.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Reads a W3C trace context from request headers.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Wraps each gRPC request in a server span whose parent is the caller's
/// trace context. Written here, not with tower-http's TraceLayer, because
/// the span must carry the OpenTelemetry parent and gRPC's semantic
/// attributes, and cost nothing when traces are off.
#[derive(Debug, Clone, Copy)]
pub struct GrpcTraceLayer {
    enabled: bool,
}

impl GrpcTraceLayer {
    pub fn new(enabled: bool) -> GrpcTraceLayer {
        GrpcTraceLayer { enabled }
    }
}

impl<S> tower::Layer<S> for GrpcTraceLayer {
    type Service = GrpcTrace<S>;
    fn layer(&self, inner: S) -> GrpcTrace<S> {
        GrpcTrace {
            inner,
            enabled: self.enabled,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcTrace<S> {
    inner: S,
    enabled: bool,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !self.enabled {
            return futures::future::Either::Left(self.inner.call(req));
        }
        let path = req.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let span = tracing::info_span!(
            "grpc",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
        let _ = span.set_parent(parent);
        let fut = self.inner.call(req);
        let recorded = span.clone();
        futures::future::Either::Right(Box::pin(
            async move {
                let r = fut.await;
                // A trailers-only answer (every error) has its status in the
                // headers; a streamed OK has it in trailers, which is 0.
                if let Ok(resp) = &r {
                    let code = resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0);
                    recorded.record("rpc.grpc.status_code", code);
                }
                r
            }
            .instrument(span),
        ))
    }
}
