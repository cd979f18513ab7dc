//! The FoundationDB backend (feature `fdb`): the production store, shared by
//! every replica.
//!
//! - The keyspace lives under the fixed tuple prefix `("pc", KEYSPACE_VERSION)`
//!   (see [`super::keyspace`]), so a keyspace change is a new prefix.
//! - Changelog and feed keys, and record revisions, are versionstamps filled
//!   in by the cluster at commit: no counter key that every write touches.
//!   A revision token carries the commit version.
//! - Every transaction has an explicit 5 s timeout (FoundationDB's own limit
//!   for a transaction's lifetime); a cluster that does not answer surfaces
//!   as `Unavailable` with a message naming the cluster file. Retries are the
//!   caller's loop ([`super::run`]); `commit_unknown_result` is retried, which
//!   the writes tolerate (upserts compare content, deletes of the absent
//!   succeed, and a duplicated feed entry applies idempotently; counters are
//!   corrected by the usage job).
//! - Replicas learn about commits through a watch on the feed's bump key,
//!   re-armed after each trigger, plus the index's periodic poll in case a
//!   watch is missed.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use foundationdb::options::{MutationType, StreamingMode, TransactionOption};
use foundationdb::{Database, FdbError, KeySelector, RangeOption};
use futures::executor::block_on;

use super::{KeyValue, RangeOpts, Store, StoreError, Transaction, keyspace};

/// FoundationDB's limit on a transaction's lifetime.
const TX_TIMEOUT_MS: i32 = 5_000;

static NETWORK: OnceLock<Mutex<Option<foundationdb::api::NetworkAutoStop>>> = OnceLock::new();

fn boot_network() {
    NETWORK.get_or_init(|| {
        // SAFETY: booted once per process; `stop_network` drops the handle
        // before exit, as the client library requires.
        Mutex::new(Some(unsafe { foundationdb::boot() }))
    });
}

/// Stops the client network thread; call once before the process exits.
pub fn stop_network() {
    if let Some(m) = NETWORK.get()
        && let Ok(mut g) = m.lock()
    {
        g.take();
    }
}

fn map_err(e: FdbError, cluster: &str) -> StoreError {
    match e.code() {
        1020 | 1007 | 1009 | 1037 | 1213 => StoreError::Conflict,
        1021 => StoreError::CommitUnknown,
        1031 => StoreError::Unavailable(format!(
            "the FoundationDB cluster of {cluster} did not answer within {TX_TIMEOUT_MS} ms; check the cluster file and the cluster's health"
        )),
        2101 | 2103 => StoreError::TooLarge(e.message().to_string()),
        _ if e.is_retryable() => StoreError::Conflict,
        _ => StoreError::Unavailable(format!("FoundationDB error {}: {}", e.code(), e.message())),
    }
}

pub struct FdbStore {
    db: Arc<Database>,
    cluster: String,
    notify: tokio::sync::watch::Sender<u64>,
    watcher: OnceLock<()>,
}

impl FdbStore {
    pub fn open(cluster_file: &Path) -> Result<FdbStore, StoreError> {
        boot_network();
        let cluster = cluster_file.display().to_string();
        let db = Database::from_path(&cluster).map_err(|e| map_err(e, &cluster))?;
        let store = FdbStore {
            db: Arc::new(db),
            cluster,
            notify: tokio::sync::watch::channel(0).0,
            watcher: OnceLock::new(),
        };
        // Fail fast when the cluster cannot be reached.
        let v = store.begin()?.read_version()?;
        store.notify.send_replace(v);
        Ok(store)
    }

    fn trx(&self) -> Result<foundationdb::Transaction, StoreError> {
        let trx = self.db.create_trx().map_err(|e| map_err(e, &self.cluster))?;
        trx.set_option(TransactionOption::Timeout(TX_TIMEOUT_MS))
            .map_err(|e| map_err(e, &self.cluster))?;
        Ok(trx)
    }

