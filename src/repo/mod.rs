//! The objects in the store: every admin write and read as a transaction
//! over the keyspace, enforcing what needs other objects (parents exist,
//! limits, inheritance cycles, dependents on delete), and the changelog
//! every committed change is appended to.
//!
//! All functions are synchronous and retried on conflicts by
//! [`store::run`]; async callers go through [`Repo::call`], which runs them
//! on the repository's bounded pool.

mod audit;
mod bindings;
mod changelog;
mod maintenance;
mod memberships;
mod record;
mod roles;
mod tenants;
mod usage;
mod vaults;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::ids::{self, RoleName, Subject, TenantId, VaultName, Violations};
use crate::engine::model::*;
use crate::engine::validate;
use crate::error::{Result, ServiceError};
use crate::pool::Pool;
use crate::store::{self, RangeOpts, Store, StoreError, Transaction, keyspace as ks, tuple};
use crate::telemetry::Metrics;

pub(crate) use self::audit::append_audit;
pub use self::audit::{AuditQuery, Logged, RefusedCall};
use crate::audit::Actor;
pub(crate) use bindings::remove_binding;
pub use changelog::{FeedEntry, Loaded, append_changelog, key_version, log_floor};
pub use maintenance::UsageTotals;
pub use record::CorruptRecord;
pub(crate) use record::{
    Existing, corrupt, decode, page_of, page_size, page_token_key, range_prefix, read, read_existing, write,
};
pub use tenants::Confinement;
pub use usage::Usage;
pub(crate) use usage::{BINDINGS, ROLES, TENANTS, VAULTS, add_count, check_limits, uncount_scope, usage};
pub use vaults::VaultExport;

/// At most this many upserts and deletes in one WriteBindings or
/// WriteMemberships call.
pub const MAX_WRITE_BATCH: usize = 1000;
/// Import transactions hold at most this many items (FoundationDB's 10 MB
/// and 5 s limits stay far away).
pub const IMPORT_CHUNK: usize = 500;
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 100;

/// One commit's changes in one scope's changelog, at its revision, and
/// who made them (absent in entries written before the audit trail).
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub version: u64,
    pub by: Option<Actor>,
    pub changes: Vec<Change>,
}

/// An opaque revision token: `v1.` and the revision in hex.
pub fn token(revision: u64) -> String {
    format!("v1.{revision:016x}")
}

pub fn parse_token(field: &str, s: &str) -> Result<u64> {
    s.strip_prefix("v1.")
        .filter(|h| h.len() == 16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| {
            ServiceError::invalid(
                field,
                format!(
                    "must be a revision token returned by Portcullis (v1.<16 hex digits>), got {}",
                    ids::quoted(s)
                ),
            )
        })
}

/// `expected_revision`: empty = unconditional, `"0"` = must not exist, else a token.
pub fn parse_expected(s: &str) -> Result<Option<u64>> {
    match s {
        "" => Ok(None),
        "0" => Ok(Some(0)),
        t => parse_token("expected_revision", t).map(Some),
    }
}

fn scope_of(t: &TenantId, v: Option<&VaultName>) -> Scope {
    Scope {
        tenant: t.clone(),
        vault: v.cloned(),
    }
}

fn vs(v: Option<&VaultName>) -> Option<&str> {
    v.map(|v| v.as_str())
}

/// At most [`MAX_WRITE_BATCH`] upserts and deletes in one write call.
fn check_batch(n: usize) -> Result<()> {
    if n > MAX_WRITE_BATCH {
        return Err(ServiceError::invalid(
            "upserts",
            format!("at most {MAX_WRITE_BATCH} upserts and deletes in one call, got {n}"),
        ));
    }
    Ok(())
}

fn expect_revision(what: &str, expected: Option<u64>, current: Option<u64>) -> Result<()> {
    match (expected, current) {
        (None, _) => Ok(()),
        (Some(0), None) => Ok(()),
        (Some(0), Some(c)) => Err(ServiceError::AlreadyExists {
            object: what.to_string(),
            current: token(c),
        }),
        (Some(e), Some(c)) if e == c => Ok(()),
        (Some(e), c) => Err(ServiceError::RevisionMismatch {
            object: what.to_string(),
            expected: token(e),
            current: c.map(token),
        }),
    }
}

fn tenant_required(tx: &mut dyn Transaction, t: &TenantId, role: &str) -> Result<Tenant> {
    read::<Tenant>(tx, &ks::tenant(t.as_str()))?
        .map(|(t, _)| t)
        .ok_or_else(|| ServiceError::TenantRequired {
            tenant: t.to_string(),
            needed_by: role.to_string(),
        })
}

fn scope_required(tx: &mut dyn Transaction, t: &TenantId, v: Option<&VaultName>, what: &str) -> Result<Tenant> {
    let tenant = tenant_required(tx, t, what)?;
    if let Some(v) = v
        && tx.get(&ks::vault(t.as_str(), v.as_str()))?.is_none()
    {
        return Err(ServiceError::VaultRequired {
            tenant: t.to_string(),
            vault: v.to_string(),
            needed_by: what.to_string(),
        });
    }
    Ok(tenant)
}

