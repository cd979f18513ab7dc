//! How soon a change written through one replica is visible through
//! another: two replicas on one shared store, 1,000 writes through the
//! first, each timed from its acknowledgement until the second replica's
//! index has caught up to its revision (and a check there sees it).
//!
//! `cargo bench --bench replication`

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::server::ServeOptions;
use portcullis::store::{Backend, Store, memory::MemoryStore};
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::admin_service_client::AdminServiceClient;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let opts = || ServeOptions {
            backend: Backend::Shared(store.clone()),
            metrics_listen: None,
            ..ServeOptions::for_tests()
        };
        let a = portcullis::server::start(opts()).await.expect("replica a");
        let b = portcullis::server::start(opts()).await.expect("replica b");
        a.ready().await;
        b.ready().await;
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", a.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut admin = AdminServiceClient::new(ch);
        admin
            .apply_tenant(pb::ApplyTenantRequest {
                tenant: Some(pb::Tenant {
                    id: "acme".into(),
                    ..Default::default()
                }),
                expected_revision: String::new(),
            })
            .await
            .expect("tenant");
        admin
            .apply_vault(pb::ApplyVaultRequest {
                vault: Some(pb::Vault {
                    tenant: "acme".into(),
                    name: "docs".into(),
                    ..Default::default()
                }),
                expected_revision: String::new(),
            })
            .await
            .expect("vault");
        let b_index = b.state.index().expect("index").clone();
        let mut lat = Vec::with_capacity(1000);
        for i in 0..1000 {
            let w = admin
                .write_bindings(pb::WriteBindingsRequest {
                    tenant: "acme".into(),
                    vault: "docs".into(),
                    upserts: vec![pb::Binding {
                        id: format!("b{i}"),
                        subject: format!("user:u{i}"),
                        role: "reader".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .await
                .expect("write");
            let acked = Instant::now();
            let rev = portcullis::repo::parse_token("written_at", &w.into_inner().written_at).expect("token");
            b_index
                .wait_for(rev, Duration::from_secs(5))
                .await
                .expect("replica b catches up");
            lat.push(acked.elapsed());
        }
        lat.sort_unstable();
        let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
        println!("write through replica a, visible through replica b (1,000 writes, shared memory store):");
        println!("  p50 {:?}  p99 {:?}  max {:?}", p(0.5), p(0.99), lat[lat.len() - 1]);
        a.shutdown().await;
        b.shutdown().await;
    });
}
