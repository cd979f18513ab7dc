//! An optional decision cache: a bounded map from a full check request to
//! its decision, for services that check the same thing many times a
//! second.
//!
//! What keeps it correct:
//! - the key is the whole request (tenant, vault, subject, action, resource
//!   and the encoded context), so two requests share an entry only when the
//!   server would answer both from the same input;
//! - every entry remembers the revision it was evaluated at, and one older
//!   than the token a caller presents ([`crate::Consistency::ReadYourWrites`]
//!   or [`crate::Consistency::AtLeastAsFresh`]) is never used;
//! - entries live at most the TTL;
//! - with [`CacheConfig::invalidate_on_watch`], a Watch stream per tenant
//!   drops the tenant's entries (and its descendants') on every change, and
//!   an answer older than the newest change seen is not stored.
//!
//! The map is `quick_cache` (bounded, sharded, CLOCK-Pro eviction); TTL and
//! invalidation are ours because it has neither.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::task::JoinHandle;

use crate::check::Decision;
use crate::freshness::revision_of;
use crate::{Authed, Error, Reason, pb};
use pb::watch_service_client::WatchServiceClient;

/// How big the cache is, how long entries live, and which tenants' Watch
/// streams invalidate it.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    capacity: usize,
    ttl: Duration,
    watch: Vec<String>,
}

impl CacheConfig {
    /// At most `capacity` decisions, each for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> CacheConfig {
        CacheConfig {
            capacity: capacity.max(1),
            ttl,
            watch: Vec::new(),
        }
    }

    /// Watch `tenant` (the API key needs the "watch" scope) and drop the
    /// cached decisions of it and its descendants on every change it
    /// commits. A change to a descendant tenant's own objects is seen only
    /// by watching that tenant too.
    pub fn invalidate_on_watch(mut self, tenant: impl Into<String>) -> CacheConfig {
        self.watch.push(tenant.into());
        self
    }
}

/// Counts of what the cache did, for a service's own metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answered from the cache.
    pub hits: u64,
    /// Not in the cache, or expired.
    pub misses: u64,
    /// In the cache but older than the token the caller presented.
    pub stale: u64,
    /// Entries dropped because a watched tenant changed.
    pub invalidated: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    tenant: String,
    vault: String,
    subject: String,
    action: String,
    resource: String,
    // prost encodes a Struct's fields in key order (a BTreeMap), so equal
    // contexts encode equally.
    context: Vec<u8>,
}

impl CacheKey {
    pub(crate) fn of(r: &pb::CheckPermissionRequest) -> CacheKey {
        CacheKey {
            tenant: r.tenant.clone(),
            vault: r.vault.clone(),
            subject: r.subject.clone(),
            action: r.action.clone(),
            resource: r.resource.clone(),
            context: r.context.as_ref().map(Message::encode_to_vec).unwrap_or_default(),
        }
    }
}

#[derive(Clone)]
struct Entry {
    allowed: bool,
    reason: pb::Reason,
    checked_at: String,
    revision: u64,
    stored: Instant,
}

/// The cache a client checks through ([`crate::Config::decision_cache`]).
pub struct DecisionCache {
    entries: quick_cache::sync::Cache<CacheKey, Entry>,
    ttl: Duration,
    /// The newest revision a watched change carried: an answer evaluated
    /// before it may predate the change and is not stored.
    watermark: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    invalidated: AtomicU64,
    watchers: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for DecisionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionCache")
            .field("len", &self.entries.len())
            .field("stats", &self.stats())
            .finish()
    }
}

