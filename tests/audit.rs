//! The audit trail over gRPC: every admin write path leaves exactly one
//! event per object with its actor, before and after; refused writes leave
//! none; the chain verifies; confined keys read only their subtrees.

mod common;

use common::*;
use portcullis::api::auth::Keys;
use portcullis::server::ServeOptions;
use portcullis_client::{Client, Config, Reason, pb};
use tonic::Code;

const ROOT: &str = "root-secret";
const ENG: &str = "eng-secret";
const WRITER: &str = "writer-secret";

fn keys() -> Keys {
    Keys::parse(&format!(
        "keys:\n  - name: root\n    sha256: {}\n    scopes: [admin, audit]\n  - name: eng-admin\n    sha256: {}\n    scopes: [admin, audit]\n    tenants: [acme/eng]\n  - name: writer\n    sha256: {}\n    scopes: [admin]\n",
        Keys::hash(ROOT),
        Keys::hash(ENG),
        Keys::hash(WRITER)
    ))
    .unwrap()
}

async fn client(addr: std::net::SocketAddr, key: &str) -> Client {
    Config::new(format!("http://{addr}"))
        .token(key)
        .connect()
        .await
        .expect("connects")
}

fn list(tenant: &str, descendants: bool) -> pb::ListAuditEventsRequest {
    pb::ListAuditEventsRequest {
        tenant: tenant.into(),
        include_descendants: descendants,
        page_size: 1000,
        ..Default::default()
    }
}

/// (tenant, kind, name, operation, actor, rpc) of every event, in order.
async fn trail(c: &Client, tenant: &str) -> Vec<(String, String, String, i32, String, String)> {
    let r = c.list_audit_events(list(tenant, true)).await.expect("listed");
    assert!(r.next_page_token.is_empty());
    r.events
        .into_iter()
        .map(|e| (e.tenant, e.kind, e.name, e.operation, e.actor, e.rpc))
        .collect()
}

