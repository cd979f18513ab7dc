//! What the gRPC benchmarks share: loading a dataset through the
//! repository, and a closed-loop load generator with its percentiles.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::engine::Change;
use portcullis::engine::dataset::{Dataset, Rng, Shape};
use portcullis::engine::model::Source;
use portcullis::repo::Repo;
use portcullis::server::{Running, ServeOptions};
use portcullis_proto::v1 as pb;
use tonic::transport::Channel;

/// The benchmarks' runtime: two workers, as the machine has two cores,
/// shared by the server and the load generator.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A server loaded with org-10k, connections to it, and 100,000 checks
/// drawn from the dataset.
pub struct Org10k {
    pub srv: Running,
    pub ds: Arc<Dataset>,
    pub channels: Vec<Channel>,
    pub queries: Arc<Vec<pb::CheckPermissionRequest>>,
}

impl Org10k {
    pub async fn serve(opts: ServeOptions) -> Org10k {
        let ds = Arc::new(Dataset::generate(Shape::ORG_10K, 42));
        let srv = portcullis::server::start(opts).await.expect("server");
        srv.ready().await;
        let t0 = Instant::now();
        let repo = srv.state.repo.clone();
        let d2 = ds.clone();
        tokio::task::spawn_blocking(move || load(&repo, &d2))
            .await
            .expect("load");
        // Wait for the index to catch up with the load.
        let index = srv.state.index().expect("index").clone();
        let rev = srv.state.repo.current_version().expect("version");
        index.wait_for(rev, Duration::from_secs(120)).await.expect("caught up");
        println!(
            "loaded org-10k through the repository in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        // Several connections, as a client pool would have.
        let mut channels: Vec<Channel> = Vec::new();
        for _ in 0..4 {
            channels.push(
                tonic::transport::Endpoint::from_shared(format!("http://{}", srv.addr))
                    .expect("endpoint")
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .expect("connect"),
            );
        }
        let mut rng = Rng::new(9);
        let queries: Arc<Vec<pb::CheckPermissionRequest>> = Arc::new(
            (0..100_000)
                .map(|_| {
                    let q = ds.query(&mut rng);
                    pb::CheckPermissionRequest {
                        tenant: ds.tenant.to_string(),
                        vault: ds.vault.to_string(),
                        subject: q.subject,
                        action: q.action,
                        resource: q.resource,
                        ..Default::default()
                    }
                })
                .collect(),
        );
        Org10k {
            srv,
            ds,
            channels,
            queries,
        }
    }
}

/// Loads the dataset through the repository, as the Admin API would, in
/// batches of the API's size.
pub fn load(repo: &Repo, ds: &Dataset) {
    let mut bindings = Vec::new();
    let mut memberships = Vec::new();
    for c in &ds.changes {
        match c {
            Change::PutTenant(t) => {
                repo.apply_tenant(
                    &portcullis::audit::Actor::new("bench", "apply_tenant"),
                    t.clone(),
                    None,
                    None,
                )
                .expect("tenant");
            }
            Change::PutVault(v) => {
                repo.apply_vault(&portcullis::audit::Actor::new("bench", "apply_vault"), v.clone(), None)
                    .expect("vault");
            }
            Change::PutRole(r) => {
                repo.apply_role(&portcullis::audit::Actor::new("bench", "apply_role"), r.clone(), None)
                    .expect("role");
            }
            Change::PutBinding(b) => bindings.push(b.clone()),
            Change::PutMembership(m) => memberships.push(m.clone()),
            _ => {}
        }
    }
    let mut by_scope: std::collections::BTreeMap<(String, Option<String>), Vec<_>> = Default::default();
    for m in memberships {
        by_scope
            .entry((m.tenant.to_string(), m.vault.as_ref().map(|v| v.to_string())))
            .or_default()
            .push(m);
    }
    for ((_, _), ms) in by_scope {
        for chunk in ms.chunks(1000) {
            let (t, v) = (chunk[0].tenant.clone(), chunk[0].vault.clone());
            repo.write_memberships(
                &portcullis::audit::Actor::new("bench", "write_memberships"),
                &t,
                v.as_ref(),
                chunk,
                &[],
                None::<Source>,
            )
            .expect("memberships");
        }
    }
    for chunk in bindings.chunks(1000) {
        repo.write_bindings(
            &portcullis::audit::Actor::new("bench", "write_bindings"),
            &ds.tenant,
            Some(&ds.vault),
            chunk,
            &[],
            None,
        )
        .expect("bindings");
    }
}

pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

pub struct Figures {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    pub n: usize,
}

pub async fn measure<F, Fut>(concurrency: usize, seconds: u64, make: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w * 1_000_003;
            while Instant::now() < deadline {
                let t = Instant::now();
                make(i).await;
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Figures {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(&all, 0.5),
        p99: pct(&all, 0.99),
        p999: pct(&all, 0.999),
        max: *all.last().unwrap_or(&Duration::ZERO),
        n: all.len(),
    }
}
