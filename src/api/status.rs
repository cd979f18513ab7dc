//! The one mapping from [`ServiceError`] to a gRPC status: the code, a
//! message, and details a program can branch on: a `google.rpc.ErrorInfo`
//! (`reason`, domain `portcullis.dev`, metadata naming the objects), a
//! `BadRequest` with the field violations, and a `RetryInfo` when waiting
//! helps.
//!
//! Sizes are bounded whatever the request: at most [`MAX_VIOLATIONS`]
//! violations are sent (then "and N more"), a message is cut to
//! [`MAX_MESSAGE_BYTES`] and the details to [`MAX_DETAILS_BYTES`], so a
//! default client (8 KiB of metadata) can always read the error.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::engine::{EngineError, Violations};
use crate::error::ServiceError;
use crate::store::StoreError;

pub const DOMAIN: &str = "portcullis.dev";
pub const MAX_VIOLATIONS: usize = 32;
pub const MAX_MESSAGE_BYTES: usize = 4096;
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;
/// One violation's description is cut to this.
const MAX_RULE_BYTES: usize = 400;

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A status with an `ErrorInfo` (and optionally `RetryInfo` and
/// `BadRequest`), bounded in size.
pub fn build(
    code: Code,
    message: &str,
    reason: &str,
    metadata: &[(&str, String)],
    retry: Option<Duration>,
    violations: Option<&Violations>,
) -> Status {
    let mut details = ErrorDetails::new();
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), cut(v, MAX_RULE_BYTES)))
        .collect();
    details.set_error_info(reason, DOMAIN, meta);
    if let Some(d) = retry {
        details.set_retry_info(Some(d));
    }
    if let Some(v) = violations {
        let mut fv: Vec<FieldViolation> =
            v.0.iter()
                .take(MAX_VIOLATIONS)
                .map(|f| FieldViolation::new(cut(&f.field, MAX_RULE_BYTES), cut(&f.rule, MAX_RULE_BYTES)))
                .collect();
        // The details travel as an encoded google.rpc.Status, which repeats
        // the message: drop violations from the end until both fit.
        let budget = MAX_DETAILS_BYTES - MAX_MESSAGE_BYTES - 1024;
        while fv.len() > 1
            && fv
                .iter()
                .map(|f| f.field.len() + f.description.len() + 8)
                .sum::<usize>()
                > budget
        {
            fv.pop();
        }
        details.set_bad_request(fv);
    }
    Status::with_error_details(code, cut(message, MAX_MESSAGE_BYTES), details)
}

/// The message of a violation list: the first [`MAX_VIOLATIONS`] and how
/// many more.
pub fn violations_message(v: &Violations) -> String {
    let mut s = String::from("invalid request: ");
    let mut shown = 0;
    for f in v.0.iter().take(MAX_VIOLATIONS) {
        let item = format!("{}: {}", cut(&f.field, MAX_RULE_BYTES), cut(&f.rule, MAX_RULE_BYTES));
        // Room is kept for the "and N more" that follows.
        if s.len() + item.len() + 2 > MAX_MESSAGE_BYTES - 64 {
            break;
        }
        if shown > 0 {
            s.push_str("; ");
        }
        s.push_str(&item);
        shown += 1;
    }
    let total = v.total();
    if total > shown {
        s.push_str(&format!("; and {} more", total - shown));
    }
    s
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        status(e)
    }
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        status(e.into())
    }
}

impl From<Violations> for Status {
    fn from(v: Violations) -> Status {
        status(ServiceError::Invalid(v))
    }
}

fn status(e: ServiceError) -> Status {
    let reason = e.reason();
    let meta = e.metadata();
    let meta: Vec<(&str, String)> = meta.iter().map(|(k, v)| (*k, v.clone())).collect();
    match e {
        ServiceError::Invalid(v) => build(
            Code::InvalidArgument,
            &violations_message(&v),
            reason,
            &meta,
            None,
            Some(&v),
        ),
        ServiceError::Store(ref s) => {
            let (code, msg) = match s {
                StoreError::Conflict => (
                    Code::Aborted,
                    "too much contention on the same objects; retry".to_string(),
                ),
                StoreError::CommitUnknown => (
                    Code::Unavailable,
                    "the commit's outcome is unknown; retry (writes are idempotent)".to_string(),
                ),
                StoreError::Unavailable(m) => (Code::Unavailable, m.clone()),
                StoreError::TooLarge(m) => (Code::ResourceExhausted, m.clone()),
                StoreError::Corrupt(m) => (Code::DataLoss, format!("corrupt record: {m}")),
                StoreError::Io(m) => (Code::Unavailable, format!("storage error: {m}")),
            };
            build(code, &msg, reason, &meta, None, None)
        }
        ref other => build(
            other.code(),
            &other.to_string(),
            reason,
            &meta,
            other.retry_after(),
            None,
        ),
    }
}

/// A violation list in a response body (PlanChanges): every violation up
/// to 1,000, each cut to size.
pub fn field_violations(v: &Violations) -> Vec<portcullis_proto::v1::FieldViolation> {
    v.0.iter()
        .take(1000)
        .map(|f| portcullis_proto::v1::FieldViolation {
            field: cut(&f.field, MAX_RULE_BYTES),
            description: cut(&f.rule, MAX_RULE_BYTES),
        })
        .collect()
}

/// A violation list as the bulk check reports per-item errors.
pub fn item_error(v: &crate::engine::Violations) -> portcullis_proto::v1::ItemError {
    portcullis_proto::v1::ItemError {
        code: Code::InvalidArgument as i32,
        message: violations_message(v),
        violations: v
            .0
            .iter()
            .take(MAX_VIOLATIONS)
            .map(|f| portcullis_proto::v1::FieldViolation {
                field: cut(&f.field, MAX_RULE_BYTES),
                description: cut(&f.rule, MAX_RULE_BYTES),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_violation_lists_are_cut_to_size() {
        let mut v = Violations::new();
        for i in 0..100_000 {
            v.push(format!("inherits[{i}]"), "x".repeat(1000));
        }
        let s = status(ServiceError::Invalid(v));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().len() <= MAX_MESSAGE_BYTES, "{}", s.message().len());
        assert!(
            s.message().ends_with(" more"),
            "{}",
            &s.message()[s.message().len() - 40..]
        );
        assert!(s.details().len() <= MAX_DETAILS_BYTES, "{}", s.details().len());
        let d = s.get_error_details();
        assert_eq!(d.error_info().unwrap().reason, "INVALID_ARGUMENT");
        assert!(d.bad_request().unwrap().field_violations.len() <= MAX_VIOLATIONS);
    }
}
