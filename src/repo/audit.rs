//! The audit trail in the store: events appended inside each write's
//! transaction, listing, and verifying a tenant's chain.

use std::collections::HashMap;

use super::*;
use crate::audit::{self, Actor, Event, Link, Operation, Verified, Verifier};

/// One change a write makes and the object it replaces or removes.
#[derive(Debug, Clone)]
pub struct Logged {
    pub change: Change,
    /// The stored object before the change, as JSON; `None` when there was
    /// none (a CREATE).
    pub before: Option<serde_json::Value>,
}

impl Logged {
    pub fn new<T: Serialize>(change: Change, before: Option<&T>) -> Logged {
        Logged {
            change,
            before: before.map(|b| serde_json::to_value(b).unwrap_or(serde_json::Value::Null)),
        }
    }

    /// A change whose previous record could not be read.
    pub fn over_unreadable(change: Change) -> Logged {
        Logged {
            change,
            before: Some(serde_json::json!({ "unreadable_record": true })),
        }
    }

    /// What a write found under the key, as the event's `before`.
    pub(crate) fn over<T: Serialize>(change: Change, existing: &Existing<T>) -> Logged {
        match existing {
            Existing::Found(old, _) => Logged::new(change, Some(old)),
            Existing::Corrupt(_) => Logged::over_unreadable(change),
            Existing::Absent => Logged::new::<T>(change, None),
        }
    }
}

fn read_link(tx: &mut dyn Transaction, key: &[u8]) -> Result<Option<Link>> {
    match tx.get(key)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| corrupt(key, e)),
    }
}

/// The heads of the chains one transaction appends to, read once each.
#[derive(Default)]
struct Heads(HashMap<String, Link>);

impl Heads {
    /// Appends `event` to `chain` (setting its sequence and predecessor's
    /// hash). Reading the head makes concurrent writes to one chain
    /// conflict, so it has one order; the store retries the loser.
    fn append(&mut self, tx: &mut dyn Transaction, chain: &str, mut event: Event) -> Result<()> {
        let head = match self.0.remove(chain) {
            Some(h) => h,
            None => read_link(tx, &ks::audit_head(chain))?.unwrap_or_else(Link::genesis),
        };
        event.seq = head.seq + 1;
        event.prev_hash = head.hash;
        let json = serde_json::to_vec(&event).map_err(ServiceError::encoding("audit event"))?;
        tx.set_versionstamped_value(&ks::audit_event(chain, event.seq), ks::record(&json), 0);
        self.0.insert(
            chain.to_string(),
            Link {
                seq: event.seq,
                hash: audit::hash(&json),
            },
        );
        Ok(())
    }

    fn store(self, tx: &mut dyn Transaction) -> Result<()> {
        for (chain, head) in self.0 {
            let json = serde_json::to_vec(&head).map_err(ServiceError::encoding("audit head"))?;
            tx.set(&ks::audit_head(&chain), &json);
        }
        Ok(())
    }
}

/// Appends one event per change to its tenant's chain.
pub(crate) fn append_audit(tx: &mut dyn Transaction, actor: &Actor, logged: &[Logged]) -> Result<()> {
    let time_micros = Timestamp::now().0;
    let mut heads = Heads::default();
    for l in logged {
        let tenant = l.change.scope().tenant.to_string();
        let (vault, kind, name, after) = audit::describe(&l.change);
        let operation = match (&after, &l.before) {
            (None, _) => Operation::Delete,
            (Some(_), None) => Operation::Create,
            (Some(_), Some(_)) => Operation::Update,
        };
        let event = Event {
            seq: 0,
            time_micros,
            actor: actor.name.clone(),
            on_behalf_of: actor.on_behalf_of.clone(),
            certificate: actor.certificate.clone(),
            rpc: actor.rpc.clone(),
            tenant: tenant.clone(),
            vault,
            kind: kind.to_string(),
            name,
            operation,
            before: l.before.clone(),
            after,
            prev_hash: String::new(),
        };
        heads.append(tx, &tenant, event)?;
    }
    heads.store(tx)
}

/// A call refused before it could change anything.
#[derive(Debug, Clone)]
pub struct RefusedCall {
    pub time_micros: i64,
    pub actor: String,
    pub peer: Option<String>,
    /// The verified client certificate's subject, under mTLS.
    pub certificate: Option<String>,
    pub rpc: String,
    pub code: String,
    pub message: String,
}

