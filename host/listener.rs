//! The HTTP listeners (node, worker and admin servers): plain TCP, or TLS through
//! rustls when the listener has a certificate, so clients can use `wss://` and
//! `https://` without a proxy. A replaced certificate or key file is loaded
//! without a restart (connections already open keep the old one); a file that
//! does not load is logged and the previous pair keeps serving.

use crate::config::TlsConfig;
use anyhow::Context;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a stopping TLS listener waits for its connections to finish.
const TLS_DRAIN: Duration = Duration::from_secs(10);

/// Files that change together (a certificate and its key) are read once they
/// have been quiet this long.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(300);

/// A listening socket as `TcpListener::bind` makes it (address reuse on Unix, so
/// a restart need not wait out TIME_WAIT), with the given backlog.
fn bind(listen: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if listen.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(backlog)
}

/// The listen backlog of a listener with no setting of its own (the admin port).
pub const DEFAULT_BACKLOG: u32 = 1024;

/// Binds `listen` and serves `router` on it until `shutdown`, over TLS when
/// `tls` is set, with `backlog` connections queued by the kernel before they are
/// accepted. Returns the bound address (for port 0).
pub async fn serve(
    tasks: &mut JoinSet<()>,
    listen: SocketAddr,
    backlog: u32,
    tls: Option<&TlsConfig>,
    router: Router,
    shutdown: &CancellationToken,
    what: &'static str,
) -> anyhow::Result<SocketAddr> {
    let listener = bind(listen, backlog).with_context(|| format!("binding the {what} server to {listen}"))?;
    let addr = listener.local_addr()?;
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    let shutdown = shutdown.clone();
    let Some(tls) = tls else {
        tasks.spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
            if let Err(e) = served.await {
                tracing::error!(server = what, error = %e, "server stopped with an error");
            }
        });
        return Ok(addr);
    };
    let config = RustlsConfig::from_config(Arc::new(
        load(tls).with_context(|| format!("loading the {what} server's TLS certificate"))?,
    ));
    tasks.spawn(reload_on_change(tls.clone(), config.clone(), shutdown.clone(), what));
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tasks.spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(Some(TLS_DRAIN));
    });
    let listener = listener.into_std()?;
    tasks.spawn(async move {
        let server = axum_server::from_tcp_rustls(listener, config).handle(handle);
        if let Err(e) = server.serve(app).await {
            tracing::error!(server = what, error = %e, "server stopped with an error");
        }
    });
    tracing::info!(server = what, %addr, cert = %tls.cert_file.display(), "serving TLS");
    Ok(addr)
}

/// Reads the certificate chain and key into a rustls server configuration.
pub fn load(tls: &TlsConfig) -> anyhow::Result<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .with_context(|| format!("reading {}", tls.cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the certificates in {}", tls.cert_file.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", tls.cert_file.display());
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .with_context(|| format!("reading a private key from {}", tls.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the key does not match the certificate, or is of an unsupported kind")?;
    Ok(config)
}

/// Watches the certificate's and key's folders (editors and cert managers
/// replace files by renaming) and reloads when either file changes.
async fn reload_on_change(tls: TlsConfig, config: RustlsConfig, shutdown: CancellationToken, what: &'static str) {
    use notify::Watcher;
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let files = [tls.cert_file.clone(), tls.key_file.clone()];
    let watched = files.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event.paths.iter().any(|p| watched.iter().any(|f| p.file_name() == f.file_name())) {
                let _ = tx.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(e) => {
            return tracing::warn!(server = what, error = %e, "cannot watch the TLS files; reload needs a restart")
        }
    };
    for file in &files {
        let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if let Err(e) = watcher.watch(folder, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(server = what, error = %e, folder = %folder.display(), "cannot watch a TLS folder");
        }
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            change = changes.recv() => if change.is_none() { return },
        }
        // Settle: a certificate and its key are usually written one after the other.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_DEBOUNCE) => break,
                change = changes.recv() => if change.is_none() { return },
            }
        }
        match load(&tls) {
            Ok(loaded) => {
                config.reload_from_config(Arc::new(loaded));
                crate::metrics::add("eligo_tls_reloads_total", &[("server", what), ("outcome", "loaded")], 1);
                tracing::info!(server = what, cert = %tls.cert_file.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                crate::metrics::add("eligo_tls_reloads_total", &[("server", what), ("outcome", "failed")], 1);
                tracing::warn!(
                    server = what,
                    error = format!("{e:#}"),
                    "TLS files changed but do not load; the previous certificate keeps serving"
                );
            }
        }
    }
}
