//! The objects in the store: every admin write and read as a transaction
//! over the keyspace, enforcing what needs other objects (parents exist,
//! limits, inheritance cycles, dependents on delete), and the changelog
//! every committed change is appended to.
//!
//! All functions are synchronous and retried on conflicts by
//! [`store::run`]; async callers use a blocking thread.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::ids::{self, RoleName, Subject, TenantId, VaultName, Violations};
use crate::engine::model::*;
use crate::engine::validate;
use crate::error::{Result, ServiceError};
use crate::store::{self, RangeOpts, Store, StoreError, Transaction, keyspace as ks, tuple};

/// At most this many upserts and deletes in one WriteBindings or
/// WriteMemberships call.
pub const MAX_WRITE_BATCH: usize = 1000;
/// Import transactions hold at most this many items (FoundationDB's 10 MB
/// and 5 s limits stay far away).
pub const IMPORT_CHUNK: usize = 500;
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 100;

/// One commit's changes, at its revision.
pub type LogEntry = (u64, Vec<Change>);

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

fn page_size(n: u32) -> usize {
    match n as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

fn page_token_key(token: &str) -> Result<Option<Vec<u8>>> {
    if token.is_empty() {
        return Ok(None);
    }
    hex::decode(token)
        .map(Some)
        .map_err(|_| ServiceError::invalid("page_token", "must be a page token returned by the previous page"))
}

pub(crate) fn corrupt(key: &[u8], e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Store(StoreError::Corrupt(format!("{}: {e}", hex::encode(key))))
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<(T, u64)> {
    let (version, json) = ks::split_record(value).ok_or_else(|| corrupt(key, "record too short"))?;
    let obj = serde_json::from_slice(json).map_err(|e| corrupt(key, e))?;
    Ok((obj, version))
}

/// A record that could not be read, found while loading or tailing: the
/// index quarantines its scope until it is overwritten or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord {
    /// `None` when not even the scope could be read.
    pub scope: Option<Scope>,
    pub object: String,
    pub detail: String,
}

impl CorruptRecord {
    fn of_key(key: &[u8], detail: String) -> CorruptRecord {
        let parsed = ks::object_of(key);
        let scope = parsed.as_ref().and_then(|o| {
            Some(Scope {
                tenant: TenantId::parse(&o.tenant).ok()?,
                vault: match &o.vault {
                    Some(v) => Some(VaultName::parse(v).ok()?),
                    None => None,
                },
            })
        });
        CorruptRecord {
            scope,
            object: parsed.map(|o| o.object).unwrap_or_else(|| hex::encode(key)),
            detail,
        }
    }

    /// A change of a feed entry that does not decode: its scope and object
    /// as far as the raw JSON tells them.
    fn of_change(raw: &serde_json::Value, detail: String) -> CorruptRecord {
        let field = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let op = field(raw, "op").unwrap_or_default();
        let scope_v = raw.get("scope").unwrap_or(raw);
        let tenant = field(scope_v, "tenant").or_else(|| field(raw, "id").filter(|_| op.ends_with("tenant")));
        let vault = field(scope_v, "vault").or_else(|| field(raw, "name").filter(|_| op.ends_with("vault")));
        let scope = tenant.and_then(|t| {
            Some(Scope {
                tenant: TenantId::parse(&t).ok()?,
                vault: match vault.filter(|v| !v.is_empty()) {
                    Some(v) => Some(VaultName::parse(&v).ok()?),
                    None => None,
                },
            })
        });
        let object = match op.trim_start_matches("put_").trim_start_matches("delete_") {
            "tenant" => "tenant".to_string(),
            "vault" => "vault".to_string(),
            "role" => format!("role {}", field(raw, "name").unwrap_or_default()),
            "binding" => format!("binding {}", field(raw, "id").unwrap_or_default()),
            "membership" => format!(
                "membership {} {}",
                field(raw, "group").unwrap_or_default(),
                field(raw, "member").unwrap_or_default()
            ),
            _ => format!("change {op}"),
        };
        CorruptRecord { scope, object, detail }
    }
}

/// What a write finds under an object's key: nothing, a record it cannot
/// read (which it may still overwrite or delete, to repair it), or the
/// object at its revision.
pub(crate) enum Existing<T> {
    Absent,
    Corrupt(u64),
    Found(T, u64),
}

impl<T> Existing<T> {
    fn revision(&self) -> Option<u64> {
        match self {
            Existing::Absent => None,
            Existing::Corrupt(r) | Existing::Found(_, r) => Some(*r),
        }
    }
    fn exists(&self) -> bool {
        !matches!(self, Existing::Absent)
    }
}

pub(crate) fn read_existing<T: DeserializeOwned>(tx: &mut dyn Transaction, key: &[u8]) -> Result<Existing<T>> {
    let Some(v) = tx.get(key)? else {
        return Ok(Existing::Absent);
    };
    match decode(key, &v) {
        Ok((obj, rev)) => Ok(Existing::Found(obj, rev)),
        Err(e) => {
            tracing::warn!(key = %hex::encode(key), error = %e, "overwriting or deleting a record that cannot be read");
            Ok(Existing::Corrupt(ks::split_record(&v).map(|(r, _)| r).unwrap_or(0)))
        }
    }
}

/// Removes the by-subject index row of binding `id` when its record (and
/// so its subject) cannot be read: the scope's rows are scanned for it.
fn clear_subject_rows_of(tx: &mut dyn Transaction, t: &str, v: Option<&str>, id: &str) -> Result<()> {
    for (k, _) in range_prefix(tx, &ks::binding_index_of_scope(t, v), RangeOpts::default())? {
        if ks::binding_id_of_subject_row(&k).as_deref() == Some(id) {
            tx.clear(&k);
        }
    }
    Ok(())
}

/// Removes binding `id`'s index rows (by subject, by expiry) as they are
/// for `old`, the stored binding (`None` when its record cannot be read);
/// with `record`, the record too. The one place a binding's rows go away:
/// overwrites, deletes and the purge job all come here.
fn clear_binding_rows(
    tx: &mut dyn Transaction,
    t: &str,
    v: Option<&str>,
    id: &str,
    old: Option<&Binding>,
    record: bool,
) -> Result<()> {
    if record {
        tx.clear(&ks::binding(t, v, id));
    }
    match old {
        Some(old) => {
            tx.clear(&ks::binding_by_subject(t, v, old.subject.as_str(), id));
            if let Some(e) = old.expires_at {
                tx.clear(&ks::expiry(e.0, t, v, id));
            }
            Ok(())
        }
        // Its expiry row, if any, is dropped by the purge job, which finds
        // no expired binding behind it.
        None => clear_subject_rows_of(tx, t, v, id),
    }
}

/// Removes binding `id` and its index rows.
pub(crate) fn remove_binding(
    tx: &mut dyn Transaction,
    t: &str,
    v: Option<&str>,
    id: &str,
    old: Option<&Binding>,
) -> Result<()> {
    clear_binding_rows(tx, t, v, id, old, true)
}

pub(crate) fn read<T: DeserializeOwned>(tx: &mut dyn Transaction, key: &[u8]) -> Result<Option<(T, u64)>> {
    match tx.get(key)? {
        Some(v) => decode(key, &v).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn write<T: Serialize>(tx: &mut dyn Transaction, key: &[u8], obj: &T) -> Result<()> {
    let json = serde_json::to_vec(obj).map_err(|e| ServiceError::Internal(e.to_string()))?;
    tx.set_versionstamped_value(key, ks::record(&json), 0);
    Ok(())
}

pub(crate) fn range_prefix(tx: &mut dyn Transaction, prefix: &[u8], opts: RangeOpts) -> Result<Vec<store::KeyValue>> {
    let (b, e) = tuple::prefix_range(prefix);
    Ok(tx.range(&b, &e, opts)?)
}

/// A page of a prefix range, after the key in `token`.
fn page_of(tx: &mut dyn Transaction, prefix: &[u8], token: &str, size: u32) -> Result<(Vec<store::KeyValue>, String)> {
    let (b, e) = tuple::prefix_range(prefix);
    let begin = match page_token_key(token)? {
        Some(mut k) if k.starts_with(prefix) => {
            k.push(0);
            k
        }
        Some(_) => return Err(ServiceError::invalid("page_token", "belongs to another listing")),
        None => b,
    };
    let n = page_size(size);
    let mut rows = tx.range(&begin, &e, RangeOpts::limit(n + 1))?;
    let next = if rows.len() > n {
        rows.truncate(n);
        hex::encode(&rows[n - 1].0)
    } else {
        String::new()
    };
    Ok((rows, next))
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

/// Appends `changes` to the per-vault changelogs and the feed.
pub fn append_changelog(tx: &mut dyn Transaction, changes: &[Change]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut by_scope: BTreeMap<Scope, Vec<&Change>> = BTreeMap::new();
    for c in changes {
        by_scope.entry(c.scope()).or_default().push(c);
    }
    for (scope, cs) in by_scope {
        let (key, off) = ks::log_entry(scope.tenant.as_str(), vs(scope.vault.as_ref()));
        let json = serde_json::to_vec(&cs).map_err(|e| ServiceError::Internal(e.to_string()))?;
        tx.set_versionstamped_key(key, off, &json);
    }
    let (key, off) = ks::feed_entry();
    let json = serde_json::to_vec(changes).map_err(|e| ServiceError::Internal(e.to_string()))?;
    tx.set_versionstamped_key(key, off, &json);
    tx.set_versionstamped_value(&ks::feed_bump(), vec![0xff; 10], 0);
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub vaults: u64,
    pub roles: u64,
    pub bindings: u64,
}

pub(crate) const VAULTS: &str = "vaults";
pub(crate) const ROLES: &str = "roles";
pub(crate) const BINDINGS: &str = "bindings";
/// Descendant tenants, counted only in subtree totals.
pub(crate) const TENANTS: &str = "tenants";

fn read_i64(tx: &mut dyn Transaction, key: &[u8]) -> Result<i64> {
    Ok(tx
        .get(key)?
        .and_then(|v| v.as_slice().try_into().ok())
        .map(i64::from_le_bytes)
        .unwrap_or(0))
}

/// What `t` and its descendants hold together, as limits count it.
pub(crate) fn usage(tx: &mut dyn Transaction, t: &str) -> Result<Usage> {
    let mut get = |kind| read_i64(tx, &ks::subtree_count(t, kind)).map(|n| n.max(0) as u64);
    Ok(Usage {
        vaults: get(VAULTS)?,
        roles: get(ROLES)?,
        bindings: get(BINDINGS)?,
    })
}

/// Counts `delta` objects of `kind` in scope (`t`, `v`): the scope's own
/// counter and the subtree totals of `t` and each of its ancestors.
pub(crate) fn add_count(tx: &mut dyn Transaction, t: &TenantId, v: Option<&str>, kind: &str, delta: i64) {
    if delta == 0 {
        return;
    }
    tx.atomic_add(&ks::count(t.as_str(), v, kind), delta);
    for a in t.lineage() {
        tx.atomic_add(&ks::subtree_count(a.as_str(), kind), delta);
    }
}

fn limit_of(l: &Limits, kind: &str) -> u32 {
    match kind {
        VAULTS => l.max_vaults,
        ROLES => l.max_roles,
        BINDINGS => l.max_bindings,
        _ => l.max_tenants,
    }
}

/// Refuses adding `adding` objects of `kind` under `t` when that would take
/// `t` or any ancestor past its limit: a limit bounds the whole subtree, so
/// a tenant cannot escape its parent's limits by creating children.
/// `ancestors_only` skips `t` itself (a new tenant counts against its
/// ancestors' `max_tenants`, not its own).
fn check_limits(tx: &mut dyn Transaction, t: &TenantId, kind: &str, adding: u64, ancestors_only: bool) -> Result<()> {
    if adding == 0 {
        return Ok(());
    }
    for a in t.lineage().into_iter().skip(usize::from(ancestors_only)) {
        let Existing::Found(tenant, _) = read_existing::<Tenant>(tx, &ks::tenant(a.as_str()))? else {
            continue;
        };
        let max = limit_of(&tenant.limits, kind);
        if max == 0 {
            continue;
        }
        let have = read_i64(tx, &ks::subtree_count(a.as_str(), kind))?.max(0) as u64;
        if have + adding > u64::from(max) {
            let whose = if a == *t {
                format!("tenant {a}")
            } else {
                format!("tenant {a} (an ancestor of {t}, whose limits bound its whole subtree)")
            };
            return Err(ServiceError::ResourceExhausted(format!(
                "{whose} may hold at most {max} {kind} (limits.max_{kind}); it holds {have} and this write adds {adding}"
            )));
        }
    }
    Ok(())
}

/// Removes a scope's counters, taking what they held off the subtree totals.
fn uncount_scope(tx: &mut dyn Transaction, t: &TenantId, v: Option<&str>) -> Result<()> {
    for kind in [VAULTS, ROLES, BINDINGS] {
        let n = read_i64(tx, &ks::count(t.as_str(), v, kind))?;
        if n != 0 {
            for a in t.lineage() {
                tx.atomic_add(&ks::subtree_count(a.as_str(), kind), -n);
            }
        }
    }
    let (b, e) = tuple::prefix_range(&ks::counts_of_scope(t.as_str(), v));
    tx.clear_range(&b, &e)?;
    Ok(())
}

/// What a key confined to a subtree may do to the tenants in it, checked by
/// the writes of tenants: `roots` are the key's subtree tops containing the
/// tenant written.
#[derive(Debug, Clone)]
pub struct Confinement {
    pub key: String,
    pub roots: Vec<TenantId>,
}

impl Confinement {
    /// Refuses a write of `t` (over `existing`) that a confined key may not
    /// make: creating or deleting its own root, changing the root's status
    /// or limits, or giving a descendant a limit above a root's.
    fn check(
        &self,
        tx: &mut dyn Transaction,
        t: Option<&Tenant>,
        id: &TenantId,
        existing: &Existing<Tenant>,
    ) -> Result<()> {
        let refuse = |what: &str| ServiceError::ConfinementRoot {
            key: self.key.clone(),
            tenant: id.to_string(),
            what: what.to_string(),
        };
        if self.roots.contains(id) {
            let Some(t) = t else { return Err(refuse("delete it")) };
            return match existing {
                Existing::Found(old, _) if old.status == t.status && old.limits == t.limits => Ok(()),
                Existing::Found(old, _) if old.status != t.status => Err(refuse("change its status")),
                Existing::Found(..) => Err(refuse("change its limits")),
                Existing::Absent | Existing::Corrupt(_) => Err(refuse("create it")),
            };
        }
        let Some(t) = t else { return Ok(()) };
        for root in &self.roots {
            let Existing::Found(r, _) = read_existing::<Tenant>(tx, &ks::tenant(root.as_str()))? else {
                continue;
            };
            for ((field, ceiling), (_, value)) in r.limits.fields().into_iter().zip(t.limits.fields()) {
                if ceiling > 0 && (value == 0 || value > ceiling) {
                    return Err(ServiceError::ConfinementRoot {
                        key: self.key.clone(),
                        tenant: root.to_string(),
                        what: format!(
                            "give {id} limits.{field} {} above its own {ceiling}",
                            if value == 0 {
                                "unlimited".to_string()
                            } else {
                                value.to_string()
                            }
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

fn expect_revision(what: &str, expected: Option<u64>, current: Option<u64>) -> Result<()> {
    match (expected, current) {
        (None, _) => Ok(()),
        (Some(0), None) => Ok(()),
        (Some(0), Some(c)) => Err(ServiceError::AlreadyExists(format!(
            "{what} already exists at revision {} (expected_revision \"0\" requires that it does not)",
            token(c)
        ))),
        (Some(e), Some(c)) if e == c => Ok(()),
        (Some(e), Some(c)) => Err(ServiceError::Aborted(format!(
            "{what} is at revision {}, not the expected {}",
            token(c),
            token(e)
        ))),
        (Some(e), None) => Err(ServiceError::Aborted(format!(
            "{what} does not exist (expected revision {})",
            token(e)
        ))),
    }
}

fn tenant_required(tx: &mut dyn Transaction, t: &TenantId, role: &str) -> Result<Tenant> {
    read::<Tenant>(tx, &ks::tenant(t.as_str()))?
        .map(|(t, _)| t)
        .ok_or_else(|| ServiceError::TenantMissing {
            tenant: t.to_string(),
            needed_by: role.to_string(),
        })
}

fn scope_required(tx: &mut dyn Transaction, t: &TenantId, v: Option<&VaultName>, what: &str) -> Result<Tenant> {
    let tenant = tenant_required(tx, t, what)?;
    if let Some(v) = v
        && tx.get(&ks::vault(t.as_str(), v.as_str()))?.is_none()
    {
        return Err(ServiceError::VaultMissing {
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
    key: &[u8],
    object: &T,
    existing: Existing<T>,
    counted: Option<Counted<'_>>,
    change: Change,
) -> Result<Option<(T, u64)>> {
    match existing {
        Existing::Found(old, rev) if old == *object => return Ok(Some((old, rev))),
        Existing::Found(..) | Existing::Corrupt(_) => {}
        Existing::Absent => {
            if let Some(c) = counted {
                check_limits(tx, c.tenant, c.kind, 1, false)?;
                add_count(tx, c.tenant, c.vault, c.kind, 1);
            }
        }
    }
    write(tx, key, object)?;
    append_changelog(tx, &[change])?;
    Ok(None)
}

pub struct Repo {
    pub store: Arc<dyn Store>,
}

impl Repo {
    pub fn new(store: Arc<dyn Store>) -> Repo {
        Repo { store }
    }

    fn run<T>(&self, body: impl FnMut(&mut dyn Transaction) -> Result<T>) -> Result<(T, u64)> {
        store::run(&*self.store, body)
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

    // ---- tenants ----------------------------------------------------------

    pub fn apply_tenant(
        &self,
        t: Tenant,
        expected: Option<u64>,
        confinement: Option<&Confinement>,
    ) -> Result<Applied<Tenant>> {
        validate::tenant(&t)?;
        let (r, version) = self.run(|tx| {
            let key = ks::tenant(t.id.as_str());
            let existing = read_existing::<Tenant>(tx, &key)?;
            expect_revision(&format!("tenant {}", t.id), expected, existing.revision())?;
            if let Some(c) = confinement {
                c.check(tx, Some(&t), &t.id, &existing)?;
            }
            if let Some(p) = t.id.parent()
                && tx.get(&ks::tenant(p.as_str()))?.is_none()
            {
                return Err(ServiceError::TenantMissing {
                    tenant: p.to_string(),
                    needed_by: format!("child {}", t.id),
                });
            }
            if !existing.exists()
                && let Some(p) = t.id.parent()
            {
                check_limits(tx, &p, TENANTS, 1, false)?;
                for a in p.lineage() {
                    tx.atomic_add(&ks::subtree_count(a.as_str(), TENANTS), 1);
                }
            }
            upsert(tx, &key, &t, existing, None, Change::PutTenant(t.clone()))
        })?;
        Ok(Applied::from_upsert(r, t, version))
    }

    pub fn get_tenant(&self, id: &TenantId) -> Result<(Tenant, u64, Usage)> {
        let (r, _) = self.run(|tx| {
            let found = read::<Tenant>(tx, &ks::tenant(id.as_str()))?;
            match found {
                Some((t, rev)) => Ok((t, rev, usage(tx, id.as_str())?)),
                None => Err(ServiceError::NotFound(format!("tenant {id} not found"))),
            }
        })?;
        Ok(r)
    }

    pub fn list_tenants(
        &self,
        under: Option<&TenantId>,
        page_token: &str,
        size: u32,
    ) -> Result<(Vec<(Tenant, u64)>, String)> {
        let (r, _) = self.run(|tx| {
            let prefix = ks::tenants();
            let (b, e) = tuple::prefix_range(&prefix);
            let begin = match page_token_key(page_token)? {
                Some(mut k) => {
                    k.push(0);
                    k
                }
                None => match under {
                    Some(u) => ks::tenant(u.as_str()),
                    None => b.clone(),
                },
            };
            let n = page_size(size);
            let mut out = Vec::new();
            let mut next = String::new();
            let mut cursor = begin;
            'scan: loop {
                let rows = tx.range(&cursor, &e, RangeOpts::limit(n + 1))?;
                if rows.is_empty() {
                    break;
                }
                for (k, v) in &rows {
                    let (t, rev): (Tenant, u64) = decode(k, v)?;
                    if let Some(u) = under
                        && !t.id.is_within(u)
                    {
                        // Past every name starting with `u`: the subtree is done.
                        if t.id.as_str() > u.as_str() && !t.id.as_str().starts_with(u.as_str()) {
                            break 'scan;
                        }
                        continue;
                    }
                    if out.len() == n {
                        next = hex::encode(out_last_key(&out));
                        break 'scan;
                    }
                    out.push((t, rev));
                }
                let mut last = rows.last().expect("non-empty").0.clone();
                last.push(0);
                cursor = last;
            }
            Ok((out, next))
        })?;
        Ok(r)
    }

    pub fn delete_tenant(
        &self,
        id: &TenantId,
        expected: Option<u64>,
        confinement: Option<&Confinement>,
    ) -> Result<u64> {
        let (_, version) = self.run(|tx| {
            let key = ks::tenant(id.as_str());
            let existing = read_existing::<Tenant>(tx, &key)?;
            if !existing.exists() {
                return Err(ServiceError::NotFound(format!("tenant {id} not found")));
            }
            if let Some(c) = confinement {
                c.check(tx, None, id, &existing)?;
            }
            expect_revision(&format!("tenant {id}"), expected, existing.revision())?;
            let children = range_prefix(tx, &ks::tenant_children(id.as_str()), RangeOpts::limit(5))?;
            let vaults = range_prefix(tx, &ks::vaults(id.as_str()), RangeOpts::limit(5))?;
            if !children.is_empty() || !vaults.is_empty() {
                // Named from their keys, so a dependent whose record cannot
                // be read is still named.
                let mut names: Vec<String> = Vec::new();
                for (k, _) in children.iter().chain(&vaults) {
                    if let Some(o) = ks::object_of(k) {
                        names.push(match o.vault {
                            Some(v) => format!("vault {v}"),
                            None => format!("tenant {}", o.tenant),
                        });
                    }
                }
                return Err(ServiceError::FailedPrecondition(format!(
                    "tenant {id} still has dependents ({}); delete them first",
                    names.join(", ")
                )));
            }
            self.clear_scope(tx, id, None)?;
            tx.clear(&key);
            let (b, e) = tuple::prefix_range(&ks::subtree_counts_of(id.as_str()));
            tx.clear_range(&b, &e)?;
            if let Some(p) = id.parent() {
                for a in p.lineage() {
                    tx.atomic_add(&ks::subtree_count(a.as_str(), TENANTS), -1);
                }
            }
            append_changelog(tx, &[Change::DeleteTenant { tenant: id.clone() }])?;
            Ok(())
        })?;
        Ok(version)
    }

    /// Removes a scope's roles, bindings and memberships (with their indexes
    /// and counters).
    fn clear_scope(&self, tx: &mut dyn Transaction, tenant: &TenantId, v: Option<&VaultName>) -> Result<()> {
        uncount_scope(tx, tenant, vs(v))?;
        let (t, v) = (tenant.as_str(), vs(v));
        for prefix in [
            ks::roles(t, v),
            ks::bindings(t, v),
            ks::binding_index_of_scope(t, v),
            ks::memberships(t, v),
            ks::member_index_of_scope(t, v),
        ] {
            let (b, e) = tuple::prefix_range(&prefix);
            tx.clear_range(&b, &e)?;
        }
        Ok(())
    }

    // ---- vaults -----------------------------------------------------------

    pub fn apply_vault(&self, v: Vault, expected: Option<u64>) -> Result<Applied<Vault>> {
        validate::vault(&v)?;
        let (r, version) = self.run(|tx| {
            let key = ks::vault(v.tenant.as_str(), v.name.as_str());
            let existing = read_existing::<Vault>(tx, &key)?;
            expect_revision(
                &format!("vault {} in tenant {}", v.name, v.tenant),
                expected,
                existing.revision(),
            )?;
            tenant_required(tx, &v.tenant, "vaults")?;
            let counted = Counted {
                tenant: &v.tenant,
                vault: Some(v.name.as_str()),
                kind: VAULTS,
            };
            upsert(tx, &key, &v, existing, Some(counted), Change::PutVault(v.clone()))
        })?;
        Ok(Applied::from_upsert(r, v, version))
    }

    pub fn get_vault(&self, t: &TenantId, name: &VaultName) -> Result<(Vault, u64)> {
        let (r, _) = self.run(|tx| {
            read::<Vault>(tx, &ks::vault(t.as_str(), name.as_str()))?
                .ok_or_else(|| ServiceError::NotFound(format!("vault {name} not found in tenant {t}")))
        })?;
        Ok(r)
    }

    pub fn list_vaults(&self, t: &TenantId, page_token: &str, size: u32) -> Result<(Vec<(Vault, u64)>, String)> {
        let (r, _) = self.run(|tx| {
            let (rows, next) = page_of(tx, &ks::vaults(t.as_str()), page_token, size)?;
            let items = rows.iter().map(|(k, v)| decode(k, v)).collect::<Result<Vec<_>>>()?;
            Ok((items, next))
        })?;
        Ok(r)
    }

    pub fn delete_vault(&self, t: &TenantId, name: &VaultName, expected: Option<u64>) -> Result<u64> {
        let (_, version) = self.run(|tx| {
            let key = ks::vault(t.as_str(), name.as_str());
            let existing = read_existing::<Vault>(tx, &key)?;
            if !existing.exists() {
                return Err(ServiceError::NotFound(format!("vault {name} not found in tenant {t}")));
            }
            expect_revision(&format!("vault {name} in tenant {t}"), expected, existing.revision())?;
            self.clear_scope(tx, t, Some(name))?;
            tx.clear(&key);
            append_changelog(
                tx,
                &[Change::DeleteVault {
                    tenant: t.clone(),
                    vault: name.clone(),
                }],
            )?;
            Ok(())
        })?;
        Ok(version)
    }

    // ---- roles ------------------------------------------------------------

    pub fn apply_role(&self, r: Role, expected: Option<u64>) -> Result<Applied<Role>> {
        validate::role(&r)?;
        let (res, version) = self.run(|tx| {
            let key = ks::role(r.tenant.as_str(), vs(r.vault.as_ref()), r.name.as_str());
            let existing = read_existing::<Role>(tx, &key)?;
            expect_revision(&format!("role {}", r.name), expected, existing.revision())?;
            scope_required(tx, &r.tenant, r.vault.as_ref(), "roles")?;
            let cycle = validate::inherits_cycle(&r, |scope, name| {
                let k = ks::role(scope.tenant.as_str(), vs(scope.vault.as_ref()), name.as_str());
                // A role that cannot be read inherits nothing, as far as
                // cycles go: the index has quarantined its scope anyway.
                Ok::<_, ServiceError>(match read_existing::<Role>(tx, &k)? {
                    Existing::Found(role, _) => Some(role.inherits),
                    Existing::Corrupt(_) => Some(Vec::new()),
                    Existing::Absent => None,
                })
            })?;
            if let Some(cycle) = cycle {
                let path: Vec<String> = cycle.iter().map(|k| k.to_string()).collect();
                return Err(ServiceError::invalid(
                    "inherits",
                    format!("would create an inheritance cycle: {}", path.join(" -> ")),
                ));
            }
            let counted = Counted {
                tenant: &r.tenant,
                vault: vs(r.vault.as_ref()),
                kind: ROLES,
            };
            upsert(tx, &key, &r, existing, Some(counted), Change::PutRole(r.clone()))
        })?;
        Ok(Applied::from_upsert(res, r, version))
    }

    pub fn get_role(&self, t: &TenantId, v: Option<&VaultName>, name: &RoleName) -> Result<(Role, u64)> {
        let (r, _) = self.run(|tx| {
            read::<Role>(tx, &ks::role(t.as_str(), vs(v), name.as_str()))?
                .ok_or_else(|| ServiceError::NotFound(format!("role {name} not found in {}", scope_of(t, v))))
        })?;
        Ok(r)
    }

    pub fn list_roles(
        &self,
        t: &TenantId,
        v: Option<&VaultName>,
        page_token: &str,
        size: u32,
    ) -> Result<(Vec<(Role, u64)>, String)> {
        let (r, _) = self.run(|tx| {
            let (rows, next) = page_of(tx, &ks::roles(t.as_str(), vs(v)), page_token, size)?;
            let items = rows.iter().map(|(k, val)| decode(k, val)).collect::<Result<Vec<_>>>()?;
            Ok((items, next))
        })?;
        Ok(r)
    }

    pub fn delete_role(
        &self,
        t: &TenantId,
        v: Option<&VaultName>,
        name: &RoleName,
        expected: Option<u64>,
    ) -> Result<u64> {
        let (_, version) = self.run(|tx| {
            let key = ks::role(t.as_str(), vs(v), name.as_str());
            let existing = read_existing::<Role>(tx, &key)?;
            if !existing.exists() {
                return Err(ServiceError::NotFound(format!(
                    "role {name} not found in {}",
                    scope_of(t, v)
                )));
            }
            expect_revision(&format!("role {name}"), expected, existing.revision())?;
            tx.clear(&key);
            add_count(tx, t, vs(v), ROLES, -1);
            append_changelog(
                tx,
                &[Change::DeleteRole {
                    scope: scope_of(t, v),
                    name: name.clone(),
                }],
            )?;
            Ok(())
        })?;
        Ok(version)
    }

    // ---- bindings ---------------------------------------------------------

    /// Upserts and deletes bindings of one scope atomically. With
    /// `replace_source`, the scope's bindings from that source that are not
    /// upserted are deleted too. Returns (upserted, deleted) and the version.
    pub fn write_bindings(
        &self,
        t: &TenantId,
        v: Option<&VaultName>,
        upserts: &[Binding],
        deletes: &[String],
        replace_source: Option<Source>,
    ) -> Result<((u32, u32), u64)> {
        if upserts.len() + deletes.len() > MAX_WRITE_BATCH {
            return Err(ServiceError::invalid(
                "upserts",
                format!(
                    "at most {MAX_WRITE_BATCH} upserts and deletes in one call, got {}",
                    upserts.len() + deletes.len()
                ),
            ));
        }
        let mut viol = Violations::new();
        let mut ids = BTreeSet::new();
        for (i, b) in upserts.iter().enumerate() {
            if b.tenant != *t || b.vault.as_ref() != v {
                viol.push(
                    format!("upserts[{i}].vault"),
                    "must belong to the request's tenant and vault",
                );
            }
            if let Err(e) = validate::binding(b) {
                viol.extend(e.prefixed(&format!("upserts[{i}].")));
            }
            if !ids.insert(b.id.as_str()) {
                viol.push(format!("upserts[{i}].id"), "appears twice in this request");
            }
        }
        for (i, id) in deletes.iter().enumerate() {
            viol.check(format!("deletes[{i}]"), ids::check_binding_id(id));
        }
        viol.into_result()?;
        self.run(|tx| {
            scope_required(tx, t, v, "bindings")?;
            let mut changes = Vec::new();
            let mut added: i64 = 0;
            let (mut up, mut del) = (0u32, 0u32);
            let mut to_delete: BTreeSet<String> = deletes.iter().cloned().collect();
            if let Some(src) = replace_source {
                for (k, val) in range_prefix(tx, &ks::bindings(t.as_str(), vs(v)), RangeOpts::default())? {
                    // A record that cannot be read has no known source: it
                    // is left for an explicit delete.
                    let Ok((b, _)) = decode::<Binding>(&k, &val) else {
                        continue;
                    };
                    if b.source == src && !ids.contains(b.id.as_str()) {
                        to_delete.insert(b.id);
                    }
                }
            }
            for b in upserts {
                let key = ks::binding(t.as_str(), vs(v), &b.id);
                match read_existing::<Binding>(tx, &key)? {
                    Existing::Found(old, _) if old == *b => continue,
                    Existing::Found(old, _) => clear_binding_rows(tx, t.as_str(), vs(v), &b.id, Some(&old), false)?,
                    Existing::Corrupt(_) => clear_binding_rows(tx, t.as_str(), vs(v), &b.id, None, false)?,
                    Existing::Absent => added += 1,
                }
                write(tx, &key, b)?;
                tx.set(
                    &ks::binding_by_subject(t.as_str(), vs(v), b.subject.as_str(), &b.id),
                    b"",
                );
                if let Some(e) = b.expires_at {
                    tx.set(&ks::expiry(e.0, t.as_str(), vs(v), &b.id), b"");
                }
                changes.push(Change::PutBinding(b.clone()));
                up += 1;
            }
            for id in &to_delete {
                if ids.contains(id.as_str()) {
                    continue;
                }
                let key = ks::binding(t.as_str(), vs(v), id);
                let existing = read_existing::<Binding>(tx, &key)?;
                if existing.exists() {
                    let old = match &existing {
                        Existing::Found(old, _) => Some(old),
                        _ => None,
                    };
                    remove_binding(tx, t.as_str(), vs(v), id, old)?;
                    changes.push(Change::DeleteBinding {
                        scope: scope_of(t, v),
                        id: id.clone(),
                    });
                    added -= 1;
                    del += 1;
                }
            }
            if added > 0 {
                check_limits(tx, t, BINDINGS, added as u64, false)?;
            }
            add_count(tx, t, vs(v), BINDINGS, added);
            append_changelog(tx, &changes)?;
            Ok((up, del))
        })
    }

    pub fn list_bindings(
        &self,
        t: &TenantId,
        v: Option<&VaultName>,
        subject: Option<&Subject>,
        source: Option<Source>,
        page_token: &str,
        size: u32,
    ) -> Result<(Vec<Binding>, String)> {
        let (r, _) = self.run(|tx| {
            let mut out = Vec::new();
            let n = page_size(size);
            let prefix = match subject {
                Some(s) => ks::bindings_by_subject(t.as_str(), vs(v), s.as_str()),
                None => ks::bindings(t.as_str(), vs(v)),
            };
            let mut token = page_token.to_string();
            loop {
                let (rows, next) = page_of(tx, &prefix, &token, n as u32)?;
                for (k, val) in &rows {
                    let b: Binding = if subject.is_some() {
                        let id = ks::binding_id_of_subject_row(k).ok_or_else(|| corrupt(k, "binding index key"))?;
                        match read::<Binding>(tx, &ks::binding(t.as_str(), vs(v), &id))? {
                            Some((b, _)) => b,
                            None => continue,
                        }
                    } else {
                        decode::<Binding>(k, val)?.0
                    };
                    if source.is_none_or(|s| s == b.source) {
                        out.push(b);
                    }
                }
                // Filtering by source may leave a page short; keep reading
                // until it is full or the range ends.
                if next.is_empty() || out.len() >= n {
                    let next = if out.len() >= n && !next.is_empty() {
                        hex::encode(&rows.last().expect("rows").0)
                    } else {
                        next
                    };
                    return Ok((out, next));
                }
                token = next;
            }
        })?;
        Ok(r)
    }

    // ---- memberships ------------------------------------------------------

    pub fn write_memberships(
        &self,
        t: &TenantId,
        v: Option<&VaultName>,
        upserts: &[Membership],
        deletes: &[Membership],
        replace_source: Option<Source>,
    ) -> Result<((u32, u32), u64)> {
        if upserts.len() + deletes.len() > MAX_WRITE_BATCH {
            return Err(ServiceError::invalid(
                "upserts",
                format!(
                    "at most {MAX_WRITE_BATCH} upserts and deletes in one call, got {}",
                    upserts.len() + deletes.len()
                ),
            ));
        }
        let mut viol = Violations::new();
        for (field, list) in [("upserts", upserts), ("deletes", deletes)] {
            for (i, m) in list.iter().enumerate() {
                if m.tenant != *t || m.vault.as_ref() != v {
                    viol.push(
                        format!("{field}[{i}].vault"),
                        "must belong to the request's tenant and vault",
                    );
                }
                if let Err(e) = validate::membership(m) {
                    viol.extend(e.prefixed(&format!("{field}[{i}].")));
                }
            }
        }
        viol.into_result()?;
        let keep: BTreeSet<(&str, &str)> = upserts.iter().map(|m| (m.group.as_str(), m.member.as_str())).collect();
        self.run(|tx| {
            scope_required(tx, t, v, "memberships")?;
            let mut changes = Vec::new();
            let (mut up, mut del) = (0u32, 0u32);
            let mut to_delete: Vec<Membership> = deletes.to_vec();
            if let Some(src) = replace_source {
                for (k, val) in range_prefix(tx, &ks::memberships(t.as_str(), vs(v)), RangeOpts::default())? {
                    let Ok((m, _)) = decode::<Membership>(&k, &val) else {
                        continue;
                    };
                    if m.source == src && !keep.contains(&(m.group.as_str(), m.member.as_str())) {
                        to_delete.push(m);
                    }
                }
            }
            for m in upserts {
                let key = ks::membership(t.as_str(), vs(v), m.group.as_str(), m.member.as_str());
                if let Existing::Found(old, _) = read_existing::<Membership>(tx, &key)?
                    && old == *m
                {
                    continue;
                }
                write(tx, &key, m)?;
                tx.set(
                    &ks::member_of(t.as_str(), vs(v), m.member.as_str(), m.group.as_str()),
                    b"",
                );
                changes.push(Change::PutMembership(m.clone()));
                up += 1;
            }
            for m in &to_delete {
                if keep.contains(&(m.group.as_str(), m.member.as_str())) {
                    continue;
                }
                let key = ks::membership(t.as_str(), vs(v), m.group.as_str(), m.member.as_str());
                if tx.get(&key)?.is_some() {
                    tx.clear(&key);
                    tx.clear(&ks::member_of(t.as_str(), vs(v), m.member.as_str(), m.group.as_str()));
                    changes.push(Change::DeleteMembership(m.clone()));
                    del += 1;
                }
            }
            append_changelog(tx, &changes)?;
            Ok((up, del))
        })
    }

    pub fn list_memberships(
        &self,
        t: &TenantId,
        v: Option<&VaultName>,
        group: Option<&Subject>,
        member: Option<&Subject>,
        page_token: &str,
        size: u32,
    ) -> Result<(Vec<Membership>, String)> {
        let (r, _) = self.run(|tx| {
            let (prefix, by_member) = match (group, member) {
                (Some(g), _) => (ks::memberships_of_group(t.as_str(), vs(v), g.as_str()), false),
                (None, Some(m)) => (ks::member_of_member(t.as_str(), vs(v), m.as_str()), true),
                (None, None) => (ks::memberships(t.as_str(), vs(v)), false),
            };
            let (rows, next) = page_of(tx, &prefix, page_token, size)?;
            let mut out = Vec::new();
            for (k, val) in &rows {
                if by_member {
                    let g = ks::group_of_member_row(k).ok_or_else(|| corrupt(k, "membership index key"))?;
                    let m = member.expect("by member");
                    if let Some((ms, _)) = read::<Membership>(tx, &ks::membership(t.as_str(), vs(v), &g, m.as_str()))? {
                        out.push(ms);
                    }
                } else {
                    let (m, _): (Membership, u64) = decode(k, val)?;
                    if member.is_none_or(|x| *x == m.member) {
                        out.push(m);
                    }
                }
            }
            Ok((out, next))
        })?;
        Ok(r)
    }

    // ---- import / export --------------------------------------------------

    /// Everything in a vault at one revision: the vault, its roles, bindings
    /// and memberships.
    pub fn export_vault(&self, t: &TenantId, name: &VaultName) -> Result<(VaultExport, u64)> {
        let (r, version) = self.run(|tx| {
            let (vault, _) = read::<Vault>(tx, &ks::vault(t.as_str(), name.as_str()))?
                .ok_or_else(|| ServiceError::NotFound(format!("vault {name} not found in tenant {t}")))?;
            let v = Some(name.as_str());
            let mut out = VaultExport {
                vault,
                roles: Vec::new(),
                bindings: Vec::new(),
                memberships: Vec::new(),
            };
            for (k, val) in range_prefix(tx, &ks::roles(t.as_str(), v), RangeOpts::default())? {
                out.roles.push(decode::<Role>(&k, &val)?.0);
            }
            for (k, val) in range_prefix(tx, &ks::bindings(t.as_str(), v), RangeOpts::default())? {
                out.bindings.push(decode::<Binding>(&k, &val)?.0);
            }
            for (k, val) in range_prefix(tx, &ks::memberships(t.as_str(), v), RangeOpts::default())? {
                out.memberships.push(decode::<Membership>(&k, &val)?.0);
            }
            Ok(out)
        })?;
        Ok((r, version))
    }

    // ---- the index feed ---------------------------------------------------

    /// Everything in the store as changes, for building an index, the
    /// records that could not be read, and the version it was read at.
    /// Tailing the feed from that version afterwards repairs anything a
    /// chunked read missed (changes are idempotent).
    pub fn load_all(&self) -> Result<Loaded> {
        const CHUNK: usize = 10_000;
        let version = self.current_version()?;
        let mut out = Loaded {
            changes: Vec::new(),
            corrupt: Vec::new(),
            version,
        };
        let root = ks::root();
        for kind in ["t", "v", "r", "b", "m"] {
            let (begin, end) = tuple::prefix_range(&root.clone().str(kind).into_vec());
            let mut cursor = begin;
            // Each chunk is its own short transaction (FoundationDB's 5 s
            // limit); what changes between chunks is replayed from the feed.
            loop {
                let (rows, _) = self.run(|tx| {
                    Ok(tx.range(
                        &cursor,
                        &end,
                        RangeOpts {
                            limit: CHUNK,
                            snapshot: true,
                            reverse: false,
                        },
                    )?)
                })?;
                for (k, val) in &rows {
                    let change = match kind {
                        "t" => decode(k, val).map(|x| Change::PutTenant(x.0)),
                        "v" => decode(k, val).map(|x| Change::PutVault(x.0)),
                        "r" => decode(k, val).map(|x| Change::PutRole(x.0)),
                        "b" => decode(k, val).map(|x| Change::PutBinding(x.0)),
                        _ => decode(k, val).map(|x| Change::PutMembership(x.0)),
                    };
                    match change {
                        Ok(c) => out.changes.push(c),
                        // One bad record must not stop the index: its scope
                        // is quarantined, everything else loads.
                        Err(e) => out.corrupt.push(CorruptRecord::of_key(k, e.to_string())),
                    }
                }
                if rows.len() < CHUNK {
                    break;
                }
                let mut next = rows.last().expect("full chunk").0.clone();
                next.push(0);
                cursor = next;
            }
        }
        Ok(out)
    }

    /// Feed entries after `after`, oldest first, and the version read at.
    /// A change that does not decode is returned as a [`CorruptRecord`]
    /// beside the others, so one bad change never stops the index.
    pub fn read_feed(&self, after: u64, limit: usize) -> Result<(Vec<FeedEntry>, u64)> {
        let (r, _) = self.run(|tx| {
            let read_at = tx.read_version()?;
            let (_, end) = tuple::prefix_range(&ks::feed());
            let begin = ks::feed_at(after.saturating_add(1));
            let rows = tx.range(
                &begin,
                &end,
                RangeOpts {
                    limit,
                    snapshot: true,
                    reverse: false,
                },
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let mut entry = FeedEntry {
                    version: key_version(&k)?,
                    changes: Vec::new(),
                    corrupt: Vec::new(),
                };
                match serde_json::from_slice::<Vec<serde_json::Value>>(&v) {
                    Ok(raw) => {
                        for c in raw {
                            match serde_json::from_value::<Change>(c.clone()) {
                                Ok(c) => entry.changes.push(c),
                                Err(e) => entry.corrupt.push(CorruptRecord::of_change(&c, e.to_string())),
                            }
                        }
                    }
                    Err(e) => entry.corrupt.push(CorruptRecord {
                        scope: None,
                        object: format!("feed entry {}", token(entry.version)),
                        detail: e.to_string(),
                    }),
                }
                out.push(entry);
            }
            // A full page stops short of the read version, possibly inside a
            // version (several commits of one FoundationDB batch share it):
            // resume just before its last version, re-applying what was
            // already applied (changes are idempotent).
            let upto = if limit > 0 && out.len() == limit {
                let last = out.last().map(|e| e.version).unwrap_or(after);
                if last.saturating_sub(1) > after { last - 1 } else { last }
            } else {
                read_at
            };
            Ok((out, upto))
        })?;
        Ok(r)
    }

    /// Changelog entries of a scope (`vault` None with `whole_tenant` for
    /// the tenant and all its vaults) after `after`.
    pub fn read_log(
        &self,
        t: &TenantId,
        v: Option<&VaultName>,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<LogEntry>, u64)> {
        let (r, _) = self.run(|tx| {
            let read_at = tx.read_version()?;
            let floor = log_floor(tx)?;
            if after + 1 < floor {
                return Err(ServiceError::FailedPrecondition(format!(
                    "revision {} is older than the changelog retains (it starts at {}); re-read the current state and watch from its revision",
                    token(after),
                    token(floor)
                )));
            }
            let mut out: Vec<(u64, Vec<Change>)> = Vec::new();
            if v.is_none() {
                // The whole tenant: its own log and every vault's (deleted
                // vaults included), merged by version.
                let begin = ks::root().str("log").str(t.as_str()).into_vec();
                let (_, end) = tuple::prefix_range(&begin);
                for (k, val) in tx.range(&begin, &end, RangeOpts { snapshot: true, ..Default::default() })? {
                    let ver = key_version(&k)?;
                    if ver > after {
                        let cs: Vec<Change> = serde_json::from_slice(&val).map_err(|e| corrupt(&k, e))?;
                        out.push((ver, cs));
                    }
                }
                out.sort_by_key(|(ver, _)| *ver);
                let mut merged: Vec<(u64, Vec<Change>)> = Vec::new();
                for (ver, cs) in out {
                    match merged.last_mut() {
                        Some((lv, lcs)) if *lv == ver => lcs.extend(cs),
                        _ => merged.push((ver, cs)),
                    }
                }
                if limit > 0 && merged.len() > limit {
                    merged.truncate(limit);
                    let upto = merged.last().map(|x| x.0).unwrap_or(after);
                    return Ok((merged, upto));
                }
                return Ok((merged, read_at));
            }
            let (_, end) = tuple::prefix_range(&ks::log_of_scope(t.as_str(), vs(v)));
            let begin = ks::log_at(t.as_str(), vs(v), after.saturating_add(1));
            for (k, val) in tx.range(&begin, &end, RangeOpts { limit, snapshot: true, reverse: false })? {
                let cs: Vec<Change> = serde_json::from_slice(&val).map_err(|e| corrupt(&k, e))?;
                out.push((key_version(&k)?, cs));
            }
            // A full page may stop inside a version (several commits of one
            // FoundationDB batch share it): resume at that version, re-applying
            // what was already applied (changes are idempotent).
            let upto = if limit > 0 && out.len() == limit { out.last().map(|x| x.0).unwrap_or(after) } else { read_at };
            Ok((out, upto))
        })?;
        Ok(r)
    }
}

fn out_last_key(out: &[(Tenant, u64)]) -> Vec<u8> {
    out.last().map(|(t, _)| ks::tenant(t.id.as_str())).unwrap_or_default()
}

/// The oldest revision the changelog still holds.
pub fn log_floor(tx: &mut dyn Transaction) -> Result<u64> {
    Ok(tx
        .get_snapshot(&ks::log_floor())?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// The commit version in a versionstamped key's last element.
pub fn key_version(k: &[u8]) -> Result<u64> {
    ks::version_of(k).ok_or_else(|| corrupt(k, "expected a versionstamped key"))
}

/// What [`Repo::load_all`] read.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub changes: Vec<Change>,
    pub corrupt: Vec<CorruptRecord>,
    pub version: u64,
}

/// One commit of the feed.
#[derive(Debug, Clone)]
pub struct FeedEntry {
    pub version: u64,
    pub changes: Vec<Change>,
    pub corrupt: Vec<CorruptRecord>,
}

#[derive(Debug, Clone)]
pub struct VaultExport {
    pub vault: Vault,
    pub roles: Vec<Role>,
    pub bindings: Vec<Binding>,
    pub memberships: Vec<Membership>,
}
