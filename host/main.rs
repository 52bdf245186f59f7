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
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
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
    /// Token the admin API and dashboard require [default: none].
    #[arg(long, env = "ELIGO_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

/// Each of `serve`'s settings: its argument id and the configuration key it sets.
const SETTING_KEYS: &[(&str, &str)] = &[
    ("roles", "roles"),
    ("node_listen", "node.listen"),
    ("worker_listen", "worker.listen"),
    ("admin_listen", "admin.listen"),
    ("plugins_dir", "plugins.dir"),
    ("data_dir", "data_dir"),
    ("instance", "instance"),
    ("amqp_url", "amqp.url"),
    ("kafka_bootstrap_servers", "kafka.bootstrap_servers"),
    ("kafka_properties", "kafka.properties"),
    ("postgres_url", "postgres.url"),
    ("log_format", "log.format"),
    ("admin_token", "admin.token"),
];

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints the effective configuration (secrets masked) and where each value
    /// came from (default, file, env, flag); exits non-zero on any problem.
    Check {
        #[command(flatten)]
        serve: ServeArgs,
        /// Also connect to RabbitMQ, Kafka and PostgreSQL, if configured.
        #[arg(long)]
        connect: bool,
    },
}

impl ServeArgs {
    /// The configuration file read: the one given, else `eligo.toml` if present.
    fn config_file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| Some(PathBuf::from("eligo.toml")).filter(|p| p.is_file()))
    }

    /// The configuration: file, then environment and flags over it.
    fn config(&self) -> Result<Config> {
        let mut config = match self.config_file() {
            Some(path) => Config::from_file(&path)?,
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
        if let Some(token) = &self.admin_token {
            config.admin.token = Some(token.clone());
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
        #[command(flatten)]
        settings: SettingsArg,
    },
    /// Runs fixture cases against a plugin; exits non-zero on a mismatch.
    Test {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// The case file (JSON; see the README).
        cases: PathBuf,
        #[command(flatten)]
        settings: SettingsArg,
    },
    /// Starts a new plugin crate: every hook with a comment on what it decides,
    /// a cases.json and a #[test] that runs it.
    ///
    /// Inside an eligo checkout the crate joins the plugins/ workspace (built by
    /// `cargo xtask plugins`); elsewhere, or with --dir, it is a crate of its own
    /// with a copy of the contract. Both build with
    /// `cargo component build --release --target wasm32-unknown-unknown`.
    New {
        /// The plugin's name: lowercase letters, digits and '-'.
        name: String,
        /// The folder of the new crate (default: plugins/<name> in an eligo
        /// checkout, else ./<name>).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Loads a plugin as the server would and prints what it reports.
    Check {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        #[command(flatten)]
        settings: SettingsArg,
    },
}

/// The settings a plugin command hands the plugin.
#[derive(clap::Args)]
struct SettingsArg {
    /// The plugin's settings (TOML). Without it, the `.toml` beside the plugin
    /// file is used if there is one, as the server does; else none (`{}`).
    #[arg(long = "config", value_name = "FILE")]
    file: Option<PathBuf>,
}

/// How a plugin command names the settings it used.
fn settings_used(settings: &plugin::Settings) -> String {
    settings.source.clone().unwrap_or_else(|| "none ({})".into())
}

/// Prints a failure as its cause chain, one line each. anyhow's own report adds
/// a backtrace whenever `RUST_BACKTRACE` is set, common on developer machines and
/// useless to someone whose file is missing: eligo shows it only when
/// `ELIGO_BACKTRACE=1` asks for it.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if std::env::var_os("ELIGO_BACKTRACE").is_some_and(|v| v != "0") {
                eprintln!("{}", error.backtrace());
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
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
        Command::Config(ConfigCommand::Check { serve, connect }) => {
            let check = matches.subcommand_matches("config").and_then(|m| m.subcommand_matches("check"));
            config_check(&serve, check, connect)
        }
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

/// `eligo config check`.
fn config_check(args: &ServeArgs, matches: Option<&clap::ArgMatches>, connect: bool) -> Result<()> {
    use clap::parser::ValueSource;
    use clap::CommandFactory;
    use eligo::config::report::{self, Source};
    let file = args.config_file();
    let config = args.config()?;
    let table = match &file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .parse::<toml::Table>()
                .with_context(|| format!("parsing {}", path.display()))?,
        ),
        None => None,
    };
    let serve_command = Cli::command();
    let env_of = |id: &str| {
        serve_command
            .get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    };
    let overrides: Vec<(&str, Source)> = SETTING_KEYS
        .iter()
        .filter_map(|(id, key)| {
            let source = match matches?.value_source(id)? {
                ValueSource::EnvVariable => Source::Env(env_of(id).unwrap_or_default()),
                ValueSource::CommandLine => Source::Flag(format!("--{}", id.replace('_', "-"))),
                _ => return None,
            };
            Some((*key, source))
        })
        .collect();
    match &file {
        Some(path) => println!("eligo configuration (file {})", path.display()),
        None => println!("eligo configuration (no file: defaults, environment and flags)"),
    }
    let settings = report::settings(&config, table.as_ref(), &overrides);
    let width = settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
    let value_width = settings.iter().map(|s| s.value.len()).max().unwrap_or(0).min(48);
    for s in &settings {
        println!("  {:width$} = {:value_width$}  ({})", s.key, s.value, s.source);
    }
    let (mut problems, warnings) = report::review(&config);
    let known: Vec<String> =
        serve_command.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    for var in report::unknown_env(&known) {
        problems.push(format!("environment variable {var} is not an eligo setting (known: {})", known.join(", ")));
    }
    if connect {
        println!("connections:");
        let outcomes = runtime()?.block_on(check_connections(&config));
        for (what, outcome) in outcomes {
            match outcome {
                Ok(line) => println!("  {what}: {line}"),
                Err(e) => {
                    println!("  {what}: FAILED");
                    problems.push(format!("{what}: {e:#}"));
                }
            }
        }
    }
    for w in &warnings {
        println!("warning: {w}");
    }
    for p in &problems {
        println!("problem: {p}");
    }
    if problems.is_empty() {
        println!("configuration ok");
        Ok(())
    } else {
        bail!("{} problem(s) in the configuration", problems.len())
    }
}

