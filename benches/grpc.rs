//! Load generator: CheckPermission over gRPC on loopback against the
//! org-10k dataset, at concurrency 1, 16 and 64, and in the same run a
//! trivial unary RPC of the same size (DiagnosticsService.Echo) through the
//! same stack. Server and load generator share one 2-worker runtime, as they
//! share the machine's cores.
//!
//! `cargo bench --bench grpc` (`-- --seconds N` per measurement, default 5).
//!
//! Then the isolation of expensive reads: CheckPermission (and Echo, the
//! baseline) at concurrency 16 while 200 concurrent clients flood
//! LookupSubjects on the same vault, which run on the bounded pool and are
//! shed with RESOURCE_EXHAUSTED beyond its queue. `-- --flood-only` runs
//! just that part.

use std::sync::Arc;

use std::time::Duration;

use portcullis::server::ServeOptions;
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::diagnostics_service_client::DiagnosticsServiceClient;
use portcullis_proto::v1::permission_service_client::PermissionServiceClient;
use prost::Message;
use tonic::transport::Channel;

/// The server binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;
use support::{Org10k, measure, ms};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rt = support::runtime();
    rt.block_on(async move {
        let Org10k {
            srv,
            ds,
            channels,
            queries,
        } = Org10k::serve(ServeOptions {
            metrics_listen: None,
            ..ServeOptions::for_tests()
        })
        .await;
        let payload = vec![b'x'; queries[0].encoded_len()];
        println!(
            "CheckPermission request {} bytes, Echo payload {} bytes; {seconds}s per measurement",
            queries[0].encoded_len(),
            payload.len()
        );
        println!(
            "{:<12} {:>9} {:>10} {:>10} {:>10} {:>10}   {:>9} {:>10} {:>10} {:>10} {:>10}   {:>6}",
            "concurrency",
            "check/s",
            "p50",
            "p99",
            "p99.9",
            "max",
            "echo/s",
            "p50",
            "p99",
            "p99.9",
            "max",
            "ratio"
        );
        if args.iter().any(|a| a == "--decision-logs") {
            decision_logs(&queries, seconds, &channels).await;
            srv.shutdown().await;
            return;
        }
        let flood_only = args.iter().any(|a| a == "--flood-only");
        for c in [1usize, 16, 64].into_iter().filter(|_| !flood_only) {
            let (chs, qs) = (channels.clone(), queries.clone());
            let check = measure(c, seconds, move |i| {
                let mut client = PermissionServiceClient::new(chs[i % chs.len()].clone());
                let req = qs[i % qs.len()].clone();
                async move {
                    client.check_permission(req).await.expect("check");
                }
            })
            .await;
            let (chs, p) = (channels.clone(), payload.clone());
            let echo = measure(c, seconds, move |i| {
                let mut client = DiagnosticsServiceClient::new(chs[i % chs.len()].clone());
                let req = pb::EchoRequest { payload: p.clone() };
                async move {
                    client.echo(req).await.expect("echo");
                }
            })
            .await;
            println!(
                "{:<12} {:>9.0} {:>10} {:>10} {:>10} {:>10}   {:>9.0} {:>10} {:>10} {:>10} {:>10}   {:>5.0}%",
                c,
                check.rps,
                ms(check.p50),
                ms(check.p99),
                ms(check.p999),
                ms(check.max),
                echo.rps,
                ms(echo.p50),
                ms(echo.p99),
                ms(echo.p999),
                ms(echo.max),
                check.rps * 100.0 / echo.rps
            );
        }
        // A flood of LookupSubjects (each scans the vault) beside the checks.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (done, shed) = (
            Arc::new(std::sync::atomic::AtomicU64::new(0)),
            Arc::new(std::sync::atomic::AtomicU64::new(0)),
        );
        let mut flood = Vec::new();
        for i in 0..200 {
            let (ch, stop, done, shed) = (channels[i % channels.len()].clone(), stop.clone(), done.clone(), shed.clone());
            let req = pb::LookupSubjectsRequest {
                tenant: ds.tenant.to_string(),
                vault: ds.vault.to_string(),
                action: queries[i].action.clone(),
                resource: queries[i].resource.clone(),
                page_size: 1000,
                ..Default::default()
            };
            flood.push(tokio::spawn(async move {
                let mut client = PermissionServiceClient::new(ch);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match client.lookup_subjects(req.clone()).await {
                        Ok(_) => done.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                            shed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            0
                        }
                        Err(e) => panic!("lookup: {e}"),
                    };
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (chs, qs) = (channels.clone(), queries.clone());
        let check = measure(16, seconds, move |i| {
            let mut client = PermissionServiceClient::new(chs[i % chs.len()].clone());
            let req = qs[i % qs.len()].clone();
            async move {
                client.check_permission(req).await.expect("check");
            }
        })
        .await;
        let (chs, p) = (channels.clone(), payload.clone());
        let echo = measure(16, seconds, move |i| {
            let mut client = DiagnosticsServiceClient::new(chs[i % chs.len()].clone());
            let req = pb::EchoRequest { payload: p.clone() };
            async move {
                client.echo(req).await.expect("echo");
            }
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for f in flood {
            let _ = f.await;
        }
        println!(
            "\nduring a flood of 200 concurrent LookupSubjects ({} answered, {} shed with RESOURCE_EXHAUSTED), concurrency 16:",
            done.load(std::sync::atomic::Ordering::Relaxed),
            shed.load(std::sync::atomic::Ordering::Relaxed)
        );
        println!(
            "check/s {:.0}, check p50 {}, check p99 {}   echo/s {:.0}, echo p50 {}, echo p99 {}   ratio {:.0}%",
            check.rps,
            ms(check.p50),
            ms(check.p99),
            echo.rps,
            ms(echo.p50),
            ms(echo.p99),
            check.rps * 100.0 / echo.rps
        );
        srv.shutdown().await;
    });
}

/// CheckPermission at concurrency 16 with decision logs off (the server
/// above) and with every decision logged to a file (a second server with
/// the same data), in five back-to-back pairs so drift hits both.
async fn decision_logs(queries: &Arc<Vec<pb::CheckPermissionRequest>>, seconds: u64, off: &[Channel]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("decisions.log");
    let Org10k {
        srv: logged,
        channels: on,
        ..
    } = Org10k::serve(ServeOptions {
        metrics_listen: None,
        decision_log: portcullis::decisions::DecisionLogOptions {
            sink: portcullis::decisions::Sink::File(path.clone()),
            sample_allowed: 1.0,
            sample_denied: 1.0,
            max_bytes: u64::MAX,
            ..Default::default()
        },
        ..ServeOptions::for_tests()
    })
    .await;
    let run = |chs: Vec<Channel>| {
        let qs = queries.clone();
        measure(16, seconds, move |i| {
            let mut client = PermissionServiceClient::new(chs[i % chs.len()].clone());
            let req = qs[i % qs.len()].clone();
            async move {
                client.check_permission(req).await.expect("check");
            }
        })
    };
    // Each pair runs back to back, so the ratio of a pair sees one state of
    // the (shared, drifting) machine; the median pair ratio is the figure.
    let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let off = run(off.to_vec()).await.rps;
        let on = run(on.clone()).await.rps;
        ratios.push(on / off);
        a.push(off);
        b.push(on);
    }
    for v in [&mut a, &mut b, &mut ratios] {
        v.sort_by(f64::total_cmp);
    }
    let lines = std::fs::read_to_string(&path).map(|t| t.lines().count()).unwrap_or(0);
    println!(
        "\ndecision logs, concurrency 16, 5 pairs of {seconds}s runs: off median {:.0} checks/s, every decision logged to a file median {:.0} checks/s; logged/off per pair: median {:.0}% (range {:.0}-{:.0}%); {} lines written, {} dropped",
        a[2],
        b[2],
        ratios[2] * 100.0,
        ratios[0] * 100.0,
        ratios[4] * 100.0,
        lines,
        logged.state.metrics.decision_log_dropped.get()
    );
    logged.shutdown().await;
}
