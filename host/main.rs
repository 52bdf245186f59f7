//! The `eligo` command: a thin layer over the library.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use eligo::config::{AmqpConfig, Config, KafkaConfig, LogFormat, PostgresConfig, RoleName};
use eligo::plugin::{self, runner};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// eligo moves jobs from nodes to workers and solutions back; WebAssembly policy
/// plugins make every decision.
#[derive(Parser)]
#[command(version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command, eligo serves: these are `serve`'s settings.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server (the default): every role, or those given with --roles.
    Serve(ServeArgs),
    /// Applies the database migrations and exits.
    Migrate(ServeArgs),
    /// Work with policy plugins: run one hook, run fixture cases, check a file.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Runs librdkafka's in-memory mock Kafka cluster (topics `job` and `solution`)
    /// until interrupted, for trying the networked roles on one machine. Prints its
    /// bootstrap servers; not for production (memory only, no TLS or SASL).
    KafkaMock {
        /// Also write the bootstrap servers to this file, for scripts.
        #[arg(long)]
        write_to: Option<PathBuf>,
    },
}

/// Settings of `serve`. Each overrides the configuration file; each can also be
/// given as the environment variable shown. Without --amqp-url, --kafka-bootstrap-servers
/// and --postgres-url, eligo runs on embedded backends (in-process queue and log, SQLite).
#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML configuration file [default: eligo.toml if present].
    #[arg(long, env = "ELIGO_CONFIG")]
    config: Option<PathBuf>,
    /// Roles to run, comma-separated [default: all].
    #[arg(long, env = "ELIGO_ROLES", value_delimiter = ',')]
    roles: Option<Vec<RoleName>>,
    /// Node WebSocket address [default: 127.0.0.1:8001].
    #[arg(long, env = "ELIGO_NODE_LISTEN")]
    node_listen: Option<SocketAddr>,
    /// Worker WebSocket address [default: 127.0.0.1:8002].
    #[arg(long, env = "ELIGO_WORKER_LISTEN")]
    worker_listen: Option<SocketAddr>,
    /// Health, metrics and plugin reports address [default: 127.0.0.1:8003].
    #[arg(long, env = "ELIGO_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Folder of policy plugins (*.wasm), watched for changes [default: policies].
    #[arg(long, env = "ELIGO_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// Where the SQLite file lives without PostgreSQL [default: .].
    #[arg(long, env = "ELIGO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Name of this process in the worker table [default: eligo].
    #[arg(long, env = "ELIGO_INSTANCE")]
    instance: Option<String>,
    /// RabbitMQ URL (amqp:// or amqps://) [default: embedded queue].
    #[arg(long, env = "ELIGO_AMQP_URL", hide_env_values = true)]
    amqp_url: Option<String>,
    /// Kafka bootstrap servers [default: embedded log].
    #[arg(long, env = "ELIGO_KAFKA_BOOTSTRAP_SERVERS")]
    kafka_bootstrap_servers: Option<String>,
    /// Extra librdkafka properties, key=value,key=value (SASL, SSL, …).
    #[arg(long, env = "ELIGO_KAFKA_PROPERTIES", hide_env_values = true)]
    kafka_properties: Option<String>,
    /// PostgreSQL URL [default: SQLite in the data dir].
    #[arg(long, env = "ELIGO_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "ELIGO_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// The configuration: file, then environment and flags over it.
    fn config(&self) -> Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None if std::path::Path::new("eligo.toml").is_file() => {
                Config::from_file(std::path::Path::new("eligo.toml"))?
            }
            None => Config::default(),
        };
        if let Some(roles) = &self.roles {
            config.roles = roles.clone();
        }
        if let Some(listen) = self.node_listen {
            config.node.listen = listen;
        }
        if let Some(listen) = self.worker_listen {
            config.worker.listen = listen;
        }
        if let Some(listen) = self.admin_listen {
            config.admin.listen = Some(listen);
        }
        if let Some(dir) = &self.plugins_dir {
            config.plugins.dir = dir.clone();
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(instance) = &self.instance {
            config.instance = instance.clone();
        }
        if let Some(url) = &self.amqp_url {
            config.amqp = Some(AmqpConfig { url: url.clone() });
        }
        if let Some(servers) = &self.kafka_bootstrap_servers {
            let properties = config.kafka.take().map(|k| k.properties).unwrap_or_default();
            config.kafka = Some(KafkaConfig { bootstrap_servers: servers.clone(), properties });
        }
        if let Some(properties) = &self.kafka_properties {
            let Some(kafka) = config.kafka.as_mut() else {
                bail!("--kafka-properties needs --kafka-bootstrap-servers (or [kafka] in the file)");
            };
            kafka.properties.extend(eligo::config::parse_properties(properties)?);
        }
        if let Some(url) = &self.postgres_url {
            let max_connections = config.postgres.as_ref().map_or(10, |p| p.max_connections);
            config.postgres = Some(PostgresConfig { url: url.clone(), max_connections });
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        Ok(config)
    }
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Calls one hook of a plugin and prints the decision and what it cost.
    ///
    /// The input is the hook's arguments as JSON, e.g. for offer-job:
    /// {"job": {...}, "profiles": [...], "workers": [{"profile": 0, "state": 0}], "now": 0}
    Run {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// info, admit-connection, admit-worker, admit-job, offer-job, validate-solution or offer-solution.
        hook: String,
        /// The JSON input file; `-` for standard input.
        input: PathBuf,
    },
    /// Runs fixture cases against a plugin; exits non-zero on a mismatch.
    Test {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// The case file (JSON; see the README).
        cases: PathBuf,
    },
    /// Loads a plugin as the server would and prints what it reports.
    Check {
        /// The plugin component (.wasm).
        plugin: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => {
            let config = args.config()?;
            init_logging(&config.log);
            runtime()?.block_on(serve(config))
        }
        Command::Migrate(args) => {
            let config = args.config()?;
            init_logging(&config.log);
            runtime()?.block_on(async {
                let (_, _, store) =
                    eligo::app::connect_backends(&Config { amqp: None, kafka: None, ..config.clone() }).await?;
                store.migrate().await.context("applying migrations")?;
                eprintln!("migrations applied ({})", config.describe_backends()[2]);
                Ok(())
            })
        }
        Command::Plugin(command) => plugin_command(command),
        Command::KafkaMock { write_to } => runtime()?.block_on(async {
            let cluster = eligo::transport::kafka::MockKafka::start().context("starting the mock cluster")?;
            let servers = cluster.bootstrap_servers();
            if let Some(path) = write_to {
                std::fs::write(&path, &servers).with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{servers}");
            shutdown_signal().await;
            drop(cluster);
            Ok(())
        }),
    }
}

/// Every connection is a file descriptor: the soft limit (often 1024) would cap
/// eligo far below what the machine can hold, so it is raised to the hard limit.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files = limit, "open-files limit raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn init_logging(log: &eligo::config::LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config: Config) -> Result<()> {
    raise_open_files_limit();
    let running = eligo::app::start(&config).await?;
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
        eprintln!("  health and metrics http://{addr}/healthz /metrics /plugins /status");
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}

