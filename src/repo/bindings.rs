//! Bindings: batched upserts and deletes with their index rows, listing by
//! subject or source.

use super::*;

/// Removes the by-subject index row of binding `id` when its record (and
/// so its subject) cannot be read: the scope's rows are scanned for it.
pub(crate) fn clear_subject_rows_of(tx: &mut dyn Transaction, t: &str, v: Option<&str>, id: &str) -> Result<()> {
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
pub(crate) fn clear_binding_rows(
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

impl Repo {
    /// Upserts and deletes bindings of one scope atomically. With
    /// `replace_source`, the scope's bindings from that source that are not
    /// upserted are deleted too. Returns (upserted, deleted) and the version.
    pub fn write_bindings(
        &self,
        actor: &Actor,
        t: &TenantId,
        v: Option<&VaultName>,
        upserts: &[Binding],
        deletes: &[String],
        replace_source: Option<Source>,
    ) -> Result<((u32, u32), u64)> {
        check_batch(upserts.len() + deletes.len())?;
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
        self.write(t.as_str(), |tx| {
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
                let existing = read_existing::<Binding>(tx, &key)?;
                match &existing {
                    Existing::Found(old, _) if old == b => continue,
                    Existing::Found(old, _) => clear_binding_rows(tx, t.as_str(), vs(v), &b.id, Some(old), false)?,
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
                changes.push(Logged::over(Change::PutBinding(b.clone()), &existing));
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
                    let change = Change::DeleteBinding {
                        scope: scope_of(t, v),
                        id: id.clone(),
                    };
                    changes.push(Logged::over(change, &existing));
                    added -= 1;
                    del += 1;
                }
            }
            if added > 0 {
                check_limits(tx, t, BINDINGS, added as u64, false)?;
            }
            add_count(tx, t, vs(v), BINDINGS, added);
            append_changelog(tx, actor, &changes)?;
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
}
