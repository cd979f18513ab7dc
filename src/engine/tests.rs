//! Behaviour of the engine, rule by rule, plus property tests that the
//! lookups and bulk check agree with Check.

use super::*;
use proptest::prelude::*;

fn t(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}
fn v(s: &str) -> VaultName {
    VaultName::parse(s).unwrap()
}
fn s(x: &str) -> Subject {
    Subject::parse(x).unwrap()
}
fn r(x: &str) -> RoleName {
    RoleName::parse(x).unwrap()
}

fn tenant(id: &str) -> Change {
    Change::PutTenant(Tenant::new(t(id)))
}
fn vault(tn: &str, name: &str) -> Change {
    Change::PutVault(Vault {
        tenant: t(tn),
        name: v(name),
        display_name: String::new(),
        labels: Labels::new(),
    })
}
fn role(tn: &str, vault: Option<&str>, name: &str, statements: Vec<Statement>, inherits: &[&str]) -> Change {
    Change::PutRole(Role {
        tenant: t(tn),
        vault: vault.map(v),
        name: r(name),
        description: String::new(),
        statements,
        inherits: inherits.iter().map(|x| r(x)).collect(),
        labels: Labels::new(),
    })
}
fn bind(id: &str, tn: &str, vault: Option<&str>, subject: &str, role: &str) -> Binding {
    Binding::to_role(id, &t(tn), vault.map(v).as_ref(), &s(subject), &r(role))
}
fn member(tn: &str, vault: Option<&str>, group: &str, m: &str) -> Change {
    Change::PutMembership(Membership {
        tenant: t(tn),
        vault: vault.map(v),
        group: s(group),
        member: s(m),
        source: Source::Api,
    })
}

const NOW: Timestamp = Timestamp(1_800_000_000_000_000);

struct Fx {
    e: Engine,
    rev: u64,
}

impl Fx {
    fn new(changes: Vec<Change>) -> Fx {
        let e = Engine::new();
        e.apply(1, &changes);
        Fx { e, rev: 1 }
    }
    fn apply(&mut self, changes: Vec<Change>) {
        self.rev += 1;
        self.e.apply(self.rev, &changes);
    }
    fn check_ctx(&self, tn: &str, vn: &str, sub: &str, act: &str, res: &str, ctx: serde_json::Value) -> CheckResult {
        let ctx = match ctx {
            serde_json::Value::Object(m) => RequestContext::new(m),
            _ => RequestContext::empty(),
        };
        let item = CheckItem {
            subject: sub,
            action: act,
            resource: res,
            context: &ctx,
        };
        self.e.check(tn, vn, &item, NOW, true).unwrap()
    }
    fn check(&self, tn: &str, vn: &str, sub: &str, act: &str, res: &str) -> CheckResult {
        self.check_ctx(tn, vn, sub, act, res, serde_json::json!({}))
    }
    fn allowed(&self, sub: &str, act: &str, res: &str) -> bool {
        self.check("acme", "docs", sub, act, res).allowed
    }
    fn reason(&self, sub: &str, act: &str, res: &str) -> Reason {
        self.check("acme", "docs", sub, act, res).reason
    }
}

fn base() -> Vec<Change> {
    vec![
        tenant("acme"),
        vault("acme", "docs"),
        role(
            "acme",
            None,
            "reader",
            vec![Statement::allow(&["documents:read", "documents:list"], &["document:*"])],
            &[],
        ),
        role(
            "acme",
            None,
            "writer",
            vec![Statement::allow(&["documents:write"], &["document:*"])],
            &["reader"],
        ),
    ]
}

#[test]
fn default_deny_and_simple_allow() {
    let mut f = Fx::new(base());
    assert_eq!(f.reason("user:alice", "documents:read", "document:a"), Reason::NoMatch);
    f.apply(vec![Change::PutBinding(bind(
        "b1",
        "acme",
        Some("docs"),
        "user:alice",
        "reader",
    ))]);
    assert!(f.allowed("user:alice", "documents:read", "document:a"));
    assert!(!f.allowed("user:alice", "documents:write", "document:a"));
    assert!(!f.allowed("user:bob", "documents:read", "document:a"));
    assert!(
        !f.allowed("user:alice", "documents:read", "folder:a"),
        "statement resources apply"
    );
}

#[test]
fn deny_wins_over_allow_from_anywhere() {
    let mut f = Fx::new(base());
    f.apply(vec![
        role(
            "acme",
            None,
            "no-secrets",
            vec![Statement::deny(&["*"], &["document:secret/*"])],
            &[],
        ),
        Change::PutBinding(bind("b1", "acme", Some("docs"), "user:alice", "writer")),
        Change::PutBinding(bind("b2", "acme", None, "group:contractors", "no-secrets")),
        member("acme", Some("docs"), "group:contractors", "user:alice"),
    ]);
    assert!(f.allowed("user:alice", "documents:read", "document:public/x"));
    let res = f.check("acme", "docs", "user:alice", "documents:read", "document:secret/x");
    assert!(!res.allowed);
    assert_eq!(res.reason, Reason::ExplicitDeny);
    let ex = res.explanation.unwrap();
    let deny = ex.entries.iter().find(|e| e.effect == Effect::Deny).unwrap();
    assert_eq!(deny.binding_id, "b2");
    assert_eq!(deny.principal, "group:contractors");
    assert_eq!(deny.group_path, vec!["user:alice", "group:contractors"]);
    assert_eq!(deny.role.as_ref().unwrap().name.as_str(), "no-secrets");
    assert!(
        ex.entries
            .iter()
            .any(|e| e.effect == Effect::Allow && e.binding_id == "b1"),
        "every applying statement listed"
    );
}

