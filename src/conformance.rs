//! One conformance suite for every store backend (each test takes a fresh
//! store): the store's contract, and the leases and changelog built on it.
//! Test-only; it sits above `store` because it exercises the layers on top.

use std::sync::Arc;

use crate::store::*;

type Make<'a> = dyn Fn() -> Arc<dyn Store> + 'a;

fn set(store: &dyn Store, k: &[u8], v: &[u8]) -> u64 {
    let mut tx = store.begin().unwrap();
    tx.set(k, v);
    tx.commit().unwrap()
}

fn get(store: &dyn Store, k: &[u8]) -> Option<Vec<u8>> {
    store.begin().unwrap().get(k).unwrap()
}

pub fn read_write_and_versions(make: &Make<'_>) {
    let s = make();
    let v1 = set(&*s, b"a", b"1");
    let v2 = set(&*s, b"b", b"2");
    assert!(v2 > v1, "commit versions increase");
    assert_eq!(get(&*s, b"a").as_deref(), Some(&b"1"[..]));
    let mut tx = s.begin().unwrap();
    assert!(tx.read_version().unwrap() >= v2);
    tx.set(b"a", b"one");
    assert_eq!(
        tx.get(b"a").unwrap().as_deref(),
        Some(&b"one"[..]),
        "reads its own writes"
    );
    tx.clear(b"b");
    assert_eq!(tx.get(b"b").unwrap(), None);
    tx.commit().unwrap();
    assert_eq!(get(&*s, b"a").as_deref(), Some(&b"one"[..]));
    assert_eq!(get(&*s, b"b"), None);
    // A read-only transaction commits at its read version.
    let mut ro = s.begin().unwrap();
    let rv = ro.read_version().unwrap();
    let _ = ro.get(b"a").unwrap();
    assert_eq!(ro.commit().unwrap(), rv);
}

pub fn conflicts(make: &Make<'_>) {
    let s = make();
    set(&*s, b"k", b"0");
    let mut t1 = s.begin().unwrap();
    assert_eq!(t1.get(b"k").unwrap().as_deref(), Some(&b"0"[..]));
    set(&*s, b"k", b"1");
    t1.set(b"other", b"x");
    assert_eq!(
        t1.commit().unwrap_err(),
        StoreError::Conflict,
        "read overwritten since begin"
    );

    // Range reads conflict with inserts into the range.
    let mut t2 = s.begin().unwrap();
    let _ = t2.range(b"r/", b"r0", RangeOpts::default()).unwrap();
    set(&*s, b"r/x", b"1");
    t2.set(b"y", b"1");
    assert_eq!(t2.commit().unwrap_err(), StoreError::Conflict);

    // Blind writes to the same key do not conflict.
    let mut a = s.begin().unwrap();
    let mut b = s.begin().unwrap();
    a.set(b"blind", b"a");
    b.set(b"blind", b"b");
    a.commit().unwrap();
    b.commit().unwrap();
    assert_eq!(get(&*s, b"blind").as_deref(), Some(&b"b"[..]));

    // Snapshot: a transaction keeps seeing what it began with.
    let mut t3 = s.begin().unwrap();
    set(&*s, b"snap", b"new");
    assert_eq!(t3.get_snapshot(b"snap").unwrap(), None);
}

pub fn ranges_and_clears(make: &Make<'_>) {
    let s = make();
    let mut tx = s.begin().unwrap();
    for i in 0..20u8 {
        tx.set(&[b'p', i], &[i]);
    }
    tx.set(b"q", b"outside");
    tx.commit().unwrap();
    let mut tx = s.begin().unwrap();
    let all = tx.range(b"p", b"q", RangeOpts::default()).unwrap();
    assert_eq!(all.len(), 20);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ordered");
    let first = tx.range(b"p", b"q", RangeOpts::limit(3)).unwrap();
    assert_eq!(first.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [0, 1, 2]);
    let last = tx
        .range(
            b"p",
            b"q",
            RangeOpts {
                limit: 2,
                reverse: true,
                snapshot: false,
            },
        )
        .unwrap();
    assert_eq!(last.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [19, 18]);
    // Clear a sub-range, with uncommitted writes seen in the same transaction.
    tx.clear_range(&[b'p', 5], &[b'p', 15]).unwrap();
    tx.set(&[b'p', 7], b"back");
    let mid = tx.range(&[b'p', 4], &[b'p', 16], RangeOpts::default()).unwrap();
    assert_eq!(mid.iter().map(|(k, _)| k[1]).collect::<Vec<_>>(), [4, 7, 15]);
    tx.commit().unwrap();
    let mut tx = s.begin().unwrap();
    assert_eq!(tx.range(b"p", b"q", RangeOpts::default()).unwrap().len(), 11);
    assert_eq!(tx.get(b"q").unwrap().as_deref(), Some(&b"outside"[..]));
}

