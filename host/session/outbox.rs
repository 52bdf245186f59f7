//! The sending half of a connection: a bounded outbox drained by its writer,
//! which also pings the peer and sends the close frame. The writer runs in the
//! connection's own task, beside its reads ([`Writer::beside`]).

use super::close::{close_code, CloseReason};
use super::token_bucket::TokenBucket;
use crate::config::SocketConfig;
use crate::plugin::truncate as host_truncate;
use crate::transport::TransportError;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use tokio::sync::Notify;

/// The sending half of a connection, shared with the fan-out stages. Frames are
/// reference-counted text: one job frame is shared by every worker it goes to.
#[derive(Clone)]
pub struct Outbox {
    /// `flume`'s bounded channel, not tokio's: tokio's allocates a block of 32
    /// frames up front (1.7 KiB a connection, before its first frame), flume's
    /// holds only what is queued (0.2 KiB).
    tx: flume::Sender<Utf8Bytes>,
    /// The rest, in one allocation: a connection holds thousands of bytes less
    /// than with a channel per concern.
    shared: Arc<Shared>,
}

/// What a connection's outbox and its writer share besides the queue.
struct Shared {
    latest: Latest,
    /// Why the connection is to close, once someone asked; the first reason wins.
    close: Mutex<Option<CloseReason>>,
    /// Wakes whoever waits for a close reason.
    closing: Notify,
    ping: PingClock,
    /// How many error frames are written: every refusal costs the server a frame
    /// the client chose to cause, so past this allowance refusals are only
    /// counted (`eligo_error_frames_unsent_total`).
    errors: Mutex<TokenBucket>,
}

impl Shared {
    fn close_reason(&self) -> MutexGuard<'_, Option<CloseReason>> {
        // Only plain values are written under the lock: nothing is half-done if it poisons.
        self.close.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves with the close reason once someone gave one.
    async fn closed(&self) -> CloseReason {
        loop {
            let notified = self.closing.notified();
            tokio::pin!(notified);
            // Registered before the reason is read, so a close between the two still wakes it.
            notified.as_mut().enable();
            if let Some(reason) = self.close_reason().clone() {
                return reason;
            }
            notified.await;
        }
    }
}

/// The server's pings of one connection: when the last one left and how long
/// the latest answered one took. Every ping carries its send time, and only the
/// pong of the last one sent counts, so a client cannot claim a round trip it
/// did not make.
#[derive(Default)]
struct PingClock {
    /// Microseconds since [`epoch`] the last ping was sent at; 0: none yet.
    sent_us: AtomicU64,
    /// The latest round trip in microseconds; 0: none answered yet.
    round_trip_us: AtomicU64,
}

/// The instant ping times count from: one per process, so a ping's payload is
/// eight bytes rather than a timestamp format.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl PingClock {
    /// Records a ping leaving now; returns its payload.
    fn sent(&self) -> Vec<u8> {
        let now = (epoch().elapsed().as_micros() as u64).max(1);
        self.sent_us.store(now, Ordering::Relaxed);
        now.to_be_bytes().to_vec()
    }

    /// A pong arrived now with `payload`: a round trip if it answers the last ping.
    fn answered(&self, payload: &[u8]) {
        let Ok(bytes) = <[u8; 8]>::try_from(payload) else { return };
        let sent = u64::from_be_bytes(bytes);
        if sent == 0 || sent != self.sent_us.load(Ordering::Relaxed) {
            return;
        }
        let now = epoch().elapsed().as_micros() as u64;
        self.round_trip_us.store(now.saturating_sub(sent).max(1), Ordering::Relaxed);
    }
}

/// For latest-wins frames (jobs): the newest one that found the outbox full,
/// sent once the frames queued before it are out.
#[derive(Default)]
struct Latest {
    frame: Mutex<Option<Utf8Bytes>>,
    /// Whether `frame` holds one: read without the lock on every job of a fan-out.
    waiting: std::sync::atomic::AtomicBool,
    ready: tokio::sync::Notify,
}

impl Latest {
    fn take(&self) -> Option<Utf8Bytes> {
        let mut frame = self.frame.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.waiting.store(false, Ordering::Release);
        frame.take()
    }
}

/// The outbox is full: the peer does not read fast enough.
#[derive(Debug)]
pub struct Full;

impl Outbox {
    /// Queues a text frame without waiting.
    pub fn try_send(&self, text: Utf8Bytes) -> Result<(), Full> {
        self.tx.try_send(text).map_err(|_| Full)
    }

