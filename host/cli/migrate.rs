//! `eligo migrate`: brings the store's schema up to date, so that a deployment can
//! migrate once before starting its servers.

use super::process::{init_logging, runtime};
use super::serve_args::ServeArgs;
use crate::config::Config;
use anyhow::{Context, Result};

/// `eligo migrate`: applies the database migrations and exits.
pub fn run(args: &ServeArgs) -> Result<()> {
    let config = args.config()?;
    init_logging(&config.log);
    runtime()?.block_on(async {
        // Only the store is migrated: the queue and the log need not be reachable.
        let (_, _, store) = crate::app::connect_backends(&Config { amqp: None, kafka: None, ..config.clone() }).await?;
        store.migrate().await.context("applying migrations")?;
        eprintln!("migrations applied ({})", config.describe_backends()[2]);
        Ok(())
    })
}
