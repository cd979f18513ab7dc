//! The Rust SDK (`portcullis-client`) against a running server: typed
//! checks and lookups, read-your-writes tokens, the decision cache and its
//! token rule, Watch invalidation, key-file rotation and balancing.

mod common;

use std::time::Duration;

use common::*;
use futures::TryStreamExt;
use portcullis::api::auth::Keys;
use portcullis::server::{Running, ServeOptions};
use portcullis_client::{Access, CacheConfig, Client, Config, Consistency, Reason, pb};

async fn connect(srv: &Running) -> Client {
    Config::new(format!("http://{}", srv.addr))
        .connect()
        .await
        .expect("connects")
}

/// acme (role `reader` on documents) and acme/eng (vault `docs`), with
/// user:alice bound to reader on `document:eng/*` and a denial of
/// `document:eng/secret*`; group:eng holds user:bob and user:carol.
async fn seed(c: &Client) {
    c.apply_tenant(pb::ApplyTenantRequest {
        tenant: Some(tenant("acme")),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    c.apply_tenant(pb::ApplyTenantRequest {
        tenant: Some(tenant("acme/eng")),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    c.apply_vault(pb::ApplyVaultRequest {
        vault: Some(vault("acme/eng", "docs")),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    c.apply_role(pb::ApplyRoleRequest {
        role: Some(role(
            "acme",
            "",
            "reader",
            vec![
                allow(&["documents:read"], &["document:*"]),
                deny(&["documents:read"], &["document:eng/secret*"]),
            ],
        )),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    let mut alice = binding("alice", "user:alice", "reader");
    alice.scope = vec!["document:eng/*".into()];
    let mut eng = binding("eng", "group:eng", "reader");
    eng.scope = vec!["document:eng/shared/*".into()];
    c.write_bindings(pb::WriteBindingsRequest {
        tenant: "acme/eng".into(),
        vault: "docs".into(),
        upserts: vec![alice, eng],
        ..Default::default()
    })
    .await
    .unwrap();
    c.write_memberships(pb::WriteMembershipsRequest {
        tenant: "acme/eng".into(),
        vault: "docs".into(),
        upserts: ["user:bob", "user:carol"]
            .iter()
            .map(|m| pb::Membership {
                group: "group:eng".into(),
                member: m.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn revoke_alice(c: &Client) -> String {
    c.write_bindings(pb::WriteBindingsRequest {
        tenant: "acme/eng".into(),
        vault: "docs".into(),
        deletes: vec!["alice".into()],
        ..Default::default()
    })
    .await
    .unwrap()
    .written_at
}

#[tokio::test]
async fn typed_checks_and_read_your_writes() {
    let srv = start(ServeOptions::for_tests()).await;
    let c = connect(&srv).await;
    assert_eq!(c.written_at("acme/eng"), None);
    seed(&c).await;
    // The newest write under acme/eng, ancestors included.
    let written = c.written_at("acme/eng/deeper").expect("a token");
    assert!(c.written_at("acme").unwrap() < written);
    assert_eq!(c.written_at("globex"), None);

    let d = c
        .check("acme/eng", "docs", "user:alice", "documents:read", "document:eng/a")
        .consistency(Consistency::ReadYourWrites)
        .await
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.reason, pb::Reason::Allowed);
    assert!(d.checked_at >= written, "{} < {written}", d.checked_at);
    assert!(!d.cached && d.explanation.is_none());

    let d = c
        .check(
            "acme/eng",
            "docs",
            "user:alice",
            "documents:read",
            "document:eng/secret-1",
        )
        .explain(true)
        .await
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(d.reason, pb::Reason::ExplicitDeny);
    assert!(!d.explanation.unwrap().entries.is_empty());

    // A refused check is a typed error naming the field.
    let e = c
        .check("acme/eng", "docs", "alice", "documents:read", "document:x")
        .await
        .unwrap_err();
    assert_eq!(e.reason(), &Reason::InvalidArgument);
    assert_eq!(e.violations()[0].field, "subject");
    let e = c
        .check("acme/eng", "docs", "user:a", "documents:read", "document:x")
        .context_json(serde_json::json!([1]))
        .err()
        .unwrap();
    assert_eq!(e.reason(), &Reason::Config);

    // A token from the future is the server's to refuse.
    let e = c
        .check("acme/eng", "docs", "user:alice", "documents:read", "document:eng/a")
        .consistency(Consistency::AtLeastAsFresh("v1.ffffffffffffff00".into()))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), &Reason::RevisionAhead);

    let bulk = c
        .check_bulk("acme/eng", "docs")
        .item("user:alice", "documents:read", "document:eng/a")
        .item("user:bob", "documents:read", "document:eng/a")
        .item("bob", "documents:read", "document:eng/a")
        .consistency(Consistency::ReadYourWrites)
        .await
        .unwrap();
    assert!(bulk[0].as_ref().unwrap().allowed);
    assert!(!bulk[1].as_ref().unwrap().allowed);
    assert_eq!(bulk[2].as_ref().unwrap_err().violations[0].field, "items[2].subject");
    srv.shutdown().await;
}

#[tokio::test]
async fn lookups_stream_every_page_and_filters_agree_with_checks() {
    let srv = start(ServeOptions::for_tests()).await;
    let c = connect(&srv).await;
    seed(&c).await;

    let f = c
        .lookup_resources("acme/eng", "docs", "user:alice", "documents:read")
        .consistency(Consistency::ReadYourWrites)
        .await
        .unwrap();
    assert_eq!(f.grants.len(), 1);
    for r in [
        "document:eng/a",
        "document:eng/secret",
        "document:eng/shared/x",
        "document:hr/a",
        "doc:eng/a",
    ] {
        let checked = c
            .check("acme/eng", "docs", "user:alice", "documents:read", r)
            .await
            .unwrap();
        assert_eq!(f.allows(r), checked.allowed, "{r}");
    }
    assert_eq!(f.matches("document:eng/secret-2"), Access::Denied);

    let who: Vec<String> = c
        .lookup_subjects("acme/eng", "docs", "documents:read", "document:eng/shared/x")
        .page_size(1)
        .stream()
        .map_ok(|s| s.subject)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(who, ["group:eng", "user:alice", "user:bob", "user:carol"]);

    let all: Vec<_> = c
        .effective_permissions("acme/eng", "docs", "user:bob")
        .page_size(1)
        .stream()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "the reader role's two statements through group:eng");
    assert!(all.iter().all(|s| s.binding_id == "eng" && s.principal == "group:eng"));

    // A bad lookup fails the stream with the server's reason.
    let e = c
        .lookup_subjects("acme/eng", "nope", "documents:read", "document:x")
        .stream()
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert_eq!(e.reason(), &Reason::VaultNotFound);

    // Watch as a stream: a write shows up as a change.
    let mut changes = c.watch_changes("acme/eng", "docs", "").await.unwrap();
    let written = revoke_alice(&c).await;
    let m = tokio::time::timeout(Duration::from_secs(10), changes.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.revision, written);
    srv.shutdown().await;
}

#[tokio::test]
async fn the_cache_never_answers_older_than_the_callers_token() {
    let srv = start(ServeOptions::for_tests()).await;
    let c = Config::new(format!("http://{}", srv.addr))
        .decision_cache(CacheConfig::new(100, Duration::from_secs(3600)))
        .connect()
        .await
        .unwrap();
    seed(&c).await;
    let check = |consistency| {
        c.check("acme/eng", "docs", "user:alice", "documents:read", "document:eng/a")
            .consistency(consistency)
    };
    let first = check(Consistency::ReadYourWrites).await.unwrap();
    assert!(first.allowed && !first.cached);
    let second = check(Consistency::ReadYourWrites).await.unwrap();
    assert!(second.allowed && second.cached);
    assert_eq!(second.checked_at, first.checked_at);

    revoke_alice(&c).await;
    // Without a token the cache may answer from before the write: that is
    // what a cache is, and why the token rule exists.
    assert!(check(Consistency::MinimizeLatency).await.unwrap().cached);
    // With this client's write token the old entry is never used.
    let after = check(Consistency::ReadYourWrites).await.unwrap();
    assert!(!after.allowed && !after.cached);
    // The newer answer replaced it.
    let again = check(Consistency::MinimizeLatency).await.unwrap();
    assert!(!again.allowed && again.cached);
    // Explanations and fully consistent reads always ask the server.
    assert!(!check(Consistency::FullyConsistent).await.unwrap().cached);
    assert!(!check(Consistency::MinimizeLatency).explain(true).await.unwrap().cached);

    let stats = c.decision_cache().unwrap().stats();
    assert_eq!(stats.hits, 3);
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.stale, 1);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_watched_tenant_invalidates_the_cache() {
    let srv = start(ServeOptions::for_tests()).await;
    let writer = connect(&srv).await;
    seed(&writer).await;
    let c = Config::new(format!("http://{}", srv.addr))
        .decision_cache(CacheConfig::new(100, Duration::from_secs(3600)).invalidate_on_watch("acme/eng"))
        .connect()
        .await
        .unwrap();
    let check = || c.check("acme/eng", "docs", "user:alice", "documents:read", "document:eng/a");
    assert!(check().consistency(Consistency::FullyConsistent).await.unwrap().allowed);
    // Cached from here on (wait for the watch to be established, which the
    // cache cannot report, by retrying until a hit).
    assert!(check().await.unwrap().allowed);
    assert!(check().await.unwrap().cached);

    // Another client revokes: this one never saw the token, but the Watch
    // stream drops the entry.
    revoke_alice(&writer).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = check().await.unwrap();
        if !d.allowed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the cache kept a revoked grant");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.decision_cache().unwrap().stats().invalidated >= 1);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_rotated_key_file_is_used_without_reconnecting() {
    let keys = Keys::parse(&format!(
        "keys:\n  - name: svc\n    sha256: {}\n    scopes: [admin, check]\n",
        Keys::hash("first-key")
    ))
    .unwrap();
    let srv = start(ServeOptions {
        keys,
        ..ServeOptions::for_tests()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, "first-key\n").unwrap();
    let c = Config::new(format!("http://{}", srv.addr))
        .token_file_every(&file, Duration::from_millis(20))
        .connect()
        .await
        .unwrap();
    c.get_server_info(pb::GetServerInfoRequest {}).await.unwrap();

    // Rotated to a key the server does not know: calls start failing.
    std::fs::write(&file, "second-key\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let e = loop {
        match c.get_server_info(pb::GetServerInfoRequest {}).await {
            Err(e) => break e,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "the new key was never read"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(e.reason(), &Reason::Unauthenticated);
    // An emptied file keeps the last key; back to the first, calls work.
    std::fs::write(&file, "").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&file, "first-key").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.get_server_info(pb::GetServerInfoRequest {}).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first key was never read back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A missing file fails at connect, naming it.
    let e = Config::new(format!("http://{}", srv.addr))
        .token_file(dir.path().join("missing"))
        .connect()
        .await
        .err()
        .unwrap();
    assert_eq!(e.reason(), &Reason::Config);
    assert!(e.message().contains("missing"), "{}", e.message());
    srv.shutdown().await;
}

#[tokio::test]
async fn calls_are_balanced_around_a_dead_endpoint() {
    let a = start(ServeOptions::for_tests()).await;
    let b = start(ServeOptions::for_tests()).await;
    let dead = free_port();
    let c = Config::new(format!("http://{}", a.addr))
        .endpoint(format!("http://{}", b.addr))
        .endpoint(format!("http://127.0.0.1:{dead}"))
        .connect()
        .await
        .unwrap();
    let mut served = std::collections::HashSet::new();
    for _ in 0..40 {
        let info = c.get_server_info(pb::GetServerInfoRequest {}).await.unwrap();
        served.insert(info.store_id);
    }
    assert_eq!(served.len(), 2, "both live replicas serve: {served:?}");
    a.shutdown().await;
    b.shutdown().await;
}