    /// Queues a frame of a latest-wins stream without waiting: when the outbox is
    /// full, the frame waits in a one-frame slot sent after the queued frames, and
    /// replaces the frame waiting there. Says whether one was replaced (a frame
    /// superseded by a newer one, never sent).
    pub fn send_latest(&self, text: Utf8Bytes) -> bool {
        // While a frame waits in the slot, newer ones go there too, to stay behind
        // every queued frame and in order.
        let latest = &self.shared.latest;
        let text = if latest.waiting.load(Ordering::Acquire) {
            text
        } else {
            match self.tx.try_send(text) {
                Ok(()) | Err(flume::TrySendError::Disconnected(_)) => return false,
                Err(flume::TrySendError::Full(text)) => text,
            }
        };
        let mut waiting = latest.frame.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let replaced = waiting.replace(text).is_some();
        latest.waiting.store(true, Ordering::Release);
        drop(waiting);
        latest.ready.notify_one();
        replaced
    }

    /// Whether someone asked to close the connection.
    pub fn is_closing(&self) -> bool {
        self.shared.close_reason().is_some() || self.tx.is_disconnected()
    }

    /// Frames queued and not yet written.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    /// Queues a text frame, waiting for room.
    pub async fn send(&self, text: impl Into<Utf8Bytes>) -> bool {
        self.tx.send_async(text.into()).await.is_ok()
    }

    /// Queues an error frame or a refusal, within the connection's allowance of
    /// them; past it the frame is counted and not written. Says whether it was queued.
    pub async fn send_refusal(&self, text: impl Into<Utf8Bytes>) -> bool {
        let allowed = self.shared.errors.lock().unwrap_or_else(PoisonError::into_inner).take(std::time::Instant::now());
        if !allowed {
            crate::metrics::hot().error_frames_unsent.increment(1);
            return false;
        }
        self.send(text).await
    }

    /// Closes the connection after the frames already queued. The first reason wins.
    pub fn close(&self, code: u16, reason: &str) {
        // Close frames carry at most 123 bytes of reason.
        let reason = host_truncate(reason, 123).to_string();
        let mut current = self.shared.close_reason();
        if current.is_none() {
            *current = Some(CloseReason { code, reason });
            drop(current);
            self.shared.closing.notify_waiters();
        }
    }

    /// The round trip of the latest ping the peer answered, if any (see
    /// `socket.ping_interval_seconds`).
    pub fn last_ping(&self) -> Option<std::time::Duration> {
        let us = self.shared.ping.round_trip_us.load(Ordering::Relaxed);
        (us > 0).then(|| std::time::Duration::from_micros(us))
    }

    /// A pong arrived now with `payload`: a round trip if it answers the last ping.
    pub(super) fn pong(&self, payload: &[u8]) {
        self.shared.ping.answered(payload);
    }

    /// Resolves once someone asked to close the connection.
    pub async fn closing(&self) -> CloseReason {
        self.shared.closed().await
    }
}

/// The writer of a connection: drains its outbox into the socket, pings the
/// peer, and sends the close frame. It is not a task of its own: it runs in the
/// connection's task, beside what the connection reads and does (see
/// [`Writer::beside`]), so a storm of connections spawns one task per
/// connection, not two, and a frame queued to a connection wakes that one task.
pub struct Writer {
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The socket failed or the close frame went: nothing more to write.
    done: bool,
}

impl Writer {
    /// Runs `work` to its end, writing meanwhile: frames queued while `work` waits
    /// (for room in this very outbox, say) still go out.
    pub fn beside<F: Future>(&mut self, work: F) -> Beside<'_, F> {
        Beside { writer: self, work }
    }

    /// Writes what is queued and the close frame, for at most `within`.
    async fn drain(self, within: std::time::Duration) {
        if !self.done {
            let _ = tokio::time::timeout(within, self.future).await;
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's work run beside its writer ([`Writer::beside`]). A struct,
    /// not an `async fn`: an `async fn` would hold the work it is given twice (as
    /// its argument and as the pinned local it polls), and it is the largest part
    /// of a connection's task.
    pub struct Beside<'a, F> {
        writer: &'a mut Writer,
        #[pin]
        work: F,
    }
}

impl<F: Future> Future for Beside<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.work.poll(cx) {
            return Poll::Ready(out);
        }
        let writer = this.writer;
        if !writer.done && writer.future.as_mut().poll(cx).is_ready() {
            writer.done = true;
        }
        Poll::Pending
    }
}

