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

use tokio::sync::watch;

use crate::engine::ids::{TenantId, VaultName};
use crate::engine::model::{Binding, Membership, Role, Scope, Vault};
use crate::error::{Result, ServiceError};
use crate::index::LiveIndex;
use crate::lease::{LEASE, LeaderStatus, acquire, release};
use crate::repo::{self, Repo, UsageTotals};
use crate::telemetry::Metrics;

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
    #[cfg(any(test, feature = "test-util"))]
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
            #[cfg(any(test, feature = "test-util"))]
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
    /// Removes audit events past their tenant's retention.
    AuditRetention,
}

impl Job {
    pub const ALL: [Job; 5] = [Job::Purge, Job::Compact, Job::Usage, Job::Verify, Job::AuditRetention];

    pub fn name(self) -> &'static str {
        match self {
            Job::Purge => "purge",
            Job::Compact => "compact",
            Job::Usage => "usage",
            Job::Verify => "verify",
            Job::AuditRetention => "audit_retention",
        }
    }

    fn interval(self, o: &JobOptions) -> Duration {
        match self {
            Job::Purge => o.purge_interval,
            Job::Compact => o.compact_interval,
            Job::Usage => o.usage_interval,
            Job::Verify => o.verify_interval,
            // Retention is counted in days: the compaction's pace is plenty.
            Job::AuditRetention => o.compact_interval,
        }
    }
}

/// Publishes the totals of a usage run.
fn publish_usage(metrics: &Metrics, totals: &UsageTotals) {
    metrics
        .tenant_usage
        .with_label_values(&["tenants"])
        .set(totals.tenants as i64);
    metrics
        .tenant_usage
        .with_label_values(&["vaults"])
        .set(totals.vaults as i64);
    metrics
        .tenant_usage
        .with_label_values(&["roles"])
        .set(totals.roles as i64);
    metrics
        .tenant_usage
        .with_label_values(&["bindings"])
        .set(totals.bindings as i64);
    metrics.tenants_over_limit.set(totals.over_limit as i64);
}

/// Compares a vault's objects in the index with the store. `Ok(true)` when
/// they agree, `Ok(false)` on a divergence.
pub async fn verify_vault(repo: &Arc<Repo>, index: &Arc<LiveIndex>, t: &TenantId, v: &VaultName) -> Result<bool> {
    let scope = Scope::vault(t, v);
    for _ in 0..5 {
        let (in_index, at) = index.engine().scope_contents(&scope);
        let (tt, vv) = (t.clone(), v.clone());
        let stored = repo
            .call(move |r| {
                let (export, read_at) = match r.export_vault(&tt, &vv) {
                    Ok(x) => x,
                    Err(ServiceError::VaultNotFound { .. } | ServiceError::TenantNotFound { .. }) => return Ok(None),
                    Err(e) => return Err(e),
                };
                // The comparison holds only if the vault did not change between
                // the index's revision and the store's read.
                let (later, _) = r.read_log(&tt, Some(&vv), at, 1)?;
                let changed = later.iter().any(|e| e.version <= read_at);
                Ok(Some((export, changed)))
            })
            .await?;
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

async fn verify(repo: &Arc<Repo>, index: &Arc<LiveIndex>, metrics: &Metrics, sample: usize) -> Result<usize> {
    let mut vaults = repo.call(|r| r.all_vaults()).await?;
    // A shard's index holds only its tenants' vaults: those are the ones
    // it can be wrong about.
    let tenants = index.tenants();
    vaults.retain(|v| tenants.serves(v.tenant.as_str()));
    drop(tenants);
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
            metrics.index_divergence.inc();
            tracing::error!(tenant = %v.tenant, vault = %v.name, "the live index differs from the store for this vault");
        }
    }
    Ok(divergent)
}

/// The job runs a replica made as leader, newest last (at most 10,000).
pub type JobLog = Arc<Mutex<Vec<JobRun>>>;

/// One record of a job run, reported by GetServerInfo.
#[derive(Debug, Clone)]
pub struct JobRun {
    pub job: Job,
    pub epoch: u64,
    pub at: SystemTime,
    pub ok: bool,
}

