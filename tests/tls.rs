//! TLS and mutual TLS on the gRPC listener.

mod common;

use common::*;
use portcullis::server::{ServeOptions, TlsFiles};
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::diagnostics_service_client::DiagnosticsServiceClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationName, "acme");
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca,
        server: leaf("localhost"),
        client: leaf("client"),
    }
}

/// The server's files of `p` in `dir`, requiring client certificates.
fn mtls_files(dir: &std::path::Path, p: &Pki) -> TlsFiles {
    let write = |name: &str, s: &str| {
        let path = dir.join(name);
        std::fs::write(&path, s).unwrap();
        path
    };
    TlsFiles {
        cert: write("server.pem", &p.server.0),
        key: write("server.key", &p.server.1),
        client_ca: Some(write("ca.pem", &p.ca)),
    }
}

async fn info(endpoint: Endpoint) -> Result<pb::GetServerInfoResponse, String> {
    let ch = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
    DiagnosticsServiceClient::new(ch)
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{s}"))
}

#[tokio::test]
async fn tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let tls = mtls_files(dir.path(), &p);
    let mut opts = ServeOptions::for_tests();
    opts.tls = Some(tls);
    let srv = start(opts).await;
    let url = format!("https://localhost:{}", srv.addr.port());
    let base = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&p.ca))
            .domain_name("localhost")
    };

    // With a client certificate from the trusted CA: served.
    let ok = Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(base().identity(Identity::from_pem(&p.client.0, &p.client.1)))
        .unwrap();
    assert_eq!(info(ok).await.unwrap().store_backend, "memory");
    // Without one: refused (mTLS).
    let anonymous = Endpoint::from_shared(url.clone()).unwrap().tls_config(base()).unwrap();
    assert!(
        info(anonymous).await.is_err(),
        "a client without a certificate is refused"
    );
    // Plaintext to a TLS listener: refused.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", srv.addr.port())).unwrap();
    assert!(info(plain).await.is_err());
    srv.shutdown().await;
}

/// Kubernetes rotates a mounted Secret in place: the server picks up the
/// new certificate for new connections without a restart, keeps serving
/// the ones it has, and keeps the old certificate when the new files are
/// bad.
#[tokio::test]
async fn certificates_are_reloaded_when_their_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (pki(), pki());
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, &one.server.0).unwrap();
    std::fs::write(&key, &one.server.1).unwrap();
    let mut opts = ServeOptions::for_tests();
    opts.reload_interval = std::time::Duration::from_millis(50);
    opts.tls = Some(TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: None,
    });
    let srv = start(opts).await;
    let url = format!("https://localhost:{}", srv.addr.port());
    let trusting = |ca: &str| {
        Endpoint::from_shared(url.clone())
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name("localhost"),
            )
            .unwrap()
    };
    let kept = trusting(&one.ca).connect().await.unwrap();
    let mut kept = DiagnosticsServiceClient::new(kept);
    assert!(info(trusting(&two.ca)).await.is_err());

    std::fs::write(&cert, &two.server.0).unwrap();
    std::fs::write(&key, &two.server.1).unwrap();
    let t0 = std::time::Instant::now();
    while info(trusting(&two.ca)).await.is_err() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "the new certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        info(trusting(&one.ca)).await.is_err(),
        "new connections get the new certificate"
    );
    kept.get_server_info(pb::GetServerInfoRequest {})
        .await
        .expect("an established connection stays up");

    // A bad key: the previous certificate stays in use.
    std::fs::write(&key, "not a key").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(info(trusting(&two.ca)).await.is_ok());
    srv.shutdown().await;
}

#[tokio::test]
async fn bad_tls_files_are_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, &p.server.0).unwrap();
    std::fs::write(&key, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let mut opts = ServeOptions::for_tests();
    opts.tls = Some(TlsFiles {
        cert,
        key: key.clone(),
        client_ca: None,
    });
    let e = portcullis::server::start(opts)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("--tls-key") && e.contains(&key.display().to_string()), "{e}");
    assert!(e.contains("PRIVATE KEY"), "{e}");
}

/// Under mTLS the certificate's subject is recorded with every audited
/// change and refusal. Without API keys it is the caller itself, which is
/// what lets such a server listen beyond loopback; with keys the key names
/// the actor and the certificate rides along.
#[tokio::test]
async fn the_client_certificate_names_the_actor() {
    use portcullis_client::{Client, Config};
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let tls = mtls_files(dir.path(), &p);
    let subject = "CN=client, O=acme";
    let connect = |addr: std::net::SocketAddr, token: Option<&str>| {
        Config::new(format!("https://localhost:{}", addr.port()))
            .ca_certificate(p.ca.clone().into_bytes())
            .client_identity(p.client.0.clone().into_bytes(), p.client.1.clone().into_bytes())
            .optional_token(token.map(str::to_string))
            .connect()
    };
    let trail = |c: Client, tenant: &str| {
        let tenant = tenant.to_string();
        async move {
            c.list_audit_events(pb::ListAuditEventsRequest {
                tenant,
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .events
            .into_iter()
            .map(|e| (e.actor, e.certificate, e.rpc))
            .collect::<Vec<_>>()
        }
    };

    // No keys, not loopback: refused without mTLS, served with it.
    let mut opts = ServeOptions::for_tests();
    opts.listen = "0.0.0.0:0".parse().unwrap();
    let e = portcullis::server::start(opts)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("--client-ca"), "{e}");
    let mut opts = ServeOptions::for_tests();
    opts.listen = "0.0.0.0:0".parse().unwrap();
    opts.tls = Some(tls.clone());
    let srv = start(opts).await;
    let c = connect(srv.addr, None).await.unwrap();
    c.apply_tenant(pb::ApplyTenantRequest {
        tenant: Some(tenant("acme")),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(
        trail(c, "acme").await,
        [(subject.to_string(), subject.to_string(), "ApplyTenant".to_string())]
    );
    srv.shutdown().await;

    // With keys: the key is the actor, the certificate is kept beside it,
    // and a refused call records the certificate too.
    let mut opts = ServeOptions::for_tests();
    opts.tls = Some(tls);
    opts.keys = portcullis::api::auth::Keys::parse(&format!(
        "keys:\n  - name: ops\n    sha256: {}\n    scopes: [admin, audit]\n",
        portcullis::api::auth::Keys::hash("ops-secret")
    ))
    .unwrap();
    let srv = start(opts).await;
    let c = connect(srv.addr, Some("ops-secret")).await.unwrap();
    c.apply_tenant(pb::ApplyTenantRequest {
        tenant: Some(tenant("acme")),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(
        trail(c.clone(), "acme").await,
        [("ops".to_string(), subject.to_string(), "ApplyTenant".to_string())]
    );
    let wrong = connect(srv.addr, Some("wrong")).await.unwrap();
    assert!(
        wrong
            .apply_tenant(pb::ApplyTenantRequest {
                tenant: Some(tenant("acme")),
                expected_revision: String::new(),
            })
            .await
            .is_err()
    );
    let mut refused = Vec::new();
    for _ in 0..100 {
        let r = c
            .list_audit_events(pb::ListAuditEventsRequest {
                tenant: String::new(),
                refusals: true,
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .events;
        if !r.is_empty() {
            refused = r;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        (refused[0].actor.as_str(), refused[0].certificate.as_str()),
        ("unauthenticated", subject)
    );
    srv.shutdown().await;
}
