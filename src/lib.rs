//! Portcullis: a gRPC authorization service with hierarchical tenants,
//! IAM-style roles, CEL conditions and nested groups.
//!
//! - [`engine`]: the domain model and the in-memory decision engine (no
//!   gRPC, Kubernetes or storage types).
//! - [`store`]: the FoundationDB-shaped store trait, its backends and the
//!   keyspace.
//! - [`telemetry`]: logs and metrics.

pub mod api;
pub mod cli;
pub mod engine;
pub mod error;
pub mod index;
pub mod jobs;
pub mod lease;
pub mod manifest;
pub mod repo;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transport;
