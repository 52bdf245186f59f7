//! One behavioural suite for every transport: the same cases run against
//! RabbitMQ (`ELIGO_TEST_AMQP_URL`, default the local broker), librdkafka's mock
//! Kafka cluster (started here) and the embedded implementations.
//!
//! The AMQP cases share the broker's fixed queue names, so they run in sequence
//! inside one test, each starting from freshly deleted and re-declared queues.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eligo::transport::amqp::AmqpQueue;
use eligo::transport::embedded::EmbeddedLog;
use eligo::transport::kafka::{KafkaLog, MockKafka};
use eligo::transport::sqlite_queue::SqliteQueue;
use eligo::transport::{Deliveries, Delivery, EventLog, Stream, Tail, Tails, Topic, TransportError, WorkQueue};
use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Longest wait for something that must arrive.
const ARRIVES: Duration = Duration::from_secs(10);

fn amqp_url() -> String {
    std::env::var("ELIGO_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

// ---------------------------------------------------------------- helpers

async fn next_delivery(deliveries: &mut Deliveries, what: &str) -> Delivery {
    match tokio::time::timeout(ARRIVES, deliveries.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => panic!("{what}: the consumer failed: {e}"),
        Ok(None) => panic!("{what}: the consumer ended"),
        Err(_) => panic!("{what}: nothing delivered within {ARRIVES:?}"),
    }
}

async fn next_payload(tail: &mut Tail, what: &str) -> String {
    match tokio::time::timeout(ARRIVES, tail.next()).await {
        Ok(Some(Ok(payload))) => String::from_utf8(payload).expect("test payloads are UTF-8"),
        Ok(Some(Err(e))) => panic!("{what}: the tail failed: {e}"),
        Ok(None) => panic!("{what}: the tail ended"),
        Err(_) => panic!("{what}: nothing read within {ARRIVES:?}"),
    }
}

/// A payload unique to this run, so leftovers of other runs cannot pass for it.
fn payload(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::new_v4())
}

async fn publish(queue: &dyn WorkQueue, stream: Stream, body: &str) {
    queue.publish(stream, body.as_bytes()).await.unwrap_or_else(|e| panic!("publishing {body}: {e}"));
}

async fn consume(queue: &dyn WorkQueue, stream: Stream, prefetch: u16) -> Deliveries {
    queue.consume(stream, prefetch).await.unwrap_or_else(|e| panic!("consuming {}: {e}", stream.queue()))
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.payload).into_owned()
}

// ---------------------------------------------------------------- queue suite

/// Runs every queue case, each on a queue pair `fresh` makes empty.
async fn queue_suite<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn WorkQueue>>,
{
    publish_then_consume(fresh().await).await;
    requeued_is_redelivered(fresh().await).await;
    prefetch_holds_back(fresh().await).await;
    acked_is_not_redelivered(fresh().await).await;
    dropped_unsettled_is_redelivered(fresh().await).await;
    a_paused_consumer_holds_nothing_back(fresh().await).await;
}

async fn publish_then_consume(queue: Arc<dyn WorkQueue>) {
    for stream in [Stream::Job, Stream::Solution] {
        let body = payload(stream.queue());
        publish(&*queue, stream, &body).await;
        let mut deliveries = consume(&*queue, stream, 1).await;
        let delivery = next_delivery(&mut deliveries, "publish then consume").await;
        assert_eq!(text(&delivery), body, "the payload comes back as published");
        assert!(!delivery.redelivered, "a first delivery is not flagged redelivered");
        delivery.acker.ack().await.expect("ack");
    }
}

async fn requeued_is_redelivered(queue: Arc<dyn WorkQueue>) {
    let body = payload("requeued");
    publish(&*queue, Stream::Job, &body).await;
    let mut deliveries = consume(&*queue, Stream::Job, 1).await;
    let first = next_delivery(&mut deliveries, "requeue: first delivery").await;
    assert_eq!(text(&first), body);
    assert!(!first.redelivered);
    first.acker.requeue().await.expect("requeue");
    let again = next_delivery(&mut deliveries, "requeue: second delivery").await;
    assert_eq!(text(&again), body, "the requeued message comes back");
    assert!(again.redelivered, "a requeued message comes back flagged redelivered");
    again.acker.ack().await.expect("ack");
}

