//! The most expensive checks a caller can cause, measured: each case is a
//! condition the write-time estimate accepts, with the largest context the
//! API accepts (256-element lists, 4 KiB strings, 64 KiB in all), checked
//! with the full per-check budget. Prints the CPU time per check (p50 and
//! maximum over the runs) and whether the budget ran out; the target is at
//! most 10 ms per check whatever the condition and context.
//!
//! `cargo bench --bench cel_cost`

use std::time::{Duration, Instant};

use portcullis::engine::ids::{RoleName, Subject, TenantId, VaultName};
use portcullis::engine::model::{Binding, Change, Role, Statement, Tenant, Vault};
use portcullis::engine::{CheckItem, Engine, RequestContext, Timestamp, cost};
use serde_json::{Value, json};

fn engine_with(condition: &str) -> Engine {
    let t = TenantId::parse("acme").unwrap();
    let v = VaultName::parse("docs").unwrap();
    let r = RoleName::parse("r").unwrap();
    let e = Engine::new();
    portcullis::engine::condition::Condition::compile(condition)
        .unwrap_or_else(|err| panic!("{condition}: refused at write time: {err}"));
    e.apply(
        1,
        &[
            Change::PutTenant(Tenant::new(t.clone())),
            Change::PutVault(Vault {
                tenant: t.clone(),
                name: v.clone(),
                display_name: String::new(),
                labels: Default::default(),
            }),
            Change::PutRole(Role {
                tenant: t.clone(),
                vault: None,
                name: r.clone(),
                description: String::new(),
                statements: vec![Statement::allow(&["read"], &["*"]).with_condition(condition)],
                inherits: vec![],
                labels: Default::default(),
            }),
            Change::PutBinding(Binding::to_role(
                "b",
                &t,
                Some(&v),
                &Subject::parse("user:u").unwrap(),
                &r,
            )),
        ],
    );
    e
}

fn strings(n: usize, len: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                let mut s = format!("item-{i}-");
                while s.len() < len {
                    s.push('x');
                }
                Value::String(s)
            })
            .collect(),
    )
}

fn main() {
    let maps: Vec<Value> = (0..64)
        .map(|i| {
            let m: serde_json::Map<String, Value> = (0..12).map(|k| (format!("k{k}"), json!(i * k))).collect();
            Value::Object(m)
        })
        .collect();
    let cases: Vec<(&str, String, Value)> = vec![
        (
            "two nested all over 256-element lists",
            "context.xs.all(a, context.ys.all(b, a == b || a != b))".into(),
            json!({"xs": strings(256, 24), "ys": strings(256, 24)}),
        ),
        (
            "membership in a 256-element list, per element",
            "context.xs.all(a, a in context.ys)".into(),
            json!({"xs": strings(256, 24), "ys": strings(256, 24)}),
        ),
        (
            "equality of maps, per pair",
            "context.ms.all(a, context.ms.exists(b, a == b && a != b))".into(),
            json!({"ms": maps}),
        ),
        (
            "a regular expression per element",
            "context.xs.all(a, a.matches('^item-[0-9]+-x+$'))".into(),
            json!({"xs": strings(256, 200)}),
        ),
        (
            "string scans of 4 KiB strings",
            "context.ss.all(s, context.ss.exists(t, s.contains(t + 'zzz')))".into(),
            json!({"ss": strings(15, 4096)}),
        ),
        (
            "three nested over 40-element literal lists",
            {
                let l = format!("[{}]", (0..40).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
                format!("{l}.all(a, {l}.all(b, {l}.exists(c, a + b == c + 1000)))")
            },
            json!({}),
        ),
        (
            "lists built per element",
            "context.xs.map(a, context.xs).all(l, l.exists(x, x == 'nope'))".into(),
            json!({"xs": strings(256, 24)}),
        ),
    ];
    println!(
        "per-check budget {} steps; target <= 10 ms of CPU per check\n",
        cost::CHECK_BUDGET
    );
    println!("| case | context bytes | p50 | max | budget ran out |\n|---|---|---|---|---|");
    let mut worst = Duration::ZERO;
    for (name, cond, ctx) in cases {
        let e = engine_with(&cond);
        let json = match ctx {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let bytes = serde_json::to_vec(&json).unwrap().len();
        let mut times = Vec::new();
        let mut exhausted = false;
        for _ in 0..40 {
            let ctx = RequestContext::new(json.clone()).with_budget(cost::CHECK_BUDGET);
            let item = CheckItem {
                subject: "user:u",
                action: "read",
                resource: "doc:x",
                context: &ctx,
            };
            let t0 = Instant::now();
            let r = e.check("acme", "docs", &item, Timestamp::now(), false).unwrap();
            times.push(t0.elapsed());
            exhausted |= ctx.budget().exhausted();
            std::hint::black_box(r);
        }
        times.sort();
        let max = *times.last().unwrap();
        worst = worst.max(max);
        println!(
            "| {name} | {bytes} | {:.2} ms | {:.2} ms | {} |",
            times[times.len() / 2].as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            if exhausted { "yes" } else { "no" }
        );
    }
    println!("\nworst check: {:.2} ms", worst.as_secs_f64() * 1e3);
}
