//! Configuration: a TOML file, overridden by environment variables and flags
//! (flags > environment > file > defaults). Every setting has a default that runs
//! eligo on a bare machine: embedded backends, listening on 127.0.0.1.

mod admin;
mod backends;
mod log;
mod node;
mod plugins;
pub mod report;
mod secrets;
mod socket;
mod worker;

pub use admin::AdminConfig;
pub use backends::{AmqpConfig, BatchSettings, KafkaConfig, PostgresConfig};
pub use log::{LogConfig, LogFormat};
pub use node::{NodeConfig, NodeHttpConfig, WebhookConfig, WEBHOOK_ENV_PREFIX};
pub use plugins::PluginsConfig;
pub use secrets::{is_secret_key, redact_url};
pub use socket::{ConnectionLimits, SocketConfig, TlsConfig};
pub use worker::WorkerConfig;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The stages a process can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RoleName {
    /// Accepts nodes' jobs, delivers solutions.
    NodeServer,
    /// Accepts workers, delivers jobs, accepts solutions.
    WorkerServer,
    /// Stores and broadcasts jobs.
    JobProcessor,
    /// Stores, validates and broadcasts solutions.
    SolutionProcessor,
    /// Records worker connections from the worker servers' presence events.
    PresenceProcessor,
}

impl RoleName {
    /// Every role.
    pub const ALL: [RoleName; 5] = [
        RoleName::NodeServer,
        RoleName::WorkerServer,
        RoleName::JobProcessor,
        RoleName::SolutionProcessor,
        RoleName::PresenceProcessor,
    ];
}

/// All of eligo's settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Roles this process runs.
    pub roles: Vec<RoleName>,
    /// This process's name in the `worker` table; connections it left open are
    /// finished when it starts again. Give each worker-server process its own.
    pub instance: String,
    /// Where the SQLite files live: the store without PostgreSQL, the queue without RabbitMQ.
    pub data_dir: PathBuf,
    /// Apply database migrations at start-up.
    pub migrate_on_start: bool,
    /// Seconds to go on serving after SIGTERM while `/readyz` says 503, before
    /// closing connections: the time a load balancer takes to stop sending new
    /// ones (on Kubernetes, a `preStop` sleep does the same).
    pub shutdown_delay_seconds: u64,
    /// The node WebSocket server.
    pub node: NodeConfig,
    /// The worker WebSocket server.
    pub worker: WorkerConfig,
    /// Health, metrics and plugin reports over HTTP.
    pub admin: AdminConfig,
    /// How the job and solution processors take messages from their queues.
    pub processor: BatchSettings,
    /// The policy plugins.
    pub plugins: PluginsConfig,
    /// RabbitMQ; without it, a queue in a SQLite file in `data_dir`.
    pub amqp: Option<AmqpConfig>,
    /// Kafka; without it, an in-process log.
    pub kafka: Option<KafkaConfig>,
    /// PostgreSQL; without it, SQLite in `data_dir`.
    pub postgres: Option<PostgresConfig>,
    /// Logging.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            roles: RoleName::ALL.to_vec(),
            instance: "eligo".into(),
            data_dir: PathBuf::from("."),
            migrate_on_start: true,
            shutdown_delay_seconds: 0,
            node: NodeConfig::default(),
            worker: WorkerConfig::default(),
            admin: AdminConfig::default(),
            processor: Default::default(),
            plugins: PluginsConfig::default(),
            amqp: None,
            kafka: None,
            postgres: None,
            log: LogConfig::default(),
        }
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid configuration in {path}: {error}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        error: toml::de::Error,
    },
    /// A `key=value` setting is malformed.
    #[error("{0}")]
    Setting(String),
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: display.clone(), error })?;
        toml::from_str(&text).map_err(|error| ConfigError::Parse { path: display, error })
    }

    /// One line per backend, with secrets hidden, for the start-up banner.
    pub fn describe_backends(&self) -> Vec<String> {
        vec![
            match &self.amqp {
                Some(a) => format!("queue: RabbitMQ at {}", redact_url(&a.url)),
                None => format!("queue: embedded, durable in {}", self.queue_path().display()),
            },
            match &self.kafka {
                Some(k) => format!("log: Kafka at {}", k.bootstrap_servers),
                None => "log: embedded (in-process)".into(),
            },
            match &self.postgres {
                Some(p) => format!("store: PostgreSQL at {}", redact_url(&p.url)),
                None => format!("store: SQLite at {}", self.sqlite_path().display()),
            },
        ]
    }

    /// The SQLite file used without PostgreSQL.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("eligo.db")
    }

    /// The SQLite file of the embedded queue, used without RabbitMQ.
    pub fn queue_path(&self) -> PathBuf {
        self.data_dir.join("eligo-queue.db")
    }
}

