//! Tenant-sharded replicas on one shared store: each shard loads and
//! answers its own tenants (with the tenant-level objects of the tenants
//! above them), refuses the others with WRONG_SHARD, follows the shard map
//! when tenants move, and the client routes by the map.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use portcullis::server::{Running, ServeOptions, ShardOptions};
use portcullis::store::{Backend, Store, memory::MemoryStore};
use portcullis_client::shard::{Router, ShardMap};
use portcullis_client::{Config, Reason};
use portcullis_proto::v1 as pb;
use tonic_types::StatusExt;

fn map(a: &[&str], b: &[&str], addrs: (&str, &str)) -> String {
    let list = |ts: &[&str]| ts.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
    format!(
        "shards:\n  - {{name: a, address: '{}', tenants: [{}]}}\n  - {{name: b, address: '{}', tenants: [{}]}}\n",
        addrs.0,
        list(a),
        addrs.1,
        list(b)
    )
}

async fn shard(store: &Arc<dyn Store>, path: &std::path::Path, name: &str) -> Running {
    let mut o = ServeOptions::for_tests();
    o.backend = Backend::Shared(store.clone());
    o.metrics_listen = None;
    o.reload_interval = Duration::from_millis(100);
    o.shard = ShardOptions::Map {
        path: path.to_path_buf(),
        name: name.into(),
    };
    start(o).await
}

