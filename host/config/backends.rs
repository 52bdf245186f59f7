//! The networked backends (`[amqp]`, `[kafka]`, `[postgres]`), and how a
//! processor takes batches from its queue (`[processor]`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