/// Parses `key=value[,key=value…]`.
pub fn parse_properties(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ConfigError::Setting(format!("expected key=value, got {pair:?}")))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_embedded_on_loopback() {
        let c = Config::default();
        assert_eq!(c.node.listen.to_string(), "127.0.0.1:8001");
        assert_eq!(c.worker.listen.to_string(), "127.0.0.1:8002");
        assert!(c.amqp.is_none() && c.kafka.is_none() && c.postgres.is_none());
        assert_eq!(c.roles.len(), 5);
    }

    #[test]
    fn a_file_overrides_defaults_and_unknown_keys_are_errors() {
        let c: Config = toml::from_str(
            "roles = [\"node-server\"]\n[node]\nlisten = \"0.0.0.0:9001\"\n[kafka]\nbootstrap_servers = \"k:9092\"\n[kafka.properties]\n\"sasl.mechanism\" = \"PLAIN\"\n",
        )
        .expect("valid configuration");
        assert_eq!(c.roles, vec![RoleName::NodeServer]);
        assert_eq!(c.node.listen.port(), 9001);
        assert_eq!(c.kafka.expect("kafka section").properties["sasl.mechanism"], "PLAIN");
        assert!(toml::from_str::<Config>("nodes = 1").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(redact_url("amqp://guest:secret@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
        assert!(!Config {
            postgres: Some(PostgresConfig { url: "postgres://u:pw@h/db".into(), max_connections: 1 }),
            ..Config::default()
        }
        .describe_backends()
        .join(" ")
        .contains("pw"));
    }

    #[test]
    fn the_ipv6_prefix_counted_as_one_client_is_a_slash_64_unless_set() {
        assert_eq!(Config::default().worker.connections.ipv6_prefix_len, 64);
        assert_eq!(Config::default().node.connections.ipv6_prefix_len, 64);
        let c: Config = toml::from_str("[worker.connections]\nipv6_prefix_len = 48\n").expect("valid configuration");
        assert_eq!(c.worker.connections.ipv6_prefix_len, 48);
        let too_long = toml::from_str::<Config>("[node.connections]\nipv6_prefix_len = 129\n").expect_err("over 128");
        assert!(too_long.to_string().contains("0 to 128 bits"), "{too_long}");
    }

    #[test]
    fn webhooks_come_from_the_file_and_the_environment_and_are_checked() {
        let mut c: Config =
            toml::from_str("[node.webhooks.payouts]\nurl = \"https://pool.example/h\"\n").expect("valid configuration");
        c.node.webhooks_from_env([
            ("ELIGO_NODE_WEBHOOKS_PAYOUTS_SECRET".to_string(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string()),
            ("ELIGO_NODE_WEBHOOKS_OPS_URL".to_string(), "ftp://ops.example/".to_string()),
            ("ELIGO_NODE_WEBHOOKS_OPS_SECRET".to_string(), "plain".to_string()),
            ("ELIGO_NODE_LISTEN".to_string(), "ignored".to_string()),
        ]);
        assert_eq!(c.node.webhooks["payouts"].check(), Ok(()));
        let ops = &c.node.webhooks["ops"];
        assert!(ops.check().is_err_and(|e| e.contains("http:// or https://")), "{:?}", ops.check());
        let ops = WebhookConfig { url: "http://ops.example/".into(), ..ops.clone() };
        assert!(ops.check().is_err_and(|e| e.contains("whsec_")));
        assert!(!format!("{:?}", c.node.webhooks).contains("MfKQ9r8"), "secrets stay out of debug output");
    }

    #[test]
    fn secret_keys_are_told_by_their_name_whatever_the_case() {
        for key in ["sasl.password", "ssl.key.password", "ssl.key.pem", "sasl.jaas.config", "token", "SASL.PASSWORD"] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["sasl.mechanism", "security.protocol", "bootstrap_servers", "url", "max_per_ip"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn properties_parse() {
        let p = parse_properties("security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512").expect("properties");
        assert_eq!(p.len(), 2);
        assert!(parse_properties("oops").is_err());
    }
}