/// The result of an Apply: the stored object, its revision, whether it changed.
#[derive(Debug, Clone)]
pub struct Applied<T> {
    pub object: T,
    pub revision: u64,
    pub changed: bool,
}

impl<T> Applied<T> {
    /// An Apply's result: the stored object when it was already identical
    /// (nothing written), else the written one at the commit's version.
    fn from_upsert(unchanged: Option<(T, u64)>, written: T, version: u64) -> Applied<T> {
        match unchanged {
            Some((object, revision)) => Applied {
                object,
                revision,
                changed: false,
            },
            None => Applied {
                object: written,
                revision: version,
                changed: true,
            },
        }
    }
}

/// What a new object counts against: the limits of `kind` of its tenant
/// and the tenant's ancestors, in scope (`tenant`, `vault`).
struct Counted<'a> {
    tenant: &'a TenantId,
    vault: Option<&'a str>,
    kind: &'static str,
}

/// The common body of an Apply: nothing is written when the stored object
/// is identical (it is returned); a new object is checked against its limit
/// and counted; then the object is written and the change logged.
fn upsert<T: Serialize + PartialEq>(
    tx: &mut dyn Transaction,
    actor: &Actor,
    key: &[u8],
    object: &T,
    existing: Existing<T>,
    counted: Option<Counted<'_>>,
    change: Change,
) -> Result<Option<(T, u64)>> {
    let logged = Logged::over(change, &existing);
    match existing {
        Existing::Found(old, rev) if old == *object => return Ok(Some((old, rev))),
        Existing::Found(..) | Existing::Corrupt(_) => {}
        Existing::Absent => {
            if let Some(c) = &counted {
                check_limits(tx, c.tenant, c.kind, 1, false)?;
                add_count(tx, c.tenant, c.vault, c.kind, 1);
            }
        }
    }
    write(tx, key, object)?;
    append_changelog(tx, actor, &[logged])?;
    Ok(None)
}

pub struct Repo {
    pub store: Arc<dyn Store>,
    /// Bounds the threads store transactions may occupy.
    pool: Pool,
    metrics: Arc<Metrics>,
    /// This replica's writes to one tenant take turns (striped by tenant):
    /// every write of a tenant reads and moves its audit chain's head, so
    /// concurrent ones would conflict and retry with backoff, each retry
    /// redoing the whole write. Replicas still race each other, rarely.
    writers: [std::sync::Mutex<()>; WRITE_STRIPES],
}

const WRITE_STRIPES: usize = 64;

impl Repo {
    /// A repository counting into metrics of its own.
    pub fn new(store: Arc<dyn Store>) -> Repo {
        Repo::with_metrics(store, Metrics::new())
    }

    /// A repository counting into the server's `metrics`; the index built
    /// on it counts there too.
    pub fn with_metrics(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Repo {
        Repo {
            store,
            pool: Pool::new("store", 32, 4096, metrics.pool_rejected.with_label_values(&["store"])),
            metrics,
            writers: std::array::from_fn(|_| std::sync::Mutex::new(())),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The one async entry point for store work: runs `f` on a blocking
    /// thread of the repository's bounded pool.
    pub async fn call<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Repo) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        self.pool.run(move || f(&me)).await?
    }

    fn run<T>(&self, body: impl FnMut(&mut dyn Transaction) -> Result<T>) -> Result<(T, u64)> {
        store::run(&*self.store, &self.metrics.store, body)
    }

    /// [`Repo::run`] for a write to `tenant`'s objects, after this
    /// replica's other writes to it (see `writers`).
    fn write<T>(&self, tenant: &str, body: impl FnMut(&mut dyn Transaction) -> Result<T>) -> Result<(T, u64)> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tenant.hash(&mut h);
        let _turn = self.writers[h.finish() as usize % WRITE_STRIPES]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.run(body)
    }

    /// The store's id, created on first use.
    pub fn store_id(&self) -> Result<String> {
        let (id, _) = self.run(|tx| {
            if let Some(v) = tx.get(&ks::store_id())? {
                return String::from_utf8(v).map_err(|e| corrupt(&ks::store_id(), e));
            }
            let id = uuid::Uuid::new_v4().to_string();
            tx.set(&ks::store_id(), id.as_bytes());
            Ok(id)
        })?;
        Ok(id)
    }

    /// The oldest revision the changelog still holds.
    pub fn log_floor(&self) -> Result<u64> {
        let mut tx = self.store.begin()?;
        log_floor(&mut *tx)
    }

    /// The latest committed version.
    pub fn current_version(&self) -> Result<u64> {
        let mut tx = self.store.begin()?;
        Ok(tx.read_version()?)
    }
}
