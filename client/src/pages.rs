//! Reading every page of a list.

use crate::{Client, Error, pb};

/// Every page of one list RPC, concatenated.
macro_rules! list_all {
    ($($(#[$doc:meta])* $all:ident: $call:ident($req:ty) -> $items:ident: $item:ty;)*) => {
        impl Client {
            $(
                $(#[$doc])*
                pub async fn $all(&self, mut request: $req) -> Result<Vec<$item>, Error> {
                    let mut out = Vec::new();
                    loop {
                        let page = self.$call(request.clone()).await?;
                        out.extend(page.$items);
                        if page.next_page_token.is_empty() {
                            return Ok(out);
                        }
                        request.page_token = page.next_page_token;
                    }
                }
            )*
        }
    };
}

list_all! {
    /// Every tenant the request selects, all pages.
    list_all_tenants: list_tenants(pb::ListTenantsRequest) -> tenants: pb::Tenant;
    /// Every vault of a tenant, all pages.
    list_all_vaults: list_vaults(pb::ListVaultsRequest) -> vaults: pb::Vault;
    /// Every role the request selects, all pages.
    list_all_roles: list_roles(pb::ListRolesRequest) -> roles: pb::Role;
    /// Every binding the request selects, all pages.
    list_all_bindings: list_bindings(pb::ListBindingsRequest) -> bindings: pb::Binding;
    /// Every membership the request selects, all pages.
    list_all_memberships: list_memberships(pb::ListMembershipsRequest) -> memberships: pb::Membership;
}
