//! `eligo serve`, the default command: starts the roles, says where each listens, and
//! runs until stopped.

use super::process::{init_logging, runtime, shutdown_signal};
use super::serve_args::ServeArgs;
use crate::config::Config;
use anyhow::Result;

/// `eligo serve`: runs until Ctrl-C or SIGTERM, then stops the roles.
pub fn run(args: &ServeArgs) -> Result<()> {
    let config = args.config()?;
    init_logging(&config.log);
    runtime()?.block_on(serve(config))
}

/// Every connection is a file descriptor: the soft limit (often 1024) would cap
/// eligo far below what the machine can hold, so it is raised to the hard limit.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files = limit, "open-files limit raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

async fn serve(config: Config) -> Result<()> {
    raise_open_files_limit();
    let running = crate::app::start(&config).await?;
    eprintln!(
        "eligo {} running roles: {}",
        env!("CARGO_PKG_VERSION"),
        config.roles.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ")
    );
    if let Some(addr) = running.node_addr {
        eprintln!("  nodes connect to   ws://{addr}/");
    }
    if let Some(addr) = running.worker_addr {
        eprintln!("  workers connect to ws://{addr}/");
    }
    if let Some(addr) = running.admin_addr {
        eprintln!(
            "  dashboard          http://{addr}/  (API /api/v1, OpenAPI /api/v1/openapi.json, /healthz, /metrics)"
        );
    }
    for line in config.describe_backends() {
        eprintln!("  {line}");
    }
    eprintln!("  plugins from {} (watched):", config.plugins.dir.display());
    for p in running.plugins.reports() {
        let origin = p.sha256.get(..12).map_or("built in".to_string(), |sha| format!("sha256 {sha}"));
        eprintln!("    {} = {} {} [{}] {origin}", p.key, p.name, p.version, p.hooks.join(", "));
    }
    for f in running.plugins.failures() {
        eprintln!("    FAILED {}: {}", f.file, f.error);
    }
    shutdown_signal().await;
    eprintln!("eligo: shutting down");
    running.stop().await;
    Ok(())
}