#[test]
fn wildcards_in_actions_resources_and_scopes() {
    let mut f = Fx::new(vec![
        tenant("acme"),
        vault("acme", "docs"),
        role(
            "acme",
            None,
            "all-docs",
            vec![Statement::allow(&["documents:*"], &[])],
            &[],
        ),
        role(
            "acme",
            None,
            "readers",
            vec![Statement::allow(&["*:read"], &["document:team-?/*"])],
            &[],
        ),
        role(
            "acme",
            None,
            "glob",
            vec![Statement::allow(&["doc*:re?d"], &["document:*/q?.pdf"])],
            &[],
        ),
    ]);
    let mut b = bind("b1", "acme", Some("docs"), "user:a", "all-docs");
    b.scope = vec!["document:reports/*".into()];
    f.apply(vec![
        Change::PutBinding(b),
        Change::PutBinding(bind("b2", "acme", Some("docs"), "user:b", "readers")),
        Change::PutBinding(bind("b3", "acme", Some("docs"), "user:c", "glob")),
    ]);
    assert!(
        f.allowed("user:a", "documents:delete", "document:reports/2026/q1.pdf"),
        "* spans /"
    );
    assert!(
        !f.allowed("user:a", "documents:delete", "document:other/x"),
        "binding scope limits"
    );
    assert!(!f.allowed("user:a", "folders:delete", "document:reports/x"));
    assert!(f.allowed("user:b", "billing:read", "document:team-a/x"));
    assert!(!f.allowed("user:b", "billing:read", "document:team-ab/x"));
    assert!(!f.allowed("user:b", "billing:write", "document:team-a/x"));
    assert!(f.allowed("user:c", "docs:read", "document:2026/q1.pdf"));
    assert!(!f.allowed("user:c", "docs:read", "document:2026/q10.pdf"));
    assert!(
        !f.allowed("user:c", "Docs:read", "document:2026/q1.pdf"),
        "case-sensitive"
    );
}

#[test]
fn requests_with_wildcards_or_bad_ids_are_invalid() {
    let f = Fx::new(base());
    let ctx = RequestContext::empty();
    let bad = |sub: &'static str, act: &'static str, res: &'static str| {
        let item = CheckItem {
            subject: sub,
            action: act,
            resource: res,
            context: &ctx,
        };
        match f.e.check("acme", "docs", &item, NOW, false) {
            Err(EngineError::Invalid(v)) => v.to_string(),
            other => panic!("{other:?}"),
        }
    };
    assert!(bad("user:a", "documents:*", "document:a").starts_with("action: must name one action"));
    assert!(bad("user:a", "documents:read", "document:*").starts_with("resource: must name one resource"));
    let msg = bad("alice", "x y", "");
    assert!(
        msg.contains("subject:") && msg.contains("action:") && msg.contains("resource:"),
        "{msg}"
    );
}

#[test]
fn unknown_tenant_or_vault_is_not_found() {
    let f = Fx::new(base());
    let ctx = RequestContext::empty();
    let item = CheckItem {
        subject: "user:a",
        action: "documents:read",
        resource: "document:x",
        context: &ctx,
    };
    assert_eq!(
        f.e.check("nope", "docs", &item, NOW, false),
        Err(EngineError::TenantNotFound("nope".into()))
    );
    assert!(matches!(
        f.e.check("acme", "nope", &item, NOW, false),
        Err(EngineError::VaultNotFound { .. })
    ));
    assert!(matches!(
        f.e.check("Bad!", "docs", &item, NOW, false),
        Err(EngineError::Invalid(_))
    ));
}

#[test]
fn inheritance_is_transitive_and_cycles_are_rejected_and_tolerated() {
    let mut f = Fx::new(base());
    f.apply(vec![
        role(
            "acme",
            None,
            "admin",
            vec![Statement::allow(&["documents:delete"], &[])],
            &["writer"],
        ),
        Change::PutBinding(bind("b1", "acme", Some("docs"), "user:root", "admin")),
    ]);
    assert!(
        f.allowed("user:root", "documents:read", "document:x"),
        "admin > writer > reader"
    );
    assert!(f.allowed("user:root", "documents:delete", "document:x"));

    // reader inheriting admin would close a loop.
    let cyclic = Role {
        tenant: t("acme"),
        vault: None,
        name: r("reader"),
        description: String::new(),
        statements: vec![Statement::allow(&["documents:read"], &[])],
        inherits: vec![r("admin")],
        labels: Labels::new(),
    };
    let cycle = f.e.inherits_cycle(&cyclic).expect("cycle detected");
    let names: Vec<_> = cycle.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["reader", "admin", "writer", "reader"]);
    // A role that is not on the loop is fine.
    let fine = Role {
        name: r("viewer"),
        inherits: vec![r("admin")],
        ..cyclic.clone()
    };
    assert!(f.e.inherits_cycle(&fine).is_none());

    // Should a cycle reach the engine anyway (say, written by an older version), it terminates.
    f.apply(vec![Change::PutRole(cyclic)]);
    assert!(f.allowed("user:root", "documents:read", "document:x"));
    assert!(!f.allowed("user:nobody", "documents:read", "document:x"));
}