impl DecisionCache {
    pub(crate) fn new(config: &CacheConfig) -> DecisionCache {
        DecisionCache {
            entries: quick_cache::sync::Cache::new(config.capacity),
            ttl: config.ttl,
            watermark: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            invalidated: AtomicU64::new(0),
            watchers: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            invalidated: self.invalidated.load(Ordering::Relaxed),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&self) {
        self.entries.clear();
    }

    /// The cached decision, unless it expired or is older than `floor`.
    pub(crate) fn get(&self, key: &CacheKey, floor: Option<u64>) -> Option<Decision> {
        let Some(e) = self.entries.get(key) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if e.stored.elapsed() > self.ttl {
            self.entries.remove(key);
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if floor.is_some_and(|f| e.revision < f) {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(Decision {
            allowed: e.allowed,
            reason: e.reason,
            checked_at: e.checked_at,
            explanation: None,
            cached: true,
        })
    }

    pub(crate) fn put(&self, key: CacheKey, d: &Decision) {
        let Some(revision) = revision_of(&d.checked_at) else {
            return;
        };
        if revision < self.watermark.load(Ordering::Acquire) {
            return;
        }
        self.entries.insert(
            key,
            Entry {
                allowed: d.allowed,
                reason: d.reason,
                checked_at: d.checked_at.clone(),
                revision,
                stored: Instant::now(),
            },
        );
    }

    /// Drops the entries of `tenant` and its descendants, and refuses
    /// answers older than `revision` from now on.
    fn invalidate(&self, tenant: &str, revision: Option<u64>) {
        if let Some(r) = revision {
            self.watermark.fetch_max(r, Ordering::AcqRel);
        }
        let dropped = AtomicU64::new(0);
        self.entries.retain(|k, _| {
            let under = k.tenant == tenant
                || (k.tenant.len() > tenant.len()
                    && k.tenant.starts_with(tenant)
                    && k.tenant.as_bytes()[tenant.len()] == b'/');
            dropped.fetch_add(u64::from(under), Ordering::Relaxed);
            !under
        });
        self.invalidated.fetch_add(dropped.into_inner(), Ordering::Relaxed);
    }

    /// Starts one Watch stream per configured tenant. The tasks hold the
    /// cache weakly and end when it is dropped.
    pub(crate) fn watch(self: &Arc<Self>, config: &CacheConfig, client: WatchServiceClient<Authed>) {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        for tenant in &config.watch {
            w.push(tokio::spawn(watch_tenant(
                Arc::downgrade(self),
                client.clone(),
                tenant.clone(),
            )));
        }
    }
}

impl Drop for DecisionCache {
    fn drop(&mut self) {
        for w in self.watchers.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            w.abort();
        }
    }
}

/// Follows `tenant`'s changes, resuming after the last revision seen when
/// the stream breaks. Everything of the tenant is dropped at each break,
/// as changes may have been missed while it was down.
async fn watch_tenant(cache: Weak<DecisionCache>, mut client: WatchServiceClient<Authed>, tenant: String) {
    let mut after = String::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = client
            .watch(pb::WatchRequest {
                tenant: tenant.clone(),
                vault: String::new(),
                after_revision: after.clone(),
            })
            .await;
        let mut stream = match started {
            Ok(s) => s.into_inner(),
            Err(s) => {
                let e = Error::from(s);
                if e.reason() == &Reason::RevisionCompacted {
                    after.clear();
                }
                let Some(c) = cache.upgrade() else { return };
                c.invalidate(&tenant, None);
                drop(c);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        while let Ok(Some(m)) = stream.message().await {
            let Some(c) = cache.upgrade() else { return };
            c.invalidate(&tenant, revision_of(&m.revision));
            after = m.revision;
            backoff = Duration::from_millis(100);
        }
        let Some(c) = cache.upgrade() else { return };
        c.invalidate(&tenant, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freshness::token_of;

    fn key(tenant: &str, resource: &str) -> CacheKey {
        CacheKey::of(&pb::CheckPermissionRequest {
            tenant: tenant.into(),
            vault: "docs".into(),
            subject: "user:a".into(),
            action: "read".into(),
            resource: resource.into(),
            ..Default::default()
        })
    }

    fn allowed_at(rev: u64) -> Decision {
        Decision {
            allowed: true,
            reason: pb::Reason::Allowed,
            checked_at: token_of(rev),
            explanation: None,
            cached: false,
        }
    }

    #[test]
    fn an_entry_older_than_the_callers_token_is_never_used() {
        let c = DecisionCache::new(&CacheConfig::new(10, Duration::from_secs(60)));
        c.put(key("acme", "x"), &allowed_at(5));
        assert!(c.get(&key("acme", "x"), Some(5)).is_some_and(|d| d.cached));
        assert!(c.get(&key("acme", "x"), Some(6)).is_none());
        assert!(c.get(&key("acme", "y"), None).is_none());
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 1,
                misses: 1,
                stale: 1,
                invalidated: 0
            }
        );
    }

    #[test]
    fn entries_expire() {
        let c = DecisionCache::new(&CacheConfig::new(10, Duration::ZERO));
        c.put(key("acme", "x"), &allowed_at(5));
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.get(&key("acme", "x"), None).is_none());
    }

    #[test]
    fn a_change_drops_the_tenant_and_its_descendants_and_older_answers() {
        let c = DecisionCache::new(&CacheConfig::new(10, Duration::from_secs(60)));
        for t in ["acme", "acme/eng", "acmes", "globex"] {
            c.put(key(t, "x"), &allowed_at(5));
        }
        c.invalidate("acme", Some(7));
        assert!(c.get(&key("acme", "x"), None).is_none());
        assert!(c.get(&key("acme/eng", "x"), None).is_none());
        assert!(c.get(&key("acmes", "x"), None).is_some());
        assert!(c.get(&key("globex", "x"), None).is_some());
        assert_eq!(c.stats().invalidated, 2);
        // An answer from before the change arrives late: not stored.
        c.put(key("acme", "x"), &allowed_at(6));
        assert!(c.get(&key("acme", "x"), None).is_none());
        c.put(key("acme", "x"), &allowed_at(7));
        assert!(c.get(&key("acme", "x"), None).is_some());
    }

    #[test]
    fn different_contexts_are_different_entries() {
        let with = |v: bool| {
            let context = serde_json::json!({ "mfa": v, "ip": "10.0.0.1" });
            CacheKey::of(&pb::CheckPermissionRequest {
                context: Some(crate::json::to_struct(context.as_object().unwrap())),
                ..Default::default()
            })
        };
        assert_eq!(with(true), with(true));
        assert_ne!(with(true), with(false));
    }
}
