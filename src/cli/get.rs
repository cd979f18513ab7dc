//! `portcullis get` and `portcullis describe`: reading objects back, as
//! kubectl does: aligned columns (`-o table`, `-o wide` with more of
//! them), or manifest documents (`-o yaml`, `-o json`) that `apply -f`
//! reads back.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use portcullis_client::pb;

use super::{ClientArgs, connect};
use crate::api::convert;
use crate::manifest::{self, Document};

/// What `get` and `describe` read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(alias = "tenant")]
    Tenants,
    #[value(alias = "vault")]
    Vaults,
    #[value(alias = "role")]
    Roles,
    #[value(alias = "binding")]
    Bindings,
    #[value(alias = "membership")]
    Memberships,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
}

/// Which objects: what `get` and `describe` both take.
#[derive(Debug, Args)]
pub struct Select {
    #[command(flatten)]
    pub client: ClientArgs,
    pub kind: Kind,
    /// One object: a tenant id, vault or role name, binding id, or group.
    pub name: Option<String>,
    /// The tenant (required but for tenants; for tenants, list only its
    /// subtree).
    #[arg(long)]
    pub tenant: Option<String>,
    /// The vault (roles, bindings and memberships: empty for the
    /// tenant-wide ones).
    #[arg(long, default_value = "")]
    pub vault: String,
    /// Bindings of this subject, or memberships of this member.
    #[arg(long)]
    pub subject: Option<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub select: Select,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub select: Select,
}

/// The objects a `get` read.
enum Objects {
    Tenants(Vec<pb::Tenant>),
    Vaults(Vec<pb::Vault>),
    Roles(Vec<pb::Role>),
    Bindings(Vec<pb::Binding>),
    Memberships(Vec<pb::Membership>),
}

fn tenant_of(q: &Select) -> Result<&str> {
    q.tenant
        .as_deref()
        .with_context(|| format!("`{:?}` needs --tenant", q.kind).to_lowercase())
}

