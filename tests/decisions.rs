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

async fn with_binding(srv: &portcullis::server::Running) -> String {
    let mut a = admin(srv.addr, None).await;
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
    let at = with_binding(&srv).await;
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
    let at = with_binding(&srv).await;
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
