//! The Portcullis operator: reconciles `Tenant`, `Vault` and `Role` custom
//! resources into a Portcullis service through its AdminService, reports
//! back in each object's status, and runs under a Kubernetes Lease so only
//! one replica reconciles at a time.
//!
//! - [`crd`]: the custom resources (their docs are `kubectl explain`).
//! - [`reason`]: the reasons of the `Ready` condition and their retry policy.
//! - [`reconcile`]: one reconciler per kind, their outcomes and ownership.
//! - [`metrics`]: the operator's metrics and health endpoints.
//! - [`admission`]: the admission webhook's decisions (no HTTP).
//! - [`webhook`]: its HTTPS endpoint.
//! - [`run`]: wiring: the lease, the controllers, the drift watch.

pub mod admission;
pub mod crd;
pub mod metrics;
pub mod reason;
pub mod reconcile;
pub mod run;
pub mod webhook;
