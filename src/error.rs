//! The service's error type: what went wrong, in terms a caller can act on.
//!
//! Each variant is named by what happened and carries the objects involved.
//! It becomes a gRPC status once (`impl From<ServiceError> for Status` in
//! [`crate::api::status`]): its [`code`](ServiceError::code), its message,
//! and a `google.rpc.ErrorInfo` whose [`reason`](ServiceError::reason) and
//! [`metadata`](ServiceError::metadata) are part of the API (listed in
//! `proto/portcullis/v1/types.proto`). Callers branch on the reason, never on
//! the message.

use std::time::Duration;

use tonic::Code;

use crate::engine::{EngineError, Violations};
use crate::store::{StoreError, TxError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    /// Fields broke rules; each violation names its field path.
    #[error("invalid request: {0}")]
    Invalid(Violations),

    /// The tenant a request reads or deletes does not exist.
    #[error("tenant {tenant} not found")]
    TenantNotFound { tenant: String },
    /// The vault a request reads, deletes or checks in does not exist.
    #[error("vault {vault} not found in tenant {tenant}")]
    VaultNotFound { tenant: String, vault: String },
    /// The role a request reads or deletes does not exist.
    #[error("role {role} not found in {scope}")]
    RoleNotFound { scope: String, role: String },
    /// A write needs a tenant that does not exist (its parent, or the tenant
    /// of a vault, role, binding or membership): create it first.
    #[error("tenant {tenant} does not exist; create it before its {needed_by}")]
    TenantRequired { tenant: String, needed_by: String },
    /// A write needs a vault that does not exist: create it first.
    #[error("vault {vault} does not exist in tenant {tenant}; create it before its {needed_by}")]
    VaultRequired {
        tenant: String,
        vault: String,
        needed_by: String,
    },

    /// `expected_revision` "0" (create only) and the object exists.
    #[error("{object} already exists at revision {current} (expected_revision \"0\" requires that it does not)")]
    AlreadyExists { object: String, current: String },
    /// `expected_revision` does not match the stored object's revision
    /// (`current` is `None` when the object does not exist).
    #[error("{}", revision_mismatch(object, expected, current.as_deref()))]
    RevisionMismatch {
        object: String,
        expected: String,
        current: Option<String>,
    },
    /// A delete of an object that others still need.
    #[error("{object} still has dependents ({}); delete them first", dependents.join(", "))]
    DependentsExist { object: String, dependents: Vec<String> },
    /// A tenant's (or an ancestor's) `limits.max_*` would be exceeded.
    #[error("{whose} may hold at most {max} {kind} (limits.max_{kind}); it holds {holds} and this write adds {adding}")]
    LimitExceeded {
        /// The tenant whose limit applies.
        tenant: String,
        /// How the message names it (it may be an ancestor of the written one).
        whose: String,
        kind: &'static str,
        max: u32,
        holds: u64,
        adding: u64,
    },
    /// A changelog position older than the changelog retains.
    #[error(
        "revision {after} is older than the changelog retains (it starts at {floor}); re-read the current state and watch from its revision"
    )]
    RevisionCompacted { after: String, floor: String },
    /// A consistency token newer than anything the store has committed.
    #[error("{field} {token} is ahead of the store (at {current}): it was not issued by this store")]
    RevisionAhead {
        field: &'static str,
        token: String,
        current: String,
    },

    /// No usable API key on a server that requires one.
    #[error("{why}")]
    Unauthenticated { why: &'static str },
    /// The key is valid but lacks the scope the service requires.
    #[error("API key {key} lacks the {scope} scope this service requires")]
    ScopeMissing { key: String, scope: &'static str },
    /// A tenant field of the request lies outside the API key's subtrees.
    #[error("API key {key} is confined to tenants {confined_to} and cannot act on tenant {tenant:?} ({field})")]
    OutsideConfinement {
        key: String,
        confined_to: String,
        field: String,
        tenant: String,
    },
    /// A key confined to several subtrees listed tenants without saying
    /// which subtree.
    #[error("API key {key} is confined to tenants {confined_to}; pass `under` with one of them")]
    UnderRequired { key: String, confined_to: String },
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
    /// The replica's shard does not serve the tenant: the caller routes
    /// by the shard map and should call the shard that does.
    #[error(
        "tenant {tenant} is not served by this shard (it serves {patterns}); call the shard the shard map names for it"
    )]
    WrongShard { tenant: String, patterns: String },
    /// The replica has not loaded its index yet.
    #[error("the index is still loading; retry shortly")]
    IndexLoading,
    /// The replica's index did not reach a required revision in time.
    #[error(
        "this replica's index is at revision {at} and did not reach {wanted} within {waited:?}; retry or use another replica"
    )]
    IndexBehind {
        at: String,
        wanted: String,
        waited: Duration,
    },
    /// The server is shutting down and takes no more work.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A stored record of the vault (or of a tenant above it) could not be
    /// read, so its decisions cannot be trusted until it is repaired.
    #[error("vault {vault} of tenant {tenant} is quarantined: {detail}; delete or overwrite the record to repair it")]
    Quarantined {
        tenant: String,
        vault: String,
        detail: String,
    },
    /// A job write of a leader that has been deposed.
    #[error("fenced: this replica led at epoch {epoch} but the lease is at epoch {current}; its write is rejected")]
    Fenced { epoch: u64, current: u64 },

    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record could not be encoded (a bug, never the caller's fault).
    #[error("internal error: cannot encode {what}: {detail}")]
    Encoding { what: &'static str, detail: String },
    /// Blocking work panicked or was cancelled.
    #[error("internal error: worker task failed: {detail}")]
    WorkerFailed { detail: String },
    /// A request reached a handler without passing authentication (a wiring bug).
    #[error("internal error: request reached a handler without authentication")]
    Unwired,
}

fn revision_mismatch(object: &str, expected: &str, current: Option<&str>) -> String {
    match current {
        Some(c) => format!("{object} is at revision {c}, not the expected {expected}"),
        None => format!("{object} does not exist (expected revision {expected})"),
    }
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> ServiceError {
        ServiceError::Invalid(Violations::single(field, rule))
    }

    /// An encoding failure of `what`.
    pub fn encoding(what: &'static str) -> impl FnOnce(serde_json::Error) -> ServiceError {
        move |e| ServiceError::Encoding {
            what,
            detail: e.to_string(),
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        use ServiceError as E;
        match self {
            E::Invalid(_) => Code::InvalidArgument,
            E::TenantNotFound { .. } | E::VaultNotFound { .. } | E::RoleNotFound { .. } => Code::NotFound,
            E::AlreadyExists { .. } => Code::AlreadyExists,
            E::TenantRequired { .. }
            | E::VaultRequired { .. }
            | E::DependentsExist { .. }
            | E::RevisionCompacted { .. }
            | E::RevisionAhead { .. }
            | E::WrongShard { .. } => Code::FailedPrecondition,
            E::RevisionMismatch { .. } | E::Fenced { .. } => Code::Aborted,
            E::LimitExceeded { .. } | E::RateLimited { .. } | E::Overloaded { .. } => Code::ResourceExhausted,
            E::Unauthenticated { .. } => Code::Unauthenticated,
            E::ScopeMissing { .. }
            | E::OutsideConfinement { .. }
            | E::UnderRequired { .. }
            | E::ConfinementRoot { .. } => Code::PermissionDenied,
            E::IndexLoading | E::IndexBehind { .. } | E::ShuttingDown | E::Quarantined { .. } => Code::Unavailable,
            E::Store(s) => match s {
                StoreError::Conflict => Code::Aborted,
                StoreError::TooLarge(_) => Code::ResourceExhausted,
                StoreError::Corrupt(_) => Code::DataLoss,
                StoreError::CommitUnknown | StoreError::Unavailable(_) | StoreError::Io(_) => Code::Unavailable,
            },
            E::Encoding { .. } | E::WorkerFailed { .. } | E::Unwired => Code::Internal,
        }
    }

    /// The `ErrorInfo` reason: part of the API (documented in the proto),
    /// what callers branch on.
    pub fn reason(&self) -> &'static str {
        use ServiceError as E;
        match self {
            E::Invalid(_) => "INVALID_ARGUMENT",
            E::TenantNotFound { .. } | E::TenantRequired { .. } => "TENANT_NOT_FOUND",
            E::VaultNotFound { .. } | E::VaultRequired { .. } => "VAULT_NOT_FOUND",
            E::RoleNotFound { .. } => "ROLE_NOT_FOUND",
            E::AlreadyExists { .. } => "ALREADY_EXISTS",
            E::RevisionMismatch { .. } => "REVISION_MISMATCH",
            E::DependentsExist { .. } => "DEPENDENTS_EXIST",
            E::LimitExceeded { .. } => "LIMIT_EXCEEDED",
            E::RevisionCompacted { .. } => "REVISION_COMPACTED",
            E::RevisionAhead { .. } => "REVISION_AHEAD",
            E::Unauthenticated { .. } => "UNAUTHENTICATED",
            E::ScopeMissing { .. } => "SCOPE_MISSING",
            E::OutsideConfinement { .. } | E::UnderRequired { .. } => "TENANT_OUTSIDE_KEY",
            E::ConfinementRoot { .. } => "CONFINEMENT_ROOT",
            E::RateLimited { .. } => "RATE_LIMITED",
            E::Overloaded { .. } => "OVERLOADED",
            E::WrongShard { .. } => "WRONG_SHARD",
            E::IndexLoading => "INDEX_LOADING",
            E::IndexBehind { .. } => "INDEX_BEHIND",
            E::ShuttingDown => "SHUTTING_DOWN",
            E::Quarantined { .. } => "VAULT_QUARANTINED",
            E::Fenced { .. } => "FENCED",
            E::Store(s) => match s {
                StoreError::Conflict => "STORE_CONFLICT",
                StoreError::CommitUnknown => "COMMIT_UNKNOWN",
                StoreError::Unavailable(_) | StoreError::Io(_) => "STORE_UNAVAILABLE",
                StoreError::TooLarge(_) => "TRANSACTION_TOO_LARGE",
                StoreError::Corrupt(_) => "CORRUPT_RECORD",
            },
            E::Encoding { .. } | E::WorkerFailed { .. } | E::Unwired => "INTERNAL",
        }
    }

    /// The `ErrorInfo` metadata: the objects the error is about.
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        use ServiceError as E;
        let s = |v: &String| v.clone();
        match self {
            E::TenantNotFound { tenant } | E::TenantRequired { tenant, .. } => vec![("tenant", s(tenant))],
            E::VaultNotFound { tenant, vault } | E::VaultRequired { tenant, vault, .. } => {
                vec![("tenant", s(tenant)), ("vault", s(vault))]
            }
            E::RoleNotFound { scope, role } => vec![("scope", s(scope)), ("role", s(role))],
            E::AlreadyExists { object, current } => vec![("object", s(object)), ("current", s(current))],
            E::RevisionMismatch {
                object,
                expected,
                current,
            } => {
                let mut m = vec![("object", s(object)), ("expected", s(expected))];
                if let Some(c) = current {
                    m.push(("current", s(c)));
                }
                m
            }
            E::DependentsExist { object, dependents } => {
                vec![("object", s(object)), ("dependents", dependents.join(","))]
            }
            E::LimitExceeded { tenant, kind, max, .. } => vec![
                ("tenant", s(tenant)),
                ("limit", format!("max_{kind}")),
                ("max", max.to_string()),
            ],
            E::RevisionCompacted { after, floor } => vec![("after", s(after)), ("floor", s(floor))],
            E::RevisionAhead { field, token, current } => vec![
                ("field", field.to_string()),
                ("token", s(token)),
                ("current", s(current)),
            ],
            E::ScopeMissing { key, scope } => vec![("key", s(key)), ("scope", scope.to_string())],
            E::OutsideConfinement {
                key,
                confined_to,
                field,
                tenant,
            } => vec![
                ("key", s(key)),
                ("confined_to", s(confined_to)),
                ("field", s(field)),
                ("tenant", s(tenant)),
            ],
            E::UnderRequired { key, confined_to } => vec![
                ("key", s(key)),
                ("confined_to", s(confined_to)),
                ("field", "under".to_string()),
            ],
            E::ConfinementRoot { key, tenant, .. } => vec![("key", s(key)), ("tenant", s(tenant))],
            E::RateLimited {
                limit,
                subject,
                per_second,
                ..
            } => vec![
                ("limit", s(limit)),
                ("subject", s(subject)),
                ("per_second", per_second.to_string()),
            ],
            E::Overloaded { what, .. } => vec![("pool", what.to_string())],
            E::IndexBehind { at, wanted, .. } => vec![("at", s(at)), ("wanted", s(wanted))],
            E::Quarantined { tenant, vault, .. } => vec![("tenant", s(tenant)), ("vault", s(vault))],
            E::WrongShard { tenant, patterns } => vec![("tenant", s(tenant)), ("shard_tenants", s(patterns))],
            E::Fenced { epoch, current } => vec![("epoch", epoch.to_string()), ("current", current.to_string())],
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
            EngineError::TenantNotFound(tenant) => ServiceError::TenantNotFound { tenant },
            EngineError::VaultNotFound { tenant, vault } => ServiceError::VaultNotFound { tenant, vault },
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
