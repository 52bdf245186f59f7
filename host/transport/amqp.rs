//! RabbitMQ through lapin: the production [`WorkQueue`].
//!
//! Publishers and consumers use two separate connections, as RabbitMQ advises:
//! when the broker throttles a publishing connection (flow control, memory alarm)
//! it stops reading from its socket, which would also hold back the acks of any
//! consumer sharing it. Each connection is re-opened lazily, with backoff, by the
//! first operation that finds it broken.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::AMQPErrorKind;
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use super::{Acker, Deliveries, Delivery, Stream, TransportError, WorkQueue};
use crate::config::redact_url;

const BROKER: &str = "RabbitMQ";

/// Longest wait for the broker on any one step (connect, declare, confirm, ack): a
/// silent broker must surface as [`TransportError::Unavailable`], never as a hang.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Reconnection backoff after a failed connect: doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// AMQP delivery mode 2: the broker writes the message to disk (with a durable queue).
const PERSISTENT: u8 = 2;

/// A [`WorkQueue`] on RabbitMQ (or any AMQP 0-9-1 broker).
///
/// Cheap to share behind an `Arc`; concurrent publishes share one confirm-mode
/// channel. A broken connection makes operations fail with
/// [`TransportError::Unavailable`]; the next operation reconnects (at most once per
/// backoff period, which grows to 5 s while the broker stays down).
pub struct AmqpQueue {
    /// Publishers' connection and their confirm-mode channel.
    publisher: Mutex<Link>,
    /// Consumers' connection; each consumer opens its own channel on it.
    consumer: Mutex<Link>,
}

impl AmqpQueue {
    /// Connects to the broker at `url` (`amqp://user:pass@host:port/vhost`, or
    /// `amqps://` for TLS; the default vhost `/` is spelled `%2f`).
    ///
    /// Fails with [`TransportError::Unavailable`] if the broker cannot be reached
    /// within 10 s, so a misconfigured deployment stops at startup. The consumers'
    /// connection is only opened by the first [`WorkQueue::consume`], so processes
    /// that only publish hold one connection.
    pub async fn connect(url: &str) -> Result<Self, TransportError> {
        let url: Arc<str> = Arc::from(url);
        let mut publisher = Link::new(url.clone());
        publisher.publish_channel().await?;
        Ok(Self { publisher: Mutex::new(publisher), consumer: Mutex::new(Link::new(url)) })
    }
}