async fn fetch(q: &Select) -> Result<Objects> {
    let c = &connect(&q.client).await?;
    let vault = q.vault.clone();
    Ok(match q.kind {
        Kind::Tenants => Objects::Tenants(match q.name.as_deref() {
            Some(id) => vec![c.get_tenant(pb::GetTenantRequest { id: id.into() }).await?],
            None => {
                c.list_all_tenants(pb::ListTenantsRequest {
                    under: q.tenant.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .await?
            }
        }),
        Kind::Vaults => {
            let tenant = tenant_of(q)?.to_string();
            Objects::Vaults(match q.name.as_deref() {
                Some(n) => vec![c.get_vault(pb::GetVaultRequest { tenant, name: n.into() }).await?],
                None => {
                    c.list_all_vaults(pb::ListVaultsRequest {
                        tenant,
                        ..Default::default()
                    })
                    .await?
                }
            })
        }
        Kind::Roles => {
            let tenant = tenant_of(q)?.to_string();
            Objects::Roles(match q.name.as_deref() {
                Some(n) => vec![
                    c.get_role(pb::GetRoleRequest {
                        tenant,
                        vault,
                        name: n.into(),
                    })
                    .await?,
                ],
                None => {
                    c.list_all_roles(pb::ListRolesRequest {
                        tenant,
                        vault,
                        ..Default::default()
                    })
                    .await?
                }
            })
        }
        Kind::Bindings => {
            let mut all = c
                .list_all_bindings(pb::ListBindingsRequest {
                    tenant: tenant_of(q)?.into(),
                    vault,
                    subject: q.subject.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .await?;
            if let Some(id) = &q.name {
                all.retain(|b| b.id == *id);
                if all.is_empty() {
                    bail!("no binding {id:?} in {}{}", tenant_of(q)?, vault_suffix(&q.vault));
                }
            }
            Objects::Bindings(all)
        }
        Kind::Memberships => Objects::Memberships(
            c.list_all_memberships(pb::ListMembershipsRequest {
                tenant: tenant_of(q)?.into(),
                vault,
                group: q.name.clone().unwrap_or_default(),
                member: q.subject.clone().unwrap_or_default(),
                ..Default::default()
            })
            .await?,
        ),
    })
}

fn vault_suffix(v: &str) -> String {
    if v.is_empty() { String::new() } else { format!(":{v}") }
}

pub async fn get(a: GetArgs) -> Result<()> {
    let objects = fetch(&a.select).await?;
    print!("{}", render(&objects, a.output, a.select.name.is_some())?);
    Ok(())
}

pub async fn describe(a: DescribeArgs) -> Result<()> {
    print!("{}", describe_text(&fetch(&a.select).await?));
    Ok(())
}

/// Aligned columns, as kubectl prints them: written here because a table
/// without borders or wrapping is a dozen lines, not a dependency.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = width[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn status_name(s: i32) -> String {
    pb::TenantStatus::try_from(s)
        .map(|x| x.as_str_name().trim_start_matches("TENANT_STATUS_").to_string())
        .unwrap_or_else(|_| "?".into())
}

fn source_name(s: i32) -> String {
    pb::Source::try_from(s)
        .map(|x| x.as_str_name().trim_start_matches("SOURCE_").to_string())
        .unwrap_or_else(|_| "?".into())
}

fn grant_of(b: &pb::Binding) -> String {
    if b.role.is_empty() {
        format!("inline ({} statements)", b.statements.len())
    } else {
        b.role.clone()
    }
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

fn labels(l: &std::collections::HashMap<String, String>) -> String {
    let mut v: Vec<_> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    or_dash(&v.join(","))
}

fn rows(o: &Objects, wide: bool) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let extend = |mut h: Vec<&'static str>, more: &[&'static str]| {
        if wide {
            h.extend_from_slice(more);
        }
        h
    };
    match o {
        Objects::Tenants(ts_) => (
            extend(
                vec!["NAME", "STATUS", "REVISION"],
                &["DISPLAY NAME", "VAULTS", "ROLES", "BINDINGS", "LABELS"],
            ),
            ts_.iter()
                .map(|t| {
                    let mut r = vec![t.id.clone(), status_name(t.status), t.revision.clone()];
                    if wide {
                        let u = t.usage.unwrap_or_default();
                        r.extend([
                            or_dash(&t.display_name),
                            u.vaults.to_string(),
                            u.roles.to_string(),
                            u.bindings.to_string(),
                            labels(&t.labels),
                        ]);
                    }
                    r
                })
                .collect(),
        ),
        Objects::Vaults(vs) => (
            extend(vec!["TENANT", "NAME", "REVISION"], &["DISPLAY NAME", "LABELS"]),
            vs.iter()
                .map(|v| {
                    let mut r = vec![v.tenant.clone(), v.name.clone(), v.revision.clone()];
                    if wide {
                        r.extend([or_dash(&v.display_name), labels(&v.labels)]);
                    }
                    r
                })
                .collect(),
        ),
        Objects::Roles(rs) => (
            extend(
                vec!["TENANT", "VAULT", "NAME", "STATEMENTS", "REVISION"],
                &["INHERITS", "DESCRIPTION"],
            ),
            rs.iter()
                .map(|x| {
                    let mut r = vec![
                        x.tenant.clone(),
                        or_dash(&x.vault),
                        x.name.clone(),
                        x.statements.len().to_string(),
                        x.revision.clone(),
                    ];
                    if wide {
                        r.extend([or_dash(&x.inherits.join(",")), or_dash(&x.description)]);
                    }
                    r
                })
                .collect(),
        ),
        Objects::Bindings(bs) => (
            extend(
                vec!["TENANT", "VAULT", "ID", "SUBJECT", "GRANTS"],
                &["SCOPE", "CONDITION", "NOT BEFORE", "EXPIRES", "SOURCE"],
            ),
            bs.iter()
                .map(|b| {
                    let mut r = vec![
                        b.tenant.clone(),
                        or_dash(&b.vault),
                        b.id.clone(),
                        b.subject.clone(),
                        grant_of(b),
                    ];
                    if wide {
                        r.extend([
                            or_dash(&b.scope.join(",")),
                            or_dash(&b.condition),
                            ts(&b.not_before),
                            ts(&b.expires_at),
                            source_name(b.source),
                        ]);
                    }
                    r
                })
                .collect(),
        ),
        Objects::Memberships(ms) => (
            extend(vec!["TENANT", "VAULT", "GROUP", "MEMBER"], &["SOURCE"]),
            ms.iter()
                .map(|m| {
                    let mut r = vec![m.tenant.clone(), or_dash(&m.vault), m.group.clone(), m.member.clone()];
                    if wide {
                        r.push(source_name(m.source));
                    }
                    r
                })
                .collect(),
        ),
    }
}

/// The objects as manifest documents; memberships of one group are one
/// document with all its members.
fn documents(o: &Objects) -> Result<Vec<Document>> {
    let bad = |e: crate::engine::Violations| anyhow::anyhow!("the server sent an invalid object: {e}");
    Ok(match o {
        Objects::Tenants(v) => v
            .iter()
            .map(|t| convert::tenant_from(t, "tenant").map(|t| manifest::tenant_doc(&t)))
            .collect::<Result<_, _>>()
            .map_err(bad)?,
        Objects::Vaults(v) => v
            .iter()
            .map(|x| convert::vault_from(x, "vault").map(|x| manifest::vault_doc(&x)))
            .collect::<Result<_, _>>()
            .map_err(bad)?,
        Objects::Roles(v) => v
            .iter()
            .map(|x| convert::role_from(x, "role").map(|x| manifest::role_doc(&x)))
            .collect::<Result<_, _>>()
            .map_err(bad)?,
        Objects::Bindings(v) => v
            .iter()
            .map(|x| convert::binding_from(x, "binding", &x.tenant, &x.vault).map(|x| manifest::binding_doc(&x)))
            .collect::<Result<_, _>>()
            .map_err(bad)?,
        Objects::Memberships(v) => {
            let mut docs: Vec<Document> = Vec::new();
            for m in v {
                let m = convert::membership_from(m, "membership", &m.tenant, &m.vault).map_err(bad)?;
                let doc = manifest::membership_doc(&m);
                match (docs.last_mut(), doc) {
                    (Some(Document::Membership { spec: last, .. }), Document::Membership { spec, .. })
                        if last.tenant == spec.tenant
                            && last.vault == spec.vault
                            && last.membership.group == spec.membership.group =>
                    {
                        last.membership.members.extend(spec.membership.members);
                    }
                    (_, doc) => docs.push(doc),
                }
            }
            docs
        }
    })
}

fn render(o: &Objects, format: Format, one: bool) -> Result<String> {
    Ok(match format {
        Format::Table | Format::Wide => {
            let (header, rows) = rows(o, format == Format::Wide);
            if rows.is_empty() {
                "No objects found.\n".into()
            } else {
                table(&header, &rows)
            }
        }
        Format::Yaml => manifest::to_yaml(&documents(o)?),
        Format::Json => {
            let docs = documents(o)?;
            let v = if one && docs.len() == 1 {
                serde_json::to_value(&docs[0])?
            } else {
                // kubectl's shape for several objects; `apply -f` reads it.
                serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": docs })
            };
            serde_json::to_string_pretty(&v)? + "\n"
        }
    })
}

fn statement_lines(out: &mut String, statements: &[pb::Statement]) {
    for (i, s) in statements.iter().enumerate() {
        let effect = pb::Effect::try_from(s.effect)
            .map(|e| e.as_str_name().trim_start_matches("EFFECT_"))
            .unwrap_or("?");
        let sid = if s.sid.is_empty() {
            format!("#{i}")
        } else {
            s.sid.clone()
        };
        out.push_str(&format!(
            "  {sid}: {effect} {} on {}\n",
            s.actions.join(", "),
            s.resources.join(", ")
        ));
        if !s.condition.is_empty() {
            out.push_str(&format!("    when {}\n", s.condition));
        }
    }
}

fn describe_text(o: &Objects) -> String {
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: &str| out.push_str(&format!("{:<14}{}\n", format!("{k}:"), or_dash(v)));
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !std::mem::take(&mut first) {
            out.push('\n');
        }
    };
    match o {
        Objects::Tenants(v) => {
            for t in v {
                sep(&mut out);
                field(&mut out, "Tenant", &t.id);
                field(&mut out, "Display name", &t.display_name);
                field(&mut out, "Status", &status_name(t.status));
                field(&mut out, "Revision", &t.revision);
                field(&mut out, "Labels", &labels(&t.labels));
                if let Some(u) = &t.usage {
                    field(
                        &mut out,
                        "Usage",
                        &format!("{} vaults, {} roles, {} bindings", u.vaults, u.roles, u.bindings),
                    );
                }
                if let Some(l) = &t.limits {
                    let n = |x: u32| if x == 0 { "unlimited".to_string() } else { x.to_string() };
                    field(
                        &mut out,
                        "Limits",
                        &format!(
                            "vaults {}, roles {}, bindings {}, tenants {}, checks/s {}, writes/s {}",
                            n(l.max_vaults),
                            n(l.max_roles),
                            n(l.max_bindings),
                            n(l.max_tenants),
                            n(l.max_checks_per_second),
                            n(l.max_writes_per_second)
                        ),
                    );
                }
            }
        }
        Objects::Vaults(v) => {
            for x in v {
                sep(&mut out);
                field(&mut out, "Vault", &x.name);
                field(&mut out, "Tenant", &x.tenant);
                field(&mut out, "Display name", &x.display_name);
                field(&mut out, "Revision", &x.revision);
                field(&mut out, "Labels", &labels(&x.labels));
            }
        }
        Objects::Roles(v) => {
            for x in v {
                sep(&mut out);
                field(&mut out, "Role", &x.name);
                field(&mut out, "Tenant", &x.tenant);
                field(&mut out, "Vault", &x.vault);
                field(&mut out, "Description", &x.description);
                field(&mut out, "Inherits", &x.inherits.join(", "));
                field(&mut out, "Revision", &x.revision);
                field(&mut out, "Labels", &labels(&x.labels));
                out.push_str("Statements:\n");
                statement_lines(&mut out, &x.statements);
            }
        }
        Objects::Bindings(v) => {
            for b in v {
                sep(&mut out);
                field(&mut out, "Binding", &b.id);
                field(&mut out, "Tenant", &b.tenant);
                field(&mut out, "Vault", &b.vault);
                field(&mut out, "Subject", &b.subject);
                field(&mut out, "Role", &b.role);
                field(&mut out, "Scope", &b.scope.join(", "));
                field(&mut out, "Condition", &b.condition);
                field(&mut out, "Not before", &ts(&b.not_before));
                field(&mut out, "Expires", &ts(&b.expires_at));
                field(&mut out, "Source", &source_name(b.source));
                field(&mut out, "Labels", &labels(&b.labels));
                if !b.statements.is_empty() {
                    out.push_str("Statements:\n");
                    statement_lines(&mut out, &b.statements);
                }
            }
        }
        Objects::Memberships(v) => {
            let mut groups: Vec<(&str, &str, &str, Vec<&str>)> = Vec::new();
            for m in v {
                match groups.last_mut() {
                    Some(g) if (g.0, g.1, g.2) == (&m.tenant, &m.vault, &m.group) => g.3.push(&m.member),
                    _ => groups.push((&m.tenant, &m.vault, &m.group, vec![&m.member])),
                }
            }
            for (tenant, vault, group, members) in groups {
                sep(&mut out);
                field(&mut out, "Group", group);
                field(&mut out, "Tenant", tenant);
                field(&mut out, "Vault", vault);
                out.push_str(&format!("Members ({}):\n", members.len()));
                for m in members {
                    out.push_str(&format!("  {m}\n"));
                }
            }
        }
    }
    if out.is_empty() {
        out.push_str("No objects found.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_the_last_is_not_padded() {
        let t = table(
            &["NAME", "STATUS"],
            &[
                vec!["acme".into(), "ACTIVE".into()],
                vec!["acme/eng".into(), "SUSPENDED".into()],
            ],
        );
        assert_eq!(t, "NAME       STATUS\nacme       ACTIVE\nacme/eng   SUSPENDED\n");
    }
}
