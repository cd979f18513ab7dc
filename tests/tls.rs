//! TLS and mutual TLS on the gRPC listener.

mod common;

use common::*;
use portcullis::server::{ServeOptions, TlsFiles};
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::diagnostics_service_client::DiagnosticsServiceClient;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
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
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca,
        server: leaf("localhost"),
        client: leaf("client"),
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
    let write = |name: &str, s: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, s).unwrap();
        path
    };
    let ca = write("ca.pem", &p.ca);
    let tls = TlsFiles {
        cert: write("server.pem", &p.server.0),
        key: write("server.key", &p.server.1),
        client_ca: Some(ca),
    };
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
