//! Decision logs against a real server: what a line holds, sampling, and
//! the drop counter when the writer's queue is full.

mod common;

use std::time::Duration;

use common::*;
use portcullis::decisions::{DecisionLogOptions, Sink};
use portcullis::server::ServeOptions;
use portcullis_proto::v1 as pb;

async fn serve(log: DecisionLogOptions) -> portcullis::server::Running {
    start(ServeOptions {
        decision_log: log,
        ..ServeOptions::for_tests()
    })
    .await
}

/// acme/docs with alice bound to reader, written with `token`.
async fn with_binding(srv: &portcullis::server::Running, token: Option<&str>) -> String {
    let mut a = admin(srv.addr, token).await;
    seed(&mut a).await;
    a.write_bindings(pb::WriteBindingsRequest {
        tenant: "acme".into(),
        vault: "docs".into(),
        upserts: vec![binding("alice-reads", "user:alice", "reader")],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .written_at
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

async fn wait_for(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let l = lines(path);
        if l.len() >= n {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lines(path)
}

fn checked(subject: &str, at: &str, ctx: Option<(&str, bool)>) -> tonic::Request<pb::CheckPermissionRequest> {
    let mut r = check_req("acme", "docs", subject, "documents:read", "document:a");
    r.consistency = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(at.into())),
    });
    if let Some((k, v)) = ctx {
        r.context = Some(prost_types::Struct {
            fields: [(
                k.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::BoolValue(v)),
                },
            )]
            .into(),
        });
    }
    tonic::Request::new(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sampled_check_is_one_line_with_what_decided() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    let srv = serve(DecisionLogOptions {
        sink: Sink::File(path.clone()),
        sample_allowed: 1.0,
        sample_denied: 1.0,
        ..Default::default()
    })
    .await;
    let at = with_binding(&srv, None).await;
    let mut p = perm(srv.addr, None).await;
    let mut allowed = checked("user:alice", &at, Some(("mfa", true)));
    allowed.metadata_mut().insert("x-request-id", "req-1".parse().unwrap());
    p.check_permission(allowed).await.unwrap();
    p.check_permission(checked("user:mallory", &at, None)).await.unwrap();
    let l = wait_for(&path, 2).await;
    assert_eq!(l.len(), 2, "{l:?}");
    let a = &l[0];
    assert_eq!(a["request_id"], "req-1");
    assert_eq!(a["caller"], "anonymous");
    assert_eq!(
        (a["tenant"].as_str(), a["vault"].as_str()),
        (Some("acme"), Some("docs"))
    );
    assert_eq!(
        (a["decision"].as_str(), a["reason"].as_str()),
        (Some("ALLOWED"), Some("ALLOWED"))
    );
    assert_eq!(a["deciding"][0]["binding"], "alice-reads");
    assert_eq!(a["deciding"][0]["role"], "acme/reader");
    assert_eq!(a["context_keys"], serde_json::json!(["mfa"]));
    assert!(
        a.get("context").is_none(),
        "values only with --decision-log-context values"
    );
    assert!(a["revision"].as_str().unwrap().starts_with("v1.") && a["latency_us"].is_u64());
    let d = &l[1];
    assert_eq!(
        (d["decision"].as_str(), d["reason"].as_str()),
        (Some("DENIED"), Some("NO_MATCH"))
    );
    assert_eq!(d["deciding"], serde_json::json!([]));
    assert_eq!(d["request_id"].as_str().unwrap().len(), 36, "a generated id");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_values_and_drops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    // Allowed decisions never sampled, denied always, context values kept,
    // and a queue of one: whatever the writer cannot take is counted.
    let srv = serve(DecisionLogOptions {
        sink: Sink::File(path.clone()),
        sample_allowed: 0.0,
        sample_denied: 1.0,
        context_values: true,
        queue: 1,
        ..Default::default()
    })
    .await;
    let at = with_binding(&srv, None).await;
    let mut p = perm(srv.addr, None).await;
    for _ in 0..50 {
        p.check_permission(checked("user:alice", &at, None)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (addr, at) = (srv.addr, at.clone());
        tasks.push(tokio::spawn(async move {
            let mut p = perm(addr, None).await;
            for _ in 0..250 {
                p.check_permission(checked("user:mallory", &at, Some(("mfa", false))))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let l = lines(&path);
    let dropped = srv.state.metrics.decision_log_dropped.get() as usize;
    assert_eq!(l.len() + dropped, 1000, "every denied check is written or counted");
    assert!(
        l.iter().all(|e| e["decision"] == "DENIED"),
        "allowed ones are not sampled"
    );
    assert!(l.iter().all(|e| e["context"] == serde_json::json!({"mfa": false})));
    srv.shutdown().await;
}

const ROOT: &str = "root-secret";
const ACME: &str = "acme-secret";

fn sampling(allowed: Option<f64>, denied: Option<f64>) -> Option<pb::DecisionLogSampling> {
    Some(pb::DecisionLogSampling {
        sample_allowed: allowed,
        sample_denied: denied,
    })
}

async fn put_tenant(a: &mut Admin, id: &str, d: Option<pb::DecisionLogSampling>) -> Result<String, tonic::Status> {
    a.apply_tenant(pb::ApplyTenantRequest {
        tenant: Some(pb::Tenant {
            decision_logs: d,
            ..tenant(id)
        }),
        expected_revision: String::new(),
    })
    .await
    .map(|r| r.into_inner().revision)
}

/// A check at `at`, in `tenant`'s vault `v` or acme's `docs`.
fn checked_in(tenant: &str, subject: &str, at: &str) -> tonic::Request<pb::CheckPermissionRequest> {
    let mut r = checked(subject, at, None);
    if tenant != "acme" {
        r.get_mut().tenant = tenant.into();
        r.get_mut().vault = "v".into();
    }
    r.metadata_mut()
        .insert("x-request-id", format!("{tenant} {subject}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_override_the_shares_for_their_subtrees() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    // The server logs nothing of its own accord.
    let srv = start(ServeOptions {
        decision_log: DecisionLogOptions {
            sink: Sink::File(path.clone()),
            sample_allowed: 0.0,
            sample_denied: 0.0,
            ..Default::default()
        },
        keys: portcullis::api::auth::Keys::parse(&format!(
            "keys:\n  - name: root\n    sha256: {}\n    scopes: [admin, check]\n  - name: acme-admin\n    sha256: {}\n    scopes: [admin, check]\n    tenants: [acme]\n",
            portcullis::api::auth::Keys::hash(ROOT),
            portcullis::api::auth::Keys::hash(ACME)
        ))
        .unwrap(),
        ..ServeOptions::for_tests()
    })
    .await;
    with_binding(&srv, Some(ROOT)).await;
    let mut a = admin(srv.addr, Some(ROOT)).await;
    // acme logs every allowed check; acme/eng every denied one; acme/eng/x
    // sets nothing and inherits both, each from its nearest ancestor.
    put_tenant(&mut a, "acme", sampling(Some(1.0), None)).await.unwrap();
    put_tenant(&mut a, "acme/eng", sampling(None, Some(1.0))).await.unwrap();
    put_tenant(&mut a, "acme/eng/x", None).await.unwrap();
    let at = a
        .apply_vault(pb::ApplyVaultRequest {
            vault: Some(vault("acme/eng/x", "v")),
            expected_revision: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    let mut p = perm(srv.addr, Some(ROOT)).await;
    for (tenant, subject) in [
        ("acme", "user:alice"),         // allowed in acme: logged
        ("acme", "user:mallory"),       // denied in acme: the server's 0
        ("acme/eng/x", "user:mallory"), // denied below acme/eng: logged
    ] {
        p.check_permission(checked_in(tenant, subject, &at)).await.unwrap();
    }
    // acme's override removed: back to the server's shares there.
    let at = put_tenant(&mut a, "acme", None).await.unwrap();
    p.check_permission(checked_in("acme", "user:alice", &at)).await.unwrap();
    p.check_permission(checked_in("acme/eng/x", "user:bob", &at))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = lines(&path)
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        ["acme user:alice", "acme/eng/x user:mallory", "acme/eng/x user:bob"],
        "only what the tenants' shares keep"
    );

    // GetTenant shows what the tenant set, and only that.
    let t = a
        .get_tenant(pb::GetTenantRequest { id: "acme/eng".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.decision_logs, sampling(None, Some(1.0)));

    // A share outside 0..1 is refused, naming the field.
    for bad in [1.5, -0.1, f64::NAN, f64::INFINITY] {
        let e = put_tenant(&mut a, "acme", sampling(None, Some(bad))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        assert!(
            e.message().contains("tenant.decision_logs.sample_denied"),
            "{bad}: {}",
            e.message()
        );
    }

    // The log is the platform's: a key confined to acme may not set or
    // change any sampling in its subtree, nor create a tenant with one, but
    // may still write a tenant that leaves it alone.
    let mut confined = admin(srv.addr, Some(ACME)).await;
    for (id, d) in [
        ("acme/eng", sampling(None, Some(0.0))),
        ("acme/eng", None),
        ("acme/eng/new", sampling(Some(0.0), None)),
        ("acme", sampling(Some(1.0), None)),
    ] {
        let e = put_tenant(&mut confined, id, d).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{id}: {e:?}");
        assert!(e.message().contains("decision_logs"), "{id}: {}", e.message());
    }
    put_tenant(&mut confined, "acme/eng", sampling(None, Some(1.0)))
        .await
        .unwrap();
    put_tenant(&mut confined, "acme/eng/new", None).await.unwrap();
    srv.shutdown().await;
}
