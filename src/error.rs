//! The service's error type: what went wrong, in terms a caller can act on.
//! It is mapped to a gRPC status once, in `api::status`, with its
//! [`ServiceError::reason`] as the `google.rpc.ErrorInfo` reason.

use std::time::Duration;

use tonic::Code;

use crate::engine::{EngineError, Violations};
use crate::store::{StoreError, TxError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {0}")]
    Invalid(Violations),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
    /// A tenant field of the request lies outside the API key's subtrees.
    #[error("API key {key} is confined to tenants {confined_to} and cannot act on tenant {tenant:?} ({field})")]
    OutsideConfinement {
        key: String,
        confined_to: String,
        field: String,
        tenant: String,
    },
    /// A confined key tried to change the tenant at the top of its own
    /// subtree beyond its display name and labels.
    #[error("API key {key} is confined to tenant {tenant}: it may manage what is inside {tenant} but not {what}")]
    ConfinementRoot { key: String, tenant: String, what: String },
    #[error("{subject} may make {per_second} requests per second ({limit}); retry in {retry_after:?}")]
    RateLimited {
        limit: String,
        subject: String,
        per_second: u32,
        retry_after: Duration,
    },
    /// Too many expensive requests are queued already.
    #[error("the server is busy with {what} requests; retry in {retry_after:?}")]
    Overloaded { what: &'static str, retry_after: Duration },
    /// A stored record of the vault (or of a tenant above it) could not be
    /// read, so its decisions cannot be trusted until it is repaired.
    #[error("vault {vault} of tenant {tenant} is quarantined: {detail}; delete or overwrite the record to repair it")]
    Quarantined {
        tenant: String,
        vault: String,
        detail: String,
    },
    /// A write needs a tenant that does not exist (its parent, or the tenant
    /// of a vault, role, binding or membership).
    #[error("tenant {tenant} does not exist; create it before its {needed_by}")]
    TenantMissing { tenant: String, needed_by: String },
    /// A write needs a vault that does not exist.
    #[error("vault {vault} does not exist in tenant {tenant}; create it before its {needed_by}")]
    VaultMissing {
        tenant: String,
        vault: String,
        needed_by: String,
    },
    /// A job write of a leader that has been deposed.
    #[error("fenced: this replica led at epoch {epoch} but the lease is at epoch {current}; its write is rejected")]
    Fenced { epoch: u64, current: u64 },
    /// A consistency token newer than anything the store has committed.
    #[error("{field} {token} is ahead of the store (at {current}): it was not issued by this store")]
    RevisionAhead {
        field: &'static str,
        token: String,
        current: String,
    },
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> ServiceError {
        ServiceError::Invalid(Violations::single(field, rule))
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            ServiceError::Invalid(_) => Code::InvalidArgument,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::AlreadyExists(_) => Code::AlreadyExists,
            ServiceError::FailedPrecondition(_)
            | ServiceError::RevisionAhead { .. }
            | ServiceError::TenantMissing { .. }
            | ServiceError::VaultMissing { .. } => Code::FailedPrecondition,
            ServiceError::Aborted(_) | ServiceError::Fenced { .. } => Code::Aborted,
            ServiceError::ResourceExhausted(_) | ServiceError::RateLimited { .. } | ServiceError::Overloaded { .. } => {
                Code::ResourceExhausted
            }
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::PermissionDenied(_)
            | ServiceError::OutsideConfinement { .. }
            | ServiceError::ConfinementRoot { .. } => Code::PermissionDenied,
            ServiceError::Unavailable(_) | ServiceError::Quarantined { .. } => Code::Unavailable,
            ServiceError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ServiceError::Store(s) => match s {
                StoreError::Conflict => Code::Aborted,
                StoreError::TooLarge(_) => Code::ResourceExhausted,
                StoreError::Corrupt(_) => Code::DataLoss,
                StoreError::CommitUnknown | StoreError::Unavailable(_) | StoreError::Io(_) => Code::Unavailable,
            },
            ServiceError::Internal(_) => Code::Internal,
        }
    }

    /// The `ErrorInfo` reason: part of the API (documented in the proto),
    /// what callers branch on.
    pub fn reason(&self) -> &'static str {
        match self {
            ServiceError::Invalid(_) => "INVALID_ARGUMENT",
            ServiceError::NotFound(_) => "NOT_FOUND",
            ServiceError::AlreadyExists(_) => "ALREADY_EXISTS",
            ServiceError::FailedPrecondition(_) => "FAILED_PRECONDITION",
            ServiceError::Aborted(_) => "ABORTED",
            ServiceError::ResourceExhausted(_) => "LIMIT_EXCEEDED",
            ServiceError::Unauthenticated(_) => "UNAUTHENTICATED",
            ServiceError::PermissionDenied(_) => "PERMISSION_DENIED",
            ServiceError::Unavailable(_) => "UNAVAILABLE",
            ServiceError::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            ServiceError::Store(s) => match s {
                StoreError::Conflict => "STORE_CONFLICT",
                StoreError::CommitUnknown => "COMMIT_UNKNOWN",
                StoreError::Unavailable(_) | StoreError::Io(_) => "STORE_UNAVAILABLE",
                StoreError::TooLarge(_) => "TRANSACTION_TOO_LARGE",
                StoreError::Corrupt(_) => "CORRUPT_RECORD",
            },
            ServiceError::Internal(_) => "INTERNAL",
            ServiceError::OutsideConfinement { .. } => "TENANT_OUTSIDE_KEY",
            ServiceError::ConfinementRoot { .. } => "CONFINEMENT_ROOT",
            ServiceError::RateLimited { .. } => "RATE_LIMITED",
            ServiceError::Overloaded { .. } => "OVERLOADED",
            ServiceError::Quarantined { .. } => "VAULT_QUARANTINED",
            ServiceError::RevisionAhead { .. } => "REVISION_AHEAD",
            ServiceError::TenantMissing { .. } => "TENANT_NOT_FOUND",
            ServiceError::Fenced { .. } => "FENCED",
            ServiceError::VaultMissing { .. } => "VAULT_NOT_FOUND",
        }
    }

    /// The `ErrorInfo` metadata: the objects the error is about.
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        match self {
            ServiceError::OutsideConfinement {
                key,
                confined_to,
                field,
                tenant,
            } => vec![
                ("key", key.clone()),
                ("confined_to", confined_to.clone()),
                ("field", field.clone()),
                ("tenant", tenant.clone()),
            ],
            ServiceError::ConfinementRoot { key, tenant, .. } => vec![("key", key.clone()), ("tenant", tenant.clone())],
            ServiceError::RateLimited {
                limit,
                subject,
                per_second,
                ..
            } => vec![
                ("limit", limit.clone()),
                ("subject", subject.clone()),
                ("per_second", per_second.to_string()),
            ],
            ServiceError::Overloaded { what, .. } => vec![("pool", what.to_string())],
            ServiceError::Quarantined { tenant, vault, .. } => {
                vec![("tenant", tenant.clone()), ("vault", vault.clone())]
            }
            ServiceError::TenantMissing { tenant, .. } => vec![("tenant", tenant.clone())],
            ServiceError::VaultMissing { tenant, vault, .. } => {
                vec![("tenant", tenant.clone()), ("vault", vault.clone())]
            }
            ServiceError::RevisionAhead { field, token, current } => vec![
                ("field", field.to_string()),
                ("token", token.clone()),
                ("current", current.clone()),
            ],
            _ => Vec::new(),
        }
    }

    /// How long to wait before retrying, when waiting helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ServiceError::RateLimited { retry_after, .. } | ServiceError::Overloaded { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }
}

impl TxError for ServiceError {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            ServiceError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<EngineError> for ServiceError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(v) => ServiceError::Invalid(v),
            EngineError::TenantNotFound(_) | EngineError::VaultNotFound { .. } => ServiceError::NotFound(e.to_string()),
            EngineError::Quarantined { tenant, vault, detail } => ServiceError::Quarantined { tenant, vault, detail },
        }
    }
}

impl From<Violations> for ServiceError {
    fn from(v: Violations) -> Self {
        ServiceError::Invalid(v)
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;