/// What the leader's jobs work with.
#[derive(Clone)]
struct Deps {
    repo: Arc<Repo>,
    index: Arc<LiveIndex>,
    metrics: Arc<Metrics>,
    opts: JobOptions,
}

/// Runs the due jobs until `stop` fires.
async fn run_jobs(
    Deps {
        repo,
        index,
        metrics,
        opts,
    }: Deps,
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
            let (h, interval) = (holder.clone(), job.interval(&opts));
            match repo
                .call(move |r| r.claim_job(job.name(), epoch, &h, interval, now_ms()))
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(job = job.name(), error = %e, "could not schedule job");
                    metrics.job_runs.with_label_values(&[job.name(), "error"]).inc();
                    continue;
                }
            }
            let start = Instant::now();
            let result: Result<String> = match job {
                Job::Purge => {
                    let now = crate::engine::Timestamp::now().0;
                    repo.call(move |r| r.purge_expired(epoch, now))
                        .await
                        .map(|n| format!("{n} expired bindings deleted"))
                }
                Job::Compact => {
                    let retention = opts.changelog_retention;
                    repo.call(move |r| r.compact_changelog(epoch, now_ms(), retention))
                        .await
                        .map(|f| match f {
                            Some(f) => format!("changelog compacted below {}", repo::token(f)),
                            None => "nothing to compact".into(),
                        })
                }
                Job::Usage => repo.call(move |r| r.recount_usage(epoch)).await.map(|u| {
                    publish_usage(&metrics, &u);
                    format!("{u:?}")
                }),
                Job::Verify => verify(&repo, &index, &metrics, opts.verify_sample)
                    .await
                    .map(|n| format!("{n} divergent vaults")),
                Job::AuditRetention => {
                    let now = crate::engine::Timestamp::now().0;
                    repo.call(move |r| r.purge_audit(epoch, now))
                        .await
                        .map(|n| format!("{n} audit events past retention removed"))
                }
            };
            metrics
                .job_seconds
                .with_label_values(&[job.name()])
                .observe(start.elapsed().as_secs_f64());
            let ok = result.is_ok();
            match result {
                Ok(summary) => {
                    tracing::debug!(job = job.name(), %summary, "job ran");
                    metrics.job_runs.with_label_values(&[job.name(), "ok"]).inc();
                }
                Err(e) => {
                    let fenced = matches!(&e, ServiceError::Fenced { .. });
                    tracing::warn!(job = job.name(), error = %e, "job failed");
                    metrics
                        .job_runs
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
    metrics: Arc<Metrics>,
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
            #[cfg(any(test, feature = "test-util"))]
            if opts.stall.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => continue,
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
            // The lease has its own thread rather than the repository's
            // pool: a renewal must never queue behind request work, or a
            // busy leader would lose its lease.
            let (r, h) = (repo.clone(), holder.clone());
            let attempt = tokio::time::timeout(
                renew_every,
                tokio::task::spawn_blocking(move || acquire(&*r.store, &r.metrics().store, LEASE, &h, ttl, now_ms())),
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
                        let deps = Deps {
                            repo: repo.clone(),
                            index: index.clone(),
                            metrics: metrics.clone(),
                            opts: opts.clone(),
                        };
                        let task = tokio::spawn(run_jobs(deps, holder.clone(), epoch, log.clone(), stop_rx));
                        term = Some(Term { epoch, stop, task });
                    }
                    status.is_leader.store(true, Ordering::SeqCst);
                    status.epoch.store(epoch, Ordering::SeqCst);
                    metrics.leader.set(1);
                    metrics.leader_epoch.set(epoch as i64);
                }
                Ok(Ok(Ok(None))) => {
                    if let Some(old) = term.take() {
                        tracing::info!(epoch = old.epoch, "lost the lease; stopping background jobs");
                        old.end().await;
                    }
                    status.is_leader.store(false, Ordering::SeqCst);
                    metrics.leader.set(0);
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
                        metrics.leader.set(0);
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
            let _ = tokio::task::spawn_blocking(move || release(&*r.store, &r.metrics().store, LEASE, &h)).await;
        }
        status.is_leader.store(false, Ordering::SeqCst);
        metrics.leader.set(0);
    })
}
