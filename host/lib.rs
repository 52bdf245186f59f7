//! eligo moves jobs from blockchain nodes to workers and their solutions back,
//! through a fixed pipeline in which every decision is made by WebAssembly policy
//! plugins.
//!
//! - [`plugin`]: the plugin runtime (contract, engine, limits, hot reload, runner).
//! - [`metrics`]: process-wide counters.

pub mod metrics;
pub mod plugin;
