//! The background jobs the leader runs, and the loop that campaigns for the
//! lease ([`crate::lease`]) and runs them while it holds it.
//!
//! # The jobs (leader only)
//! 1. `purge`: delete expired bindings (checks already ignore them) and
//!    append the deletions to the changelog, so every replica drops them.
//! 2. `compact`: drop changelog and feed entries older than the retention.
//! 3. `usage`: recount each tenant's vaults, roles and bindings, correct the
//!    counters limits are enforced with, and publish the totals.
//! 4. `verify`: compare the live index with the store on a sample of vaults.
//!
//! Each job's last run is stored, so across failovers a job runs once per
//! interval, not once per replica.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::engine::ids::{TenantId, VaultName};
use crate::engine::model::{Binding, Change, Membership, Role, Scope, Vault};
use crate::error::{Result, ServiceError};
use crate::index::LiveIndex;
pub use crate::lease::{LEASE, fence};
use crate::lease::{LeaderStatus, acquire, release};
use crate::repo::{self, Repo, append_changelog, decode, range_prefix, read};
use crate::store::{self, RangeOpts, keyspace as ks, tuple};
use crate::telemetry;

#[derive(Debug, Clone)]
pub struct JobOptions {
    pub lease_ttl: Duration,
    pub purge_interval: Duration,
    pub compact_interval: Duration,
    pub changelog_retention: Duration,
    pub usage_interval: Duration,
    pub verify_interval: Duration,
    /// Vaults compared per verify run.
    pub verify_sample: usize,
    /// This replica's identity in the lease; random when `None`.
    pub holder: Option<String>,
    /// Test hook: while true, the lease loop does nothing at all (neither
    /// renews nor stops the jobs), as a stalled process would.
    pub stall: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            lease_ttl: Duration::from_secs(15),
            purge_interval: Duration::from_secs(60),
            compact_interval: Duration::from_secs(600),
            changelog_retention: Duration::from_secs(24 * 3600),
            usage_interval: Duration::from_secs(60),
            verify_interval: Duration::from_secs(300),
            verify_sample: 3,
            holder: None,
            stall: None,
        }
    }
}

/// Command-line flags of leadership and jobs.
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// Leader lease time-to-live, in seconds.
    #[arg(long, env = "PORTCULLIS_LEASE_TTL", default_value_t = 15)]
    pub lease_ttl: u64,
    /// Seconds between purges of expired bindings.
    #[arg(long, env = "PORTCULLIS_PURGE_INTERVAL", default_value_t = 60)]
    pub purge_interval: u64,
    /// Seconds between changelog compactions.
    #[arg(long, env = "PORTCULLIS_COMPACT_INTERVAL", default_value_t = 600)]
    pub compact_interval: u64,
    /// How long the changelog keeps changes, in seconds (Watch can resume within it).
    #[arg(long, env = "PORTCULLIS_CHANGELOG_RETENTION", default_value_t = 86_400)]
    pub changelog_retention: u64,
    /// Seconds between usage accountings.
    #[arg(long, env = "PORTCULLIS_USAGE_INTERVAL", default_value_t = 60)]
    pub usage_interval: u64,
    /// Seconds between index verifications.
    #[arg(long, env = "PORTCULLIS_VERIFY_INTERVAL", default_value_t = 300)]
    pub verify_interval: u64,
}

