//! The in-memory backend: persistent ordered maps give every transaction an
//! O(1) snapshot; commits are checked against the write sets of the commits
//! since the transaction began, exactly as FoundationDB's resolver does.
//! Several engines or replicas in one process may share one instance.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Mutex;

use imbl::OrdMap;

use super::{KeyValue, RangeOpts, Store, StoreError, Transaction, add_le, stamp};

/// Commits older than this many are forgotten; a transaction that began
/// before the oldest remembered commit fails with a conflict (FoundationDB's
/// "transaction too old").
const HISTORY: usize = 50_000;

#[derive(Default)]
struct WriteSet {
    keys: Vec<Vec<u8>>,
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
}

impl WriteSet {
    fn touches_key(&self, k: &[u8]) -> bool {
        self.keys.binary_search_by(|x| x.as_slice().cmp(k)).is_ok()
            || self.ranges.iter().any(|(b, e)| k >= b.as_slice() && k < e.as_slice())
    }
    fn touches_range(&self, b: &[u8], e: &[u8]) -> bool {
        let i = self.keys.partition_point(|x| x.as_slice() < b);
        (i < self.keys.len() && self.keys[i].as_slice() < e)
            || self
                .ranges
                .iter()
                .any(|(rb, re)| rb.as_slice() < e && b < re.as_slice())
    }
}

struct Inner {
    data: OrdMap<Vec<u8>, Vec<u8>>,
    version: u64,
    history: VecDeque<(u64, WriteSet)>,
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    notify: tokio::sync::watch::Sender<u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner {
                data: OrdMap::new(),
                version: 1,
                history: VecDeque::new(),
            }),
            notify: tokio::sync::watch::channel(1).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Read {
    Key(Vec<u8>),
    Range(Vec<u8>, Vec<u8>),
}

enum Op {
    Set(Vec<u8>, Vec<u8>),
    Clear(Vec<u8>),
    ClearRange(Vec<u8>, Vec<u8>),
    Add(Vec<u8>, i64),
    VsKey(Vec<u8>, usize, Vec<u8>),
    VsValue(Vec<u8>, Vec<u8>, usize),
}

struct MemTx<'a> {
    store: &'a MemoryStore,
    snapshot: OrdMap<Vec<u8>, Vec<u8>>,
    read_version: u64,
    reads: Vec<Read>,
    ops: Vec<Op>,
    /// This transaction's own sets and clears, for reading its own writes.
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
}

impl MemTx<'_> {
    fn cleared(&self, k: &[u8]) -> bool {
        self.cleared.iter().any(|(b, e)| k >= b.as_slice() && k < e.as_slice())
    }
}

