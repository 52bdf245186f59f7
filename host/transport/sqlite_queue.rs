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
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

const BROKER: &str = "embedded queue";

/// How long a waiting consumer sleeps before looking again without a notification.
const IDLE_POLL: Duration = Duration::from_secs(1);

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
    }
}

struct Shared {
    pool: SqlitePool,
    /// Row ids delivered and not yet settled.
    out: Mutex<HashSet<i64>>,
    /// Wakes consumers of a stream when a message is published or requeued.
    ready: [Notify; 2],
}

impl Shared {
    /// Puts a delivered message back (it stays in the table) and wakes a consumer.
    fn release(&self, id: i64, stream: Stream) {
        if let Ok(mut out) = self.out.lock() {
            out.remove(&id);
        }
        self.ready[index(stream)].notify_one();
    }
}

/// A durable work queue in a SQLite file.
#[derive(Clone)]
pub struct SqliteQueue {
    shared: Arc<Shared>,
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
        let pool = SqlitePoolOptions::new().max_connections(2).connect_with(options).await.map_err(unavailable)?;
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
        let shared = Shared { pool, out: Mutex::new(HashSet::new()), ready: [Notify::new(), Notify::new()] };
        Ok(SqliteQueue { shared: Arc::new(shared) })
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

/// Takes the oldest message of `stream` not out with a consumer, if any.
async fn take(shared: &Shared, stream: Stream) -> Result<Option<(i64, Vec<u8>, bool)>, TransportError> {
    let skip = shared.out.lock().map(|o| o.len()).unwrap_or(0) as i64;
    let rows = sqlx::query("SELECT id, payload, deliveries FROM queue_message WHERE stream = ? ORDER BY id LIMIT ?")
        .bind(stream_name(stream))
        .bind(skip + 1)
        .fetch_all(&shared.pool)
        .await
        .map_err(unavailable)?;
    for row in rows {
        let id: i64 = row.try_get("id").map_err(unavailable)?;
        let claimed = shared.out.lock().map(|mut o| o.insert(id)).unwrap_or(false);
        if !claimed {
            continue;
        }
        let payload: Vec<u8> = row.try_get("payload").map_err(unavailable)?;
        let deliveries: i64 = row.try_get("deliveries").map_err(unavailable)?;
        let counted = sqlx::query("UPDATE queue_message SET deliveries = deliveries + 1 WHERE id = ?")
            .bind(id)
            .execute(&shared.pool)
            .await;
        if let Err(e) = counted {
            shared.release(id, stream);
            return Err(unavailable(e));
        }
        return Ok(Some((id, payload, deliveries > 0)));
    }
    Ok(None)
}

struct SqliteAcker {
    shared: Arc<Shared>,
    stream: Stream,
    id: i64,
    /// Held until settled: one place of the consumer's prefetch.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl SqliteAcker {
    /// Marks the delivery settled; `false` if it already was.
    fn settle(&self) -> bool {
        self.permit.lock().map(|mut p| p.take().is_some()).unwrap_or(false)
    }
}

impl Drop for SqliteAcker {
    fn drop(&mut self) {
        // Unsettled: the message goes back, as when a broker's consumer goes away.
        if self.settle() {
            self.shared.release(self.id, self.stream);
        }
    }
}

#[async_trait]
impl Acker for SqliteAcker {
    async fn ack(&self) -> Result<(), TransportError> {
        sqlx::query("DELETE FROM queue_message WHERE id = ?")
            .bind(self.id)
            .execute(&self.shared.pool)
            .await
            .map_err(unavailable)?;
        if self.settle() {
            if let Ok(mut out) = self.shared.out.lock() {
                out.remove(&self.id);
            }
        }
        Ok(())
    }

    async fn requeue(&self) -> Result<(), TransportError> {
        if self.settle() {
            self.shared.release(self.id, self.stream);
        }
        Ok(())
    }
}

#[async_trait]
impl WorkQueue for SqliteQueue {
    async fn declare(&self) -> Result<(), TransportError> {
        Ok(())
    }

    async fn publish(&self, stream: Stream, payload: &[u8]) -> Result<(), TransportError> {
        sqlx::query("INSERT INTO queue_message (stream, payload) VALUES (?, ?)")
            .bind(stream_name(stream))
            .bind(payload)
            .execute(&self.shared.pool)
            .await
            .map_err(unavailable)?;
        self.shared.ready[index(stream)].notify_one();
        Ok(())
    }

    async fn consume(&self, stream: Stream, prefetch: u16) -> Result<Deliveries, TransportError> {
        let permits = Arc::new(Semaphore::new(prefetch.max(1) as usize));
        let shared = self.shared.clone();
        let deliveries = futures::stream::unfold((shared, permits), move |(shared, permits)| async move {
            let permit = permits.clone().acquire_owned().await.ok()?;
            loop {
                let mut notified = Box::pin(shared.ready[index(stream)].notified());
                // Registered before looking, so a publish in between is not missed.
                notified.as_mut().enable();
                match take(&shared, stream).await {
                    Ok(Some((id, payload, redelivered))) => {
                        drop(notified);
                        let acker =
                            SqliteAcker { shared: shared.clone(), stream, id, permit: Mutex::new(Some(permit)) };
                        let delivery = Delivery { payload, redelivered, acker: Box::new(acker) };
                        return Some((Ok(delivery), (shared, permits)));
                    }
                    Ok(None) => {
                        let _ = tokio::time::timeout(IDLE_POLL, notified).await;
                    }
                    Err(e) => {
                        drop(notified);
                        return Some((Err(e), (shared, permits)));
                    }
                }
            }
        });
        Ok(Box::pin(deliveries))
    }
}