impl JobArgs {
    pub fn options(&self) -> JobOptions {
        let s = |n: u64| Duration::from_secs(n.max(1));
        JobOptions {
            lease_ttl: s(self.lease_ttl),
            purge_interval: s(self.purge_interval),
            compact_interval: s(self.compact_interval),
            changelog_retention: s(self.changelog_retention),
            usage_interval: s(self.usage_interval),
            verify_interval: s(self.verify_interval),
            ..JobOptions::default()
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---- the jobs ------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Purge,
    Compact,
    Usage,
    Verify,
}

impl Job {
    pub const ALL: [Job; 4] = [Job::Purge, Job::Compact, Job::Usage, Job::Verify];

    pub fn name(self) -> &'static str {
        match self {
            Job::Purge => "purge",
            Job::Compact => "compact",
            Job::Usage => "usage",
            Job::Verify => "verify",
        }
    }

    fn interval(self, o: &JobOptions) -> Duration {
        match self {
            Job::Purge => o.purge_interval,
            Job::Compact => o.compact_interval,
            Job::Usage => o.usage_interval,
            Job::Verify => o.verify_interval,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    last_run_ms: u64,
    epoch: u64,
    holder: String,
}

/// Claims the job's current interval: `Ok(true)` when it is due and now
/// recorded as run by this leader.
fn claim(repo: &Repo, job: Job, epoch: u64, holder: &str, interval: Duration, now: u64) -> Result<bool> {
    let (due, _) = store::run::<_, ServiceError>(&*repo.store, |tx| {
        fence(tx, LEASE, epoch)?;
        let key = ks::job(job.name());
        let last: Option<JobRecord> = tx.get(&key)?.and_then(|v| serde_json::from_slice(&v).ok());
        if last.is_some_and(|l| now < l.last_run_ms + interval.as_millis() as u64) {
            return Ok(false);
        }
        let rec = JobRecord {
            last_run_ms: now,
            epoch,
            holder: holder.to_string(),
        };
        tx.set(
            &key,
            &serde_json::to_vec(&rec).map_err(|e| ServiceError::Internal(e.to_string()))?,
        );
        Ok(true)
    })?;
    Ok(due)
}

/// Deletes bindings whose `expires_at` has passed. Returns how many.
pub fn purge(repo: &Repo, epoch: u64, now_micros: i64) -> Result<usize> {
    let mut total = 0;
    loop {
        let (n, _) = store::run::<_, ServiceError>(&*repo.store, |tx| {
            fence(tx, LEASE, epoch)?;
            let (begin, _) = tuple::prefix_range(&ks::expiries());
            let end = ks::expiry_before(now_micros);
            let due = tx.range(&begin, &end, RangeOpts::limit(500))?;
            let mut changes = Vec::new();
            let mut count: std::collections::BTreeMap<(String, String), i64> = Default::default();
            for (k, _) in &due {
                tx.clear(k);
                let row = ks::expiry_of(k).ok_or_else(|| repo::corrupt(k, "expiry key"))?;
                let vault = row.vault.as_deref();
                // A record that cannot be read is left for a repair.
                let Ok(Some((b, _))) = read::<Binding>(tx, &ks::binding(&row.tenant, vault, &row.id)) else {
                    continue;
                };
                if b.expires_at.is_none_or(|x| x.0 > now_micros) {
                    continue; // rewritten since; its new expiry has its own key
                }
                repo::remove_binding(tx, &row.tenant, vault, &row.id, Some(&b))?;
                *count
                    .entry((row.tenant.clone(), row.vault.clone().unwrap_or_default()))
                    .or_default() -= 1;
                changes.push(Change::DeleteBinding {
                    scope: Scope {
                        tenant: b.tenant.clone(),
                        vault: b.vault.clone(),
                    },
                    id: row.id.clone(),
                });
            }
            for ((t, v), d) in count {
                if let Ok(t) = TenantId::parse(&t) {
                    repo::add_count(tx, &t, (!v.is_empty()).then_some(v.as_str()), repo::BINDINGS, d);
                }
            }
            append_changelog(tx, &changes)?;
            Ok((due.len(), changes.len()))
        })?;
        total += n.1;
        if n.0 < 500 {
            return Ok(total);
        }
    }
}

/// Drops changelog and feed entries older than `retention`. Returns the new
/// floor revision, if it moved.
pub fn compact(repo: &Repo, epoch: u64, now: u64, retention: Duration) -> Result<Option<u64>> {
    // Record what version "now" is, for future runs to find.
    store::run::<_, ServiceError>(&*repo.store, |tx| {
        fence(tx, LEASE, epoch)?;
        let v = tx.read_version()?;
        tx.set(&ks::mark(now), &v.to_be_bytes());
        Ok(())
    })?;
    let cutoff = now.saturating_sub(retention.as_millis() as u64);
    let (floor, _) = store::run::<_, ServiceError>(&*repo.store, |tx| {
        fence(tx, LEASE, epoch)?;
        let (b, _) = tuple::prefix_range(&ks::marks());
        let e = ks::mark(cutoff + 1);
        let found = tx.range(
            &b,
            &e,
            RangeOpts {
                limit: 1,
                reverse: true,
                snapshot: false,
            },
        )?;
        let Some((mark_key, v)) = found.into_iter().next() else {
            return Ok(None);
        };
        let v = v
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| repo::corrupt(&mark_key, "mark"))?;
        let floor = repo::log_floor(tx)?;
        if v <= floor {
            return Ok(None);
        }
        // Older marks are no longer needed.
        tx.clear_range(&b, &mark_key)?;
        Ok(Some(v))
    })?;
    let Some(floor) = floor else { return Ok(None) };
    // The feed, then each scope's log, below the floor.
    store::run::<_, ServiceError>(&*repo.store, |tx| {
        fence(tx, LEASE, epoch)?;
        let (b, _) = tuple::prefix_range(&ks::feed());
        tx.clear_range(&b, &ks::feed_at(floor))?;
        tx.set(&ks::log_floor(), &floor.to_be_bytes());
        Ok(())
    })?;
    let (_, log_end) = tuple::prefix_range(&ks::log_all());
    let mut cursor = tuple::prefix_range(&ks::log_all()).0;
    loop {
        let (next, _) = store::run::<_, ServiceError>(&*repo.store, |tx| {
            fence(tx, LEASE, epoch)?;
            let mut cursor = cursor.clone();
            for _ in 0..100 {
                let Some((k, _)) = tx
                    .range(
                        &cursor,
                        &log_end,
                        RangeOpts {
                            limit: 1,
                            snapshot: true,
                            reverse: false,
                        },
                    )?
                    .pop()
                else {
                    return Ok(None);
                };
                let (t, v) = ks::log_scope_of(&k).ok_or_else(|| repo::corrupt(&k, "log key"))?;
                let scope = ks::log_of_scope(&t, v.as_deref());
                tx.clear_range(&scope, &ks::log_at(&t, v.as_deref(), floor))?;
                cursor = tuple::prefix_range(&scope).1;
            }
            Ok(Some(cursor))
        })?;
        match next {
            Some(c) => cursor = c,
            None => return Ok(Some(floor)),
        }
    }
}

/// Totals across tenants, as last accounted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub tenants: u64,
    pub vaults: u64,
    pub roles: u64,
    pub bindings: u64,
    pub over_limit: u64,
}

/// Recounts every tenant's objects and corrects the counters.
pub fn account_usage(repo: &Repo, epoch: u64) -> Result<UsageTotals> {
    let (tenants, _) = store::run::<_, ServiceError>(&*repo.store, |tx| {
        let rows = range_prefix(
            tx,
            &ks::tenants(),
            RangeOpts {
                snapshot: true,
                ..Default::default()
            },
        )?;
        // A tenant record that cannot be read is skipped (the index has
        // quarantined it); the rest are accounted.
        Ok::<_, ServiceError>(
            rows.iter()
                .filter_map(|(k, v)| decode::<crate::engine::model::Tenant>(k, v).ok().map(|x| x.0))
                .collect::<Vec<_>>(),
        )
    })?;
    let mut totals = UsageTotals {
        tenants: tenants.len() as u64,
        ..Default::default()
    };
    let tenants_list: Vec<TenantId> = tenants.iter().map(|t| t.id.clone()).collect();
    for t in tenants {
        let (u, _) = store::run::<_, ServiceError>(&*repo.store, |tx| {
            fence(tx, LEASE, epoch)?;
            let id = t.id.as_str();
            let mut per_scope: std::collections::BTreeMap<(String, &'static str), i64> = Default::default();
            // The scope each object counts in, from its key (a record that
            // cannot be read still counts).
            let scope_of_key = |k: &[u8]| -> Result<String> {
                ks::object_of(k)
                    .map(|o| o.vault.unwrap_or_default())
                    .ok_or_else(|| repo::corrupt(k, "object key"))
            };
            for (prefix, kind) in [
                (ks::vaults(id), repo::VAULTS),
                (ks::roles_of_tenant(id), repo::ROLES),
                (ks::bindings_of_tenant(id), repo::BINDINGS),
            ] {
                for (k, _) in range_prefix(tx, &prefix, RangeOpts::default())? {
                    *per_scope.entry((scope_of_key(&k)?, kind)).or_default() += 1;
                }
            }
            // Rewrite the counters exactly.
            let (b, e) = tuple::prefix_range(&ks::counts_of_tenant(id));
            tx.clear_range(&b, &e)?;
            for ((v, kind), n) in &per_scope {
                tx.set(
                    &ks::count(id, (!v.is_empty()).then_some(v.as_str()), kind),
                    &n.to_le_bytes(),
                );
            }
            let mut u = repo::Usage::default();
            for ((_, kind), n) in &per_scope {
                match *kind {
                    repo::VAULTS => u.vaults += *n as u64,
                    repo::ROLES => u.roles += *n as u64,
                    _ => u.bindings += *n as u64,
                }
            }
            Ok(u)
        })?;
        totals.vaults += u.vaults;
        totals.roles += u.roles;
        totals.bindings += u.bindings;
        let over = |have: u64, max: u32| max > 0 && have > u64::from(max);
        if over(u.vaults, t.limits.max_vaults)
            || over(u.roles, t.limits.max_roles)
            || over(u.bindings, t.limits.max_bindings)
        {
            totals.over_limit += 1;
        }
    }
    // Then each tenant's subtree totals, from the exact per-scope counters:
    // one transaction per tenant reads its subtree's counters and rewrites
    // its totals, so a concurrent write conflicts and is retried.
    for t in &tenants_list {
        store::run::<_, ServiceError>(&*repo.store, |tx| {
            fence(tx, LEASE, epoch)?;
            let id = t.as_str();
            let mut sums: std::collections::BTreeMap<String, i64> = Default::default();
            for prefix in [ks::counts_of_tenant(id), ks::counts_of_descendants(id)] {
                for (k, v) in range_prefix(tx, &prefix, RangeOpts::default())? {
                    let n = v.as_slice().try_into().map(i64::from_le_bytes).unwrap_or(0);
                    if let Some(kind) = ks::count_kind(&k) {
                        *sums.entry(kind).or_default() += n;
                    }
                }
            }
            let children = range_prefix(tx, &ks::tenant_children(id), RangeOpts::default())?.len();
            let (b, e) = tuple::prefix_range(&ks::subtree_counts_of(id));
            tx.clear_range(&b, &e)?;
            for kind in [repo::VAULTS, repo::ROLES, repo::BINDINGS] {
                let n = sums.get(kind).copied().unwrap_or(0);
                tx.set(&ks::subtree_count(id, kind), &n.to_le_bytes());
            }
            tx.set(&ks::subtree_count(id, repo::TENANTS), &(children as i64).to_le_bytes());
            Ok(())
        })?;
    }
    telemetry::TENANT_USAGE
        .with_label_values(&["tenants"])
        .set(totals.tenants as i64);
    telemetry::TENANT_USAGE
        .with_label_values(&["vaults"])
        .set(totals.vaults as i64);
    telemetry::TENANT_USAGE
        .with_label_values(&["roles"])
        .set(totals.roles as i64);
    telemetry::TENANT_USAGE
        .with_label_values(&["bindings"])
        .set(totals.bindings as i64);
    telemetry::TENANTS_OVER_LIMIT.set(totals.over_limit as i64);
    Ok(totals)
}

/// Compares a vault's objects in the index with the store. `Ok(true)` when
/// they agree, `Ok(false)` on a divergence.
pub async fn verify_vault(repo: &Arc<Repo>, index: &Arc<LiveIndex>, t: &TenantId, v: &VaultName) -> Result<bool> {
    let scope = Scope::vault(t, v);
    for _ in 0..5 {
        let (in_index, at) = index.engine().scope_contents(&scope);
        let (r, tt, vv) = (repo.clone(), t.clone(), v.clone());
        let stored = tokio::task::spawn_blocking(move || -> Result<_> {
            let (export, read_at) = match r.export_vault(&tt, &vv) {
                Ok(x) => x,
                Err(ServiceError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            // The comparison holds only if the vault did not change between
            // the index's revision and the store's read.
            let (later, _) = r.read_log(&tt, Some(&vv), at, 1)?;
            let changed = later.iter().any(|(ver, _)| *ver <= read_at);
            Ok(Some((export, changed)))
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))??;
        let Some((export, changed)) = stored else {
            return Ok(true);
        };
        if changed {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let roles: std::collections::BTreeMap<String, Role> =
            export.roles.into_iter().map(|r| (r.name.to_string(), r)).collect();
        let bindings: std::collections::BTreeMap<String, Binding> =
            export.bindings.into_iter().map(|b| (b.id.clone(), b)).collect();
        let memberships: BTreeSet<(String, String)> = export
            .memberships
            .iter()
            .map(|m: &Membership| (m.group.to_string(), m.member.to_string()))
            .collect();
        return Ok(roles == in_index.roles && bindings == in_index.bindings && memberships == in_index.memberships);
    }
    // The vault kept changing; no verdict this time.
    Ok(true)
}

async fn verify(repo: &Arc<Repo>, index: &Arc<LiveIndex>, sample: usize) -> Result<usize> {
    let r = repo.clone();
    let vaults = tokio::task::spawn_blocking(move || -> Result<Vec<Vault>> {
        let (rows, _) = store::run::<_, ServiceError>(&*r.store, |tx| {
            Ok::<_, ServiceError>(tx.range(
                &ks::root().str("v").into_vec(),
                &tuple::prefix_range(&ks::root().str("v").into_vec()).1,
                RangeOpts {
                    snapshot: true,
                    ..Default::default()
                },
            )?)
        })?;
        rows.iter().map(|(k, v)| decode::<Vault>(k, v).map(|x| x.0)).collect()
    })
    .await
    .map_err(|e| ServiceError::Internal(e.to_string()))??;
    let mut divergent = 0;
    let picks: Vec<&Vault> = if vaults.len() <= sample {
        vaults.iter().collect()
    } else {
        use rand::seq::IndexedRandom;
        vaults.choose_multiple(&mut rand::rng(), sample).collect()
    };
    for v in picks {
        if !verify_vault(repo, index, &v.tenant, &v.name).await? {
            divergent += 1;
            telemetry::INDEX_DIVERGENCE.inc();
            tracing::error!(tenant = %v.tenant, vault = %v.name, "the live index differs from the store for this vault");
        }
    }
    Ok(divergent)
}

/// The job runs a replica made as leader, newest last (at most 10,000).
pub type JobLog = Arc<Mutex<Vec<JobRun>>>;

/// One record of a job run, kept for diagnostics and tests.
#[derive(Debug, Clone)]
pub struct JobRun {
    pub job: Job,
    pub epoch: u64,
    pub at: SystemTime,
    pub ok: bool,
}

/// Runs the due jobs until `stop` fires.
async fn run_jobs(
    repo: Arc<Repo>,
    index: Arc<LiveIndex>,
    opts: JobOptions,
    holder: String,
    epoch: u64,
    history: Arc<Mutex<Vec<JobRun>>>,
    mut stop: watch::Receiver<bool>,
) {
    let tick = Job::ALL
        .iter()
        .map(|j| j.interval(&opts))
        .min()
        .unwrap_or(Duration::from_secs(1))
        / 4;
    let tick = tick.clamp(Duration::from_millis(20), Duration::from_secs(5));
    loop {
        for job in Job::ALL {
            if *stop.borrow() {
                return;
            }
            let (r, h, interval) = (repo.clone(), holder.clone(), job.interval(&opts));
            let claimed = tokio::task::spawn_blocking(move || claim(&r, job, epoch, &h, interval, now_ms())).await;
            match claimed {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => continue,
                Ok(Err(e)) => {
                    tracing::warn!(job = job.name(), error = %e, "could not schedule job");
                    telemetry::JOB_RUNS.with_label_values(&[job.name(), "error"]).inc();
                    continue;
                }
                Err(_) => continue,
            }
            let start = Instant::now();
            let result: Result<String> = match job {
                Job::Purge => {
                    let r = repo.clone();
                    let now = crate::engine::Timestamp::now().0;
                    tokio::task::spawn_blocking(move || purge(&r, epoch, now))
                        .await
                        .map_err(|e| ServiceError::Internal(e.to_string()))
                        .and_then(|x| x)
                        .map(|n| format!("{n} expired bindings deleted"))
                }
                Job::Compact => {
                    let (r, retention) = (repo.clone(), opts.changelog_retention);
                    tokio::task::spawn_blocking(move || compact(&r, epoch, now_ms(), retention))
                        .await
                        .map_err(|e| ServiceError::Internal(e.to_string()))
                        .and_then(|x| x)
                        .map(|f| match f {
                            Some(f) => format!("changelog compacted below {}", repo::token(f)),
                            None => "nothing to compact".into(),
                        })
                }
                Job::Usage => {
                    let r = repo.clone();
                    tokio::task::spawn_blocking(move || account_usage(&r, epoch))
                        .await
                        .map_err(|e| ServiceError::Internal(e.to_string()))
                        .and_then(|x| x)
                        .map(|u| format!("{u:?}"))
                }
                Job::Verify => verify(&repo, &index, opts.verify_sample)
                    .await
                    .map(|n| format!("{n} divergent vaults")),
            };
            telemetry::JOB_SECONDS
                .with_label_values(&[job.name()])
                .observe(start.elapsed().as_secs_f64());
            let ok = result.is_ok();
            match result {
                Ok(summary) => {
                    tracing::debug!(job = job.name(), %summary, "job ran");
                    telemetry::JOB_RUNS.with_label_values(&[job.name(), "ok"]).inc();
                }
                Err(e) => {
                    let fenced = matches!(&e, ServiceError::Fenced { .. });
                    tracing::warn!(job = job.name(), error = %e, "job failed");
                    telemetry::JOB_RUNS
                        .with_label_values(&[job.name(), if fenced { "fenced" } else { "error" }])
                        .inc();
                }
            }
            if let Ok(mut h) = history.lock() {
                if h.len() >= 10_000 {
                    h.drain(..5_000);
                }
                h.push(JobRun {
                    job,
                    epoch,
                    at: SystemTime::now(),
                    ok,
                });
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

struct Term {
    epoch: u64,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Term {
    async fn end(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Campaigns for the lease and runs the jobs while holding it.
pub fn spawn(
    repo: Arc<Repo>,
    index: Arc<LiveIndex>,
    status: Arc<LeaderStatus>,
    log: JobLog,
    opts: JobOptions,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let holder = opts.holder.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let ttl = opts.lease_ttl;
        let renew_every = ttl / 3;
        let mut term: Option<Term> = None;
        let mut last_renewal = Instant::now();
        loop {
            if opts.stall.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => continue,
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
            let (r, h) = (repo.clone(), holder.clone());
            let attempt = tokio::time::timeout(
                renew_every,
                tokio::task::spawn_blocking(move || acquire(&*r.store, LEASE, &h, ttl, now_ms())),
            )
            .await;
            match attempt {
                Ok(Ok(Ok(Some(epoch)))) => {
                    last_renewal = Instant::now();
                    if term.as_ref().map(|t| t.epoch) != Some(epoch) {
                        if let Some(old) = term.take() {
                            old.end().await;
                        }
                        tracing::info!(epoch, %holder, "became leader; running background jobs");
                        let (stop, stop_rx) = watch::channel(false);
                        let task = tokio::spawn(run_jobs(
                            repo.clone(),
                            index.clone(),
                            opts.clone(),
                            holder.clone(),
                            epoch,
                            log.clone(),
                            stop_rx,
                        ));
                        term = Some(Term { epoch, stop, task });
                    }
                    status.is_leader.store(true, Ordering::SeqCst);
                    status.epoch.store(epoch, Ordering::SeqCst);
                    telemetry::LEADER.set(1);
                    telemetry::LEADER_EPOCH.set(epoch as i64);
                }
                Ok(Ok(Ok(None))) => {
                    if let Some(old) = term.take() {
                        tracing::info!(epoch = old.epoch, "lost the lease; stopping background jobs");
                        old.end().await;
                    }
                    status.is_leader.store(false, Ordering::SeqCst);
                    telemetry::LEADER.set(0);
                }
                failed => {
                    let why = match failed {
                        Err(_) => "timed out".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(Err(e))) => e.to_string(),
                        Ok(Ok(Ok(_))) => unreachable!("handled above"),
                    };
                    tracing::warn!(error = %why, "could not renew the lease");
                    // Stop before the lease can expire and another replica take over.
                    if term.is_some() && last_renewal.elapsed() >= ttl * 2 / 3 {
                        if let Some(old) = term.take() {
                            tracing::warn!(epoch = old.epoch, "lease renewal overdue; stopping background jobs");
                            old.end().await;
                        }
                        status.is_leader.store(false, Ordering::SeqCst);
                        telemetry::LEADER.set(0);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(renew_every) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        if let Some(old) = term.take() {
            old.end().await;
            let (r, h) = (repo.clone(), holder.clone());
            let _ = tokio::task::spawn_blocking(move || release(&*r.store, LEASE, &h)).await;
        }
        status.is_leader.store(false, Ordering::SeqCst);
        telemetry::LEADER.set(0);
    })
}
