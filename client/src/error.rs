//! A refused or failed call, with the server's typed reason.

use std::collections::HashMap;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// Why a call failed: the `google.rpc.ErrorInfo` reason the server sent
/// (documented in `proto/portcullis/v1/types.proto`). Callers branch on
/// this, never on the message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidArgument,
    MalformedRequest,
    TenantNotFound,
    VaultNotFound,
    RoleNotFound,
    AlreadyExists,
    RevisionMismatch,
    DependentsExist,
    RevisionCompacted,
    RevisionAhead,
    LimitExceeded,
    RateLimited,
    Overloaded,
    WatchStreamsExhausted,
    WatchFellBehind,
    Unauthenticated,
    ScopeMissing,
    TenantOutsideKey,
    ConfinementRoot,
    VaultQuarantined,
    /// The replica's shard does not serve the tenant ([`crate::shard`]).
    WrongShard,
    IndexLoading,
    IndexBehind,
    ShuttingDown,
    StoreConflict,
    CommitUnknown,
    StoreUnavailable,
    TransactionTooLarge,
    CorruptRecord,
    Fenced,
    Internal,
    /// The server could not be reached, or answered without an `ErrorInfo`
    /// (a proxy, or a transport failure).
    Unreachable,
    /// The client was misconfigured (an endpoint or key it cannot use).
    Config,
    /// A reason this client does not know (a newer server).
    Other(String),
}

const REASONS: &[(&str, Reason)] = &[
    ("INVALID_ARGUMENT", Reason::InvalidArgument),
    ("MALFORMED_REQUEST", Reason::MalformedRequest),
    ("TENANT_NOT_FOUND", Reason::TenantNotFound),
    ("VAULT_NOT_FOUND", Reason::VaultNotFound),
    ("ROLE_NOT_FOUND", Reason::RoleNotFound),
    ("ALREADY_EXISTS", Reason::AlreadyExists),
    ("REVISION_MISMATCH", Reason::RevisionMismatch),
    ("DEPENDENTS_EXIST", Reason::DependentsExist),
    ("REVISION_COMPACTED", Reason::RevisionCompacted),
    ("REVISION_AHEAD", Reason::RevisionAhead),
    ("LIMIT_EXCEEDED", Reason::LimitExceeded),
    ("RATE_LIMITED", Reason::RateLimited),
    ("OVERLOADED", Reason::Overloaded),
    ("WATCH_STREAMS_EXHAUSTED", Reason::WatchStreamsExhausted),
    ("WATCH_FELL_BEHIND", Reason::WatchFellBehind),
    ("UNAUTHENTICATED", Reason::Unauthenticated),
    ("SCOPE_MISSING", Reason::ScopeMissing),
    ("TENANT_OUTSIDE_KEY", Reason::TenantOutsideKey),
    ("CONFINEMENT_ROOT", Reason::ConfinementRoot),
    ("VAULT_QUARANTINED", Reason::VaultQuarantined),
    ("WRONG_SHARD", Reason::WrongShard),
    ("INDEX_LOADING", Reason::IndexLoading),
    ("INDEX_BEHIND", Reason::IndexBehind),
    ("SHUTTING_DOWN", Reason::ShuttingDown),
    ("STORE_CONFLICT", Reason::StoreConflict),
    ("COMMIT_UNKNOWN", Reason::CommitUnknown),
    ("STORE_UNAVAILABLE", Reason::StoreUnavailable),
    ("TRANSACTION_TOO_LARGE", Reason::TransactionTooLarge),
    ("CORRUPT_RECORD", Reason::CorruptRecord),
    ("FENCED", Reason::Fenced),
    ("INTERNAL", Reason::Internal),
];

