//! Assembling a running eligo from its configuration: backends, plugins, the
//! roles asked for, and the admin endpoints; and taking it down gracefully.

use crate::config::{Config, RoleName};
use crate::edge::listener::{self, Listen};
use crate::pipeline::node::server::{NodeServer, NodeServerSettings};
use crate::pipeline::processors::{
    job as job_processor, presence as presence_processor, solution as solution_processor,
};
use crate::pipeline::worker::server::{WorkerServer, WorkerServerSettings};
use crate::pipeline::Services;
use crate::plugin::signature::TrustedKeys;
use crate::plugin::{
    DecisionPool, NativeSeedRules, PluginEngine, PluginHost, RescanSummary, Trust, WatchGuard, BUILTIN_KEY,
};
use crate::store::{postgres::PgStore, sqlite::SqliteStore, Store};
use crate::transport::amqp::AmqpQueue;
use crate::transport::embedded::EmbeddedLog;
use crate::transport::kafka::{KafkaLog, KafkaSettings};
use crate::transport::sqlite_queue::SqliteQueue;
use crate::transport::{EventLog, WorkQueue};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Connects the backends the configuration names, or the embedded ones.
pub async fn connect_backends(
    config: &Config,
) -> anyhow::Result<(Arc<dyn WorkQueue>, Arc<dyn EventLog>, Arc<dyn Store>)> {
    let queue: Arc<dyn WorkQueue> = match &config.amqp {
        Some(amqp) => Arc::new(
            AmqpQueue::connect(&amqp.url)
                .await
                .with_context(|| format!("connecting to RabbitMQ at {}", crate::config::redact_url(&amqp.url)))?,
        ),
        None => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
            let path = config.queue_path();
            Arc::new(
                SqliteQueue::open(&path).await.with_context(|| format!("opening the queue at {}", path.display()))?,
            )
        }
    };
    let log: Arc<dyn EventLog> = match &config.kafka {
        Some(kafka) => {
            let mut settings = KafkaSettings::new(&kafka.bootstrap_servers);
            settings.properties = kafka.properties.clone();
            Arc::new(
                KafkaLog::connect(settings)
                    .await
                    .with_context(|| format!("connecting to Kafka at {}", kafka.bootstrap_servers))?,
            )
        }
        None => Arc::new(EmbeddedLog::new()),
    };
    Ok((queue, log, open_store(config).await?))
}

/// Connects the store the configuration names: PostgreSQL, or SQLite in the data directory.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.postgres {
        Some(pg) => Arc::new(
            PgStore::connect(&pg.url, pg.max_connections)
                .await
                .with_context(|| format!("connecting to PostgreSQL at {}", crate::config::redact_url(&pg.url)))?,
        ),
        None => {
            let path = config.sqlite_path();
            Arc::new(SqliteStore::open(&path).await.with_context(|| format!("opening SQLite at {}", path.display()))?)
        }
    })
}

/// A running eligo.
pub struct Running {
    /// Where nodes connect, if this process runs the node server.
    pub node_addr: Option<SocketAddr>,
    /// Where workers connect, if this process runs the worker server.
    pub worker_addr: Option<SocketAddr>,
    /// Health, metrics and plugin reports.
    pub admin_addr: Option<SocketAddr>,
    /// The plugins.
    pub plugins: Arc<PluginHost>,
    /// The backends and plugins the stages share.
    pub services: Services,
    shutdown: CancellationToken,
    /// Makes `/readyz` 503: the first step of stopping.
    draining: CancellationToken,
    /// How long to serve on, not ready, before closing (`shutdown_delay_seconds`).
    shutdown_delay: Duration,
    /// Stops the admin server: the last step, so `/readyz` answers 503 throughout.
    admin_shutdown: CancellationToken,
    /// Stops the presence processor, after the servers' last presence events.
    presence_shutdown: CancellationToken,
    /// Publishes the worker server's presence events.
    presence_publisher: Option<tokio::task::JoinHandle<()>>,
    tasks: JoinSet<()>,
    node_server: Option<Arc<NodeServer>>,
    worker_server: Option<Arc<WorkerServer>>,
    _watch: WatchGuard,
}

