//! Several replicas on one shared store: leadership, failover, fencing,
//! jobs that run once per interval, and changes crossing replicas.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use portcullis::jobs::{Job, JobOptions};
use portcullis::server::{Running, ServeOptions};
use portcullis::store::{Backend, Store, memory::MemoryStore};
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::watch_service_client::WatchServiceClient;
use tokio_stream::StreamExt;

const TTL: Duration = Duration::from_millis(900);

fn opts(store: &Arc<dyn Store>, f: impl FnOnce(&mut JobOptions)) -> ServeOptions {
    let mut o = ServeOptions::for_tests();
    o.backend = Backend::Shared(store.clone());
    o.metrics_listen = None;
    let mut j = JobOptions {
        lease_ttl: TTL,
        purge_interval: Duration::from_secs(3600),
        compact_interval: Duration::from_secs(3600),
        usage_interval: Duration::from_secs(3600),
        verify_interval: Duration::from_secs(3600),
        ..JobOptions::default()
    };
    f(&mut j);
    o.jobs = j;
    o
}

fn leaders(rs: &[&Running]) -> Vec<usize> {
    rs.iter()
        .enumerate()
        .filter(|(_, r)| r.state.leader.is_leader.load(Ordering::SeqCst))
        .map(|(i, _)| i)
        .collect()
}

