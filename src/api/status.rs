//! The one mapping from [`ServiceError`] to a gRPC status.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::error::ServiceError;
use crate::store::StoreError;

pub fn status(e: ServiceError) -> Status {
    match e {
        ServiceError::Invalid(v) => {
            let violations: Vec<FieldViolation> =
                v.0.iter()
                    .map(|f| FieldViolation::new(f.field.clone(), f.rule.clone()))
                    .collect();
            Status::with_error_details(
                Code::InvalidArgument,
                format!("invalid request: {v}"),
                ErrorDetails::with_bad_request(violations),
            )
        }
        ServiceError::NotFound(m) => Status::not_found(m),
        ServiceError::AlreadyExists(m) => Status::already_exists(m),
        ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
        ServiceError::Aborted(m) => Status::aborted(m),
        ServiceError::ResourceExhausted(m) => Status::resource_exhausted(m),
        ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
        ServiceError::PermissionDenied(m) => Status::permission_denied(m),
        ServiceError::Unavailable(m) => Status::unavailable(m),
        ServiceError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
        ServiceError::Store(s) => match s {
            StoreError::Conflict => Status::aborted("too much contention on the same objects; retry"),
            StoreError::CommitUnknown => {
                Status::unavailable("the commit's outcome is unknown; retry (writes are idempotent)")
            }
            StoreError::Unavailable(m) => Status::unavailable(m),
            StoreError::TooLarge(m) => Status::resource_exhausted(m),
            StoreError::Corrupt(m) => Status::data_loss(format!("corrupt record: {m}")),
            StoreError::Io(m) => Status::unavailable(format!("storage error: {m}")),
        },
        ServiceError::Internal(m) => Status::internal(m),
    }
}

/// A violation list as the bulk check reports per-item errors.
pub fn item_error(v: &crate::engine::Violations) -> portcullis_proto::v1::ItemError {
    portcullis_proto::v1::ItemError {
        code: Code::InvalidArgument as i32,
        message: format!("invalid request: {v}"),
        violations: v
            .0
            .iter()
            .map(|f| portcullis_proto::v1::FieldViolation {
                field: f.field.clone(),
                description: f.rule.clone(),
            })
            .collect(),
    }
}
