//! Baton's test kit, shared by the end-to-end suites, the demo and the benchmark, and kept out
//! of the operator's crate:
//!
//! - [`workload`]: client writers that behave like real clients and the write-loss checker;
//! - [`harness`]: the local control plane's clients, namespaces, the operator as a process;
//! - [`audit`]: the API server's audit log, to count what the operator asked of it;
//! - [`certs`]: a CA and server certificates for the TLS suites;
//! - [`env`]: one test's environment over DatabaseInstances;
//! - [`faults`]: faults (operator kills, member kills, dropped watches) and the checks through them.

pub mod audit;
pub mod certs;
pub mod env;
pub mod faults;
pub mod harness;
pub mod scenarios;
pub mod workload;

pub use harness::*;