async fn prefetch_holds_back(queue: Arc<dyn WorkQueue>) {
    let (one, two) = (payload("first"), payload("second"));
    publish(&*queue, Stream::Solution, &one).await;
    publish(&*queue, Stream::Solution, &two).await;
    let mut deliveries = consume(&*queue, Stream::Solution, 1).await;
    let first = next_delivery(&mut deliveries, "prefetch: first").await;
    assert_eq!(text(&first), one, "messages come in publish order");
    // The broker's count, not a wait: the second is still in the queue.
    assert_eq!(queue.ready(Stream::Solution).await.expect("ready"), 1, "prefetch 1 with one unacked message");
    first.acker.ack().await.expect("ack");
    let second = next_delivery(&mut deliveries, "prefetch: second after the ack").await;
    assert_eq!(text(&second), two);
    second.acker.ack().await.expect("ack");
}

/// A batching consumer stops reading whenever its linger runs out: messages it has
/// not read yet must not hold back its acks, nor anyone's publishes.
async fn a_paused_consumer_holds_nothing_back(queue: Arc<dyn WorkQueue>) {
    const PREFETCH: u16 = 512;
    let bodies: Vec<String> = (0..1100).map(|i| payload(&format!("paused-{i}"))).collect();
    for body in &bodies {
        publish(&*queue, Stream::Solution, body).await;
    }
    let mut deliveries = consume(&*queue, Stream::Solution, PREFETCH).await;
    let first = next_delivery(&mut deliveries, "paused consumer: first").await;
    // Every other place freed, so the queue has a full prefetch to hand over next.
    for _ in 1..PREFETCH {
        let delivery = next_delivery(&mut deliveries, "paused consumer: the first batch").await;
        delivery.acker.ack().await.expect("ack");
    }
    // A read cut short mid-way, as a linger timeout cuts it: polled once, then left.
    let cut_short = tokio::time::timeout(Duration::ZERO, deliveries.next()).await;
    drop(cut_short);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let settle = async {
        first.acker.ack().await.expect("ack");
        publish(&*queue, Stream::Job, &payload("published meanwhile")).await;
    };
    tokio::time::timeout(Duration::from_secs(2), settle)
        .await
        .expect("an ack and a publish while the consumer pauses finish at once");
    drop(deliveries);
}

async fn acked_is_not_redelivered(queue: Arc<dyn WorkQueue>) {
    let body = payload("acked");
    publish(&*queue, Stream::Job, &body).await;
    {
        let mut deliveries = consume(&*queue, Stream::Job, 1).await;
        let delivery = next_delivery(&mut deliveries, "ack: delivery").await;
        assert_eq!(text(&delivery), body);
        delivery.acker.ack().await.expect("ack");
    }
    let mut later = consume(&*queue, Stream::Job, 1).await;
    // The new consumer does work: its first delivery is the next message, not
    // the acked one (which would come first).
    let next = payload("after-ack");
    publish(&*queue, Stream::Job, &next).await;
    let delivery = next_delivery(&mut later, "ack: next message").await;
    assert_eq!(text(&delivery), next, "the acked message is not delivered again");
    delivery.acker.ack().await.expect("ack");
}

async fn dropped_unsettled_is_redelivered(queue: Arc<dyn WorkQueue>) {
    let body = payload("dropped");
    publish(&*queue, Stream::Solution, &body).await;
    {
        let mut deliveries = consume(&*queue, Stream::Solution, 1).await;
        let delivery = next_delivery(&mut deliveries, "drop: delivery").await;
        assert_eq!(text(&delivery), body);
        // Dropped unsettled, with its consumer.
    }
    let mut later = consume(&*queue, Stream::Solution, 1).await;
    let again = next_delivery(&mut later, "drop: redelivery to a new consumer").await;
    assert_eq!(text(&again), body, "an unsettled message goes back to the queue when its consumer goes away");
    assert!(again.redelivered);
    again.acker.ack().await.expect("ack");
}

// ---------------------------------------------------------------- log suite

/// Runs every log case on `log`; each case only looks at what it produced after
/// starting its tails, so no reset is needed.
async fn log_suite(log: Arc<dyn EventLog>) {
    tail_sees_only_later_messages_in_order(&*log).await;
    two_tails_see_everything(&*log).await;
    tail_reads_every_key(&*log).await;
    one_tail_reads_several_topics(&*log).await;
}

async fn produce(log: &dyn EventLog, topic: Topic, key: &str, body: &str) {
    log.produce(topic, key, body.as_bytes()).await.unwrap_or_else(|e| panic!("producing {body}: {e}"));
}

async fn tail(log: &dyn EventLog, topic: Topic) -> Tail {
    log.tail(topic).await.unwrap_or_else(|e| panic!("tailing {}: {e}", topic.name()))
}

