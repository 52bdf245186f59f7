//! What node and worker connections share: a writer task that owns a bounded
//! outbox, a way to close a connection from anywhere with a code and a reason,
//! and the loop that reads a connection's frames within its budget.

use super::token_bucket::TokenBucket;
use crate::config::SocketConfig;
use crate::plugin::truncate as host_truncate;
use crate::transport::TransportError;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Close codes eligo uses.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The connection broke a rule (e.g. read too slowly to keep up).
    pub const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// An internal error (e.g. storage failed).
    pub const INTERNAL: u16 = 1011;
    /// A broker is unavailable: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// A bad or refused welcome (the original system's code).
    pub const BAD_WELCOME: u16 = 3000;
}

/// Why a connection is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    /// The WebSocket close code.
    pub code: u16,
    /// The reason, cut to what a close frame can carry.
    pub reason: String,
}

/// The sending half of a connection, shared with the fan-out stages. Frames are
/// reference-counted text: one job frame is shared by every worker it goes to.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Utf8Bytes>,
    close: watch::Sender<Option<CloseReason>>,
    latest: Arc<Latest>,
    errors: ErrorAllowance,
    ping: Arc<PingClock>,
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
        let text = if self.latest.waiting.load(Ordering::Acquire) {
            text
        } else {
            match self.tx.try_send(text) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(text)) => text,
            }
        };
        let mut waiting = self.latest.frame.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let replaced = waiting.replace(text).is_some();
        self.latest.waiting.store(true, Ordering::Release);
        drop(waiting);
        self.latest.ready.notify_one();
        replaced
    }

    /// Whether someone asked to close the connection.
    pub fn is_closing(&self) -> bool {
        self.close.borrow().is_some() || self.tx.is_closed()
    }

    /// Frames queued and not yet written.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Queues a text frame, waiting for room.
    pub async fn send(&self, text: impl Into<Utf8Bytes>) -> bool {
        self.tx.send(text.into()).await.is_ok()
    }

    /// Queues an error frame or a refusal, within the connection's allowance of
    /// them; past it the frame is counted and not written. Says whether it was queued.
    pub async fn send_refusal(&self, text: impl Into<Utf8Bytes>) -> bool {
        if !self.errors.take() {
            crate::metrics::hot().error_frames_unsent.increment(1);
            return false;
        }
        self.send(text).await
    }

    /// Closes the connection after the frames already queued. The first reason wins.
    pub fn close(&self, code: u16, reason: &str) {
        // Close frames carry at most 123 bytes of reason.
        let reason = host_truncate(reason, 123).to_string();
        self.close.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(CloseReason { code, reason });
            true
        });
    }

    /// The round trip of the latest ping the peer answered, if any (see
    /// `socket.ping_interval_seconds`).
    pub fn last_ping(&self) -> Option<std::time::Duration> {
        let us = self.ping.round_trip_us.load(Ordering::Relaxed);
        (us > 0).then(|| std::time::Duration::from_micros(us))
    }

    /// Resolves once someone asked to close the connection.
    pub async fn closing(&self) -> CloseReason {
        let mut rx = self.close.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return CloseReason { code: close_code::NORMAL, reason: String::new() };
            }
        }
    }
}

