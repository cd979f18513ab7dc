//! The service end to end: a real server on an ephemeral port, the
//! generated clients, every RPC and every error code.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use portcullis::api::auth::Keys;
use portcullis::server::ServeOptions;
use portcullis::store::Backend;
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::diagnostics_service_client::DiagnosticsServiceClient;
use portcullis_proto::v1::watch_service_client::WatchServiceClient;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

fn apply_tenant(t: pb::Tenant) -> pb::ApplyTenantRequest {
    pb::ApplyTenantRequest {
        tenant: Some(t),
        expected_revision: String::new(),
    }
}

fn write_b(upserts: Vec<pb::Binding>, deletes: Vec<&str>) -> pb::WriteBindingsRequest {
    pb::WriteBindingsRequest {
        tenant: "acme".into(),
        vault: "docs".into(),
        upserts,
        deletes: deletes.into_iter().map(str::to_string).collect(),
        replace_source: 0,
    }
}

#[tokio::test]
async fn check_lookup_and_admin_rpcs() {
    let srv = start(ServeOptions::for_tests()).await;
    let mut a = admin(srv.addr, None).await;
    let mut p = perm(srv.addr, None).await;
    seed(&mut a).await;

    // Bindings and memberships.
    let w = a
        .write_memberships(pb::WriteMembershipsRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            upserts: vec![pb::Membership {
                group: "group:eng".into(),
                member: "user:alice".into(),
                ..Default::default()
            }],
            deletes: vec![],
            replace_source: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.upserted, 1);
    let mut scoped = binding("b1", "group:eng", "reader");
    scoped.scope = vec!["document:eng/*".into()];
    let w = a
        .write_bindings(write_b(vec![scoped, binding("b2", "user:bob", "reader")], vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w.upserted, w.deleted), (2, 0));

    // CheckPermission with an explanation.
    let mut req = check_req("acme", "docs", "user:alice", "documents:read", "document:eng/x");
    req.explain = true;
    req.consistency = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(w.written_at.clone())),
    });
    let r = p.check_permission(req).await.unwrap().into_inner();
    assert_eq!(r.decision, pb::Decision::Allowed as i32);
    assert_eq!(r.reason, pb::Reason::Allowed as i32);
    assert!(!r.checked_at.is_empty());
    let e = &r.explanation.unwrap().entries[0];
    assert_eq!((e.binding_id.as_str(), e.role.as_str()), ("b1", "reader"));
    assert_eq!(e.group_path, vec!["user:alice", "group:eng"]);
    assert!(!is_allowed(&mut p, "user:alice", "documents:read", "document:hr/x", None).await);
    let r = p
        .check_permission(check_req(
            "acme",
            "docs",
            "user:alice",
            "documents:write",
            "document:eng/x",
        ))
        .await
        .unwrap();
    assert_eq!(r.into_inner().reason, pb::Reason::NoMatch as i32);

    // Bulk: each item answered or failed on its own.
    let bulk = p
        .check_bulk_permissions(pb::CheckBulkPermissionsRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            items: vec![
                pb::BulkCheckItem {
                    subject: "user:bob".into(),
                    action: "documents:read".into(),
                    resource: "document:x".into(),
                    context: None,
                },
                pb::BulkCheckItem {
                    subject: "bob".into(),
                    action: "documents:read".into(),
                    resource: "document:x".into(),
                    context: None,
                },
            ],
            consistency: None,
            explain: false,
        })
        .await
        .unwrap()
        .into_inner();
    match &bulk.results[0].result {
        Some(pb::bulk_check_result::Result::Response(r)) => assert_eq!(r.decision, pb::Decision::Allowed as i32),
        other => panic!("{other:?}"),
    }
    match &bulk.results[1].result {
        Some(pb::bulk_check_result::Result::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert_eq!(e.violations[0].field, "items[1].subject");
        }
        other => panic!("{other:?}"),
    }

    // Lookups.
    let lr = p
        .lookup_resources(pb::LookupResourcesRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            subject: "user:alice".into(),
            action: "documents:read".into(),
            consistency: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lr.grants.len(), 1);
    assert_eq!(lr.grants[0].scope, vec!["document:eng/*"]);
    let ls = p
        .lookup_subjects(pb::LookupSubjectsRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            action: "documents:read".into(),
            resource: "document:eng/x".into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ls.subjects.iter().map(|s| s.subject.as_str()).collect::<Vec<_>>(),
        ["group:eng", "user:alice"]
    );
    let ls2 = p
        .lookup_subjects(pb::LookupSubjectsRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            action: "documents:read".into(),
            resource: "document:eng/x".into(),
            page_size: 2,
            page_token: ls.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ls2.subjects.iter().map(|s| s.subject.as_str()).collect::<Vec<_>>(),
        ["user:bob"]
    );
    assert!(ls2.next_page_token.is_empty());
    let eff = p
        .get_effective_permissions(pb::GetEffectivePermissionsRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            subject: "user:alice".into(),
            consistency: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(eff.statements.len(), 1);
    assert_eq!(eff.statements[0].group_path, vec!["user:alice", "group:eng"]);

    // Reads and lists.
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
            bindings: 2
        }
    );
    assert!(!t.revision.is_empty());
    let vs = a
        .list_vaults(pb::ListVaultsRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vs.vaults.len(), 1);
    a.get_vault(pb::GetVaultRequest {
        tenant: "acme".into(),
        name: "docs".into(),
    })
    .await
    .unwrap();
    a.get_role(pb::GetRoleRequest {
        tenant: "acme".into(),
        vault: String::new(),
        name: "reader".into(),
    })
    .await
    .unwrap();
    let rs = a
        .list_roles(pb::ListRolesRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rs.roles.len(), 1);
    let bs = a
        .list_bindings(pb::ListBindingsRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            subject: "user:bob".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bs.bindings.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["b2"]);
    let ms = a
        .list_memberships(pb::ListMembershipsRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            member: "user:alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ms.memberships.len(), 1);
    for i in 0..3 {
        a.apply_tenant(apply_tenant(tenant(&format!("acme/t{i}"))))
            .await
            .unwrap();
    }
    let page = a
        .list_tenants(pb::ListTenantsRequest {
            under: "acme".into(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.tenants.len(), 2);
    let page2 = a
        .list_tenants(pb::ListTenantsRequest {
            under: "acme".into(),
            page_size: 2,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.tenants.len(), 2);
    assert!(page2.next_page_token.is_empty());

    // Apply is idempotent; expected_revision makes it conditional.
    let again = a
        .apply_tenant(apply_tenant(tenant("acme/t0")))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    let stale = a
        .apply_tenant(pb::ApplyTenantRequest {
            tenant: Some(pb::Tenant {
                display_name: "x".into(),
                ..tenant("acme/t0")
            }),
            expected_revision: "v1.0000000000000001".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let exists = a
        .apply_tenant(pb::ApplyTenantRequest {
            tenant: Some(tenant("acme/t0")),
            expected_revision: "0".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(exists.code(), Code::AlreadyExists);
    let ok = a
        .apply_tenant(pb::ApplyTenantRequest {
            tenant: Some(pb::Tenant {
                display_name: "T0".into(),
                ..tenant("acme/t0")
            }),
            expected_revision: again.revision,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.changed);

    // Deletes.
    let d = a
        .write_bindings(write_b(vec![], vec!["b2", "never-existed"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted, 1, "deleting what is absent succeeds");
    assert!(!is_allowed(&mut p, "user:bob", "documents:read", "document:x", Some(&d.written_at)).await);
    a.delete_role(pb::DeleteRoleRequest {
        tenant: "acme".into(),
        vault: String::new(),
        name: "reader".into(),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    a.delete_tenant(pb::DeleteTenantRequest {
        id: "acme/t2".into(),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    let dv = a
        .delete_vault(pb::DeleteVaultRequest {
            tenant: "acme".into(),
            name: "docs".into(),
            expected_revision: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut r = check_req("acme", "docs", "user:alice", "documents:read", "document:eng/x");
    r.consistency = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(dv.revision)),
    });
    assert_eq!(p.check_permission(r).await.unwrap_err().code(), Code::NotFound);

    // Diagnostics.
    let mut d = DiagnosticsServiceClient::new(channel(srv.addr).await);
    let info = d
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.store_backend, "memory");
    assert!(!info.store_id.is_empty());
    let echo = d
        .echo(pb::EchoRequest {
            payload: b"hi".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echo.payload, b"hi");
    srv.shutdown().await;
}

/// A subject reached by more statements than a page holds: the pages list
/// each exactly once, in order, and continue past a binding deleted
/// between pages; a token that is not one is refused by field.
#[tokio::test]
async fn effective_permissions_are_paged() {
    let srv = start(ServeOptions::for_tests()).await;
    let mut a = admin(srv.addr, None).await;
    let mut p = perm(srv.addr, None).await;
    seed(&mut a).await;
    // The reader role has one statement: 25 bindings to alice directly and
    // through a group.
    let mut bs: Vec<pb::Binding> = (0..20)
        .map(|i| binding(&format!("b{i:02}"), "user:alice", "reader"))
        .collect();
    bs.extend((0..5).map(|i| binding(&format!("g{i}"), "group:eng", "reader")));
    a.write_bindings(write_b(bs, vec![])).await.unwrap();
    let written = a
        .write_memberships(pb::WriteMembershipsRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            upserts: vec![pb::Membership {
                tenant: "acme".into(),
                vault: "docs".into(),
                group: "group:eng".into(),
                member: "user:alice".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .written_at;
    let req = |token: String| pb::GetEffectivePermissionsRequest {
        tenant: "acme".into(),
        vault: "docs".into(),
        subject: "user:alice".into(),
        consistency: Some(pb::Consistency {
            requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(written.clone())),
        }),
        page_size: 10,
        page_token: token,
    };
    let first = p
        .get_effective_permissions(req(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.statements.len(), 10);
    // Between pages, delete a binding not yet listed.
    a.write_bindings(write_b(vec![], vec!["b15"])).await.unwrap();
    let mut listed: Vec<(String, String)> = first
        .statements
        .iter()
        .map(|s| (s.principal.clone(), s.binding_id.clone()))
        .collect();
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = p.get_effective_permissions(req(token)).await.unwrap().into_inner();
        assert!(page.statements.len() <= 10);
        listed.extend(
            page.statements
                .iter()
                .map(|s| (s.principal.clone(), s.binding_id.clone())),
        );
        token = page.next_page_token;
    }
    let mut want: Vec<(String, String)> = (0..5).map(|i| ("group:eng".to_string(), format!("g{i}"))).collect();
    want.extend(
        (0..20)
            .filter(|&i| i != 15)
            .map(|i| ("user:alice".to_string(), format!("b{i:02}"))),
    );
    assert_eq!(listed, want, "each statement once, by principal then binding");

    let e = p
        .get_effective_permissions(req("not-a-token".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let v = e.get_details_bad_request().unwrap().field_violations;
    assert_eq!(v[0].field, "page_token", "{v:?}");
    srv.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_field_violations_and_the_right_codes() {
    let mut opts = ServeOptions::for_tests();
    opts.consistency_wait = Duration::from_millis(200);
    let srv = start(opts).await;
    let mut a = admin(srv.addr, None).await;
    let mut p = perm(srv.addr, None).await;
    seed(&mut a).await;

    let e = p
        .check_permission(check_req("acme", "docs", "alice", "documents:*", "document:x"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let br = e.get_details_bad_request().expect("BadRequest details");
    let fields: Vec<&str> = br.field_violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["subject", "action"]);
    assert!(br.field_violations[1].description.contains("wildcards"));

    let e = p
        .check_permission(check_req("Acme!", "docs", "user:a", "a:b", "r"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.get_details_bad_request().unwrap().field_violations[0].field, "tenant");
    let e = p
        .check_permission(check_req("nope", "docs", "user:a", "a:b", "r"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = p
        .check_permission(check_req("acme", "nope", "user:a", "a:b", "r"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // A role with a bad pattern and a condition that does not compile.
    let mut bad = role("acme", "", "broken", vec![allow(&["bad action"], &[])]);
    bad.statements.push(pb::Statement {
        condition: "subject ==".into(),
        ..allow(&["a:b"], &[])
    });
    let e = a
        .apply_role(pb::ApplyRoleRequest {
            role: Some(bad),
            expected_revision: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let fields: Vec<String> = e
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert!(
        fields.contains(&"role.statements[0].actions[0]".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"role.statements[1].condition".to_string()),
        "{fields:?}"
    );
    assert!(e.message().contains("line 1"), "{}", e.message());

    // Inheritance cycles are rejected at write time.
    a.apply_role(pb::ApplyRoleRequest {
        role: Some(pb::Role {
            inherits: vec!["reader".into()],
            ..role("acme", "", "writer", vec![allow(&["documents:write"], &[])])
        }),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    let e = a
        .apply_role(pb::ApplyRoleRequest {
            role: Some(pb::Role {
                inherits: vec!["writer".into()],
                ..role("acme", "", "reader", vec![allow(&["documents:read"], &[])])
            }),
            expected_revision: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("inheritance cycle"), "{}", e.message());

    // Parents first; dependents block deletes.
    let e = a.apply_tenant(apply_tenant(tenant("ghost/child"))).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = a
        .delete_tenant(pb::DeleteTenantRequest {
            id: "acme".into(),
            expected_revision: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("vault docs"), "{}", e.message());
    let e = a
        .delete_tenant(pb::DeleteTenantRequest {
            id: "nope".into(),
            expected_revision: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Limits.
    a.apply_tenant(apply_tenant(pb::Tenant {
        limits: Some(pb::Limits {
            max_vaults: 1,
            max_roles: 0,
            max_bindings: 2,
            ..Default::default()
        }),
        ..tenant("acme")
    }))
    .await
    .unwrap();
    let e = a
        .apply_vault(pb::ApplyVaultRequest {
            vault: Some(vault("acme", "second")),
            expected_revision: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("max_vaults"), "{}", e.message());
    let three = vec![
        binding("x1", "user:a", "reader"),
        binding("x2", "user:b", "reader"),
        binding("x3", "user:c", "reader"),
    ];
    let e = a.write_bindings(write_b(three, vec![])).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let too_many: Vec<pb::Binding> = (0..1001)
        .map(|i| binding(&format!("y{i}"), "user:a", "reader"))
        .collect();
    let e = a.write_bindings(write_b(too_many, vec![])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Binding validation, with field paths.
    let mut b = binding("", "nobody", "");
    b.scope = vec![String::new()];
    let e = a.write_bindings(write_b(vec![b], vec![])).await.unwrap_err();
    let fields: Vec<String> = e
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert!(fields.contains(&"upserts[0].subject".to_string()), "{fields:?}");
    assert!(fields.contains(&"upserts[0].role".to_string()), "{fields:?}");

    // A token ahead of anything the store committed was never issued: it
    // fails at once, never with a stale answer.
    let mut r = check_req("acme", "docs", "user:a", "documents:read", "document:x");
    r.consistency = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(
            "v1.00ffffffffffffff".into(),
        )),
    });
    let t0 = std::time::Instant::now();
    let e = p.check_permission(r.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.get_details_error_info().unwrap().reason, "REVISION_AHEAD");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "answered without waiting out the 5 s"
    );
    r.consistency = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh("garbage".into())),
    });
    assert_eq!(p.check_permission(r).await.unwrap_err().code(), Code::InvalidArgument);
    srv.shutdown().await;
}

#[tokio::test]
async fn authentication_scopes_and_tenant_confinement() {
    let keys = format!(
        "keys:\n  - name: root\n    sha256: {}\n    scopes: [admin, check, watch]\n  - name: checker\n    sha256: {}\n    scopes: [check]\n  - name: eng\n    sha256: {}\n    scopes: [admin, check]\n    tenants: [acme/eng]\n",
        Keys::hash("root-secret"),
        Keys::hash("check-secret"),
        Keys::hash("eng-secret")
    );
    let mut opts = ServeOptions::for_tests();
    opts.keys = Keys::parse(&keys).unwrap();
    let srv = start(opts).await;
    let mut root = admin(srv.addr, Some("root-secret")).await;
    seed(&mut root).await;
    root.apply_tenant(apply_tenant(tenant("acme/eng"))).await.unwrap();
    root.apply_vault(pb::ApplyVaultRequest {
        vault: Some(vault("acme/eng", "wiki")),
        expected_revision: String::new(),
    })
    .await
    .unwrap();

    let req = || check_req("acme", "docs", "user:a", "documents:read", "document:x");
    assert_eq!(
        perm(srv.addr, None)
            .await
            .check_permission(req())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        perm(srv.addr, Some("wrong"))
            .await
            .check_permission(req())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    perm(srv.addr, Some("check-secret"))
        .await
        .check_permission(req())
        .await
        .unwrap();
    let e = admin(srv.addr, Some("check-secret"))
        .await
        .get_tenant(pb::GetTenantRequest { id: "acme".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "wrong scope");

    let mut eng = admin(srv.addr, Some("eng-secret")).await;
    eng.get_tenant(pb::GetTenantRequest { id: "acme/eng".into() })
        .await
        .unwrap();
    let e = eng
        .get_tenant(pb::GetTenantRequest { id: "acme".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "outside its subtree");
    let e = eng
        .apply_tenant(apply_tenant(tenant("acme/engineering")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = perm(srv.addr, Some("eng-secret"))
        .await
        .check_permission(req())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let listed = eng
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.tenants.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["acme/eng"]
    );
    let mut w = WatchServiceClient::with_interceptor(channel(srv.addr).await, bearer(Some("check-secret")));
    let e = w
        .watch(pb::WatchRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            after_revision: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // Health and reflection need no key.
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel(srv.addr).await);
    let s = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "portcullis.v1.PermissionService".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        s.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn refuses_to_serve_unauthenticated_off_loopback() {
    let mut opts = ServeOptions::for_tests();
    opts.listen = "0.0.0.0:0".parse().unwrap();
    let e = portcullis::server::start(opts).await.err().expect("refused");
    assert!(e.to_string().contains("loopback"), "{e}");
}

#[tokio::test]
async fn read_your_writes_under_concurrent_writers() {
    let srv = start(ServeOptions::for_tests()).await;
    let mut a = admin(srv.addr, None).await;
    seed(&mut a).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let addr = srv.addr;
        tasks.push(tokio::spawn(async move {
            let mut a = admin(addr, None).await;
            let mut p = perm(addr, None).await;
            for i in 0..25 {
                let subject = format!("user:w{w}-{i}");
                let t = a
                    .write_bindings(write_b(vec![binding(&format!("b{w}-{i}"), &subject, "reader")], vec![]))
                    .await
                    .unwrap()
                    .into_inner()
                    .written_at;
                assert!(
                    is_allowed(&mut p, &subject, "documents:read", "document:x", Some(&t)).await,
                    "{subject} sees its write"
                );
                let t = a
                    .write_bindings(write_b(vec![], vec![&format!("b{w}-{i}")]))
                    .await
                    .unwrap()
                    .into_inner()
                    .written_at;
                assert!(
                    !is_allowed(&mut p, &subject, "documents:read", "document:x", Some(&t)).await,
                    "{subject} sees its delete"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // fully_consistent sees everything committed.
    let mut p = perm(srv.addr, None).await;
    let t = a
        .write_bindings(write_b(vec![binding("last", "user:last", "reader")], vec![]))
        .await
        .unwrap();
    drop(t);
    let mut r = check_req("acme", "docs", "user:last", "documents:read", "document:x");
    r.consistency = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
    });
    assert_eq!(
        p.check_permission(r).await.unwrap().into_inner().decision,
        pb::Decision::Allowed as i32
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn watch_streams_changes_after_a_revision() {
    let srv = start(ServeOptions::for_tests()).await;
    let mut a = admin(srv.addr, None).await;
    let start_rev = seed(&mut a).await;
    let first = a
        .write_bindings(write_b(vec![binding("b1", "user:a", "reader")], vec![]))
        .await
        .unwrap()
        .into_inner();
    let mut w = WatchServiceClient::new(channel(srv.addr).await);
    let mut stream = w
        .watch(pb::WatchRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
            after_revision: start_rev.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(msg.revision, first.written_at);
    assert!(matches!(msg.changes[0].change, Some(pb::change::Change::PutBinding(ref b)) if b.id == "b1"));
    // Each commit says who made it, as the audit trail does.
    assert_eq!(
        (msg.actor.as_str(), msg.rpc.as_str(), msg.on_behalf_of.as_str()),
        ("anonymous", "WriteBindings", "")
    );
    // A later write arrives live.
    let second = a
        .write_bindings(write_b(vec![], vec!["b1"]))
        .await
        .unwrap()
        .into_inner();
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(msg.revision, second.written_at);
    assert!(matches!(msg.changes[0].change, Some(pb::change::Change::DeleteBinding(ref b)) if b.id == "b1"));
    // The whole tenant: tenant-level role writes show up too.
    let mut wt = w
        .watch(pb::WatchRequest {
            tenant: "acme".into(),
            vault: String::new(),
            after_revision: "v1.0000000000000000".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = BTreeSet::new();
    for _ in 0..4 {
        let m = tokio::time::timeout(Duration::from_secs(5), wt.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for c in m.changes {
            kinds.insert(match c.change.unwrap() {
                pb::change::Change::PutTenant(_) => "tenant",
                pb::change::Change::PutVault(_) => "vault",
                pb::change::Change::PutRole(_) => "role",
                pb::change::Change::PutBinding(_) | pb::change::Change::DeleteBinding(_) => "binding",
                _ => "other",
            });
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["binding", "role", "tenant", "vault"]
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn import_and_export_round_trip() {
    let srv = start(ServeOptions::for_tests()).await;
    let mut a = admin(srv.addr, None).await;
    seed(&mut a).await;
    let items: Vec<pb::ImportVaultRequest> = (0..1200)
        .map(|i| pb::ImportVaultRequest {
            tenant: if i == 0 { "acme".into() } else { String::new() },
            vault: if i == 0 { "docs".into() } else { String::new() },
            item: Some(if i % 100 == 0 {
                pb::import_vault_request::Item::Membership(pb::Membership {
                    group: "group:g".into(),
                    member: format!("user:u{i}"),
                    ..Default::default()
                })
            } else {
                pb::import_vault_request::Item::Binding(binding(&format!("i{i}"), &format!("user:u{i}"), "reader"))
            }),
        })
        .collect();
    let r = a.import_vault(tokio_stream::iter(items)).await.unwrap().into_inner();
    assert_eq!((r.bindings, r.memberships), (1188, 12));
    let mut p = perm(srv.addr, None).await;
    assert!(is_allowed(&mut p, "user:u7", "documents:read", "document:x", Some(&r.written_at)).await);
    let mut s = a
        .export_vault(pb::ExportVaultRequest {
            tenant: "acme".into(),
            vault: "docs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (mut b, mut m, mut v) = (0, 0, 0);
    while let Some(item) = s.next().await {
        match item.unwrap().item.unwrap() {
            pb::export_vault_response::Item::Binding(_) => b += 1,
            pb::export_vault_response::Item::Membership(_) => m += 1,
            pb::export_vault_response::Item::Vault(_) => v += 1,
            pb::export_vault_response::Item::Role(_) => {}
        }
    }
    assert_eq!((v, b, m), (1, 1188, 12));
    srv.shutdown().await;
}

#[tokio::test]
async fn embedded_store_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || {
        let mut o = ServeOptions::for_tests();
        o.backend = Backend::Embedded {
            dir: dir.path().to_path_buf(),
        };
        o
    };
    let srv = start(opts()).await;
    let mut a = admin(srv.addr, None).await;
    seed(&mut a).await;
    a.write_bindings(write_b(vec![binding("b1", "user:a", "reader")], vec![]))
        .await
        .unwrap();
    let id = DiagnosticsServiceClient::new(channel(srv.addr).await)
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .store_id;
    srv.shutdown().await;

    let srv = start(opts()).await;
    let mut p = perm(srv.addr, None).await;
    assert!(
        is_allowed(&mut p, "user:a", "documents:read", "document:x", None).await,
        "index rebuilt from disk"
    );
    let info = DiagnosticsServiceClient::new(channel(srv.addr).await)
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.store_id, id, "same store, same id");
    srv.shutdown().await;
}

#[tokio::test]
async fn metrics_are_exported() {
    let srv = start(ServeOptions::for_tests()).await;
    let mut a = admin(srv.addr, None).await;
    seed(&mut a).await;
    let mut p = perm(srv.addr, None).await;
    let _ = is_allowed(&mut p, "user:a", "documents:read", "document:x", None).await;
    let _ = p
        .check_permission(check_req("acme", "nope", "user:a", "a:b", "r"))
        .await;
    let body = http_get(srv.metrics_addr.unwrap(), "/metrics").await;
    assert!(body.contains(r#"grpc_server_handled_total{grpc_code="OK",grpc_method="CheckPermission",grpc_service="portcullis.v1.PermissionService"}"#), "{body}");
    assert!(body.contains(r#"grpc_code="NotFound",grpc_method="CheckPermission""#));
    assert!(body.contains(r#"portcullis_check_decisions_total{decision="DENIED",reason="NO_MATCH"}"#));
    assert!(body.contains("grpc_server_handling_seconds_bucket"));
    assert!(body.contains("portcullis_store_transactions_total"));
    assert!(body.contains("portcullis_index_revision_lag"));
    srv.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