#[async_trait]
impl WorkQueue for AmqpQueue {
    async fn declare(&self) -> Result<(), TransportError> {
        let connection = self.publisher.lock().await.connection().await?;
        // A throwaway channel: a refused declaration (say, an existing queue with other
        // arguments) closes the channel it was made on, and that must not be the
        // publishers' one.
        let channel = step("open a channel", connection.create_channel()).await?;
        for stream in Stream::ALL {
            let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
            step(
                "declare an exchange",
                channel.exchange_declare(stream.exchange(), ExchangeKind::Fanout, durable, FieldTable::default()),
            )
            .await?;
            let durable = QueueDeclareOptions { durable: true, ..Default::default() };
            step("declare a queue", channel.queue_declare(stream.queue(), durable, FieldTable::default())).await?;
            step(
                "bind a queue",
                channel.queue_bind(
                    stream.queue(),
                    stream.exchange(),
                    "",
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        // Best effort: the channel also closes when dropped.
        let _ = tokio::time::timeout(TIMEOUT, channel.close(200, "declared")).await;
        Ok(())
    }

    async fn publish(&self, stream: Stream, payload: &[u8]) -> Result<(), TransportError> {
        let channel = self.publisher.lock().await.publish_channel().await?;
        let properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
        let confirm = step(
            "publish",
            channel.basic_publish(stream.exchange(), "", BasicPublishOptions::default(), payload, properties),
        )
        .await?;
        match step("await the publisher confirm", confirm).await? {
            Confirmation::Ack(_) => Ok(()),
            Confirmation::Nack(_) => Err(TransportError::Refused {
                broker: BROKER,
                detail: format!("the broker nacked a message published to exchange `{}`", stream.exchange()),
            }),
            // Only possible if the channel lost confirm mode, which `publish_channel` sets.
            Confirmation::NotRequested => Err(TransportError::Refused {
                broker: BROKER,
                detail: "publisher confirms were not enabled on the channel".into(),
            }),
        }
    }

    /// The queue's `messages_ready`, from a passive declaration on a channel of its
    /// own (one naming a missing queue closes the channel it was made on).
    async fn ready(&self, stream: Stream) -> Result<u64, TransportError> {
        let connection = self.publisher.lock().await.connection().await?;
        let channel = step("open a channel", connection.create_channel()).await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let queue =
            step("look at a queue", channel.queue_declare(stream.queue(), passive, FieldTable::default())).await;
        let _ = tokio::time::timeout(TIMEOUT, channel.close(200, "looked")).await;
        Ok(u64::from(queue?.message_count()))
    }

    /// The publishers' connection is open, or opens now. While the broker is
    /// known to be down this fails at once (the reconnection's backoff).
    async fn check(&self) -> Result<(), TransportError> {
        self.publisher.lock().await.connection().await.map(|_| ())
    }

    async fn consume(&self, stream: Stream, prefetch: u16) -> Result<Deliveries, TransportError> {
        let connection = self.consumer.lock().await.connection().await?;
        let channel = step("open a channel", connection.create_channel()).await?;
        step("set the prefetch", channel.basic_qos(prefetch, BasicQosOptions::default())).await?;
        let consumer = step(
            "start consuming",
            // An empty tag lets the broker choose a unique one.
            channel.basic_consume(stream.queue(), "", BasicConsumeOptions::default(), FieldTable::default()),
        )
        .await?;
        let queue = stream.queue();
        let deliveries = futures::stream::unfold(Some((consumer, channel)), move |state| async move {
            let (mut consumer, channel) = state?;
            let item = match consumer.next().await {
                Some(Ok(delivery)) => delivery,
                // lapin reports a broken connection (or channel) once, then ends the
                // consumer; the caller consumes again, on a new connection.
                Some(Err(error)) => return Some((Err(unavailable(format!("consuming `{queue}`: {error}"))), None)),
                // Cancelled by the broker (the queue was deleted, or the node holding it
                // went down): as broken as a lost connection for the caller.
                None => {
                    return Some((Err(unavailable(format!("the broker cancelled the consumer of `{queue}`"))), None))
                }
            };
            let delivery = Delivery {
                payload: item.data,
                redelivered: item.redelivered,
                // The acker keeps the channel open: acks only count on the channel that
                // received the message, even if the caller drops the stream first.
                acker: Box::new(AmqpAcker { acker: item.acker, _channel: channel.clone() }),
            };
            Some((Ok(delivery), Some((consumer, channel))))
        });
        Ok(deliveries.boxed())
    }
}

/// One connection to the broker, re-opened on demand.
struct Link {
    url: Arc<str>,
    connection: Option<Arc<Connection>>,
    /// The publishers' confirm-mode channel (unused on the consumers' link).
    channel: Option<Channel>,
    /// No reconnection attempt before this instant (set after a failed one).
    retry_at: Option<Instant>,
    /// The wait after the next failed attempt.
    backoff: Duration,
}

impl Link {
    fn new(url: Arc<str>) -> Self {
        Self { url, connection: None, channel: None, retry_at: None, backoff: BACKOFF_FIRST }
    }

    /// An open connection: the current one, or a new one if it broke.
    async fn connection(&mut self) -> Result<Arc<Connection>, TransportError> {
        if let Some(connection) = &self.connection {
            if connection.status().connected() {
                return Ok(connection.clone());
            }
        }
        self.connection = None;
        self.channel = None;
        if let Some(at) = self.retry_at {
            let now = Instant::now();
            if now < at {
                // Fail fast rather than stall callers behind the lock while the broker
                // is known to be down; they retry with their own backoff.
                return Err(unavailable(format!(
                    "reconnecting to {} in {} ms",
                    redact_url(&self.url),
                    (at - now).as_millis()
                )));
            }
        }
        // lapin's tasks and I/O on tokio, beside everything else eligo runs.
        let properties = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio);
        match tokio::time::timeout(TIMEOUT, Connection::connect(&self.url, properties)).await {
            Ok(Ok(connection)) => {
                self.retry_at = None;
                self.backoff = BACKOFF_FIRST;
                let connection = Arc::new(connection);
                self.connection = Some(connection.clone());
                Ok(connection)
            }
            failed => {
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                let why = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {} s", TIMEOUT.as_secs()),
                };
                Err(unavailable(format!("connecting to {}: {why}", redact_url(&self.url))))
            }
        }
    }

    /// The publishers' channel, in confirm mode; re-opened if it or its connection broke.
    async fn publish_channel(&mut self) -> Result<Channel, TransportError> {
        if let (Some(channel), Some(connection)) = (&self.channel, &self.connection) {
            if channel.status().connected() && connection.status().connected() {
                return Ok(channel.clone());
            }
        }
        self.channel = None;
        let connection = self.connection().await?;
        let channel = step("open a channel", connection.create_channel()).await?;
        step("enable publisher confirms", channel.confirm_select(ConfirmSelectOptions::default())).await?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }
}

/// Settles one lapin delivery.
struct AmqpAcker {
    acker: lapin::acker::Acker,
    /// Keeps the delivering channel open until the message is settled.
    _channel: Channel,
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<(), TransportError> {
        step("ack", self.acker.ack(BasicAckOptions::default())).await
    }

    async fn ack_through(&self) -> Result<(), TransportError> {
        step("ack a batch", self.acker.ack(BasicAckOptions { multiple: true })).await
    }

    async fn requeue(&self) -> Result<(), TransportError> {
        step("requeue", self.acker.nack(BasicNackOptions { requeue: true, ..Default::default() })).await
    }
}

/// Awaits one broker operation with [`TIMEOUT`], naming it in the error.
async fn step<T>(
    what: &str,
    operation: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, TransportError> {
    match tokio::time::timeout(TIMEOUT, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(map_error(what, error)),
        Err(_) => Err(unavailable(format!("{what}: no answer within {} s", TIMEOUT.as_secs()))),
    }
}

/// A soft protocol error is the broker saying no to this one operation (access
/// refused, missing exchange, mismatched declaration); anything else means the
/// connection or channel is gone.
fn map_error(what: &str, error: lapin::Error) -> TransportError {
    match &error {
        lapin::Error::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)) => {
            TransportError::Refused { broker: BROKER, detail: format!("{what}: {error}") }
        }
        _ => unavailable(format!("{what}: {error}")),
    }
}

fn unavailable(detail: String) -> TransportError {
    TransportError::Unavailable { broker: BROKER, detail }
}
