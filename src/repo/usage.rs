//! What tenants hold: per-scope counters and the subtree totals their
//! limits are enforced on.

use super::*;

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

pub(crate) fn read_i64(tx: &mut dyn Transaction, key: &[u8]) -> Result<i64> {
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

pub(crate) fn limit_of(l: &Limits, kind: &str) -> u32 {
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
pub(crate) fn check_limits(
    tx: &mut dyn Transaction,
    t: &TenantId,
    kind: &'static str,
    adding: u64,
    ancestors_only: bool,
) -> Result<()> {
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
            return Err(ServiceError::LimitExceeded {
                tenant: a.to_string(),
                whose,
                kind,
                max,
                holds: have,
                adding,
            });
        }
    }
    Ok(())
}

/// Removes a scope's counters, taking what they held off the subtree totals.
pub(crate) fn uncount_scope(tx: &mut dyn Transaction, t: &TenantId, v: Option<&str>) -> Result<()> {
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
