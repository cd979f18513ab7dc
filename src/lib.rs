//! Portcullis: a gRPC authorization service with hierarchical tenants,
//! IAM-style roles, CEL conditions and nested groups.
//!
//! - [`engine`]: the domain model and the in-memory decision engine (no
//!   gRPC, Kubernetes or storage types).
//! - [`store`]: the FoundationDB-shaped store trait, its backends and the
//!   keyspace.
//! - [`repo`]: admin writes and reads as store transactions, and the changelog.
//! - [`index`]: the live index, loaded from the store and fed from its changelog.
//! - [`lease`]: leader election on the store, with fencing epochs.
//! - [`jobs`]: the background jobs the leader runs.
//! - [`pool`]: bounded pools for blocking and expensive work.
//! - [`ratelimit`]: the per-tenant and per-key rate limits (GCRA).
//! - [`api`]: the gRPC services, auth, conversions and the one error-to-status mapping.
//! - [`error`]: the service's error type and its `ErrorInfo` reasons.
//! - [`transport`]: accepting connections (TCP_NODELAY, TLS and its reload).
//! - [`server`]: wiring everything into a running server.
//! - [`manifest`]: the Kubernetes-shaped documents `apply`, `import` and
//!   `export` use, and the writes that apply them.
//! - [`policytest`]: `portcullis test`, policy test suites run offline with coverage.
//! - [`diff`]: `portcullis diff` and `apply --dry-run`: a manifest's plan, rendered.
//! - [`cli`]: the command line.
//! - [`telemetry`]: logs, and the metrics each server owns.
//! - `conformance` (tests only): the suite every store backend passes.
//!
//! Calling Portcullis from Rust is the `portcullis-client` crate.

pub mod api;
pub mod audit;
pub mod cli;
#[cfg(test)]
mod conformance;
pub mod decisions;
pub mod diff;
pub mod engine;
pub mod error;
pub mod index;
pub mod jobs;
pub mod lease;
pub mod manifest;
pub mod policytest;
pub mod pool;
pub mod ratelimit;
pub mod repo;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transport;