#[test]
fn vault_role_inheriting_shadowed_name_is_not_a_cycle() {
    // A vault role "reader" inherits "reader": resolution from the vault finds
    // itself first, so that is a self-cycle, rejected.
    let f = Fx::new(base());
    let self_loop = Role {
        tenant: t("acme"),
        vault: Some(v("docs")),
        name: r("editor"),
        description: String::new(),
        statements: vec![],
        inherits: vec![r("writer")],
        labels: Labels::new(),
    };
    assert!(f.e.inherits_cycle(&self_loop).is_none());
}

#[test]
fn nested_groups_with_a_cycle() {
    let mut f = Fx::new(base());
    f.apply(vec![
        member("acme", Some("docs"), "group:eng", "user:alice"),
        member("acme", None, "group:staff", "group:eng"),
        member("acme", Some("docs"), "group:eng", "group:staff"), // cycle
        member("acme", Some("docs"), "group:all", "group:staff"),
        Change::PutBinding(bind("b1", "acme", Some("docs"), "group:all", "reader")),
    ]);
    let res = f.check("acme", "docs", "user:alice", "documents:read", "document:x");
    assert!(res.allowed);
    let e = &res.explanation.unwrap().entries[0];
    assert_eq!(
        e.group_path,
        vec!["user:alice", "group:eng", "group:staff", "group:all"]
    );
    assert!(!f.allowed("user:bob", "documents:read", "document:x"));
    // Removing a link in the chain revokes.
    f.apply(vec![Change::DeleteMembership(Membership {
        tenant: t("acme"),
        vault: None,
        group: s("group:staff"),
        member: s("group:eng"),
        source: Source::Api,
    })]);
    assert!(!f.allowed("user:alice", "documents:read", "document:x"));
}

#[test]
fn tenant_scoped_objects_reach_descendant_vaults_only() {
    let mut f = Fx::new(vec![
        tenant("acme"),
        tenant("acme/eng"),
        tenant("acme/eng/platform"),
        tenant("acme/sales"),
        tenant("other"),
        vault("acme/eng/platform", "docs"),
        vault("acme/sales", "docs"),
        vault("acme/eng", "wiki"),
        vault("other", "docs"),
        role(
            "acme",
            None,
            "reader",
            vec![Statement::allow(&["documents:read"], &[])],
            &[],
        ),
    ]);
    f.apply(vec![
        Change::PutBinding(bind("b1", "acme/eng", None, "group:eng", "reader")),
        member("acme", None, "group:eng", "user:alice"),
        Change::PutBinding(bind("b2", "acme/eng", Some("wiki"), "user:bob", "reader")),
    ]);
    let ok = |tn: &str, vn: &str, sub: &str| f.check(tn, vn, sub, "documents:read", "document:x").allowed;
    assert!(
        ok("acme/eng/platform", "docs", "user:alice"),
        "binding from acme/eng, role and group from acme"
    );
    assert!(ok("acme/eng", "wiki", "user:alice"));
    assert!(!ok("acme/sales", "docs", "user:alice"), "sibling subtree");
    assert!(ok("acme/eng", "wiki", "user:bob"));
    assert!(
        !ok("acme/eng/platform", "docs", "user:bob"),
        "vault bindings stay in their vault"
    );
    // Other root tenant: role, group and binding all invisible.
    let res = f.e.check(
        "other",
        "docs",
        &CheckItem {
            subject: "user:alice",
            action: "documents:read",
            resource: "document:x",
            context: &RequestContext::empty(),
        },
        NOW,
        false,
    );
    assert!(!res.unwrap().allowed);
}

#[test]
fn role_names_resolve_lexically_so_subtenants_cannot_hijack() {
    let mut f = Fx::new(vec![
        tenant("acme"),
        tenant("acme/eng"),
        vault("acme/eng", "docs"),
        role(
            "acme",
            None,
            "reader",
            vec![Statement::allow(&["documents:read"], &[])],
            &[],
        ),
    ]);
    f.apply(vec![
        Change::PutBinding(bind("b1", "acme", None, "user:alice", "reader")),
        // A sub-tenant defines its own, broader "reader".
        role("acme/eng", None, "reader", vec![Statement::allow(&["*"], &[])], &[]),
        Change::PutBinding(bind("b2", "acme/eng", Some("docs"), "user:bob", "reader")),
    ]);
    let ok = |sub: &str, act: &str| f.check("acme/eng", "docs", sub, act, "document:x").allowed;
    assert!(ok("user:alice", "documents:read"));
    assert!(
        !ok("user:alice", "documents:delete"),
        "acme's binding means acme's reader"
    );
    assert!(
        ok("user:bob", "documents:delete"),
        "eng's binding resolves eng's reader first"
    );
    // A vault role shadows the tenant role for vault bindings.
    f.apply(vec![role(
        "acme/eng",
        Some("docs"),
        "reader",
        vec![Statement::allow(&["documents:list"], &[])],
        &[],
    )]);
    assert!(
        f.check("acme/eng", "docs", "user:bob", "documents:list", "document:x")
            .allowed
    );
    assert!(
        !f.check("acme/eng", "docs", "user:bob", "documents:delete", "document:x")
            .allowed
    );
    // Deleting it restores the tenant role.
    f.apply(vec![Change::DeleteRole {
        scope: Scope::vault(&t("acme/eng"), &v("docs")),
        name: r("reader"),
    }]);
    assert!(
        f.check("acme/eng", "docs", "user:bob", "documents:delete", "document:x")
            .allowed
    );
}