async fn tail_sees_only_later_messages_in_order(log: &dyn EventLog) {
    for topic in [Topic::Job, Topic::Solution] {
        produce(log, topic, "k", &payload("before")).await;
        let mut reader = tail(log, topic).await;
        let sent: Vec<String> = (0..20).map(|i| payload(&format!("m{i:02}"))).collect();
        for body in &sent {
            produce(log, topic, "k", body).await;
        }
        for (i, body) in sent.iter().enumerate() {
            let got = next_payload(&mut reader, &format!("{}: message {i}", topic.name())).await;
            assert_eq!(&got, body, "a tail reads from its start on, in order (message {i})");
        }
    }
}

async fn two_tails_see_everything(log: &dyn EventLog) {
    let mut a = tail(log, Topic::Solution).await;
    let mut b = tail(log, Topic::Solution).await;
    let sent: Vec<String> = (0..10).map(|i| payload(&format!("both{i}"))).collect();
    for body in &sent {
        produce(log, Topic::Solution, "same-key", body).await;
    }
    for (name, reader) in [("first", &mut a), ("second", &mut b)] {
        for body in &sent {
            assert_eq!(
                &next_payload(reader, &format!("{name} tail")).await,
                body,
                "the {name} tail sees every message"
            );
        }
    }
}

/// Keys spread messages over partitions: a tail must read all of them.
async fn tail_reads_every_key(log: &dyn EventLog) {
    let mut reader = tail(log, Topic::Job).await;
    let mut sent: Vec<String> = Vec::new();
    for i in 0..16 {
        let body = payload(&format!("key{i}"));
        produce(log, Topic::Job, &format!("key-{i}"), &body).await;
        sent.push(body);
    }
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        got.push(next_payload(&mut reader, "messages of many keys").await);
    }
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "a tail sees the messages of every partition");
}

/// One reader of two topics: every message of each, with its topic, in order
/// per topic, and nothing of a third.
async fn one_tail_reads_several_topics(log: &dyn EventLog) {
    let mut reader = tails(log, &[Topic::Job, Topic::Verdict]).await;
    produce(log, Topic::Solution, "k", &payload("not-read")).await;
    let sent: Vec<(Topic, String)> = (0..20)
        .map(|i| {
            let topic = if i % 3 == 0 { Topic::Verdict } else { Topic::Job };
            (topic, payload(&format!("{}{i}", topic.name())))
        })
        .collect();
    for (topic, body) in &sent {
        produce(log, *topic, "k", body).await;
    }
    let mut got = Vec::new();
    for i in 0..sent.len() {
        match tokio::time::timeout(ARRIVES, reader.next()).await {
            Ok(Some(Ok((topic, payload)))) => got.push((topic, String::from_utf8(payload).expect("UTF-8"))),
            other => panic!("two topics: read {i} of {}, then {other:?}", sent.len()),
        }
    }
    for topic in [Topic::Job, Topic::Verdict] {
        let of = |messages: &[(Topic, String)]| {
            messages.iter().filter(|(t, _)| *t == topic).map(|(_, body)| body.clone()).collect::<Vec<_>>()
        };
        assert_eq!(of(&got), of(&sent), "the reader of two topics reads `{}` whole, in order", topic.name());
    }
}

async fn tails(log: &dyn EventLog, topics: &[Topic]) -> Tails {
    log.tail_topics(topics).await.unwrap_or_else(|e| panic!("tailing {topics:?}: {e}"))
}

// ---------------------------------------------------------------- RabbitMQ

/// Deletes the pipeline's queues (dropping their messages and consumers), so each
/// case starts empty, then connects and declares anew.
async fn fresh_rabbitmq(url: &str) -> Arc<dyn WorkQueue> {
    use lapin::options::QueueDeleteOptions;
    let unreachable = |e: &dyn std::fmt::Display| -> ! {
        panic!("RabbitMQ at {url} is unreachable: {e} (start it with `rabbitmq-server -detached`, or set ELIGO_TEST_AMQP_URL)")
    };
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| unreachable(&e));
    let channel = connection.create_channel().await.unwrap_or_else(|e| unreachable(&e));
    for stream in [Stream::Job, Stream::Solution] {
        channel
            .queue_delete(stream.queue(), QueueDeleteOptions::default())
            .await
            .unwrap_or_else(|e| panic!("deleting RabbitMQ queue {}: {e}", stream.queue()));
    }
    let _ = connection.close(200, "reset").await;
    let queue = AmqpQueue::connect(url).await.unwrap_or_else(|e| unreachable(&e));
    queue.declare().await.unwrap_or_else(|e| panic!("declaring on RabbitMQ at {url}: {e}"));
    Arc::new(queue)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq() {
    let url = amqp_url();
    queue_suite(|| fresh_rabbitmq(&url)).await;
    amqp_survives_connection_loss(&url).await;
}

