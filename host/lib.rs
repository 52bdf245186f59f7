//! eligo moves jobs from blockchain nodes to workers and their solutions back,
//! through a fixed pipeline in which every decision is made by WebAssembly policy
//! plugins.
//!
//! - [`protocol`]: the wire formats of nodes, workers and the stages.
//! - [`pipeline`]: the stages: the node and worker servers, the job, solution and
//!   presence processors, and what carries data between them.
//! - [`edge`]: the defence at the edge: listeners and TLS, the accept guard,
//!   connection caps, per-IP grouping and the admission of a handshake.
//! - [`session`]: one WebSocket connection's plumbing: outbox and writer, read
//!   loop, frame budget, close codes, the registry of open connections.
//! - [`plugin`]: the plugin runtime (contract, engine, limits, hot reload).
//! - [`authoring`]: the plugin author's tools: the case runner, the scaffold and
//!   the replay of recorded history.
//! - [`transport`]: the work queue (RabbitMQ or embedded) and event log (Kafka or embedded).
//! - [`store`]: persistence (PostgreSQL or SQLite).
//! - [`config`]: settings from file, environment and flags.
//! - [`app`]: assembling and stopping a running eligo.
//! - [`admin`]: health, metrics, the operator's JSON API and the live dashboard.
//! - [`metrics`]: process-wide counters.
//! - [`cli`]: the `eligo` command's subcommands; `host/main.rs` only parses and dispatches.

// Every public item says what it is for: `scripts/test` runs clippy with `-D warnings`.
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod authoring;
pub mod cli;
pub mod config;
pub mod edge;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod protocol;
pub mod session;
pub mod store;
pub mod transport;
