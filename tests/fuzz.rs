//! Fuzzing, as property tests: every parser, validator and decoder a request
//! reaches takes arbitrary input without panicking, and CEL evaluation stays
//! within its budget whatever the condition and context.
//!
//! The stable toolchain here cannot build cargo-fuzz targets (they need
//! nightly's sanitizers), so these run with proptest: briefly in every
//! `cargo test` (256 cases each), and longer with
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz`.

use portcullis::api::convert;
use portcullis::engine::condition::{Condition, Vars, cel_timestamp};
use portcullis::engine::ids::{self, RoleName, Subject, TenantId, VaultName};
use portcullis::engine::pattern::{Pattern, PatternSet};
use portcullis::engine::{RequestContext, Timestamp, cost, validate};
use portcullis_proto::v1 as pb;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,64}",
        "[a-z0-9/:.*?_-]{0,40}",
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Strings that look like CEL, so the parser goes deep.
fn cel_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z()\\[\\]{}.,'\" =<>!&|+*/%?:0-9-]{0,80}",
        proptest::collection::vec(
            prop_oneof![
                Just("context.xs".to_string()),
                Just("subject".to_string()),
                Just(".all(a, ".to_string()),
                Just(".exists(b, ".to_string()),
                Just(".map(c, ".to_string()),
                Just(".filter(d, ".to_string()),
                Just(")".to_string()),
                Just(" == ".to_string()),
                Just(" && ".to_string()),
                Just(" in ".to_string()),
                Just("[1, 2, 3]".to_string()),
                Just("'x'".to_string()),
                Just("a".to_string()),
                Just(".matches('a+')".to_string()),
                Just("size(".to_string()),
            ],
            0..24
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn json_value(depth: u32) -> BoxedStrategy<serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i32>().prop_map(|n| serde_json::json!(n)),
        "[a-z]{0,8}".prop_map(serde_json::Value::String),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        leaf,
        proptest::collection::vec(json_value(depth - 1), 0..8).prop_map(serde_json::Value::Array),
        proptest::collection::btree_map("[a-z]{1,3}", json_value(depth - 1), 0..6)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
    ]
    .boxed()
}

proptest! {
    #[test]
    fn identifiers_never_panic(s in text()) {
        let _ = TenantId::parse(&s);
        let _ = VaultName::parse(&s);
        let _ = RoleName::parse(&s);
        let _ = Subject::parse(&s);
        let _ = ids::check_action(&s);
        let _ = ids::check_resource(&s);
        let _ = ids::check_action_pattern(&s);
        let _ = ids::check_resource_pattern(&s);
        let _ = ids::check_binding_id(&s);
        let _ = ids::check_label_key(&s);
        let _ = ids::check_label_value(&s);
        let _ = ids::check_group(&s);
        let _ = Timestamp::parse_rfc3339(&s);
    }

    #[test]
    fn patterns_never_panic(p in text(), input in text(), more in proptest::collection::vec(text(), 0..5)) {
        let pat = Pattern::compile(&p);
        let _ = pat.matches(&input);
        let mut all = more.clone();
        all.push(p);
        let set = PatternSet::compile(&all, true);
        let _ = set.matches(&input);
    }

    /// The SDK evaluates lookup filters locally with its own matcher: it
    /// must agree with the engine's on every pattern and input.
    #[test]
    fn the_sdks_pattern_matcher_agrees_with_the_engines(
        p in prop_oneof!["[ab*?é/]{0,8}", text()],
        input in prop_oneof!["[abé/]{0,10}", text()],
    ) {
        prop_assert_eq!(
            portcullis_client::pattern_matches(&p, &input),
            Pattern::compile(&p).matches(&input),
            "pattern {:?} input {:?}", p, input
        );
    }

    #[test]
    fn conditions_compile_or_refuse_and_evaluate_within_budget(src in cel_like(), ctx in json_value(3)) {
        if let Ok(c) = Condition::compile(&src) {
            let map = match ctx {
                serde_json::Value::Object(m) => m,
                other => [("xs".to_string(), other)].into_iter().collect(),
            };
            let context = RequestContext::new(map).with_budget(cost::CHECK_BUDGET);
            let vars = Vars {
                subject: "user:a",
                action: "read",
                resource: "doc:x",
                context: &context,
                now: cel_timestamp(Timestamp::now()),
            };
            let _ = c.eval(&vars);
        }
    }

    #[test]
    fn manifests_never_panic(s in text(), yaml in "[a-zA-Z:{}\\[\\], \\n-]{0,200}") {
        let _ = portcullis::manifest::parse_documents(&s);
        let _ = portcullis::manifest::parse_documents(&yaml);
    }

    #[test]
    fn request_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        use prost::Message;
        let b = &bytes[..];
        let _ = pb::CheckPermissionRequest::decode(b);
        let _ = pb::CheckBulkPermissionsRequest::decode(b);
        let _ = pb::LookupResourcesRequest::decode(b);
        let _ = pb::LookupSubjectsRequest::decode(b);
        let _ = pb::GetEffectivePermissionsRequest::decode(b);
        let _ = pb::ApplyTenantRequest::decode(b);
        let _ = pb::ApplyVaultRequest::decode(b);
        let _ = pb::ApplyRoleRequest::decode(b);
        let _ = pb::WriteBindingsRequest::decode(b);
        let _ = pb::WriteMembershipsRequest::decode(b);
        let _ = pb::ImportVaultRequest::decode(b);
        let _ = pb::WatchRequest::decode(b);
        if let Ok(r) = pb::ApplyRoleRequest::decode(b)
            && let Some(role) = r.role
            && let Ok(role) = convert::role_from(&role, "role")
        {
            let _ = validate::role(&role);
        }
        if let Ok(r) = pb::WriteBindingsRequest::decode(b) {
            for (i, x) in r.upserts.iter().enumerate() {
                if let Ok(bd) = convert::binding_from(x, &format!("upserts[{i}]"), &r.tenant, &r.vault) {
                    let _ = validate::binding(&bd);
                }
            }
        }
        if let Ok(r) = pb::CheckPermissionRequest::decode(b) && let Some(c) = &r.context {
            let _ = convert::context_from("context", c);
        }
        if let Ok(r) = pb::ApplyTenantRequest::decode(b) && let Some(t) = &r.tenant {
            let _ = convert::tenant_from(t, "tenant");
        }
        if let Ok(r) = pb::WriteMembershipsRequest::decode(b) {
            for m in &r.upserts {
                let _ = convert::membership_from(m, "upserts[0]", &r.tenant, &r.vault);
            }
        }
    }

    /// Whatever the API accepts as a timestamp round-trips through a stored
    /// record (RFC 3339) exactly.
    #[test]
    fn accepted_timestamps_round_trip(seconds in any::<i64>(), nanos in any::<i32>()) {
        if let Ok(t) = Timestamp::from_unix(seconds, nanos) {
            let json = serde_json::to_string(&t).unwrap();
            let back: Timestamp = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, t);
        }
    }
}

fn ts() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    prop_oneof![
        Just(None),
        (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos })),
        (-62_135_596_800i64..253_402_300_800, 0..1_000_000_000i32)
            .prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the API accepts as a binding is stored by every backend and
    /// read back, by the index too, exactly as written.
    #[test]
    fn accepted_bindings_round_trip_through_every_backend(
        nb in ts(),
        exp in ts(),
        label in "\\PC{0,20}",
        scope in proptest::collection::vec("[a-z:/*]{1,12}", 0..3),
    ) {
        let mut p = pb::Binding {
            id: "b".into(),
            subject: "user:a".into(),
            role: "r".into(),
            scope,
            not_before: nb,
            expires_at: exp,
            ..Default::default()
        };
        p.labels.insert("k".into(), label);
        let Ok(b) = convert::binding_from(&p, "upserts[0]", "acme", "docs") else { return Ok(()) };
        if validate::binding(&b).is_err() {
            return Ok(());
        }
        let dir = tempfile::tempdir().unwrap();
        let stores: Vec<std::sync::Arc<dyn portcullis::store::Store>> = vec![
            std::sync::Arc::new(portcullis::store::memory::MemoryStore::new()),
            std::sync::Arc::new(portcullis::store::embedded::EmbeddedStore::open(dir.path()).unwrap()),
        ];
        for store in stores {
            let repo = portcullis::repo::Repo::new(store);
            let t = TenantId::parse("acme").unwrap();
            let v = VaultName::parse("docs").unwrap();
            repo.apply_tenant(&portcullis::audit::Actor::new("test", "apply_tenant"), portcullis::engine::model::Tenant::new(t.clone()), None, None).unwrap();
            repo.apply_vault(
                &portcullis::audit::Actor::new("test", "apply_vault"),
                portcullis::engine::model::Vault { tenant: t.clone(), name: v.clone(), display_name: String::new(), labels: Default::default() },
                None,
            )
            .unwrap();
            repo.write_bindings(&portcullis::audit::Actor::new("test", "write_bindings"), &t, Some(&v), std::slice::from_ref(&b), &[], None).unwrap();
            let loaded = repo.load_all().unwrap();
            prop_assert!(loaded.corrupt.is_empty(), "{:?}", loaded.corrupt);
            let back = loaded.changes.iter().find_map(|c| match c {
                portcullis::engine::model::Change::PutBinding(x) => Some(x.clone()),
                _ => None,
            });
            prop_assert_eq!(back.as_ref(), Some(&b));
            let (list, _) = repo.list_bindings(&t, Some(&v), None, None, "", 10).unwrap();
            prop_assert_eq!(&list[..], std::slice::from_ref(&b));
            let index = portcullis::index::LiveIndex::load(std::sync::Arc::new(repo)).unwrap();
            prop_assert!(index.engine().quarantined().scopes.is_empty());
        }
    }
}
