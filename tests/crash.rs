//! A server killed with SIGKILL in the middle of a write storm loses no
//! acknowledged write: every commit is fsynced before it is acknowledged.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use portcullis_proto::v1 as pb;

fn spawn_server(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--store", "embedded", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server binary starts")
}

async fn wait_ready(port: u16) -> Admin {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..200 {
        if let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            let mut h = tonic_health::pb::health_client::HealthClient::new(ep.clone());
            let serving = h
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .map(|r| {
                    r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                })
                .unwrap_or(false);
            if serving {
                return portcullis_proto::v1::admin_service_client::AdminServiceClient::with_interceptor(
                    ep,
                    Bearer::none(),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server on {port} did not become ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_write_storm_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_server(dir.path(), port);
    let mut a = wait_ready(port).await;
    seed(&mut a).await;

    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (acked, mut a) = (acked.clone(), a.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let ids: Vec<String> = (0..5).map(|k| format!("w{w}-{i}-{k}")).collect();
                let req = pb::WriteBindingsRequest {
                    tenant: "acme".into(),
                    vault: "docs".into(),
                    upserts: ids
                        .iter()
                        .map(|id| binding(id, &format!("user:{id}"), "reader"))
                        .collect(),
                    deletes: vec![],
                    replace_source: 0,
                };
                match a.write_bindings(req).await {
                    Ok(_) => acked.lock().unwrap().extend(ids),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let the storm run, then kill the server without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "the storm wrote something: {}", acked.len());

    let mut child = spawn_server(dir.path(), port);
    let mut a = wait_ready(port).await;
    let mut stored = BTreeSet::new();
    let mut token = String::new();
    loop {
        let page = a
            .list_bindings(pb::ListBindingsRequest {
                tenant: "acme".into(),
                vault: "docs".into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        stored.extend(page.bindings.into_iter().map(|b| b.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    // And the restarted index answers for them.
    let mut p = portcullis_proto::v1::permission_service_client::PermissionServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let some = acked.iter().next().unwrap();
    let r = p
        .check_permission(check_req(
            "acme",
            "docs",
            &format!("user:{some}"),
            "documents:read",
            "document:x",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision, pb::Decision::Allowed as i32);
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_server(dir.path(), port);
    let mut a = wait_ready(port).await;
    seed(&mut a).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = std::time::Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}");
    // And what it acknowledged is there after a restart.
    let mut child = spawn_server(dir.path(), port);
    let mut a = wait_ready(port).await;
    a.get_role(pb::GetRoleRequest {
        tenant: "acme".into(),
        vault: String::new(),
        name: "reader".into(),
    })
    .await
    .unwrap();
    child.kill().unwrap();
    let _ = child.wait();
}
