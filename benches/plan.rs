//! PlanChanges on org-10k: the time to plan 1,000 binding changes (upserts
//! and deletes, single vault) and a role change (every subject bound to it),
//! with the size of the access impact.
//!
//! `cargo bench --bench plan`

use std::time::{Duration, Instant};

use portcullis::api::convert;
use portcullis::engine::Timestamp;
use portcullis::engine::dataset::{Dataset, Rng, Shape};
use portcullis::engine::model::Change;
use portcullis_proto::v1 as pb;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let ds = Dataset::generate(Shape::ORG_10K, 42);
    let engine = portcullis::engine::Engine::new();
    engine.apply(1, &ds.changes);
    let mut rng = Rng::new(9);
    let existing: Vec<&portcullis::engine::model::Binding> = ds
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::PutBinding(b) => Some(b),
            _ => None,
        })
        .collect();
    let mut req = pb::PlanChangesRequest::default();
    for n in 0..800 {
        if let Change::PutBinding(b) = ds.extra_binding(&mut rng, n) {
            req.bindings.push(convert::binding_to(&b));
        }
    }
    for _ in 0..200 {
        let b = rng.pick(&existing);
        req.delete_bindings.push(pb::ObjectRef {
            tenant: b.tenant.to_string(),
            vault: b.vault.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            name: b.id.clone(),
        });
    }
    let now = Timestamp::now();
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let t = Instant::now();
        last = Some(portcullis::api::plan::plan(&engine, &req, now));
        times.push(t.elapsed());
    }
    let plan = last.expect("ran");
    assert!(plan.violations.is_empty(), "{:?}", plan.violations);
    println!(
        "org-10k, 1,000 binding changes: plan {:>8.1} ms median of 5; {} objects, {} subjects whose access changes",
        median(times).as_secs_f64() * 1e3,
        plan.objects.len(),
        plan.access.len()
    );

    // A role change: every subject reached by a binding to the role.
    let role = ds
        .changes
        .iter()
        .find_map(|c| match c {
            Change::PutRole(r) => Some(r.clone()),
            _ => None,
        })
        .expect("a role");
    let mut changed = role.clone();
    changed.statements.truncate(1);
    let req = pb::PlanChangesRequest {
        roles: vec![convert::role_to(&changed, 0)],
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        last = Some(portcullis::api::plan::plan(&engine, &req, now));
        times.push(t.elapsed());
    }
    let plan = last.expect("ran");
    println!(
        "org-10k, one role changed:      plan {:>8.1} ms median of 3; {} subjects whose access changes",
        median(times).as_secs_f64() * 1e3,
        plan.access.len()
    );
}
