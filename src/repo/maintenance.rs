//! The leader's maintenance transactions: claiming a job's interval, purging
//! expired bindings, compacting the changelog and recounting usage. Each is
//! fenced by the leader's epoch ([`crate::lease::fence`]), so a deposed
//! leader's write is refused; [`crate::jobs`] schedules them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;
use crate::lease::{LEASE, fence};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    last_run_ms: u64,
    epoch: u64,
    holder: String,
}

/// Totals across tenants, as last accounted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub tenants: u64,
    pub vaults: u64,
    pub roles: u64,
    pub bindings: u64,
    pub over_limit: u64,
}

impl Repo {
    /// Claims the job's current interval: `Ok(true)` when it is due and now
    /// recorded as run by this leader.
    pub fn claim_job(&self, job: &str, epoch: u64, holder: &str, interval: Duration, now: u64) -> Result<bool> {
        let (due, _) = self.run(|tx| {
            fence(tx, LEASE, epoch)?;
            let key = ks::job(job);
            let last: Option<JobRecord> = tx.get(&key)?.and_then(|v| serde_json::from_slice(&v).ok());
            if last.is_some_and(|l| now < l.last_run_ms + interval.as_millis() as u64) {
                return Ok(false);
            }
            let rec = JobRecord {
                last_run_ms: now,
                epoch,
                holder: holder.to_string(),
            };
            tx.set(
                &key,
                &serde_json::to_vec(&rec).map_err(ServiceError::encoding("job record"))?,
            );
            Ok(true)
        })?;
        Ok(due)
    }

    /// Deletes bindings whose `expires_at` has passed. Returns how many.
    pub fn purge_expired(&self, epoch: u64, now_micros: i64) -> Result<usize> {
        let mut total = 0;
        loop {
            let (n, _) = self.run(|tx| {
                fence(tx, LEASE, epoch)?;
                let (begin, _) = tuple::prefix_range(&ks::expiries());
                let end = ks::expiry_before(now_micros);
                let due = tx.range(&begin, &end, RangeOpts::limit(500))?;
                let mut changes = Vec::new();
                let mut count: std::collections::BTreeMap<(String, String), i64> = Default::default();
                for (k, _) in &due {
                    tx.clear(k);
                    let row = ks::expiry_of(k).ok_or_else(|| corrupt(k, "expiry key"))?;
                    let vault = row.vault.as_deref();
                    // A record that cannot be read is left for a repair.
                    let Ok(Some((b, _))) = read::<Binding>(tx, &ks::binding(&row.tenant, vault, &row.id)) else {
                        continue;
                    };
                    if b.expires_at.is_none_or(|x| x.0 > now_micros) {
                        continue; // rewritten since; its new expiry has its own key
                    }
                    remove_binding(tx, &row.tenant, vault, &row.id, Some(&b))?;
                    *count
                        .entry((row.tenant.clone(), row.vault.clone().unwrap_or_default()))
                        .or_default() -= 1;
                    let change = Change::DeleteBinding {
                        scope: Scope {
                            tenant: b.tenant.clone(),
                            vault: b.vault.clone(),
                        },
                        id: row.id.clone(),
                    };
                    changes.push(Logged::new(change, Some(&b)));
                }
                for ((t, v), d) in count {
                    if let Ok(t) = TenantId::parse(&t) {
                        add_count(tx, &t, (!v.is_empty()).then_some(v.as_str()), BINDINGS, d);
                    }
                }
                append_changelog(tx, &Actor::job("purge"), &changes)?;
                Ok((due.len(), changes.len()))
            })?;
            total += n.1;
            if n.0 < 500 {
                return Ok(total);
            }
        }
    }

