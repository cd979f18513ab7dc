//! OpenTelemetry traces reach an OTLP collector (one served by this test)
//! with the caller's W3C trace context: the RPC span's parent is the
//! caller's span, and the store transaction it ran is the RPC span's child.
//!
//! Its own test binary: the tracing subscriber is global to a process.

mod common;

use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use portcullis::server::ServeOptions;
use portcullis::telemetry::LogFormat;
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::admin_service_client::AdminServiceClient;
use tokio::sync::mpsc;

struct Collector(mpsc::UnboundedSender<Span>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let _ = self.0.send(s);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_and_store_spans_carry_the_callers_trace() {
    let (tx, mut spans) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let traces = portcullis::telemetry::init(LogFormat::Text, Some(&format!("http://{collector}")))
        .expect("the exporter starts")
        .expect("traces are on");

    let srv = start(ServeOptions {
        trace_requests: true,
        ..ServeOptions::for_tests()
    })
    .await;
    let mut admin = AdminServiceClient::with_interceptor(channel(srv.addr).await, |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap());
        Ok(r)
    });
    admin
        .apply_tenant(pb::ApplyTenantRequest {
            tenant: Some(tenant("acme")),
            expected_revision: String::new(),
        })
        .await
        .unwrap();
    // A refused call is traced too, with its code.
    let refused = admin.get_tenant(pb::GetTenantRequest { id: "nope".into() }).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::NotFound);
    traces.flush();

    let mut seen: Vec<Span> = Vec::new();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let rpc = seen
                .iter()
                .find(|s| s.name == "portcullis.v1.AdminService/ApplyTenant" && hex(&s.trace_id) == TRACE_ID);
            if let Some(rpc) = rpc
                && let Some(tx) = seen
                    .iter()
                    .find(|s| s.name == "store.transaction" && s.parent_span_id == rpc.span_id)
                && seen.iter().any(|s| s.name == "portcullis.v1.AdminService/GetTenant")
            {
                return (rpc.clone(), tx.clone());
            }
            match spans.recv().await {
                Some(s) => seen.push(s),
                None => panic!("the collector stopped"),
            }
            traces.flush();
        }
    })
    .await;
    let (rpc, tx) = found.unwrap_or_else(|_| {
        panic!(
            "no ApplyTenant span with its store child; spans seen: {:?}",
            seen.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    });
    assert_eq!(
        hex(&rpc.parent_span_id),
        PARENT_ID,
        "the caller's span is the RPC's parent"
    );
    assert_eq!(
        rpc.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
    );
    assert_eq!(hex(&tx.trace_id), TRACE_ID);
    let attr = |s: &Span, k: &str| {
        s.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    assert_eq!(attr(&rpc, "rpc.method"), Some(Value::StringValue("ApplyTenant".into())));
    assert_eq!(attr(&tx, "result"), Some(Value::StringValue("committed".into())));
    let get = seen
        .iter()
        .find(|s| s.name == "portcullis.v1.AdminService/GetTenant")
        .unwrap();
    assert_eq!(
        attr(get, "rpc.grpc.status_code"),
        Some(Value::IntValue(tonic::Code::NotFound as i64))
    );
    srv.shutdown().await;
}
