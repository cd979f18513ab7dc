//! Portcullis: a gRPC authorization service with hierarchical tenants,
//! IAM-style roles, CEL conditions and nested groups.
//!
//! - [`engine`]: the domain model and the in-memory decision engine.

pub mod engine;
