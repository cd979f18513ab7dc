//! The changelog: appending every commit's changes to the per-scope logs
//! and the feed replicas tail, reading them back, and loading everything
//! for a new index.

use super::*;

/// A per-scope changelog entry as stored: who made the commit and its
/// changes in the scope.
#[derive(serde::Serialize)]
struct LogRecord<'a> {
    by: &'a Actor,
    changes: Vec<&'a Change>,
}

/// What a stored entry may be: the current form, or the bare list of
/// changes written before entries named their actor.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum StoredLog {
    WithActor { by: Actor, changes: Vec<Change> },
    Bare(Vec<Change>),
}

fn log_entry(key: &[u8], version: u64, value: &[u8]) -> Result<LogEntry> {
    Ok(match serde_json::from_slice(value).map_err(|e| corrupt(key, e))? {
        StoredLog::WithActor { by, changes } => LogEntry {
            version,
            by: Some(by),
            changes,
        },
        StoredLog::Bare(changes) => LogEntry {
            version,
            by: None,
            changes,
        },
    })
}

/// Appends the changes to the per-vault changelogs and the feed, and
/// their events to the audit trail, all in the write's transaction: there
/// is no change without its event and no event without its change.
pub fn append_changelog(tx: &mut dyn Transaction, actor: &Actor, logged: &[Logged]) -> Result<()> {
    if logged.is_empty() {
        return Ok(());
    }
    append_audit(tx, actor, logged)?;
    let changes: Vec<&Change> = logged.iter().map(|l| &l.change).collect();
    let mut by_scope: BTreeMap<Scope, Vec<&Change>> = BTreeMap::new();
    for c in &changes {
        by_scope.entry(c.scope()).or_default().push(c);
    }
    for (scope, cs) in by_scope {
        let (key, off) = ks::log_entry(scope.tenant.as_str(), vs(scope.vault.as_ref()));
        let json = serde_json::to_vec(&LogRecord { by: actor, changes: cs })
            .map_err(ServiceError::encoding("changelog entry"))?;
        tx.set_versionstamped_key(key, off, &json);
    }
    let (key, off) = ks::feed_entry();
    let json = serde_json::to_vec(&changes).map_err(ServiceError::encoding("changelog entry"))?;
    tx.set_versionstamped_key(key, off, &json);
    tx.set_versionstamped_value(&ks::feed_bump(), vec![0xff; 10], 0);
    Ok(())
}

/// Rows per transaction when loading the index.
const LOAD_CHUNK: usize = 10_000;

impl Repo {
    /// Everything in the store as changes, for building an index, the
    /// records that could not be read, and the version it was read at.
    /// Tailing the feed from that version afterwards repairs anything a
    /// chunked read missed (changes are idempotent).
    pub fn load_all(&self) -> Result<Loaded> {
        self.load(&portcullis_client::shard::Tenants::all())
    }

