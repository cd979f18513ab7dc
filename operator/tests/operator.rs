//! The operator against a real Kubernetes API server and a real Portcullis.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kube::api::{Api, DeleteParams, ListParams};
use portcullis::manifest::{LimitsSpec, MembershipSpec, StatementSpec};
use portcullis_operator::crd::{RoleSpec, TenantSpec, VaultSpec};
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::admin_service_client::AdminServiceClient;
use portcullis_proto::v1::diagnostics_service_client::DiagnosticsServiceClient;

fn tenant_spec(allowed: &[&str]) -> TenantSpec {
    TenantSpec {
        display_name: String::new(),
        suspended: false,
        limits: LimitsSpec::default(),
        decision_logs: None,
        allowed_namespaces: allowed.iter().map(|s| s.to_string()).collect(),
    }
}

async fn tenant_ready(env: &Env, suffix: &str, reason: &str) -> (String, String, String) {
    let api = env.tenants();
    let name = env.tenant_name(suffix);
    wait_reason(&format!("Tenant {name}"), reason, || {
        let (api, name) = (api.clone(), name.clone());
        async move {
            api.get_opt(&name)
                .await
                .ok()
                .flatten()
                .and_then(|t| ready(t.status.as_ref()))
        }
    })
    .await
}

async fn vault_ready(env: &Env, ns: &str, name: &str, reason: &str) -> (String, String, String) {
    let api = env.vaults(ns);
    wait_reason(&format!("Vault {ns}/{name}"), reason, || {
        let (api, name) = (api.clone(), name.to_string());
        async move {
            api.get_opt(&name)
                .await
                .ok()
                .flatten()
                .and_then(|v| ready(v.status.as_ref()))
        }
    })
    .await
}

async fn role_ready(env: &Env, ns: &str, name: &str, reason: &str) -> (String, String, String) {
    let api = env.roles(ns);
    wait_reason(&format!("Role {ns}/{name}"), reason, || {
        let (api, name) = (api.clone(), name.to_string());
        async move {
            api.get_opt(&name)
                .await
                .ok()
                .flatten()
                .and_then(|r| ready(r.status.as_ref()))
        }
    })
    .await
}