#[test]
fn suspension_of_tenant_or_ancestor_denies() {
    let mut f = Fx::new(vec![
        tenant("acme"),
        tenant("acme/eng"),
        vault("acme/eng", "docs"),
        role(
            "acme",
            None,
            "reader",
            vec![Statement::allow(&["documents:read"], &[])],
            &[],
        ),
    ]);
    f.apply(vec![Change::PutBinding(bind(
        "b1",
        "acme/eng",
        None,
        "user:alice",
        "reader",
    ))]);
    let chk = |f: &Fx| f.check("acme/eng", "docs", "user:alice", "documents:read", "document:x");
    assert!(chk(&f).allowed);
    f.apply(vec![Change::PutTenant(Tenant {
        status: TenantStatus::Suspended,
        ..Tenant::new(t("acme"))
    })]);
    let res = chk(&f);
    assert_eq!((res.allowed, res.reason), (false, Reason::TenantSuspended));
    assert_eq!(res.explanation.unwrap().suspended_by, Some(t("acme")));
    f.apply(vec![Change::PutTenant(Tenant::new(t("acme")))]);
    assert!(chk(&f).allowed);
    f.apply(vec![Change::PutTenant(Tenant {
        status: TenantStatus::Suspended,
        ..Tenant::new(t("acme/eng"))
    })]);
    assert_eq!(chk(&f).reason, Reason::TenantSuspended);
}

#[test]
fn validity_window_boundaries() {
    let mut f = Fx::new(base());
    let mut b = bind("b1", "acme", Some("docs"), "user:alice", "reader");
    b.not_before = Some(NOW);
    b.expires_at = Some(Timestamp(NOW.0 + 1));
    f.apply(vec![Change::PutBinding(b.clone())]);
    assert!(
        f.allowed("user:alice", "documents:read", "document:x"),
        "not_before is inclusive"
    );
    let mut late = b.clone();
    late.expires_at = Some(NOW);
    late.not_before = Some(Timestamp(NOW.0 - 10));
    f.apply(vec![Change::PutBinding(late)]);
    assert!(
        !f.allowed("user:alice", "documents:read", "document:x"),
        "expires_at is exclusive"
    );
    let mut early = b;
    early.not_before = Some(Timestamp(NOW.0 + 1));
    early.expires_at = None;
    f.apply(vec![Change::PutBinding(early)]);
    assert!(!f.allowed("user:alice", "documents:read", "document:x"));
}

#[test]
fn conditions_true_false_and_failing_closed() {
    let mut f = Fx::new(vec![
        tenant("acme"),
        vault("acme", "docs"),
        role(
            "acme",
            None,
            "mfa-reader",
            vec![Statement::allow(&["documents:read"], &[]).with_condition("context.mfa == true")],
            &[],
        ),
        role(
            "acme",
            None,
            "block-offsite",
            vec![
                Statement::deny(&["*"], &[])
                    .with_condition("context.network != 'office'")
                    .with_sid("offsite"),
            ],
            &[],
        ),
    ]);
    f.apply(vec![Change::PutBinding(bind(
        "b1",
        "acme",
        Some("docs"),
        "user:a",
        "mfa-reader",
    ))]);
    let c = |f: &Fx, ctx: serde_json::Value| f.check_ctx("acme", "docs", "user:a", "documents:read", "document:x", ctx);
    assert!(c(&f, serde_json::json!({"mfa": true})).allowed);
    assert_eq!(c(&f, serde_json::json!({"mfa": false})).reason, Reason::NoMatch);
    // ALLOW with an erroring condition: not granted, explained.
    let res = c(&f, serde_json::json!({}));
    assert_eq!(res.reason, Reason::NoMatch);
    let e = &res.explanation.unwrap().entries[0];
    assert!(
        matches!(&e.outcome, EntryOutcome::ConditionError(m) if m.contains("mfa")),
        "{e:?}"
    );
    assert!(!e.counted);
    let res = c(&f, serde_json::json!({"mfa": "yes"}));
    assert!(!res.allowed, "wrong type never grants");

    f.apply(vec![Change::PutBinding(bind(
        "b2",
        "acme",
        Some("docs"),
        "user:a",
        "block-offsite",
    ))]);
    assert!(
        c(&f, serde_json::json!({"mfa": true, "network": "office"})).allowed,
        "DENY condition false"
    );
    assert_eq!(
        c(&f, serde_json::json!({"mfa": true, "network": "home"})).reason,
        Reason::ExplicitDeny
    );
    // DENY with an erroring condition counts as true.
    let res = c(&f, serde_json::json!({"mfa": true}));
    assert_eq!(res.reason, Reason::ExplicitDeny);
    let ex = res.explanation.unwrap();
    let deny = ex.entries.iter().find(|e| e.effect == Effect::Deny).unwrap();
    assert!(matches!(deny.outcome, EntryOutcome::ConditionError(_)) && deny.counted);
    assert_eq!(deny.sid.as_deref(), Some("offsite"));
}

