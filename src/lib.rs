//! Baton: a Kubernetes operator that upgrades databases the way managed services do.
//!
//! - [`crd`]: the custom resources and their generated CRDs;
//! - [`version`], [`catalog`], [`status`], [`dryrun`]: pure decision logic (no client);
//! - [`controller`]: one controller per kind; [`operator`]: the process that runs them.

pub mod catalog;
pub mod controller;
pub mod crd;
pub mod dryrun;
pub mod engine;
pub mod error;
pub mod failpoint;
pub mod health;
pub mod metrics;
pub mod operator;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod version;
pub mod window;
