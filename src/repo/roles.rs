//! Roles: writes (with the inheritance-cycle check), reads, deletion.

use super::*;

impl Repo {
    pub fn apply_role(&self, actor: &Actor, r: Role, expected: Option<u64>) -> Result<Applied<Role>> {
        validate::role(&r)?;
        let (res, version) = self.write(r.tenant.as_str(), |tx| {
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
            upsert(tx, actor, &key, &r, existing, Some(counted), Change::PutRole(r.clone()))
        })?;
        Ok(Applied::from_upsert(res, r, version))
    }

    pub fn get_role(&self, t: &TenantId, v: Option<&VaultName>, name: &RoleName) -> Result<(Role, u64)> {
        let (r, _) = self.run(|tx| {
            read::<Role>(tx, &ks::role(t.as_str(), vs(v), name.as_str()))?.ok_or_else(|| ServiceError::RoleNotFound {
                scope: scope_of(t, v).to_string(),
                role: name.to_string(),
            })
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
        actor: &Actor,
        t: &TenantId,
        v: Option<&VaultName>,
        name: &RoleName,
        expected: Option<u64>,
    ) -> Result<u64> {
        let (_, version) = self.write(t.as_str(), |tx| {
            let key = ks::role(t.as_str(), vs(v), name.as_str());
            let existing = read_existing::<Role>(tx, &key)?;
            if !existing.exists() {
                return Err(ServiceError::RoleNotFound {
                    scope: scope_of(t, v).to_string(),
                    role: name.to_string(),
                });
            }
            expect_revision(&format!("role {name}"), expected, existing.revision())?;
            tx.clear(&key);
            add_count(tx, t, vs(v), ROLES, -1);
            let change = Change::DeleteRole {
                scope: scope_of(t, v),
                name: name.clone(),
            };
            append_changelog(tx, actor, &[Logged::over(change, &existing)])?;
            Ok(())
        })?;
        Ok(version)
    }
}
