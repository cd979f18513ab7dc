//! Documents as the writes that apply them, in dependency order: tenants
//! (parents first), vaults, roles, then memberships and bindings grouped by
//! scope in batches the server accepts. The client runs them
//! ([`portcullis_client::Client::apply`]).

use portcullis_client::Write;
use portcullis_proto::v1 as pb;

use super::*;
use crate::api::convert;

/// A document that does not describe valid objects.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{document}: {violations}")]
pub struct DocumentError {
    /// `Tenant acme`, `Vault docs`, `Binding`, ...
    pub document: String,
    pub violations: Violations,
}

fn bad(document: String) -> impl FnOnce(Violations) -> DocumentError {
    move |violations| DocumentError { document, violations }
}

/// The vault a Vault document declares.
pub fn vault_of(name: &str, spec: &VaultSpec, labels: &Labels) -> Result<Vault, Violations> {
    let mut v = Violations::new();
    let tenant = v.check("spec.tenant", TenantId::parse(&tenant_id_of_name(&spec.tenant)));
    let name = v.check("metadata.name", VaultName::parse(name));
    v.into_result()?;
    Ok(Vault {
        tenant: tenant.expect("checked"),
        name: name.expect("checked"),
        display_name: spec.display_name.clone(),
        labels: labels.clone(),
    })
}

/// The tenant and optional vault a standalone document names.
fn scope_of_doc(tenant: &str, vault: Option<&str>) -> Result<(TenantId, Option<VaultName>), Violations> {
    let mut v = Violations::new();
    let t = v.check("spec.tenant", TenantId::parse(&tenant_id_of_name(tenant)));
    let vn = match vault.filter(|s| !s.is_empty()) {
        Some(s) => v.check("spec.vault", VaultName::parse(s)),
        None => None,
    };
    v.into_result()?;
    Ok((t.expect("checked"), vn))
}

/// Bindings or memberships of one scope, in the order scopes first appear.
struct Batches<T>(Vec<((String, String), Vec<T>)>);

impl<T: Clone> Batches<T> {
    fn add(&mut self, t: &TenantId, v: Option<&VaultName>, item: T) {
        let key = (t.to_string(), v.map(|v| v.to_string()).unwrap_or_default());
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, l)) => l.push(item),
            None => self.0.push((key, vec![item])),
        }
    }

    fn writes(self, mut make: impl FnMut(String, String, Vec<T>) -> Write) -> Vec<Write> {
        let mut out = Vec::new();
        for ((t, v), list) in self.0 {
            for chunk in list.chunks(crate::repo::MAX_WRITE_BATCH) {
                out.push(make(t.clone(), v.clone(), chunk.to_vec()));
            }
        }
        out
    }
}

/// The objects documents declare, in dependency order: tenants parents
/// first, then vaults, roles, memberships and bindings as they appear.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    pub tenants: Vec<Tenant>,
    pub vaults: Vec<Vault>,
    pub roles: Vec<Role>,
    pub memberships: Vec<Membership>,
    pub bindings: Vec<Binding>,
}