/// Samples leadership until one leader is seen, checking there is never more than one.
async fn await_single_leader(rs: &[&Running], within: Duration) -> usize {
    let start = Instant::now();
    loop {
        let l = leaders(rs);
        assert!(l.len() <= 1, "two leaders at once: {l:?}");
        if l.len() == 1 {
            return l[0];
        }
        assert!(start.elapsed() < within, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_failover_within_the_ttl() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let stall = Arc::new(AtomicBool::new(false));
    let a = start(opts(&store, |j| j.stall = Some(stall.clone()))).await;
    let b = start(opts(&store, |_| {})).await;
    let c = start(opts(&store, |_| {})).await;
    let first = await_single_leader(&[&a, &b, &c], TTL * 3).await;
    // Watch for a while: never two leaders.
    let until = Instant::now() + TTL * 2;
    while Instant::now() < until {
        assert!(leaders(&[&a, &b, &c]).len() <= 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Each replica's metrics are its own: only the leader's gauge says so.
    let gauges: Vec<i64> = [&a, &b, &c].iter().map(|r| r.metrics().leader.get()).collect();
    let mut expected = vec![0; 3];
    expected[first] = 1;
    assert_eq!(gauges, expected);
    // Stop the leader: another takes over within the TTL (it released the lease).
    let mut rs = vec![a, b, c];
    let leader = rs.remove(first);
    let stopped = Instant::now();
    leader.shutdown().await;
    let refs: Vec<&Running> = rs.iter().collect();
    await_single_leader(&refs, TTL + Duration::from_millis(500)).await;
    println!("failover after a clean stop: {:?}", stopped.elapsed());
    for r in rs {
        r.shutdown().await;
    }

    // A stalled leader (alive, but not renewing): failover once its lease expires.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = start(opts(&store, |j| j.stall = Some(stall.clone()))).await;
    await_single_leader(&[&a], TTL * 3).await;
    let b = start(opts(&store, |_| {})).await;
    tokio::time::sleep(TTL / 2).await;
    assert_eq!(leaders(&[&a, &b]), vec![0], "b waits while a renews");
    stall.store(true, Ordering::SeqCst);
    let stalled = Instant::now();
    loop {
        if b.state.leader.is_leader.load(Ordering::SeqCst) {
            break;
        }
        assert!(
            stalled.elapsed() < TTL * 2,
            "b took over within the TTL plus a renewal period"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = stalled.elapsed();
    println!("failover after a stall: {took:?}");
    assert!(b.state.leader.epoch.load(Ordering::SeqCst) > a.state.leader.epoch.load(Ordering::SeqCst));
    stall.store(false, Ordering::SeqCst);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_runs_once_per_interval_across_replicas_and_deposed_leaders_are_fenced() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let interval = Duration::from_millis(300);
    let stall = Arc::new(AtomicBool::new(false));
    let set = |j: &mut JobOptions| j.usage_interval = interval;
    let a = start(opts(&store, |j| {
        set(j);
        j.stall = Some(stall.clone());
    }))
    .await;
    let b = start(opts(&store, set)).await;
    let c = start(opts(&store, set)).await;
    let first = await_single_leader(&[&a, &b, &c], TTL * 3).await;
    let began = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Stall the first leader if it is `a`, otherwise stop it: either way the
    // lead moves, and runs continue at one per interval.
    if first == 0 {
        stall.store(true, Ordering::SeqCst);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let elapsed = began.elapsed();
    let mut runs: Vec<(std::time::SystemTime, u64, bool)> = Vec::new();
    for r in [&a, &b, &c] {
        let h = r.state.job_log.lock().unwrap();
        runs.extend(h.iter().filter(|x| x.job == Job::Usage).map(|x| (x.at, x.epoch, x.ok)));
    }
    runs.sort_by_key(|r| r.0);
    let ok: Vec<_> = runs.iter().filter(|r| r.2).collect();
    let max = (elapsed.as_millis() / interval.as_millis()) as usize + 2;
    assert!(
        ok.len() >= 5 && ok.len() <= max,
        "{} usage runs in {elapsed:?} at one per {interval:?}",
        ok.len()
    );
    for w in ok.windows(2) {
        let gap = w[1].0.duration_since(w[0].0).unwrap_or_default();
        assert!(gap + Duration::from_millis(30) >= interval, "two runs {gap:?} apart");
    }
    if first == 0 {
        // The stalled leader's job loop kept going, but nothing it claimed after
        // the takeover succeeded: its epoch is fenced.
        let new_epoch = ok.iter().map(|r| r.1).max().unwrap();
        let old_epoch = a.state.leader.epoch.load(Ordering::SeqCst);
        assert!(new_epoch > old_epoch);
        let takeover = ok.iter().find(|r| r.1 == new_epoch).unwrap().0;
        assert!(
            !ok.iter().any(|r| r.1 == old_epoch && r.0 > takeover),
            "a deposed leader's run succeeded"
        );
    }
    stall.store(false, Ordering::SeqCst);
    for r in [a, b, c] {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_replica_is_visible_through_another() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = start(opts(&store, |_| {})).await;
    let b = start(opts(&store, |_| {})).await;
    let mut wa = admin(a.addr, None).await;
    seed(&mut wa).await;
    let mut pb_ = perm(b.addr, None).await;
    for i in 0..50 {
        let w = wa
            .write_bindings(pb::WriteBindingsRequest {
                tenant: "acme".into(),
                vault: "docs".into(),
                upserts: vec![binding(&format!("b{i}"), &format!("user:u{i}"), "reader")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            is_allowed(
                &mut pb_,
                &format!("user:u{i}"),
                "documents:read",
                "document:x",
                Some(&w.written_at)
            )
            .await
        );
    }
    // Without a token it still arrives, promptly.
    let t0 = Instant::now();
    loop {
        if is_allowed(&mut pb_, "user:u49", "documents:read", "document:x", None).await {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_compact_usage_and_verify_do_their_work() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let fast = Duration::from_millis(200);
    let srv = start(opts(&store, |j| {
        j.purge_interval = fast;
        j.usage_interval = fast;
        j.verify_interval = fast;
        j.compact_interval = fast;
        j.changelog_retention = Duration::from_millis(300);
        j.verify_sample = 10;
    }))
    .await;
    let mut a = admin(srv.addr, None).await;
    let first = seed(&mut a).await;
    let mut expiring = binding("soon", "user:temp", "reader");
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 10;
    expiring.expires_at = Some(prost_types::Timestamp {
        seconds: past,
        nanos: 0,
    });
    a.write_bindings(pb::WriteBindingsRequest {
        tenant: "acme".into(),
        vault: "docs".into(),
        upserts: vec![expiring, binding("keep", "user:keep", "reader")],
        ..Default::default()
    })
    .await
    .unwrap();
    // Purge: the expired binding disappears from the store (and the changelog says so).
    let t0 = Instant::now();
    loop {
        let list = a
            .list_bindings(pb::ListBindingsRequest {
                tenant: "acme".into(),
                vault: "docs".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<String> = list.bindings.into_iter().map(|b| b.id).collect();
        if ids == ["keep"] {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "not purged: {ids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The purge is audited as the leader's job, with the binding it removed.
    let mut audit = portcullis_proto::v1::audit_service_client::AuditServiceClient::new(channel(srv.addr).await);
    let events = audit
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: "acme".into(),
            actor: "job:purge".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].name.as_str(), events[0].operation, events[0].rpc.as_str()),
        ("soon", pb::AuditOperation::Delete as i32, "purge")
    );
    assert!(events[0].before.is_some() && events[0].after.is_none());
    // Usage: counters match.
    let t = a
        .get_tenant(pb::GetTenantRequest { id: "acme".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        t.usage.unwrap(),
        pb::Usage {
            vaults: 1,
            roles: 1,
            bindings: 1
        }
    );
    // Compaction: after the retention, watching from the first revision is refused.
    let mut w = WatchServiceClient::new(channel(srv.addr).await);
    let t0 = Instant::now();
    loop {
        match w
            .watch(pb::WatchRequest {
                tenant: "acme".into(),
                vault: "docs".into(),
                after_revision: first.clone(),
            })
            .await
        {
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                assert!(
                    e.message().contains("older than the changelog retains"),
                    "{}",
                    e.message()
                );
                break;
            }
            Ok(s) => drop(s),
            Err(e) => panic!("{e}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "changelog never compacted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // From the current revision, watching still works.
    let now = a
        .get_tenant(pb::GetTenantRequest { id: "acme".into() })
        .await
        .unwrap()
        .into_inner()
        .revision;
    let mut s = w
        .watch(pb::WatchRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            after_revision: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    a.write_bindings(pb::WriteBindingsRequest {
        tenant: "acme".into(),
        vault: "docs".into(),
        upserts: vec![binding("new", "user:new", "reader")],
        ..Default::default()
    })
    .await
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(m.revision > now);
    // Verify: a write that bypasses the changelog is a divergence the job reports.
    let before = srv.metrics().index_divergence.get();
    {
        use portcullis::store::keyspace as ks;
        let mut tx = store.begin().unwrap();
        let b = portcullis::engine::model::Binding::to_role(
            "sneaky",
            &portcullis::engine::TenantId::parse("acme").unwrap(),
            Some(&portcullis::engine::VaultName::parse("docs").unwrap()),
            &portcullis::engine::Subject::parse("user:x").unwrap(),
            &portcullis::engine::RoleName::parse("reader").unwrap(),
        );
        tx.set_versionstamped_value(
            &ks::binding("acme", Some("docs"), "sneaky"),
            ks::record(&serde_json::to_vec(&b).unwrap()),
            0,
        );
        tx.commit().unwrap();
    }
    let t0 = Instant::now();
    while srv.metrics().index_divergence.get() == before {
        assert!(t0.elapsed() < Duration::from_secs(5), "divergence not detected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the stored lease is this replica's.
    let lease = portcullis::lease::current(&*store, portcullis::lease::LEASE)
        .unwrap()
        .unwrap();
    assert_eq!(lease.epoch, srv.state.leader.epoch.load(Ordering::SeqCst));
    // GetServerInfo reports the job runs, newest first.
    let info = portcullis_proto::v1::diagnostics_service_client::DiagnosticsServiceClient::new(channel(srv.addr).await)
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!info.recent_jobs.is_empty() && info.recent_jobs.len() <= 20);
    assert!(
        info.recent_jobs
            .iter()
            .any(|r| r.job == "verify" && r.ok && r.epoch == lease.epoch)
    );
    let times: Vec<_> = info.recent_jobs.iter().map(|r| r.at.unwrap().seconds).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    srv.shutdown().await;
}
