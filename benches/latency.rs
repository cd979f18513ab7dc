//! Latency over gRPC on loopback against org-10k, beside the echo
//! baseline of the same stack.
//!
//! `cargo bench --bench latency -- [--seconds N] [--tail] [--writes]`
//! (both parts when neither is named).
//!
//! - `--tail`: at concurrency 1, for `--seconds` (default 30) each: a
//!   CheckPermission (small response), the same checks with explanations (a
//!   larger response) and a LookupSubjects page of 100 (the largest), each
//!   beside an Echo whose response is the same size. Prints p50, p99,
//!   p99.9 and the maximum; the targets are p99.9 ≤ 1 ms and maximum ≤ 5 ms
//!   for checks.
//! - `--writes`: CheckPermission at concurrency 16 read-only, then while
//!   1,000 single-binding WriteBindings a second go to the same replica.
//!   Prints both check p99s and their ratio (target ≤ 1.5×), and the
//!   write-to-visible time: from sending a write to a check that asks for
//!   that write (`at_least_as_fresh`) being answered (target p99 ≤ 5 ms).

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portcullis::engine::Change;
use portcullis::server::ServeOptions;
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::admin_service_client::AdminServiceClient;
use portcullis_proto::v1::diagnostics_service_client::DiagnosticsServiceClient;
use portcullis_proto::v1::permission_service_client::PermissionServiceClient;
use prost::Message;
use support::{Figures, Org10k, measure, ms, pct};
use tonic::transport::Channel;

fn row(name: &str, f: &Figures) {
    println!(
        "{:<34} {:>9.0} {:>10} {:>10} {:>10} {:>10}",
        name,
        f.rps,
        ms(f.p50),
        ms(f.p99),
        ms(f.p999),
        ms(f.max)
    );
}

async fn checks(
    chs: &[Channel],
    qs: &Arc<Vec<pb::CheckPermissionRequest>>,
    c: usize,
    s: u64,
    explain: bool,
) -> Figures {
    let (chs, qs) = (chs.to_vec(), qs.clone());
    measure(c, s, move |i| {
        let mut client = PermissionServiceClient::new(chs[i % chs.len()].clone());
        let mut req = qs[i % qs.len()].clone();
        req.explain = explain;
        async move {
            client.check_permission(req).await.expect("check");
        }
    })
    .await
}

async fn echo(chs: &[Channel], c: usize, s: u64, bytes: usize) -> Figures {
    let chs = chs.to_vec();
    // The payload's field tag and length take a few bytes of the response.
    let payload = vec![b'x'; bytes.saturating_sub(4).max(1)];
    measure(c, s, move |i| {
        let mut client = DiagnosticsServiceClient::new(chs[i % chs.len()].clone());
        let req = pb::EchoRequest {
            payload: payload.clone(),
        };
        async move {
            client.echo(req).await.expect("echo");
        }
    })
    .await
}

async fn tail(o: &Org10k, seconds: u64) {
    let (chs, qs) = (&o.channels, &o.queries);
    let mut p = PermissionServiceClient::new(chs[0].clone());
    // Response sizes, to give each Echo the same.
    let mut small = 0;
    let mut explained = 0;
    for q in qs.iter().take(200) {
        let mut r = q.clone();
        small = small.max(p.check_permission(r.clone()).await.unwrap().into_inner().encoded_len());
        r.explain = true;
        explained = explained.max(p.check_permission(r).await.unwrap().into_inner().encoded_len());
    }
    let (tenant, vault, q) = (o.ds.tenant.to_string(), o.ds.vault.to_string(), qs.clone());
    let lookup = move |i: usize| pb::LookupSubjectsRequest {
        tenant: tenant.clone(),
        vault: vault.clone(),
        action: q[i].action.clone(),
        resource: q[i].resource.clone(),
        page_size: 100,
        ..Default::default()
    };
    let page = p.lookup_subjects(lookup(0)).await.unwrap().into_inner().encoded_len();
    println!(
        "\nconcurrency 1, {seconds}s each (response bytes: check {small}, explained up to {explained}, lookup page {page})"
    );
    println!(
        "{:<34} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "", "req/s", "p50", "p99", "p99.9", "max"
    );
    row("CheckPermission", &checks(chs, qs, 1, seconds, false).await);
    row(&format!("Echo {small} B"), &echo(chs, 1, seconds, small).await);
    row("CheckPermission, explain", &checks(chs, qs, 1, seconds, true).await);
    row(&format!("Echo {explained} B"), &echo(chs, 1, seconds, explained).await);
    let chs2 = chs.clone();
    let lookup2 = lookup.clone();
    let lookups = measure(1, seconds, move |i| {
        let mut client = PermissionServiceClient::new(chs2[i % chs2.len()].clone());
        let req = lookup2(i % 1000);
        async move {
            client.lookup_subjects(req).await.expect("lookup");
        }
    })
    .await;
    row("LookupSubjects, page of 100", &lookups);
    row(&format!("Echo {page} B"), &echo(chs, 1, seconds, page).await);
}

