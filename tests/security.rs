//! Regression tests of the hardening review: each sends the request that
//! broke the service and asserts the answer it gets now.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use portcullis::api::auth::Keys;
use portcullis::server::{Running, ServeOptions};
use portcullis::store::{Backend, Store, keyspace as ks};
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::diagnostics_service_client::DiagnosticsServiceClient;
use tonic::Code;
use tonic_types::StatusExt;

const ROOT: &str = "root-secret";
const ENG: &str = "eng-secret";

fn keys() -> Keys {
    Keys::parse(&format!(
        "keys:\n  - name: root\n    sha256: {}\n    scopes: [admin, check, watch]\n  - name: eng-admin\n    sha256: {}\n    scopes: [admin, check, watch]\n    tenants: [acme/eng]\n",
        Keys::hash(ROOT),
        Keys::hash(ENG)
    ))
    .unwrap()
}

/// The revision of the last committed change. Not the store's version: a
/// refused call writes its refusal to the audit trail, never a change.
fn last_change(srv: &Running) -> u64 {
    let (feed, _) = srv.state.repo.read_feed(0, 0).unwrap();
    feed.last().map(|e| e.version).unwrap_or(0)
}

async fn server() -> Running {
    start(ServeOptions {
        keys: keys(),
        ..ServeOptions::for_tests()
    })
    .await
}

fn apply_tenant(t: pb::Tenant) -> pb::ApplyTenantRequest {
    pb::ApplyTenantRequest {
        tenant: Some(t),
        expected_revision: String::new(),
    }
}

