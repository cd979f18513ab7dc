//! The audit trail's events and their hash chain, free of storage.
//!
//! Every committed admin write appends one event per changed object, in the
//! same transaction as the change (`repo::append_changelog`), to its
//! tenant's chain. An event stores the SHA-256 of its predecessor's stored
//! JSON, so an edited, reordered or removed event breaks the chain where it
//! happened; the chain's head (last sequence and hash) is stored beside it,
//! so a removed last event is noticed too. The revision in front of each
//! stored event (the commit's versionstamp) is set by the store at commit,
//! after the event is encoded, so it is outside the hash; the event's
//! sequence and time are inside.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::model::Change;

/// Who made a change: the API key's name (or `job:<name>` for the
/// leader's jobs), whom it acted for, and through which call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub name: String,
    /// From the `x-portcullis-on-behalf-of` request metadata: the operator
    /// names the Kubernetes object (`Role/team-a/doc-reader uid=…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    pub rpc: String,
    /// The subject of the client certificate mTLS verified, when the call
    /// came with one (with or without an API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

impl Actor {
    pub fn new(name: impl Into<String>, rpc: impl Into<String>) -> Actor {
        Actor {
            name: name.into(),
            on_behalf_of: None,
            rpc: rpc.into(),
            certificate: None,
        }
    }

    /// A background job of the leader.
    pub fn job(job: &str) -> Actor {
        Actor::new(format!("job:{job}"), job)
    }

    pub fn for_(mut self, on_behalf_of: Option<String>) -> Actor {
        self.on_behalf_of = on_behalf_of;
        self
    }

    pub fn with_certificate(mut self, subject: Option<String>) -> Actor {
        self.certificate = subject;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    Create,
    Update,
    Delete,
    /// An admin or audit call refused before it changed anything.
    Refused,
}

/// The server-wide chain of refused calls: not a tenant id (those start
/// with a letter or digit), so it never meets a tenant's chain.
pub const REFUSALS: &str = "_refused";

/// One audited change of one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the tenant's chain, from 1, in commit order.
    pub seq: u64,
    /// Microseconds since the Unix epoch, when the write was made.
    pub time_micros: i64,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// The verified client certificate's subject, under mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    pub rpc: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    /// tenant, vault, role, binding or membership.
    pub kind: String,
    /// The vault's or role's name, the binding id, `group member`, or the
    /// tenant id.
    pub name: String,
    pub operation: Operation,
    /// The object as stored before (absent for CREATE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    /// The object as stored after (absent for DELETE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
    /// The hex SHA-256 of the previous event's stored JSON; the chain's
    /// checkpoint for the first event kept; [`GENESIS`] for the first ever.
    pub prev_hash: String,
}

/// The `prev_hash` of a tenant's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash a successor stores: of the event's stored JSON, byte for byte.
pub fn hash(stored_json: &[u8]) -> String {
    hex::encode(Sha256::digest(stored_json))
}

/// A chain position: the last event's sequence and hash (the head), or the
/// last removed one's (the checkpoint retention leaves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub seq: u64,
    pub hash: String,
}

impl Link {
    pub fn genesis() -> Link {
        Link {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// What a change is, for its event: (vault, kind, name, object after).
pub fn describe(change: &Change) -> (Option<String>, &'static str, String, Option<serde_json::Value>) {
    fn json<T: Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
    }
    match change {
        Change::PutTenant(t) => (None, "tenant", t.id.to_string(), Some(json(t))),
        Change::DeleteTenant { tenant } => (None, "tenant", tenant.to_string(), None),
        Change::PutVault(v) => (Some(v.name.to_string()), "vault", v.name.to_string(), Some(json(v))),
        Change::DeleteVault { vault, .. } => (Some(vault.to_string()), "vault", vault.to_string(), None),
        Change::PutRole(r) => (
            r.vault.as_ref().map(|v| v.to_string()),
            "role",
            r.name.to_string(),
            Some(json(r)),
        ),
        Change::DeleteRole { scope, name } => (
            scope.vault.as_ref().map(|v| v.to_string()),
            "role",
            name.to_string(),
            None,
        ),
        Change::PutBinding(b) => (
            b.vault.as_ref().map(|v| v.to_string()),
            "binding",
            b.id.clone(),
            Some(json(b)),
        ),
        Change::DeleteBinding { scope, id } => {
            (scope.vault.as_ref().map(|v| v.to_string()), "binding", id.clone(), None)
        }
        Change::PutMembership(m) => (
            m.vault.as_ref().map(|v| v.to_string()),
            "membership",
            format!("{} {}", m.group, m.member),
            Some(json(m)),
        ),
        Change::DeleteMembership(m) => (
            m.vault.as_ref().map(|v| v.to_string()),
            "membership",
            format!("{} {}", m.group, m.member),
            None,
        ),
    }
}

/// The result of checking one tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verified {
    /// Events checked.
    pub checked: u64,
    /// The first sequence that does not hold, and why.
    pub first_bad: Option<(u64, String)>,
}

/// Checks a chain event by event, from a checkpoint (or the genesis).
#[derive(Debug)]
pub struct Verifier {
    last: Link,
    out: Verified,
}

impl Verifier {
    pub fn new(from: Link) -> Verifier {
        Verifier {
            last: from,
            out: Verified::default(),
        }
    }