fn reader(env: &Env, actions: &[&str]) -> RoleSpec {
    RoleSpec {
        tenant: env.tenant_name(""),
        vault: None,
        description: "readers".into(),
        statements: vec![allow(actions, &["document:*"])],
        inherits: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_objects_answer_checks_and_follow_edits() {
    let Some(client) = client().await else { return };
    let mut env = Env::new(client).await;
    env.start_operator("solo").await;
    let ns = env.ns.clone();
    env.apply_tenant("", tenant_spec(&[&ns])).await;
    env.apply_tenant(
        "eng",
        TenantSpec {
            decision_logs: Some(portcullis::manifest::DecisionLogsSpec {
                sample_allowed: None,
                sample_denied: Some(0.5),
            }),
            ..tenant_spec(&[&ns])
        },
    )
    .await;
    env.apply_role(&ns, "reader", reader(&env, &["documents:read"])).await;
    env.apply_vault(
        &ns,
        "docs",
        VaultSpec {
            tenant: env.tenant_name("eng"),
            display_name: "Docs".into(),
            bindings: vec![
                bind("alice-reads", "user:alice", "reader"),
                bind("eng-reads", "group:eng", "reader"),
            ],
            memberships: vec![MembershipSpec {
                group: "group:eng".into(),
                members: vec!["user:bob".into()],
            }],
        },
    )
    .await;
    tenant_ready(&env, "", "Applied").await;
    tenant_ready(&env, "eng", "Applied").await;
    role_ready(&env, &ns, "reader", "Applied").await;
    let (_, _, msg) = vault_ready(&env, &ns, "docs", "Applied").await;
    assert!(msg.contains("2 bindings"), "{msg}");

    // Status follows the API conventions.
    let v = env.vaults(&ns).get("docs").await.unwrap();
    let st = v.status.clone().unwrap();
    assert_eq!(st.observed_generation, v.metadata.generation);
    assert_eq!(st.conditions[0].observed_generation, v.metadata.generation);
    assert!(st.revision.unwrap().starts_with("v1."));
    assert!(chrono::DateTime::parse_from_rfc3339(&st.conditions[0].last_transition_time).is_ok());
    let t = env.tenants().get(&env.tenant_name("eng")).await.unwrap();
    assert_eq!(
        t.status.unwrap().tenant_id.as_deref(),
        Some(env.tenant_id("eng").as_str())
    );
    // The decision-log sampling reached the service as declared.
    let served = AdminServiceClient::connect(format!("http://{}", env.service_addr))
        .await
        .unwrap()
        .get_tenant(pb::GetTenantRequest {
            id: env.tenant_id("eng"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        served.decision_logs,
        Some(pb::DecisionLogSampling {
            sample_allowed: None,
            sample_denied: Some(0.5)
        })
    );

    // Each write is audited as done on behalf of the Kubernetes object.
    let mut audit =
        portcullis_proto::v1::audit_service_client::AuditServiceClient::connect(format!("http://{}", env.service_addr))
            .await
            .unwrap();
    let events = audit
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: env.tenant_id(""),
            include_descendants: true,
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let vault_uid = v.metadata.uid.clone().unwrap();
    let of_vault: Vec<_> = events
        .iter()
        .filter(|e| e.tenant == env.tenant_id("eng") && e.kind != "tenant")
        .collect();
    assert!(
        of_vault
            .iter()
            .filter(|e| e.kind != "role")
            .all(|e| e.on_behalf_of == format!("Vault/{ns}/docs uid={vault_uid}")),
        "{of_vault:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "role" && e.on_behalf_of.starts_with(&format!("Role/{ns}/reader uid="))),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.kind == "tenant"
            && e.on_behalf_of
                .starts_with(&format!("Tenant/{} uid=", env.tenant_name("")))),
        "{events:?}"
    );

    let tid = env.tenant_id("eng");
    assert!(
        env.allowed(&tid, "docs", "user:alice", "documents:read", "document:a")
            .await
            .unwrap()
    );
    assert!(
        env.allowed(&tid, "docs", "user:bob", "documents:read", "document:a")
            .await
            .unwrap(),
        "via group:eng"
    );
    assert!(
        !env.allowed(&tid, "docs", "user:carol", "documents:read", "document:a")
            .await
            .unwrap()
    );

    // A binding written through the API, next to the declared ones.
    let mut admin = AdminServiceClient::connect(format!("http://{}", env.service_addr))
        .await
        .unwrap();
    admin
        .write_bindings(pb::WriteBindingsRequest {
            tenant: tid.clone(),
            vault: "docs".into(),
            upserts: vec![pb::Binding {
                id: "api-dave".into(),
                subject: "user:dave".into(),
                role: "reader".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();

    // Editing the Role changes decisions.
    env.apply_role(&ns, "reader", reader(&env, &["documents:list"])).await;
    env.eventually_allowed(&tid, "docs", "user:alice", "documents:read", "document:a", false)
        .await;
    env.eventually_allowed(&tid, "docs", "user:alice", "documents:list", "document:a", true)
        .await;

    // Removing a declared binding stops it granting; the API's binding stays.
    env.apply_vault(
        &ns,
        "docs",
        VaultSpec {
            tenant: env.tenant_name("eng"),
            display_name: "Docs".into(),
            bindings: vec![bind("eng-reads", "group:eng", "reader")],
            memberships: vec![MembershipSpec {
                group: "group:eng".into(),
                members: vec!["user:bob".into()],
            }],
        },
    )
    .await;
    env.eventually_allowed(&tid, "docs", "user:alice", "documents:list", "document:a", false)
        .await;
    assert!(
        env.allowed(&tid, "docs", "user:dave", "documents:list", "document:a")
            .await
            .unwrap(),
        "API binding untouched"
    );
    assert!(
        env.allowed(&tid, "docs", "user:bob", "documents:list", "document:a")
            .await
            .unwrap()
    );

    // Suspending the parent tenant denies everything below it.
    env.apply_tenant(
        "",
        TenantSpec {
            suspended: true,
            ..tenant_spec(&[&ns])
        },
    )
    .await;
    env.eventually_allowed(&tid, "docs", "user:bob", "documents:list", "document:a", false)
        .await;
    env.apply_tenant("", tenant_spec(&[&ns])).await;
    env.eventually_allowed(&tid, "docs", "user:bob", "documents:list", "document:a", true)
        .await;

    // Events were recorded for the Vault.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), &ns);
    let list = events.list(&ListParams::default()).await.unwrap();
    assert!(
        list.items.iter().any(|e| e.reason.as_deref() == Some("Applied")),
        "an Applied event"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_reported_with_their_reasons() {
    let Some(client) = client().await else { return };
    let mut env = Env::new(client).await;
    env.start_operator("solo").await;
    let ns = env.ns.clone();
    let other_ns = format!("{ns}-b");
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    let mut n = k8s_openapi::api::core::v1::Namespace::default();
    n.metadata.name = Some(other_ns.clone());
    nss.create(&Default::default(), &n).await.unwrap();

    // A vault whose tenant does not exist yet: TenantNotFound, then Ready once it does.
    env.apply_vault(
        &ns,
        "early",
        VaultSpec {
            tenant: env.tenant_name(""),
            ..Default::default()
        },
    )
    .await;
    vault_ready(&env, &ns, "early", "TenantNotFound").await;
    env.apply_tenant("", tenant_spec(&[&ns, &other_ns])).await;
    vault_ready(&env, &ns, "early", "Applied").await;

    // A namespace the tenant does not allow: refused, nothing written.
    env.apply_tenant("closed", tenant_spec(&[])).await;
    tenant_ready(&env, "closed", "Applied").await;
    env.apply_vault(
        &ns,
        "refused",
        VaultSpec {
            tenant: env.tenant_name("closed"),
            ..Default::default()
        },
    )
    .await;
    let (status, _, msg) = vault_ready(&env, &ns, "refused", "NamespaceNotAllowed").await;
    assert_eq!(status, "False");
    assert!(msg.contains(&ns), "{msg}");
    let mut admin = AdminServiceClient::connect(format!("http://{}", env.service_addr))
        .await
        .unwrap();
    let e = admin
        .get_vault(pb::GetVaultRequest {
            tenant: env.tenant_id("closed"),
            name: "refused".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "nothing written");
    // Allowing the namespace on the Tenant lets the Vault in.
    env.apply_tenant("closed", tenant_spec(&["*"])).await;
    vault_ready(&env, &ns, "refused", "Applied").await;

    // A CEL condition that does not compile: InvalidSpec with the service's message, no hot loop.
    let mut bad = reader(&env, &["documents:read"]);
    bad.statements.push(StatementSpec {
        condition: Some("subject ==".into()),
        ..allow(&["documents:write"], &[])
    });
    env.apply_role(&ns, "broken", bad).await;
    let (_, _, msg) = role_ready(&env, &ns, "broken", "InvalidSpec").await;
    assert!(
        msg.contains("spec.statements[1].condition") && msg.contains("line 1"),
        "{msg}"
    );
    let reconciles = || env.operators[0].metrics.reconciles.with_label_values(&["Role"]).get();
    let before = reconciles();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        reconciles() - before <= 2,
        "no hot loop on an invalid spec: {} reconciles",
        reconciles() - before
    );

    // Two Vaults named `docs` in different namespaces for one tenant: the second conflicts.
    env.apply_vault(
        &ns,
        "docs",
        VaultSpec {
            tenant: env.tenant_name(""),
            ..Default::default()
        },
    )
    .await;
    vault_ready(&env, &ns, "docs", "Applied").await;
    env.apply_vault(
        &other_ns,
        "docs",
        VaultSpec {
            tenant: env.tenant_name(""),
            ..Default::default()
        },
    )
    .await;
    let (_, _, msg) = vault_ready(&env, &other_ns, "docs", "Conflict").await;
    assert!(msg.contains(&format!("Vault {ns}/docs")), "{msg}");
    vault_ready(&env, &ns, "docs", "Applied").await;
    let first = env.vaults(&ns).get("docs").await.unwrap();
    assert_eq!(
        ready(first.status.as_ref()).unwrap().0,
        "True",
        "the first keeps working"
    );

    // A name that is not a valid vault name.
    env.apply_vault(
        &ns,
        "dotted.name",
        VaultSpec {
            tenant: env.tenant_name(""),
            ..Default::default()
        },
    )
    .await;
    vault_ready(&env, &ns, "dotted.name", "InvalidSpec").await;

    let _ = env.vaults(&other_ns).delete("docs", &DeleteParams::default()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.vaults(&other_ns).get_opt("docs").await.unwrap().is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Deleting the conflicting Vault did not delete the first one's vault.
    assert!(
        admin
            .get_vault(pb::GetVaultRequest {
                tenant: env.tenant_id(""),
                name: "docs".into()
            })
            .await
            .is_ok()
    );
    let _ = nss.delete(&other_ns, &DeleteParams::default()).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_runs_finalizers_and_tenants_wait_for_dependents() {
    let Some(client) = client().await else { return };
    let mut env = Env::new(client).await;
    env.start_operator("solo").await;
    let ns = env.ns.clone();
    env.apply_tenant("", tenant_spec(&[&ns])).await;
    env.apply_tenant("child", tenant_spec(&[&ns])).await;
    env.apply_role(&ns, "reader", reader(&env, &["documents:read"])).await;
    env.apply_vault(
        &ns,
        "docs",
        VaultSpec {
            tenant: env.tenant_name("child"),
            bindings: vec![bind("a", "user:alice", "reader")],
            ..Default::default()
        },
    )
    .await;
    vault_ready(&env, &ns, "docs", "Applied").await;
    let tid = env.tenant_id("child");
    env.eventually_allowed(&tid, "docs", "user:alice", "documents:read", "document:x", true)
        .await;

    // The parent waits for its child tenant, its role and (through the child) the vault.
    env.tenants()
        .delete(&env.tenant_name(""), &DeleteParams::default())
        .await
        .unwrap();
    let (_, _, msg) = tenant_ready(&env, "", "DependentsExist").await;
    assert!(msg.contains(&format!("Tenant {}", env.tenant_name("child"))), "{msg}");
    assert!(msg.contains("Role"), "{msg}");
    env.tenants()
        .delete(&env.tenant_name("child"), &DeleteParams::default())
        .await
        .unwrap();
    let (_, _, msg) = tenant_ready(&env, "child", "DependentsExist").await;
    assert!(msg.contains(&format!("Vault {ns}/docs")), "{msg}");

    // Deleting the Vault deletes it from Portcullis.
    env.vaults(&ns).delete("docs", &DeleteParams::default()).await.unwrap();
    let start = Instant::now();
    loop {
        match env
            .allowed(&tid, "docs", "user:alice", "documents:read", "document:x")
            .await
        {
            Err(e) if e.code() == tonic::Code::NotFound => break,
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "vault never deleted from Portcullis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.roles(&ns).delete("reader", &DeleteParams::default()).await.unwrap();
    // Then the tenants go, child first.
    let start = Instant::now();
    while env.tenants().get_opt(&env.tenant_name("")).await.unwrap().is_some() {
        assert!(start.elapsed() < Duration::from_secs(30), "tenants never deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut admin = AdminServiceClient::connect(format!("http://{}", env.service_addr))
        .await
        .unwrap();
    assert_eq!(
        admin
            .get_tenant(pb::GetTenantRequest { id: env.tenant_id("") })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    assert_eq!(
        admin
            .get_tenant(pb::GetTenantRequest { id: tid })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    env.cleanup().await;
}

async fn revision(env: &Env) -> String {
    let mut d = DiagnosticsServiceClient::connect(format!("http://{}", env.service_addr))
        .await
        .unwrap();
    d.get_server_info(pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_converge_and_a_wiped_service_is_repopulated() {
    let Some(client) = client().await else { return };
    let mut env = Env::new(client).await;
    env.start_operator("first").await;
    let ns = env.ns.clone();
    env.apply_tenant("", tenant_spec(&[&ns])).await;
    env.apply_role(&ns, "reader", reader(&env, &["documents:read"])).await;
    env.apply_vault(
        &ns,
        "docs",
        VaultSpec {
            tenant: env.tenant_name(""),
            bindings: vec![bind("a", "user:alice", "reader")],
            memberships: vec![MembershipSpec {
                group: "group:g".into(),
                members: vec!["user:bob".into()],
            }],
            ..Default::default()
        },
    )
    .await;
    vault_ready(&env, &ns, "docs", "Applied").await;
    role_ready(&env, &ns, "reader", "Applied").await;
    let tid = env.tenant_id("");
    env.eventually_allowed(&tid, "docs", "user:alice", "documents:read", "document:x", true)
        .await;

    // A new operator process converges without writing anything again.
    let before = revision(&env).await;
    let op = env.operators.pop().unwrap();
    op.shutdown().await;
    env.start_operator("second").await;
    let start = Instant::now();
    while !*env.operators[0].is_leader.borrow() {
        assert!(start.elapsed() < Duration::from_secs(15));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        env.operators[0].metrics.reconciles.with_label_values(&["Vault"]).get() >= 1,
        "it did reconcile"
    );
    assert_eq!(revision(&env).await, before, "no duplicate writes after a restart");

    // The service comes back empty: the operator notices and re-applies at once.
    env.restart_service_empty().await;
    env.eventually_allowed(&tid, "docs", "user:alice", "documents:read", "document:x", true)
        .await;
    let mut admin = AdminServiceClient::connect(format!("http://{}", env.service_addr))
        .await
        .unwrap();
    // The vault's bindings and memberships are two writes: the grant can be
    // visible a moment before the membership is.
    let start = Instant::now();
    let ms = loop {
        let ms = admin
            .list_memberships(pb::ListMembershipsRequest {
                tenant: tid.clone(),
                vault: "docs".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if !ms.memberships.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break ms;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ms.memberships.len(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_and_failover() {
    let Some(client) = client().await else { return };
    let mut env = Env::new(client).await;
    env.start_operator("a").await;
    env.start_operator("b").await;
    let leaders = |env: &Env| env.operators.iter().filter(|o| *o.is_leader.borrow()).count();
    let start = Instant::now();
    while leaders(&env) == 0 {
        assert!(start.elapsed() < Duration::from_secs(15), "nobody leads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..40 {
        assert_eq!(leaders(&env), 1, "exactly one leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ns = env.ns.clone();
    env.apply_tenant("", tenant_spec(&[&ns])).await;
    tenant_ready(&env, "", "Applied").await;
    let follower_reconciles: u64 = env
        .operators
        .iter()
        .filter(|o| !*o.is_leader.borrow())
        .map(|o| o.metrics.reconciles.with_label_values(&["Tenant"]).get())
        .sum();
    assert_eq!(follower_reconciles, 0, "only the holder reconciles");

    // The leader dies without releasing the lease: the other takes over within the lease duration.
    let idx = env.operators.iter().position(|o| *o.is_leader.borrow()).unwrap();
    let dead = env.operators.remove(idx);
    let died = Instant::now();
    dead.abort();
    loop {
        if *env.operators[0].is_leader.borrow() {
            break;
        }
        assert!(died.elapsed() < Duration::from_secs(10), "no takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = died.elapsed();
    println!("operator failover took {took:?} (lease 3 s)");
    assert!(took <= Duration::from_secs(3) + Duration::from_secs(2), "took {took:?}");
    // And it reconciles.
    env.apply_role(&ns, "reader", reader(&env, &["documents:read"])).await;
    role_ready(&env, &ns, "reader", "Applied").await;
    env.cleanup().await;
}
