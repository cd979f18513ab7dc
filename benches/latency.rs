//! Latency over gRPC on loopback against org-10k, beside the echo
//! baseline of the same stack.
//!
//! `cargo bench --bench latency -- [--seconds N] [--tail] [--writes] [--lookups]`
//! (every part when none is named).
//!
//! - `--tail`: at concurrency 1, for `--seconds` (default 30) each: a
//!   CheckPermission (small response), the same checks with explanations (a
//!   larger response) and a LookupSubjects page of 100 (the largest), each
//!   beside an Echo whose response is the same size. Prints p50, p99,
//!   p99.9 and the maximum; the targets are p99.9 ≤ 1 ms and maximum ≤ 5 ms
//!   for checks.
//! - `--writes`: CheckPermission at concurrency 16 read-only, then while
//!   1,000 single-binding WriteBindings a second go to the same replica.
//!   Prints both check p99s and their ratio (target ≤ 1.5×), and the
//!   write-to-visible time: from sending a write to a check that asks for
//!   that write (`at_least_as_fresh`) being answered (target p99 ≤ 5 ms).
//! - `--lookups`: the reverse lookups at concurrency 1, for a subject
//!   reached by 10,000 bindings (a user in a group holding them):
//!   LookupResources and GetEffectivePermissions for it, and LookupSubjects
//!   paged through a resource every dataset user can reach, first page and
//!   every later page (target ≤ 5 ms each), each beside an Echo of its
//!   response's size.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portcullis::engine::Change;
use portcullis::server::ServeOptions;
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::admin_service_client::AdminServiceClient;
use portcullis_proto::v1::diagnostics_service_client::DiagnosticsServiceClient;
use portcullis_proto::v1::permission_service_client::PermissionServiceClient;
use prost::Message;
use support::{Figures, Org10k, measure, ms, pct};
use tonic::transport::Channel;

fn row(name: &str, f: &Figures) {
    println!(
        "{:<34} {:>9.0} {:>10} {:>10} {:>10} {:>10}",
        name,
        f.rps,
        ms(f.p50),
        ms(f.p99),
        ms(f.p999),
        ms(f.max)
    );
}

async fn checks(
    chs: &[Channel],
    qs: &Arc<Vec<pb::CheckPermissionRequest>>,
    c: usize,
    s: u64,
    explain: bool,
) -> Figures {
    let (chs, qs) = (chs.to_vec(), qs.clone());
    measure(c, s, move |i| {
        let mut client = PermissionServiceClient::new(chs[i % chs.len()].clone());
        let mut req = qs[i % qs.len()].clone();
        req.explain = explain;
        async move {
            client.check_permission(req).await.expect("check");
        }
    })
    .await
}

async fn echo(chs: &[Channel], c: usize, s: u64, bytes: usize) -> Figures {
    let chs = chs.to_vec();
    // The payload's field tag and length take a few bytes of the response.
    let payload = vec![b'x'; bytes.saturating_sub(4).max(1)];
    measure(c, s, move |i| {
        let mut client = DiagnosticsServiceClient::new(chs[i % chs.len()].clone());
        let req = pb::EchoRequest {
            payload: payload.clone(),
        };
        async move {
            client.echo(req).await.expect("echo");
        }
    })
    .await
}

