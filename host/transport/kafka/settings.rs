//! Where and how to reach Kafka, and the context every client of eligo's runs with.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use crate::transport::log_throttle::{self, LogThrottle};
use crate::transport::TransportError;

use super::{config_error, millis};

/// Where and how to reach Kafka.
///
/// `properties` are librdkafka settings passed verbatim to every client this module
/// creates (producer, tail readers, admin), after and thus over its own defaults:
/// `security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`,
/// `ssl.ca.location`, `client.id`, … (see librdkafka's CONFIGURATION.md).
#[derive(Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Further librdkafka properties, verbatim.
    pub properties: BTreeMap<String, String>,
    /// `message.timeout.ms`: how long a produce may take, retries included, before
    /// it fails with [`TransportError::Unavailable`]. Default 30 s.
    pub message_timeout: Duration,
    /// `fetch.wait.max.ms` of tail readers: how long the broker may hold a fetch
    /// that found no data. Default 10 ms, because librdkafka's mock cluster never
    /// answers a waiting fetch early (each hop would cost up to this much); raise it
    /// (say to 100–500 ms) against a real cluster to cut idle fetch traffic.
    pub fetch_wait_max: Duration,
}

impl KafkaSettings {
    /// Settings for the given `bootstrap.servers`, with the defaults above.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
            message_timeout: Duration::from_secs(30),
            fetch_wait_max: Duration::from_millis(10),
        }
    }

    /// Adds (or replaces) one librdkafka property.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The configuration every client starts from; the caller adds its own
    /// defaults, then [`Self::apply_properties`] puts the user's over them.
    fn base_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers).set("client.id", "eligo");
        config
    }

    fn apply_properties(&self, config: &mut ClientConfig) {
        for (key, value) in &self.properties {
            config.set(key, value);
        }
    }

    fn producer_config(&self) -> ClientConfig {
        let mut config = self.base_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", millis(self.message_timeout));
        self.apply_properties(&mut config);
        config
    }

    /// A new idempotent producer.
    pub(super) fn producer(&self) -> Result<FutureProducer<QuietContext>, TransportError> {
        self.producer_config().create_with_context(QuietContext::of(self)).map_err(|e| config_error(&e))
    }

    pub(super) fn tail_config(&self) -> ClientConfig {
        let mut config = self.base_config();
        config
            // librdkafka only assigns partitions within a group, so a reader needs a
            // group id; a fresh one that never commits leaves no state on the broker.
            .set("group.id", format!("eligo-tail-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // The assigned offset is out of range when retention deleted it (the
            // oldest kept is the nearest to it) or when the broker lost the topic
            // and it was declared again (what was produced since is all there is):
            // either way, read from the oldest offset the broker has.
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", millis(self.fetch_wait_max));
        self.apply_properties(&mut config);
        config
    }

    pub(super) fn admin_config(&self) -> ClientConfig {
        let mut config = self.base_config();
        self.apply_properties(&mut config);
        config
    }
}

/// Hides secrets: settings end up in logs.
impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(key, value)| (key.as_str(), if crate::config::is_secret_key(key) { "***" } else { value.as_str() }))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &properties)
            .field("message_timeout", &self.message_timeout)
            .field("fetch_wait_max", &self.fetch_wait_max)
            .finish()
    }
}

/// librdkafka's log and error callbacks go through a [`LogThrottle`]: while a
/// broker is unreachable every client reports it many times a second. The
/// context also counts the client alive until librdkafka let go of it (see
/// [`live_clients`]).
#[derive(Clone)]
pub struct QuietContext {
    pub(super) throttle: Arc<LogThrottle>,
    _alive: Arc<Alive>,
}

impl QuietContext {
    /// The context of a new client of the cluster `settings` name.
    pub(super) fn of(settings: &KafkaSettings) -> Self {
        QuietContext { throttle: log_throttle::librdkafka(), _alive: Arc::new(Alive::new(&settings.bootstrap_servers)) }
    }
}

/// Clients alive, by `bootstrap.servers`.
static LIVE: std::sync::LazyLock<std::sync::Mutex<BTreeMap<String, usize>>> =
    std::sync::LazyLock::new(Default::default);

fn live() -> std::sync::MutexGuard<'static, BTreeMap<String, usize>> {
    LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One client of a cluster, counted from its creation until librdkafka dropped
/// its context: after its last thread ended.
struct Alive(String);

impl Alive {
    fn new(cluster: &str) -> Self {
        *live().entry(cluster.to_string()).or_default() += 1;
        Alive(cluster.to_string())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        let mut live = live();
        if let Some(count) = live.get_mut(&self.0) {
            *count -= 1;
            if *count == 0 {
                live.remove(&self.0);
            }
        }
    }
}

/// How many clients of the cluster at `bootstrap_servers` this process has
/// alive: producers, tail readers and admin clients, including those still
/// closing in the background.
pub fn live_clients(bootstrap_servers: &str) -> usize {
    live().get(bootstrap_servers).copied().unwrap_or(0)
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use tracing::Level;
        let level = match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                Level::ERROR
            }
            RDKafkaLogLevel::Warning => Level::WARN,
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => Level::INFO,
            RDKafkaLogLevel::Debug => Level::DEBUG,
        };
        self.throttle.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.throttle.log(tracing::Level::ERROR, "error", &format!("{error}: {reason}"));
    }
}

impl ConsumerContext for QuietContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_as_logged_show_no_secret_property() {
        let settings = KafkaSettings::new("k:9092")
            .with("sasl.mechanism", "PLAIN")
            .with("sasl.password", "pw-1")
            .with("sasl.jaas.config", "pw-2")
            .with("ssl.key.pem", "pw-3")
            .with("ssl.key.password", "pw-4");
        let logged = format!("{settings:?}");
        assert!(!logged.contains("pw-"), "{logged}");
        assert!(logged.contains("PLAIN"), "{logged}");
    }
}
