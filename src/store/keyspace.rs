//! The keyspace: every key Portcullis stores, in one place.
//!
//! All keys are tuples (see `tuple`, FoundationDB-compatible) under the root
//! `("pc", KEYSPACE_VERSION)`. `vault` is the empty string for tenant-level
//! objects (tenant-scoped roles, tenant-wide bindings and memberships); the
//! empty string sorts before every vault name, so a tenant's own objects come
//! first in each range.
//!
//! | key | value |
//! |---|---|
//! | `(root, "t", tenant)` | record: `Tenant` |
//! | `(root, "v", tenant, vault)` | record: `Vault` |
//! | `(root, "r", tenant, vault, role)` | record: `Role` |
//! | `(root, "b", tenant, vault, binding_id)` | record: `Binding` |
//! | `(root, "bs", tenant, vault, subject, binding_id)` | empty: bindings by subject |
//! | `(root, "m", tenant, vault, group, member)` | record: `Membership` |
//! | `(root, "mm", tenant, vault, member, group)` | empty: memberships by member |
//! | `(root, "log", tenant, vault, versionstamp)` | JSON `[Change]`: the per-vault changelog (vault `""` holds tenant-level changes) |
//! | `(root, "feed", versionstamp)` | JSON `[Change]`: every change of one commit, which replicas tail |
//! | `(root, "sys", "store_id")` | UTF-8 id, written once when the store is created |
//! | `(root, "sys", "log_floor")` | u64 BE: the oldest revision the changelog still holds |
//! | `(root, "sys", "feed_bump")` | versionstamp: written by every changing commit; FDB watches it |
//! | `(root, "sys", "count", tenant, vault, kind)` | i64 LE, atomic adds: vaults, roles, bindings held in a scope |
//! | `(root, "sys", "subtree", tenant, kind)` | i64 LE, atomic adds: vaults, roles, bindings and descendant tenants in the tenant's whole subtree, which its limits bound |
//! | `(root, "sys", "lease", name)` | JSON lease: holder, epoch, expiry |
//! | `(root, "sys", "epoch", name)` | u64 BE: the fencing epoch job writes check |
//! | `(root, "sys", "job", name)` | JSON: a background job's last run |
//! | `(root, "sys", "exp", expires_at_micros, tenant, vault, binding_id)` | empty: bindings by expiry, for the purge job |
//! | `(root, "sys", "mark", unix_millis)` | u64 BE: the store version at that time, for changelog retention |
//! | `(root, "audit", tenant, seq)` | record: an audit `Event`, the tenant's `seq`-th (see `audit`) |
//! | `(root, "sys", "audit_head", tenant)` | JSON `Link`: the tenant's last audit event's sequence and hash |
//! | `(root, "sys", "audit_floor", tenant)` | JSON `Link`: the last event retention removed, where verification starts |
//!
//! A record is the 10-byte versionstamp of the commit that wrote it (so the
//! revision of an object comes from the commit version, never a counter)
//! followed by the object's JSON. Changelog and feed keys are versionstamped
//! too, so concurrent commits never touch a common key.

use super::tuple::Key;

pub const KEYSPACE_VERSION: u64 = 1;

pub fn root() -> Key {
    Key::new().str("pc").int(KEYSPACE_VERSION)
}

fn v(vault: Option<&str>) -> &str {
    vault.unwrap_or("")
}