async fn tail(o: &Org10k, seconds: u64) {
    let (chs, qs) = (&o.channels, &o.queries);
    let mut p = PermissionServiceClient::new(chs[0].clone());
    // Response sizes, to give each Echo the same.
    let mut small = 0;
    let mut explained = 0;
    for q in qs.iter().take(200) {
        let mut r = q.clone();
        small = small.max(p.check_permission(r.clone()).await.unwrap().into_inner().encoded_len());
        r.explain = true;
        explained = explained.max(p.check_permission(r).await.unwrap().into_inner().encoded_len());
    }
    let (tenant, vault, q) = (o.ds.tenant.to_string(), o.ds.vault.to_string(), qs.clone());
    let lookup = move |i: usize| pb::LookupSubjectsRequest {
        tenant: tenant.clone(),
        vault: vault.clone(),
        action: q[i].action.clone(),
        resource: q[i].resource.clone(),
        page_size: 100,
        ..Default::default()
    };
    let page = p.lookup_subjects(lookup(0)).await.unwrap().into_inner().encoded_len();
    println!(
        "\nconcurrency 1, {seconds}s each (response bytes: check {small}, explained up to {explained}, lookup page {page})"
    );
    println!(
        "{:<34} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "", "req/s", "p50", "p99", "p99.9", "max"
    );
    row("CheckPermission", &checks(chs, qs, 1, seconds, false).await);
    row(&format!("Echo {small} B"), &echo(chs, 1, seconds, small).await);
    row("CheckPermission, explain", &checks(chs, qs, 1, seconds, true).await);
    row(&format!("Echo {explained} B"), &echo(chs, 1, seconds, explained).await);
    let chs2 = chs.clone();
    let lookup2 = lookup.clone();
    let lookups = measure(1, seconds, move |i| {
        let mut client = PermissionServiceClient::new(chs2[i % chs2.len()].clone());
        let req = lookup2(i % 1000);
        async move {
            client.lookup_subjects(req).await.expect("lookup");
        }
    })
    .await;
    row("LookupSubjects, page of 100", &lookups);
    row(&format!("Echo {page} B"), &echo(chs, 1, seconds, page).await);
}

async fn under_writes(o: &Org10k, seconds: u64) {
    let (chs, qs) = (&o.channels, &o.queries);
    let read_only = checks(chs, qs, 16, seconds, false).await;
    // Writes of one binding each, copies of the dataset's with new ids.
    let Some(template) = o.ds.changes.iter().find_map(|c| match c {
        Change::PutBinding(b) => Some(portcullis::api::convert::binding_to(b)),
        _ => None,
    }) else {
        panic!("the dataset has bindings")
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tenant, vault) = (o.ds.tenant.to_string(), o.ds.vault.to_string());
    let writer = {
        let (ch, stop) = (chs[0].clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let inflight = Arc::new(tokio::sync::Semaphore::new(64));
            let mut tasks = Vec::new();
            let started = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break;
                };
                let (ch, mut b) = (ch.clone(), template.clone());
                b.id = format!("bench-w{i}");
                // Spread over the dataset's users, as real grants are.
                b.subject = format!("user:u{}", i % 10_000);
                let (tenant, vault) = (tenant.clone(), vault.clone());
                i += 1;
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    let t = Instant::now();
                    let written = AdminServiceClient::new(ch.clone())
                        .write_bindings(pb::WriteBindingsRequest {
                            tenant: tenant.clone(),
                            vault: vault.clone(),
                            upserts: vec![b],
                            ..Default::default()
                        })
                        .await
                        .expect("write")
                        .into_inner()
                        .written_at;
                    // Visible: a check asking for this write is answered.
                    PermissionServiceClient::new(ch)
                        .check_permission(pb::CheckPermissionRequest {
                            tenant,
                            vault,
                            subject: "user:nobody".into(),
                            action: "documents:read".into(),
                            resource: "document:x".into(),
                            consistency: Some(pb::Consistency {
                                requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(written)),
                            }),
                            ..Default::default()
                        })
                        .await
                        .expect("fresh check");
                    t.elapsed()
                }));
            }
            let mut visible = Vec::new();
            for t in tasks {
                visible.push(t.await.expect("writer"));
            }
            (visible, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = checks(chs, qs, 16, seconds, false).await;
    stop.store(true, Ordering::Relaxed);
    let (mut visible, took) = writer.await.expect("writer");
    let retries: String = o
        .srv
        .metrics()
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("portcullis_store_retries_total") || l.starts_with("portcullis_store_transactions_total")
        })
        .collect::<Vec<_>>()
        .join("; ");
    println!("store: {retries}");
    visible.sort_unstable();
    println!("\nCheckPermission at concurrency 16, {seconds}s each, read-only and during single-binding writes");
    println!(
        "{:<34} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "", "checks/s", "p50", "p99", "p99.9", "max"
    );
    row("read-only", &read_only);
    row("during writes", &during);
    println!(
        "writes: {} at {:.0}/s; check p99 during writes / read-only: {:.2}x (target <= 1.5x); write-to-visible p50 {}, p99 {} (target <= 5 ms), max {}",
        visible.len(),
        visible.len() as f64 / took.as_secs_f64(),
        during.p99.as_secs_f64() / read_only.p99.as_secs_f64(),
        ms(pct(&visible, 0.5)),
        ms(pct(&visible, 0.99)),
        ms(*visible.last().unwrap_or(&Duration::ZERO))
    );
}