fn apply_tenant(t: pb::Tenant) -> pb::ApplyTenantRequest {
    pb::ApplyTenantRequest {
        tenant: Some(t),
        expected_revision: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_leaves_one_event_and_refusals_none() {
    use pb::AuditOperation::{Create, Delete, Update};
    let srv = start(ServeOptions {
        keys: keys(),
        ..ServeOptions::for_tests()
    })
    .await;
    let root = client(srv.addr, ROOT).await;
    let writer = client(srv.addr, WRITER).await;
    root.apply_tenant(apply_tenant(tenant("acme"))).await.unwrap();
    // Unchanged: nothing written, nothing audited.
    root.apply_tenant(apply_tenant(tenant("acme"))).await.unwrap();
    let mut renamed = tenant("acme");
    renamed.display_name = "Acme Corp".into();
    writer.apply_tenant(apply_tenant(renamed)).await.unwrap();
    root.apply_tenant(apply_tenant(tenant("acme/eng"))).await.unwrap();
    // The operator's calls name the object they act for.
    let operator = root.on_behalf_of("Vault/team-a/docs uid=1234").unwrap();
    operator
        .apply_vault(pb::ApplyVaultRequest {
            vault: Some(vault("acme/eng", "docs")),
            expected_revision: String::new(),
        })
        .await
        .unwrap();
    let reader = role("acme/eng", "docs", "reader", vec![allow(&["documents:read"], &["*"])]);
    root.apply_role(pb::ApplyRoleRequest {
        role: Some(reader.clone()),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    let mut widened = reader.clone();
    widened.statements.push(allow(&["documents:list"], &["*"]));
    root.apply_role(pb::ApplyRoleRequest {
        role: Some(widened),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    let mut b = binding("alice-reads", "user:alice", "reader");
    b.tenant = "acme/eng".into();
    b.vault = "docs".into();
    root.write_bindings(pb::WriteBindingsRequest {
        tenant: "acme/eng".into(),
        vault: "docs".into(),
        upserts: vec![b],
        ..Default::default()
    })
    .await
    .unwrap();
    let m = pb::Membership {
        tenant: "acme/eng".into(),
        vault: "docs".into(),
        group: "group:eng".into(),
        member: "user:bob".into(),
        ..Default::default()
    };
    root.write_memberships(pb::WriteMembershipsRequest {
        tenant: "acme/eng".into(),
        vault: "docs".into(),
        upserts: vec![m.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let before = trail(&root, "acme").await.len();

    // Refused writes leave nothing: an invalid role, a missing one, a stale revision.
    let mut bad = reader.clone();
    bad.statements[0].condition = "contxt.mfa".into();
    let e = root
        .apply_role(pb::ApplyRoleRequest {
            role: Some(bad),
            expected_revision: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = root
        .delete_role(pb::DeleteRoleRequest {
            tenant: "acme/eng".into(),
            vault: "docs".into(),
            name: "nobody".into(),
            expected_revision: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.reason(), &Reason::RoleNotFound);
    let e = root
        .delete_vault(pb::DeleteVaultRequest {
            tenant: "acme/eng".into(),
            name: "docs".into(),
            expected_revision: "v1.0000000000000001".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.reason(), &Reason::RevisionMismatch);
    assert_eq!(
        trail(&root, "acme").await.len(),
        before,
        "refused writes are not audited"
    );

    // Deletions.
    root.write_memberships(pb::WriteMembershipsRequest {
        tenant: "acme/eng".into(),
        vault: "docs".into(),
        deletes: vec![m],
        ..Default::default()
    })
    .await
    .unwrap();
    root.write_bindings(pb::WriteBindingsRequest {
        tenant: "acme/eng".into(),
        vault: "docs".into(),
        deletes: vec!["alice-reads".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    root.delete_role(pb::DeleteRoleRequest {
        tenant: "acme/eng".into(),
        vault: "docs".into(),
        name: "reader".into(),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    root.delete_vault(pb::DeleteVaultRequest {
        tenant: "acme/eng".into(),
        name: "docs".into(),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    root.delete_tenant(pb::DeleteTenantRequest {
        id: "acme/eng".into(),
        expected_revision: String::new(),
    })
    .await
    .unwrap();

    let s = |x: &str| x.to_string();
    let e =
        |t: &str, k: &str, n: &str, o: pb::AuditOperation, a: &str, r: &str| (s(t), s(k), s(n), o as i32, s(a), s(r));
    assert_eq!(
        trail(&root, "acme").await,
        [
            e("acme", "tenant", "acme", Create, "root", "ApplyTenant"),
            e("acme", "tenant", "acme", Update, "writer", "ApplyTenant"),
            e("acme/eng", "tenant", "acme/eng", Create, "root", "ApplyTenant"),
            e("acme/eng", "vault", "docs", Create, "root", "ApplyVault"),
            e("acme/eng", "role", "reader", Create, "root", "ApplyRole"),
            e("acme/eng", "role", "reader", Update, "root", "ApplyRole"),
            e("acme/eng", "binding", "alice-reads", Create, "root", "WriteBindings"),
            e(
                "acme/eng",
                "membership",
                "group:eng user:bob",
                Create,
                "root",
                "WriteMemberships"
            ),
            e(
                "acme/eng",
                "membership",
                "group:eng user:bob",
                Delete,
                "root",
                "WriteMemberships"
            ),
            e("acme/eng", "binding", "alice-reads", Delete, "root", "WriteBindings"),
            e("acme/eng", "role", "reader", Delete, "root", "DeleteRole"),
            e("acme/eng", "vault", "docs", Delete, "root", "DeleteVault"),
            e("acme/eng", "tenant", "acme/eng", Delete, "root", "DeleteTenant"),
        ]
    );

    // Before and after, the on-behalf-of, sequences and revisions.
    let all = root.list_audit_events(list("acme", true)).await.unwrap().events;
    let update = &all[1];
    let name = |v: &Option<prost_types::Value>| match v.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(prost_types::value::Kind::StructValue(s)) => {
            match s.fields.get("display_name").and_then(|x| x.kind.clone()) {
                Some(prost_types::value::Kind::StringValue(n)) => n,
                _ => String::new(),
            }
        }
        _ => "absent".into(),
    };
    assert_eq!(
        (name(&update.before), name(&update.after)),
        (String::new(), "Acme Corp".into())
    );
    assert_eq!(all[0].operation, Create as i32);
    assert_eq!(name(&all[0].before), "absent");
    assert_eq!(name(&all[12].after), "absent", "a DELETE has no after");
    assert_eq!(name(&all[12].before), "", "a DELETE has the object before");
    assert_eq!(all[3].on_behalf_of, "Vault/team-a/docs uid=1234");
    assert_eq!(all[2].seq, 1, "each tenant has its own chain");
    assert_eq!(all[12].seq, 11);
    assert!(all.iter().all(|e| e.revision.starts_with("v1.") && e.time.is_some()));

    // Newest first, filters and pages.
    let mut q = list("acme/eng", false);
    q.newest_first = true;
    q.kind = "role".into();
    let roles = root.list_audit_events(q).await.unwrap().events;
    assert_eq!(
        roles.iter().map(|e| e.operation).collect::<Vec<_>>(),
        [Delete as i32, Update as i32, Create as i32]
    );
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let mut q = list("acme", true);
        q.page_size = 4;
        q.page_token = token;
        let r = root.list_audit_events(q).await.unwrap();
        seen.extend(r.events.into_iter().map(|e| (e.tenant, e.seq)));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen.len(), 13, "pages cover the trail once: {seen:?}");

    // Verification.
    for t in ["acme", "acme/eng"] {
        let v = root
            .verify_audit_chain(pb::VerifyAuditChainRequest {
                tenant: t.into(),
                refusals: false,
            })
            .await
            .unwrap();
        assert!(v.intact, "{t}: {v:?}");
    }

    // Confinement and the scope.
    let eng = client(srv.addr, ENG).await;
    let e = eng.list_audit_events(list("acme", true)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        eng.list_audit_events(list("acme/eng", true))
            .await
            .unwrap()
            .events
            .len(),
        11
    );
    let e = eng
        .verify_audit_chain(pb::VerifyAuditChainRequest {
            tenant: "acme".into(),
            refusals: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = writer.list_audit_events(list("acme", false)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(e.reason(), &Reason::ScopeMissing);

    // Refused calls are audited in the server-wide chain: a confined key
    // outside its subtree, a key without the scope, an unknown key.
    let stranger = client(srv.addr, "not-a-key").await;
    let e = stranger.apply_tenant(apply_tenant(tenant("evil"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let refusals = pb::ListAuditEventsRequest {
        refusals: true,
        page_size: 100,
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let events = loop {
        let events = root.list_audit_events(refusals.clone()).await.unwrap().events;
        if events.len() >= 4 || start.elapsed() > std::time::Duration::from_secs(10) {
            break events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let got: Vec<(String, String, i32)> = events
        .iter()
        .map(|e| (e.actor.clone(), e.rpc.clone(), e.operation))
        .collect();
    let refused = pb::AuditOperation::Refused as i32;
    assert_eq!(
        got,
        [
            (s("eng-admin"), s("ListAuditEvents"), refused),
            (s("eng-admin"), s("VerifyAuditChain"), refused),
            (s("writer"), s("ListAuditEvents"), refused),
            (s("unauthenticated"), s("ApplyTenant"), refused),
        ]
    );
    let after = format!("{:?}", events[3].after);
    assert!(
        after.contains("Unauthenticated") && after.contains("127.0.0.1"),
        "{after}"
    );
    let v = root
        .verify_audit_chain(pb::VerifyAuditChainRequest {
            tenant: String::new(),
            refusals: true,
        })
        .await
        .unwrap();
    assert!(v.intact && v.checked == 4, "{v:?}");
    // Only unconfined keys read them.
    let e = eng.list_audit_events(refusals).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_on_behalf_of_and_queries_are_refused() {
    let srv = start(ServeOptions {
        keys: keys(),
        ..ServeOptions::for_tests()
    })
    .await;
    let root = client(srv.addr, ROOT).await;
    let mut raw = portcullis_proto::v1::admin_service_client::AdminServiceClient::new(channel(srv.addr).await);
    for value in [vec![0xc3, 0xbc, 0x41], vec![b'x'; 600]] {
        let mut req = tonic::Request::new(apply_tenant(tenant("acme")));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {ROOT}").parse().unwrap());
        req.metadata_mut().insert(
            "x-portcullis-on-behalf-of",
            tonic::metadata::MetadataValue::try_from(value.as_slice()).unwrap(),
        );
        let e = raw.apply_tenant(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("x-portcullis-on-behalf-of"), "{}", e.message());
    }
    assert!(trail(&root, "acme").await.is_empty(), "nothing was written");
    let mut forever = tenant("acme");
    forever.limits = Some(pb::Limits {
        audit_retention_days: 40_000,
        ..Default::default()
    });
    let e = root.apply_tenant(apply_tenant(forever)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.violations()
            .iter()
            .any(|v| v.field == "tenant.limits.audit_retention_days"),
        "{e:?}"
    );
    for (q, field) in [
        (list("ACME", false), "tenant"),
        (
            pb::ListAuditEventsRequest {
                kind: "secrets".into(),
                ..list("acme", false)
            },
            "kind",
        ),
        (
            pb::ListAuditEventsRequest {
                operation: 42,
                ..list("acme", false)
            },
            "operation",
        ),
        (
            pb::ListAuditEventsRequest {
                page_token: "zz".into(),
                ..list("acme", false)
            },
            "page_token",
        ),
    ] {
        let e = root.list_audit_events(q).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.violations().iter().any(|v| v.field == field), "{field}: {e:?}");
    }
    srv.shutdown().await;
}
