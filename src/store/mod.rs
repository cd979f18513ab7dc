//! Storage: a FoundationDB-shaped key-value store.
//!
//! Ordered byte keys, transactions that read a consistent snapshot, range
//! reads, set/clear/clear-range, atomic adds, versionstamped keys and values,
//! optimistic conflicts (a transaction whose reads were overwritten by a
//! commit after it began fails with [`StoreError::Conflict`]) and a commit
//! version. [`run`] is the retry loop.
//!
//! Backends: `memory` (tests), `embedded` (the default: fjall on a local
//! directory, fsynced on commit) and `foundationdb` (feature `fdb`). The
//! whole keyspace is documented in [`keyspace`].
//!
//! Transactions are synchronous; async callers run them on a blocking
//! thread (the repository's [`crate::repo::Repo::call`]).

pub mod embedded;
#[cfg(feature = "fdb")]
pub mod fdb;
pub mod keyspace;
pub mod memory;
pub mod tuple;

use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("transaction conflict: another commit changed what this transaction read")]
    Conflict,
    #[error("the commit's outcome is unknown")]
    CommitUnknown,
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("transaction too large: {0}")]
    TooLarge(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("storage I/O error: {0}")]
    Io(String),
}

impl StoreError {
    /// Whether retrying the whole transaction may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Conflict | StoreError::CommitUnknown)
    }
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A range read: `[begin, end)`, at most `limit` pairs (0 = no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOpts {
    pub limit: usize,
    pub reverse: bool,
    /// Read without adding a conflict range (FoundationDB's snapshot read).
    pub snapshot: bool,
}

impl RangeOpts {
    pub fn limit(n: usize) -> RangeOpts {
        RangeOpts {
            limit: n,
            ..Default::default()
        }
    }
}

pub trait Transaction: Send {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// A read that does not make the transaction conflict with later writes
    /// of `key`. Backends without that distinction read normally.
    fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(key)
    }
    fn range(&mut self, begin: &[u8], end: &[u8], opts: RangeOpts) -> Result<Vec<KeyValue>, StoreError>;
    fn set(&mut self, key: &[u8], value: &[u8]);
    fn clear(&mut self, key: &[u8]);
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError>;
    /// Adds `delta` to a little-endian i64 (absent = 0) without reading it.
    fn atomic_add(&mut self, key: &[u8], delta: i64);
    /// Sets `key` with the 10 bytes at `offset` replaced by the commit's
    /// versionstamp.
    fn set_versionstamped_key(&mut self, key: Vec<u8>, offset: usize, value: &[u8]);
    /// Sets `value` with the 10 bytes at `offset` replaced by the commit's
    /// versionstamp.
    fn set_versionstamped_value(&mut self, key: &[u8], value: Vec<u8>, offset: usize);
    /// The version this transaction reads at.
    fn read_version(&mut self) -> Result<u64, StoreError>;
    /// Commits and returns the commit version. A transaction without writes
    /// returns its read version.
    fn commit(self: Box<Self>) -> Result<u64, StoreError>;
}

pub trait Store: Send + Sync + 'static {
    fn begin(&self) -> Result<Box<dyn Transaction + '_>, StoreError>;
    /// The latest committed version, as far as this process knows; it moves
    /// forward when this process or (on a shared backend) another commits.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
    fn backend(&self) -> &'static str;
}

/// An error type a transaction body may return, able to carry a store error.
pub trait TxError: From<StoreError> {
    fn store_error(&self) -> Option<&StoreError>;
}

impl TxError for StoreError {
    fn store_error(&self) -> Option<&StoreError> {
        Some(self)
    }
}

pub const MAX_ATTEMPTS: u32 = 25;