/// Bindings held by `group:hot` (see `Dataset::hot_group`): a subject
/// reached by 10,000 bindings, in a group of 5,000 members.
const HOT_BINDINGS: usize = 10_000;
const HOT_MEMBERS: usize = 5_000;

async fn lookups(o: &Org10k, seconds: u64) {
    let chs = &o.channels;
    let (tenant, vault) = (o.ds.tenant.to_string(), o.ds.vault.to_string());
    let mut admin = AdminServiceClient::new(chs[0].clone());
    let (mut hot, mut members) = (Vec::new(), Vec::new());
    for c in o.ds.hot_group(HOT_BINDINGS, HOT_MEMBERS) {
        match c {
            Change::PutBinding(b) => hot.push(portcullis::api::convert::binding_to(&b)),
            Change::PutMembership(m) => members.push(portcullis::api::convert::membership_to(&m)),
            _ => {}
        }
    }
    for chunk in hot.chunks(1000) {
        admin
            .write_bindings(pb::WriteBindingsRequest {
                tenant: tenant.clone(),
                vault: vault.clone(),
                upserts: chunk.to_vec(),
                ..Default::default()
            })
            .await
            .expect("hot bindings");
    }
    let mut written = String::new();
    for chunk in members.chunks(1000) {
        written = admin
            .write_memberships(pb::WriteMembershipsRequest {
                tenant: tenant.clone(),
                vault: vault.clone(),
                upserts: chunk.to_vec(),
                ..Default::default()
            })
            .await
            .expect("hot memberships")
            .into_inner()
            .written_at;
    }
    let fresh = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(written)),
    });
    let client = |ch: &Channel| {
        PermissionServiceClient::new(ch.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    };
    let resources = pb::LookupResourcesRequest {
        tenant: tenant.clone(),
        vault: vault.clone(),
        subject: "user:hot".into(),
        action: "documents:read".into(),
        consistency: fresh.clone(),
    };
    let effective = pb::GetEffectivePermissionsRequest {
        tenant: tenant.clone(),
        vault: vault.clone(),
        subject: "user:hot".into(),
        consistency: fresh.clone(),
        ..Default::default()
    };
    // A resource in the first folder: the dataset's folder-wide and
    // namespace-wide grants reach many of its users.
    let (t2, v2, f2) = (tenant.clone(), vault.clone(), fresh.clone());
    let subjects = move |token: String| pb::LookupSubjectsRequest {
        tenant: t2.clone(),
        vault: v2.clone(),
        action: "documents:read".into(),
        resource: "document:f0/s0/file0.txt".into(),
        page_size: 100,
        page_token: token,
        consistency: f2.clone(),
    };
    let mut p = client(&chs[0]);
    // Warm: the first lookup after a write may build what later ones reuse.
    p.lookup_subjects(subjects(String::new()))
        .await
        .expect("lookup subjects");
    let r = p
        .lookup_resources(resources.clone())
        .await
        .expect("lookup resources")
        .into_inner();
    // Every page of effective permissions, to ask for each in turn.
    let mut e_tokens = vec![String::new()];
    let (mut statements, mut eb) = (0, 0);
    loop {
        let mut req = effective.clone();
        req.page_token = e_tokens.last().cloned().unwrap_or_default();
        let page = p.get_effective_permissions(req).await.expect("effective").into_inner();
        statements += page.statements.len();
        eb = eb.max(page.encoded_len());
        if page.next_page_token.is_empty() {
            break;
        }
        e_tokens.push(page.next_page_token);
    }
    // Every page's token, to ask for each page in turn.
    let mut tokens = vec![String::new()];
    let mut reached = 0;
    let mut page_bytes = 0;
    loop {
        let page = p
            .lookup_subjects(subjects(tokens.last().cloned().unwrap_or_default()))
            .await
            .expect("lookup subjects")
            .into_inner();
        reached += page.subjects.len();
        page_bytes = page_bytes.max(page.encoded_len());
        if page.next_page_token.is_empty() {
            break;
        }
        tokens.push(page.next_page_token);
    }
    println!(
        "\nreverse lookups at concurrency 1, {seconds}s each: user:hot reached by {HOT_BINDINGS} bindings through group:hot \
         ({} grants; {statements} effective statements in {} pages of 1000); LookupSubjects reaches {reached} subjects in {} pages of 100",
        r.grants.len() + r.conditional_grants.len(),
        e_tokens.len(),
        tokens.len()
    );
    println!(
        "{:<34} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "", "req/s", "p50", "p99", "p99.9", "max"
    );
    let rb = r.encoded_len();
    let run = |name: &'static str| {
        let chs = chs.to_vec();
        let (resources, effective, tokens, e_tokens) =
            (resources.clone(), effective.clone(), tokens.clone(), e_tokens.clone());
        let subjects = subjects.clone();
        measure(1, seconds, move |i| {
            let mut c = client(&chs[i % chs.len()]);
            let resources = resources.clone();
            let mut effective = effective.clone();
            effective.page_token = e_tokens[i % e_tokens.len()].clone();
            // Later pages only: a page past the first must not cost a rescan.
            let later = &tokens[1.min(tokens.len() - 1)..];
            let later = subjects(later[i % later.len()].clone());
            let first = subjects(String::new());
            async move {
                match name {
                    "resources" => drop(c.lookup_resources(resources).await.expect("lookup resources")),
                    "effective" => drop(c.get_effective_permissions(effective).await.expect("effective")),
                    "first" => drop(c.lookup_subjects(first).await.expect("first page")),
                    _ => drop(c.lookup_subjects(later).await.expect("later page")),
                }
            }
        })
    };
    row("LookupResources", &run("resources").await);
    row(&format!("Echo {rb} B"), &echo(chs, 1, seconds, rb).await);
    row("GetEffectivePermissions, a page", &run("effective").await);
    row(&format!("Echo {eb} B"), &echo(chs, 1, seconds, eb).await);
    row("LookupSubjects, first page", &run("first").await);
    if tokens.len() > 1 {
        row("LookupSubjects, a later page", &run("later").await);
    }
    row(
        &format!("Echo {page_bytes} B"),
        &echo(chs, 1, seconds, page_bytes).await,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: Option<u64> = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok());
    let named = |f: &str| args.iter().any(|a| a == f);
    let (want_tail, want_writes, want_lookups) = match (named("--tail"), named("--writes"), named("--lookups")) {
        (false, false, false) => (true, true, true),
        x => x,
    };
    let rt = support::runtime();
    rt.block_on(async move {
        let o = Org10k::serve(ServeOptions {
            metrics_listen: None,
            ..ServeOptions::for_tests()
        })
        .await;
        if want_tail {
            tail(&o, seconds.unwrap_or(30)).await;
        }
        if want_writes {
            under_writes(&o, seconds.unwrap_or(10)).await;
        }
        if want_lookups {
            lookups(&o, seconds.unwrap_or(5)).await;
        }
        o.srv.shutdown().await;
    });
}
