//! PlanChanges against a real server: object changes, violations all at
//! once, probes, and exactness: random plans over the example organisation
//! are applied, and the access impact each reported is exactly the
//! difference GetEffectivePermissions shows before and after, for every
//! subject, nested groups and ancestors' roles and bindings included.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use portcullis::server::ServeOptions;
use portcullis_client::{Client, Config, pb};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const T: &str = "acme/eng/platform";
const V: &str = "docs";
const SUBJECTS: &[&str] = &[
    "user:alice",
    "user:bob",
    "user:carol",
    "user:dave",
    "user:erin",
    "group:platform",
    "group:platform-oncall",
    "group:contractors",
    "group:eng",
];
const GROUPS: &[&str] = &[
    "group:platform",
    "group:platform-oncall",
    "group:contractors",
    "group:eng",
];
const ROLES: &[&str] = &["doc-reader", "doc-writer", "doc-admin"];

async fn setup() -> (portcullis::server::Running, Client) {
    let srv = common::start(ServeOptions::for_tests()).await;
    let client = Config::new(format!("http://{}", srv.addr)).connect().await.unwrap();
    let docs = portcullis::manifest::parse_documents(include_str!("../examples/acme.yaml")).unwrap();
    client
        .apply(&portcullis::manifest::writes_of(&docs).unwrap())
        .await
        .unwrap();
    // An ancestor's tenant-wide binding and membership reach the vault too.
    client
        .write_memberships(pb::WriteMembershipsRequest {
            tenant: "acme/eng".into(),
            upserts: vec![pb::Membership {
                group: "group:eng".into(),
                member: "user:erin".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .write_bindings(pb::WriteBindingsRequest {
            tenant: "acme/eng".into(),
            upserts: vec![pb::Binding {
                id: "eng-readers".into(),
                subject: "group:eng".into(),
                role: "doc-reader".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    (srv, client)
}

fn key(e: &pb::EffectiveStatement) -> Vec<u8> {
    e.encode_to_vec()
}

async fn effective(client: &Client, at: &str) -> BTreeMap<String, BTreeSet<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for s in SUBJECTS {
        let r = client
            .get_effective_permissions(pb::GetEffectivePermissionsRequest {
                tenant: T.into(),
                vault: V.into(),
                subject: s.to_string(),
                consistency: Some(pb::Consistency {
                    requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(at.into())),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        out.insert(s.to_string(), r.statements.iter().map(key).collect());
    }
    out
}

/// A random plan, as the request and as the writes that apply it.
fn random_plan(rng: &mut StdRng, n: usize) -> pb::PlanChangesRequest {
    let mut r = pb::PlanChangesRequest::default();
    for i in 0..n {
        match rng.random_range(0..9) {
            0 | 1 => r.bindings.push(pb::Binding {
                id: format!("b{}", rng.random_range(0..6)),
                tenant: T.into(),
                vault: V.into(),
                subject: SUBJECTS[rng.random_range(0..SUBJECTS.len())].into(),
                role: ROLES[rng.random_range(0..ROLES.len())].into(),
                scope: if rng.random_bool(0.3) {
                    vec!["document:runbooks/*".into()]
                } else {
                    vec![]
                },
                ..Default::default()
            }),
            2 => r.delete_bindings.push(pb::ObjectRef {
                tenant: T.into(),
                vault: V.into(),
                name: ["platform-writers", "alice-admin", "contractors-no-security", "b1", "b2"]
                    [rng.random_range(0..5)]
                .into(),
            }),
            3 => r.memberships.push(pb::Membership {
                tenant: T.into(),
                vault: V.into(),
                group: GROUPS[rng.random_range(0..GROUPS.len())].into(),
                member: SUBJECTS[rng.random_range(0..5)].into(),
                ..Default::default()
            }),
            4 => r.delete_memberships.push(pb::Membership {
                tenant: T.into(),
                vault: V.into(),
                group: "group:platform".into(),
                member: ["user:alice", "user:bob", "group:platform-oncall"][rng.random_range(0..3)].into(),
                ..Default::default()
            }),
            5 => r.bindings.push(pb::Binding {
                // A tenant-wide binding of an ancestor.
                id: format!("eng-{i}"),
                tenant: "acme/eng".into(),
                subject: SUBJECTS[rng.random_range(0..SUBJECTS.len())].into(),
                statements: vec![common::allow(&["documents:comment"], &["document:*"])],
                ..Default::default()
            }),
            6 => {
                // A vault's role shadows the tenant's of the same name; the
                // vault's doc-admin inherits whichever doc-reader resolves.
                let name = ROLES[rng.random_range(0..ROLES.len())];
                r.roles.push(pb::Role {
                    tenant: T.into(),
                    vault: V.into(),
                    name: name.into(),
                    statements: vec![common::allow(
                        &["documents:read", "documents:share"][..rng.random_range(1..3)],
                        &["document:*"],
                    )],
                    inherits: if name == "doc-admin" {
                        vec!["doc-reader".into()]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                })
            }
            7 => r.delete_roles.push(pb::ObjectRef {
                tenant: T.into(),
                vault: V.into(),
                name: ROLES[rng.random_range(0..ROLES.len())].into(),
            }),
            _ => r.roles.push(pb::Role {
                // An ancestor's role changes what every binding to it grants.
                tenant: "acme".into(),
                name: "doc-reader".into(),
                statements: vec![common::allow(
                    &["documents:read", "documents:list"][..rng.random_range(1..3)],
                    &["document:*"],
                )],
                ..Default::default()
            }),
        }
    }
    r
}

/// Applies a plan through the Admin API; returns the last write's token.
async fn apply(client: &Client, r: &pb::PlanChangesRequest) -> String {
    for role in &r.roles {
        client
            .apply_role(pb::ApplyRoleRequest {
                role: Some(role.clone()),
                expected_revision: String::new(),
            })
            .await
            .unwrap();
    }
    for d in &r.delete_roles {
        let deleted = client
            .delete_role(pb::DeleteRoleRequest {
                tenant: d.tenant.clone(),
                vault: d.vault.clone(),
                name: d.name.clone(),
                expected_revision: String::new(),
            })
            .await;
        if let Err(e) = deleted {
            assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        }
    }
    // One write per scope: upserts then deletes, as the plan applies them
    // (a later upsert of the same id wins; deletes come after).
    let mut scopes: BTreeMap<(String, String), (Vec<pb::Binding>, Vec<String>)> = BTreeMap::new();
    for b in &r.bindings {
        let e = scopes.entry((b.tenant.clone(), b.vault.clone())).or_default();
        e.0.retain(|x| x.id != b.id);
        e.0.push(b.clone());
    }
    for d in &r.delete_bindings {
        scopes
            .entry((d.tenant.clone(), d.vault.clone()))
            .or_default()
            .1
            .push(d.name.clone());
    }
    for ((t, v), (mut upserts, deletes)) in scopes {
        upserts.retain(|b| !deletes.contains(&b.id));
        client
            .write_bindings(pb::WriteBindingsRequest {
                tenant: t,
                vault: v,
                upserts,
                deletes,
                replace_source: 0,
            })
            .await
            .unwrap();
    }
    let mut upserts = r.memberships.clone();
    upserts.retain(|m| {
        !r.delete_memberships
            .iter()
            .any(|d| d.group == m.group && d.member == m.member)
    });
    client
        .write_memberships(pb::WriteMembershipsRequest {
            tenant: T.into(),
            vault: V.into(),
            upserts,
            deletes: r.delete_memberships.clone(),
            replace_source: 0,
        })
        .await
        .unwrap()
        .written_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reported_impact_is_exactly_what_changes() {
    let (srv, client) = setup().await;
    let mut rng = StdRng::seed_from_u64(
        std::env::var("PLAN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7),
    );
    let mut at = client
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .revision;
    let mut changed_plans = 0;
    for round in 0..25 {
        let n = rng.random_range(1..6);
        let req = random_plan(&mut rng, n);
        let before = effective(&client, &at).await;
        let plan = client.plan_changes(req.clone()).await.unwrap();
        assert!(plan.violations.is_empty(), "round {round}: {:?}", plan.violations);
        at = apply(&client, &req).await;
        let after = effective(&client, &at).await;
        let reported: BTreeMap<&str, &pb::AccessChange> = plan
            .access
            .iter()
            .filter(|a| a.tenant == T && a.vault == V)
            .map(|a| (a.subject.as_str(), a))
            .collect();
        for s in SUBJECTS {
            let (b, a) = (&before[*s], &after[*s]);
            let gained: BTreeSet<Vec<u8>> = a.difference(b).cloned().collect();
            let lost: BTreeSet<Vec<u8>> = b.difference(a).cloned().collect();
            let (rg, rl): (BTreeSet<Vec<u8>>, BTreeSet<Vec<u8>>) = match reported.get(s) {
                Some(c) => (c.gained.iter().map(key).collect(), c.lost.iter().map(key).collect()),
                None => Default::default(),
            };
            assert_eq!(rg, gained, "round {round}, {s}: gained\n{req:#?}");
            assert_eq!(rl, lost, "round {round}, {s}: lost\n{req:#?}");
            if !gained.is_empty() || !lost.is_empty() {
                changed_plans += 1;
            }
        }
    }
    assert!(
        changed_plans > 10,
        "the random plans changed access {changed_plans} times"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_probes_and_every_violation_at_once() {
    let (srv, client) = setup().await;
    let req = pb::PlanChangesRequest {
        bindings: vec![pb::Binding {
            id: "platform-writers".into(),
            tenant: T.into(),
            vault: V.into(),
            subject: "group:platform".into(),
            role: "doc-reader".into(),
            ..Default::default()
        }],
        delete_bindings: vec![pb::ObjectRef {
            tenant: T.into(),
            vault: V.into(),
            name: "alice-admin".into(),
        }],
        vaults: vec![pb::Vault {
            tenant: T.into(),
            name: "new".into(),
            ..Default::default()
        }],
        probes: vec![pb::PlanProbe {
            tenant: T.into(),
            vault: V.into(),
            subject: "user:bob".into(),
            action: "documents:write".into(),
            resource: "document:design.md".into(),
            context: None,
        }],
        ..Default::default()
    };
    let plan = client.plan_changes(req).await.unwrap();
    assert!(plan.violations.is_empty(), "{:?}", plan.violations);
    let action = |kind: &str, name: &str| {
        plan.objects
            .iter()
            .find(|o| o.kind == kind && o.name == name)
            .map(|o| o.action)
            .unwrap()
    };
    assert_eq!(action("binding", "platform-writers"), pb::PlanAction::Update as i32);
    assert_eq!(action("binding", "alice-admin"), pb::PlanAction::Delete as i32);
    assert_eq!(action("vault", "new"), pb::PlanAction::Create as i32);
    let p = &plan.probes[0];
    assert_eq!(
        (p.before, p.after),
        (pb::Decision::Allowed as i32, pb::Decision::Denied as i32)
    );
    // Bob loses writing; alice loses her admin grant.
    let bob = plan.access.iter().find(|a| a.subject == "user:bob").unwrap();
    assert!(bob.lost.iter().any(|e| {
        e.statement
            .as_ref()
            .unwrap()
            .actions
            .contains(&"documents:write".to_string())
    }));
    assert!(
        plan.access
            .iter()
            .any(|a| a.subject == "user:alice" && a.lost.iter().any(|e| e.binding_id == "alice-admin"))
    );
    // Nothing was written.
    let still = client
        .get_vault(pb::GetVaultRequest {
            tenant: T.into(),
            name: "new".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(still.code(), tonic::Code::NotFound);

    // Every violation at once, each with its field path.
    let plan = client.plan_changes(bad_request()).await.unwrap();
    let fields: Vec<&str> = plan.violations.iter().map(|v| v.field.as_str()).collect();
    for f in [
        "bindings[0].subject",
        "bindings[1].vault",
        "roles[0].statements[0].condition",
        "delete_tenants[0]",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }
    assert!(plan.objects.is_empty() && plan.access.is_empty());

    // Validation only (what the admission webhook asks): the objects' own
    // rules still apply, references that do not exist yet are not refused,
    // and nothing else is computed.
    let mut only = bad_request();
    only.validate_only = true;
    let plan = client.plan_changes(only).await.unwrap();
    let fields: Vec<&str> = plan.violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["roles[0].statements[0].condition", "bindings[0].subject"]);
    let valid = pb::PlanChangesRequest {
        validate_only: true,
        roles: vec![pb::Role {
            tenant: "not/yet/created".into(),
            vault: "nor-this".into(),
            name: "r".into(),
            statements: vec![common::allow(&["a:b"], &["*"])],
            ..Default::default()
        }],
        ..Default::default()
    };
    let plan = client.plan_changes(valid).await.unwrap();
    assert!(plan.violations.is_empty(), "{:?}", plan.violations);
    assert!(plan.objects.is_empty() && plan.access.is_empty() && plan.probes.is_empty());
    srv.shutdown().await;
}

/// A plan breaking rules of several kinds, one of them a missing vault.
fn bad_request() -> pb::PlanChangesRequest {
    pb::PlanChangesRequest {
        bindings: vec![
            pb::Binding {
                id: "x".into(),
                tenant: T.into(),
                vault: V.into(),
                subject: "nobody".into(),
                role: "doc-reader".into(),
                ..Default::default()
            },
            pb::Binding {
                id: "y".into(),
                tenant: T.into(),
                vault: "missing".into(),
                subject: "user:a".into(),
                role: "doc-reader".into(),
                ..Default::default()
            },
        ],
        roles: vec![pb::Role {
            tenant: "acme".into(),
            name: "r".into(),
            statements: vec![pb::Statement {
                condition: "contxt.x".into(),
                ..common::allow(&["a:b"], &["*"])
            }],
            ..Default::default()
        }],
        delete_tenants: vec!["acme".into()],
        ..Default::default()
    }
}