    /// Watches the feed's bump key on a thread of its own and announces the
    /// read version after each change (or every few seconds).
    fn start_watcher(&self) {
        let db = self.db.clone();
        let cluster = self.cluster.clone();
        let notify = self.notify.clone();
        let spawned = std::thread::Builder::new().name("fdb-watch".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the FoundationDB watch thread");
                    return;
                }
            };
            rt.block_on(async move {
                loop {
                    let step = async {
                        let trx = db.create_trx()?;
                        trx.set_option(TransactionOption::Timeout(TX_TIMEOUT_MS))?;
                        let version = trx.get_read_version().await?;
                        let watch = trx.watch(&keyspace::feed_bump());
                        trx.commit().await.map_err(FdbError::from)?;
                        Ok::<_, FdbError>((version, watch))
                    };
                    match step.await {
                        Ok((version, watch)) => {
                            notify.send_if_modified(|v| {
                                let newer = version as u64 > *v;
                                if newer {
                                    *v = version as u64;
                                }
                                newer
                            });
                            let _ = tokio::time::timeout(Duration::from_secs(5), watch).await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %map_err(e, &cluster), "FoundationDB watch failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    if notify.is_closed() {
                        return;
                    }
                }
            });
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the FoundationDB watch thread");
        }
    }
}

struct FdbTx<'a> {
    store: &'a FdbStore,
    trx: foundationdb::Transaction,
    writes: bool,
}

impl FdbTx<'_> {
    fn err(&self, e: FdbError) -> StoreError {
        map_err(e, &self.store.cluster)
    }
}

impl Transaction for FdbTx<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        block_on(self.trx.get(key, false))
            .map(|v| v.map(|s| s.to_vec()))
            .map_err(|e| self.err(e))
    }

    fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        block_on(self.trx.get(key, true))
            .map(|v| v.map(|s| s.to_vec()))
            .map_err(|e| self.err(e))
    }

    fn range(&mut self, begin: &[u8], end: &[u8], opts: RangeOpts) -> Result<Vec<KeyValue>, StoreError> {
        if begin >= end {
            return Ok(Vec::new());
        }
        let mut range = Some(RangeOption {
            begin: KeySelector::first_greater_or_equal(begin.to_vec()),
            end: KeySelector::first_greater_or_equal(end.to_vec()),
            limit: (opts.limit > 0).then_some(opts.limit),
            mode: StreamingMode::WantAll,
            reverse: opts.reverse,
            ..RangeOption::default()
        });
        let mut out = Vec::new();
        let mut iteration = 1;
        while let Some(r) = range.take() {
            let kvs = block_on(self.trx.get_range(&r, iteration, opts.snapshot)).map_err(|e| self.err(e))?;
            out.extend(kvs.iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())));
            range = r.next_range(&kvs);
            iteration += 1;
        }
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes = true;
        self.trx.set(key, value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.writes = true;
        self.trx.clear(key);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        self.writes = true;
        self.trx.clear_range(begin, end);
        Ok(())
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.writes = true;
        self.trx.atomic_op(key, &delta.to_le_bytes(), MutationType::Add);
    }

    fn set_versionstamped_key(&mut self, mut key: Vec<u8>, offset: usize, value: &[u8]) {
        self.writes = true;
        key.extend_from_slice(&(offset as u32).to_le_bytes());
        self.trx.atomic_op(&key, value, MutationType::SetVersionstampedKey);
    }

    fn set_versionstamped_value(&mut self, key: &[u8], mut value: Vec<u8>, offset: usize) {
        self.writes = true;
        value.extend_from_slice(&(offset as u32).to_le_bytes());
        self.trx.atomic_op(key, &value, MutationType::SetVersionstampedValue);
    }

    fn read_version(&mut self) -> Result<u64, StoreError> {
        block_on(self.trx.get_read_version())
            .map(|v| v as u64)
            .map_err(|e| self.err(e))
    }

    fn commit(self: Box<Self>) -> Result<u64, StoreError> {
        let mut this = *self;
        if !this.writes {
            return this.read_version();
        }
        let store = this.store;
        match block_on(this.trx.commit()) {
            Ok(committed) => {
                let v = committed.committed_version().map_err(|e| map_err(e, &store.cluster))? as u64;
                store.notify.send_if_modified(|cur| {
                    let newer = v > *cur;
                    if newer {
                        *cur = v;
                    }
                    newer
                });
                Ok(v)
            }
            Err(e) => Err(map_err(FdbError::from(e), &store.cluster)),
        }
    }
}

impl Store for FdbStore {
    fn begin(&self) -> Result<Box<dyn Transaction + '_>, StoreError> {
        Ok(Box::new(FdbTx {
            store: self,
            trx: self.trx()?,
            writes: false,
        }))
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.watcher.get_or_init(|| self.start_watcher());
        self.notify.subscribe()
    }

    fn backend(&self) -> &'static str {
        "foundationdb"
    }
}
