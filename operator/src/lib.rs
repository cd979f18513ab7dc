//! The Portcullis operator: reconciles `Tenant`, `Vault` and `Role` custom
//! resources into a Portcullis service through its AdminService, reports
//! back in each object's status, and runs under a Kubernetes Lease so only
//! one replica reconciles at a time.

pub mod crd;
pub mod metrics;
pub mod reconcile;
pub mod run;
pub mod service;