#[test]
fn binding_condition_errors_keep_denies_only() {
    let mut f = Fx::new(vec![
        tenant("acme"),
        vault("acme", "docs"),
        role(
            "acme",
            None,
            "mixed",
            vec![
                Statement::allow(&["documents:*"], &[]),
                Statement::deny(&["documents:delete"], &[]),
            ],
            &[],
        ),
    ]);
    let mut b = bind("b1", "acme", Some("docs"), "user:a", "mixed");
    b.condition = Some("context.level > 2".into());
    f.apply(vec![Change::PutBinding(b)]);
    let c = |act: &str, ctx: serde_json::Value| f.check_ctx("acme", "docs", "user:a", act, "document:x", ctx).reason;
    assert_eq!(c("documents:read", serde_json::json!({"level": 3})), Reason::Allowed);
    assert_eq!(
        c("documents:read", serde_json::json!({"level": 1})),
        Reason::NoMatch,
        "binding does not apply"
    );
    assert_eq!(c("documents:delete", serde_json::json!({"level": 1})), Reason::NoMatch);
    assert_eq!(
        c("documents:read", serde_json::json!({})),
        Reason::NoMatch,
        "error: no ALLOW"
    );
    assert_eq!(
        c("documents:delete", serde_json::json!({})),
        Reason::ExplicitDeny,
        "error: DENY kept"
    );
    assert_eq!(
        c("documents:delete", serde_json::json!({"level": 3})),
        Reason::ExplicitDeny
    );
}

#[test]
fn inline_statements_override_per_subject() {
    let mut f = Fx::new(base());
    let mut over = bind("o1", "acme", Some("docs"), "user:alice", "reader");
    over.grant = Grant::Statements(vec![Statement::deny(&["documents:read"], &["document:hr/*"])]);
    f.apply(vec![
        Change::PutBinding(bind("b1", "acme", None, "group:all", "reader")),
        member("acme", None, "group:all", "user:alice"),
        member("acme", None, "group:all", "user:bob"),
        Change::PutBinding(over),
    ]);
    assert!(!f.allowed("user:alice", "documents:read", "document:hr/pay"));
    assert!(f.allowed("user:bob", "documents:read", "document:hr/pay"));
    assert!(f.allowed("user:alice", "documents:read", "document:eng/x"));
    let ex = f
        .check("acme", "docs", "user:alice", "documents:read", "document:hr/pay")
        .explanation
        .unwrap();
    let e = ex.entries.iter().find(|e| e.effect == Effect::Deny).unwrap();
    assert_eq!(
        (e.role.clone(), e.defined_in.clone()),
        (None, Scope::vault(&t("acme"), &v("docs")))
    );
}

#[test]
fn incremental_updates_and_deletes() {
    let mut f = Fx::new(base());
    f.apply(vec![Change::PutBinding(bind(
        "b1",
        "acme",
        Some("docs"),
        "user:a",
        "reader",
    ))]);
    assert!(f.allowed("user:a", "documents:read", "document:x"));
    // Re-pointing the same binding id at another subject moves it.
    f.apply(vec![Change::PutBinding(bind(
        "b1",
        "acme",
        Some("docs"),
        "user:b",
        "reader",
    ))]);
    assert!(!f.allowed("user:a", "documents:read", "document:x"));
    assert!(f.allowed("user:b", "documents:read", "document:x"));
    // Changing the role changes decisions.
    f.apply(vec![role(
        "acme",
        None,
        "reader",
        vec![Statement::allow(&["documents:list"], &[])],
        &[],
    )]);
    assert!(!f.allowed("user:b", "documents:read", "document:x"));
    assert!(f.allowed("user:b", "documents:list", "document:x"));
    // Deleting the role leaves the binding granting nothing; restoring it restores.
    f.apply(vec![Change::DeleteRole {
        scope: Scope::tenant(&t("acme")),
        name: r("reader"),
    }]);
    assert!(!f.allowed("user:b", "documents:list", "document:x"));
    f.apply(vec![role(
        "acme",
        None,
        "reader",
        vec![Statement::allow(&["documents:list"], &[])],
        &[],
    )]);
    assert!(f.allowed("user:b", "documents:list", "document:x"));
    f.apply(vec![Change::DeleteBinding {
        scope: Scope::vault(&t("acme"), &v("docs")),
        id: "b1".into(),
    }]);
    assert!(!f.allowed("user:b", "documents:list", "document:x"));
    // Deleting a vault makes it not found; recreating it starts empty.
    f.apply(vec![
        Change::PutBinding(bind("b2", "acme", Some("docs"), "user:b", "reader")),
        Change::DeleteVault {
            tenant: t("acme"),
            vault: v("docs"),
        },
    ]);
    let ctx = RequestContext::empty();
    let item = CheckItem {
        subject: "user:b",
        action: "documents:list",
        resource: "document:x",
        context: &ctx,
    };
    assert!(matches!(
        f.e.check("acme", "docs", &item, NOW, false),
        Err(EngineError::VaultNotFound { .. })
    ));
    f.apply(vec![vault("acme", "docs")]);
    assert!(!f.allowed("user:b", "documents:list", "document:x"));
    // Deleting a tenant makes its vaults' checks NOT_FOUND.
    f.apply(vec![Change::DeleteTenant { tenant: t("acme") }]);
    assert!(matches!(
        f.e.check("acme", "docs", &item, NOW, false),
        Err(EngineError::TenantNotFound(_))
    ));
}