/// The objects `docs` declare, each checked as a document (identifiers,
/// field paths); the first invalid document is the error.
pub fn objects_of(docs: &[Document]) -> Result<Objects, DocumentError> {
    let labels = Labels::new();
    let mut out = Objects::default();
    let mut tenants: Vec<(&Metadata, &TenantSpec)> = docs
        .iter()
        .filter_map(|d| match d {
            Document::Tenant { metadata, spec, .. } => Some((metadata, spec)),
            _ => None,
        })
        .collect();
    tenants.sort_by_key(|(m, _)| m.name.matches('.').count());
    for (metadata, spec) in tenants {
        out.tenants
            .push(tenant_of(&metadata.name, spec, &labels).map_err(bad(format!("Tenant {}", metadata.name)))?);
    }
    for d in docs {
        if let Document::Vault { metadata, spec, .. } = d {
            out.vaults
                .push(vault_of(&metadata.name, spec, &labels).map_err(bad(format!("Vault {}", metadata.name)))?);
        }
    }
    for d in docs {
        if let Document::Role { metadata, spec, .. } = d {
            out.roles
                .push(role_of(&metadata.name, spec, &labels).map_err(bad(format!("Role {}", metadata.name)))?);
        }
    }
    for d in docs {
        match d {
            Document::Vault { metadata, spec, .. } => {
                let what = format!("Vault {}", metadata.name);
                let v = vault_of(&metadata.name, spec, &labels).map_err(bad(what.clone()))?;
                for (i, b) in spec.bindings.iter().enumerate() {
                    let field = format!("spec.bindings[{i}]");
                    out.bindings.push(
                        binding_of(&field, &v.tenant, Some(&v.name), b, Source::Api, &labels)
                            .map_err(bad(what.clone()))?,
                    );
                }
                for (i, m) in spec.memberships.iter().enumerate() {
                    let field = format!("spec.memberships[{i}]");
                    out.memberships.extend(
                        memberships_of(&field, &v.tenant, Some(&v.name), m, Source::Api).map_err(bad(what.clone()))?,
                    );
                }
            }
            Document::Binding { spec, .. } => {
                let (t, v) = scope_of_doc(&spec.tenant, spec.vault.as_deref()).map_err(bad("Binding".into()))?;
                out.bindings.push(
                    binding_of("spec", &t, v.as_ref(), &spec.binding, Source::Api, &labels)
                        .map_err(bad("Binding".into()))?,
                );
            }
            Document::Membership { spec, .. } => {
                let (t, v) = scope_of_doc(&spec.tenant, spec.vault.as_deref()).map_err(bad("Membership".into()))?;
                out.memberships.extend(
                    memberships_of("spec", &t, v.as_ref(), &spec.membership, Source::Api)
                        .map_err(bad("Membership".into()))?,
                );
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The writes that apply `docs`, validated: the first invalid document is
/// refused before anything is written.
pub fn writes_of(docs: &[Document]) -> Result<Vec<Write>, DocumentError> {
    let objects = objects_of(docs)?;
    let mut out = Vec::new();
    for t in &objects.tenants {
        out.push(Write::Tenant(pb::ApplyTenantRequest {
            tenant: Some(convert::tenant_to(t, 0, None)),
            expected_revision: String::new(),
        }));
    }
    for v in &objects.vaults {
        out.push(Write::Vault(pb::ApplyVaultRequest {
            vault: Some(convert::vault_to(v, 0)),
            expected_revision: String::new(),
        }));
    }
    for r in &objects.roles {
        out.push(Write::Role(pb::ApplyRoleRequest {
            role: Some(convert::role_to(r, 0)),
            expected_revision: String::new(),
        }));
    }
    let mut memberships = Batches(Vec::new());
    for m in &objects.memberships {
        memberships.add(&m.tenant, m.vault.as_ref(), convert::membership_to(m));
    }
    let mut bindings = Batches(Vec::new());
    for b in &objects.bindings {
        bindings.add(&b.tenant, b.vault.as_ref(), convert::binding_to(b));
    }
    out.extend(memberships.writes(|tenant, vault, upserts| {
        Write::Memberships(pb::WriteMembershipsRequest {
            tenant,
            vault,
            upserts,
            deletes: vec![],
            replace_source: 0,
        })
    }));
    out.extend(bindings.writes(|tenant, vault, upserts| {
        Write::Bindings(pb::WriteBindingsRequest {
            tenant,
            vault,
            upserts,
            deletes: vec![],
            replace_source: 0,
        })
    }));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_come_in_dependency_order_and_batches_hold_their_scope() {
        let docs = parse_documents(include_str!("../../examples/acme.yaml")).unwrap();
        let writes = writes_of(&docs).unwrap();
        let rank = |w: &Write| match w {
            Write::Tenant(_) => 0,
            Write::Vault(_) => 1,
            Write::Role(_) => 2,
            Write::Memberships(_) => 3,
            Write::Bindings(_) => 4,
        };
        assert!(writes.windows(2).all(|p| rank(&p[0]) <= rank(&p[1])), "{writes:#?}");
        let tenants: Vec<&str> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Tenant(r) => r.tenant.as_ref().map(|t| t.id.as_str()),
                _ => None,
            })
            .collect();
        for (i, t) in tenants.iter().enumerate() {
            if let Some((parent, _)) = t.rsplit_once('/') {
                assert!(tenants[..i].contains(&parent), "{parent} before {t}");
            }
        }
        assert!(writes.iter().any(|w| matches!(w, Write::Bindings(_))));
    }

    #[test]
    fn an_invalid_document_names_itself_and_the_field() {
        let docs = parse_documents(
            "apiVersion: portcullis.dev/v1alpha1\nkind: Vault\nmetadata: { name: Bad_Name }\nspec: { tenant: acme }\n",
        )
        .unwrap();
        let e = writes_of(&docs).unwrap_err();
        assert_eq!(e.document, "Vault Bad_Name");
        assert_eq!(e.violations.0[0].field, "metadata.name");
    }
}