/// A TCP proxy to the broker whose connections the test can cut.
struct Proxy {
    port: u16,
    /// While false, new connections are accepted and dropped at once.
    open: Arc<Mutex<bool>>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the test proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let open = Arc::new(Mutex::new(true));
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (open2, connections2) = (open.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*open2.lock().unwrap() {
                    continue; // dropping `client` closes it
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections2.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { port, open, connections, accept: accept.abort_handle() }
    }

    /// Breaks every connection and refuses new ones.
    fn cut(&self) {
        *self.open.lock().unwrap() = false;
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        *self.open.lock().unwrap() = true;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Broken connection: consumers end with `Unavailable`, publishing fails fast
/// with `Unavailable` while the broker is unreachable, then reconnects by itself.
async fn amqp_survives_connection_loss(url: &str) {
    let _ = fresh_rabbitmq(url).await;
    let parsed = url::Url::parse(url).expect("AMQP URL");
    let upstream = format!("{}:{}", parsed.host_str().unwrap_or("127.0.0.1"), parsed.port().unwrap_or(5672));
    let proxy = Proxy::start(upstream).await;
    let mut via_proxy = parsed.clone();
    via_proxy.set_host(Some("127.0.0.1")).expect("host");
    via_proxy.set_port(Some(proxy.port)).expect("port");
    let queue = AmqpQueue::connect(via_proxy.as_str()).await.expect("connecting through the proxy");
    let mut deliveries = consume(&queue, Stream::Job, 1).await;

    proxy.cut();
    match tokio::time::timeout(ARRIVES, deliveries.next()).await {
        Ok(Some(Err(TransportError::Unavailable { .. }))) => {}
        Ok(Some(Err(e))) => panic!("a broken consumer should report Unavailable, got {e}"),
        Ok(Some(Ok(_))) => panic!("a broken consumer delivered a message"),
        Ok(None) => panic!("a broken consumer ended without an error"),
        Err(_) => panic!("a broken consumer stayed silent for {ARRIVES:?}"),
    }
    assert!(
        tokio::time::timeout(ARRIVES, deliveries.next()).await.expect("the stream ends").is_none(),
        "the consumer stream ends after its error"
    );

    let started = Instant::now();
    match queue.publish(Stream::Job, b"lost").await {
        Err(TransportError::Unavailable { .. }) => {}
        other => panic!("publishing without a broker should fail with Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(12), "a failed publish took {:?}", started.elapsed());

    proxy.restore();
    let body = payload("after-reconnect");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match queue.publish(Stream::Job, body.as_bytes()).await {
            Ok(()) => break,
            Err(TransportError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("publishing after the broker came back: {e}"),
        }
    }
    let mut deliveries = consume(&queue, Stream::Job, 1).await;
    let delivery = next_delivery(&mut deliveries, "after reconnecting").await;
    assert_eq!(text(&delivery), body);
    delivery.acker.ack().await.expect("ack");
}

// ---------------------------------------------------------------- Kafka mock cluster

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_mock_cluster() {
    let mock = MockKafka::start().expect("starting librdkafka's mock Kafka cluster");
    let servers = mock.bootstrap_servers();
    {
        // Every client goes before the cluster does (see MockKafka).
        let log = KafkaLog::connect(mock.settings())
            .await
            .unwrap_or_else(|e| panic!("the mock Kafka cluster at {servers} is unreachable: {e}"));
        let started = Instant::now();
        log.declare().await.expect("declaring topics is best effort and never fails");
        assert!(started.elapsed() < Duration::from_secs(2), "declare on existing topics took {:?}", started.elapsed());
        log_suite(Arc::new(log)).await;
    }
    drop(mock);
}

/// The broker goes down and comes back with its data while messages are being
/// produced: a tail reads each exactly once, whichever client reconnects first.
/// Three restarts, so that one run covers several reconnect orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_tail_reads_everything_once_across_broker_restarts() {
    reads_everything_once_across_broker_restarts(&[Topic::Solution]).await;
}

/// The same with one reader of two topics (how a worker server reads jobs and verdicts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_reader_of_two_topics_reads_everything_once_across_broker_restarts() {
    reads_everything_once_across_broker_restarts(&[Topic::Job, Topic::Verdict]).await;
}

/// Message `i` of a round goes to `topics[i % topics.len()]` under key `key-{i}`.
async fn reads_everything_once_across_broker_restarts(topics: &'static [Topic]) {
    let mock = MockKafka::start().expect("starting librdkafka's mock Kafka cluster");
    {
        let log = Arc::new(KafkaLog::connect(mock.settings()).await.expect("connecting to the mock cluster"));
        let mut reader: futures::stream::BoxStream<'static, Result<Vec<u8>, TransportError>> = match topics {
            [topic] => tail(&*log, *topic).await,
            _ => tails(&*log, topics).await.map(|m| m.map(|(_, payload)| payload)).boxed(),
        };
        let topic_of = |i: usize| topics[i % topics.len()];
        for round in 0..3 {
            mock.broker_down().expect("broker down");
            let sent: Vec<String> = (0..16).map(|i| payload(&format!("r{round}k{i}"))).collect();
            // A produce returns once delivered, so they wait for the broker together.
            let producing: Vec<_> = sent
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    let (log, body, topic) = (log.clone(), body.clone(), topic_of(i));
                    tokio::spawn(async move { produce(&*log, topic, &format!("key-{i}"), &body).await })
                })
                .collect();
            tokio::time::sleep(Duration::from_secs(3)).await;
            mock.broker_up().expect("broker up");
            for produced in producing {
                produced.await.expect("a produce task panicked");
            }
            let mut got = Vec::new();
            while got.len() < sent.len() {
                match tokio::time::timeout(Duration::from_secs(60), reader.next()).await {
                    Ok(Some(Ok(bytes))) => got.push(String::from_utf8(bytes).expect("UTF-8")),
                    other => panic!("round {round}: read {} of {}, then {other:?}", got.len(), sent.len()),
                }
            }
            // Nothing twice, proven by order: one more message under each key goes
            // to the same partition as that key's first, behind any repeat of it.
            let markers: Vec<String> = (0..16).map(|i| payload(&format!("r{round}m{i}"))).collect();
            for (i, body) in markers.iter().enumerate() {
                produce(&*log, topic_of(i), &format!("key-{i}"), body).await;
            }
            let mut marked = 0;
            while marked < markers.len() {
                match tokio::time::timeout(ARRIVES, reader.next()).await {
                    Ok(Some(Ok(bytes))) if markers.contains(&String::from_utf8_lossy(&bytes).into_owned()) => {
                        marked += 1
                    }
                    other => panic!("round {round}: read a message twice or one never sent: {other:?}"),
                }
            }
            let (mut got, mut sent) = (got, sent);
            got.sort();
            sent.sort();
            assert_eq!(got, sent, "round {round}: every message once");
        }
    }
    // Its drop waits for the clients above to let go before the cluster goes.
    drop(mock);
}

