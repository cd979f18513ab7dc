//! Tenants: writes (with the confinement rules of keys confined to a
//! subtree), reads, listing, deletion with its dependents check.

use super::*;

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
    /// or limits, giving a descendant a limit above a root's, or setting any
    /// tenant's decision-log sampling.
    pub(crate) fn check(
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
        // The decision log's sampling is the platform's, never the
        // tenant's: no confined key sets or changes it, anywhere.
        if let Some(t) = t {
            let before = match existing {
                Existing::Found(old, _) => old.decision_logs,
                Existing::Absent | Existing::Corrupt(_) => Default::default(),
            };
            if t.decision_logs != before {
                return Err(ServiceError::ConfinementRoot {
                    key: self.key.clone(),
                    tenant: self.roots.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "),
                    what: format!("set or change decision_logs of {id}, which only an unconfined key may"),
                });
            }
        }
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

impl Repo {
    pub fn apply_tenant(
        &self,
        actor: &Actor,
        t: Tenant,
        expected: Option<u64>,
        confinement: Option<&Confinement>,
    ) -> Result<Applied<Tenant>> {
        validate::tenant(&t)?;
        let (r, version) = self.write(t.id.as_str(), |tx| {
            let key = ks::tenant(t.id.as_str());
            let existing = read_existing::<Tenant>(tx, &key)?;
            expect_revision(&format!("tenant {}", t.id), expected, existing.revision())?;
            if let Some(c) = confinement {
                c.check(tx, Some(&t), &t.id, &existing)?;
            }
            if let Some(p) = t.id.parent()
                && tx.get(&ks::tenant(p.as_str()))?.is_none()
            {
                return Err(ServiceError::TenantRequired {
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
            upsert(tx, actor, &key, &t, existing, None, Change::PutTenant(t.clone()))
        })?;
        Ok(Applied::from_upsert(r, t, version))
    }

    pub fn get_tenant(&self, id: &TenantId) -> Result<(Tenant, u64, Usage)> {
        let (r, _) = self.run(|tx| {
            let found = read::<Tenant>(tx, &ks::tenant(id.as_str()))?;
            match found {
                Some((t, rev)) => Ok((t, rev, usage(tx, id.as_str())?)),
                None => Err(ServiceError::TenantNotFound { tenant: id.to_string() }),
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
        actor: &Actor,
        id: &TenantId,
        expected: Option<u64>,
        confinement: Option<&Confinement>,
    ) -> Result<u64> {
        let (_, version) = self.write(id.as_str(), |tx| {
            let key = ks::tenant(id.as_str());
            let existing = read_existing::<Tenant>(tx, &key)?;
            if !existing.exists() {
                return Err(ServiceError::TenantNotFound { tenant: id.to_string() });
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
                return Err(ServiceError::DependentsExist {
                    object: format!("tenant {id}"),
                    dependents: names,
                });
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
            let change = Change::DeleteTenant { tenant: id.clone() };
            append_changelog(tx, actor, &[Logged::over(change, &existing)])?;
            Ok(())
        })?;
        Ok(version)
    }

    /// Removes a scope's roles, bindings and memberships (with their indexes
    /// and counters).
    pub(crate) fn clear_scope(&self, tx: &mut dyn Transaction, tenant: &TenantId, v: Option<&VaultName>) -> Result<()> {
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
}

pub(crate) fn out_last_key(out: &[(Tenant, u64)]) -> Vec<u8> {
    out.last().map(|(t, _)| ks::tenant(t.id.as_str())).unwrap_or_default()
}