/// Which events a listing returns.
#[derive(Debug, Clone)]
pub struct AuditQuery {
    /// The tenant (or [`audit::REFUSALS`]) whose chain is read.
    pub tenant: String,
    pub descendants: bool,
    pub vault: Option<String>,
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub operation: Option<Operation>,
    /// Microseconds since the epoch, inclusive from, exclusive until.
    pub from_time: Option<i64>,
    pub until_time: Option<i64>,
    /// Only events after this sequence (of the tenant asked for).
    pub after_seq: Option<u64>,
    pub newest_first: bool,
}

impl AuditQuery {
    fn matches(&self, e: &Event) -> bool {
        self.vault.as_ref().is_none_or(|v| e.vault.as_ref() == Some(v))
            && self.kind.as_ref().is_none_or(|k| e.kind == *k)
            && self.actor.as_ref().is_none_or(|a| e.actor == *a)
            && self.operation.is_none_or(|o| e.operation == o)
            && self.from_time.is_none_or(|t| e.time_micros >= t)
            && self.until_time.is_none_or(|t| e.time_micros < t)
    }
}

/// At most this many stored events are read for one page, matching or not,
/// so a filter that matches little cannot make one call scan a whole trail.
const SCAN_PER_PAGE: usize = 5000;

impl Repo {
    /// A page of a tenant's events (and its descendants', tenant by tenant
    /// in id order), each with its revision, and the next page's token
    /// (empty at the end). Events of one tenant come in sequence order.
    pub fn list_audit(&self, q: &AuditQuery, page_token: &str, size: u32) -> Result<(Vec<(Event, u64)>, String)> {
        let limit = page_size(size);
        let cursor = page_token_key(page_token)?;
        let t = q.tenant.as_str();
        let mut ranges = vec![tuple::prefix_range(&ks::audit_of_tenant(t))];
        if let Some(after) = q.after_seq {
            ranges[0].0 = ks::audit_event(t, after.saturating_add(1));
        }
        if q.descendants {
            ranges.push(tuple::prefix_range(&ks::audit_of_descendants(t)));
        }
        if q.newest_first {
            ranges.reverse();
        }
        let (r, _) = self.run(|tx| {
            let mut out = Vec::new();
            let mut scanned = 0;
            let mut last_key: Option<Vec<u8>> = None;
            for (begin, end) in &ranges {
                // Resume after the token, in the range that holds it.
                let (mut b, mut e) = (begin.clone(), end.clone());
                if let Some(c) = &cursor {
                    if q.newest_first {
                        if c < &b {
                            continue;
                        }
                        if c < &e {
                            e = c.clone();
                        }
                    } else {
                        if c >= &e {
                            continue;
                        }
                        if c >= &b {
                            b = c.clone();
                            b.push(0);
                        }
                    }
                }
                let rows = tx.range(
                    &b,
                    &e,
                    RangeOpts {
                        limit: SCAN_PER_PAGE - scanned + 1,
                        snapshot: true,
                        reverse: q.newest_first,
                    },
                )?;
                for (k, v) in rows {
                    if out.len() == limit || scanned == SCAN_PER_PAGE {
                        return Ok((out, last_key.map(hex::encode).unwrap_or_default()));
                    }
                    scanned += 1;
                    let (event, rev) = decode::<Event>(&k, &v)?;
                    if q.matches(&event) {
                        out.push((event, rev));
                    }
                    last_key = Some(k);
                }
            }
            Ok((out, String::new()))
        })?;
        Ok(r)
    }

    /// Records refused calls in the server-wide chain, one transaction for
    /// the batch; `dropped` refusals that found the queue full are counted
    /// on the first.
    pub fn record_refusals(&self, calls: &[RefusedCall], dropped: u64) -> Result<()> {
        self.run(|tx| {
            let mut heads = Heads::default();
            for (i, c) in calls.iter().enumerate() {
                let event = Event {
                    seq: 0,
                    time_micros: c.time_micros,
                    actor: c.actor.clone(),
                    on_behalf_of: None,
                    certificate: c.certificate.clone(),
                    rpc: c.rpc.clone(),
                    tenant: String::new(),
                    vault: None,
                    kind: "call".into(),
                    name: c.rpc.clone(),
                    operation: Operation::Refused,
                    before: None,
                    after: Some(serde_json::json!({
                        "code": c.code,
                        "message": c.message,
                        "peer": c.peer,
                        "dropped_before": if i == 0 { dropped } else { 0 },
                    })),
                    prev_hash: String::new(),
                };
                heads.append(tx, audit::REFUSALS, event)?;
            }
            heads.store(tx)
        })?;
        Ok(())
    }

