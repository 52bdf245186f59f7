//! The HTTP listeners (node, worker and admin servers): plain TCP, or TLS through
//! rustls when the listener has a certificate, so clients can use `wss://` and
//! `https://` without a proxy. A replaced certificate or key file is loaded
//! without a restart (connections already open keep the old one); a file that
//! does not load is logged and the previous pair keeps serving.

use crate::config::TlsConfig;
use crate::edge::accept_guard::{AcceptGuard, GuardedIo, Peer};
use anyhow::Context;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::serve::IncomingStream;
use axum::Router;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::IntoFuture;
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

/// Where a server listens and what guards it.
pub struct Listen<'a> {
    /// The address to bind.
    pub addr: SocketAddr,
    /// Connections the kernel queues before they are accepted.
    pub backlog: u32,
    /// Serve TLS with this certificate.
    pub tls: Option<&'a TlsConfig>,
    /// The checks on each socket before its request is read (node and worker
    /// servers); handlers then see `ConnectInfo<Peer>`, else `ConnectInfo<SocketAddr>`.
    pub guard: Option<Arc<AcceptGuard>>,
}

/// A plain server, running.
type ServeFuture = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

/// Binds and serves `router` until `shutdown`, over TLS when set. Returns the
/// bound address (for port 0).
pub async fn serve(
    tasks: &mut JoinSet<()>,
    listen: Listen<'_>,
    router: Router,
    shutdown: &CancellationToken,
    what: &'static str,
) -> anyhow::Result<SocketAddr> {
    let bound = listen.addr;
    let listener = bind(bound, listen.backlog).with_context(|| format!("binding the {what} server to {bound}"))?;
    let addr = listener.local_addr()?;
    let shutdown = shutdown.clone();
    let Some(tls) = listen.tls else {
        let stopping = async move { shutdown.cancelled().await };
        let served: ServeFuture = match listen.guard {
            Some(guard) => {
                let app = router.into_make_service_with_connect_info::<Peer>();
                let listener = GuardedListener { inner: listener, guard };
                Box::pin(axum::serve(listener, app).with_graceful_shutdown(stopping).into_future())
            }
            None => {
                let app = router.into_make_service_with_connect_info::<SocketAddr>();
                Box::pin(axum::serve(listener, app).with_graceful_shutdown(stopping).into_future())
            }
        };
        tasks.spawn(async move {
            if let Err(e) = served.await {
                tracing::error!(server = what, error = %e, "server stopped with an error");
            }
        });
        return Ok(addr);
    };
    let config = RustlsConfig::from_config(Arc::new(
        load(tls, what).with_context(|| format!("loading the {what} server's TLS certificate"))?,
    ));
    tasks.spawn(reload_on_change(tls.clone(), config.clone(), shutdown.clone(), what));
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tasks.spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(Some(TLS_DRAIN));
    });
    let listener = listener.into_std()?;
    let server = axum_server::from_tcp(listener).handle(handle);
    match listen.guard {
        Some(guard) => {
            let timeout = guard.handshake_timeout();
            let acceptor = RustlsAcceptor::new(config).handshake_timeout(timeout).acceptor(GuardAcceptor(guard));
            let server = server.acceptor(acceptor);
            tasks.spawn(async move {
                if let Err(e) = server.serve(router.into_make_service()).await {
                    tracing::error!(server = what, error = %e, "server stopped with an error");
                }
            });
        }
        None => {
            let server = server.acceptor(RustlsAcceptor::new(config));
            let app = router.into_make_service_with_connect_info::<SocketAddr>();
            tasks.spawn(async move {
                if let Err(e) = server.serve(app).await {
                    tracing::error!(server = what, error = %e, "server stopped with an error");
                }
            });
        }
    }
    tracing::info!(server = what, %addr, cert = %tls.cert_file.display(), "serving TLS");
    Ok(addr)
}

/// A TCP listener whose sockets pass the [`AcceptGuard`] first: a refused one is
/// answered by a task of its own and never reaches the HTTP server.
struct GuardedListener {
    inner: tokio::net::TcpListener,
    guard: Arc<AcceptGuard>,
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedIo<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, remote) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            };
            match self.guard.admit(remote) {
                Ok(peer) => return (self.guard.guard(stream, &peer), remote),
                Err(full) => self.guard.refuse(stream, full),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl Connected<IncomingStream<'_, GuardedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        stream.io().peer().clone()
    }
}

/// A failed accept: a connection that went away before it was taken is nothing;
/// anything else (out of file descriptors) is logged and waited out, as axum does.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The guard in front of TLS: a refused socket is closed (it cannot be answered
/// before its handshake); an admitted one carries its [`Peer`] to the handlers.
#[derive(Clone)]
struct GuardAcceptor(Arc<AcceptGuard>);

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for GuardAcceptor {
    type Stream = GuardedIo<tokio::net::TcpStream>;
    type Service = <axum::Extension<ConnectInfo<Peer>> as tower_layer::Layer<S>>::Service;
    type Future = std::future::Ready<std::io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        use tower_layer::Layer;
        let admitted = stream
            .peer_addr()
            .and_then(|remote| self.0.admit(remote).map_err(|full| std::io::Error::other(full.reason)));
        std::future::ready(admitted.map(|peer| {
            let stream = self.0.guard(stream, &peer);
            (stream, axum::Extension(ConnectInfo(peer)).layer(service))
        }))
    }
}

/// Reads the certificate chain and key into a rustls server configuration, and
/// publishes when the leaf certificate expires
/// (`eligo_tls_certificate_expiry_timestamp_seconds{server}`, for an alert).
pub fn load(tls: &TlsConfig, what: &'static str) -> anyhow::Result<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .with_context(|| format!("reading {}", tls.cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the certificates in {}", tls.cert_file.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", tls.cert_file.display());
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .with_context(|| format!("reading a private key from {}", tls.key_file.display()))?;
    // Read before the chain is handed over; published once the files have loaded.
    let expires = x509_parser::parse_x509_certificate(&chain[0]).map(|(_, leaf)| leaf.validity().not_after.timestamp());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the key does not match the certificate, or is of an unsupported kind")?;
    match expires {
        Ok(at) => metrics::gauge!("eligo_tls_certificate_expiry_timestamp_seconds", "server" => what).set(at as f64),
        Err(e) => tracing::warn!(server = what, error = %e, "cannot read the certificate's expiry; it is not measured"),
    }
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
        match load(&tls, what) {
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
