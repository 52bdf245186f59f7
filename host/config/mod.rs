//! Configuration: a TOML file, overridden by environment variables and flags
//! (flags > environment > file > defaults). Every setting has a default that runs
//! eligo on a bare machine: embedded backends, listening on 127.0.0.1.

pub mod report;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
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

/// The node WebSocket server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Solutions queued per connection before it is closed as too slow.
    pub outbox: usize,
    /// WebSocket buffers of each connection.
    pub socket: SocketConfig,
    /// Caps on open connections.
    pub connections: ConnectionLimits,
    /// Serve `wss://` with this certificate.
    pub tls: Option<TlsConfig>,
    /// Nodes over HTTP: a job by POST, its solutions as a stream or a webhook.
    pub http: NodeHttpConfig,
    /// The webhooks a job may name in its `callback`, by name. Only these URLs
    /// are ever called: never one taken from a request.
    pub webhooks: BTreeMap<String, WebhookConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: ([127, 0, 0, 1], 8001).into(),
            outbox: 1024,
            socket: SocketConfig::default(),
            connections: ConnectionLimits { max: 1_000, max_per_ip: 100, ..ConnectionLimits::default() },
            tls: None,
            http: NodeHttpConfig::default(),
            webhooks: BTreeMap::new(),
        }
    }
}

impl NodeConfig {
    /// Adds the webhooks set by environment variables over those of the file:
    /// `ELIGO_NODE_WEBHOOKS_<NAME>_URL` and `ELIGO_NODE_WEBHOOKS_<NAME>_SECRET`
    /// (the name in lower case). A webhook needs both, from either place.
    pub fn webhooks_from_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (key, value) in vars {
            let Some(rest) = key.strip_prefix(WEBHOOK_ENV_PREFIX) else { continue };
            let (name, field) = match (rest.strip_suffix("_URL"), rest.strip_suffix("_SECRET")) {
                (Some(name), _) => (name, "url"),
                (_, Some(name)) => (name, "secret"),
                _ => continue,
            };
            let hook = self.webhooks.entry(name.to_ascii_lowercase()).or_default();
            match field {
                "url" => hook.url = value,
                _ => hook.secret = value,
            }
        }
    }
}

/// What names the environment variables of a webhook start with.
pub const WEBHOOK_ENV_PREFIX: &str = "ELIGO_NODE_WEBHOOKS_";

/// Nodes over HTTP, on the node listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeHttpConfig {
    /// How long an HTTP node lives after its last job: its longest wait. The
    /// default is the seed rules' wait; a policy that waits longer wants more.
    pub node_ttl_seconds: u64,
    /// HTTP nodes alive at once in this process; past it a POST that would make
    /// a new one is answered 503 (one naming an existing node with `Eligo-Node` still works).
    pub max_nodes: usize,
    /// Solutions an HTTP node's stream keeps to resume from `Last-Event-ID`; a
    /// stream resumed from before them is caught up from the store.
    pub history: usize,
    /// Jobs each client IP may POST per second; past it, 429 with `Retry-After`.
    pub jobs_per_second: u32,
    /// Jobs a client IP may POST at once before the rate applies.
    pub jobs_burst: u32,
    /// Webhook attempts in flight at once, across every node.
    pub webhook_concurrency: u16,
    /// How long a webhook's receiver has to answer one attempt.
    pub webhook_timeout_seconds: u64,
}

impl Default for NodeHttpConfig {
    fn default() -> Self {
        NodeHttpConfig {
            // The seed rules' wait (`plugin::WAIT_MS`).
            node_ttl_seconds: 20 * 60,
            max_nodes: 10_000,
            history: 4_096,
            jobs_per_second: 20,
            jobs_burst: 40,
            webhook_concurrency: 64,
            webhook_timeout_seconds: 10,
        }
    }
}