impl Running {
    /// Says it is not ready (`/readyz` 503) and serves on for the shutdown
    /// delay; then stops accepting, closes connections with 1001, lets
    /// processors finish the message in hand, and waits (bounded) for
    /// everything to end. The admin server answers until the end.
    pub async fn stop(mut self) {
        self.draining.cancel();
        if !self.shutdown_delay.is_zero() {
            tracing::info!(
                seconds = self.shutdown_delay.as_secs(),
                "not ready (/readyz 503); serving on before draining"
            );
            tokio::time::sleep(self.shutdown_delay).await;
        }
        self.shutdown.cancel();
        let (nodes, workers) = (self.node_server.take(), self.worker_server.take());
        let presence_publisher = self.presence_publisher.take();
        let drain = async {
            // Connections first: each records its end (e.g. the worker's) before it goes.
            if let Some(n) = &nodes {
                n.closed().await;
            }
            if let Some(w) = &workers {
                w.closed().await;
            }
            // Then the presence events those ends made are confirmed by the queue,
            // and a presence processor of this process writes them before it stops.
            if let Some(publisher) = presence_publisher {
                let _ = publisher.await;
            }
            self.presence_shutdown.cancel();
            self.admin_shutdown.cancel();
            while self.tasks.join_next().await.is_some() {}
        };
        if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
            tracing::warn!("some tasks did not stop within 10 s; aborting them");
            self.tasks.abort_all();
        }
    }

    /// Applies what of a changed configuration can change while running (what
    /// `eligo serve` does on SIGHUP): the plugins' settings tables and trusted
    /// keys. Everything else needs a restart, and a reload says so in the log.
    pub fn reload(&self, config: &Config) -> anyhow::Result<RescanSummary> {
        let summary = self.plugins.reconfigure(plugin_trust(config)?);
        tracing::info!(loaded = ?summary.loaded, failed = summary.failed.len(), removed = ?summary.removed,
            trusted_keys = config.plugins.trusted_keys.len(), "configuration reloaded: plugin settings and trusted keys");
        Ok(summary)
    }

    /// A token that stops everything when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// What the configuration says of the plugins: their settings tables and the
/// keys they must be signed by (as the server and `eligo plugin replay` load them).
pub fn plugin_trust(config: &Config) -> anyhow::Result<Trust> {
    let keys = TrustedKeys::parse(&config.plugins.trusted_keys).context("[plugins] trusted_keys")?;
    Ok(Trust { configured: config.plugins.config.clone(), keys })
}

/// Fails start-up when a plugin of the folder did not load, unless
/// `[plugins] start_with_failed` says to start anyway. A validator or an
/// authentication plugin that silently did not load would let everything
/// through; the operator should hear of it before the first client does.
fn refuse_failed_plugins(config: &Config, plugins: &PluginHost) -> anyhow::Result<()> {
    let failed = plugins.active_failures();
    if failed.is_empty() {
        return Ok(());
    }
    let list = failed.iter().map(|f| format!("{}: {}", f.file, f.error)).collect::<Vec<_>>().join("; ");
    if !config.plugins.start_with_failed {
        anyhow::bail!(
            "{} plugin(s) of {} failed to load: {list}. Fix or remove them, or set [plugins] start_with_failed = true \
             to start anyway (every decision a failed plugin takes part in is then refused until it loads)",
            failed.len(),
            config.plugins.dir.display()
        );
    }
    tracing::error!(failed = %list, "starting with plugins that failed to load ([plugins] start_with_failed): \
        every decision they take part in is refused until they load; /healthz names them");
    Ok(())
}

