//! Memberships: batched upserts and deletes with their by-member index,
//! listing by group or member.

use super::*;

impl Repo {
    pub fn write_memberships(
        &self,
        actor: &Actor,
        t: &TenantId,
        v: Option<&VaultName>,
        upserts: &[Membership],
        deletes: &[Membership],
        replace_source: Option<Source>,
    ) -> Result<((u32, u32), u64)> {
        check_batch(upserts.len() + deletes.len())?;
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
        self.write(t.as_str(), |tx| {
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
                changes.push(Logged::new::<Membership>(Change::PutMembership(m.clone()), None));
                up += 1;
            }
            for m in &to_delete {
                if keep.contains(&(m.group.as_str(), m.member.as_str())) {
                    continue;
                }
                let key = ks::membership(t.as_str(), vs(v), m.group.as_str(), m.member.as_str());
                if let Some(stored) = tx.get(&key)? {
                    tx.clear(&key);
                    tx.clear(&ks::member_of(t.as_str(), vs(v), m.member.as_str(), m.group.as_str()));
                    let before = decode::<Membership>(&key, &stored).map(|(m, _)| m);
                    let change = Change::DeleteMembership(m.clone());
                    changes.push(match before {
                        Ok(old) => Logged::new(change, Some(&old)),
                        Err(_) => Logged::over_unreadable(change),
                    });
                    del += 1;
                }
            }
            append_changelog(tx, actor, &changes)?;
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
}
