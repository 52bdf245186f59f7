//! The embedded work queue: a table in a SQLite file of its own, so what a node
//! or worker was told is accepted survives a crash or restart of eligo, as it
//! would in RabbitMQ.
//!
//! A message is a row from `publish` (committed before `publish` returns: the
//! "confirm") until its ack deletes it. Which rows are out with a consumer is
//! kept in memory: eligo's embedded mode is one process, so after a restart
//! every row left is delivered again, marked `redelivered`.

use super::{Acker, Deliveries, Delivery, Stream, TransportError, WorkQueue};
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Row;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

const BROKER: &str = "embedded queue";

/// How long a waiting consumer sleeps before looking again without a notification.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Most messages one publishing transaction commits (two parameters each, well
/// under SQLite's limit of 32766).
const MAX_PUBLISH_BATCH: usize = 2048;

/// Most messages one read takes for a consumer.
const MAX_TAKE: usize = 512;

/// Publishes waiting for the writer; past that, `publish` waits for room.
const PUBLISH_QUEUE: usize = 8192;

/// How many streams the queue carries (see [`index`]).
const STREAMS: usize = 4;

fn unavailable(e: impl std::fmt::Display) -> TransportError {
    TransportError::Unavailable { broker: BROKER, detail: e.to_string() }
}

fn stream_name(stream: Stream) -> &'static str {
    stream.queue()
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Job => 0,
        Stream::Solution => 1,
        Stream::Worker => 2,
        Stream::Webhook => 3,
    }
}

/// A JSON array of row ids, for `json_each` (SQLite has no array parameters).
fn id_list(ids: impl IntoIterator<Item = i64>) -> String {
    let ids: Vec<i64> = ids.into_iter().collect();
    serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into())
}

struct Shared {
    pool: SqlitePool,
    /// Row ids delivered and not yet settled, of every consumer.
    out: Mutex<HashSet<i64>>,
    /// Wakes consumers of a stream when a message is published or requeued.
    ready: Arc<[Notify; STREAMS]>,
}

impl Shared {
    /// The ids out with a consumer, as the JSON list `json_each` reads.
    fn out_list(&self) -> String {
        self.out.lock().map(|o| id_list(o.iter().copied())).unwrap_or_else(|_| "[]".into())
    }

    /// Puts delivered messages back (they stay in the table) and wakes consumers.
    fn release(&self, ids: &[i64], stream: Stream) {
        if let Ok(mut out) = self.out.lock() {
            for id in ids {
                out.remove(id);
            }
        }
        self.ready[index(stream)].notify_waiters();
    }
}

/// One message waiting for the writer's next commit.
struct Publish {
    stream: Stream,
    payload: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// A durable work queue in a SQLite file.
///
/// Publishes are group-committed: a writer task inserts every message waiting at
/// that moment in one transaction, and each `publish` returns once the commit
/// holding its message is done. Many connections publishing at once thus share
/// commits instead of queueing behind one another's.
#[derive(Clone)]
pub struct SqliteQueue {
    shared: Arc<Shared>,
    publisher: mpsc::Sender<Publish>,
}

impl SqliteQueue {
    /// Opens (creating if missing) the queue file at `path`.
    pub async fn open(path: &Path) -> Result<Self, TransportError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Survives a crash of eligo; see `SqliteStore::open` for the trade-off.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(3).connect_with(options).await.map_err(unavailable)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS queue_message (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                stream TEXT NOT NULL,
                payload BLOB NOT NULL,
                deliveries INTEGER NOT NULL DEFAULT 0
            )",
        )
        .execute(&pool)
        .await
        .map_err(unavailable)?;
        sqlx::query("CREATE INDEX IF NOT EXISTS queue_message_stream ON queue_message (stream, id)")
            .execute(&pool)
            .await
            .map_err(unavailable)?;
        let ready = Arc::new(std::array::from_fn(|_| Notify::new()));
        let (publisher, requests) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(write_published(pool.clone(), requests, ready.clone()));
        let shared = Shared { pool, out: Mutex::new(HashSet::new()), ready };
        Ok(SqliteQueue { shared: Arc::new(shared), publisher })
    }

    /// Messages stored in a stream's queue (waiting or out with a consumer).
    pub async fn depth(&self, stream: Stream) -> Result<u64, TransportError> {
        let row = sqlx::query("SELECT count(*) AS n FROM queue_message WHERE stream = ?")
            .bind(stream_name(stream))
            .fetch_one(&self.shared.pool)
            .await
            .map_err(unavailable)?;
        Ok(row.try_get::<i64, _>("n").map_err(unavailable)? as u64)
    }
}