/// Starts the writer of a connection: frames from the outbox go out in order; a
/// close request sends the close frame and ends it. `socket` sets how many error
/// frames [`Outbox::send_refusal`] writes and how often the peer is pinged. The
/// writer writes only while [`Writer::beside`] or [`finish`] runs it.
pub fn start_writer(
    mut sink: SplitSink<WebSocket, Message>,
    capacity: usize,
    socket: &SocketConfig,
) -> (Outbox, Writer) {
    let (tx, rx) = flume::bounded::<Utf8Bytes>(capacity.max(1));
    let shared = Arc::new(Shared {
        latest: Latest::default(),
        close: Mutex::new(None),
        closing: Notify::new(),
        ping: PingClock::default(),
        errors: Mutex::new(TokenBucket::new(socket.error_frames_per_second, socket.error_frames_per_second)),
    });
    let writing = shared.clone();
    let pinging = socket.ping_interval_seconds > 0;
    let interval = std::time::Duration::from_secs(socket.ping_interval_seconds.max(1));
    let writer = Box::pin(async move {
        // The first ping one to two intervals after the welcome, at random: the
        // workers of a reconnect storm are not pinged all at once ever after.
        let first = interval + interval.mul_f64(rand::random::<f64>());
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + first, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                // First: one ping per interval cannot starve the frames, and a
                // busy outbox must not starve the pings.
                _ = ticks.tick(), if pinging => {
                    if sink.send(Message::Ping(writing.ping.sent().into())).await.is_err() {
                        return;
                    }
                }
                frame = rx.recv_async() => match frame {
                    Ok(text) => {
                        if sink.send(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                    // Every sender is gone: the connection is over; say why if someone did.
                    Err(flume::RecvError::Disconnected) => {
                        let reason = writing.close_reason().clone();
                        if let Some(reason) = reason {
                            send_close(&mut sink, reason).await;
                        }
                        return;
                    }
                },
                // Only once the queue is empty (biased): the slot holds the newest.
                _ = writing.latest.ready.notified() => {
                    if let Some(text) = writing.latest.take() {
                        if sink.send(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                }
                reason = writing.closed() => {
                    // Frames queued before the close still go out.
                    let queued = std::iter::from_fn(|| rx.try_recv().ok()).chain(writing.latest.take());
                    for text in queued.collect::<Vec<_>>() {
                        if sink.send(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                    send_close(&mut sink, reason).await;
                    return;
                }
            }
        }
    });
    let outbox = Outbox { tx, shared };
    (outbox, Writer { future: writer, done: false })
}

/// Ends a connection: lets the writer send what is queued and the close frame.
/// When the connection was closed for what the peer sends (a flood, an oversized
/// message), the peer is likely still sending: what it sends is then read and
/// discarded until it answers the close, since a socket dropped with unread data is
/// reset and the peer would lose the close frame and its reason. Both bounded.
pub async fn finish(stream: &mut SplitStream<WebSocket>, outbox: Outbox, writer: Writer) {
    let peer_still_sending = outbox
        .shared
        .close_reason()
        .as_ref()
        .is_some_and(|r| matches!(r.code, close_code::POLICY | close_code::TOO_BIG));
    drop(outbox);
    writer.drain(std::time::Duration::from_secs(5)).await;
    if peer_still_sending {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
}

async fn send_close(sink: &mut SplitSink<WebSocket, Message>, reason: CloseReason) {
    let frame = CloseFrame { code: reason.code, reason: Utf8Bytes::from(reason.reason) };
    let _ = sink.send(Message::Close(Some(frame))).await;
    let _ = sink.close().await;
}

/// Counts a frame of `what` the broker did not take, whichever edge took it (a
/// socket, an HTTP request): what an alert on an unreachable broker watches
/// (deploy/prometheus/alerts.yml).
pub fn count_publish_failure(what: &'static str) {
    crate::metrics::add("eligo_publish_failures_total", &[("stream", what)], 1);
}

/// Closes a connection whose frame could not be published: 1013 (try again later)
/// while the broker is unavailable, 1011 otherwise, with `what` and the error.
pub fn close_for_publish_error(outbox: &Outbox, error: &TransportError, what: &'static str) {
    count_publish_failure(what);
    let code = match error {
        TransportError::Unavailable { .. } => close_code::TRY_AGAIN_LATER,
        _ => close_code::INTERNAL,
    };
    outbox.close(code, &format!("{what} not accepted: {error}"));
}