pub fn tenant(t: &str) -> Vec<u8> {
    root().str("t").str(t).into_vec()
}
pub fn tenants() -> Vec<u8> {
    root().str("t").into_vec()
}
/// Prefix of the tenants strictly below `t`.
pub fn tenant_children(t: &str) -> Vec<u8> {
    root().str("t").str_prefix(&format!("{t}/")).into_vec()
}
pub fn vault(t: &str, name: &str) -> Vec<u8> {
    root().str("v").str(t).str(name).into_vec()
}
pub fn vaults(t: &str) -> Vec<u8> {
    root().str("v").str(t).into_vec()
}
/// Prefix of every vault of every tenant.
pub fn all_vaults() -> Vec<u8> {
    root().str("v").into_vec()
}
/// Prefix of every role of every tenant and vault.
pub fn all_roles() -> Vec<u8> {
    root().str("r").into_vec()
}
/// Prefix of every binding record (not the index rows).
pub fn all_bindings() -> Vec<u8> {
    root().str("b").into_vec()
}
/// Prefix of every membership record (not the reverse rows).
pub fn all_memberships() -> Vec<u8> {
    root().str("m").into_vec()
}
pub fn role(t: &str, vault: Option<&str>, name: &str) -> Vec<u8> {
    root().str("r").str(t).str(v(vault)).str(name).into_vec()
}
pub fn roles(t: &str, vault: Option<&str>) -> Vec<u8> {
    root().str("r").str(t).str(v(vault)).into_vec()
}
pub fn roles_of_tenant(t: &str) -> Vec<u8> {
    root().str("r").str(t).into_vec()
}
pub fn binding(t: &str, vault: Option<&str>, id: &str) -> Vec<u8> {
    root().str("b").str(t).str(v(vault)).str(id).into_vec()
}
pub fn bindings(t: &str, vault: Option<&str>) -> Vec<u8> {
    root().str("b").str(t).str(v(vault)).into_vec()
}
pub fn bindings_of_tenant(t: &str) -> Vec<u8> {
    root().str("b").str(t).into_vec()
}
pub fn binding_by_subject(t: &str, vault: Option<&str>, subject: &str, id: &str) -> Vec<u8> {
    root().str("bs").str(t).str(v(vault)).str(subject).str(id).into_vec()
}
pub fn bindings_by_subject(t: &str, vault: Option<&str>, subject: &str) -> Vec<u8> {
    root().str("bs").str(t).str(v(vault)).str(subject).into_vec()
}
pub fn binding_index_of_scope(t: &str, vault: Option<&str>) -> Vec<u8> {
    root().str("bs").str(t).str(v(vault)).into_vec()
}
pub fn membership(t: &str, vault: Option<&str>, group: &str, member: &str) -> Vec<u8> {
    root().str("m").str(t).str(v(vault)).str(group).str(member).into_vec()
}
pub fn memberships(t: &str, vault: Option<&str>) -> Vec<u8> {
    root().str("m").str(t).str(v(vault)).into_vec()
}
/// Every membership record of a tenant, tenant-wide and in its vaults.
pub fn memberships_of_tenant(t: &str) -> Vec<u8> {
    root().str("m").str(t).into_vec()
}
pub fn memberships_of_group(t: &str, vault: Option<&str>, group: &str) -> Vec<u8> {
    root().str("m").str(t).str(v(vault)).str(group).into_vec()
}
pub fn member_of(t: &str, vault: Option<&str>, member: &str, group: &str) -> Vec<u8> {
    root().str("mm").str(t).str(v(vault)).str(member).str(group).into_vec()
}
pub fn member_of_member(t: &str, vault: Option<&str>, member: &str) -> Vec<u8> {
    root().str("mm").str(t).str(v(vault)).str(member).into_vec()
}
pub fn member_index_of_scope(t: &str, vault: Option<&str>) -> Vec<u8> {
    root().str("mm").str(t).str(v(vault)).into_vec()
}
/// The changelog of a scope, with the versionstamp still to fill in.
pub fn log_entry(t: &str, vault: Option<&str>) -> (Vec<u8>, usize) {
    root().str("log").str(t).str(v(vault)).incomplete_versionstamp()
}
pub fn log_at(t: &str, vault: Option<&str>, version: u64) -> Vec<u8> {
    root().str("log").str(t).str(v(vault)).versionstamp(version).into_vec()
}
pub fn log_of_scope(t: &str, vault: Option<&str>) -> Vec<u8> {
    root().str("log").str(t).str(v(vault)).into_vec()
}
/// Prefix of a tenant's whole changelog: its own and every vault's.
pub fn log_of_tenant(t: &str) -> Vec<u8> {
    root().str("log").str(t).into_vec()
}
pub fn log_all() -> Vec<u8> {
    root().str("log").into_vec()
}
pub fn feed_entry() -> (Vec<u8>, usize) {
    root().str("feed").incomplete_versionstamp()
}
pub fn feed_at(version: u64) -> Vec<u8> {
    root().str("feed").versionstamp(version).into_vec()
}
pub fn feed() -> Vec<u8> {
    root().str("feed").into_vec()
}
pub fn store_id() -> Vec<u8> {
    root().str("sys").str("store_id").into_vec()
}
pub fn log_floor() -> Vec<u8> {
    root().str("sys").str("log_floor").into_vec()
}
pub fn feed_bump() -> Vec<u8> {
    root().str("sys").str("feed_bump").into_vec()
}
pub fn count(t: &str, vault: Option<&str>, kind: &str) -> Vec<u8> {
    root().str("sys").str("count").str(t).str(v(vault)).str(kind).into_vec()
}
pub fn counts_of_tenant(t: &str) -> Vec<u8> {
    root().str("sys").str("count").str(t).into_vec()
}
/// Prefix of the counters of every tenant strictly below `t`.
pub fn counts_of_descendants(t: &str) -> Vec<u8> {
    root().str("sys").str("count").str_prefix(&format!("{t}/")).into_vec()
}
/// The kind at the end of a `(root, "sys", "count", tenant, vault, kind)` key.
pub fn count_kind(key: &[u8]) -> Option<String> {
    match super::tuple::decode(key)?.last() {
        Some(super::tuple::Elem::Str(k)) => Some(k.to_string()),
        _ => None,
    }
}
pub fn counts_of_scope(t: &str, vault: Option<&str>) -> Vec<u8> {
    root().str("sys").str("count").str(t).str(v(vault)).into_vec()
}
pub fn subtree_count(t: &str, kind: &str) -> Vec<u8> {
    root().str("sys").str("subtree").str(t).str(kind).into_vec()
}
pub fn subtree_counts_of(t: &str) -> Vec<u8> {
    root().str("sys").str("subtree").str(t).into_vec()
}
pub fn counts() -> Vec<u8> {
    root().str("sys").str("count").into_vec()
}
pub fn lease(name: &str) -> Vec<u8> {
    root().str("sys").str("lease").str(name).into_vec()
}
pub fn epoch(name: &str) -> Vec<u8> {
    root().str("sys").str("epoch").str(name).into_vec()
}
pub fn expiry(at_micros: i64, t: &str, vault: Option<&str>, id: &str) -> Vec<u8> {
    root()
        .str("sys")
        .str("exp")
        .int(at_micros.max(0) as u64)
        .str(t)
        .str(v(vault))
        .str(id)
        .into_vec()
}
pub fn expiry_before(at_micros: i64) -> Vec<u8> {
    root().str("sys").str("exp").int(at_micros.max(0) as u64).into_vec()
}
pub fn expiries() -> Vec<u8> {
    root().str("sys").str("exp").into_vec()
}
pub fn mark(unix_millis: u64) -> Vec<u8> {
    root().str("sys").str("mark").int(unix_millis).into_vec()
}
pub fn marks() -> Vec<u8> {
    root().str("sys").str("mark").into_vec()
}
pub fn job(name: &str) -> Vec<u8> {
    root().str("sys").str("job").str(name).into_vec()
}