/// One webhook a job may name: where solutions are POSTed and the key they are signed with.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// The receiver's URL (`http://` or `https://`).
    pub url: String,
    /// The signing secret, `whsec_<base64>` as Standard Webhooks writes it.
    pub secret: String,
}

impl WebhookConfig {
    /// What is wrong with it, if anything: a URL that is not `http(s)://…`, a
    /// secret that is not `whsec_` and base64.
    pub fn check(&self) -> Result<(), String> {
        match url::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => return Err(format!("url must be http:// or https://, not {}://", url.scheme())),
            Err(e) => return Err(format!("url {:?} is not a URL: {e}", redact_url(&self.url))),
        }
        use base64::Engine as _;
        let key = self.secret.strip_prefix("whsec_").ok_or("secret must start with whsec_ (Standard Webhooks)")?;
        match base64::engine::general_purpose::STANDARD.decode(key) {
            Ok(bytes) if bytes.len() >= 16 => Ok(()),
            Ok(_) => Err("secret must hold at least 16 bytes after whsec_".into()),
            Err(_) => Err("secret after whsec_ must be base64".into()),
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig").field("url", &redact_url(&self.url)).field("secret", &"***").finish()
    }
}

/// WebSocket buffer sizes and input bounds of one connection. The library's
/// default buffers (128 KiB each way) cost ~130 KiB per idle connection; frames of
/// this protocol are a few hundred bytes, so small buffers cost nothing in speed
/// and keep 100,000 connections affordable. Its default message limit (64 MiB)
/// would let any client make the server buffer that much.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketConfig {
    /// Bytes read from the socket at a time.
    pub read_buffer_bytes: usize,
    /// Bytes gathered before a write is flushed to the socket.
    pub write_buffer_bytes: usize,
    /// Longest message (and frame) a client may send; a longer one closes the
    /// connection with 1009 before its payload is read.
    pub max_message_bytes: usize,
    /// Longest text field of a frame, in UTF-8 bytes.
    pub max_text_field_bytes: usize,
    /// Longest JSON object field of a frame (`solution`, `epoch_challenge`), as
    /// compact JSON.
    pub max_object_field_bytes: usize,
    /// Longest unique key of a solution (`partial_solution.nonce` as text), in
    /// bytes; a longer one is refused like any field over its limit.
    pub max_solution_key_bytes: usize,
    /// Data frames a connection may send per second, sustained; past that (and
    /// the burst), each frame is dropped with an error frame.
    pub frames_per_second: u32,
    /// Data frames a connection may send at once above the sustained rate. A
    /// flood (drops less than a second apart) is closed with 1008 once it has
    /// dropped this many frames or lasted two seconds.
    pub frame_burst: u32,
    /// Pings and pongs a connection may send per second (burst twice that),
    /// apart from its data frames: each ping costs the server a pong. A flood of
    /// them is closed with 1008 as for data frames.
    pub control_frames_per_second: u32,
    /// Seconds between the server's pings of each connection (0: none). A pong
    /// times the round trip the workers API shows; the first ping goes one to
    /// two intervals (at random) after the connection opens.
    pub ping_interval_seconds: u64,
    /// Error frames and refusals written to a connection per second (burst the
    /// same); past that they are counted in `eligo_error_frames_unsent_total`
    /// and not written, so a client cannot choose how much the server writes.
    pub error_frames_per_second: u32,
    /// Connections the kernel holds for the listener before eligo accepts them
    /// (capped by `net.core.somaxconn`). When every worker reconnects at once, a
    /// full queue shows as clients retrying their SYN after 1 s and 3 s.
    pub listen_backlog: u32,
}

