//! librdkafka's in-process mock cluster, for tests and `eligo kafka-mock`.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::transport::{Topic, TransportError};

use super::settings::{live_clients, KafkaSettings};
use super::{refused, unavailable};

/// Partitions the mock cluster gives each topic (what its auto-creation uses too).
const MOCK_PARTITIONS: i32 = 4;

/// librdkafka's in-process mock Kafka cluster (one broker on a random port of
/// 127.0.0.1, memory only) with topics `job` and `solution` of 4 partitions.
///
/// The cluster is not `Send`, so a dedicated thread owns it until this handle is
/// dropped; the handle only exposes its address. Drop every client using it
/// (logs, tails) before dropping the handle: librdkafka may abort when a cluster
/// disappears under its clients. Limits: no SASL/TLS, and at most ~5 MiB per
/// partition (older data silently vanishes).
pub struct MockKafka {
    bootstrap_servers: String,
    /// Dropping it tells the owning thread to destroy the cluster.
    commands: Option<mpsc::Sender<MockCommand>>,
    thread: Option<JoinHandle<()>>,
}

/// Fault injection, run by the thread that owns the cluster.
enum MockCommand {
    BrokerDown(mpsc::Sender<Result<(), TransportError>>),
    BrokerUp(mpsc::Sender<Result<(), TransportError>>),
    FailProduces(RDKafkaRespErr, usize, mpsc::Sender<Result<(), TransportError>>),
}

impl MockKafka {
    /// Starts the cluster and creates the topics.
    pub fn start() -> Result<Self, TransportError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, TransportError>>();
        let (commands, command_rx) = mpsc::channel::<MockCommand>();
        let thread = std::thread::Builder::new()
            .name("kafka-mock".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = ready_tx.send(Err(unavailable(format!("starting the mock cluster: {e}"))));
                        return;
                    }
                };
                for topic in Topic::ALL {
                    if let Err(e) = cluster.create_topic(topic.name(), MOCK_PARTITIONS, 1) {
                        let _ = ready_tx.send(Err(refused(format!("creating mock topic `{}`: {e}", topic.name()))));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Until the handle's drop ends `recv`.
                while let Ok(command) = command_rx.recv() {
                    let mock_error = |e: KafkaError| unavailable(format!("mock cluster: {e}"));
                    match command {
                        MockCommand::BrokerDown(done) => {
                            let _ = done.send(cluster.broker_down(-1).map_err(mock_error));
                        }
                        MockCommand::BrokerUp(done) => {
                            let _ = done.send(cluster.broker_up(-1).map_err(mock_error));
                        }
                        MockCommand::FailProduces(error, count, done) => {
                            cluster.request_errors(RDKafkaApiKey::Produce, &vec![error; count]);
                            let _ = done.send(Ok(()));
                        }
                    }
                }
                drop(cluster);
            })
            .map_err(|e| unavailable(format!("spawning the mock cluster thread: {e}")))?;
        let bootstrap_servers = match ready_rx.recv() {
            Ok(ready) => ready?,
            Err(_) => return Err(unavailable("the mock cluster thread died while starting".into())),
        };
        Ok(Self { bootstrap_servers, commands: Some(commands), thread: Some(thread) })
    }

    /// Takes the broker down: its connections are closed and new ones refused,
    /// its topics and data kept, as a broker restart that keeps its state.
    pub fn broker_down(&self) -> Result<(), TransportError> {
        self.command(MockCommand::BrokerDown)
    }

    /// Brings the broker back after [`Self::broker_down`].
    pub fn broker_up(&self) -> Result<(), TransportError> {
        self.command(MockCommand::BrokerUp)
    }

    /// The next `count` produce requests fail with `error`: with
    /// `RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH` an idempotent producer hits the
    /// fatal error a broker that forgot its producer ids causes.
    pub fn fail_produces(&self, error: RDKafkaRespErr, count: usize) -> Result<(), TransportError> {
        self.command(|done| MockCommand::FailProduces(error, count, done))
    }

    fn command(
        &self,
        command: impl FnOnce(mpsc::Sender<Result<(), TransportError>>) -> MockCommand,
    ) -> Result<(), TransportError> {
        let (done, result) = mpsc::channel();
        let sent = self.commands.as_ref().map(|commands| commands.send(command(done)));
        match (sent, result.recv()) {
            (Some(Ok(())), Ok(outcome)) => outcome,
            _ => Err(unavailable("the mock cluster thread is gone".into())),
        }
    }

    /// The cluster's `bootstrap.servers` (`127.0.0.1:<port>`).
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap_servers.clone()
    }

    /// [`KafkaSettings`] for this cluster.
    pub fn settings(&self) -> KafkaSettings {
        KafkaSettings::new(self.bootstrap_servers())
    }

    /// Waits, without blocking a thread, until no client of this process uses
    /// the cluster (at most 10 s); says whether they all went. For async code
    /// about to drop the cluster: its drop waits the same way, blocking, as a
    /// backstop, and would hold up the tasks that close the clients.
    pub async fn clients_gone(&self) -> bool {
        let deadline = tokio::time::Instant::now() + CLIENTS_GONE;
        while live_clients(&self.bootstrap_servers) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

/// Longest wait, as the mock cluster goes, for its clients to let go of it.
const CLIENTS_GONE: Duration = Duration::from_secs(10);

/// Waits (bounded) until no client of this process uses the cluster, then
/// destroys it: librdkafka may abort when a cluster disappears under its clients.
impl Drop for MockKafka {
    fn drop(&mut self) {
        let deadline = Instant::now() + CLIENTS_GONE;
        while live_clients(&self.bootstrap_servers) > 0 {
            if Instant::now() >= deadline {
                tracing::warn!(
                    clients = live_clients(&self.bootstrap_servers),
                    "the mock Kafka cluster goes with clients still open"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