/// The writer: commits what publishers sent, as many messages per transaction as
/// are waiting, until every [`SqliteQueue`] handle is gone.
async fn write_published(pool: SqlitePool, mut requests: mpsc::Receiver<Publish>, ready: Arc<[Notify; STREAMS]>) {
    let mut batch = Vec::new();
    while requests.recv_many(&mut batch, MAX_PUBLISH_BATCH).await > 0 {
        let result = {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO queue_message (stream, payload) ");
            insert.push_values(&batch, |mut row, p| {
                row.push_bind(stream_name(p.stream)).push_bind(p.payload.as_slice());
            });
            insert.build().execute(&pool).await.map(|_| ()).map_err(|e| e.to_string())
        };
        let mut streams = [false; STREAMS];
        for p in batch.drain(..) {
            streams[index(p.stream)] = true;
            let _ = p.done.send(result.clone());
        }
        if result.is_ok() {
            for (i, published) in streams.into_iter().enumerate() {
                if published {
                    ready[i].notify_waiters();
                }
            }
        }
    }
}

/// What one consume stream has out: its deliveries not yet settled, by the order
/// they were delivered in, and the prefetch places they hold.
struct Ledger {
    stream: Stream,
    unsettled: Mutex<BTreeMap<u64, i64>>,
    next_seq: AtomicU64,
    places: Semaphore,
}

impl Ledger {
    /// Removes the deliveries `through` selects from the unsettled ones and frees
    /// their places; returns their row ids.
    fn settle(&self, seq: u64, through: bool) -> Vec<i64> {
        let Ok(mut unsettled) = self.unsettled.lock() else { return Vec::new() };
        let ids: Vec<i64> = if through {
            let later = unsettled.split_off(&(seq + 1));
            std::mem::replace(&mut *unsettled, later).into_values().collect()
        } else {
            unsettled.remove(&seq).into_iter().collect()
        };
        self.places.add_permits(ids.len());
        ids
    }
}

/// Takes up to `n` of the oldest messages of `stream` that no consumer has out.
async fn take(shared: &Shared, stream: Stream, n: usize) -> Result<Vec<(i64, Vec<u8>, bool)>, TransportError> {
    let out = shared.out_list();
    let rows = sqlx::query(
        "UPDATE queue_message SET deliveries = deliveries + 1 WHERE id IN (
             SELECT id FROM queue_message
             WHERE stream = ?1 AND id NOT IN (SELECT value FROM json_each(?2)) ORDER BY id LIMIT ?3)
         RETURNING id, payload, deliveries",
    )
    .bind(stream_name(stream))
    .bind(out)
    .bind(n as i64)
    .fetch_all(&shared.pool)
    .await
    .map_err(unavailable)?;
    let mut taken = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get("id").map_err(unavailable)?;
        let payload: Vec<u8> = row.try_get("payload").map_err(unavailable)?;
        let deliveries: i64 = row.try_get("deliveries").map_err(unavailable)?;
        taken.push((id, payload, deliveries > 1));
    }
    // RETURNING has no order; a consumer in the same process may have claimed some.
    taken.sort_by_key(|(id, _, _)| *id);
    if let Ok(mut out) = shared.out.lock() {
        taken.retain(|(id, _, _)| out.insert(*id));
    }
    Ok(taken)
}

