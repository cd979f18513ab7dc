//! The embedded backend, the default: fjall's optimistic transactions on a
//! local directory. Reads are tracked and a commit that overlaps a newer
//! commit's writes fails with a conflict, like FoundationDB. Every commit
//! is fsynced before it is acknowledged, so an acknowledged write survives
//! `kill -9`.
//!
//! Commit versions come from a counter persisted in the same commit (under a
//! process-wide commit lock, which also orders versionstamps); one process
//! owns the directory (fjall locks it).
//!
//! fjall does not distinguish snapshot reads: every read is tracked, which
//! can only add conflicts, never miss one.

use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

use fjall::{KeyspaceCreateOptions, OptimisticTxDatabase, OptimisticTxKeyspace, PersistMode, Readable};

use super::{KeyValue, RangeOpts, Store, StoreError, Transaction, add_le, stamp};

const VERSION_KEY: &[u8] = b"\xffportcullis/version";

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

pub struct EmbeddedStore {
    db: OptimisticTxDatabase,
    ks: OptimisticTxKeyspace,
    /// The last committed version; held while committing.
    commit: Mutex<u64>,
    notify: tokio::sync::watch::Sender<u64>,
}

impl EmbeddedStore {
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let db = OptimisticTxDatabase::builder(dir)
            .open()
            .map_err(|e| StoreError::Unavailable(format!("cannot open the store in {}: {e}", dir.display())))?;
        let ks = db.keyspace("kv", KeyspaceCreateOptions::default).map_err(io)?;
        let version = match ks.get(VERSION_KEY).map_err(io)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("version counter".into()))?,
            ),
            None => 1,
        };
        Ok(EmbeddedStore {
            db,
            ks,
            commit: Mutex::new(version),
            notify: tokio::sync::watch::channel(version).0,
        })
    }

    fn version(&self) -> u64 {
        *self.commit.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Deferred {
    Add(Vec<u8>, i64),
    VsKey(Vec<u8>, usize, Vec<u8>),
    VsValue(Vec<u8>, Vec<u8>, usize),
}

struct EmbTx<'a> {
    store: &'a EmbeddedStore,
    tx: fjall::OptimisticWriteTx,
    read_version: u64,
    deferred: Vec<Deferred>,
    writes: bool,
}

impl Transaction for EmbTx<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tx.get(&self.store.ks, key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn range(&mut self, begin: &[u8], end: &[u8], opts: RangeOpts) -> Result<Vec<KeyValue>, StoreError> {
        if begin >= end {
            return Ok(Vec::new());
        }
        let bounds = (Bound::Included(begin.to_vec()), Bound::Excluded(end.to_vec()));
        let iter = self.tx.range(&self.store.ks, bounds);
        let mut out = Vec::new();
        let mut push = |g: fjall::Guard| -> Result<bool, StoreError> {
            let (k, v) = g.into_inner().map_err(io)?;
            out.push((k.to_vec(), v.to_vec()));
            Ok(opts.limit == 0 || out.len() < opts.limit)
        };
        if opts.reverse {
            for g in iter.rev() {
                if !push(g)? {
                    break;
                }
            }
        } else {
            for g in iter {
                if !push(g)? {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes = true;
        self.tx.insert(&self.store.ks, key, value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.writes = true;
        self.tx.remove(&self.store.ks, key);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        let keys = self.range(begin, end, RangeOpts::default())?;
        for (k, _) in keys {
            self.clear(&k);
        }
        Ok(())
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.writes = true;
        self.deferred.push(Deferred::Add(key.to_vec(), delta));
    }

    fn set_versionstamped_key(&mut self, key: Vec<u8>, offset: usize, value: &[u8]) {
        self.writes = true;
        self.deferred.push(Deferred::VsKey(key, offset, value.to_vec()));
    }

    fn set_versionstamped_value(&mut self, key: &[u8], value: Vec<u8>, offset: usize) {
        self.writes = true;
        self.deferred.push(Deferred::VsValue(key.to_vec(), value, offset));
    }

    fn read_version(&mut self) -> Result<u64, StoreError> {
        Ok(self.read_version)
    }

    fn commit(self: Box<Self>) -> Result<u64, StoreError> {
        let this = *self;
        if !this.writes {
            return Ok(this.read_version);
        }
        let store = this.store;
        let mut last = store.commit.lock().unwrap_or_else(|p| p.into_inner());
        let version = *last + 1;
        let mut tx = this.tx;
        for d in this.deferred {
            match d {
                Deferred::Add(k, delta) => {
                    // Blind read outside the transaction's read set: commits
                    // are serialized by the lock held here, so this is atomic.
                    let old = store.ks.get(&k).map_err(io)?;
                    tx.insert(&store.ks, k, add_le(old.as_deref(), delta));
                }
                Deferred::VsKey(mut k, off, v) => {
                    stamp(&mut k, off, version)?;
                    tx.insert(&store.ks, k, v);
                }
                Deferred::VsValue(k, mut v, off) => {
                    stamp(&mut v, off, version)?;
                    tx.insert(&store.ks, k, v);
                }
            }
        }
        tx.insert(&store.ks, VERSION_KEY, version.to_be_bytes());
        let tx = tx.durability(Some(PersistMode::SyncAll));
        match tx.commit() {
            Ok(Ok(())) => {
                *last = version;
                drop(last);
                store.notify.send_replace(version);
                Ok(version)
            }
            Ok(Err(_conflict)) => Err(StoreError::Conflict),
            Err(e) => Err(io(e)),
        }
    }
}

impl Store for EmbeddedStore {
    fn begin(&self) -> Result<Box<dyn Transaction + '_>, StoreError> {
        // The version is read before the snapshot is taken, so the snapshot
        // holds at least everything up to it.
        let read_version = self.version();
        let tx = self.db.write_tx().map_err(io)?;
        Ok(Box::new(EmbTx {
            store: self,
            tx,
            read_version,
            deferred: Vec::new(),
            writes: false,
        }))
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notify.subscribe()
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}
