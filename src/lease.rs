//! Leader election among replicas, on the store.
//!
//! `(sys, "lease", "jobs")` holds `{holder, epoch, expires_at_ms}`. A replica
//! takes it in a transaction when it is absent, expired or its own, renews
//! it every third of the TTL, and bumps the epoch whenever the holder
//! changes. The epoch is also written to `(sys, "epoch", "jobs")`: every job
//! transaction reads it and aborts when it is not the epoch the job was
//! started under (fencing), so a deposed leader's late writes are rejected
//! even if its clock or scheduler stalled. A leader that cannot renew stops
//! its jobs once two thirds of the TTL have passed since its last renewal,
//! before the lease can expire and another replica take it.
//!

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Result, ServiceError};
use crate::store::{self, Store, StoreError, StoreMetrics, Transaction, keyspace as ks};

/// The lease the background jobs run under.
pub const LEASE: &str = "jobs";

/// Leadership as the diagnostics and health report it.
#[derive(Debug, Default)]
pub struct LeaderStatus {
    pub is_leader: AtomicBool,
    pub epoch: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: String,
    pub epoch: u64,
    pub expires_at_ms: u64,
}

fn read_u64(tx: &mut dyn Transaction, key: &[u8]) -> std::result::Result<u64, StoreError> {
    Ok(tx
        .get(key)?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// Takes or renews the lease `name` for `holder`. Returns the epoch when
/// `holder` holds it afterwards.
pub fn acquire(
    store: &dyn Store,
    metrics: &StoreMetrics,
    name: &str,
    holder: &str,
    ttl: Duration,
    now_ms: u64,
) -> std::result::Result<Option<u64>, StoreError> {
    let (epoch, _) = store::run(store, metrics, |tx| {
        let key = ks::lease(name);
        let current: Option<LeaseRecord> = tx.get(&key)?.and_then(|v| serde_json::from_slice(&v).ok());
        let epoch = match &current {
            Some(l) if l.holder == holder && l.expires_at_ms > now_ms => l.epoch,
            Some(l) if l.expires_at_ms > now_ms => return Ok(None),
            // Free, expired, or ours but expired: a new term.
            _ => read_u64(tx, &ks::epoch(name))?.max(current.as_ref().map_or(0, |l| l.epoch)) + 1,
        };
        let rec = LeaseRecord {
            holder: holder.to_string(),
            epoch,
            expires_at_ms: now_ms + ttl.as_millis() as u64,
        };
        tx.set(
            &key,
            &serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        tx.set(&ks::epoch(name), &epoch.to_be_bytes());
        Ok(Some(epoch))
    })?;
    Ok(epoch)
}

/// Gives the lease up (on shutdown), so another replica need not wait for
/// it to expire.
pub fn release(
    store: &dyn Store,
    metrics: &StoreMetrics,
    name: &str,
    holder: &str,
) -> std::result::Result<(), StoreError> {
    store::run(store, metrics, |tx| {
        let key = ks::lease(name);
        let current: Option<LeaseRecord> = tx.get(&key)?.and_then(|v| serde_json::from_slice(&v).ok());
        if current.is_some_and(|l| l.holder == holder) {
            tx.clear(&key);
        }
        Ok::<_, StoreError>(())
    })?;
    Ok(())
}

/// Reads the lease as it is.
pub fn current(store: &dyn Store, name: &str) -> std::result::Result<Option<LeaseRecord>, StoreError> {
    let mut tx = store.begin()?;
    Ok(tx.get(&ks::lease(name))?.and_then(|v| serde_json::from_slice(&v).ok()))
}

/// Aborts the transaction unless `epoch` is still the lease's epoch.
pub fn fence(tx: &mut dyn Transaction, name: &str, epoch: u64) -> Result<()> {
    let now = read_u64(tx, &ks::epoch(name))?;
    if now != epoch {
        return Err(ServiceError::Fenced { epoch, current: now });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::memory::MemoryStore;

    #[test]
    fn lease_terms_and_fencing() {
        let s = MemoryStore::new();
        let m = StoreMetrics::default();
        let ttl = Duration::from_secs(10);
        assert_eq!(acquire(&s, &m, LEASE, "a", ttl, 1_000).unwrap(), Some(1));
        assert_eq!(
            acquire(&s, &m, LEASE, "a", ttl, 2_000).unwrap(),
            Some(1),
            "renewal keeps the term"
        );
        assert_eq!(acquire(&s, &m, LEASE, "b", ttl, 5_000).unwrap(), None, "held by a");
        assert_eq!(
            acquire(&s, &m, LEASE, "b", ttl, 12_001).unwrap(),
            Some(2),
            "expired: b takes over, new epoch"
        );
        // a's late write is fenced.
        let r = store::run(&s, &m, |tx| {
            fence(tx, LEASE, 1)?;
            tx.set(b"late", b"write");
            Ok::<_, ServiceError>(())
        });
        assert!(matches!(r, Err(ServiceError::Fenced { epoch: 1, current: 2 })), "{r:?}");
        assert_eq!(s.begin().unwrap().get(b"late").unwrap(), None);
        assert_eq!(acquire(&s, &m, LEASE, "a", ttl, 13_000).unwrap(), None);
        release(&s, &m, LEASE, "b").unwrap();
        assert_eq!(
            acquire(&s, &m, LEASE, "a", ttl, 13_001).unwrap(),
            Some(3),
            "released: immediate takeover"
        );
    }
}
