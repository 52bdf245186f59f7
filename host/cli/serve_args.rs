//! `serve`'s settings, shared by `serve`, `migrate` and `config check`: each one laid
//! over the configuration file.

use crate::config::{AmqpConfig, Config, KafkaConfig, LogFormat, PostgresConfig, RoleName};
use anyhow::{bail, Result};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings of `serve`. Each overrides the configuration file; each can also be
/// given as the environment variable shown. Without --amqp-url, --kafka-bootstrap-servers
/// and --postgres-url, eligo runs on embedded backends (in-process queue and log, SQLite).
#[derive(clap::Args, Default)]
pub struct ServeArgs {
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
    /// Seconds to serve on after SIGTERM with /readyz 503, before draining [default: 0].
    #[arg(long, env = "ELIGO_SHUTDOWN_DELAY_SECONDS")]
    shutdown_delay_seconds: Option<u64>,
}

/// Each of `serve`'s settings: its argument id and the configuration key it sets.
pub(super) const SETTING_KEYS: &[(&str, &str)] = &[
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
    ("shutdown_delay_seconds", "shutdown_delay_seconds"),
];

impl ServeArgs {
    /// The configuration file read: the one given, else `eligo.toml` if present.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| Some(PathBuf::from("eligo.toml")).filter(|p| p.is_file()))
    }

    /// The configuration: file, then environment and flags over it.
    pub fn config(&self) -> Result<Config> {
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
            kafka.properties.extend(crate::config::parse_properties(properties)?);
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
        if let Some(seconds) = self.shutdown_delay_seconds {
            config.shutdown_delay_seconds = seconds;
        }
        config.node.webhooks_from_env(std::env::vars());
        Ok(config)
    }
}