pub fn audit_event(t: &str, seq: u64) -> Vec<u8> {
    root().str("audit").str(t).int(seq).into_vec()
}
/// Prefix of one tenant's audit events (not its descendants').
pub fn audit_of_tenant(t: &str) -> Vec<u8> {
    root().str("audit").str(t).into_vec()
}
/// Prefix of the audit events of every tenant strictly below `t`.
pub fn audit_of_descendants(t: &str) -> Vec<u8> {
    root().str("audit").str_prefix(&format!("{t}/")).into_vec()
}
/// The tenant and sequence of an audit event's key.
pub fn audit_key_of(key: &[u8]) -> Option<(String, u64)> {
    let elems = super::tuple::decode(key)?;
    match elems.as_slice() {
        [.., super::tuple::Elem::Str(t), super::tuple::Elem::Int(seq)] => Some((t.to_string(), *seq)),
        _ => None,
    }
}
pub fn audit_head(t: &str) -> Vec<u8> {
    root().str("sys").str("audit_head").str(t).into_vec()
}
/// Prefix of every chain's head.
pub fn audit_heads() -> Vec<u8> {
    root().str("sys").str("audit_head").into_vec()
}
/// The chain named by a head's key.
pub fn audit_head_chain(key: &[u8]) -> Option<String> {
    match super::tuple::decode(key)?.last() {
        Some(super::tuple::Elem::Str(t)) => Some(t.to_string()),
        _ => None,
    }
}
pub fn audit_floor(t: &str) -> Vec<u8> {
    root().str("sys").str("audit_floor").str(t).into_vec()
}

/// A versionstamp written into a record's first 10 bytes; the rest is JSON.
pub const RECORD_HEADER: usize = 10;

/// A record with its versionstamp still to fill in (offset 0).
pub fn record(json: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(RECORD_HEADER + json.len());
    v.extend_from_slice(&[0xff; RECORD_HEADER]);
    v.extend_from_slice(json);
    v
}

/// Splits a stored record into its commit version and its JSON.
pub fn split_record(v: &[u8]) -> Option<(u64, &[u8])> {
    if v.len() < RECORD_HEADER {
        return None;
    }
    let version = u64::from_be_bytes(v[..8].try_into().ok()?);
    Some((version, &v[RECORD_HEADER..]))
}

/// Which object a record key holds, for reporting a record that cannot be
/// read: its scope (`vault` is `None` at tenant level) and its name within
/// the scope, as [`crate::engine::model::Change::object`] names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey {
    pub tenant: String,
    pub vault: Option<String>,
    pub object: String,
}

