//! `eligo config check`: the effective configuration and where each value came from,
//! what is wrong with it, and (with --connect) whether each backend answers.

use super::process::runtime;
use super::serve_args::{ServeArgs, SETTING_KEYS};
use crate::config::Config;
use anyhow::{bail, Context, Result};
use clap::Subcommand;

// clap also reads this doc as `eligo config`'s about, but the `Config` variant's own,
// applied after, wins: --help does not show it.
/// `eligo config`'s subcommands.
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Prints the effective configuration (secrets masked) and where each value
    /// came from (default, file, env, flag); exits non-zero on any problem.
    Check {
        /// The settings checked: `serve`'s.
        #[command(flatten)]
        serve: ServeArgs,
        /// Also connect to RabbitMQ, Kafka and PostgreSQL, if configured.
        #[arg(long)]
        connect: bool,
    },
}

/// `eligo config check`. `matches` are those of `config check` itself: they tell a
/// setting given as a flag or in the environment from one left to the file.
pub fn run(args: &ServeArgs, matches: Option<&clap::ArgMatches>, connect: bool) -> Result<()> {
    use crate::config::report::{self, Source};
    use clap::parser::ValueSource;
    use clap::Args;
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
    // The settings' environment variables are read off their declaration, so that a
    // new setting is known here without a second list to keep.
    let serve_command = ServeArgs::augment_args(clap::Command::new("eligo"));
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
    if let Err(e) = crate::plugin::signature::TrustedKeys::parse(&config.plugins.trusted_keys) {
        problems.push(format!("plugins.trusted_keys: {e}"));
    }
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
            Some(a) => timed(async { Ok(crate::transport::amqp::AmqpQueue::connect(&a.url).await?) }).await,
            None => Ok("embedded (nothing to connect to)".into()),
        },
    ));
    out.push((
        "log",
        match &config.kafka {
            Some(k) => {
                let mut settings = crate::transport::kafka::KafkaSettings::new(&k.bootstrap_servers);
                settings.properties = k.properties.clone();
                timed(async { Ok(crate::transport::kafka::KafkaLog::connect(settings).await?) }).await
            }
            None => Ok("embedded (nothing to connect to)".into()),
        },
    ));
    out.push((
        "store",
        match &config.postgres {
            Some(p) => timed(async { Ok(crate::store::postgres::PgStore::connect(&p.url, 1).await?) }).await,
            None => Ok(format!("SQLite at {}", config.sqlite_path().display())),
        },
    ));
    out
}