impl Default for SocketConfig {
    fn default() -> Self {
        let fields = crate::protocol::FieldLimits::default();
        SocketConfig {
            read_buffer_bytes: 4096,
            write_buffer_bytes: 4096,
            max_message_bytes: 64 * 1024,
            max_text_field_bytes: fields.text_bytes,
            max_object_field_bytes: fields.object_bytes,
            max_solution_key_bytes: fields.key_bytes,
            // A fast prover sends tens of solutions a second; the load benchmark's
            // workers send ~250.
            frames_per_second: 1000,
            frame_burst: 2000,
            control_frames_per_second: 10,
            ping_interval_seconds: 30,
            error_frames_per_second: 10,
            listen_backlog: 65_535,
        }
    }
}

impl SocketConfig {
    /// The bounds on a frame's fields.
    pub fn fields(&self) -> crate::protocol::FieldLimits {
        crate::protocol::FieldLimits {
            text_bytes: self.max_text_field_bytes,
            object_bytes: self.max_object_field_bytes,
            key_bytes: self.max_solution_key_bytes,
        }
    }
}

/// Caps on one server's open connections; 0 is no cap. Over a cap, the upgrade
/// is answered 503 (server full) or 429 (this IP full) with the limit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max: usize,
    /// Connections open at once from one client IP.
    pub max_per_ip: usize,
    /// Client IPs the per-IP cap does not apply to: your own TLS proxies and load
    /// testers, whose connections all come from one address.
    pub per_ip_exempt: Vec<std::net::IpAddr>,
    /// Leading bits of an IPv6 address that the per-IP limits count as one
    /// client (0 to 128): a single subscriber is usually handed a whole /64, and
    /// would otherwise have 2^64 addresses to spread over. IPv4 addresses are
    /// counted one by one. An exempt address exempts itself, not its prefix.
    #[serde(deserialize_with = "ipv6_prefix_len")]
    pub ipv6_prefix_len: u8,
    /// Sockets one client IP may open per second (burst the same); past that the
    /// socket is answered 429 before its request is read. 0 is no limit; the
    /// exempt IPs are exempt here too.
    pub attempts_per_ip_per_second: u32,
    /// Seconds a socket has, from its accept, to complete its TLS handshake and
    /// send its whole HTTP request; then it is dropped. Meanwhile it counts
    /// toward the caps.
    pub handshake_timeout_secs: u64,
    /// Connections from one IP refused as unauthorized (a wrong or missing token,
    /// a wrong challenge answer) within a minute before the IP is refused for
    /// `auth_block_secs`: 429 at the accept. 0 is no limit; exempt IPs are exempt.
    pub auth_failures_per_minute: u32,
    /// How long an IP over `auth_failures_per_minute` is refused.
    pub auth_block_secs: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max: 100_000,
            max_per_ip: 1_000,
            per_ip_exempt: vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()],
            ipv6_prefix_len: 64,
            // A pool behind one NAT address reconnects 200 rigs a second.
            attempts_per_ip_per_second: 200,
            handshake_timeout_secs: 10,
            auth_failures_per_minute: 10,
            auth_block_secs: 300,
        }
    }
}

/// A prefix length of an IPv6 address, refused past 128 when the file is read
/// rather than clamped in silence.
fn ipv6_prefix_len<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let len = u8::deserialize(deserializer)?;
    if len > 128 {
        return Err(serde::de::Error::custom(format!("ipv6_prefix_len is {len}; an IPv6 prefix is 0 to 128 bits")));
    }
    Ok(len)
}

/// The worker WebSocket server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Jobs queued per connection; past that, jobs are dropped for it (latest wins).
    pub outbox: usize,
    /// Seconds a new connection has to send its welcome.
    pub welcome_timeout_secs: u64,
    /// Solutions of one connection waiting for the broker's confirm at once; past
    /// that, the connection's next frame is read once one is confirmed.
    pub publishes_in_flight: usize,
    /// WebSocket buffers of each connection.
    pub socket: SocketConfig,
    /// Caps on open connections.
    pub connections: ConnectionLimits,
    /// Serve `wss://` with this certificate.
    pub tls: Option<TlsConfig>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            listen: ([127, 0, 0, 1], 8002).into(),
            outbox: 16,
            welcome_timeout_secs: 30,
            publishes_in_flight: 32,
            socket: SocketConfig::default(),
            connections: ConnectionLimits::default(),
            tls: None,
        }
    }
}

