//! Vaults: writes, reads, deletion (with everything in them), export.

use super::*;

impl Repo {
    pub fn apply_vault(&self, actor: &Actor, v: Vault, expected: Option<u64>) -> Result<Applied<Vault>> {
        validate::vault(&v)?;
        let (r, version) = self.write(v.tenant.as_str(), |tx| {
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
            upsert(
                tx,
                actor,
                &key,
                &v,
                existing,
                Some(counted),
                Change::PutVault(v.clone()),
            )
        })?;
        Ok(Applied::from_upsert(r, v, version))
    }

    pub fn get_vault(&self, t: &TenantId, name: &VaultName) -> Result<(Vault, u64)> {
        let (r, _) = self.run(|tx| {
            read::<Vault>(tx, &ks::vault(t.as_str(), name.as_str()))?.ok_or_else(|| ServiceError::VaultNotFound {
                tenant: t.to_string(),
                vault: name.to_string(),
            })
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

    pub fn delete_vault(&self, actor: &Actor, t: &TenantId, name: &VaultName, expected: Option<u64>) -> Result<u64> {
        let (_, version) = self.write(t.as_str(), |tx| {
            let key = ks::vault(t.as_str(), name.as_str());
            let existing = read_existing::<Vault>(tx, &key)?;
            if !existing.exists() {
                return Err(ServiceError::VaultNotFound {
                    tenant: t.to_string(),
                    vault: name.to_string(),
                });
            }
            expect_revision(&format!("vault {name} in tenant {t}"), expected, existing.revision())?;
            self.clear_scope(tx, t, Some(name))?;
            tx.clear(&key);
            let change = Change::DeleteVault {
                tenant: t.clone(),
                vault: name.clone(),
            };
            append_changelog(tx, actor, &[Logged::over(change, &existing)])?;
            Ok(())
        })?;
        Ok(version)
    }

    /// Everything in a vault at one revision: the vault, its roles, bindings
    /// and memberships.
    pub fn export_vault(&self, t: &TenantId, name: &VaultName) -> Result<(VaultExport, u64)> {
        let (r, version) = self.run(|tx| {
            let (vault, _) = read::<Vault>(tx, &ks::vault(t.as_str(), name.as_str()))?.ok_or_else(|| {
                ServiceError::VaultNotFound {
                    tenant: t.to_string(),
                    vault: name.to_string(),
                }
            })?;
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
}

#[derive(Debug, Clone)]
pub struct VaultExport {
    pub vault: Vault,
    pub roles: Vec<Role>,
    pub bindings: Vec<Binding>,
    pub memberships: Vec<Membership>,
}
