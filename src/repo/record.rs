//! Records: decoding and writing stored objects, records that cannot be
//! read, and the paging helpers every listing shares.

use super::*;

pub(crate) fn page_size(n: u32) -> usize {
    match n as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

pub(crate) fn page_token_key(token: &str) -> Result<Option<Vec<u8>>> {
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
    pub(crate) fn of_key(key: &[u8], detail: String) -> CorruptRecord {
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
    pub(crate) fn of_change(raw: &serde_json::Value, detail: String) -> CorruptRecord {
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
    pub(crate) fn revision(&self) -> Option<u64> {
        match self {
            Existing::Absent => None,
            Existing::Corrupt(r) | Existing::Found(_, r) => Some(*r),
        }
    }
    pub(crate) fn exists(&self) -> bool {
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

pub(crate) fn read<T: DeserializeOwned>(tx: &mut dyn Transaction, key: &[u8]) -> Result<Option<(T, u64)>> {
    match tx.get(key)? {
        Some(v) => decode(key, &v).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn write<T: Serialize>(tx: &mut dyn Transaction, key: &[u8], obj: &T) -> Result<()> {
    let json = serde_json::to_vec(obj).map_err(ServiceError::encoding("record"))?;
    tx.set_versionstamped_value(key, ks::record(&json), 0);
    Ok(())
}

impl Repo {
    /// Every row under `prefix`, in key order, read in short snapshot
    /// transactions of `chunk` rows each (FoundationDB's 5 s limit), each
    /// chunk handed to `each`. What changes between chunks is the
    /// caller's concern.
    pub(crate) fn in_chunks(
        &self,
        prefix: &[u8],
        chunk: usize,
        mut each: impl FnMut(&[store::KeyValue]) -> Result<()>,
    ) -> Result<()> {
        let (mut cursor, end) = tuple::prefix_range(prefix);
        loop {
            let (rows, _) = self.run(|tx| {
                Ok(tx.range(
                    &cursor,
                    &end,
                    RangeOpts {
                        limit: chunk,
                        snapshot: true,
                        reverse: false,
                    },
                )?)
            })?;
            each(&rows)?;
            if rows.len() < chunk {
                return Ok(());
            }
            cursor = rows.last().expect("a full chunk").0.clone();
            cursor.push(0);
        }
    }
}

pub(crate) fn range_prefix(tx: &mut dyn Transaction, prefix: &[u8], opts: RangeOpts) -> Result<Vec<store::KeyValue>> {
    let (b, e) = tuple::prefix_range(prefix);
    Ok(tx.range(&b, &e, opts)?)
}

/// A page of a prefix range, after the key in `token`.
pub(crate) fn page_of(
    tx: &mut dyn Transaction,
    prefix: &[u8],
    token: &str,
    size: u32,
) -> Result<(Vec<store::KeyValue>, String)> {
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