// ---------------------------------------------------------------- embedded

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = std::sync::atomic::AtomicU32::new(0);
    queue_suite(|| async {
        let file = dir.path().join(format!("queue-{}.db", n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
        Arc::new(SqliteQueue::open(&file).await.expect("opening the SQLite queue")) as Arc<dyn WorkQueue>
    })
    .await;
}

/// What the embedded queue was told survives a restart: acked messages are gone,
/// the rest come back, those delivered before marked redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("queue.db");
    {
        let queue = SqliteQueue::open(&file).await.expect("open");
        // Prefetch 1, like a broker's consumer the queue fills it ahead of the
        // reader: the last message is published while the one before holds the
        // only place, so it is never handed out.
        let mut deliveries = consume(&queue, Stream::Job, 1).await;
        publish(&queue, Stream::Job, "acked").await;
        let first = next_delivery(&mut deliveries, "the first message").await;
        assert_eq!(text(&first), "acked");
        first.acker.ack().await.expect("ack");
        for body in ["out when it died", "never delivered"] {
            publish(&queue, Stream::Job, body).await;
        }
        let second = next_delivery(&mut deliveries, "the second message").await;
        assert_eq!(text(&second), "out when it died");
        // The process dies here: nothing is settled, nothing is closed cleanly.
        std::mem::forget(second);
        std::mem::forget(deliveries);
    }
    let queue = SqliteQueue::open(&file).await.expect("reopen");
    let mut deliveries = consume(&queue, Stream::Job, 1).await;
    let again = next_delivery(&mut deliveries, "the message that was out").await;
    assert_eq!((text(&again).as_str(), again.redelivered), ("out when it died", true));
    again.acker.ack().await.expect("ack");
    let last = next_delivery(&mut deliveries, "the message never delivered").await;
    assert_eq!((text(&last).as_str(), last.redelivered), ("never delivered", false));
    last.acker.ack().await.expect("ack");
    assert_eq!(queue.depth(Stream::Job).await.expect("depth"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log() {
    log_suite(Arc::new(EmbeddedLog::new())).await;
}