/// Runs `body` in a transaction, retrying on conflicts with backoff.
/// Returns the body's value and the commit version.
pub fn run<T, E: TxError>(
    store: &dyn Store,
    metrics: &StoreMetrics,
    mut body: impl FnMut(&mut dyn Transaction) -> Result<T, E>,
) -> Result<(T, u64), E> {
    // A child span of the RPC that runs it, when traces are on (only RPCs
    // open spans, so lease renewals and jobs do not each start a trace).
    let span = if tracing::Span::current().is_disabled() {
        tracing::Span::none()
    } else {
        tracing::info_span!(
            "store.transaction",
            otel.kind = "internal",
            db.system = store.backend(),
            attempts = tracing::field::Empty,
            result = tracing::field::Empty,
        )
    };
    let _in = span.enter();
    let mut delay = Duration::from_micros(500);
    let mut attempt = 0;
    loop {
        attempt += 1;
        span.record("attempts", attempt);
        let result: Result<(T, u64), E> = (|| {
            let mut tx = store.begin()?;
            let value = body(&mut *tx)?;
            let version = tx.commit()?;
            Ok((value, version))
        })();
        match result {
            Ok(v) => {
                metrics.record("committed", attempt);
                span.record("result", "committed");
                return Ok(v);
            }
            Err(e) => {
                let retry = e.store_error().is_some_and(StoreError::retryable) && attempt < MAX_ATTEMPTS;
                if !retry {
                    metrics.record("failed", attempt);
                    span.record("result", "failed");
                    return Err(e);
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// What [`run`] counts: transactions by result, and retried attempts.
/// Created unregistered; the server registers them in its registry.
#[derive(Clone)]
pub struct StoreMetrics {
    transactions: prometheus::IntCounterVec,
    retries: prometheus::IntCounter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            transactions: prometheus::IntCounterVec::new(
                prometheus::Opts::new("portcullis_store_transactions_total", "Store transactions, by result."),
                &["result"],
            )
            .expect("valid metric"),
            retries: prometheus::IntCounter::new(
                "portcullis_store_retries_total",
                "Store transaction attempts retried after a conflict.",
            )
            .expect("valid metric"),
        }
    }
}

impl StoreMetrics {
    /// The store's collectors, for the server's registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![Box::new(self.transactions.clone()), Box::new(self.retries.clone())]
    }

    /// One transaction that ended with `result` after `attempts` attempts.
    pub fn record(&self, result: &str, attempts: u32) {
        self.transactions.with_label_values(&[result]).inc();
        if attempts > 1 {
            self.retries.inc_by(u64::from(attempts - 1));
        }
    }
}

/// Which backend to open.
#[derive(Clone)]
pub enum Backend {
    Memory,
    Embedded {
        dir: std::path::PathBuf,
    },
    FoundationDb {
        cluster_file: std::path::PathBuf,
    },
    /// An already open store, shared (several in-process replicas in tests).
    Shared(Arc<dyn Store>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Memory => f.write_str("memory"),
            Backend::Embedded { dir } => write!(f, "embedded({})", dir.display()),
            Backend::FoundationDb { cluster_file } => write!(f, "foundationdb({})", cluster_file.display()),
            Backend::Shared(s) => write!(f, "shared({})", s.backend()),
        }
    }
}

pub fn open(backend: &Backend) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match backend {
        Backend::Memory => Arc::new(memory::MemoryStore::new()),
        Backend::Embedded { dir } => Arc::new(embedded::EmbeddedStore::open(dir)?),
        Backend::Shared(s) => s.clone(),
        #[cfg(feature = "fdb")]
        Backend::FoundationDb { cluster_file } => Arc::new(fdb::FdbStore::open(cluster_file)?),
        #[cfg(not(feature = "fdb"))]
        Backend::FoundationDb { .. } => {
            return Err(StoreError::Unavailable(
                "this build has no FoundationDB support; build with `--features fdb`".into(),
            ));
        }
    })
}

/// Fills a 10-byte versionstamp: the big-endian commit version and a zero
/// batch order (one transaction per version on the local backends).
pub(crate) fn stamp(buf: &mut [u8], offset: usize, version: u64) -> Result<(), StoreError> {
    let slot = buf
        .get_mut(offset..offset + 10)
        .ok_or_else(|| StoreError::Corrupt(format!("versionstamp offset {offset} out of range")))?;
    slot[..8].copy_from_slice(&version.to_be_bytes());
    slot[8..].copy_from_slice(&[0, 0]);
    Ok(())
}

pub(crate) fn add_le(old: Option<&[u8]>, delta: i64) -> Vec<u8> {
    let cur = old.and_then(|b| b.try_into().ok()).map(i64::from_le_bytes).unwrap_or(0);
    cur.wrapping_add(delta).to_le_bytes().to_vec()
}
