//! Engine benchmark on the generated org-10k and org-1m datasets.
//!
//! `cargo bench --bench engine` (both shapes) or
//! `cargo bench --bench engine -- org-10k` (one). Prints, per shape: index
//! build time, index memory (bytes held by the engine, measured with a
//! counting allocator), single-thread Check latency percentiles, and the time
//! to apply one incremental binding or membership write.
//!
//! `cargo bench --bench engine -- reverse` times the reverse lookups in the
//! engine alone, on org-10k with a subject reached by 10,000 bindings (see
//! `Dataset::hot_group`): lookup resources and a page of effective
//! permissions for it, and lookup-subjects pages through a resource its
//! group's 5,000 members reach. The gRPC figures are `cargo bench --bench
//! latency -- --lookups`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use portcullis::engine::dataset::{Dataset, Rng, Shape};
use portcullis::engine::{Engine, RequestContext, Timestamp};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

fn run(name: &str, shape: Shape, queries: usize) {
    println!(
        "== {name}: {} users, {} groups, {} roles, {} bindings",
        shape.users, shape.groups, shape.roles, shape.bindings
    );
    let ds = Dataset::generate(shape, 42);
    let before = LIVE.load(Ordering::Relaxed);
    let engine = Engine::new();
    let t0 = Instant::now();
    engine.apply(1, &ds.changes);
    let build = t0.elapsed();
    let mem = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "build index:          {:>10}  ({} changes)",
        fmt(build),
        ds.changes.len()
    );
    println!("index memory:         {:>7.1} MB", mem as f64 / 1e6);

    let now = Timestamp::now();
    let ctx = RequestContext::empty();
    let mut rng = Rng::new(7);
    let qs: Vec<_> = (0..queries).map(|_| ds.query(&mut rng)).collect();
    let view = engine
        .view(ds.tenant.as_str(), ds.vault.as_str())
        .expect("vault exists");
    // Warm up caches and branch predictors.
    for q in qs.iter().take(20_000) {
        std::hint::black_box(view.check(&q.subject, &q.action, &q.resource, &ctx, now, false));
    }
    let mut lat = Vec::with_capacity(qs.len());
    let mut allowed = 0usize;
    let t_all = Instant::now();
    // Requests arrive freshly decoded, so each query is copied into reused
    // buffers before the clock starts, as a server's decode would leave it.
    let (mut subject, mut action, mut resource) = (String::new(), String::new(), String::new());
    for q in &qs {
        subject.clear();
        subject.push_str(&q.subject);
        action.clear();
        action.push_str(&q.action);
        resource.clear();
        resource.push_str(&q.resource);
        let t = Instant::now();
        let r = engine.check(
            ds.tenant.as_str(),
            ds.vault.as_str(),
            &portcullis::engine::CheckItem {
                subject: &subject,
                action: &action,
                resource: &resource,
                context: &ctx,
            },
            now,
            false,
        );
        lat.push(t.elapsed());
        if std::hint::black_box(r).map(|r| r.allowed).unwrap_or(false) {
            allowed += 1;
        }
    }
    let total = t_all.elapsed();
    lat.sort_unstable();
    println!(
        "check (1 thread):     p50 {:>8}  p90 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}  ({:.0} checks/s, {:.0}% allowed, {} queries)",
        fmt(pct(&lat, 0.5)),
        fmt(pct(&lat, 0.9)),
        fmt(pct(&lat, 0.99)),
        fmt(pct(&lat, 0.999)),
        fmt(*lat.last().unwrap()),
        qs.len() as f64 / total.as_secs_f64(),
        allowed as f64 * 100.0 / qs.len() as f64,
        qs.len()
    );

    let mut rev = 2;
    for (label, binding) in [("binding write", true), ("membership write", false)] {
        let mut w = Vec::with_capacity(1000);
        for n in 0..1000 {
            let c = if binding {
                ds.extra_binding(&mut rng, n)
            } else {
                ds.extra_membership(&mut rng)
            };
            let t = Instant::now();
            engine.apply(rev, std::slice::from_ref(&c));
            w.push(t.elapsed());
            rev += 1;
        }
        w.sort_unstable();
        println!(
            "{:<21} p50 {:>8}  p99 {:>8}  max {:>8}  (1,000 single-change batches)",
            format!("{label}:"),
            fmt(pct(&w, 0.5)),
            fmt(pct(&w, 0.99)),
            fmt(*w.last().unwrap())
        );
    }
    println!();
}

/// Median and maximum of `n` runs of `f`.
fn timed<T>(n: usize, mut f: impl FnMut(usize) -> T) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..n)
        .map(|i| {
            let s = Instant::now();
            std::hint::black_box(f(i));
            s.elapsed()
        })
        .collect();
    t.sort_unstable();
    (pct(&t, 0.5), *t.last().expect("runs"))
}

fn reverse() {
    println!("== reverse lookups on org-10k with group:hot (10,000 bindings, 5,001 members)");
    let ds = Dataset::generate(Shape::ORG_10K, 42);
    let engine = Engine::new();
    engine.apply(1, &ds.changes);
    engine.apply(2, &ds.hot_group(10_000, 5_000));
    let view = engine.view(ds.tenant.as_str(), ds.vault.as_str()).expect("vault");
    let now = Timestamp::now();
    let row = |name: &str, (p50, max): (Duration, Duration), what: String| {
        println!("{name:<30} p50 {:>8}  max {:>8}  ({what})", fmt(p50), fmt(max));
    };
    let f = view.resource_filter("user:hot", "documents:read", now);
    row(
        "lookup resources:",
        timed(30, |_| view.resource_filter("user:hot", "documents:read", now)),
        format!("{} grants", f.grants.len() + f.conditional_grants.len()),
    );
    let first = view.effective_page("user:hot", now, None, 1000);
    let cursor = first.next.clone();
    row(
        "effective, first page:",
        timed(30, |_| view.effective_page("user:hot", now, None, 1000)),
        format!("{} statements", first.statements.len()),
    );
    row(
        "effective, second page:",
        timed(30, |_| view.effective_page("user:hot", now, cursor.as_ref(), 1000)),
        "1000 statements".into(),
    );
    let page_in = |view: &portcullis::engine::VaultView, after: Option<&str>| {
        portcullis::engine::lookup_subjects_in(
            view,
            "documents:read",
            "document:f0/s0/file0.txt",
            now,
            portcullis::engine::PageRequest { after, limit: 100 },
        )
    };
    let page = |after: Option<&str>| page_in(&view, after);
    let mut cursors = vec![None];
    while let Some(c) = page(cursors.last().cloned().flatten().as_deref()).next_cursor {
        cursors.push(Some(c));
    }
    // A copy of a view starts without what lookups keep, as the view
    // published after a write does.
    row(
        "lookup subjects, cold:",
        timed(30, |_| page_in(&(*view).clone(), None)),
        "first page, first lookup in a new view".into(),
    );
    row(
        "lookup subjects, first page:",
        timed(30, |_| page(None)),
        format!("{} pages of 100", cursors.len()),
    );
    row(
        "lookup subjects, later pages:",
        timed(30, |i| page(cursors[i % cursors.len()].as_deref())),
        "each page in turn".into(),
    );
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let want = |n: &str| args.is_empty() || args.iter().any(|a| n.contains(a.as_str()));
    if want("org-10k") {
        run("org-10k", Shape::ORG_10K, 500_000);
    }
    if want("org-1m") {
        run("org-1m", Shape::ORG_1M, 500_000);
    }
    if args.iter().any(|a| a == "reverse") {
        reverse();
    }
}
