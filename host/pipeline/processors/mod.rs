//! The processors: each consumes one queue in batches, asks the plugins, writes
//! the store and produces to the log.
//!
//! - [`job`]: `job` queue → store, `job` topic.
//! - [`solution`]: `solution` queue → validation, store, `solution` and `verdict` topics.
//! - [`presence`]: `worker` queue → the `worker` rows.

pub mod job;
pub mod presence;
pub mod solution;