/// Health, metrics and plugin reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on; `None` turns the admin server off.
    pub listen: Option<SocketAddr>,
    /// Serve `https://` with this certificate.
    pub tls: Option<TlsConfig>,
    /// Required on every admin path but `/healthz`, `/readyz` and `/metrics`, when set.
    pub token: Option<String>,
    /// Seconds of per-second samples the dashboard's charts and `/api/v1/series`
    /// keep (about 200 bytes each).
    pub history_secs: u32,
    /// A worker connected this many minutes without a valid solution within them
    /// is marked silent (the workers table, `eligo_workers_silent`).
    pub silent_after_minutes: u32,
    /// Answer `/api/v1/miners/{address}` without the token: an address's own workers
    /// and solutions, to whoever knows the address, at a rate per client IP. The
    /// rest of the admin server still needs the token.
    pub public_miner_stats: bool,
    /// Requests each client IP (IPv6 by /64) may make to it per minute without the
    /// token, at once up to as many; past it, 429 with `Retry-After`.
    pub public_miner_stats_per_minute: std::num::NonZeroU32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(([127, 0, 0, 1], 8003).into()),
            tls: None,
            token: None,
            history_secs: 900,
            silent_after_minutes: 30,
            public_miner_stats: false,
            public_miner_stats_per_minute: const { std::num::NonZeroU32::new(30).expect("not zero") },
        }
    }
}

/// A listener's TLS certificate: PEM files, reloaded when they change.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// How a processor takes messages from its queue.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    /// Messages the broker may have out with this consumer, unacked.
    pub prefetch: u16,
    /// Most messages handled as one batch. Below `prefetch`, so the broker keeps
    /// delivering while a batch is handled.
    pub max_batch: usize,
    /// Longest wait for more messages once one is in hand, in milliseconds.
    pub linger_ms: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings { prefetch: 512, max_batch: 256, linger_ms: 2 }
    }
}

/// The policy plugins.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// The folder of `*.wasm` plugins, watched for changes.
    pub dir: PathBuf,
    /// Quiet time after a change before reloading, in milliseconds.
    pub debounce_ms: u64,
    /// Limits of every plugin call.
    pub limits: Limits,
    /// While the folder holds no plugin file at all, apply the original system's
    /// rules (built in, natively) rather than admitting and offering everything.
    /// They never stand in for a plugin that failed to load.
    pub builtin_seed_rules: bool,
    /// Settings by plugin key (`[plugins.config.20-tag-router]`), handed to the
    /// plugin's `configure`. A `<key>.toml` beside the plugin file does the same
    /// and is reloaded when it changes; a plugin may have one or the other.
    pub config: std::collections::BTreeMap<String, serde_json::Value>,
    /// Public keys (`ed25519:<base64>`, from `eligo plugin keygen`) a plugin must
    /// be signed by to load; empty: no signature needed. Reloaded on SIGHUP.
    pub trusted_keys: Vec<String>,
    /// Threads that run the policies' decisions, apart from the threads that
    /// serve sockets and HTTP; 0 is one per core.
    pub decision_threads: usize,
    /// Start even when a plugin of the folder fails to load (it is reported at
    /// `/healthz` and `/plugins`, and every decision it would take part in is
    /// refused until it loads). Off: eligo refuses to start, naming the file.
    pub start_with_failed: bool,
    /// Where compiled plugins are kept between starts; default `plugin-cache`
    /// in `data_dir`. Only eligo writes there (mode 0700).
    pub cache_dir: Option<PathBuf>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: PathBuf::from("policies"),
            debounce_ms: 250,
            limits: Limits::default(),
            builtin_seed_rules: true,
            config: Default::default(),
            trusted_keys: Vec::new(),
            decision_threads: 0,
            start_with_failed: false,
            cache_dir: None,
        }
    }
}