fn plugin_command(command: PluginCommand) -> Result<()> {
    match command {
        PluginCommand::Run { plugin, hook, input } => {
            let plugin = plugin::load_file(&plugin)?;
            let text = if input.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?
            };
            let input = serde_json::from_str(&text).context("the input is not JSON")?;
            let (decision, cost) = runner::run_hook(&plugin, &hook, input)?;
            let out = serde_json::json!({
                "decision": decision,
                "cost": { "micros": cost.elapsed.as_secs_f64() * 1e6, "fuel": cost.fuel, "memory_bytes": cost.memory_bytes },
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        PluginCommand::Test { plugin, cases } => {
            let plugin = plugin::load_file(&plugin)?;
            let text = std::fs::read_to_string(&cases).with_context(|| format!("reading {}", cases.display()))?;
            let cases: runner::CaseFile =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", cases.display()))?;
            let outcomes = runner::run_cases(Arc::new(plugin), &cases);
            let failed = outcomes.iter().filter(|o| !o.mismatches.is_empty()).count();
            for o in &outcomes {
                if o.mismatches.is_empty() {
                    println!("ok    {}", o.name);
                } else {
                    println!("FAIL  {}", o.name);
                    for m in &o.mismatches {
                        println!("        {m}");
                    }
                }
            }
            println!("{} passed, {} failed", outcomes.len() - failed, failed);
            if failed > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        PluginCommand::Check { plugin } => {
            let path = plugin;
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
            let plugin = plugin::PluginEngine::new(plugin::Limits::default())?
                .load(name, &bytes)
                .with_context(|| format!("loading {}", path.display()))?;
            let sha = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&bytes))
            };
            let report = plugin::loaded_policy(plugin.name().into(), &path, &sha, Arc::new(plugin)).report;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
