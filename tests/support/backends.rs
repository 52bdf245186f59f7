//! Fresh backends for pipeline tests: embedded, or the real services of this
//! machine (RabbitMQ, PostgreSQL) with librdkafka's mock Kafka cluster.

use eligo::store::{postgres::PgStore, sqlite::SqliteStore, Store};
use eligo::transport::amqp::AmqpQueue;
use eligo::transport::embedded::EmbeddedLog;
use eligo::transport::kafka::{KafkaLog, MockKafka};
use eligo::transport::sqlite_queue::SqliteQueue;
use eligo::transport::{EventLog, Stream, WorkQueue};
use std::sync::Arc;

/// Which backends a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SQLite queue and store, in-process log.
    Embedded,
    /// RabbitMQ, Kafka (mock cluster), PostgreSQL.
    Networked,
}

/// A set of backends, and what keeps them alive and clean.
pub struct Backends {
    pub queue: Arc<dyn WorkQueue>,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn Store>,
    /// For the networked kind: how another process reaches the same services.
    pub env: Vec<(String, String)>,
    schema: Option<String>,
    /// Dropped last: clients must go before the mock cluster.
    kafka: Option<MockKafka>,
    _dir: tempfile::TempDir,
    _serial: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// The RabbitMQ the tests use.
pub fn amqp_url() -> String {
    std::env::var("ELIGO_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Networked tests share RabbitMQ's fixed queue names: one at a time per test binary.
fn serial() -> Arc<tokio::sync::Mutex<()>> {
    static LOCK: std::sync::OnceLock<Arc<tokio::sync::Mutex<()>>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| Arc::new(tokio::sync::Mutex::new(()))).clone()
}

impl Backends {
    /// Fresh backends of `kind`, migrated and declared.
    pub async fn new(kind: Kind) -> Backends {
        let dir = tempfile::tempdir().expect("tempdir");
        match kind {
            Kind::Embedded => {
                let store = SqliteStore::open(&dir.path().join("eligo.db")).await.expect("opening SQLite");
                store.migrate().await.expect("migrating SQLite");
                let queue = SqliteQueue::open(&dir.path().join("eligo-queue.db")).await.expect("opening the queue");
                Backends {
                    queue: Arc::new(queue),
                    log: Arc::new(EmbeddedLog::new()),
                    store: Arc::new(store),
                    env: Vec::new(),
                    schema: None,
                    kafka: None,
                    _dir: dir,
                    _serial: None,
                }
            }
            Kind::Networked => {
                let kafka = MockKafka::start().expect("starting librdkafka's mock Kafka cluster");
                Self::networked(dir, kafka.bootstrap_servers(), Some(kafka)).await
            }
        }
    }

    /// Networked backends whose Kafka is the broker at `bootstrap` (a real one,
    /// in its own process), not the mock cluster.
    pub async fn networked_on_kafka(bootstrap: &str) -> Backends {
        Self::networked(tempfile::tempdir().expect("tempdir"), bootstrap.to_string(), None).await
    }

    async fn networked(dir: tempfile::TempDir, bootstrap: String, kafka: Option<MockKafka>) -> Backends {
        let serial = serial().lock_owned().await;
        let amqp = amqp_url();
        reset_rabbitmq(&amqp).await;
        let queue = AmqpQueue::connect(&amqp).await.unwrap_or_else(|e| {
            panic!("RabbitMQ at {amqp} is unreachable: {e} (start it with `rabbitmq-server -detached`)")
        });
        queue.declare().await.expect("declaring RabbitMQ topology");
        let settings = eligo::transport::kafka::KafkaSettings::new(bootstrap.clone());
        let log = KafkaLog::connect(settings).await.unwrap_or_else(|e| panic!("Kafka at {bootstrap}: {e}"));
        if kafka.is_none() {
            // The mock cluster was made with its topics; a real broker may need them.
            log.declare().await.expect("declaring the Kafka topics");
        }
        let (pg_url, schema) = fresh_postgres_schema().await;
        let store =
            PgStore::connect(&pg_url, 8).await.unwrap_or_else(|e| panic!("PostgreSQL at {pg_url} is unreachable: {e}"));
        store.migrate().await.expect("migrating PostgreSQL");
        let env = vec![
            ("ELIGO_AMQP_URL".into(), amqp),
            ("ELIGO_KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap),
            ("ELIGO_KAFKA_PROPERTIES".into(), "fetch.wait.max.ms=10".into()),
            ("ELIGO_POSTGRES_URL".into(), pg_url),
        ];
        Backends {
            queue: Arc::new(queue),
            log: Arc::new(log),
            store: Arc::new(store),
            env,
            schema: Some(schema),
            kafka,
            _dir: dir,
            _serial: Some(serial),
        }
    }

    /// The mock Kafka cluster of networked backends, for fault injection.
    pub fn kafka_mock(&self) -> &MockKafka {
        self.kafka.as_ref().expect("networked backends run librdkafka's mock cluster")
    }

    /// A folder for this test's files.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Drops the clients, then the schema and the mock cluster.
    pub async fn finish(self) {
        let Backends { queue, log, store, schema, kafka, _dir, _serial, .. } = self;
        drop((queue, log, store));
        if let Some(schema) = schema {
            drop_schema(&schema).await;
        }
        // librdkafka's clients let go before the cluster goes: awaited here, where
        // tasks closing them can still run (the cluster's drop would block for it).
        if let Some(kafka) = &kafka {
            kafka.clients_gone().await;
        }
        drop(kafka);
    }
}

async fn reset_rabbitmq(url: &str) {
    use lapin::options::QueueDeleteOptions;
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.unwrap_or_else(|e| {
            panic!("RabbitMQ at {url} is unreachable: {e} (start it with `rabbitmq-server -detached`)")
        });
    let channel = connection.create_channel().await.expect("a RabbitMQ channel");
    for stream in Stream::ALL {
        channel.queue_delete(stream.queue(), QueueDeleteOptions::default()).await.expect("deleting a test queue");
    }
    let _ = connection.close(200, "reset").await;
}

/// A new schema on the test PostgreSQL, and a URL whose connections use it.
pub async fn fresh_postgres_schema() -> (String, String) {
    use sqlx::Connection;
    let url = super::postgres_url();
    let mut admin = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is unreachable: {e} (set ELIGO_TEST_POSTGRES_URL)"));
    let schema = format!("eligo_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut admin).await.expect("creating a test schema");
    let separator = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{separator}options=-c%20search_path%3D{schema}"), schema)
}

async fn drop_schema(schema: &str) {
    use sqlx::Connection;
    if let Ok(mut admin) = sqlx::PgConnection::connect(&super::postgres_url()).await {
        let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut admin).await;
    }
}