#[test]
fn readers_keep_their_snapshot() {
    let mut f = Fx::new(base());
    f.apply(vec![Change::PutBinding(bind(
        "b1",
        "acme",
        Some("docs"),
        "user:a",
        "reader",
    ))]);
    let view = f.e.view("acme", "docs").unwrap();
    f.apply(vec![Change::DeleteBinding {
        scope: Scope::vault(&t("acme"), &v("docs")),
        id: "b1".into(),
    }]);
    let ctx = RequestContext::empty();
    assert!(
        view.check("user:a", "documents:read", "document:x", &ctx, NOW, false)
            .allowed
    );
    assert!(!f.allowed("user:a", "documents:read", "document:x"));
    assert_eq!(f.e.revision(), f.rev);
}

#[test]
fn lookups_on_a_small_tree() {
    let mut f = Fx::new(base());
    let mut scoped = bind("b1", "acme", Some("docs"), "group:eng", "writer");
    scoped.scope = vec!["document:eng/*".into()];
    let mut cond = bind("b3", "acme", Some("docs"), "user:carol", "reader");
    cond.condition = Some("context.mfa == true".into());
    f.apply(vec![
        Change::PutBinding(scoped),
        Change::PutBinding(bind("b2", "acme", Some("docs"), "user:bob", "reader")),
        Change::PutBinding(cond),
        member("acme", None, "group:eng", "user:alice"),
        member("acme", None, "group:eng", "group:sre"),
        member("acme", None, "group:sre", "user:dave"),
    ]);
    let page =
        f.e.lookup_subjects(
            "acme",
            "docs",
            "documents:read",
            "document:eng/x",
            NOW,
            PageRequest {
                after: None,
                limit: 100,
            },
        )
        .unwrap();
    let got: Vec<(&str, Possibility)> = page.subjects.iter().map(|(s, p)| (s.as_str(), *p)).collect();
    assert_eq!(
        got,
        vec![
            ("group:eng", Possibility::Allowed),
            ("group:sre", Possibility::Allowed),
            ("user:alice", Possibility::Allowed),
            ("user:bob", Possibility::Allowed),
            ("user:carol", Possibility::Conditional),
            ("user:dave", Possibility::Allowed),
        ]
    );
    // Paging with a cursor gives the same, complete list.
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let p =
            f.e.lookup_subjects(
                "acme",
                "docs",
                "documents:read",
                "document:eng/x",
                NOW,
                PageRequest {
                    after: cursor.as_deref(),
                    limit: 2,
                },
            )
            .unwrap();
        all.extend(p.subjects);
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(all, page.subjects);

    let filter =
        f.e.lookup_resources("acme", "docs", "user:alice", "documents:write", NOW)
            .unwrap();
    assert_eq!(filter.grants.len(), 1);
    assert_eq!(filter.grants[0].scope_patterns(), vec!["document:eng/*"]);
    assert_eq!(filter.grants[0].resource_patterns(), vec!["document:*"]);
    assert_eq!(filter.evaluate("document:eng/a"), Possibility::Allowed);
    assert_eq!(filter.evaluate("document:hr/a"), Possibility::Denied);

    let eff = f.e.effective_permissions("acme", "docs", "user:dave", NOW).unwrap();
    assert_eq!(eff.len(), 2, "writer's own statement plus inherited reader's");
    assert!(
        eff.iter()
            .all(|e| e.group_path == vec!["user:dave", "group:sre", "group:eng"])
    );
    let inherited = eff
        .iter()
        .find(|e| e.statement.actions.contains(&"documents:read".to_string()))
        .unwrap();
    let path: Vec<&str> = inherited.role_path.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(path, ["writer", "reader"]);
}

#[test]
fn generated_dataset_loads_and_answers() {
    let ds = dataset::Dataset::generate(dataset::Shape::scaled(500, 5_000), 7);
    let e = Engine::new();
    e.apply(1, &ds.changes);
    let view = e.view(ds.tenant.as_str(), ds.vault.as_str()).unwrap();
    let mut rng = dataset::Rng::new(1);
    let ctx = RequestContext::empty();
    let mut allowed = 0;
    for _ in 0..2000 {
        let q = ds.query(&mut rng);
        if view.check(&q.subject, &q.action, &q.resource, &ctx, NOW, false).allowed {
            allowed += 1;
        }
    }
    assert!(
        allowed > 50 && allowed < 1950,
        "a realistic mix of decisions, got {allowed}"
    );
}

// ---------------------------------------------------------------------------
// Property tests: lookups and bulk check agree with Check on random data.

#[derive(Debug, Clone)]
struct World {
    changes: Vec<Change>,
}