async fn under_writes(o: &Org10k, seconds: u64) {
    let (chs, qs) = (&o.channels, &o.queries);
    let read_only = checks(chs, qs, 16, seconds, false).await;
    // Writes of one binding each, copies of the dataset's with new ids.
    let Some(template) = o.ds.changes.iter().find_map(|c| match c {
        Change::PutBinding(b) => Some(portcullis::api::convert::binding_to(b)),
        _ => None,
    }) else {
        panic!("the dataset has bindings")
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tenant, vault) = (o.ds.tenant.to_string(), o.ds.vault.to_string());
    let writer = {
        let (ch, stop) = (chs[0].clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let inflight = Arc::new(tokio::sync::Semaphore::new(64));
            let mut tasks = Vec::new();
            let started = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break;
                };
                let (ch, mut b) = (ch.clone(), template.clone());
                b.id = format!("bench-w{i}");
                // Spread over the dataset's users, as real grants are.
                b.subject = format!("user:u{}", i % 10_000);
                let (tenant, vault) = (tenant.clone(), vault.clone());
                i += 1;
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    let t = Instant::now();
                    let written = AdminServiceClient::new(ch.clone())
                        .write_bindings(pb::WriteBindingsRequest {
                            tenant: tenant.clone(),
                            vault: vault.clone(),
                            upserts: vec![b],
                            ..Default::default()
                        })
                        .await
                        .expect("write")
                        .into_inner()
                        .written_at;
                    // Visible: a check asking for this write is answered.
                    PermissionServiceClient::new(ch)
                        .check_permission(pb::CheckPermissionRequest {
                            tenant,
                            vault,
                            subject: "user:nobody".into(),
                            action: "documents:read".into(),
                            resource: "document:x".into(),
                            consistency: Some(pb::Consistency {
                                requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(written)),
                            }),
                            ..Default::default()
                        })
                        .await
                        .expect("fresh check");
                    t.elapsed()
                }));
            }
            let mut visible = Vec::new();
            for t in tasks {
                visible.push(t.await.expect("writer"));
            }
            (visible, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = checks(chs, qs, 16, seconds, false).await;
    stop.store(true, Ordering::Relaxed);
    let (mut visible, took) = writer.await.expect("writer");
    let retries: String = o
        .srv
        .metrics()
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("portcullis_store_retries_total") || l.starts_with("portcullis_store_transactions_total")
        })
        .collect::<Vec<_>>()
        .join("; ");
    println!("store: {retries}");
    visible.sort_unstable();
    println!("\nCheckPermission at concurrency 16, {seconds}s each, read-only and during single-binding writes");
    println!(
        "{:<34} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "", "checks/s", "p50", "p99", "p99.9", "max"
    );
    row("read-only", &read_only);
    row("during writes", &during);
    println!(
        "writes: {} at {:.0}/s; check p99 during writes / read-only: {:.2}x (target <= 1.5x); write-to-visible p50 {}, p99 {} (target <= 5 ms), max {}",
        visible.len(),
        visible.len() as f64 / took.as_secs_f64(),
        during.p99.as_secs_f64() / read_only.p99.as_secs_f64(),
        ms(pct(&visible, 0.5)),
        ms(pct(&visible, 0.99)),
        ms(*visible.last().unwrap_or(&Duration::ZERO))
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: Option<u64> = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok());
    let (want_tail, want_writes) = match (args.iter().any(|a| a == "--tail"), args.iter().any(|a| a == "--writes")) {
        (false, false) => (true, true),
        x => x,
    };
    let rt = support::runtime();
    rt.block_on(async move {
        let o = Org10k::serve(ServeOptions {
            metrics_listen: None,
            ..ServeOptions::for_tests()
        })
        .await;
        if want_tail {
            tail(&o, seconds.unwrap_or(30)).await;
        }
        if want_writes {
            under_writes(&o, seconds.unwrap_or(10)).await;
        }
        o.srv.shutdown().await;
    });
}
