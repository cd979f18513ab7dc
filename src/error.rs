//! The service's error type: what went wrong, in terms a caller can act on.
//! It is mapped to a gRPC status once, in `api::status`.

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
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> ServiceError {
        ServiceError::Invalid(Violations::single(field, rule))
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
        }
    }
}

impl From<Violations> for ServiceError {
    fn from(v: Violations) -> Self {
        ServiceError::Invalid(v)
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;
