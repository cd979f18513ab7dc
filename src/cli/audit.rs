//! `portcullis audit list|verify|export`: reading the audit trail.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use portcullis_proto::v1 as pb;

use super::{ClientArgs, OutputFormat, connect};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print a tenant's events, oldest first (one line each, or JSON lines).
    List(ListArgs),
    /// Recompute a tenant's hash chain: exit 0 when intact, 1 when an event
    /// was changed or removed.
    Verify {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        tenant: String,
    },
    /// Write every event as JSON lines (for a SIEM), to a file or stdout.
    Export {
        #[command(flatten)]
        filter: Filter,
        /// The file to write; stdout when absent.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct Filter {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub tenant: String,
    /// Include every tenant below it.
    #[arg(long)]
    pub descendants: bool,
    #[arg(long, default_value = "")]
    pub vault: String,
    /// tenant, vault, role, binding or membership.
    #[arg(long, default_value = "")]
    pub kind: String,
    #[arg(long, default_value = "")]
    pub actor: String,
    /// RFC 3339; events at or after it.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339; events before it.
    #[arg(long)]
    pub until: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: Filter,
    #[arg(long)]
    pub newest_first: bool,
    /// At most this many events.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: OutputFormat,
}

fn timestamp(flag: &str, s: &Option<String>) -> Result<Option<prost_types::Timestamp>> {
    s.as_ref()
        .map(|s| {
            crate::engine::Timestamp::parse_rfc3339(s)
                .map(crate::api::convert::ts_to)
                .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
        })
        .transpose()
}

fn request(f: &Filter) -> Result<pb::ListAuditEventsRequest> {
    Ok(pb::ListAuditEventsRequest {
        tenant: f.tenant.clone(),
        include_descendants: f.descendants,
        vault: f.vault.clone(),
        kind: f.kind.clone(),
        actor: f.actor.clone(),
        from_time: timestamp("since", &f.since)?,
        until_time: timestamp("until", &f.until)?,
        page_size: 1000,
        ..Default::default()
    })
}

fn value_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_json).collect(),
        Some(Kind::StructValue(s)) => s.fields.iter().map(|(k, v)| (k.clone(), value_json(v))).collect(),
    }
}

fn operation(o: i32) -> &'static str {
    match pb::AuditOperation::try_from(o) {
        Ok(pb::AuditOperation::Create) => "CREATE",
        Ok(pb::AuditOperation::Update) => "UPDATE",
        Ok(pb::AuditOperation::Delete) => "DELETE",
        _ => "UNKNOWN",
    }
}

fn time(e: &pb::AuditEvent) -> String {
    e.time
        .as_ref()
        .and_then(|t| crate::engine::Timestamp::from_unix(t.seconds, t.nanos).ok())
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// One event as a JSON object, every field named as in the API.
pub fn event_json(e: &pb::AuditEvent) -> serde_json::Value {
    serde_json::json!({
        "seq": e.seq,
        "revision": e.revision,
        "time": time(e),
        "actor": e.actor,
        "on_behalf_of": e.on_behalf_of,
        "rpc": e.rpc,
        "tenant": e.tenant,
        "vault": e.vault,
        "kind": e.kind,
        "name": e.name,
        "operation": operation(e.operation),
        "before": e.before.as_ref().map(value_json),
        "after": e.after.as_ref().map(value_json),
        "prev_hash": e.prev_hash,
    })
}

fn line(e: &pb::AuditEvent) -> String {
    let scope = if e.vault.is_empty() {
        e.tenant.clone()
    } else {
        format!("{}:{}", e.tenant, e.vault)
    };
    let by = if e.on_behalf_of.is_empty() {
        e.actor.clone()
    } else {
        format!("{} for {}", e.actor, e.on_behalf_of)
    };
    format!(
        "{} {}#{} {} {} {} {} by {} ({})",
        time(e),
        e.tenant,
        e.seq,
        operation(e.operation),
        e.kind,
        e.name,
        scope,
        by,
        e.rpc
    )
}

pub async fn run(cmd: AuditCommand) -> Result<ExitCode> {
    match cmd {
        AuditCommand::List(a) => {
            let client = connect(&a.filter.client).await?;
            let mut req = request(&a.filter)?;
            req.newest_first = a.newest_first;
            let mut shown = 0;
            loop {
                let page = client.list_audit_events(req.clone()).await?;
                for e in &page.events {
                    if shown == a.limit {
                        return Ok(ExitCode::SUCCESS);
                    }
                    match a.output {
                        OutputFormat::Text => println!("{}", line(e)),
                        OutputFormat::Json => println!("{}", event_json(e)),
                    }
                    shown += 1;
                }
                if page.next_page_token.is_empty() {
                    return Ok(ExitCode::SUCCESS);
                }
                req.page_token = page.next_page_token;
            }
        }
        AuditCommand::Verify { client, tenant } => {
            let c = connect(&client).await?;
            let v = c
                .verify_audit_chain(pb::VerifyAuditChainRequest {
                    tenant: tenant.clone(),
                    refusals: false,
                })
                .await?;
            if v.intact {
                println!("{tenant}: {} events, chain intact", v.checked);
                Ok(ExitCode::SUCCESS)
            } else {
                println!(
                    "{tenant}: chain broken at event {}: {} ({} events checked)",
                    v.first_bad_seq, v.problem, v.checked
                );
                Ok(ExitCode::from(1))
            }
        }
        AuditCommand::Export { filter, file } => {
            let client = connect(&filter.client).await?;
            let mut req = request(&filter)?;
            let mut out: Box<dyn Write> = match &file {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut n = 0u64;
            loop {
                let page = client.list_audit_events(req.clone()).await?;
                for e in &page.events {
                    writeln!(out, "{}", event_json(e))?;
                    n += 1;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                req.page_token = page.next_page_token;
            }
            out.flush()?;
            if file.is_some() {
                eprintln!("{n} events written");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
