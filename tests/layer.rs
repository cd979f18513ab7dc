//! The SDK's tower layer in front of real services: the example notes
//! service (axum, `examples/guarded_notes.rs`) and a tonic gRPC service,
//! each checking with a running Portcullis.

mod common;

#[path = "../examples/guarded_notes.rs"]
#[allow(dead_code)]
mod guarded_notes;

use std::time::Duration;

use axum::body::Body;
use common::*;
use portcullis::server::{Running, ServeOptions};
use portcullis_client::layer::{CheckLayer, Permission};
use portcullis_client::{Client, Config, RetryPolicy, pb};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceExt;

/// `examples/acme.yaml`, applied as the README's "Try it" does.
async fn portcullis() -> (Running, Client) {
    let srv = start(ServeOptions::for_tests()).await;
    let c = Config::new(format!("http://{}", srv.addr)).connect().await.unwrap();
    seed_acme(&c).await;
    (srv, c)
}

async fn get(app: &axum::Router, method: &str, path: &str, user: Option<&str>) -> (http::StatusCode, String) {
    let mut req = http::Request::builder().method(method).uri(path);
    if let Some(u) = user {
        req = req.header("x-user", u);
    }
    let resp = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_example_service_answers_only_what_portcullis_allows() {
    let (srv, c) = portcullis().await;
    let app = guarded_notes::app(c);

    let (status, body) = get(&app, "GET", "/notes/design.md", Some("carol")).await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(body.starts_with("note design.md (allowed at v1."), "{body}");
    // The contractors' deny override, and a user with no grant.
    let (status, body) = get(&app, "GET", "/notes/security/keys", Some("bob")).await;
    assert_eq!((status, body.as_str()), (http::StatusCode::FORBIDDEN, ""));
    assert_eq!(
        get(&app, "GET", "/notes/design.md", Some("nobody")).await.0,
        http::StatusCode::FORBIDDEN
    );
    // No subject: refused before Portcullis is asked.
    assert_eq!(
        get(&app, "GET", "/notes/design.md", None).await.0,
        http::StatusCode::UNAUTHORIZED
    );
    // A subject the server refuses (an empty user makes `user:`, which is
    // invalid): closed, 403.
    assert_eq!(
        get(&app, "GET", "/notes/design.md", Some("")).await.0,
        http::StatusCode::FORBIDDEN
    );
    // Writing needs more than reading.
    assert_eq!(
        get(&app, "PUT", "/notes/design.md", Some("carol")).await.0,
        http::StatusCode::OK
    );
    assert_eq!(
        get(&app, "PUT", "/notes/design.md", Some("dave")).await.0,
        http::StatusCode::FORBIDDEN
    );

    // Portcullis gone: every request is refused as unavailable, none
    // reaches a handler.
    srv.shutdown().await;
    let gone = Config::new(format!("http://127.0.0.1:{}", free_port()))
        .retry(RetryPolicy::none())
        .connect_lazy()
        .unwrap();
    let app = guarded_notes::app(gone);
    assert_eq!(
        get(&app, "GET", "/notes/design.md", Some("carol")).await.0,
        http::StatusCode::SERVICE_UNAVAILABLE
    );
}

/// A gRPC service (the standard health service) behind the layer: the
/// subject is the `x-user` metadata, the action the method.
#[tokio::test]
async fn a_grpc_service_behind_the_layer_answers_permission_denied() {
    let (srv, c) = portcullis().await;
    let authorize = |req: &http::Request<tonic::body::Body>| {
        let user = req.headers().get("x-user")?.to_str().ok()?;
        let method = req.uri().path().rsplit('/').next()?.to_ascii_lowercase();
        Some(Permission::new(
            "acme/eng/platform",
            "docs",
            format!("user:{user}"),
            format!("documents:{method}"),
            "document:health",
        ))
    };
    let (_, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(CheckLayer::new(c, authorize))
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let call = |user: Option<&'static str>| {
        let mut h = HealthClient::new(ch.clone());
        async move {
            let mut req = tonic::Request::new(HealthCheckRequest { service: String::new() });
            if let Some(u) = user {
                req.metadata_mut().insert("x-user", u.parse().unwrap());
            }
            h.check(req).await.map(|_| ()).map_err(|s| s.code())
        }
    };
    // carol may documents:check? No role grants it: denied.
    assert_eq!(call(Some("carol")).await, Err(Code::PermissionDenied));
    assert_eq!(call(None).await, Err(Code::Unauthenticated));

    // Grant it, and the same call passes through to the service.
    let client = Config::new(format!("http://{}", srv.addr)).connect().await.unwrap();
    let mut grant = binding("health", "user:carol", "inline");
    grant.role = String::new();
    grant.statements = vec![allow(&["documents:check"], &["document:health"])];
    client
        .write_bindings(pb::WriteBindingsRequest {
            tenant: "acme/eng/platform".into(),
            vault: "docs".into(),
            upserts: vec![grant],
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while call(Some("carol")).await != Ok(()) {
        assert!(tokio::time::Instant::now() < deadline, "the grant never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(call(Some("bob")).await, Err(Code::PermissionDenied));
    served.abort();
    srv.shutdown().await;
}
