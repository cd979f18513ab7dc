//! Applying manifest documents: an ordered list of writes, each one
//! idempotent, so applying twice changes nothing the second time.
//!
//! Turning documents into writes (validation, ids, dependency order) is
//! `portcullis::manifest::writes_of`, next to the engine that validates
//! them; this is the part that talks to the server.

use std::fmt;

use crate::{Client, Error, pb};

/// One write of an apply, in the order it must happen: tenants (parents
/// first), vaults, roles, then memberships and bindings per scope.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Tenant(pb::ApplyTenantRequest),
    Vault(pb::ApplyVaultRequest),
    Role(pb::ApplyRoleRequest),
    Memberships(pb::WriteMembershipsRequest),
    Bindings(pb::WriteBindingsRequest),
}

/// What one write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `tenant acme`, `vault docs`, `role reader`, or the scope of a batch
    /// (`acme:docs`).
    pub object: String,
    /// The kind of object written.
    pub kind: &'static str,
    /// Whether anything changed (batches always count as written).
    pub changed: bool,
    /// Objects in a batch; 1 otherwise.
    pub count: u32,
    pub revision: String,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            "bindings" | "memberships" => write!(
                f,
                "{} {} in {} written at {}",
                self.count, self.kind, self.object, self.revision
            ),
            kind => write!(
                f,
                "{kind} {} {} at {}",
                self.object,
                if self.changed { "applied" } else { "unchanged" },
                self.revision
            ),
        }
    }
}

fn scope(tenant: &str, vault: &str) -> String {
    if vault.is_empty() {
        tenant.to_string()
    } else {
        format!("{tenant}:{vault}")
    }
}

impl Write {
    /// The object the write is about, for messages.
    pub fn object(&self) -> String {
        match self {
            Write::Tenant(r) => format!("Tenant {}", r.tenant.as_ref().map(|t| t.id.as_str()).unwrap_or("")),
            Write::Vault(r) => format!("Vault {}", r.vault.as_ref().map(|v| v.name.as_str()).unwrap_or("")),
            Write::Role(r) => format!("Role {}", r.role.as_ref().map(|v| v.name.as_str()).unwrap_or("")),
            Write::Memberships(r) => format!("memberships in {}", scope(&r.tenant, &r.vault)),
            Write::Bindings(r) => format!("bindings in {}", scope(&r.tenant, &r.vault)),
        }
    }
}

/// A write the server refused, and which one it was.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{object}: {error}")]
pub struct ApplyError {
    pub object: String,
    #[source]
    pub error: Error,
}

impl Client {
    /// Runs one write.
    pub async fn write(&self, w: &Write) -> Result<Applied, Error> {
        Ok(match w {
            Write::Tenant(r) => {
                let a = self.apply_tenant(r.clone()).await?;
                Applied {
                    object: r.tenant.as_ref().map(|t| t.id.clone()).unwrap_or_default(),
                    kind: "tenant",
                    changed: a.changed,
                    count: 1,
                    revision: a.revision,
                }
            }
            Write::Vault(r) => {
                let a = self.apply_vault(r.clone()).await?;
                Applied {
                    object: r.vault.as_ref().map(|v| v.name.clone()).unwrap_or_default(),
                    kind: "vault",
                    changed: a.changed,
                    count: 1,
                    revision: a.revision,
                }
            }
            Write::Role(r) => {
                let a = self.apply_role(r.clone()).await?;
                Applied {
                    object: r.role.as_ref().map(|v| v.name.clone()).unwrap_or_default(),
                    kind: "role",
                    changed: a.changed,
                    count: 1,
                    revision: a.revision,
                }
            }
            Write::Memberships(r) => {
                let a = self.write_memberships(r.clone()).await?;
                Applied {
                    object: scope(&r.tenant, &r.vault),
                    kind: "memberships",
                    changed: true,
                    count: a.upserted,
                    revision: a.written_at,
                }
            }
            Write::Bindings(r) => {
                let a = self.write_bindings(r.clone()).await?;
                Applied {
                    object: scope(&r.tenant, &r.vault),
                    kind: "bindings",
                    changed: true,
                    count: a.upserted,
                    revision: a.written_at,
                }
            }
        })
    }

    /// Runs the writes in order; stops at the first refusal.
    pub async fn apply(&self, writes: &[Write]) -> Result<Vec<Applied>, ApplyError> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(self.write(w).await.map_err(|error| ApplyError {
                object: w.object(),
                error,
            })?);
        }
        Ok(out)
    }
}