impl Reason {
    /// The reason as the server spells it.
    pub fn parse(s: &str) -> Reason {
        REASONS
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| Reason::Other(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Reason::Unreachable => "UNREACHABLE",
            Reason::Config => "CONFIG",
            Reason::Other(s) => s,
            known => REASONS
                .iter()
                .find(|(_, r)| r == known)
                .map(|(name, _)| *name)
                .unwrap_or("UNKNOWN"),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One field that broke a rule (`google.rpc.BadRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field path in the request, e.g. `upserts[3].subject`.
    pub field: String,
    pub description: String,
}

/// A failed call: the gRPC code, the server's reason and the objects it
/// names, the field violations, and how long to wait when waiting helps.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{:?}: {}", self.0.code, self.0.message)]
pub struct Error(Box<Inner>);

// Boxed: an error is rare, a `Result` on every call.
#[derive(Debug, Clone)]
struct Inner {
    code: Code,
    message: String,
    reason: Reason,
    metadata: HashMap<String, String>,
    violations: Vec<Violation>,
    retry_after: Option<Duration>,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::local(Code::InvalidArgument, Reason::Config, message.into())
    }

    pub(crate) fn unreachable(message: impl Into<String>) -> Error {
        Error::local(Code::Unavailable, Reason::Unreachable, message.into())
    }

    fn local(code: Code, reason: Reason, message: String) -> Error {
        Error(Box::new(Inner {
            code,
            message,
            reason,
            metadata: HashMap::new(),
            violations: Vec::new(),
            retry_after: None,
        }))
    }

    pub fn code(&self) -> Code {
        self.0.code
    }

    pub fn message(&self) -> &str {
        &self.0.message
    }

    pub fn reason(&self) -> &Reason {
        &self.0.reason
    }

    /// An `ErrorInfo` metadata value (`tenant`, `vault`, `field`, ...).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.0.metadata.get(key).map(String::as_str)
    }

    pub fn violations(&self) -> &[Violation] {
        &self.0.violations
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }

    /// The error for a person at a terminal: the code, the message, the
    /// reason with what it names, and each field violation on its own line.
    pub fn report(&self) -> String {
        let mut out = format!("{:?}: {}", self.0.code, self.0.message);
        let mut named: Vec<_> = self.0.metadata.iter().collect();
        named.sort();
        out.push_str(&format!("\n  reason: {}", self.0.reason));
        for (k, v) in named {
            out.push_str(&format!(" {k}={v}"));
        }
        for v in &self.0.violations {
            out.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
        if let Some(d) = self.0.retry_after {
            out.push_str(&format!("\n  retry after {d:?}"));
        }
        out
    }

    /// Whether the server could not be reached or could not serve now
    /// (retrying later may succeed), rather than refusing the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.0.code,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        )
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        let details = s.get_error_details();
        let (reason, metadata) = match details.error_info() {
            Some(i) => (Reason::parse(&i.reason), i.metadata.clone()),
            None => (Reason::Unreachable, HashMap::new()),
        };
        let violations = details
            .bad_request()
            .map(|b| {
                b.field_violations
                    .iter()
                    .map(|v| Violation {
                        field: v.field.clone(),
                        description: v.description.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Error(Box::new(Inner {
            code: s.code(),
            message: s.message().to_string(),
            reason,
            metadata,
            violations,
            retry_after: details.retry_info().and_then(|r| r.retry_delay),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn every_reason_round_trips_and_unknown_ones_are_kept() {
        for (name, r) in REASONS {
            assert_eq!(Reason::parse(name), *r);
            assert_eq!(r.as_str(), *name);
        }
        assert_eq!(Reason::parse("NEW_THING"), Reason::Other("NEW_THING".into()));
        assert_eq!(Reason::Other("NEW_THING".into()).as_str(), "NEW_THING");
    }

    #[test]
    fn a_status_becomes_a_typed_error() {
        let mut d = ErrorDetails::new();
        d.set_error_info(
            "VAULT_NOT_FOUND",
            "portcullis.dev",
            HashMap::from([("vault".to_string(), "docs".to_string())]),
        );
        d.set_bad_request(vec![tonic_types::FieldViolation::new("spec.vault", "must exist")]);
        let s = tonic::Status::with_error_details(Code::FailedPrecondition, "vault docs does not exist", d);
        let e = Error::from(s);
        assert_eq!(e.reason(), &Reason::VaultNotFound);
        assert_eq!(e.metadata("vault"), Some("docs"));
        assert_eq!(e.violations()[0].field, "spec.vault");
        assert!(!e.is_unavailable());
        // No ErrorInfo: a transport failure or a proxy.
        let e = Error::from(tonic::Status::unavailable("connection refused"));
        assert_eq!(e.reason(), &Reason::Unreachable);
        assert!(e.is_unavailable());
    }
}
