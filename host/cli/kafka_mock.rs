//! `eligo kafka-mock`: librdkafka's in-memory mock cluster, for trying the networked
//! roles on one machine without a Kafka to install.

use super::process::{runtime, shutdown_signal};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// `eligo kafka-mock`: prints the cluster's bootstrap servers (and writes them to
/// `write_to`, for scripts) and keeps it up until Ctrl-C or SIGTERM.
pub fn run(write_to: Option<PathBuf>) -> Result<()> {
    runtime()?.block_on(async {
        let cluster = crate::transport::kafka::MockKafka::start().context("starting the mock cluster")?;
        let servers = cluster.bootstrap_servers();
        if let Some(path) = write_to {
            std::fs::write(&path, &servers).with_context(|| format!("writing {}", path.display()))?;
        }
        println!("{servers}");
        shutdown_signal().await;
        drop(cluster);
        Ok(())
    })
}