impl PluginsConfig {
    /// The folder of compiled plugins: `cache_dir`, or `plugin-cache` in `data_dir`.
    pub fn cache_dir(&self, data_dir: &std::path::Path) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| data_dir.join("plugin-cache"))
    }
}

/// Limits applied to every plugin call, and to the making of every instance.
///
/// Fuel is the precise limit of a plugin's own work: it counts what the plugin
/// did, whatever else the machine was doing. The wall-clock deadlines are a
/// backstop for when fuel is off, set with headroom so that a busy host does not
/// trip them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock budget of one call, in milliseconds (epoch interruption). The
    /// epoch ticks every tenth of it (at least 10 ms, at most 100 ms), and a
    /// deadline is rounded up to whole ticks.
    pub deadline_ms: u64,
    /// Fuel (roughly, wasm instructions) one call may use; 0 turns fuel off and
    /// leaves the deadline alone to stop runaway plugins (faster: fuel metering
    /// costs every loop iteration a counter update).
    pub fuel: u64,
    /// Wall-clock budget of making an instance, in milliseconds: instantiation
    /// and `configure` (for Python and JavaScript, the interpreter's start-up),
    /// and `info()` at load. Every new instance runs `configure`, so this applies
    /// to instances made later too. Generous: loading is off the hot path.
    pub load_deadline_ms: u64,
    /// Fuel the making of an instance may use (as `load_deadline_ms`); 0: no
    /// fuel limit on it, the load deadline alone stops it. Ignored when `fuel`
    /// is 0 (fuel off).
    pub load_fuel: u64,
    /// Linear memory one plugin instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Largest string or state blob passed to or accepted from a plugin, in bytes.
    pub max_blob_bytes: usize,
    /// Most workers or nodes passed to one `offer-*` call.
    pub max_batch: usize,
    /// Log lines per second a plugin may write before they are dropped.
    pub log_lines_per_second: u32,
    /// Idle instances kept per plugin for reuse.
    pub idle_instances: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 1_000,
            fuel: 200_000_000,
            load_deadline_ms: 30_000,
            load_fuel: 0,
            memory_bytes: 32 << 20,
            max_blob_bytes: 256 << 10,
            max_batch: 200_000,
            log_lines_per_second: 50,
            idle_instances: 8,
        }
    }
}

/// RabbitMQ.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:5672/vhost`, or `amqps://…` for TLS.
    pub url: String,
}

/// Kafka.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// Any librdkafka client property, passed through: `security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.location`, …
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// PostgreSQL.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:pass@host:5432/db?sslmode=require`.
    pub url: String,
    /// Connections in the pool.
    #[serde(default = "default_pool")]
    pub max_connections: u32,
}

fn default_pool() -> u32 {
    10
}

/// Logging.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `eligo=debug,info`; `RUST_LOG` wins.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, filter: "info".into() }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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

/// What, in a setting's or a librdkafka property's name, marks its value as a
/// secret: `sasl.password`, `ssl.key.password`, `ssl.key.pem`, `sasl.jaas.config`
/// (which holds a password), `admin.token`… Over-masking costs a `***` in a
/// report; under-masking prints a credential.
const SECRET_MARKERS: [&str; 10] =
    ["password", "passwd", "secret", "token", "psk", "credential", "jaas", "ssl.key", ".pem", "oauthbearer.config"];

/// Whether the value of the setting or Kafka property `key` is a secret, never
/// to be printed or logged. The one list `config check` and the Kafka
/// transport's logs both mask by.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_MARKERS.iter().any(|marker| key.contains(marker))
}

/// A URL with its password replaced by `***`, for logs and reports (the AMQP,
/// PostgreSQL and any other URL alike).
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "<unparseable url>".into(),
    }
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