fn arb_pattern(kind: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        (0..3u8).prop_map(move |i| format!("{kind}{i}")),
        (0..3u8).prop_map(move |i| format!("{kind}{i}*")),
        (0..3u8).prop_map(move |i| format!("*{i}")),
        (0..3u8).prop_map(move |i| format!("{kind}?{i}")),
    ]
}

fn arb_statement(with_conditions: bool) -> impl Strategy<Value = Statement> {
    (
        any::<bool>(),
        proptest::collection::vec(arb_pattern("a"), 1..3),
        proptest::collection::vec(arb_pattern("r"), 0..3),
        0..6u8,
    )
        .prop_map(move |(deny, actions, resources, c)| Statement {
            sid: None,
            effect: if deny { Effect::Deny } else { Effect::Allow },
            actions,
            resources,
            condition: match (with_conditions, c) {
                (true, 0) => Some("context.x == 1".into()),
                (true, 1) => Some("context.y".into()),
                _ => None,
            },
        })
}

fn arb_world(with_conditions: bool) -> impl Strategy<Value = World> {
    let subjects = ["user:u0", "user:u1", "user:u2", "group:g0", "group:g1", "group:g2"];
    (
        proptest::collection::vec(proptest::collection::vec(arb_statement(with_conditions), 1..4), 3),
        proptest::collection::vec(
            (
                0..6usize,
                0..3usize,
                proptest::collection::vec(arb_pattern("r"), 0..2),
                any::<bool>(),
                0..4u8,
            ),
            0..10,
        ),
        proptest::collection::vec((0..6usize, 0..3usize, any::<bool>()), 0..8),
    )
        .prop_map(move |(roles, bindings, members)| {
            let mut changes = vec![tenant("acme"), tenant("acme/sub"), vault("acme/sub", "docs")];
            for (i, st) in roles.into_iter().enumerate() {
                let inherits: &[&str] = if i == 2 { &["role0"] } else { &[] };
                changes.push(role("acme", None, &format!("role{i}"), st, inherits));
            }
            for (i, (subj, rl, scope, tenant_wide, c)) in bindings.into_iter().enumerate() {
                let (tn, vn) = if tenant_wide {
                    ("acme", None)
                } else {
                    ("acme/sub", Some("docs"))
                };
                let mut b = bind(&format!("b{i}"), tn, vn, subjects[subj], &format!("role{rl}"));
                b.scope = scope;
                if with_conditions && c == 0 {
                    b.condition = Some("context.z == true".into());
                }
                if c == 1 {
                    b.expires_at = Some(Timestamp(NOW.0 - 1));
                }
                changes.push(Change::PutBinding(b));
            }
            for (m, g, tenant_wide) in members {
                let (tn, vn) = if tenant_wide {
                    ("acme", None)
                } else {
                    ("acme/sub", Some("docs"))
                };
                if subjects[m] != format!("group:g{g}") {
                    changes.push(member(tn, vn, &format!("group:g{g}"), subjects[m]));
                }
            }
            World { changes }
        })
}

