//! The live index: the engine's compiled views of every vault, loaded from
//! the store at start and then fed from the changelog's feed, never rebuilt
//! whole on a write.
//!
//! The index tracks the revision it has caught up to: every change committed
//! at or before it is applied. Consistency requirements wait on it.
//!
//! A stored record or feed change that cannot be read never stops the
//! index: its scope is quarantined in the engine (checks there answer
//! UNAVAILABLE, every other vault keeps working), logged, counted
//! (`portcullis_index_corrupt_records_total`) and listed by GetServerInfo,
//! and a later write or delete of the object repairs it.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::engine::Engine;
use crate::engine::model::Change;
use crate::error::{Result, ServiceError};
use crate::repo::{CorruptRecord, Repo, token};
use crate::telemetry::Metrics;
pub use portcullis_client::shard::Tenants;

const FEED_PAGE: usize = 1000;
/// A missed notification (another replica's commit on a shared store) is
/// recovered by polling at this interval.
const POLL: Duration = Duration::from_millis(500);

pub struct LiveIndex {
    /// Replaced whole only when this replica fell behind the changelog's
    /// retention and had to reload.
    engine: ArcSwap<Engine>,
    repo: Arc<Repo>,
    /// The repository's, which are the server's.
    metrics: Arc<Metrics>,
    caught_up: watch::Sender<u64>,
    /// The tenants' rate-limit buckets, following their limits.
    pub limits: crate::ratelimit::TenantLimits,
    /// The tenants' decision-log sampling, following their specs.
    pub sampling: crate::decisions::TenantSampling,
    /// The tenants this replica's shard serves (every tenant unless
    /// sharded); replaced when the shard map moves tenants.
    tenants: ArcSwap<Tenants>,
    /// Held while applying the feed or swapping the engine, so a reshard
    /// never races a catch-up applying to the engine it replaces.
    applying: std::sync::Mutex<()>,
    /// Since when the store has been ahead of the index; `None` while the
    /// index is caught up. Health turns NOT_SERVING when this grows past
    /// `--max-index-lag`.
    behind_since: std::sync::Mutex<Option<std::time::Instant>>,
}

impl LiveIndex {
    /// Loads everything from the store (blocking).
    pub fn load(repo: Arc<Repo>) -> Result<Arc<LiveIndex>> {
        Self::load_shard(repo, Tenants::all())
    }

    /// Loads what a shard serving `tenants` needs (blocking).
    pub fn load_shard(repo: Arc<Repo>, tenants: Tenants) -> Result<Arc<LiveIndex>> {
        let metrics = repo.metrics().clone();
        let (engine, version) = Self::build(&repo, &metrics, &tenants)?;
        let index = Arc::new(LiveIndex {
            engine: ArcSwap::from_pointee(engine),
            repo,
            metrics,
            caught_up: watch::channel(version).0,
            limits: Default::default(),
            sampling: Default::default(),
            tenants: ArcSwap::from_pointee(tenants),
            applying: std::sync::Mutex::new(()),
            behind_since: std::sync::Mutex::new(None),
        });
        index.follow_tenants(&index.engine());
        // Whatever changed while the chunks were read is replayed.
        index.catch_up()?;
        Ok(index)
    }

    fn build(repo: &Repo, metrics: &Metrics, tenants: &Tenants) -> Result<(Engine, u64)> {
        let loaded = repo.load(tenants)?;
        let engine = Engine::new();
        engine.apply(loaded.version, &loaded.changes);
        for c in &loaded.corrupt {
            quarantine(&engine, metrics, c);
        }
        metrics.index_revision.set(loaded.version as i64);
        tracing::info!(
            revision = loaded.version,
            objects = loaded.changes.len(),
            unreadable = loaded.corrupt.len(),
            "index loaded"
        );
        Ok((engine, loaded.version))
    }

    /// The tenants this replica serves.
    pub fn tenants(&self) -> arc_swap::Guard<Arc<Tenants>> {
        self.tenants.load()
    }

    /// Serves `tenants` from now on (blocking): the index is rebuilt for
    /// them and replaces the old one whole, so a tenant moved here is
    /// answered, and one moved away refused, without a restart.
    pub fn reshard(&self, tenants: Tenants) -> Result<()> {
        if **self.tenants.load() == tenants {
            return Ok(());
        }
        let (engine, version) = Self::build(&self.repo, &self.metrics, &tenants)?;
        {
            let _applying = self.applying.lock().unwrap_or_else(|p| p.into_inner());
            // Brought up to the old index's revision first, so no answer
            // ever goes back in time; until the swap the old index answers.
            let upto = self.revision();
            let mut from = version;
            while from < upto {
                let (entries, _) = self.repo.read_feed(from, FEED_PAGE)?;
                let Some(last) = entries.last().map(|e| e.version) else {
                    break;
                };
                for e in entries.iter().filter(|e| e.version <= upto) {
                    let changes: Vec<Change> = e.changes.iter().filter(|c| Self::wants(&tenants, c)).cloned().collect();
                    engine.apply(e.version, &changes);
                    for c in &e.corrupt {
                        quarantine(&engine, &self.metrics, c);
                    }
                }
                from = last;
            }
            engine.apply(upto.max(version), &[]);
            self.follow_tenants(&engine);
            self.engine.store(Arc::new(engine));
            self.tenants.store(Arc::new(tenants));
            if version > upto {
                self.caught_up.send_replace(version);
            }
        }
        self.catch_up()?;
        Ok(())
    }

    /// Whether a change belongs in this shard's index.
    fn wants(tenants: &Tenants, c: &Change) -> bool {
        if tenants.is_all() {
            return true;
        }
        let scope = c.scope();
        let t = scope.tenant.as_str();
        tenants.serves(t) || (scope.vault.is_none() && tenants.is_above(t))
    }

