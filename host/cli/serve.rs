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
    runtime()?.block_on(serve(args, config))
}

/// Every connection is a file descriptor: the soft limit (often 1024) would cap
/// eligo far below what the machine can hold, so it is raised to the hard limit.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files = limit, "open-files limit raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

async fn serve(args: &ServeArgs, config: Config) -> Result<()> {
    raise_open_files_limit();
    let running = crate::app::start(&config).await?;
    eprintln!(
        "eligo {} running roles: {}",
        env!("CARGO_PKG_VERSION"),
        config.roles.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ")
    );
    if let Some(addr) = running.node_addr {
        let scheme = if config.node.tls.is_some() { "s" } else { "" };
        eprintln!("  nodes connect to   ws{scheme}://{addr}/");
        eprintln!("    or over HTTP     POST http{scheme}://{addr}/api/v1/jobs (OpenAPI /api/v1/openapi.json)");
        let hooks: Vec<&str> = config.node.webhooks.keys().map(String::as_str).collect();
        if !hooks.is_empty() {
            eprintln!("    webhooks         {}", hooks.join(", "));
        }
    }
    if let Some(addr) = running.worker_addr {
        eprintln!("  workers connect to ws://{addr}/");
    }
    if let Some(addr) = running.admin_addr {
        eprintln!(
            "  dashboard          http://{addr}/  (API /api/v1, OpenAPI /api/v1/openapi.json, /healthz, /readyz, /metrics)"
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
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = reload_signal() => reload(args, &running),
        }
    }
    eprintln!("eligo: shutting down");
    running.stop().await;
    Ok(())
}

/// SIGHUP (`systemctl reload`, `kill -HUP`): re-read the configuration.
async fn reload_signal() {
    #[cfg(unix)]
    if let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        hangup.recv().await;
        return;
    }
    std::future::pending::<()>().await
}

/// Re-reads the configuration as at start (file, environment, flags) and applies
/// what can change while running; a configuration that does not read changes nothing.
fn reload(args: &ServeArgs, running: &crate::app::Running) {
    let applied = args.config().and_then(|config| running.reload(&config));
    match applied {
        Ok(summary) => {
            for failure in &summary.failed {
                eprintln!("    FAILED {}: {}", failure.file, failure.error);
            }
        }
        Err(e) => tracing::error!(error = format!("{e:#}"), "configuration not reloaded; the running one stays"),
    }
}