impl Transaction for MemTx<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.reads.push(Read::Key(key.to_vec()));
        self.get_snapshot(key)
    }

    fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        if self.cleared(key) {
            return Ok(None);
        }
        Ok(self.snapshot.get(key).cloned())
    }

    fn range(&mut self, begin: &[u8], end: &[u8], opts: RangeOpts) -> Result<Vec<KeyValue>, StoreError> {
        if begin >= end {
            return Ok(Vec::new());
        }
        if !opts.snapshot {
            self.reads.push(Read::Range(begin.to_vec(), end.to_vec()));
        }
        let bounds = (Bound::Included(begin.to_vec()), Bound::Excluded(end.to_vec()));
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let take = |n: usize| opts.limit == 0 || n < opts.limit;
        // Read the snapshot lazily from the wanted end; the overlay can only
        // remove or add keys, so read a little more than the limit.
        let want = if opts.limit == 0 {
            usize::MAX
        } else {
            opts.limit.saturating_add(self.overlay.len()).saturating_add(1)
        };
        let iter: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> = if opts.reverse {
            Box::new(self.snapshot.range(bounds.clone()).rev())
        } else {
            Box::new(self.snapshot.range(bounds.clone()))
        };
        for (k, v) in iter.take(want) {
            if !self.cleared(k) {
                merged.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in self.overlay.range(bounds) {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        let mut out = Vec::new();
        if opts.reverse {
            for (k, v) in merged.into_iter().rev() {
                if !take(out.len()) {
                    break;
                }
                out.push((k, v));
            }
        } else {
            for (k, v) in merged {
                if !take(out.len()) {
                    break;
                }
                out.push((k, v));
            }
        }
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.overlay.insert(key.to_vec(), Some(value.to_vec()));
        self.ops.push(Op::Set(key.to_vec(), value.to_vec()));
    }

    fn clear(&mut self, key: &[u8]) {
        self.overlay.insert(key.to_vec(), None);
        self.ops.push(Op::Clear(key.to_vec()));
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        let keys: Vec<Vec<u8>> = self
            .overlay
            .range(begin.to_vec()..end.to_vec())
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.overlay.remove(&k);
        }
        self.cleared.push((begin.to_vec(), end.to_vec()));
        self.ops.push(Op::ClearRange(begin.to_vec(), end.to_vec()));
        Ok(())
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.ops.push(Op::Add(key.to_vec(), delta));
    }

    fn set_versionstamped_key(&mut self, key: Vec<u8>, offset: usize, value: &[u8]) {
        self.ops.push(Op::VsKey(key, offset, value.to_vec()));
    }

    fn set_versionstamped_value(&mut self, key: &[u8], value: Vec<u8>, offset: usize) {
        self.ops.push(Op::VsValue(key.to_vec(), value, offset));
    }

    fn read_version(&mut self) -> Result<u64, StoreError> {
        Ok(self.read_version)
    }

    fn commit(self: Box<Self>) -> Result<u64, StoreError> {
        if self.ops.is_empty() {
            return Ok(self.read_version);
        }
        let mut inner = self.store.lock();
        let oldest = inner.history.front().map(|(v, _)| *v).unwrap_or(inner.version);
        if self.read_version + 1 < oldest {
            return Err(StoreError::Conflict);
        }
        for (v, ws) in inner.history.iter().rev() {
            if *v <= self.read_version {
                break;
            }
            let hit = self.reads.iter().any(|r| match r {
                Read::Key(k) => ws.touches_key(k),
                Read::Range(b, e) => ws.touches_range(b, e),
            });
            if hit {
                return Err(StoreError::Conflict);
            }
        }
        let version = inner.version + 1;
        let mut ws = WriteSet::default();
        for op in self.ops {
            match op {
                Op::Set(k, v) => {
                    ws.keys.push(k.clone());
                    inner.data.insert(k, v);
                }
                Op::Clear(k) => {
                    ws.keys.push(k.clone());
                    inner.data.remove(&k);
                }
                Op::ClearRange(b, e) => {
                    let doomed: Vec<Vec<u8>> = inner.data.range(b.clone()..e.clone()).map(|(k, _)| k.clone()).collect();
                    for k in doomed {
                        inner.data.remove(&k);
                    }
                    ws.ranges.push((b, e));
                }
                Op::Add(k, d) => {
                    let nv = add_le(inner.data.get(&k).map(|v| v.as_slice()), d);
                    ws.keys.push(k.clone());
                    inner.data.insert(k, nv);
                }
                Op::VsKey(mut k, off, v) => {
                    stamp(&mut k, off, version)?;
                    ws.keys.push(k.clone());
                    inner.data.insert(k, v);
                }
                Op::VsValue(k, mut v, off) => {
                    stamp(&mut v, off, version)?;
                    ws.keys.push(k.clone());
                    inner.data.insert(k, v);
                }
            }
        }
        ws.keys.sort();
        ws.keys.dedup();
        inner.version = version;
        inner.history.push_back((version, ws));
        while inner.history.len() > HISTORY {
            inner.history.pop_front();
        }
        drop(inner);
        self.store.notify.send_replace(version);
        Ok(version)
    }
}

impl Store for MemoryStore {
    fn begin(&self) -> Result<Box<dyn Transaction + '_>, StoreError> {
        let inner = self.lock();
        Ok(Box::new(MemTx {
            store: self,
            snapshot: inner.data.clone(),
            read_version: inner.version,
            reads: Vec::new(),
            ops: Vec::new(),
            overlay: BTreeMap::new(),
            cleared: Vec::new(),
        }))
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notify.subscribe()
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