    fn bad(&mut self, seq: u64, why: String) {
        if self.out.first_bad.is_none() {
            self.out.first_bad = Some((seq, why));
        }
    }

    /// The next stored event: its key's sequence and its stored JSON.
    pub fn next(&mut self, key_seq: u64, stored_json: &[u8]) {
        self.out.checked += 1;
        let expected = self.last.seq + 1;
        match serde_json::from_slice::<Event>(stored_json) {
            Err(e) => self.bad(key_seq, format!("the event does not decode: {e}")),
            Ok(e) => {
                if key_seq != expected {
                    self.bad(expected, format!("event {expected} is missing (the next is {key_seq})"));
                } else if e.seq != key_seq {
                    self.bad(key_seq, format!("the event says it is {}", e.seq));
                } else if e.prev_hash != self.last.hash {
                    // The predecessor was changed (or this event's record of it).
                    let prev = self.last.seq;
                    self.bad(
                        prev,
                        format!("event {prev} does not hash to what event {key_seq} recorded"),
                    );
                }
            }
        }
        self.last = Link {
            seq: key_seq,
            hash: hash(stored_json),
        };
    }

    /// Ends at the stored head: the last event must be the one it names.
    pub fn finish(mut self, head: Option<Link>) -> Verified {
        let head = head.unwrap_or_else(Link::genesis);
        if head != self.last {
            let seq = self.last.seq.max(head.seq);
            self.bad(
                seq,
                format!(
                    "the chain ends at event {} but its head names event {}",
                    self.last.seq, head.seq
                ),
            );
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, prev: &str) -> Vec<u8> {
        serde_json::to_vec(&Event {
            seq,
            time_micros: 1,
            actor: "admin".into(),
            on_behalf_of: None,
            certificate: None,
            rpc: "ApplyRole".into(),
            tenant: "acme".into(),
            vault: None,
            kind: "role".into(),
            name: "r".into(),
            operation: Operation::Create,
            before: None,
            after: Some(serde_json::json!({"x": seq})),
            prev_hash: prev.into(),
        })
        .unwrap()
    }

    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for s in 1..=n {
            let prev = out.last().map(|e| hash(e)).unwrap_or_else(|| GENESIS.into());
            out.push(event(s, &prev));
        }
        out
    }

    fn verify(events: &[(u64, Vec<u8>)], head: Link) -> Verified {
        let mut v = Verifier::new(Link::genesis());
        for (s, e) in events {
            v.next(*s, e);
        }
        v.finish(Some(head))
    }

    #[test]
    fn an_intact_chain_verifies_and_any_edit_is_found() {
        let c = chain(5);
        let head = Link {
            seq: 5,
            hash: hash(&c[4]),
        };
        let all: Vec<(u64, Vec<u8>)> = c.iter().cloned().enumerate().map(|(i, e)| (i as u64 + 1, e)).collect();
        assert_eq!(
            verify(&all, head.clone()),
            Verified {
                checked: 5,
                first_bad: None
            }
        );
        // An edited event: its successor's hash no longer matches.
        let mut edited = all.clone();
        edited[2].1 = String::from_utf8(edited[2].1.clone())
            .unwrap()
            .replace("admin", "mallory")
            .into_bytes();
        assert_eq!(verify(&edited, head.clone()).first_bad.unwrap().0, 3);
        // A removed event in the middle.
        let mut removed = all.clone();
        removed.remove(1);
        assert_eq!(verify(&removed, head.clone()).first_bad.unwrap().0, 2);
        // The last one removed: the head names it.
        let cut = &all[..4];
        let r = verify(cut, head);
        assert_eq!(r.first_bad.unwrap().0, 5);
    }
}