/// Starts the writer of a connection: frames from the outbox go out in order; a
/// close request sends the close frame and ends it. `socket` sets how many error
/// frames [`Outbox::send_refusal`] writes and how often the peer is pinged.
pub fn start_writer(
    mut sink: SplitSink<WebSocket, Message>,
    capacity: usize,
    socket: &SocketConfig,
) -> (Outbox, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(capacity.max(1));
    let (close, mut close_rx) = watch::channel::<Option<CloseReason>>(None);
    let latest = Arc::new(Latest::default());
    let waiting = latest.clone();
    let ping = Arc::new(PingClock::default());
    let pinger = ping.clone();
    let pinging = socket.ping_interval_seconds > 0;
    let interval = std::time::Duration::from_secs(socket.ping_interval_seconds.max(1));
    let writer = tokio::spawn(async move {
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
                    if sink.send(Message::Ping(pinger.sent().into())).await.is_err() {
                        return;
                    }
                }
                frame = rx.recv() => match frame {
                    Some(text) => {
                        if sink.send(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                    // Every sender is gone: the connection is over; say why if someone did.
                    None => {
                        let reason = close_rx.borrow().clone();
                        if let Some(reason) = reason {
                            send_close(&mut sink, reason).await;
                        }
                        return;
                    }
                },
                // Only once the queue is empty (biased): the slot holds the newest.
                _ = waiting.ready.notified() => {
                    if let Some(text) = waiting.take() {
                        if sink.send(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                }
                changed = close_rx.changed() => {
                    let reason = if changed.is_ok() { close_rx.borrow().clone() } else { None };
                    let Some(reason) = reason else { return };
                    // Frames queued before the close still go out.
                    let queued = std::iter::from_fn(|| rx.try_recv().ok()).chain(waiting.take());
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
    (Outbox { tx, close, latest, errors: ErrorAllowance::new(socket.error_frames_per_second), ping }, writer)
}

/// Ends a connection: lets the writer send what is queued and the close frame.
/// When the connection was closed for what the peer sends (a flood, an oversized
/// message), the peer is likely still sending: what it sends is then read and
/// discarded until it answers the close, since a socket dropped with unread data is
/// reset and the peer would lose the close frame and its reason. Both bounded.
pub async fn finish(stream: &mut SplitStream<WebSocket>, outbox: Outbox, writer: tokio::task::JoinHandle<()>) {
    let peer_still_sending =
        outbox.close.borrow().as_ref().is_some_and(|r| matches!(r.code, close_code::POLICY | close_code::TOO_BIG));
    drop(outbox);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
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

/// Applies the configured buffer sizes to a connection being upgraded.
pub fn sized(ws: axum::extract::ws::WebSocketUpgrade, socket: &SocketConfig) -> axum::extract::ws::WebSocketUpgrade {
    ws.read_buffer_size(socket.read_buffer_bytes)
        .write_buffer_size(socket.write_buffer_bytes)
        .max_message_size(socket.max_message_bytes)
        .max_frame_size(socket.max_message_bytes)
}

/// Closes a connection whose read failed, saying why when the client can act on
/// it: a message over the limit gets 1009 with the limit (its payload is never
/// read). Other read errors mean the connection is already gone.
pub fn close_for_read_error(outbox: &Outbox, error: axum::Error, role: &'static str) {
    let inner = error.into_inner();
    if let Some(tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong { size, max_size })) =
        inner.downcast_ref::<tungstenite::Error>()
    {
        crate::metrics::add("eligo_frames_refused_total", &[("role", role), ("reason", "too_large")], 1);
        outbox.close(close_code::TOO_BIG, &format!("message of {size} bytes is over the limit of {max_size} bytes"));
    }
}

/// The open connections of one server, by id, and their tasks.
pub struct Registry<C> {
    connections: Mutex<HashMap<u64, C>>,
    next_id: AtomicU64,
    tasks: TaskTracker,
}

impl<C> Default for Registry<C> {
    fn default() -> Self {
        Registry { connections: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1), tasks: TaskTracker::new() }
    }
}

impl<C> Registry<C> {
    /// Adds a connection; returns its id.
    pub fn insert(&self, connection: C) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, connection);
        id
    }

    /// Removes a connection.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The connections, locked: to copy out what a decision needs, or to apply
    /// one. Never hold it across a plugin call or an await. A panic that
    /// poisoned it is outlived: every change under it is a whole-field write, so
    /// the map is never half-updated, and delivery must not stop for good.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<u64, C>> {
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none are open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tracks a connection's task, so [`closed`](Self::closed) can wait for it.
    pub fn track<F: Future<Output = ()>>(&self, task: F) -> impl Future<Output = ()> {
        self.tasks.track_future(task)
    }

    /// Waits until every tracked connection task has finished.
    pub async fn closed(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A drop this soon after the previous one continues the same flood.
const FLOOD_GAP: std::time::Duration = std::time::Duration::from_secs(1);
/// A flood this long closes the connection, however few frames it dropped.
const FLOOD_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How late a frame may be read (the server busy, the frame waiting in the
/// socket) without counting against a client that sent it on time.
const READ_LATENESS: std::time::Duration = std::time::Duration::from_secs(1);

/// A connection's allowance of frames: a token bucket of `burst` frames,
/// refilled at `per_second`, and the rule that closes a flood.
///
/// Frames over the allowance are dropped. Drops less than [`FLOOD_GAP`] apart
/// form one flood, whatever was let through between them (at any rate over the
/// budget the bucket refills a token now and then, so counting drops *in a row*
/// would never close a fast flood). A flood is closed once it has dropped
/// `burst` frames or lasted [`FLOOD_LIMIT`]: within about two seconds at any
/// sending rate over the budget. A client at or under its budget drops nothing
/// and is never closed.
#[derive(Debug)]
pub struct FrameBudget {
    bucket: TokenBucket,
    flood: Option<Flood>,
}

/// The drops of one flood.
#[derive(Debug)]
struct Flood {
    started: std::time::Instant,
    last_drop: std::time::Instant,
    dropped: u32,
}

/// What to do with a frame, by the connection's [`FrameBudget`].
#[derive(Debug, PartialEq, Eq)]
pub enum FrameVerdict {
    /// Within the allowance.
    Take,
    /// Over it: drop the frame and say so.
    Drop,
    /// Over it for a whole flood: close the connection.
    Close,
}

impl FrameBudget {
    /// A full bucket: `burst` frames at once (at least one), `per_second` after.
    pub fn new(per_second: u32, burst: u32) -> Self {
        FrameBudget { bucket: TokenBucket::forgiving(per_second, burst, READ_LATENESS), flood: None }
    }

    /// A new connection's data-frame allowance, as `socket` sets it. Built here
    /// rather than by the settings, which know nothing of the pipeline that reads them.
    pub fn for_socket(socket: &SocketConfig) -> Self {
        FrameBudget::new(socket.frames_per_second, socket.frame_burst)
    }

    /// A new connection's allowance of pings and pongs, apart from its data frames.
    pub fn control_for_socket(socket: &SocketConfig) -> Self {
        FrameBudget::new(socket.control_frames_per_second, socket.control_frames_per_second.saturating_mul(2))
    }

    /// Spends one frame at `now`.
    pub fn spend(&mut self, now: std::time::Instant) -> FrameVerdict {
        if self.bucket.take(now) {
            return FrameVerdict::Take;
        }
        let flood = match &mut self.flood {
            Some(flood) if now.saturating_duration_since(flood.last_drop) < FLOOD_GAP => flood,
            stale => stale.insert(Flood { started: now, last_drop: now, dropped: 0 }),
        };
        flood.dropped += 1;
        flood.last_drop = now;
        if flood.dropped >= self.bucket.burst() || now.saturating_duration_since(flood.started) >= FLOOD_LIMIT {
            FrameVerdict::Close
        } else {
            FrameVerdict::Drop
        }
    }

    /// Frames dropped so far in the current flood (0 outside one).
    pub fn dropped_in_flood(&self) -> u32 {
        self.flood.as_ref().map_or(0, |flood| flood.dropped)
    }

    /// The allowance, as a client is told it.
    pub fn describe(&self) -> String {
        format!("{} frames per second (burst {})", self.bucket.per_second(), self.bucket.burst())
    }
}

/// How many error frames a connection is written: every refusal costs the server
/// a frame the client chose to cause, so past this allowance refusals are only
/// counted (`eligo_error_frames_unsent_total`).
#[derive(Clone)]
struct ErrorAllowance(Arc<Mutex<TokenBucket>>);

impl ErrorAllowance {
    fn new(per_second: u32) -> Self {
        ErrorAllowance(Arc::new(Mutex::new(TokenBucket::new(per_second, per_second))))
    }

    fn take(&self) -> bool {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take(std::time::Instant::now())
    }
}

/// Which budget a frame spends.
#[derive(Clone, Copy)]
enum Budgeted {
    /// Text and binary frames.
    Data,
    /// Pings and pongs.
    Control,
}

impl Budgeted {
    /// The `reason` label of a refusal.
    fn reason(self) -> &'static str {
        match self {
            Budgeted::Data => "rate",
            Budgeted::Control => "ping_rate",
        }
    }

    /// What a client sent too many of.
    fn what(self) -> &'static str {
        match self {
            Budgeted::Data => "frames",
            Budgeted::Control => "pings",
        }
    }
}

/// Hands every data frame within the connection's `budget` to `on_frame` until the
/// peer goes, someone closes the connection, `shutdown` fires (which closes it
/// with 1001) or a read fails (see [`close_for_read_error`]). A frame over the
/// budget is dropped with an error frame (within the error allowance); a flood
/// closes with 1008 (see [`FrameBudget`]). Pings and pongs spend `control`, a
/// budget of their own. `role` labels the metrics.
pub async fn read_frames<F, Fut>(
    stream: &mut SplitStream<WebSocket>,
    outbox: &Outbox,
    shutdown: &CancellationToken,
    role: &'static str,
    (mut budget, mut control): (FrameBudget, FrameBudget),
    mut on_frame: F,
) where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let message = tokio::select! {
            m = stream.next() => m,
            _ = outbox.closing() => return,
            _ = shutdown.cancelled() => {
                outbox.close(close_code::GOING_AWAY, "server shutting down");
                return;
            }
        };
        let kind = match &message {
            Some(Ok(Message::Text(_) | Message::Binary(_))) => Budgeted::Data,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Budgeted::Control,
            _ => {
                if let Some(Err(e)) = message {
                    close_for_read_error(outbox, e, role);
                }
                return;
            }
        };
        let spent = match kind {
            Budgeted::Data => &mut budget,
            Budgeted::Control => &mut control,
        };
        let verdict = spent.spend(std::time::Instant::now());
        if verdict != FrameVerdict::Take {
            crate::metrics::add("eligo_frames_refused_total", &[("role", role), ("reason", kind.reason())], 1);
        }
        match (verdict, kind) {
            (FrameVerdict::Take, _) => {}
            // The library answers a ping by itself; a dropped one is only counted.
            (FrameVerdict::Drop, Budgeted::Control) => continue,
            (FrameVerdict::Drop, Budgeted::Data) => {
                let error = format!("too many frames: over {}; this one was dropped", budget.describe());
                let text = match &message {
                    Some(Ok(Message::Text(text))) => text.as_bytes(),
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    _ => &[],
                };
                let refusal = crate::protocol::refusal_frame(text, &error);
                // The first drop of a flood is always answered, so a client learns why
                // its frames go unanswered; the rest are within the error allowance.
                if budget.dropped_in_flood() == 1 {
                    outbox.send(refusal).await;
                } else {
                    outbox.send_refusal(refusal).await;
                }
                continue;
            }
            (FrameVerdict::Close, _) => {
                outbox.close(close_code::POLICY, &format!("too many {}: over {}", kind.what(), spent.describe()));
                return;
            }
        }
        match message {
            Some(Ok(Message::Text(text))) => on_frame(text.as_bytes().to_vec()).await,
            Some(Ok(Message::Binary(bytes))) => on_frame(bytes.to_vec()).await,
            Some(Ok(Message::Pong(payload))) => outbox.ping.answered(&payload),
            _ => {}
        }
    }
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

#[cfg(test)]
mod tests {
    use super::{FrameBudget, FrameVerdict};
    use std::time::{Duration, Instant};

    /// What a budget of 10 a second lends to frames read late: a second's worth.
    const LENT: usize = 10;

    #[test]
    fn a_budget_lets_a_burst_through_then_drops_then_closes() {
        let start = Instant::now();
        let mut budget = FrameBudget::new(10, 3);
        let verdicts: Vec<FrameVerdict> = (0..3 + LENT + 3).map(|_| budget.spend(start)).collect();
        use FrameVerdict::*;
        assert!(verdicts[..3 + LENT].iter().all(|v| *v == Take), "the burst and the loan: {verdicts:?}");
        assert_eq!(verdicts[3 + LENT..], [Drop, Drop, Close]);
    }

    #[test]
    fn a_budget_refills_at_its_rate_up_to_the_burst() {
        let start = Instant::now();
        let mut budget = FrameBudget::new(10, 3);
        for _ in 0..3 + LENT {
            assert_eq!(budget.spend(start), FrameVerdict::Take);
        }
        assert_eq!(budget.spend(start), FrameVerdict::Drop);
        // 100 ms at 10 a second: one more frame, and the dropped run starts over.
        assert_eq!(budget.spend(start + Duration::from_millis(100)), FrameVerdict::Take);
        assert_eq!(budget.spend(start + Duration::from_millis(100)), FrameVerdict::Drop);
        // A long pause repays the loan and refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        let taken = (0..20).filter(|_| budget.spend(later) == FrameVerdict::Take).count();
        assert_eq!(taken, 3 + LENT);
    }
}