    /// Every object the index of a shard serving `tenants` needs: all of
    /// each served tenant's, and the tenant-level objects of the tenants
    /// above them (their grants and suspension reach down). Each tenant is
    /// read by its own prefixes, so a shard reads what it holds, not the
    /// whole store.
    pub fn load(&self, tenants: &portcullis_client::shard::Tenants) -> Result<Loaded> {
        let version = self.current_version()?;
        let mut out = Loaded {
            changes: Vec::new(),
            corrupt: Vec::new(),
            version,
        };
        let prefixes = |all: Vec<u8>| vec![all];
        let (t, v, r, b, m) = if tenants.is_all() {
            (
                prefixes(ks::tenants()),
                prefixes(ks::all_vaults()),
                prefixes(ks::all_roles()),
                prefixes(ks::all_bindings()),
                prefixes(ks::all_memberships()),
            )
        } else {
            // The tenants first: which are served, which only above.
            let mut ids = Vec::new();
            self.in_chunks(&ks::tenants(), LOAD_CHUNK, |rows| {
                for (k, val) in rows {
                    match decode::<Tenant>(k, val) {
                        Ok((t, _)) if tenants.serves(t.id.as_str()) || tenants.is_above(t.id.as_str()) => {
                            ids.push(t.id.clone());
                            out.changes.push(Change::PutTenant(t));
                        }
                        Ok(_) => {}
                        Err(e) => out.corrupt.push(CorruptRecord::of_key(k, e.to_string())),
                    }
                }
                Ok(())
            })?;
            let (mut v, mut r, mut b, mut m) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for id in &ids {
                let t = id.as_str();
                if tenants.serves(t) {
                    v.push(ks::vaults(t));
                    r.push(ks::roles_of_tenant(t));
                    b.push(ks::bindings_of_tenant(t));
                    m.push(ks::memberships_of_tenant(t));
                } else {
                    r.push(ks::roles(t, None));
                    b.push(ks::bindings(t, None));
                    m.push(ks::memberships(t, None));
                }
            }
            (Vec::new(), v, r, b, m)
        };
        for (kind, list) in [("t", t), ("v", v), ("r", r), ("b", b), ("m", m)] {
            for prefix in list {
                // Each chunk is its own short transaction; what changes
                // between chunks is replayed from the feed.
                self.in_chunks(&prefix, LOAD_CHUNK, |rows| {
                    for (k, val) in rows {
                        let change = match kind {
                            "t" => decode(k, val).map(|x| Change::PutTenant(x.0)),
                            "v" => decode(k, val).map(|x| Change::PutVault(x.0)),
                            "r" => decode(k, val).map(|x| Change::PutRole(x.0)),
                            "b" => decode(k, val).map(|x| Change::PutBinding(x.0)),
                            _ => decode(k, val).map(|x| Change::PutMembership(x.0)),
                        };
                        match change {
                            Ok(c) => out.changes.push(c),
                            // One bad record must not stop the index: its
                            // scope is quarantined, everything else loads.
                            Err(e) => out.corrupt.push(CorruptRecord::of_key(k, e.to_string())),
                        }
                    }
                    Ok(())
                })?;
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
                return Err(ServiceError::RevisionCompacted {
                    after: token(after),
                    floor: token(floor),
                });
            }
            let mut out: Vec<LogEntry> = Vec::new();
            if v.is_none() {
                // The whole tenant: its own log and every vault's (deleted
                // vaults included), merged by version.
                let begin = ks::log_of_tenant(t.as_str());
                let (_, end) = tuple::prefix_range(&begin);
                for (k, val) in tx.range(
                    &begin,
                    &end,
                    RangeOpts {
                        snapshot: true,
                        ..Default::default()
                    },
                )? {
                    let ver = key_version(&k)?;
                    if ver > after {
                        out.push(log_entry(&k, ver, &val)?);
                    }
                }
                out.sort_by_key(|e| e.version);
                // One commit's entries in several scopes: one entry, one actor.
                let mut merged: Vec<LogEntry> = Vec::new();
                for e in out {
                    match merged.last_mut() {
                        Some(last) if last.version == e.version => last.changes.extend(e.changes),
                        _ => merged.push(e),
                    }
                }
                if limit > 0 && merged.len() > limit {
                    merged.truncate(limit);
                    let upto = merged.last().map(|x| x.version).unwrap_or(after);
                    return Ok((merged, upto));
                }
                return Ok((merged, read_at));
            }
            let (_, end) = tuple::prefix_range(&ks::log_of_scope(t.as_str(), vs(v)));
            let begin = ks::log_at(t.as_str(), vs(v), after.saturating_add(1));
            for (k, val) in tx.range(
                &begin,
                &end,
                RangeOpts {
                    limit,
                    snapshot: true,
                    reverse: false,
                },
            )? {
                out.push(log_entry(&k, key_version(&k)?, &val)?);
            }
            // A full page may stop inside a version (several commits of one
            // FoundationDB batch share it): resume at that version, re-applying
            // what was already applied (changes are idempotent).
            let upto = if limit > 0 && out.len() == limit {
                out.last().map(|x| x.version).unwrap_or(after)
            } else {
                read_at
            };
            Ok((out, upto))
        })?;
        Ok(r)
    }
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
