//! Read-your-writes: the newest revision this client wrote, per tenant.
//!
//! A write to a tenant changes what checks in it and in its descendants
//! answer (a role or binding defined on `acme` applies in `acme/eng`), so the
//! token a read needs is the newest written to its tenant or any ancestor.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::pb;

/// At most this many tenants are remembered one by one; past it they are
/// folded into one floor that every tenant's reads wait for, which is still
/// correct (a newer token than needed only waits a little longer).
const MAX_TENANTS: usize = 10_000;

/// The newest revision written per tenant (shared by a client's clones).
#[derive(Debug, Default)]
pub(crate) struct Freshness {
    inner: Mutex<Tokens>,
}

#[derive(Debug, Default)]
struct Tokens {
    by_tenant: HashMap<String, u64>,
    floor: u64,
}

/// The revision inside a token (`v1.` and 16 hex digits); tokens of another
/// shape are not compared (and so not remembered).
pub(crate) fn revision_of(token: &str) -> Option<u64> {
    let hex = token.strip_prefix("v1.")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

pub(crate) fn token_of(revision: u64) -> String {
    format!("v1.{revision:016x}")
}

impl Freshness {
    /// Remembers that `tenant` was written at `token`.
    pub(crate) fn wrote(&self, tenant: &str, token: &str) {
        let Some(rev) = revision_of(token) else { return };
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if t.by_tenant.len() >= MAX_TENANTS && !t.by_tenant.contains_key(tenant) {
            let newest = t.by_tenant.values().copied().max().unwrap_or(0);
            t.floor = t.floor.max(newest);
            t.by_tenant.clear();
        }
        let e = t.by_tenant.entry(tenant.to_string()).or_default();
        *e = (*e).max(rev);
    }

    /// The newest revision a read in `tenant` must see: the newest written
    /// to it or an ancestor. `None` when this client wrote none of them.
    pub(crate) fn needed(&self, tenant: &str) -> Option<u64> {
        let t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut best = t.floor;
        let mut prefix = tenant;
        loop {
            if let Some(r) = t.by_tenant.get(prefix) {
                best = best.max(*r);
            }
            match prefix.rfind('/') {
                Some(i) => prefix = &prefix[..i],
                None => break,
            }
        }
        (best > 0).then_some(best)
    }
}

/// A write request names the tenant it changes.
pub(crate) trait WritesTenant {
    fn tenant(&self) -> &str;
}

/// A write response carries the revision it committed at.
pub(crate) trait WrittenAt {
    fn written_at(&self) -> &str;
}

macro_rules! writes {
    ($($req:ty => |$r:ident| $tenant:expr;)*) => {
        $(impl WritesTenant for $req {
            fn tenant(&self) -> &str {
                let $r = self;
                $tenant
            }
        })*
    };
}

writes! {
    pb::ApplyTenantRequest => |r| r.tenant.as_ref().map_or("", |t| t.id.as_str());
    pb::DeleteTenantRequest => |r| &r.id;
    pb::ApplyVaultRequest => |r| r.vault.as_ref().map_or("", |v| v.tenant.as_str());
    pb::DeleteVaultRequest => |r| &r.tenant;
    pb::ApplyRoleRequest => |r| r.role.as_ref().map_or("", |v| v.tenant.as_str());
    pb::DeleteRoleRequest => |r| &r.tenant;
    pb::WriteBindingsRequest => |r| &r.tenant;
    pb::WriteMembershipsRequest => |r| &r.tenant;
}

impl WrittenAt for pb::ApplyTenantResponse {
    fn written_at(&self) -> &str {
        &self.revision
    }
}
impl WrittenAt for pb::ApplyVaultResponse {
    fn written_at(&self) -> &str {
        &self.revision
    }
}
impl WrittenAt for pb::ApplyRoleResponse {
    fn written_at(&self) -> &str {
        &self.revision
    }
}
impl WrittenAt for pb::DeleteResponse {
    fn written_at(&self) -> &str {
        &self.revision
    }
}
impl WrittenAt for pb::WriteResponse {
    fn written_at(&self) -> &str {
        &self.written_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_needs_the_newest_write_of_its_tenant_and_ancestors() {
        let f = Freshness::default();
        assert_eq!(f.needed("acme"), None);
        f.wrote("acme", &token_of(5));
        f.wrote("acme/eng", &token_of(9));
        f.wrote("acme/eng", &token_of(7));
        f.wrote("acme/sales", &token_of(12));
        assert_eq!(f.needed("acme"), Some(5));
        assert_eq!(f.needed("acme/eng"), Some(9));
        assert_eq!(f.needed("acme/eng/platform"), Some(9));
        assert_eq!(f.needed("acme/sales"), Some(12));
        // `acme/engineering` is not under `acme/eng`.
        assert_eq!(f.needed("acme/engineering"), Some(5));
        assert_eq!(f.needed("globex"), None);
        f.wrote("globex", "not a token");
        assert_eq!(f.needed("globex"), None);
    }

    #[test]
    fn past_the_bound_tenants_fold_into_a_floor() {
        let f = Freshness::default();
        for i in 0..MAX_TENANTS as u64 {
            f.wrote(&format!("t{i}"), &token_of(i + 1));
        }
        f.wrote("late", &token_of(3));
        assert!(f.inner.lock().unwrap().by_tenant.len() == 1);
        // Every tenant now waits for the newest folded write.
        assert_eq!(f.needed("t1"), Some(MAX_TENANTS as u64));
        assert_eq!(f.needed("late"), Some(MAX_TENANTS as u64));
    }

    #[test]
    fn tokens_round_trip() {
        assert_eq!(revision_of(&token_of(0xabc)), Some(0xabc));
        assert_eq!(revision_of("v1.abc"), None);
        assert_eq!(revision_of("v2.0000000000000abc"), None);
    }
}