/// Parses an object record's key: `(root, "t"|"v"|"r"|"b"|"m", ...)`.
pub fn object_of(key: &[u8]) -> Option<ObjectKey> {
    use super::tuple::{Elem, decode};
    let root = root().into_vec();
    let rest = key.strip_prefix(root.as_slice())?;
    let e = decode(rest)?;
    let s = |i: usize| match e.get(i) {
        Some(Elem::Str(s)) => Some(s.to_string()),
        _ => None,
    };
    let vault = |x: String| (!x.is_empty()).then_some(x);
    let (tenant, vault, object) = match s(0)?.as_str() {
        "t" => (s(1)?, None, "tenant".to_string()),
        "v" => (s(1)?, Some(s(2)?), "vault".to_string()),
        "r" => (s(1)?, vault(s(2)?), format!("role {}", s(3)?)),
        "b" => (s(1)?, vault(s(2)?), format!("binding {}", s(3)?)),
        "m" => (s(1)?, vault(s(2)?), format!("membership {} {}", s(3)?, s(4)?)),
        _ => return None,
    };
    Some(ObjectKey { tenant, vault, object })
}

/// The string elements of a key under the root: `("b", tenant, vault, id)`.
fn strings_of(key: &[u8]) -> Option<Vec<String>> {
    use super::tuple::{Elem, decode};
    let rest = key.strip_prefix(root().into_vec().as_slice())?;
    decode(rest)?
        .into_iter()
        .map(|e| match e {
            Elem::Str(s) => Some(s.to_string()),
            Elem::Int(n) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

fn vault_of(v: String) -> Option<String> {
    (!v.is_empty()).then_some(v)
}

/// The binding id at the end of a `(root, "bs", tenant, vault, subject, id)`
/// key.
pub fn binding_id_of_subject_row(key: &[u8]) -> Option<String> {
    match strings_of(key)?.as_slice() {
        [bs, _, _, _, id] if bs == "bs" => Some(id.clone()),
        _ => None,
    }
}

/// The group at the end of a `(root, "mm", tenant, vault, member, group)` key.
pub fn group_of_member_row(key: &[u8]) -> Option<String> {
    match strings_of(key)?.as_slice() {
        [mm, _, _, _, g] if mm == "mm" => Some(g.clone()),
        _ => None,
    }
}

/// A binding's place, from its `(root, "sys", "exp", at, tenant, vault, id)` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryRow {
    pub tenant: String,
    pub vault: Option<String>,
    pub id: String,
}

pub fn expiry_of(key: &[u8]) -> Option<ExpiryRow> {
    match strings_of(key)?.as_slice() {
        [sys, exp, _, t, v, id] if sys == "sys" && exp == "exp" => Some(ExpiryRow {
            tenant: t.clone(),
            vault: vault_of(v.clone()),
            id: id.clone(),
        }),
        _ => None,
    }
}

/// The scope (tenant, vault) of a changelog key `(root, "log", tenant, vault, versionstamp)`.
pub fn log_scope_of(key: &[u8]) -> Option<(String, Option<String>)> {
    use super::tuple::{Elem, decode};
    let rest = key.strip_prefix(root().into_vec().as_slice())?;
    match decode(rest)?.as_slice() {
        [Elem::Str("log"), Elem::Str(t), Elem::Str(v), Elem::Versionstamp(_)] => {
            Some((t.to_string(), vault_of(v.to_string())))
        }
        _ => None,
    }
}

/// The commit version of a versionstamped key (changelog and feed entries).
pub fn version_of(key: &[u8]) -> Option<u64> {
    use super::tuple::{Elem, decode, versionstamp_version};
    match decode(key)?.last() {
        Some(Elem::Versionstamp(vs)) => Some(versionstamp_version(vs)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_parse_back() {
        let k = object_of(&binding("acme/eng", Some("docs"), "b-1")).unwrap();
        assert_eq!(
            k,
            ObjectKey {
                tenant: "acme/eng".into(),
                vault: Some("docs".into()),
                object: "binding b-1".into()
            }
        );
        assert_eq!(object_of(&role("acme", None, "reader")).unwrap().vault, None);
        assert_eq!(object_of(&tenant("acme")).unwrap().object, "tenant");
        assert_eq!(
            object_of(&vault("acme", "docs")).unwrap().vault.as_deref(),
            Some("docs")
        );
        assert_eq!(
            object_of(&membership("a", None, "group:g", "user:u")).unwrap().object,
            "membership group:g user:u"
        );
        assert_eq!(object_of(&store_id()), None);
        assert_eq!(
            binding_id_of_subject_row(&binding_by_subject("a", None, "user:u", "b-9")).as_deref(),
            Some("b-9")
        );
        assert_eq!(
            group_of_member_row(&member_of("a", None, "user:u", "group:g")).as_deref(),
            Some("group:g")
        );
        assert_eq!(
            expiry_of(&expiry(5, "a/b", Some("v"), "b-1")),
            Some(ExpiryRow {
                tenant: "a/b".into(),
                vault: Some("v".into()),
                id: "b-1".into()
            })
        );
        assert_eq!(log_scope_of(&log_at("a", None, 7)), Some(("a".into(), None)));
        assert_eq!(version_of(&log_at("a", Some("v"), 7)), Some(7));
    }
}