    /// Rebuilds what follows the tenants' specs: rate-limit buckets and
    /// decision-log sampling.
    fn follow_tenants(&self, engine: &Engine) {
        self.limits.update(&engine.rate_limited_tenants());
        self.sampling.update(&engine.sampled_tenants());
    }

    /// The engine; hold the guard only for one query.
    pub fn engine(&self) -> arc_swap::Guard<Arc<Engine>> {
        self.engine.load()
    }

    /// The revision everything up to which is applied.
    pub fn revision(&self) -> u64 {
        *self.caught_up.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.caught_up.subscribe()
    }

    /// Applies the feed after the current revision (blocking). Returns the
    /// new revision.
    pub fn catch_up(&self) -> Result<u64> {
        let _applying = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let from = self.revision();
            if self.repo.log_floor()? > from + 1 {
                // The feed no longer holds what this replica missed: reload.
                tracing::warn!(
                    revision = from,
                    "the changelog was compacted past this replica's index; reloading"
                );
                let (engine, version) = Self::build(&self.repo, &self.metrics, &self.tenants.load())?;
                self.follow_tenants(&engine);
                self.engine.store(Arc::new(engine));
                self.caught_up.send_replace(version);
                continue;
            }
            let (mut entries, upto) = self.repo.read_feed(from, FEED_PAGE)?;
            let tenants = self.tenants.load();
            if !tenants.is_all() {
                for e in &mut entries {
                    e.changes.retain(|c| Self::wants(&tenants, c));
                }
            }
            let full = entries.len() == FEED_PAGE;
            let engine = self.engine.load();
            let tenants_changed = entries.iter().any(|e| {
                e.changes
                    .iter()
                    .any(|c| matches!(c, Change::PutTenant(_) | Change::DeleteTenant { .. }))
            });
            for e in &entries {
                engine.apply(e.version, &e.changes);
                repaired(&engine, &self.metrics, &e.changes);
                for c in &e.corrupt {
                    quarantine(&engine, &self.metrics, c);
                }
            }
            if tenants_changed {
                self.follow_tenants(&engine);
            }
            let upto = upto.max(from);
            engine.apply(upto, &[]);
            self.caught_up.send_if_modified(|r| {
                if upto > *r {
                    *r = upto;
                    true
                } else {
                    false
                }
            });
            self.metrics.index_revision.set(upto as i64);
            if !full {
                return Ok(upto);
            }
        }
    }

    /// How long the store has been ahead of this index, if it is.
    pub fn lagging_for(&self) -> Option<Duration> {
        self.behind_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    fn note_lag(&self, store_revision: u64) {
        let mut b = self.behind_since.lock().unwrap_or_else(|p| p.into_inner());
        if store_revision > self.revision() {
            b.get_or_insert_with(std::time::Instant::now);
        } else {
            *b = None;
        }
    }

    /// Follows the store until `shutdown` fires: applies new feed entries as
    /// soon as a commit is announced, and polls in case an announcement was
    /// missed.
    pub fn spawn_tailer(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let mut commits = me.repo.store.subscribe();
        tokio::spawn(async move {
            loop {
                let known = *commits.borrow_and_update();
                me.metrics.store_revision.set(known as i64);
                if known > me.revision() {
                    let m = me.clone();
                    if let Err(e) = me.repo.call(move |_| m.catch_up()).await {
                        tracing::warn!(error = %e, "catching up with the changelog failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                me.metrics.index_lag.set(known.saturating_sub(me.revision()) as i64);
                me.note_lag(known);
                tokio::select! {
                    _ = commits.changed() => {}
                    _ = tokio::time::sleep(POLL) => {
                        // A commit by another process on a shared store is
                        // found by reading the feed.
                        let m = me.clone();
                        let _ = me.repo.call(move |_| m.catch_up()).await;
                    }
                    _ = shutdown.changed() => return,
                }
            }
        })
    }

    /// Waits until the index has caught up to `revision`, at most `limit`.
    pub async fn wait_for(&self, revision: u64, limit: Duration) -> Result<u64> {
        let mut rx = self.caught_up.subscribe();
        let waited = tokio::time::timeout(limit, rx.wait_for(|r| *r >= revision)).await;
        match waited {
            Ok(Ok(r)) => Ok(*r),
            _ => Err(ServiceError::IndexBehind {
                at: token(self.revision()),
                wanted: token(revision),
                waited: limit,
            }),
        }
    }
}

fn quarantine(engine: &Engine, metrics: &Metrics, c: &CorruptRecord) {
    metrics.index_corrupt.inc();
    match &c.scope {
        Some(scope) => {
            tracing::error!(scope = %scope, object = %c.object, error = %c.detail, "a stored record cannot be read; its scope is quarantined until it is overwritten or deleted");
            engine.quarantine(scope.clone(), c.object.clone(), c.detail.clone());
        }
        // Not even its scope is known: nothing to quarantine; the verify
        // job reports any divergence it causes.
        None => {
            tracing::error!(object = %c.object, error = %c.detail, "a stored change cannot be read and names no scope; skipped")
        }
    }
    metrics.index_quarantined.set(engine.quarantined().scopes.len() as i64);
}

fn repaired(engine: &Engine, metrics: &Metrics, changes: &[Change]) {
    if engine.quarantined().scopes.is_empty() {
        return;
    }
    for c in changes {
        engine.repaired(&c.scope(), &c.object());
    }
    metrics.index_quarantined.set(engine.quarantined().scopes.len() as i64);
}