/// Starts every role of `config` over the given backends: the backends
/// declared, the plugins loaded and watched, then each role this process runs,
/// and the admin listener last.
pub async fn start_with(
    config: &Config,
    queue: Arc<dyn WorkQueue>,
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
) -> anyhow::Result<Running> {
    prepare_backends(config, &*queue, &*log, &*store).await?;
    let (plugins, watch) = open_plugins(config)?;
    warn_of_split_roles_without_kafka(config);
    let decisions = DecisionPool::new(config.plugins.decision_threads).context("starting the decision threads")?;
    let services = Services { queue, log, store, plugins: plugins.clone(), decisions };
    let tokens = Tokens::default();
    let mut tasks = JoinSet::new();
    let runs = |role| config.roles.contains(&role);

    let (node_server, node_addr) = match runs(RoleName::NodeServer) {
        true => {
            let (server, addr) = start_node_server(config, &services, &tokens.shutdown, &mut tasks).await?;
            (Some(server), Some(addr))
        }
        false => (None, None),
    };
    let (worker_server, worker_addr, presence_publisher) = match runs(RoleName::WorkerServer) {
        true => {
            let (server, addr, presence) = start_worker_server(config, &services, &tokens.shutdown, &mut tasks).await?;
            (Some(server), Some(addr), Some(presence))
        }
        false => (None, None, None),
    };
    start_processors(config, &services, &tokens, &mut tasks);
    let admin_addr = match config.admin.listen {
        Some(listen) => {
            let state = crate::admin::AdminState::new(
                &services,
                (node_server.clone(), worker_server.clone()),
                config.roles.clone(),
                &config.admin,
                tokens.draining.clone(),
            );
            let router = crate::admin::router(state, &tokens.admin_shutdown);
            let listen = Listen {
                addr: listen,
                backlog: listener::DEFAULT_BACKLOG,
                tls: config.admin.tls.as_ref(),
                guard: None,
            };
            Some(listener::serve(&mut tasks, listen, router, &tokens.admin_shutdown, "admin").await?)
        }
        None => None,
    };
    let Tokens { shutdown, draining, admin_shutdown, presence_shutdown } = tokens;
    Ok(Running {
        node_addr,
        worker_addr,
        admin_addr,
        plugins,
        services,
        shutdown,
        draining,
        shutdown_delay: Duration::from_secs(config.shutdown_delay_seconds),
        admin_shutdown,
        presence_shutdown,
        presence_publisher,
        tasks,
        node_server,
        worker_server,
        _watch: watch,
    })
}

/// The tokens that stop a running eligo, in the order [`Running::stop`] cancels them.
#[derive(Default)]
struct Tokens {
    /// Makes `/readyz` 503.
    draining: CancellationToken,
    /// Stops the listeners, connections and processors.
    shutdown: CancellationToken,
    /// Stops the presence processor, after the servers' last presence events.
    presence_shutdown: CancellationToken,
    /// Stops the admin listener, last.
    admin_shutdown: CancellationToken,
}

/// Applies the migrations (when `migrate_on_start`) and declares the queues and topics.
async fn prepare_backends(
    config: &Config,
    queue: &dyn WorkQueue,
    log: &dyn EventLog,
    store: &dyn Store,
) -> anyhow::Result<()> {
    if config.migrate_on_start {
        store.migrate().await.context("applying database migrations")?;
    }
    queue.declare().await.context("declaring exchanges and queues")?;
    log.declare().await.context("declaring topics")?;
    Ok(())
}

/// Loads the plugin folder (refusing to start on a failed plugin unless told
/// to) and watches it; says so when nothing will be decided by a plugin.
fn open_plugins(config: &Config) -> anyhow::Result<(Arc<PluginHost>, WatchGuard)> {
    let mut engine = PluginEngine::new(config.plugins.limits.clone()).context("starting the plugin engine")?;
    let cache = config.plugins.cache_dir(&config.data_dir);
    if let Err(e) = engine.use_cache(&cache) {
        tracing::warn!(dir = %cache.display(), error = %e, "cannot keep compiled plugins: every load compiles afresh");
    }
    let fallback = config.plugins.builtin_seed_rules.then(NativeSeedRules::builtin);
    let plugins = PluginHost::open_trusting(engine, &config.plugins.dir, fallback, plugin_trust(config)?)
        .with_context(|| format!("opening the plugin folder {}", config.plugins.dir.display()))?;
    refuse_failed_plugins(config, &plugins)?;
    let watch = plugins
        .watch(Duration::from_millis(config.plugins.debounce_ms))
        .with_context(|| format!("watching the plugin folder {}", config.plugins.dir.display()))?;
    match plugins.reports().as_slice() {
        // With failed plugins, stand-ins refuse in their place: nothing is let through.
        [] if plugins.active_failures().is_empty() => tracing::warn!(dir = %config.plugins.dir.display(),
            "no policy plugins loaded: every connection, job and solution is admitted and offered to everyone"),
        [only] if only.key == BUILTIN_KEY => tracing::warn!(dir = %config.plugins.dir.display(),
            "no plugin in the folder: the built-in seed rules serve until one is dropped in"),
        _ => {}
    }
    Ok((plugins, watch))
}

/// The embedded log reaches only its own process: roles split over processes
/// without Kafka never see each other's jobs and solutions.
fn warn_of_split_roles_without_kafka(config: &Config) {
    let all_roles = RoleName::ALL.iter().all(|r| config.roles.contains(r));
    if !all_roles && config.kafka.is_none() {
        tracing::warn!(
            "some roles run without Kafka: the embedded log reaches only this process, so jobs and \
            solutions produced here reach no server process elsewhere; configure Kafka to split roles"
        );
    }
}