    /// Drops changelog and feed entries older than `retention`. Returns the new
    /// floor revision, if it moved.
    pub fn compact_changelog(&self, epoch: u64, now: u64, retention: Duration) -> Result<Option<u64>> {
        // Record what version "now" is, for future runs to find.
        self.run(|tx| {
            fence(tx, LEASE, epoch)?;
            let v = tx.read_version()?;
            tx.set(&ks::mark(now), &v.to_be_bytes());
            Ok(())
        })?;
        let cutoff = now.saturating_sub(retention.as_millis() as u64);
        let (floor, _) = self.run(|tx| {
            fence(tx, LEASE, epoch)?;
            let (b, _) = tuple::prefix_range(&ks::marks());
            let e = ks::mark(cutoff + 1);
            let found = tx.range(
                &b,
                &e,
                RangeOpts {
                    limit: 1,
                    reverse: true,
                    snapshot: false,
                },
            )?;
            let Some((mark_key, v)) = found.into_iter().next() else {
                return Ok(None);
            };
            let v = v
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(&mark_key, "mark"))?;
            let floor = log_floor(tx)?;
            if v <= floor {
                return Ok(None);
            }
            // Older marks are no longer needed.
            tx.clear_range(&b, &mark_key)?;
            Ok(Some(v))
        })?;
        let Some(floor) = floor else { return Ok(None) };
        // The feed, then each scope's log, below the floor.
        self.run(|tx| {
            fence(tx, LEASE, epoch)?;
            let (b, _) = tuple::prefix_range(&ks::feed());
            tx.clear_range(&b, &ks::feed_at(floor))?;
            tx.set(&ks::log_floor(), &floor.to_be_bytes());
            Ok(())
        })?;
        let (_, log_end) = tuple::prefix_range(&ks::log_all());
        let mut cursor = tuple::prefix_range(&ks::log_all()).0;
        loop {
            let (next, _) = self.run(|tx| {
                fence(tx, LEASE, epoch)?;
                let mut cursor = cursor.clone();
                for _ in 0..100 {
                    let Some((k, _)) = tx
                        .range(
                            &cursor,
                            &log_end,
                            RangeOpts {
                                limit: 1,
                                snapshot: true,
                                reverse: false,
                            },
                        )?
                        .pop()
                    else {
                        return Ok(None);
                    };
                    let (t, v) = ks::log_scope_of(&k).ok_or_else(|| corrupt(&k, "log key"))?;
                    let scope = ks::log_of_scope(&t, v.as_deref());
                    tx.clear_range(&scope, &ks::log_at(&t, v.as_deref(), floor))?;
                    cursor = tuple::prefix_range(&scope).1;
                }
                Ok(Some(cursor))
            })?;
            match next {
                Some(c) => cursor = c,
                None => return Ok(Some(floor)),
            }
        }
    }

    /// Recounts every tenant's objects and corrects the counters.
    pub fn recount_usage(&self, epoch: u64) -> Result<UsageTotals> {
        let (tenants, _) = self.run(|tx| {
            let rows = range_prefix(
                tx,
                &ks::tenants(),
                RangeOpts {
                    snapshot: true,
                    ..Default::default()
                },
            )?;
            // A tenant record that cannot be read is skipped (the index has
            // quarantined it); the rest are accounted.
            Ok::<_, ServiceError>(
                rows.iter()
                    .filter_map(|(k, v)| decode::<crate::engine::model::Tenant>(k, v).ok().map(|x| x.0))
                    .collect::<Vec<_>>(),
            )
        })?;
        let mut totals = UsageTotals {
            tenants: tenants.len() as u64,
            ..Default::default()
        };
        let tenants_list: Vec<TenantId> = tenants.iter().map(|t| t.id.clone()).collect();
        for t in tenants {
            let (u, _) = self.run(|tx| {
                fence(tx, LEASE, epoch)?;
                let id = t.id.as_str();
                let mut per_scope: std::collections::BTreeMap<(String, &'static str), i64> = Default::default();
                // The scope each object counts in, from its key (a record that
                // cannot be read still counts).
                let scope_of_key = |k: &[u8]| -> Result<String> {
                    ks::object_of(k)
                        .map(|o| o.vault.unwrap_or_default())
                        .ok_or_else(|| corrupt(k, "object key"))
                };
                for (prefix, kind) in [
                    (ks::vaults(id), VAULTS),
                    (ks::roles_of_tenant(id), ROLES),
                    (ks::bindings_of_tenant(id), BINDINGS),
                ] {
                    for (k, _) in range_prefix(tx, &prefix, RangeOpts::default())? {
                        *per_scope.entry((scope_of_key(&k)?, kind)).or_default() += 1;
                    }
                }
                // Rewrite the counters exactly.
                let (b, e) = tuple::prefix_range(&ks::counts_of_tenant(id));
                tx.clear_range(&b, &e)?;
                for ((v, kind), n) in &per_scope {
                    tx.set(
                        &ks::count(id, (!v.is_empty()).then_some(v.as_str()), kind),
                        &n.to_le_bytes(),
                    );
                }
                let mut u = Usage::default();
                for ((_, kind), n) in &per_scope {
                    match *kind {
                        VAULTS => u.vaults += *n as u64,
                        ROLES => u.roles += *n as u64,
                        _ => u.bindings += *n as u64,
                    }
                }
                Ok(u)
            })?;
            totals.vaults += u.vaults;
            totals.roles += u.roles;
            totals.bindings += u.bindings;
            let over = |have: u64, max: u32| max > 0 && have > u64::from(max);
            if over(u.vaults, t.limits.max_vaults)
                || over(u.roles, t.limits.max_roles)
                || over(u.bindings, t.limits.max_bindings)
            {
                totals.over_limit += 1;
            }
        }
        // Then each tenant's subtree totals, from the exact per-scope counters:
        // one transaction per tenant reads its subtree's counters and rewrites
        // its totals, so a concurrent write conflicts and is retried.
        for t in &tenants_list {
            self.run(|tx| {
                fence(tx, LEASE, epoch)?;
                let id = t.as_str();
                let mut sums: std::collections::BTreeMap<String, i64> = Default::default();
                for prefix in [ks::counts_of_tenant(id), ks::counts_of_descendants(id)] {
                    for (k, v) in range_prefix(tx, &prefix, RangeOpts::default())? {
                        let n = v.as_slice().try_into().map(i64::from_le_bytes).unwrap_or(0);
                        if let Some(kind) = ks::count_kind(&k) {
                            *sums.entry(kind).or_default() += n;
                        }
                    }
                }
                let children = range_prefix(tx, &ks::tenant_children(id), RangeOpts::default())?.len();
                let (b, e) = tuple::prefix_range(&ks::subtree_counts_of(id));
                tx.clear_range(&b, &e)?;
                for kind in [VAULTS, ROLES, BINDINGS] {
                    let n = sums.get(kind).copied().unwrap_or(0);
                    tx.set(&ks::subtree_count(id, kind), &n.to_le_bytes());
                }
                tx.set(&ks::subtree_count(id, TENANTS), &(children as i64).to_le_bytes());
                Ok(())
            })?;
        }
        Ok(totals)
    }

    /// Every vault record, read at a snapshot (for the index verifier).
    pub fn all_vaults(&self) -> Result<Vec<Vault>> {
        let (rows, _) = self.run(|tx| {
            range_prefix(
                tx,
                &ks::all_vaults(),
                RangeOpts {
                    snapshot: true,
                    ..Default::default()
                },
            )
        })?;
        rows.iter().map(|(k, v)| decode::<Vault>(k, v).map(|x| x.0)).collect()
    }
}
