//! What Watch streams cost in memory: 1,000 writes of ~8 KB (8 MB of
//! changes) land in a vault, then 100 streams watch it from before the
//! first, each reading all 8 MB. Prints the process's resident memory with
//! the data loaded and no stream (the baseline), at its peak while the
//! streams run, and after they are closed. Targets: the streams add at most
//! 100 MB, and memory returns to within 10% of the baseline.
//!
//! `cargo bench --bench watch_memory`

use std::time::{Duration, Instant};

use portcullis::server::ServeOptions;
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::admin_service_client::AdminServiceClient;
use portcullis_proto::v1::watch_service_client::WatchServiceClient;

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let srv = portcullis::server::start(ServeOptions {
            metrics_listen: None,
            ..ServeOptions::for_tests()
        })
        .await
        .expect("server");
        srv.ready().await;
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", srv.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut a = AdminServiceClient::new(ch.clone());
        a.apply_tenant(pb::ApplyTenantRequest {
            tenant: Some(pb::Tenant {
                id: "acme".into(),
                ..Default::default()
            }),
            expected_revision: String::new(),
        })
        .await
        .unwrap();
        let w = a
            .apply_vault(pb::ApplyVaultRequest {
                vault: Some(pb::Vault {
                    tenant: "acme".into(),
                    name: "docs".into(),
                    ..Default::default()
                }),
                expected_revision: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        for i in 0..1000 {
            let mut b = pb::Binding {
                id: format!("b{i}"),
                subject: "user:w".into(),
                role: "reader".into(),
                ..Default::default()
            };
            for k in 0..8 {
                b.labels.insert(format!("padding-{k}"), "p".repeat(1000));
            }
            a.write_bindings(pb::WriteBindingsRequest {
                tenant: "acme".into(),
                vault: "docs".into(),
                upserts: vec![b],
                ..Default::default()
            })
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let baseline = rss_mb();
        let t0 = Instant::now();
        let mut streams = Vec::new();
        for _ in 0..100 {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", srv.addr))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut s = WatchServiceClient::new(ch)
                .watch(pb::WatchRequest {
                    tenant: "acme".into(),
                    vault: "docs".into(),
                    after_revision: w.revision.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            streams.push(tokio::spawn(async move {
                let mut n = 0usize;
                while let Some(Ok(m)) = tokio_stream::StreamExt::next(&mut s).await {
                    n += m.changes.len();
                    if n >= 1000 {
                        break;
                    }
                }
                n
            }));
        }
        let peak = std::sync::Arc::new(std::sync::Mutex::new(rss_mb()));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let now = rss_mb();
                    let mut p = peak.lock().unwrap();
                    *p = p.max(now);
                }
            })
        };
        let mut received = 0;
        for s in streams {
            received += s.await.unwrap();
        }
        let took = t0.elapsed();
        sampler.abort();
        let peak = *peak.lock().unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_mb();
        println!("100 Watch streams each reading 1,000 changes of ~8 KB: {received} changes delivered in {took:.1?}");
        println!(
            "RSS baseline {baseline:.0} MB, peak {peak:.0} MB (+{:.0} MB), after the streams closed {after:.0} MB ({:+.0}% of baseline)",
            peak - baseline,
            (after - baseline) * 100.0 / baseline
        );
        srv.shutdown().await;
    });
}