pub fn atomic_adds_and_versionstamps(make: &Make<'_>) {
    let s = make();
    let mut versions = Vec::new();
    for i in 0..5 {
        let mut tx = s.begin().unwrap();
        tx.atomic_add(b"counter", 2);
        let (key, off) = tuple::Key::new().str("log").incomplete_versionstamp();
        tx.set_versionstamped_key(key, off, &[i]);
        let mut value = vec![0xff; 10];
        value.extend_from_slice(b"rest");
        tx.set_versionstamped_value(b"stamped", value, 0);
        versions.push(tx.commit().unwrap());
    }
    let mut tx = s.begin().unwrap();
    let c = tx.get(b"counter").unwrap().unwrap();
    assert_eq!(i64::from_le_bytes(c.try_into().unwrap()), 10);
    let (b, e) = tuple::prefix_range(&tuple::Key::new().str("log").into_vec());
    let log = tx.range(&b, &e, RangeOpts::default()).unwrap();
    assert_eq!(log.len(), 5);
    for ((k, v), version) in log.iter().zip(&versions) {
        match &tuple::decode(k).unwrap()[1] {
            tuple::Elem::Versionstamp(vs) => assert_eq!(tuple::versionstamp_version(vs), *version),
            other => panic!("{other:?}"),
        }
        assert_eq!(v.len(), 1);
    }
    assert_eq!(
        log.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4],
        "versionstamps order commits"
    );
    let stamped = tx.get(b"stamped").unwrap().unwrap();
    assert_eq!(u64::from_be_bytes(stamped[..8].try_into().unwrap()), versions[4]);
    assert_eq!(&stamped[10..], b"rest");
}

