//! `check`, `lookup-resources`, `lookup-subjects` and `effective`: asking
//! what is allowed, as text for a person or JSON (`-o json`) for a script.

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::TryStreamExt;
use portcullis_client::{Consistency, pb};
use serde_json::{Value, json};

use super::{ClientArgs, OutputFormat, connect};

/// Where and how fresh: the flags every question shares.
#[derive(Debug, Args)]
pub struct Scope {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub vault: String,
    /// Wait until the server has caught up to this revision token.
    #[arg(long)]
    pub at_least_as_fresh: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

impl Scope {
    fn consistency(&self) -> Consistency {
        self.at_least_as_fresh
            .clone()
            .map_or(Consistency::MinimizeLatency, Consistency::AtLeastAsFresh)
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub scope: Scope,
    #[arg(long)]
    pub subject: String,
    #[arg(long)]
    pub action: String,
    #[arg(long)]
    pub resource: String,
    /// Request attributes as a JSON object, for conditions' `context`.
    #[arg(long)]
    pub context: Option<String>,
    /// Print which statements applied.
    #[arg(long)]
    pub explain: bool,
}

#[derive(Debug, Args)]
pub struct LookupResourcesArgs {
    #[command(flatten)]
    pub scope: Scope,
    #[arg(long)]
    pub subject: String,
    #[arg(long)]
    pub action: String,
}

#[derive(Debug, Args)]
pub struct LookupSubjectsArgs {
    #[command(flatten)]
    pub scope: Scope,
    #[arg(long)]
    pub action: String,
    #[arg(long)]
    pub resource: String,
}

#[derive(Debug, Args)]
pub struct EffectiveArgs {
    #[command(flatten)]
    pub scope: Scope,
    #[arg(long)]
    pub subject: String,
}

fn effect(v: i32) -> String {
    pb::Effect::try_from(v)
        .map(|e| e.as_str_name().trim_start_matches("EFFECT_").to_string())
        .unwrap_or_else(|_| "?".into())
}

fn scope_name(tenant: &str, vault: &str) -> String {
    if vault.is_empty() {
        tenant.to_string()
    } else {
        format!("{tenant}:{vault}")
    }
}

pub async fn check(a: CheckArgs) -> Result<()> {
    let client = connect(&a.scope.client).await?;
    let mut check = client
        .check(&a.scope.tenant, &a.scope.vault, &a.subject, &a.action, &a.resource)
        .consistency(a.scope.consistency())
        .explain(a.explain);
    if let Some(j) = &a.context {
        let v: Value = serde_json::from_str(j).context("--context must be a JSON object")?;
        if !v.is_object() {
            bail!("--context must be a JSON object");
        }
        check = check.context_json(v)?;
    }
    let d = check.await?;
    let decision = if d.allowed { "ALLOWED" } else { "DENIED" };
    let reason = d.reason.as_str_name();
    if a.scope.output == OutputFormat::Json {
        let mut out = json!({
            "decision": decision,
            "reason": reason.trim_start_matches("REASON_"),
            "checkedAt": d.checked_at,
        });
        if let Some(ex) = &d.explanation {
            out["explanation"] = json!({
                "suspendedBy": ex.suspended_by,
                "entries": ex.entries.iter().map(|e| json!({
                    "bindingId": e.binding_id,
                    "bindingTenant": e.binding_tenant,
                    "bindingVault": e.binding_vault,
                    "principal": e.principal,
                    "groupPath": e.group_path,
                    "role": e.role,
                    "rolePath": e.role_path,
                    "sid": e.sid,
                    "index": e.index,
                    "effect": effect(e.effect),
                    "definedTenant": e.defined_tenant,
                    "definedVault": e.defined_vault,
                    "conditionError": (!e.message.is_empty()).then_some(&e.message),
                    "counted": e.counted,
                })).collect::<Vec<_>>(),
            });
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{decision} ({reason}) at {}", d.checked_at);
    if let Some(ex) = d.explanation {
        if !ex.suspended_by.is_empty() {
            println!("  tenant {} is suspended", ex.suspended_by);
        }
        for e in ex.entries {
            let stmt = if e.sid.is_empty() {
                format!("#{}", e.index)
            } else {
                e.sid.clone()
            };
            let outcome = if e.message.is_empty() {
                String::new()
            } else {
                format!(" CONDITION_ERROR: {}", e.message)
            };
            println!(
                "  {} binding {} ({}) via {} role {} statement {stmt}{}{outcome}",
                effect(e.effect),
                e.binding_id,
                scope_name(&e.binding_tenant, &e.binding_vault),
                e.group_path.join(" > "),
                e.role,
                if e.counted { "" } else { " (not counted)" }
            );
        }
    }
    Ok(())
}

fn rule_json(r: &portcullis_client::Rule) -> Value {
    json!({
        "scope": r.scope,
        "resources": r.resources,
        "conditions": r.conditions,
        "bindingId": r.binding_id,
        "role": r.role,
        "sid": r.sid,
        "index": r.index,
    })
}

pub async fn lookup_resources(a: LookupResourcesArgs) -> Result<()> {
    let client = connect(&a.scope.client).await?;
    let f = client
        .lookup_resources(&a.scope.tenant, &a.scope.vault, &a.subject, &a.action)
        .consistency(a.scope.consistency())
        .await?;
    let groups = [
        ("grants", &f.grants),
        ("denials", &f.denials),
        ("conditionalGrants", &f.conditional_grants),
        ("conditionalDenials", &f.conditional_denials),
    ];
    if a.scope.output == OutputFormat::Json {
        let mut out = json!({ "suspended": f.suspended, "checkedAt": f.checked_at });
        for (k, rules) in groups {
            out[k] = rules.iter().map(rule_json).collect();
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if f.suspended {
        println!("the tenant or an ancestor is suspended: nothing is allowed");
    }
    for (k, rules) in groups {
        for r in rules {
            let when = if r.conditions.is_empty() {
                String::new()
            } else {
                format!(" when {}", r.conditions.join(" && "))
            };
            println!(
                "{k:<19} {} in scope {} (binding {}, role {}){when}",
                r.resources.join(","),
                r.scope.join(","),
                r.binding_id,
                r.role
            );
        }
    }
    println!("at {}", f.checked_at);
    Ok(())
}

pub async fn lookup_subjects(a: LookupSubjectsArgs) -> Result<()> {
    let client = connect(&a.scope.client).await?;
    let subjects: Vec<pb::LookedUpSubject> = client
        .lookup_subjects(&a.scope.tenant, &a.scope.vault, &a.action, &a.resource)
        .consistency(a.scope.consistency())
        .stream()
        .try_collect()
        .await?;
    if a.scope.output == OutputFormat::Json {
        let list: Vec<Value> = subjects
            .iter()
            .map(|s| json!({ "subject": s.subject, "conditional": s.conditional }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "subjects": list }))?);
        return Ok(());
    }
    for s in subjects {
        println!("{}{}", s.subject, if s.conditional { " (conditional)" } else { "" });
    }
    Ok(())
}

fn effective_json(s: &pb::EffectiveStatement) -> Value {
    let st = s.statement.clone().unwrap_or_default();
    json!({
        "effect": effect(st.effect),
        "sid": st.sid,
        "actions": st.actions,
        "resources": st.resources,
        "condition": st.condition,
        "bindingId": s.binding_id,
        "bindingTenant": s.binding_tenant,
        "bindingVault": s.binding_vault,
        "bindingScope": s.binding_scope,
        "bindingCondition": s.binding_condition,
        "principal": s.principal,
        "groupPath": s.group_path,
        "role": s.role,
        "rolePath": s.role_path,
        "definedTenant": s.defined_tenant,
        "definedVault": s.defined_vault,
        "active": s.active,
    })
}

pub async fn effective(a: EffectiveArgs) -> Result<()> {
    let client = connect(&a.scope.client).await?;
    let mut stream = std::pin::pin!(
        client
            .effective_permissions(&a.scope.tenant, &a.scope.vault, &a.subject)
            .consistency(a.scope.consistency())
            .stream()
    );
    let json = a.scope.output == OutputFormat::Json;
    let mut all = Vec::new();
    while let Some(s) = stream.try_next().await? {
        if json {
            all.push(effective_json(&s));
            continue;
        }
        let st = s.statement.clone().unwrap_or_default();
        let via = if s.group_path.len() > 1 {
            format!(" via {}", s.group_path.join(" > "))
        } else {
            String::new()
        };
        println!(
            "{} {} on {} (binding {} in {}, role {}{via}){}",
            effect(st.effect),
            st.actions.join(","),
            st.resources.join(","),
            s.binding_id,
            scope_name(&s.binding_tenant, &s.binding_vault),
            s.role,
            if s.active { "" } else { " [not active now]" }
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&json!({ "statements": all }))?);
    }
    Ok(())
}