const ACTIONS: [&str; 4] = ["a0", "a1", "a2", "b1"];
const RESOURCES: [&str; 5] = ["r0", "r1", "r21", "rx1", "q"];
const SUBJECTS: [&str; 7] = [
    "user:u0", "user:u1", "user:u2", "group:g0", "group:g1", "group:g2", "user:zz",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn lookup_resources_agrees_with_check(w in arb_world(false)) {
        let e = Engine::new();
        e.apply(1, &w.changes);
        let view = e.view("acme/sub", "docs").unwrap();
        let ctx = RequestContext::empty();
        for sub in SUBJECTS {
            for act in ACTIONS {
                let filter = view.resource_filter(sub, act, NOW);
                for res in RESOURCES {
                    let allowed = view.check(sub, act, res, &ctx, NOW, false).allowed;
                    let expected = if allowed { Possibility::Allowed } else { Possibility::Denied };
                    prop_assert_eq!(filter.evaluate(res), expected, "{} {} {}", sub, act, res);
                }
            }
        }
    }

    #[test]
    fn lookup_resources_with_conditions_is_sound(w in arb_world(true), x in 0..2i64, y in any::<bool>(), z in any::<bool>()) {
        let e = Engine::new();
        e.apply(1, &w.changes);
        let view = e.view("acme/sub", "docs").unwrap();
        let ctx = RequestContext::new(serde_json::json!({"x": x, "y": y, "z": z}).as_object().unwrap().clone());
        for sub in SUBJECTS {
            for act in ACTIONS {
                let filter = view.resource_filter(sub, act, NOW);
                for res in RESOURCES {
                    let allowed = view.check(sub, act, res, &ctx, NOW, false).allowed;
                    match filter.evaluate(res) {
                        Possibility::Allowed => prop_assert!(allowed, "{} {} {}", sub, act, res),
                        Possibility::Denied => prop_assert!(!allowed, "{} {} {}", sub, act, res),
                        Possibility::Conditional => {}
                    }
                }
            }
        }
    }

    #[test]
    fn lookup_subjects_agrees_with_check(w in arb_world(true), x in 0..2i64, y in any::<bool>(), z in any::<bool>()) {
        let e = Engine::new();
        e.apply(1, &w.changes);
        let view = e.view("acme/sub", "docs").unwrap();
        let ctx = RequestContext::new(serde_json::json!({"x": x, "y": y, "z": z}).as_object().unwrap().clone());
        for act in ACTIONS {
            for res in RESOURCES {
                let page = lookup_subjects_in(&view, act, res, NOW, PageRequest { after: None, limit: 1000 });
                prop_assert!(page.next_cursor.is_none());
                for sub in SUBJECTS {
                    let allowed = view.check(sub, act, res, &ctx, NOW, false).allowed;
                    let listed = page.subjects.iter().find(|(s, _)| s == sub).map(|(_, p)| *p);
                    if allowed {
                        prop_assert!(listed.is_some(), "{} may {} {} but is not listed", sub, act, res);
                    }
                    if listed == Some(Possibility::Allowed) {
                        prop_assert!(allowed, "{} listed unconditionally for {} {}", sub, act, res);
                    }
                }
            }
        }
    }

    #[test]
    fn effective_pages_list_what_effective_lists(w in arb_world(true), limit in 1..5usize) {
        let e = Engine::new();
        let mut changes = w.changes.clone();
        // A binding to a missing role lists nothing and must not end a page.
        changes.push(Change::PutBinding(bind("b-missing", "acme/sub", Some("docs"), "user:u0", "nosuch")));
        e.apply(1, &changes);
        let view = e.view("acme/sub", "docs").unwrap();
        let key = |s: &EffectiveStatement| {
            (
                s.principal.clone(),
                s.binding().id.clone(),
                s.binding().tenant.to_string(),
                format!("{:?} {} {:?} {:?}", s.binding().vault, s.index, s.role_path, s.statement),
            )
        };
        for sub in SUBJECTS {
            let mut all: Vec<_> = view.effective(sub, NOW).iter().map(key).collect();
            all.sort();
            let mut paged = Vec::new();
            let mut cursor: Option<EffectiveCursor> = None;
            for _ in 0..1000 {
                let page = view.effective_page(sub, NOW, cursor.as_ref(), limit);
                prop_assert!(page.statements.len() <= limit);
                paged.extend(page.statements.iter().map(key));
                match page.next {
                    Some(c) => {
                        prop_assert_eq!(page.statements.len(), limit, "only a full page has a next one");
                        cursor = Some(EffectiveCursor::decode(&c.encode()).expect("round trip"));
                    }
                    None => break,
                }
            }
            // In (principal, binding) order, each statement exactly once.
            prop_assert!(paged.windows(2).all(|p| (&p[0].0, &p[0].1) <= (&p[1].0, &p[1].1)), "{:?}", paged);
            paged.sort();
            prop_assert_eq!(&paged, &all);
        }
    }

    #[test]
    fn bulk_check_agrees_with_check(w in arb_world(true), x in 0..2i64) {
        let e = Engine::new();
        e.apply(1, &w.changes);
        let ctx = RequestContext::new(serde_json::json!({"x": x, "y": true, "z": true}).as_object().unwrap().clone());
        let mut items = Vec::new();
        for sub in SUBJECTS { for act in ACTIONS { for res in RESOURCES {
            items.push(CheckItem { subject: sub, action: act, resource: res, context: &ctx });
        }}}
        items.push(CheckItem { subject: "nobody", action: "a0", resource: "r0", context: &ctx });
        let bulk = e.check_bulk("acme/sub", "docs", &items, NOW, false).unwrap();
        for (item, got) in items.iter().zip(bulk) {
            let single = e.check("acme/sub", "docs", item, NOW, false);
            match (got, single) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(a), Err(EngineError::Invalid(b))) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "bulk {:?} vs single {:?}", a, b),
            }
        }
    }

    #[test]
    fn incremental_equals_fresh_build(w in arb_world(true), split in 0..20usize) {
        // Applying in two batches (with deletes in between) ends where a single build does.
        let fresh = Engine::new();
        fresh.apply(1, &w.changes);
        let inc = Engine::new();
        let cut = split.min(w.changes.len());
        inc.apply(1, &w.changes[..cut]);
        // Delete and re-add everything after the cut once, to exercise removal paths.
        let mut undo = Vec::new();
        for c in &w.changes[cut..] {
            match c {
                Change::PutBinding(b) => undo.push(Change::DeleteBinding { scope: Scope { tenant: b.tenant.clone(), vault: b.vault.clone() }, id: b.id.clone() }),
                Change::PutMembership(m) => undo.push(Change::DeleteMembership(m.clone())),
                _ => {}
            }
        }
        inc.apply(2, &w.changes[cut..]);
        inc.apply(3, &undo);
        inc.apply(4, &w.changes[cut..]);
        let a = fresh.view("acme/sub", "docs").unwrap();
        let b = inc.view("acme/sub", "docs").unwrap();
        let ctx = RequestContext::new(serde_json::json!({"x": 1, "y": true, "z": true}).as_object().unwrap().clone());
        for sub in SUBJECTS { for act in ACTIONS { for res in RESOURCES {
            let ra = a.check(sub, act, res, &ctx, NOW, false);
            let rb = b.check(sub, act, res, &ctx, NOW, false);
            prop_assert_eq!(ra.allowed, rb.allowed, "{} {} {}", sub, act, res);
            prop_assert_eq!(ra.reason, rb.reason);
        }}}
    }
}