pub fn retry_loop_serializes_read_modify_write(make: &Make<'_>) {
    let s = make();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    run(&*s, &StoreMetrics::default(), |tx| {
                        let n = tx
                            .get(b"n")?
                            .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
                            .unwrap_or(0);
                        tx.set(b"n", &(n + 1).to_be_bytes());
                        Ok::<_, StoreError>(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n = get(&*s, b"n").unwrap();
    assert_eq!(u64::from_be_bytes(n.try_into().unwrap()), 100, "no lost update");
}

pub fn subscribe_sees_commits(make: &Make<'_>) {
    let s = make();
    let rx = s.subscribe();
    let v = set(&*s, b"x", b"1");
    assert!(*rx.borrow() >= v);
}

pub fn leases(make: &Make<'_>) {
    use crate::lease::{acquire, fence, release};
    let s = make();
    let ttl = std::time::Duration::from_secs(10);
    let m = StoreMetrics::default();
    assert_eq!(acquire(&*s, &m, "t", "a", ttl, 1_000).unwrap(), Some(1));
    assert_eq!(acquire(&*s, &m, "t", "b", ttl, 2_000).unwrap(), None);
    assert_eq!(acquire(&*s, &m, "t", "b", ttl, 11_001).unwrap(), Some(2));
    let mut tx = s.begin().unwrap();
    assert!(fence(&mut *tx, "t", 1).is_err());
    assert!(fence(&mut *tx, "t", 2).is_ok());
    release(&*s, &m, "t", "b").unwrap();
    assert_eq!(acquire(&*s, &m, "t", "a", ttl, 11_002).unwrap(), Some(3));
}

pub fn changelog_order_and_resumption(make: &Make<'_>) {
    use crate::engine::TenantId;
    use crate::engine::model::{Change, Tenant};
    let repo = crate::repo::Repo::new(make());
    let mut revisions = Vec::new();
    for i in 0..5 {
        let t = Tenant::new(TenantId::parse(&format!("t{i}")).unwrap());
        revisions.push(
            repo.apply_tenant(&crate::audit::Actor::new("conformance", "ApplyTenant"), t, None, None)
                .unwrap()
                .revision,
        );
    }
    assert!(revisions.windows(2).all(|w| w[0] < w[1]));
    let (all, upto) = repo.read_feed(0, 0).unwrap();
    assert_eq!(all.iter().map(|e| e.version).collect::<Vec<_>>(), revisions);
    assert!(upto >= revisions[4]);
    let (rest, _) = repo.read_feed(revisions[1], 0).unwrap();
    assert_eq!(rest.iter().map(|e| e.version).collect::<Vec<_>>(), revisions[2..]);
    assert!(matches!(&rest[0].changes[0], Change::PutTenant(t) if t.id.as_str() == "t2"));
    let (page, upto) = repo.read_feed(0, 2).unwrap();
    assert_eq!(page.len(), 2);
    let (next, _) = repo.read_feed(upto, 0).unwrap();
    assert!(next.iter().any(|e| e.version == revisions[2]), "resumes without a gap");
    let (log, _) = repo.read_log(&TenantId::parse("t3").unwrap(), None, 0, 0).unwrap();
    assert_eq!(
        log.iter().map(|e| e.version).collect::<Vec<_>>(),
        [revisions[3]],
        "per-scope log"
    );
}

/// The audit trail through the store trait: one event per write in the
/// write's transaction, concurrent writers to one tenant chained in one
/// order, and an edited stored event found by verification.
pub fn audit_chain(make: &Make<'_>) {
    use crate::audit::{Actor, Operation};
    use crate::engine::TenantId;
    use crate::engine::model::Tenant;
    use crate::repo::AuditQuery;
    let repo = Arc::new(crate::repo::Repo::new(make()));
    let acme = TenantId::parse("acme").unwrap();
    let admin = Actor::new("admin", "ApplyTenant");
    repo.apply_tenant(&admin, Tenant::new(acme.clone()), None, None)
        .unwrap();
    // Concurrent writers to one tenant: their events form one chain.
    std::thread::scope(|s| {
        for w in 0..4 {
            let repo = repo.clone();
            s.spawn(move || {
                for i in 0..5 {
                    let mut t = Tenant::new(TenantId::parse("acme").unwrap());
                    t.display_name = format!("writer {w} write {i}");
                    repo.apply_tenant(&Actor::new(format!("w{w}"), "ApplyTenant"), t, None, None)
                        .unwrap();
                }
            });
        }
    });
    let q = AuditQuery {
        tenant: acme.to_string(),
        descendants: false,
        vault: None,
        kind: None,
        actor: None,
        operation: None,
        from_time: None,
        until_time: None,
        after_seq: None,
        newest_first: false,
    };
    let (events, next) = repo.list_audit(&q, "", 1000).unwrap();
    assert!(next.is_empty());
    assert_eq!(events.len(), 21);
    assert_eq!(
        events.iter().map(|(e, _)| e.seq).collect::<Vec<_>>(),
        (1..=21).collect::<Vec<_>>()
    );
    assert_eq!(events[0].0.operation, Operation::Create);
    assert!(events[1..].iter().all(|(e, _)| e.operation == Operation::Update));
    // Commit order: revisions grow with the sequence.
    assert!(events.windows(2).all(|w| w[0].1 < w[1].1));
    let v = repo.verify_audit(acme.as_str()).unwrap();
    assert_eq!((v.checked, v.first_bad.clone()), (21, None));
    // Editing a stored event (as an attacker with store access would) is found.
    let key = crate::store::keyspace::audit_event("acme", 7);
    let mut tx = repo.store.begin().unwrap();
    let stored = tx.get(&key).unwrap().unwrap();
    let edited = String::from_utf8_lossy(&stored).replace("\"w", "\"x").into_bytes();
    assert_ne!(edited, stored);
    tx.set(&key, &edited);
    tx.commit().unwrap();
    let v = repo.verify_audit(acme.as_str()).unwrap();
    assert_eq!(v.first_bad.map(|b| b.0), Some(7), "the edited event");
}

/// Retention: each tenant's events older than its (inherited) retention go,
/// the chain's floor moves with them, and verification still holds.
pub fn audit_retention(make: &Make<'_>) {
    use crate::audit::Actor;
    use crate::engine::TenantId;
    use crate::engine::model::Tenant;
    let store = make();
    let repo = crate::repo::Repo::new(store.clone());
    let admin = Actor::new("admin", "ApplyTenant");
    let tenant = |id: &str, days: u32| {
        let mut t = Tenant::new(TenantId::parse(id).unwrap());
        t.limits.audit_retention_days = days;
        t
    };
    repo.apply_tenant(&admin, tenant("acme", 0), None, None).unwrap();
    repo.apply_tenant(&admin, tenant("acme/short", 1), None, None).unwrap();
    // Inherits acme/short's one day.
    repo.apply_tenant(&admin, tenant("acme/short/kid", 0), None, None)
        .unwrap();
    let mut renamed = tenant("acme/short", 1);
    renamed.display_name = "renamed".into();
    repo.apply_tenant(&admin, renamed, None, None).unwrap();
    let m = StoreMetrics::default();
    let epoch = crate::lease::acquire(
        &*store,
        &m,
        crate::lease::LEASE,
        "me",
        std::time::Duration::from_secs(60),
        1,
    )
    .unwrap()
    .expect("the lease");
    let day = 86_400_000_000i64;
    let now = crate::engine::Timestamp::now().0;
    assert_eq!(repo.purge_audit(epoch, now).unwrap(), 0, "nothing is old yet");
    // Two days on: the one-day tenants' events go, acme's stay.
    assert_eq!(repo.purge_audit(epoch, now + 2 * day).unwrap(), 3);
    for (t, left) in [("acme", 1), ("acme/short", 0), ("acme/short/kid", 0)] {
        let v = repo.verify_audit(t).unwrap();
        assert_eq!((v.checked, v.first_bad), (left, None), "{t}");
    }
    // The chain goes on from its floor.
    let mut again = tenant("acme/short", 1);
    again.display_name = "again".into();
    repo.apply_tenant(&admin, again, None, None).unwrap();
    let v = repo.verify_audit("acme/short").unwrap();
    assert_eq!((v.checked, v.first_bad), (1, None));
    // Past the default, everything goes; a stale epoch removes nothing.
    assert!(repo.purge_audit(epoch + 1, now + 500 * day).is_err(), "fenced");
    assert_eq!(repo.purge_audit(epoch, now + 500 * day).unwrap(), 2);
    assert_eq!(repo.verify_audit("acme").unwrap().first_bad, None);
}

pub fn all(make: &Make<'_>) {
    read_write_and_versions(make);
    conflicts(make);
    ranges_and_clears(make);
    atomic_adds_and_versionstamps(make);
    retry_loop_serializes_read_modify_write(make);
    subscribe_sees_commits(make);
    leases(make);
    changelog_order_and_resumption(make);
    audit_chain(make);
    audit_retention(make);
}

#[test]
fn memory_backend_conforms() {
    all(&|| Arc::new(memory::MemoryStore::new()) as Arc<dyn Store>);
}

#[test]
fn embedded_backend_conforms() {
    let dirs = std::sync::Mutex::new(Vec::new());
    all(&|| {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(embedded::EmbeddedStore::open(d.path()).unwrap()) as Arc<dyn Store>;
        dirs.lock().unwrap().push(d);
        s
    });
}

#[test]
fn embedded_backend_keeps_data_and_versions_across_reopen() {
    let d = tempfile::tempdir().unwrap();
    let v = {
        let s = embedded::EmbeddedStore::open(d.path()).unwrap();
        set(&s, b"k", b"v")
    };
    let s = embedded::EmbeddedStore::open(d.path()).unwrap();
    assert_eq!(get(&s, b"k").as_deref(), Some(&b"v"[..]));
    assert!(set(&s, b"k2", b"v") > v, "versions keep increasing after a restart");
}

#[cfg(not(feature = "fdb"))]
#[test]
fn foundationdb_backend_conformance() {
    println!(
        "SKIPPED: the FoundationDB conformance suite needs `cargo test --features fdb` and FDB_CLUSTER_FILE naming a cluster"
    );
}

/// The suite against a real cluster when `FDB_CLUSTER_FILE` names one.
/// Each store starts from an empty database.
#[cfg(feature = "fdb")]
#[test]
fn foundationdb_backend_conforms() {
    use crate::store::fdb::{FdbStore, stop_network};
    let Ok(path) = std::env::var("FDB_CLUSTER_FILE") else {
        println!("SKIPPED: FDB_CLUSTER_FILE is not set, so the FoundationDB conformance suite did not run");
        return;
    };
    let make = || {
        let s = FdbStore::open(std::path::Path::new(&path)).expect("cluster reachable");
        let mut tx = s.begin().expect("begin");
        tx.clear_range(b"", b"\xff").expect("clear");
        tx.commit().expect("commit");
        Arc::new(s) as Arc<dyn Store>
    };
    all(&make);
    stop_network();
}