    /// Recomputes a chain (a tenant's, or [`audit::REFUSALS`]) from its
    /// floor (where retention left it) to its head.
    pub fn verify_audit(&self, t: &str) -> Result<Verified> {
        const CHUNK: usize = 1000;
        let (floor, _) = self.run(|tx| read_link(tx, &ks::audit_floor(t)))?;
        let mut verifier = Verifier::new(floor.unwrap_or_else(Link::genesis));
        // Events are immutable once written, so the chunks see one chain.
        self.in_chunks(&ks::audit_of_tenant(t), CHUNK, |rows| {
            for (k, v) in rows {
                let seq = ks::audit_key_of(k).map(|(_, s)| s).unwrap_or(0);
                verifier.next(seq, ks::split_record(v).map_or(&b""[..], |(_, json)| json));
            }
            Ok(())
        })?;
        let (head, _) = self.run(|tx| read_link(tx, &ks::audit_head(t)))?;
        Ok(verifier.finish(head))
    }

    /// The days `chain`'s events are kept: the tenant's own setting, else
    /// its nearest ancestor's, else the default (a deleted tenant's events
    /// are kept by its ancestors' setting).
    fn audit_retention_days(&self, tx: &mut dyn Transaction, chain: &str) -> Result<u32> {
        if let Ok(t) = TenantId::parse(chain) {
            for a in t.lineage().iter().rev() {
                if let Some((tenant, _)) = read::<Tenant>(tx, &ks::tenant(a.as_str()))?
                    && tenant.limits.audit_retention_days > 0
                {
                    return Ok(tenant.limits.audit_retention_days);
                }
            }
        }
        Ok(DEFAULT_AUDIT_RETENTION_DAYS)
    }

    /// The leader's retention of the audit trail: removes every chain's
    /// events older than its retention (at `now_micros`), oldest first, and
    /// moves the chain's floor to the last removed one, so verification
    /// still starts from a known hash. Returns how many were removed.
    pub fn purge_audit(&self, epoch: u64, now_micros: i64) -> Result<u64> {
        const CHUNK: usize = 500;
        let (chains, _) = self.run(|tx| {
            let rows = range_prefix(tx, &ks::audit_heads(), RangeOpts::default())?;
            Ok(rows
                .iter()
                .filter_map(|(k, _)| ks::audit_head_chain(k))
                .collect::<Vec<_>>())
        })?;
        let mut total = 0;
        for chain in chains {
            loop {
                let (removed, _) = self.run(|tx| {
                    crate::lease::fence(tx, crate::lease::LEASE, epoch)?;
                    let days = self.audit_retention_days(tx, &chain)?;
                    let cutoff = now_micros.saturating_sub(i64::from(days) * 86_400_000_000);
                    let rows = range_prefix(tx, &ks::audit_of_tenant(&chain), RangeOpts::limit(CHUNK))?;
                    let mut floor = None;
                    let mut removed = 0usize;
                    for (k, v) in &rows {
                        let Some((_, json)) = ks::split_record(v) else { break };
                        // An event that does not decode stays, for verification to report.
                        let Ok(e) = serde_json::from_slice::<Event>(json) else {
                            break;
                        };
                        if e.time_micros >= cutoff {
                            break;
                        }
                        tx.clear(k);
                        floor = Some(Link {
                            seq: e.seq,
                            hash: audit::hash(json),
                        });
                        removed += 1;
                    }
                    if let Some(f) = floor {
                        let json = serde_json::to_vec(&f).map_err(ServiceError::encoding("audit floor"))?;
                        tx.set(&ks::audit_floor(&chain), &json);
                    }
                    Ok((removed, rows.len()))
                })?;
                total += removed.0 as u64;
                if removed.0 < CHUNK {
                    break;
                }
            }
        }
        Ok(total)
    }
}