/// Feeds one consume stream, like a broker's consumer: takes messages while the
/// stream has prefetch places free and hands them over. It runs as a task of its
/// own because a read holds SQLite's write lock until its rows are drained; read
/// lazily from the stream, an unfinished take would lock out the stream's own
/// acks (and every publish) while its consumer handles a batch. Ends when the
/// stream is dropped or after reporting an error.
async fn fetch(shared: Arc<Shared>, ledger: Arc<Ledger>, tx: mpsc::UnboundedSender<Result<Delivery, TransportError>>) {
    let stream = ledger.stream;
    loop {
        // One free place at least, then every other one free now.
        let first = tokio::select! {
            _ = tx.closed() => return,
            place = ledger.places.acquire() => match place {
                Ok(place) => place,
                Err(_) => return,
            },
        };
        first.forget();
        let mut places = 1;
        while places < MAX_TAKE {
            match ledger.places.try_acquire() {
                Ok(p) => {
                    p.forget();
                    places += 1;
                }
                Err(_) => break,
            }
        }
        let mut notified = std::pin::pin!(shared.ready[index(stream)].notified());
        // Registered before looking, so a publish in between is not missed.
        notified.as_mut().enable();
        let taken = match take(&shared, stream, places).await {
            Ok(taken) => taken,
            Err(e) => {
                ledger.places.add_permits(places);
                let _ = tx.send(Err(e));
                return;
            }
        };
        ledger.places.add_permits(places - taken.len());
        if taken.is_empty() {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::timeout(IDLE_POLL, notified) => {}
            }
            continue;
        }
        for (id, payload, redelivered) in taken {
            let seq = ledger.next_seq.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut unsettled) = ledger.unsettled.lock() {
                unsettled.insert(seq, id);
            }
            // Dropped unsent (the stream is gone), the acker puts the message back.
            let acker = SqliteAcker { shared: shared.clone(), ledger: ledger.clone(), seq, id };
            if tx.send(Ok(Delivery { payload, redelivered, acker: Box::new(acker) })).is_err() {
                return;
            }
        }
    }
}

struct SqliteAcker {
    shared: Arc<Shared>,
    ledger: Arc<Ledger>,
    seq: u64,
    id: i64,
}

impl SqliteAcker {
    async fn delete(&self, through: bool) -> Result<(), TransportError> {
        let ids: Vec<i64> = {
            let unsettled = self.ledger.unsettled.lock().map_err(|_| unavailable("internal lock poisoned"))?;
            if through {
                unsettled.range(..=self.seq).map(|(_, id)| *id).collect()
            } else {
                vec![self.id]
            }
        };
        sqlx::query("DELETE FROM queue_message WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(id_list(ids))
            .execute(&self.shared.pool)
            .await
            .map_err(unavailable)?;
        let settled = self.ledger.settle(self.seq, through);
        if let Ok(mut out) = self.shared.out.lock() {
            for id in settled {
                out.remove(&id);
            }
        }
        Ok(())
    }
}

impl Drop for SqliteAcker {
    fn drop(&mut self) {
        // Unsettled: the message goes back, as when a broker's consumer goes away.
        let ids = self.ledger.settle(self.seq, false);
        if !ids.is_empty() {
            self.shared.release(&ids, self.ledger.stream);
        }
    }
}

#[async_trait]
impl Acker for SqliteAcker {
    async fn ack(&self) -> Result<(), TransportError> {
        self.delete(false).await
    }

    async fn ack_through(&self) -> Result<(), TransportError> {
        self.delete(true).await
    }

    async fn requeue(&self) -> Result<(), TransportError> {
        let ids = self.ledger.settle(self.seq, false);
        self.shared.release(&ids, self.ledger.stream);
        Ok(())
    }
}

#[async_trait]
impl WorkQueue for SqliteQueue {
    async fn declare(&self) -> Result<(), TransportError> {
        Ok(())
    }

    /// The file still answers a query (a full or vanished disk does not).
    async fn check(&self) -> Result<(), TransportError> {
        sqlx::query("SELECT 1").execute(&self.shared.pool).await.map(|_| ()).map_err(unavailable)
    }

    async fn publish(&self, stream: Stream, payload: &[u8]) -> Result<(), TransportError> {
        let (done, committed) = oneshot::channel();
        let request = Publish { stream, payload: payload.to_vec(), done };
        self.publisher.send(request).await.map_err(|_| TransportError::Closed)?;
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(TransportError::Closed),
        }
    }

    /// The stream's rows no consumer has out.
    async fn ready(&self, stream: Stream) -> Result<u64, TransportError> {
        let out = self.shared.out_list();
        let row = sqlx::query(
            "SELECT count(*) AS n FROM queue_message
             WHERE stream = ?1 AND id NOT IN (SELECT value FROM json_each(?2))",
        )
        .bind(stream_name(stream))
        .bind(out)
        .fetch_one(&self.shared.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.try_get::<i64, _>("n").map_err(unavailable)? as u64)
    }

    async fn consume(&self, stream: Stream, prefetch: u16) -> Result<Deliveries, TransportError> {
        let ledger = Arc::new(Ledger {
            stream,
            unsettled: Mutex::new(BTreeMap::new()),
            next_seq: AtomicU64::new(0),
            places: Semaphore::new(prefetch.max(1) as usize),
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(fetch(self.shared.clone(), ledger, tx));
        let deliveries = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Box::pin(deliveries))
    }
}