/// Starts the node server: its solution reader in place before it listens, so
/// no solution of a node's first job passes unseen.
async fn start_node_server(
    config: &Config,
    services: &Services,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<(Arc<NodeServer>, SocketAddr)> {
    let server = NodeServer::new(
        services.clone(),
        NodeServerSettings {
            outbox_capacity: config.node.outbox,
            socket: config.node.socket.clone(),
            connections: config.node.connections.clone(),
            http: config.node.http.clone(),
            webhooks: config.node.webhooks.clone(),
        },
        shutdown.clone(),
    )
    .context("starting the node server")?;
    // Nodes over HTTP kept from before a restart wait again before the reader
    // starts, and catch up on what was found meanwhile once it runs.
    let restored = server.restore_http_nodes().await;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tasks.spawn(server.clone().run_fanout(Some(ready_tx)));
    // A node must not submit a job before the solution reader is in place, or
    // a fast solution could pass unseen.
    let _ = tokio::time::timeout(READER_IN_PLACE, ready_rx).await;
    tasks.spawn(server.clone().run_http_upkeep());
    let catching_up = server.clone();
    tasks.spawn(async move { catching_up.catch_up_restored(restored).await });
    let listen = Listen {
        addr: config.node.listen,
        backlog: config.node.socket.listen_backlog,
        tls: config.node.tls.as_ref(),
        guard: Some(server.accept_guard()),
    };
    let addr = listener::serve(tasks, listen, crate::pipeline::node::routes::router(&server), shutdown, "node").await?;
    Ok((server, addr))
}

/// Starts the worker server: its job and verdict readers in place before it
/// listens; returns the task that publishes its presence events.
async fn start_worker_server(
    config: &Config,
    services: &Services,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<(Arc<WorkerServer>, SocketAddr, tokio::task::JoinHandle<()>)> {
    let (server, presence) = WorkerServer::new(
        services.clone(),
        WorkerServerSettings {
            outbox_capacity: config.worker.outbox,
            welcome_timeout: Duration::from_secs(config.worker.welcome_timeout_secs),
            instance: config.instance.clone(),
            publishes_in_flight: config.worker.publishes_in_flight,
            socket: config.worker.socket.clone(),
            connections: config.worker.connections.clone(),
            silent_after: Duration::from_secs(u64::from(config.admin.silent_after_minutes) * 60),
        },
        shutdown.clone(),
    );
    let presence_publisher = tokio::spawn(presence);
    server.recover().await.context("recovering worker connections")?;
    // No worker may be welcomed before the reader of the job and verdict logs is
    // in place: a job could pass unseen, or a solution's tally (its connection's
    // counters).
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tasks.spawn(server.clone().run_logs(Some(ready_tx)));
    let _ = tokio::time::timeout(READER_IN_PLACE, ready_rx).await;
    tasks.spawn(server.clone().run_gauges());
    let listen = Listen {
        addr: config.worker.listen,
        backlog: config.worker.socket.listen_backlog,
        tls: config.worker.tls.as_ref(),
        guard: Some(server.accept_guard()),
    };
    let addr = listener::serve(tasks, listen, server.router(), shutdown, "worker").await?;
    Ok((server, addr, presence_publisher))
}

/// Starts the processors this process runs; the presence processor stops on
/// its own token, after the servers' last presence events.
fn start_processors(config: &Config, services: &Services, tokens: &Tokens, tasks: &mut JoinSet<()>) {
    let runs = |role| config.roles.contains(&role);
    let batches = &config.processor;
    if runs(RoleName::JobProcessor) {
        tasks.spawn(job_processor::run(services.clone(), batches.clone(), tokens.shutdown.clone()));
    }
    if runs(RoleName::SolutionProcessor) {
        tasks.spawn(solution_processor::run(services.clone(), batches.clone(), tokens.shutdown.clone()));
    }
    if runs(RoleName::PresenceProcessor) {
        tasks.spawn(presence_processor::run(services.clone(), batches.clone(), tokens.presence_shutdown.clone()));
    }
}

/// Longest wait at start for a server's reader of the log to be in place.
const READER_IN_PLACE: Duration = Duration::from_secs(30);

/// Connects the configured backends and starts every role.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let (queue, log, store) = connect_backends(config).await?;
    start_with(config, queue, log, store).await
}