async fn apply(a: &mut Admin, tenant_id: &str, vaults: &[&str]) {
    a.apply_tenant(pb::ApplyTenantRequest {
        tenant: Some(tenant(tenant_id)),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    for v in vaults {
        a.apply_vault(pb::ApplyVaultRequest {
            vault: Some(vault(tenant_id, v)),
            expected_revision: String::new(),
        })
        .await
        .unwrap();
    }
}

async fn reader_role(a: &mut Admin, tenant: &str) -> String {
    a.apply_role(pb::ApplyRoleRequest {
        role: Some(role(
            tenant,
            "",
            "reader",
            vec![allow(&["documents:read"], &["document:*"])],
        )),
        expected_revision: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .revision
}

async fn bind(a: &mut Admin, tenant: &str, id: &str, subject: &str) -> String {
    a.write_bindings(pb::WriteBindingsRequest {
        tenant: tenant.into(),
        vault: "docs".into(),
        upserts: vec![binding(id, subject, "reader")],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .written_at
}

/// The check's answer at `at`, or the refusal's reason.
async fn check(srv: &Running, tenant: &str, subject: &str, at: &str) -> Result<bool, (tonic::Code, String, String)> {
    let mut p = perm(srv.addr, None).await;
    let mut r = check_req(tenant, "docs", subject, "documents:read", "document:a");
    r.consistency = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(at.into())),
    });
    match p.check_permission(r).await {
        Ok(r) => Ok(r.into_inner().decision == pb::Decision::Allowed as i32),
        Err(s) => {
            let info = s.get_details_error_info().expect("an ErrorInfo");
            Err((
                s.code(),
                info.reason,
                info.metadata.get("shard_tenants").cloned().unwrap_or_default(),
            ))
        }
    }
}

fn wrong_shard(patterns: &str) -> Result<bool, (tonic::Code, String, String)> {
    Err((tonic::Code::FailedPrecondition, "WRONG_SHARD".into(), patterns.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_serve_their_tenants_and_follow_the_map() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shards.yaml");
    std::fs::write(&path, map(&["acme/eng/**"], &["globex"], ("", ""))).unwrap();

    // Written before the shards start: acme's tenant-level role, bound in
    // acme/eng (so shard a needs acme's tenant-level objects), and globex.
    let a = shard(&store, &path, "a").await;
    let mut admin_a = admin(a.addr, None).await;
    apply(&mut admin_a, "acme", &["docs"]).await;
    reader_role(&mut admin_a, "acme").await;
    apply(&mut admin_a, "acme/eng", &["docs"]).await;
    bind(&mut admin_a, "acme/eng", "alice-reads", "user:alice").await;
    bind(&mut admin_a, "acme", "ann-reads", "user:ann").await;
    apply(&mut admin_a, "globex", &["docs"]).await;
    reader_role(&mut admin_a, "globex").await;
    let at = bind(&mut admin_a, "globex", "bob-reads", "user:bob").await;
    a.shutdown().await;

    let a = shard(&store, &path, "a").await;
    let b = shard(&store, &path, "b").await;
    assert_eq!(check(&a, "acme/eng", "user:alice", &at).await, Ok(true));
    assert_eq!(check(&b, "globex", "user:bob", &at).await, Ok(true));
    // Each refuses the other's tenants, naming its own patterns; acme's own
    // vaults are not shard a's (only acme's tenant-level objects are).
    assert_eq!(check(&a, "globex", "user:bob", &at).await, wrong_shard("acme/eng/**"));
    assert_eq!(check(&a, "acme", "user:ann", &at).await, wrong_shard("acme/eng/**"));
    assert_eq!(check(&b, "acme/eng", "user:alice", &at).await, wrong_shard("globex"));
    // Their indexes hold only what they serve.
    assert!(a.state.index().unwrap().engine().view("globex", "docs").is_err());
    assert!(a.state.index().unwrap().engine().view("acme", "docs").is_err());
    assert!(b.state.index().unwrap().engine().view("acme/eng", "docs").is_err());
    let info = |srv: &Running| {
        let addr = srv.addr;
        async move {
            Config::new(format!("http://{addr}"))
                .connect()
                .await
                .unwrap()
                .get_server_info(pb::GetServerInfoRequest {})
                .await
                .unwrap()
                .shard_tenants
        }
    };
    assert_eq!(info(&a).await, ["acme/eng/**"]);
    assert_eq!(info(&b).await, ["globex"]);

    // Writes to the shared store reach the shard that serves them, through
    // any replica.
    let at = bind(&mut admin(b.addr, None).await, "acme/eng", "carol-reads", "user:carol").await;
    assert_eq!(check(&a, "acme/eng", "user:carol", &at).await, Ok(true));
    assert!(b.state.index().unwrap().engine().view("acme/eng", "docs").is_err());

    // The client routes by the map.
    let addrs = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let router = Router::new(
        ShardMap::parse(&map(&["acme/eng/**"], &["globex"], (&addrs.0, &addrs.1))).unwrap(),
        |addr| Config::new(addr),
    )
    .unwrap();
    let routed = |tenant: &str, subject: &str| {
        let (name, client) = router.for_tenant(tenant).unwrap();
        let req = check_req(tenant, "docs", subject, "documents:read", "document:a");
        async move { (name, client.check_permission(req).await.map(|r| r.decision).ok()) }
    };
    assert_eq!(
        routed("globex", "user:bob").await,
        ("b".to_string(), Some(pb::Decision::Allowed as i32))
    );
    assert_eq!(
        routed("acme/eng/web", "user:nobody").await.0,
        "a",
        "a subtree pattern covers descendants"
    );
    let e = router.for_tenant("initech").err().expect("no shard");
    assert_eq!(e.reason(), &Reason::Config);

    // globex moves to shard a: both shards follow the map without a
    // restart, and the router follows it too.
    std::fs::write(&path, map(&["acme/eng/**", "globex"], &["initech"], ("", ""))).unwrap();
    let t0 = Instant::now();
    while check(&a, "globex", "user:bob", &at).await != Ok(true) {
        assert!(t0.elapsed() < Duration::from_secs(10), "shard a never took globex");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while check(&b, "globex", "user:bob", &at).await != wrong_shard("initech") {
        assert!(t0.elapsed() < Duration::from_secs(10), "shard b never let globex go");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(check(&a, "acme/eng", "user:carol", &at).await, Ok(true), "kept");
    router
        .update(ShardMap::parse(&map(&["acme/eng/**", "globex"], &["initech"], (&addrs.0, &addrs.1))).unwrap())
        .unwrap();
    assert_eq!(
        routed("globex", "user:bob").await,
        ("a".to_string(), Some(pb::Decision::Allowed as i32))
    );
    // A map that no longer names the shard leaves it as it was.
    std::fs::write(&path, "shards:\n  - {name: x, tenants: ['**']}\n").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(check(&a, "globex", "user:bob", &at).await, Ok(true));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_bad_shard_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shards.yaml");
    std::fs::write(&path, "shards:\n  - {name: a, tenants: ['acme/*']}\n").unwrap();
    let mut o = ServeOptions::for_tests();
    o.shard = ShardOptions::Map {
        path: path.clone(),
        name: "a".into(),
    };
    let e = portcullis::server::start(o.clone())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("shards[0].tenants: pattern 0"), "{e}");
    std::fs::write(&path, "shards:\n  - {name: a, tenants: ['acme/**']}\n").unwrap();
    o.shard = ShardOptions::Map { path, name: "b".into() };
    let e = portcullis::server::start(o).await.err().expect("refused").to_string();
    assert!(e.contains("no shard named \"b\""), "{e}");
}

/// The client's copy of the tenant-id rule and of subtree matching agrees
/// with the server's.
#[test]
fn the_client_reads_tenant_ids_as_the_server_does() {
    use portcullis::engine::ids::{check_tenant_id, is_tenant_within};
    use portcullis_client::shard::Tenants;
    for id in [
        "acme",
        "acme/eng",
        "a/b/c/d/e/f/g/h",
        "a/b/c/d/e/f/g/h/i",
        "Acme",
        "acme//x",
        "-a",
        "a-",
        "x_y",
        "",
        "acme/eng ",
        "0",
        &"a".repeat(63),
        &"a".repeat(64),
    ] {
        // Through the map, whose patterns are taken as written (the
        // `--tenants` list trims the spaces around its commas).
        let map = ShardMap::parse(&format!("shards:\n  - {{name: a, tenants: ['{id}']}}\n"));
        assert_eq!(map.is_ok(), check_tenant_id(id).is_ok(), "{id:?}");
    }
    let sub = Tenants::parse("acme/**").unwrap();
    for t in ["acme", "acme/eng", "acmeco", "acme2/x", "globex"] {
        assert_eq!(sub.serves(t), is_tenant_within(t, "acme"), "{t}");
    }
}