/// Connects to each configured backend in turn (embedded ones are opened, not
/// created: a check must not leave files behind), with a time limit each.
async fn check_connections(config: &Config) -> Vec<(&'static str, Result<String>)> {
    use std::time::{Duration, Instant};
    const LIMIT: Duration = Duration::from_secs(10);
    async fn timed<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<String> {
        let started = Instant::now();
        match tokio::time::timeout(LIMIT, f).await {
            Ok(Ok(_)) => Ok(format!("ok ({} ms)", started.elapsed().as_millis())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(anyhow::anyhow!("no answer within {} s", LIMIT.as_secs())),
        }
    }
    let mut out = Vec::new();
    out.push((
        "queue",
        match &config.amqp {
            Some(a) => timed(async { Ok(eligo::transport::amqp::AmqpQueue::connect(&a.url).await?) }).await,
            None => Ok("embedded (nothing to connect to)".into()),
        },
    ));
    out.push((
        "log",
        match &config.kafka {
            Some(k) => {
                let mut settings = eligo::transport::kafka::KafkaSettings::new(&k.bootstrap_servers);
                settings.properties = k.properties.clone();
                timed(async { Ok(eligo::transport::kafka::KafkaLog::connect(settings).await?) }).await
            }
            None => Ok("embedded (nothing to connect to)".into()),
        },
    ));
    out.push((
        "store",
        match &config.postgres {
            Some(p) => timed(async { Ok(eligo::store::postgres::PgStore::connect(&p.url, 1).await?) }).await,
            None => Ok(format!("SQLite at {}", config.sqlite_path().display())),
        },
    ));
    out
}

fn plugin_command(command: PluginCommand) -> Result<()> {
    match command {
        PluginCommand::Run { plugin, hook, input, settings } => {
            let (plugin, settings) = plugin::load_file_configured(&plugin, settings.file.as_deref())?;
            let text = if input.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?
            };
            let input = serde_json::from_str(&text).context("the input is not JSON")?;
            let (decision, cost) = runner::run_hook(&plugin, &hook, input)?;
            let out = serde_json::json!({
                "config": settings_used(&settings),
                "decision": decision,
                "cost": { "micros": cost.elapsed.as_secs_f64() * 1e6, "fuel": cost.fuel, "memory_bytes": cost.memory_bytes },
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        PluginCommand::Test { plugin, cases: cases_file, settings } => {
            let cases = runner::CaseFile::read(&cases_file)?;
            let (plugin, settings) = cases.load(&plugin, &cases_file, settings.file.as_deref())?;
            println!("config: {}", settings_used(&settings));
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
        PluginCommand::New { name, dir } => {
            use plugin::scaffold::{default_layout, scaffold, Layout};
            let layout = match dir {
                Some(dir) => Layout::Standalone(dir),
                None => default_layout(&std::env::current_dir().context("reading the current folder")?, &name),
            };
            let files = scaffold(&name, &layout)?;
            for file in &files {
                println!("wrote {}", file.display());
            }
            let lib = name.replace('-', "_");
            match &layout {
                Layout::Workspace(plugins) => println!(
                    "\nnext:\n  cargo xtask plugins                      # builds target/plugins/{name}.wasm\n  \
                     eligo plugin test target/plugins/{name}.wasm {}/{name}/cases.json\n  \
                     cp target/plugins/{name}.wasm policies/50-{name}.wasm   # a running server loads it",
                    plugins.display()
                ),
                Layout::Standalone(dir) => println!(
                    "\nnext:\n  cd {}\n  cargo component build --release --target wasm32-unknown-unknown\n  \
                     eligo plugin test target/wasm32-unknown-unknown/release/{lib}.wasm cases.json\n  \
                     cp target/wasm32-unknown-unknown/release/{lib}.wasm <policies>/50-{name}.wasm",
                    dir.display()
                ),
            }
            Ok(())
        }
        PluginCommand::Check { plugin, settings } => {
            let path = plugin;
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let (plugin, settings) = plugin::load_file_configured(&path, settings.file.as_deref())?;
            let sha = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&bytes))
            };
            let mut report = plugin::loaded_policy(plugin.name().into(), &path, &sha, Arc::new(plugin)).report;
            report.settings = Some(settings_used(&settings));
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
