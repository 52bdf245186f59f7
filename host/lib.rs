//! eligo moves jobs from blockchain nodes to workers and their solutions back,
//! through a fixed pipeline in which every decision is made by WebAssembly policy
//! plugins.
//!
//! - [`protocol`]: the wire formats of nodes, workers and the stages.
//! - [`pipeline`]: the four stages (node server, worker server, job and solution processors).
//! - [`plugin`]: the plugin runtime (contract, engine, limits, hot reload, runner).
//! - [`transport`]: the work queue (RabbitMQ or embedded) and event log (Kafka or embedded).
//! - [`store`]: persistence (PostgreSQL or SQLite).
//! - [`config`]: settings from file, environment and flags.
//! - [`app`]: assembling and stopping a running eligo.
//! - [`replay`]: a candidate plugin over the recorded history, next to the active ones.
//! - [`admin`]: health, metrics, the operator's JSON API and the live dashboard.
//! - [`metrics`]: process-wide counters.
//! - [`cli`]: the `eligo` command's subcommands; `host/main.rs` only parses and dispatches.

// Every public item says what it is for: `scripts/test` runs clippy with `-D warnings`.
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod listener;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod protocol;
pub mod replay;
pub mod store;
pub mod transport;