/// acme, acme/eng, acme/finance and other, each with vault `v`, and a
/// role `reader` in acme/finance:v that nobody is bound to.
async fn seed_tree(a: &mut Admin) {
    for t in ["acme", "acme/eng", "acme/finance", "other"] {
        a.apply_tenant(apply_tenant(tenant(t))).await.unwrap();
        a.apply_vault(pb::ApplyVaultRequest {
            vault: Some(vault(t, "v")),
            expected_revision: String::new(),
        })
        .await
        .unwrap();
    }
    a.write_bindings(pb::WriteBindingsRequest {
        tenant: "acme/finance".into(),
        vault: "v".into(),
        upserts: vec![binding("b", "user:mallory", "reader")],
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn allowed(p: &mut Perm, tenant: &str) -> bool {
    let mut r = check_req(tenant, "v", "user:mallory", "anything", "thing:x");
    r.consistency = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
    });
    p.check_permission(r).await.unwrap().into_inner().decision == pb::Decision::Allowed as i32
}

fn import_stream(msgs: Vec<pb::ImportVaultRequest>) -> impl tokio_stream::Stream<Item = pb::ImportVaultRequest> {
    tokio_stream::iter(msgs)
}

fn role_item(tenant: &str, vault: &str) -> pb::import_vault_request::Item {
    pb::import_vault_request::Item::Role(pb::Role {
        tenant: tenant.into(),
        vault: vault.into(),
        name: "reader".into(),
        statements: vec![allow(&["*"], &["*"])],
        ..Default::default()
    })
}

#[tokio::test]
async fn import_cannot_write_roles_outside_the_keys_subtree() {
    let srv = server().await;
    let mut root = admin(srv.addr, Some(ROOT)).await;
    seed_tree(&mut root).await;
    let mut eng = admin(srv.addr, Some(ENG)).await;
    let mut p = perm(srv.addr, Some(ROOT)).await;
    assert!(!allowed(&mut p, "acme/finance").await);

    // The original request: an import into acme/eng:v carrying a role of
    // acme/finance; then the same role in `other`, and at the tenant level
    // of `acme` (an empty vault).
    for (t, v) in [("acme/finance", "v"), ("other", "v"), ("acme", "")] {
        let before = last_change(&srv);
        let e = eng
            .import_vault(import_stream(vec![pb::ImportVaultRequest {
                tenant: "acme/eng".into(),
                vault: "v".into(),
                item: Some(role_item(t, v)),
            }]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{t}:{v}: {e:?}");
        assert_eq!(e.get_details_error_info().unwrap().reason, "TENANT_OUTSIDE_KEY");
        assert_eq!(last_change(&srv), before, "{t}:{v}: nothing written");
    }
    assert!(!allowed(&mut p, "acme/finance").await);
    assert!(!allowed(&mut p, "other").await);

    // Inside the subtree but another vault: refused too, as invalid.
    let e = eng
        .import_vault(import_stream(vec![pb::ImportVaultRequest {
            tenant: "acme/eng".into(),
            vault: "v".into(),
            item: Some(role_item("acme/eng", "elsewhere")),
        }]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("items[0].role.vault"), "{}", e.message());
    srv.shutdown().await;
}

/// Every admin RPC and every nested object field carrying a tenant: a key
/// confined to acme/eng naming acme/finance gets PERMISSION_DENIED and
/// nothing is written.
#[tokio::test]
async fn every_tenant_field_of_every_admin_rpc_is_confined() {
    let srv = server().await;
    let mut root = admin(srv.addr, Some(ROOT)).await;
    seed_tree(&mut root).await;
    let mut a = admin(srv.addr, Some(ENG)).await;
    const OUT: &str = "acme/finance";
    const IN: &str = "acme/eng";
    let m = |t: &str| pb::Membership {
        tenant: t.into(),
        group: "group:g".into(),
        member: "user:mallory".into(),
        ..Default::default()
    };
    let b = |t: &str| pb::Binding {
        tenant: t.into(),
        ..binding("x", "user:mallory", "reader")
    };
    type Call<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + 'a>>;
    type Case<'c> = (&'static str, Box<dyn Fn(&mut Admin) -> Call<'_> + 'c>);
    let cases: Vec<Case<'_>> = vec![
        (
            "ApplyTenant tenant.id",
            Box::new(|a| Box::pin(async move { a.apply_tenant(apply_tenant(tenant(OUT))).await.map(|_| ()) })),
        ),
        (
            "GetTenant id",
            Box::new(|a| {
                Box::pin(async move { a.get_tenant(pb::GetTenantRequest { id: OUT.into() }).await.map(|_| ()) })
            }),
        ),
        (
            "ListTenants under",
            Box::new(|a| {
                Box::pin(async move {
                    a.list_tenants(pb::ListTenantsRequest {
                        under: OUT.into(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "DeleteTenant id",
            Box::new(|a| {
                Box::pin(async move {
                    a.delete_tenant(pb::DeleteTenantRequest {
                        id: OUT.into(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "ApplyVault vault.tenant",
            Box::new(|a| {
                Box::pin(async move {
                    a.apply_vault(pb::ApplyVaultRequest {
                        vault: Some(vault(OUT, "w")),
                        expected_revision: String::new(),
                    })
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "DeleteVault tenant",
            Box::new(|a| {
                Box::pin(async move {
                    a.delete_vault(pb::DeleteVaultRequest {
                        tenant: OUT.into(),
                        name: "v".into(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "ApplyRole role.tenant",
            Box::new(|a| {
                Box::pin(async move {
                    a.apply_role(pb::ApplyRoleRequest {
                        role: Some(role(OUT, "v", "reader", vec![allow(&["*"], &["*"])])),
                        expected_revision: String::new(),
                    })
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "DeleteRole tenant",
            Box::new(|a| {
                Box::pin(async move {
                    a.delete_role(pb::DeleteRoleRequest {
                        tenant: OUT.into(),
                        vault: "v".into(),
                        name: "reader".into(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "WriteBindings tenant",
            Box::new(|a| {
                Box::pin(async move {
                    a.write_bindings(pb::WriteBindingsRequest {
                        tenant: OUT.into(),
                        vault: "v".into(),
                        upserts: vec![b("")],
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "WriteBindings upserts[0].tenant",
            Box::new(|a| {
                Box::pin(async move {
                    a.write_bindings(pb::WriteBindingsRequest {
                        tenant: IN.into(),
                        vault: "v".into(),
                        upserts: vec![b(OUT)],
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "WriteMemberships upserts[0].tenant",
            Box::new(|a| {
                Box::pin(async move {
                    a.write_memberships(pb::WriteMembershipsRequest {
                        tenant: IN.into(),
                        vault: "v".into(),
                        upserts: vec![m(OUT)],
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "WriteMemberships deletes[0].tenant",
            Box::new(|a| {
                Box::pin(async move {
                    a.write_memberships(pb::WriteMembershipsRequest {
                        tenant: IN.into(),
                        vault: "v".into(),
                        deletes: vec![m(OUT)],
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "ImportVault tenant",
            Box::new(|a| {
                Box::pin(async move {
                    a.import_vault(import_stream(vec![pb::ImportVaultRequest {
                        tenant: OUT.into(),
                        vault: "v".into(),
                        item: Some(role_item("", "")),
                    }]))
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "ImportVault items[0].binding.tenant",
            Box::new(|a| {
                Box::pin(async move {
                    a.import_vault(import_stream(vec![pb::ImportVaultRequest {
                        tenant: IN.into(),
                        vault: "v".into(),
                        item: Some(pb::import_vault_request::Item::Binding(b(OUT))),
                    }]))
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "ImportVault items[1].membership.tenant",
            Box::new(|a| {
                Box::pin(async move {
                    a.import_vault(import_stream(vec![
                        pb::ImportVaultRequest {
                            tenant: IN.into(),
                            vault: "v".into(),
                            item: Some(pb::import_vault_request::Item::Binding(b(""))),
                        },
                        pb::ImportVaultRequest {
                            tenant: String::new(),
                            vault: String::new(),
                            item: Some(pb::import_vault_request::Item::Membership(m(OUT))),
                        },
                    ]))
                    .await
                    .map(|_| ())
                })
            }),
        ),
        (
            "ExportVault tenant",
            Box::new(|a| {
                Box::pin(async move {
                    a.export_vault(pb::ExportVaultRequest {
                        tenant: OUT.into(),
                        vault: "v".into(),
                    })
                    .await
                    .map(|_| ())
                })
            }),
        ),
    ];
    for (name, call) in &cases {
        let before = last_change(&srv);
        let e = call(&mut a).await.expect_err(name);
        assert_eq!(e.code(), Code::PermissionDenied, "{name}: {e:?}");
        let info = e
            .get_details_error_info()
            .unwrap_or_else(|| panic!("{name}: no ErrorInfo"));
        assert_eq!(info.reason, "TENANT_OUTSIDE_KEY", "{name}");
        assert_eq!(info.metadata.get("tenant").map(String::as_str), Some(OUT), "{name}");
        assert_eq!(last_change(&srv), before, "{name}: nothing written");
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn a_confined_admin_cannot_lift_its_own_suspension_or_limits() {
    let srv = server().await;
    let mut root = admin(srv.addr, Some(ROOT)).await;
    seed_tree(&mut root).await;
    let limited = pb::Limits {
        max_vaults: 1,
        ..Default::default()
    };
    root.apply_tenant(apply_tenant(pb::Tenant {
        status: pb::TenantStatus::Suspended as i32,
        limits: Some(limited),
        ..tenant("acme/eng")
    }))
    .await
    .unwrap();
    let mut eng = admin(srv.addr, Some(ENG)).await;
    let mut p = perm(srv.addr, Some(ROOT)).await;

    // The original request.
    let e = eng
        .apply_tenant(apply_tenant(pb::Tenant {
            status: pb::TenantStatus::Active as i32,
            limits: Some(pb::Limits::default()),
            ..tenant("acme/eng")
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(e.get_details_error_info().unwrap().reason, "CONFINEMENT_ROOT");
    let r = p
        .check_permission(check_req("acme/eng", "v", "user:a", "x", "y:z"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.reason, pb::Reason::TenantSuspended as i32, "still suspended");
    // Its display name and labels it may change, as long as status and limits stay.
    eng.apply_tenant(apply_tenant(pb::Tenant {
        display_name: "Engineering".into(),
        status: pb::TenantStatus::Suspended as i32,
        limits: Some(limited),
        ..tenant("acme/eng")
    }))
    .await
    .unwrap();
    let e = eng
        .delete_tenant(pb::DeleteTenantRequest {
            id: "acme/eng".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // Descendants: managed, but never above acme/eng's own limits.
    let e = eng
        .apply_tenant(apply_tenant(tenant("acme/eng/team")))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "unlimited is above max_vaults 1: {e:?}"
    );
    assert!(e.message().contains("max_vaults"), "{}", e.message());
    eng.apply_tenant(apply_tenant(pb::Tenant {
        limits: Some(limited),
        ..tenant("acme/eng/team")
    }))
    .await
    .unwrap();
    // And a limit bounds the whole subtree: acme/eng holds its one vault, so
    // the child cannot add another.
    let e = eng
        .apply_vault(pb::ApplyVaultRequest {
            vault: Some(vault("acme/eng/team", "w")),
            expected_revision: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("tenant acme/eng (an ancestor"), "{}", e.message());
    srv.shutdown().await;
}

#[tokio::test]
async fn out_of_range_timestamps_are_refused_where_they_enter() {
    let srv = server().await;
    let mut root = admin(srv.addr, Some(ROOT)).await;
    for t in ["mallory"] {
        root.apply_tenant(apply_tenant(tenant(t))).await.unwrap();
        root.apply_vault(pb::ApplyVaultRequest {
            vault: Some(vault(t, "v")),
            expected_revision: String::new(),
        })
        .await
        .unwrap();
    }
    let poison = |nb: Option<i64>, exp: Option<i64>| pb::Binding {
        not_before: nb.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        expires_at: exp.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        ..binding("poison", "user:m", "x")
    };
    for (b, field) in [
        (poison(None, Some(253_402_300_800)), "upserts[0].expires_at"),
        (poison(Some(i64::MIN), None), "upserts[0].not_before"),
    ] {
        let e = root
            .write_bindings(pb::WriteBindingsRequest {
                tenant: "mallory".into(),
                vault: "v".into(),
                upserts: vec![b.clone()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let fields: Vec<String> = e
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, [field]);
        let e = root
            .import_vault(import_stream(vec![pb::ImportVaultRequest {
                tenant: "mallory".into(),
                vault: "v".into(),
                item: Some(pb::import_vault_request::Item::Binding(b)),
            }]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    // The last valid second is fine and reads back.
    root.write_bindings(pb::WriteBindingsRequest {
        tenant: "mallory".into(),
        vault: "v".into(),
        upserts: vec![poison(Some(-62_135_596_800), Some(253_402_300_799))],
        ..Default::default()
    })
    .await
    .unwrap();
    let list = root
        .list_bindings(pb::ListBindingsRequest {
            tenant: "mallory".into(),
            vault: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.bindings[0].expires_at.unwrap().seconds, 253_402_300_799);
    srv.shutdown().await;
}

/// A record that cannot be read (written by an older version, or damaged)
/// quarantines its vault only: the server starts, every other vault
/// answers, and deleting the record repairs it.
#[tokio::test]
async fn an_unreadable_record_quarantines_its_vault_and_can_be_repaired() {
    let store: Arc<dyn Store> = Arc::new(portcullis::store::memory::MemoryStore::new());
    let opts = || ServeOptions {
        backend: Backend::Shared(store.clone()),
        ..ServeOptions::for_tests()
    };
    let srv = start(opts()).await;
    let mut a = admin(srv.addr, None).await;
    seed(&mut a).await;
    for t in ["mallory"] {
        a.apply_tenant(apply_tenant(tenant(t))).await.unwrap();
        a.apply_vault(pb::ApplyVaultRequest {
            vault: Some(vault(t, "v")),
            expected_revision: String::new(),
        })
        .await
        .unwrap();
    }
    a.write_bindings(pb::WriteBindingsRequest {
        tenant: "acme".into(),
        vault: "docs".into(),
        upserts: vec![binding("ok", "user:alice", "reader")],
        ..Default::default()
    })
    .await
    .unwrap();
    srv.shutdown().await;

    // A binding record with a timestamp no RFC 3339 parser accepts, as the
    // poisoned write used to store.
    let bad = br#"{"id":"poison","tenant":"mallory","vault":"v","subject":"user:m","grant":{"role":"x"},"expires_at":"+10000-01-01T00:00:00Z"}"#;
    let mut record = vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    record.extend_from_slice(bad);
    {
        let mut tx = store.begin().unwrap();
        tx.set(&ks::binding("mallory", Some("v"), "poison"), &record);
        tx.commit().unwrap();
    }

    // The server starts and serves.
    let srv = start(opts()).await;
    let mut p = perm(srv.addr, None).await;
    assert!(is_allowed(&mut p, "user:alice", "documents:read", "document:x", None).await);
    let e = p
        .check_permission(check_req("mallory", "v", "user:m", "a", "r:x"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(e.get_details_error_info().unwrap().reason, "VAULT_QUARANTINED");
    let mut d = DiagnosticsServiceClient::new(channel(srv.addr).await);
    let info = d
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.quarantined.len(), 1);
    assert_eq!(
        (info.quarantined[0].tenant.as_str(), info.quarantined[0].vault.as_str()),
        ("mallory", "v")
    );
    assert_eq!(info.quarantined[0].objects, ["binding poison"]);

    // Deleting the record repairs the vault.
    let mut a = admin(srv.addr, None).await;
    let w = a
        .write_bindings(pb::WriteBindingsRequest {
            tenant: "mallory".into(),
            vault: "v".into(),
            deletes: vec!["poison".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.deleted, 1);
    let mut r = check_req("mallory", "v", "user:m", "a", "r:x");
    r.consistency = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(w.written_at)),
    });
    let r = p.check_permission(r).await.unwrap().into_inner();
    assert_eq!(r.reason, pb::Reason::NoMatch as i32);
    let info = d
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.quarantined.is_empty());
    srv.shutdown().await;
}

/// Responses larger than a TCP segment used to wait 40 ms for the client's
/// delayed ACK (Nagle's algorithm on the accepted sockets). Twenty 2 KB
/// echoes take a few milliseconds now; with the stall they took 800 ms.
#[tokio::test]
async fn large_responses_are_not_held_back_by_nagle() {
    let srv = start(ServeOptions::for_tests()).await;
    let mut d = DiagnosticsServiceClient::new(channel(srv.addr).await);
    let payload = vec![7u8; 2000];
    d.echo(pb::EchoRequest {
        payload: payload.clone(),
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    for _ in 0..20 {
        let r = d
            .echo(pb::EchoRequest {
                payload: payload.clone(),
            })
            .await
            .unwrap();
        assert_eq!(r.into_inner().payload.len(), 2000);
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(400),
        "20 echoes of 2 KB took {took:?}: responses wait for delayed ACKs"
    );
    srv.shutdown().await;
}

fn cond_role(condition: &str) -> pb::ApplyRoleRequest {
    let mut st = allow(&["documents:read"], &["document:*"]);
    st.condition = condition.into();
    pb::ApplyRoleRequest {
        role: Some(role("acme", "", "reader", vec![st])),
        expected_revision: String::new(),
    }
}

fn list(items: impl IntoIterator<Item = String>) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::ListValue(prost_types::ListValue {
            values: items
                .into_iter()
                .map(|s| prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(s)),
                })
                .collect(),
        })),
    }
}

fn ctx_with(key: &str, v: prost_types::Value) -> prost_types::Struct {
    prost_types::Struct {
        fields: [(key.to_string(), v)].into_iter().collect(),
    }
}

#[tokio::test]
async fn conditions_are_bounded_when_written_and_when_checked() {
    let srv = start(ServeOptions::for_tests()).await;
    let mut a = admin(srv.addr, None).await;
    seed(&mut a).await;
    let mut p = perm(srv.addr, None).await;

    // The original condition: four nested `all` over a 56-element list.
    let xs: Vec<String> = (0..56).map(|i| i.to_string()).collect();
    let l = format!("[{}]", xs.join(","));
    let dos = format!("{l}.all(a, {l}.all(b, {l}.all(c, {l}.all(d, a + b + c + d >= 0))))");
    let e = a.apply_role(cond_role(&dos)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("statements[0].condition"), "{}", e.message());
    assert!(e.message().contains("nested 4 deep"), "{}", e.message());
    // Three deep over context lists: too costly for a full-size context.
    let e = a
        .apply_role(cond_role(
            "context.xs.all(a, context.xs.all(b, context.xs.all(c, a != b || b != c)))",
        ))
        .await
        .unwrap_err();
    assert!(e.message().contains("evaluation steps"), "{}", e.message());
    // A bad regular expression literal is refused when written.
    let e = a.apply_role(cond_role("subject.matches('(')")).await.unwrap_err();
    assert!(e.message().contains("invalid regular expression"), "{}", e.message());

    // Two deep over the context is accepted; a full-size context exhausts
    // the budget and fails closed, a small one is decided.
    let w = a
        .apply_role(cond_role("context.xs.all(a, context.xs.all(b, a == b || a != b))"))
        .await
        .unwrap()
        .into_inner();
    a.write_bindings(pb::WriteBindingsRequest {
        tenant: "acme".into(),
        vault: "docs".into(),
        upserts: vec![binding("c", "user:carol", "reader")],
        ..Default::default()
    })
    .await
    .unwrap();
    let check = |xs: usize| {
        let mut r = check_req("acme", "docs", "user:carol", "documents:read", "document:x");
        r.explain = true;
        r.context = Some(ctx_with("xs", list((0..xs).map(|i| format!("item-{i}")))));
        r.consistency = Some(pb::Consistency {
            requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
        });
        r
    };
    let _ = w;
    let small = p.check_permission(check(3)).await.unwrap().into_inner();
    assert_eq!(small.decision, pb::Decision::Allowed as i32);
    let big = p.check_permission(check(256)).await.unwrap().into_inner();
    assert_eq!(big.decision, pb::Decision::Denied as i32);
    let entry = &big.explanation.unwrap().entries[0];
    assert_eq!(entry.outcome, pb::EntryOutcome::ConditionError as i32);
    assert!(entry.message.contains("evaluation budget"), "{}", entry.message);

    // Context limits, with the path of the offending value.
    let e = p.check_permission(check(300)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("context.xs"), "{}", e.message());
    srv.shutdown().await;
}

/// A flood of the most expensive checks allowed must not delay others:
/// they run on the bounded pool, and Echo on another connection answers
/// at once throughout. (It used to wait up to 60 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_checks_do_not_delay_other_requests() {
    let srv = start(ServeOptions::for_tests()).await;
    let mut a = admin(srv.addr, None).await;
    seed(&mut a).await;
    a.apply_role(cond_role("context.xs.all(a, context.xs.all(b, a == b || a != b))"))
        .await
        .unwrap();
    let w = a
        .write_bindings(pb::WriteBindingsRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            upserts: vec![binding("c", "user:carol", "reader")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut r = check_req("acme", "docs", "user:carol", "documents:read", "document:x");
    r.context = Some(ctx_with("xs", list((0..256).map(|i| format!("item-{i}")))));
    r.consistency = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(w.written_at)),
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..16 {
        let (mut p, r, stop) = (perm(srv.addr, None).await, r.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Decided (fail closed) or shed with RESOURCE_EXHAUSTED.
                match p.check_permission(r.clone()).await {
                    Ok(resp) => assert_eq!(resp.into_inner().decision, pb::Decision::Denied as i32),
                    Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}"),
                }
                n += 1;
            }
            n
        }));
    }
    let mut d = DiagnosticsServiceClient::new(channel(srv.addr).await);
    let mut worst = Duration::ZERO;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        let t = Instant::now();
        d.echo(pb::EchoRequest { payload: vec![1; 16] }).await.unwrap();
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut checks = 0;
    for f in flood {
        checks += f.await.unwrap();
    }
    assert!(checks > 16, "the flood ran ({checks} checks)");
    assert!(
        worst < Duration::from_millis(500),
        "an Echo waited {worst:?} behind expensive checks"
    );
    srv.shutdown().await;
}

/// Sends raw bytes as a request body, whatever they decode to.
#[derive(Clone, Default)]
struct Raw;
struct RawCoder;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

impl tonic::codec::Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}

async fn raw_call(addr: std::net::SocketAddr, path: &'static str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .expect_err("a malformed request is refused")
}

fn nested_struct(depth: usize) -> prost_types::Struct {
    let mut s = prost_types::Struct::default();
    for _ in 0..depth {
        s = ctx_with(
            "x",
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(s)),
            },
        );
    }
    s
}

#[tokio::test]
async fn malformed_and_oversized_messages_are_the_callers_error() {
    let srv = start(ServeOptions::for_tests()).await;
    const CHECK: &str = "/portcullis.v1.PermissionService/CheckPermission";
    let deep = prost::Message::encode_to_vec(&pb::CheckPermissionRequest {
        context: Some(nested_struct(40)),
        ..check_req("acme", "docs", "user:a", "a", "r:x")
    });
    for (what, body) in [
        ("invalid UTF-8 in a string field", vec![0x0a, 0x02, 0xff, 0xfe]),
        ("random bytes", vec![0xff; 10]),
        ("a Struct nested 40 deep", deep),
    ] {
        let e = raw_call(srv.addr, CHECK, body).await;
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert_eq!(
            e.get_details_error_info().unwrap().reason,
            "MALFORMED_REQUEST",
            "{what}"
        );
    }
    // Within the decoder's depth but past the context's: the field is named.
    let mut p = perm(srv.addr, None).await;
    let e = p
        .check_permission(pb::CheckPermissionRequest {
            context: Some(nested_struct(12)),
            ..check_req("acme", "docs", "user:a", "a", "r:x")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("context.x.x"), "{}", e.message());
    // Over the message size limit.
    let big = prost::Message::encode_to_vec(&pb::CheckPermissionRequest {
        resource: "r:".to_string() + &"x".repeat(5 << 20),
        ..check_req("acme", "docs", "user:a", "a", "r:x")
    });
    let e = raw_call(srv.addr, CHECK, big).await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    srv.shutdown().await;
}

fn fat_bindings(prefix: &str, n: usize) -> Vec<pb::Binding> {
    (0..n)
        .map(|i| {
            let mut b = binding(&format!("{prefix}-{i}"), "user:w", "reader");
            b.labels.insert("padding".into(), "p".repeat(900));
            b
        })
        .collect()
}

#[tokio::test]
async fn watch_streams_are_bounded_in_number_size_and_patience() {
    let srv = start(ServeOptions {
        watch: portcullis::api::watch::WatchLimits {
            max_streams: 100,
            max_streams_per_key: 2,
            send_timeout: Duration::from_millis(300),
        },
        ..ServeOptions::for_tests()
    })
    .await;
    let mut a = admin(srv.addr, None).await;
    let start_rev = seed(&mut a).await;
    let mut w = portcullis_proto::v1::watch_service_client::WatchServiceClient::new(channel(srv.addr).await);
    let req = |after: &str| pb::WatchRequest {
        tenant: "acme".into(),
        vault: "docs".into(),
        after_revision: after.into(),
    };
    let s1 = w.watch(req(&start_rev)).await.unwrap().into_inner();
    let s2 = w.watch(req(&start_rev)).await.unwrap().into_inner();
    let e = w.watch(req(&start_rev)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(e.get_details_error_info().unwrap().reason, "WATCH_STREAMS_EXHAUSTED");
    assert!(e.get_details_retry_info().is_some());
    drop(s2);
    let mut s3 = None;
    for _ in 0..100 {
        match w.watch(req(&start_rev)).await {
            Ok(s) => {
                s3 = Some(s.into_inner());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut s3 = s3.expect("a closed stream frees its slot");

    // One commit of ~1 MB arrives as several messages of one revision.
    let w1 = a
        .write_bindings(pb::WriteBindingsRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            upserts: fat_bindings("big", 600),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut parts = Vec::new();
    while let Some(m) = tokio_stream::StreamExt::next(&mut s3).await {
        let m = m.unwrap();
        let more = m.more;
        assert_eq!(m.revision, w1.written_at);
        assert!(
            prost::Message::encoded_len(&m) < 300 * 1024,
            "{}",
            prost::Message::encoded_len(&m)
        );
        parts.push(m.changes.len());
        if !more {
            break;
        }
    }
    assert!(parts.len() > 1, "{parts:?}");
    assert_eq!(parts.iter().sum::<usize>(), 600);

    // s1 has not read anything: after more writes it is ended, resumably.
    let mut last = String::new();
    for i in 0..8 {
        last = a
            .write_bindings(pb::WriteBindingsRequest {
                tenant: "acme".into(),
                vault: "docs".into(),
                upserts: fat_bindings(&format!("more{i}"), 500),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .written_at;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut s1 = s1;
    let mut resume = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline.into(), tokio_stream::StreamExt::next(&mut s1)).await {
        match m {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), Code::Aborted, "{e:?}");
                let info = e.get_details_error_info().unwrap();
                assert_eq!(info.reason, "WATCH_FELL_BEHIND");
                resume = info.metadata.get("resume_after").cloned();
                break;
            }
        }
    }
    let resume = resume.expect("the slow stream was ended with where to resume");
    // Resuming from there reaches the last write.
    let mut s4 = w.watch(req(&resume)).await.unwrap().into_inner();
    loop {
        let m = tokio_stream::StreamExt::next(&mut s4).await.unwrap().unwrap();
        if m.revision == last && !m.more {
            break;
        }
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn rate_limits_per_tenant_subtree_and_per_key() {
    let keys = Keys::parse(&format!(
        "keys:\n  - name: root\n    sha256: {}\n    scopes: [admin, check]\n  - name: slow\n    sha256: {}\n    scopes: [check]\n    rate_limit: 5\n",
        Keys::hash(ROOT),
        Keys::hash("slow-secret")
    ))
    .unwrap();
    let srv = start(ServeOptions {
        keys,
        ..ServeOptions::for_tests()
    })
    .await;
    let mut a = admin(srv.addr, Some(ROOT)).await;
    for (t, checks) in [("noisy", 20), ("noisy/child", 0), ("quiet", 0)] {
        let w = a
            .apply_tenant(apply_tenant(pb::Tenant {
                limits: Some(pb::Limits {
                    max_checks_per_second: checks,
                    ..Default::default()
                }),
                ..tenant(t)
            }))
            .await
            .unwrap();
        let _ = w;
        a.apply_vault(pb::ApplyVaultRequest {
            vault: Some(vault(t, "v")),
            expected_revision: String::new(),
        })
        .await
        .unwrap();
    }
    let mut p = perm(srv.addr, Some(ROOT)).await;
    let fresh = |t: &str| {
        let mut r = check_req(t, "v", "user:u", "a", "r:x");
        r.consistency = Some(pb::Consistency {
            requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
        });
        r
    };
    p.check_permission(fresh("quiet")).await.unwrap();
    // The child shares its parent's bucket: 100 checks of the subtree in a
    // burst get about 20 through; the sibling is untouched.
    let (mut ok, mut refused) = (0, 0);
    for i in 0..100 {
        let t = if i % 2 == 0 { "noisy" } else { "noisy/child" };
        match p.check_permission(check_req(t, "v", "user:u", "a", "r:x")).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                let info = e.get_details_error_info().unwrap();
                assert_eq!(info.reason, "RATE_LIMITED");
                assert_eq!(info.metadata["limit"], "limits.max_checks_per_second");
                assert_eq!(info.metadata["subject"], "tenant noisy");
                assert!(e.get_details_retry_info().is_some());
                refused += 1;
            }
        }
        // The sibling is never slowed or refused.
        p.check_permission(check_req("quiet", "v", "user:u", "a", "r:x"))
            .await
            .expect("a sibling of a noisy tenant is served");
    }
    assert!(refused > 50 && ok >= 19, "ok {ok}, refused {refused}");

    // A key's own rate limit, over every RPC it makes.
    let mut slow = perm(srv.addr, Some("slow-secret")).await;
    let mut limited = 0;
    for _ in 0..20 {
        if let Err(e) = slow
            .check_permission(check_req("quiet", "v", "user:u", "a", "r:x"))
            .await
        {
            assert_eq!(e.code(), Code::ResourceExhausted);
            assert_eq!(e.get_details_error_info().unwrap().metadata["limit"], "rate_limit");
            limited += 1;
        }
    }
    assert!(limited >= 10, "{limited} of 20 refused");
    srv.shutdown().await;
}

/// A memory store whose feed reads fail while `broken` is set: an index
/// that cannot follow the store.
struct StuckFeed {
    inner: portcullis::store::memory::MemoryStore,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

struct StuckTx<'a> {
    inner: Box<dyn portcullis::store::Transaction + 'a>,
    broken: bool,
}

impl portcullis::store::Transaction for StuckTx<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, portcullis::store::StoreError> {
        self.inner.get(key)
    }
    fn range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        opts: portcullis::store::RangeOpts,
    ) -> Result<Vec<portcullis::store::KeyValue>, portcullis::store::StoreError> {
        if self.broken && begin.starts_with(&ks::feed()) {
            return Err(portcullis::store::StoreError::Unavailable(
                "feed unreadable (test)".into(),
            ));
        }
        self.inner.range(begin, end, opts)
    }
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.inner.set(key, value)
    }
    fn clear(&mut self, key: &[u8]) {
        self.inner.clear(key)
    }
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), portcullis::store::StoreError> {
        self.inner.clear_range(begin, end)
    }
    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.inner.atomic_add(key, delta)
    }
    fn set_versionstamped_key(&mut self, key: Vec<u8>, offset: usize, value: &[u8]) {
        self.inner.set_versionstamped_key(key, offset, value)
    }
    fn set_versionstamped_value(&mut self, key: &[u8], value: Vec<u8>, offset: usize) {
        self.inner.set_versionstamped_value(key, value, offset)
    }
    fn read_version(&mut self) -> Result<u64, portcullis::store::StoreError> {
        self.inner.read_version()
    }
    fn commit(self: Box<Self>) -> Result<u64, portcullis::store::StoreError> {
        self.inner.commit()
    }
}

impl Store for StuckFeed {
    fn begin(&self) -> Result<Box<dyn portcullis::store::Transaction + '_>, portcullis::store::StoreError> {
        Ok(Box::new(StuckTx {
            inner: self.inner.begin()?,
            broken: self.broken.load(std::sync::atomic::Ordering::SeqCst),
        }))
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe()
    }
    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[tokio::test]
async fn health_is_not_serving_while_the_index_is_stuck_behind_the_store() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store: Arc<dyn Store> = Arc::new(StuckFeed {
        inner: portcullis::store::memory::MemoryStore::new(),
        broken: broken.clone(),
    });
    let srv = start(ServeOptions {
        backend: Backend::Shared(store.clone()),
        max_index_lag: Duration::from_millis(500),
        ..ServeOptions::for_tests()
    })
    .await;
    let h = tonic_health::pb::health_client::HealthClient::new(channel(srv.addr).await);
    let status = |h: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    let wait_for = |want: ServingStatus| {
        let mut h = h.clone();
        async move {
            let t0 = Instant::now();
            while status(&mut h).await != want as i32 {
                assert!(t0.elapsed() < Duration::from_secs(10), "health never became {want:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(status(&mut h.clone()).await, ServingStatus::Serving as i32);
    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let repo = portcullis::repo::Repo::new(store.clone());
    tokio::task::spawn_blocking(move || {
        repo.apply_tenant(
            &portcullis::audit::Actor::new("test", "apply_tenant"),
            portcullis::engine::model::Tenant::new(portcullis::engine::TenantId::parse("late").unwrap()),
            None,
            None,
        )
        .unwrap()
    })
    .await
    .unwrap();
    wait_for(ServingStatus::NotServing).await;
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_for(ServingStatus::Serving).await;
    srv.shutdown().await;
}

/// ApplyRole with 100,000 invalid `inherits` names used to answer ~10 MB of
/// message and 24 MB of details, which a default client cannot even read.
#[tokio::test]
async fn errors_stay_small_whatever_the_request() {
    let srv = start(ServeOptions::for_tests()).await;
    let mut a = admin(srv.addr, None).await;
    seed(&mut a).await;
    let mut r = role("acme", "", "big", vec![allow(&["a"], &["*"])]);
    r.inherits = (0..100_000).map(|i| format!("Not A Name {i}")).collect();
    let e = a
        .apply_role(pb::ApplyRoleRequest {
            role: Some(r),
            expected_revision: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().len() <= 4096, "{}", e.message().len());
    assert!(e.details().len() <= 16 * 1024, "{}", e.details().len());
    assert!(
        e.message().ends_with(" more"),
        "{}",
        &e.message()[e.message().len() - 60..]
    );
    let v = e.get_details_bad_request().unwrap().field_violations;
    assert!(!v.is_empty() && v.len() <= 32);
    assert_eq!(v[0].field, "role.inherits[0]");
    srv.shutdown().await;
}
