//! Every tenant field of every request, nested objects included, so a key
//! confined to a subtree is checked against all of them before anything is
//! read or written. A nested object's empty tenant means the request's, so
//! only non-empty ones are listed.
//!
//! A request type without an impl here cannot be confined by accident:
//! every handler calls [`TenantFields::tenant_fields`] through
//! `Caller::require_fields`.

use std::borrow::Cow;

use portcullis_proto::v1 as pb;

/// (field path, tenant) pairs of a request. Top-level paths are static, so
/// a check pays no allocation for them.
pub type Fields<'a> = Vec<(Cow<'static, str>, &'a str)>;

pub trait TenantFields {
    fn tenant_fields(&self) -> Fields<'_>;
}

fn one<'a>(field: &'static str, t: &'a str) -> Fields<'a> {
    vec![(Cow::Borrowed(field), t)]
}

fn nested<'a>(out: &mut Fields<'a>, field: impl Into<Cow<'static, str>>, t: &'a str) {
    if !t.is_empty() {
        out.push((field.into(), t));
    }
}

impl TenantFields for pb::ApplyTenantRequest {
    fn tenant_fields(&self) -> Fields<'_> {
        self.tenant
            .as_ref()
            .map(|t| one("tenant.id", &t.id))
            .unwrap_or_default()
    }
}
impl TenantFields for pb::GetTenantRequest {
    fn tenant_fields(&self) -> Fields<'_> {
        one("id", &self.id)
    }
}
impl TenantFields for pb::DeleteTenantRequest {
    fn tenant_fields(&self) -> Fields<'_> {
        one("id", &self.id)
    }
}
impl TenantFields for pb::ListTenantsRequest {
    fn tenant_fields(&self) -> Fields<'_> {
        let mut out = Vec::new();
        nested(&mut out, "under", &self.under);
        out
    }
}
impl TenantFields for pb::ApplyVaultRequest {
    fn tenant_fields(&self) -> Fields<'_> {
        self.vault
            .as_ref()
            .map(|v| one("vault.tenant", &v.tenant))
            .unwrap_or_default()
    }
}
impl TenantFields for pb::ApplyRoleRequest {
    fn tenant_fields(&self) -> Fields<'_> {
        self.role
            .as_ref()
            .map(|r| one("role.tenant", &r.tenant))
            .unwrap_or_default()
    }
}

macro_rules! top_level {
    ($($t:ty),*) => {$(
        impl TenantFields for $t {
            fn tenant_fields(&self) -> Fields<'_> {
                one("tenant", &self.tenant)
            }
        }
    )*};
}

top_level!(
    pb::GetVaultRequest,
    pb::ListVaultsRequest,
    pb::DeleteVaultRequest,
    pb::GetRoleRequest,
    pb::ListRolesRequest,
    pb::DeleteRoleRequest,
    pb::ListBindingsRequest,
    pb::ListMembershipsRequest,
    pb::ExportVaultRequest,
    pb::WatchRequest,
    pb::CheckPermissionRequest,
    pb::CheckBulkPermissionsRequest,
    pb::LookupResourcesRequest,
    pb::LookupSubjectsRequest,
    pb::GetEffectivePermissionsRequest
);

impl TenantFields for pb::WriteBindingsRequest {
    fn tenant_fields(&self) -> Fields<'_> {
        let mut out = one("tenant", &self.tenant);
        for (i, b) in self.upserts.iter().enumerate() {
            nested(&mut out, format!("upserts[{i}].tenant"), &b.tenant);
        }
        out
    }
}
impl TenantFields for pb::WriteMembershipsRequest {
    fn tenant_fields(&self) -> Fields<'_> {
        let mut out = one("tenant", &self.tenant);
        for (name, list) in [("upserts", &self.upserts), ("deletes", &self.deletes)] {
            for (i, m) in list.iter().enumerate() {
                nested(&mut out, format!("{name}[{i}].tenant"), &m.tenant);
            }
        }
        out
    }
}

impl TenantFields for pb::PlanChangesRequest {
    fn tenant_fields(&self) -> Fields<'_> {
        let mut out = Fields::new();
        for (i, t) in self.tenants.iter().enumerate() {
            nested(&mut out, format!("tenants[{i}].id"), &t.id);
        }
        for (i, x) in self.vaults.iter().enumerate() {
            nested(&mut out, format!("vaults[{i}].tenant"), &x.tenant);
        }
        for (i, x) in self.roles.iter().enumerate() {
            nested(&mut out, format!("roles[{i}].tenant"), &x.tenant);
        }
        for (i, x) in self.bindings.iter().enumerate() {
            nested(&mut out, format!("bindings[{i}].tenant"), &x.tenant);
        }
        for (name, list) in [
            ("memberships", &self.memberships),
            ("delete_memberships", &self.delete_memberships),
        ] {
            for (i, m) in list.iter().enumerate() {
                nested(&mut out, format!("{name}[{i}].tenant"), &m.tenant);
            }
        }
        for (i, t) in self.delete_tenants.iter().enumerate() {
            nested(&mut out, format!("delete_tenants[{i}]"), t);
        }
        for (name, list) in [
            ("delete_vaults", &self.delete_vaults),
            ("delete_roles", &self.delete_roles),
            ("delete_bindings", &self.delete_bindings),
        ] {
            for (i, o) in list.iter().enumerate() {
                nested(&mut out, format!("{name}[{i}].tenant"), &o.tenant);
            }
        }
        for (i, p) in self.probes.iter().enumerate() {
            nested(&mut out, format!("probes[{i}].tenant"), &p.tenant);
        }
        out
    }
}

/// One message of an import stream; `i` is its position in the stream.
pub fn import_fields(i: usize, m: &pb::ImportVaultRequest) -> Fields<'_> {
    use pb::import_vault_request::Item;
    let mut out = Vec::new();
    nested(&mut out, "tenant", &m.tenant);
    match &m.item {
        Some(Item::Role(r)) => nested(&mut out, format!("items[{i}].role.tenant"), &r.tenant),
        Some(Item::Binding(b)) => nested(&mut out, format!("items[{i}].binding.tenant"), &b.tenant),
        Some(Item::Membership(x)) => nested(&mut out, format!("items[{i}].membership.tenant"), &x.tenant),
        None => {}
    }
    out
}
