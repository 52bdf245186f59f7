//! The worker server: workers send their welcome, receive the jobs the policies
//! offer them, and submit solutions, which go to the `solution` queue with the
//! welcome's `hardware_id` and `caption` added.
//!
//! One reader of the `job` log per process feeds every connection; a worker that
//! connects is offered the current job at once. Slow connections: jobs are
//! latest-wins, so a job that finds a connection's outbox full waits in a
//! one-job slot behind the queued ones, and a newer job replaces it there: a
//! slow worker loses only jobs superseded by newer ones (counted), never the
//! newest.
//!
//! Offering runs in one task per server ([`offer_loop`]), one offer at a time,
//! with the policies' `offer-job` on the decision pool: the registry is locked
//! only to copy the workers' states out and to apply the answer, never across
//! a plugin call, so a slow policy delays offers and nothing else. Workers
//! welcomed while an offer is decided wait for the next one together, and are
//! offered the job that is current by then: never an older one after a newer.

use crate::config::{ConnectionLimits, SocketConfig};
use crate::edge::accept_guard::{AcceptGuard, Peer};
use crate::edge::admission::{admit_connection, run_challenge, Admitted, Challenge, Handshake};
use crate::edge::connection_cap::ConnectionCap;
use crate::pipeline::processors::solution::job_view;
use crate::pipeline::views::{DeliveryCounts, KeyDigest, WorkerPolicyView, WorkerView};
use crate::pipeline::worker::presence::PresenceSender;
use crate::pipeline::worker::stats::{Refused, WorkerStats};
use crate::pipeline::Services;
use crate::plugin::{now_ms, Batched, Hook, Job, Lane, Refusal, Role, Welcome, WorkerState};
use crate::protocol::{
    ack_frame, canonical_json, refusal, verdict_frame, ConnectionRecord, JobEvent, Origin, PresenceEvent, Reply,
    SolutionFrame, SolutionMessage, TallyEvent, VerdictEvent, VerdictTopicEvent, WelcomeFrame, WorkFrame,
};
use crate::session::{
    close_code, close_for_publish_error, close_for_read_error, finish, read_frames, sized, start_writer, FrameBudget,
    Outbox, Registry,
};
use crate::transport::{Stream, Topic};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use futures::StreamExt;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Settings of the worker server.
#[derive(Clone, Debug)]
pub struct WorkerServerSettings {
    /// Frames queued per connection; past that, a newer job supersedes the one
    /// waiting behind them.
    pub outbox_capacity: usize,
    /// How long a new connection may take to send its welcome.
    pub welcome_timeout: Duration,
    /// This process's name in the `worker` table (for crash recovery).
    pub instance: String,
    /// Solutions of one connection awaiting the broker's confirm at once.
    pub publishes_in_flight: usize,
    /// WebSocket buffer sizes and input bounds.
    pub socket: SocketConfig,
    /// Caps on open connections.
    pub connections: ConnectionLimits,
    /// A worker connected this long without a valid solution within it is silent.
    pub silent_after: Duration,
}

struct WorkerConn {
    /// What it sent and how it was judged.
    stats: Arc<WorkerStats>,
    state: WorkerState,
    outbox: Outbox,
    remote: SocketAddr,
    connected_at: chrono::DateTime<chrono::Utc>,
    jobs_received: u64,
    /// Ids of this connection's solutions whose verdict has not come yet: each
    /// gets one verdict, even if a redelivered batch decides it again.
    awaiting_verdicts: HashSet<KeyDigest>,
    /// The sequence number of the last job offered to this worker (whether the
    /// policies chose it or not): a welcome offer skips the job it already had.
    considered: u64,
}

/// An event of the logs a worker server reads.
enum Logged {
    /// A job to offer.
    Job(JobEvent),
    /// A verdict or a batch's tally.
    Verdict(VerdictTopicEvent),
}

/// What the offering task is asked to do.
enum Offer {
    /// Offer a job read from the log to every worker.
    Job(ReadyJob),
    /// Offer the current job to a newly welcomed worker.
    Welcomed(u64),
}

/// Most requests one round of the offering task takes at once: workers welcomed
/// together are offered the current job in one `offer-job` call.
const OFFERS_PER_ROUND: usize = 4096;

/// Most verdicts one connection waits for at once; a solution sent past that is
/// acknowledged but gets no verdict.
const AWAITED_VERDICTS: usize = 65_536;

/// Jobs whose delivery counts the server remembers.
const REMEMBERED_JOBS: usize = 1024;

/// A job ready to send: the policies' view and the frame (one copy, shared by
/// every worker it is queued to).
#[derive(Clone)]
struct ReadyJob {
    job: Job,
    frame: Utf8Bytes,
    /// Order of arrival, from 1.
    seq: u64,
    /// When the job was stored, for the fan-out latency.
    stored_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The worker server of one process.
pub struct WorkerServer {
    services: Services,
    settings: WorkerServerSettings,
    workers: Registry<WorkerConn>,
    current: Mutex<Option<ReadyJob>>,
    /// To the offering task ([`offer_loop`]).
    offers: tokio::sync::mpsc::UnboundedSender<Offer>,
    /// The last job sequence number given out.
    job_seq: std::sync::atomic::AtomicU64,
    cap: Arc<ConnectionCap>,
    deliveries: DeliveryCounts,
    presence: PresenceSender,
    /// This process among worker servers, for verdicts to find their way back.
    server_id: String,
    /// The welcomes' `admit-worker` decisions, asked together in a storm.
    admissions: Batched<Arc<Welcome>, Result<WorkerState, Refusal>>,
    /// Whether the reader of the `verdict` log is in place (no verdict produced
    /// from then on is missed). It reads from the start, since every connection's
    /// counters take the batches' tallies from that log.
    verdicts_ready: tokio::sync::watch::Sender<bool>,
    shutdown: CancellationToken,
}

/// How often the gauges of silent workers and the invalid share are computed.
const GAUGES_EVERY: Duration = Duration::from_secs(15);

/// How long the first solution that asks for a verdict waits for the verdict
/// reader to be in place before it is published anyway.
const VERDICT_READER_START: Duration = Duration::from_secs(5);

impl WorkerServer {
    /// A worker server over `services`; connections close when `shutdown` fires.
    /// The returned future publishes the server's presence events (connections
    /// opening and ending) to the `worker` queue: run it beside the server; it ends
    /// once [`closed`](Self::closed) has returned and every event is confirmed.
    pub fn new(
        services: Services,
        settings: WorkerServerSettings,
        shutdown: CancellationToken,
    ) -> (Arc<Self>, impl std::future::Future<Output = ()> + Send + 'static) {
        let cap = ConnectionCap::new("worker", &settings.connections);
        let workers = Registry::default();
        let deliveries = DeliveryCounts::new(REMEMBERED_JOBS);
        let (presence, publishing) = PresenceSender::start(services.queue.clone());
        let current = Mutex::new(None);
        let (offers, offer_requests) = tokio::sync::mpsc::unbounded_channel();
        let server = WorkerServer {
            services,
            settings,
            workers,
            current,
            offers,
            job_seq: std::sync::atomic::AtomicU64::new(0),
            cap,
            deliveries,
            presence,
            server_id: uuid::Uuid::new_v4().to_string(),
            admissions: Batched::new(|policies, welcome| policies.admit_shared_worker(&welcome, now_ms())),
            verdicts_ready: tokio::sync::watch::Sender::new(false),
            shutdown,
        };
        let server = Arc::new(server);
        tokio::spawn(offer_loop(Arc::downgrade(&server), offer_requests));
        (server, publishing)
    }

    /// The WebSocket endpoint, at `/` (and any other path, as the original server).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(any(upgrade)).with_state(self.clone())
    }

    /// What the listener checks on each socket before its request is read, under
    /// this server's caps.
    pub fn accept_guard(&self) -> Arc<AcceptGuard> {
        AcceptGuard::new(self.cap.clone(), &self.settings.connections)
    }

    /// Waits until every connection has finished (after shutdown was signalled);
    /// then the presence publisher sends what is left and stops.
    pub async fn closed(&self) {
        self.workers.closed().await;
        self.presence.close();
    }

    /// Connected (welcomed) workers.
    pub fn connections(&self) -> usize {
        self.workers.len()
    }

    /// Up to `limit` of the workers connected now, numbered above `after`, by number.
    pub fn snapshot(&self, after: u64, limit: usize) -> Vec<WorkerView> {
        let (now, silent_after) = (now_ms() as i64, self.settings.silent_after.as_millis() as i64);
        let workers = self.workers.lock();
        let mut ids: Vec<u64> = workers.keys().copied().filter(|id| *id > after).collect();
        ids.sort_unstable();
        ids.truncate(limit);
        ids.into_iter()
            .filter_map(|id| workers.get(&id).map(|conn| (id, conn)))
            .map(|(id, conn)| {
                let welcome = conn.state.welcome();
                let policies = conn
                    .state
                    .policies()
                    .map(|(plugin, admitted)| WorkerPolicyView {
                        plugin: plugin.to_string(),
                        admitted: admitted.is_some(),
                        tags: admitted.map(|(p, _)| p.tags.clone()).unwrap_or_default(),
                        limits: admitted.map(|(p, _)| p.limits.iter().cloned().collect()).unwrap_or_default(),
                        state: admitted.map(|(_, state)| state),
                    })
                    .collect();
                WorkerView {
                    connection: id,
                    remote: conn.remote.to_string(),
                    ip: welcome.ip.clone(),
                    address: welcome.address.clone(),
                    hardware: welcome.hardware.clone(),
                    hardware_id: welcome.hardware_id.clone(),
                    caption: welcome.caption.clone(),
                    connected_at: conn.connected_at,
                    jobs_received: conn.jobs_received,
                    outbox_depth: conn.outbox.depth(),
                    ping_ms: conn.outbox.last_ping().map(|rtt| (rtt.as_secs_f64() * 1e5).round() / 100.0),
                    policies,
                    stats: conn.stats.view(now, silent_after),
                }
            })
            .collect()
    }

    /// How many worker connections this process queued the job to, if it is
    /// among the latest it remembers.
    pub fn job_deliveries(&self, task_id: &str) -> Option<u64> {
        self.deliveries.get(task_id)
    }

    /// Finishes the connections a previous run of this instance left open, and
    /// loads the current job, so a worker connecting now gets it at once.
    ///
    /// The rows already written are finished now; a recovery event on the `worker`
    /// queue finishes those whose events the previous run had queued but the
    /// presence processor had not written yet (it reaches the processor after them).
    pub async fn recover(&self) -> anyhow::Result<()> {
        let instance = self.settings.instance.clone();
        let at = chrono::Utc::now();
        let closed = self.services.store.close_connections_of(&instance).await?;
        if closed > 0 {
            tracing::info!(closed, %instance, "finished worker connections left open by a previous run");
        }
        let recovered = serde_json::to_vec(&PresenceEvent::Recovered { instance, at })?;
        self.services.queue.publish(Stream::Worker, &recovered).await?;
        if let Some(job) = self.services.store.latest_broadcast_job().await? {
            let view = job_view(&job);
            let epoch_challenge = serde_json::from_str(&job.epoch_challenge).unwrap_or_default();
            let frame = WorkFrame { task_id: job.task_id.clone(), epoch_challenge };
            let frame = Utf8Bytes::from(serde_json::to_string(&frame)?);
            self.set_current(ReadyJob { job: view, frame, seq: self.next_job_seq(), stored_at: None });
        }
        Ok(())
    }

    fn next_job_seq(&self) -> u64 {
        self.job_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    fn set_current(&self, ready: ReadyJob) {
        if let Ok(mut current) = self.current.lock() {
            if current.as_ref().is_none_or(|c| c.job.block_height <= ready.job.block_height) {
                *current = Some(ready);
            }
        }
    }

    /// Reads the `job` and `verdict` logs, with one reader, until shutdown:
    /// offers each job to every worker, and hands this process's connections the
    /// verdicts on the solutions they asked about and the tallies of their
    /// batches. `ready` fires, and the solutions that ask for a verdict go on,
    /// once the reader is in place.
    pub async fn run_logs(self: Arc<Self>, ready: Option<tokio::sync::oneshot::Sender<()>>) {
        let in_place = || {
            self.verdicts_ready.send_replace(true);
            if let Some(ready) = ready {
                let _ = ready.send(());
            }
        };
        let (log, shutdown) = (self.services.log.clone(), self.shutdown.clone());
        let decode = |topic: Topic, payload: &[u8]| match topic {
            Topic::Job => serde_json::from_slice(payload).map(Logged::Job),
            Topic::Verdict => serde_json::from_slice(payload).map(Logged::Verdict),
            other => Err(serde::de::Error::custom(format!("`{}` is not read here", other.name()))),
        };
        let topics = [Topic::Job, Topic::Verdict];
        crate::pipeline::fanout::tail_topics_forever(log, &topics, shutdown, in_place, decode, |events| {
            for event in events {
                match event {
                    Logged::Job(job) => self.on_job(job),
                    Logged::Verdict(VerdictTopicEvent::Verdict(verdict)) => self.on_verdict(verdict),
                    Logged::Verdict(VerdictTopicEvent::Tally(tally)) => self.on_tally(tally),
                }
            }
            std::future::ready(())
        })
        .await
    }

    /// A batch's counts of this server's connections' solutions.
    fn on_tally(&self, event: TallyEvent) {
        if event.server != self.server_id {
            return;
        }
        let now = now_ms() as i64;
        let workers = self.workers.lock();
        for tally in &event.tallies {
            if let Some(conn) = workers.get(&tally.connection) {
                conn.stats.judged(tally.valid, &tally.invalid, now);
            }
        }
    }

    /// Every so often until shutdown, the gauges of what the workers connected
    /// now do as a whole: how many are silent, and the share of their judged
    /// solutions that were invalid.
    pub async fn run_gauges(self: Arc<Self>) {
        let mut every = tokio::time::interval(GAUGES_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let (now, silent_after) = (now_ms() as i64, self.settings.silent_after.as_millis() as i64);
            let stats: Vec<Arc<WorkerStats>> = self.workers.lock().values().map(|c| c.stats.clone()).collect();
            let silent = stats.iter().filter(|s| s.silent(now, silent_after)).count();
            let (valid, invalid) =
                stats.iter().map(|s| s.judged_totals()).fold((0, 0), |(v, i), (sv, si)| (v + sv, i + si));
            crate::metrics::gauge("eligo_workers_silent", &[]).set(silent as f64);
            let share = if valid + invalid == 0 { 0.0 } else { invalid as f64 / (valid + invalid) as f64 };
            crate::metrics::gauge("eligo_workers_invalid_share", &[]).set(share);
        }
    }

    /// Waits (bounded) until the reader of the `verdict` log is in place.
    async fn verdict_reader(&self) {
        if *self.verdicts_ready.borrow() {
            return;
        }
        let mut ready = self.verdicts_ready.subscribe();
        let _ = tokio::time::timeout(VERDICT_READER_START, ready.wait_for(|r| *r)).await;
    }

    fn on_verdict(&self, event: VerdictEvent) {
        if event.reply.server != self.server_id {
            return;
        }
        let outbox = {
            let mut workers = self.workers.lock();
            let Some(conn) = workers.get_mut(&event.reply.connection) else { return };
            if !conn.awaiting_verdicts.remove(&KeyDigest::of(&event.reply.id.key())) {
                return;
            }
            conn.outbox.clone()
        };
        let frame = verdict_frame(&event.reply.id, &event.task_id, event.reason.as_deref().filter(|_| !event.valid));
        if outbox.try_send(frame.clone().into()).is_err() {
            tokio::spawn(async move { outbox.send(frame).await });
        }
    }

    fn on_job(&self, event: JobEvent) {
        let job = Job {
            task_id: event.task_id.clone(),
            block_height: event.block_height,
            proof_target: event.proof_target,
            epoch_challenge: canonical_json(&event.epoch_challenge),
        };
        let stored_at = chrono::DateTime::parse_from_rfc3339(&event.created_at).ok().map(|t| t.to_utc());
        let frame = WorkFrame { task_id: event.task_id, epoch_challenge: event.epoch_challenge };
        let Ok(frame) = serde_json::to_string(&frame) else { return };
        let ready = ReadyJob { job, frame: Utf8Bytes::from(frame), seq: self.next_job_seq(), stored_at };
        // Current before it is offered: a worker welcomed from now on gets this one.
        self.set_current(ready.clone());
        let _ = self.offers.send(Offer::Job(ready));
    }

    /// Offers the current job to the workers of `welcomed` that did not have it.
    async fn offer_current(&self, welcomed: &[u64]) {
        let current = self.current.lock().ok().and_then(|c| c.clone());
        if let Some(current) = current {
            self.offer(&current, Some(welcomed)).await;
        }
    }

    /// Offers `ready` to every worker (`only` = `None`) or to those of `only`,
    /// skipping any that were offered this very job already, and queues it to the chosen. Run by the
    /// offering task alone, so no other offer changes a worker's state between
    /// the copy and the apply.
    async fn offer(&self, ready: &ReadyJob, only: Option<&[u64]>) {
        let (ids, states): (Vec<u64>, Vec<WorkerState>) = {
            let workers = self.workers.lock();
            let unoffered =
                |(id, conn): (&u64, &WorkerConn)| (conn.considered != ready.seq).then(|| (*id, conn.state.clone()));
            match only {
                // Newly welcomed workers (a storm brings thousands at once): look them
                // up instead of walking every connection.
                Some(only) => only.iter().filter_map(|id| workers.get_key_value(id)).filter_map(unoffered).unzip(),
                None => workers.iter().filter_map(unoffered).unzip(),
            }
        };
        if ids.is_empty() {
            return;
        }
        let job = ready.job.clone();
        // A job for everyone goes ahead of a storm's welcomes; the offers to those
        // welcomed wait with them.
        let lane = if only.is_none() { Lane::Urgent } else { Lane::Bulk };
        let decided = self
            .services
            .decide(lane, Hook::OfferJob, move |policies| {
                let mut states = states;
                let mut refs: Vec<&mut WorkerState> = states.iter_mut().collect();
                let chosen = policies.offer_job(&job, &mut refs, now_ms());
                (states, chosen)
            })
            .await;
        let (states, chosen) = match decided {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(task_id = %ready.job.task_id, error = %e, "offer-job failed closed: job goes to no worker");
                return;
            }
        };
        let mut chosen = chosen.into_iter().peekable();
        let (mut queued, mut dropped) = (0, 0);
        let mut workers = self.workers.lock();
        for (i, (id, state)) in ids.into_iter().zip(states).enumerate() {
            // `chosen` is ascending: it is read in step with `i`, whether or not the
            // worker is still here.
            let picked = chosen.next_if_eq(&i).is_some();
            // A worker gone meanwhile is skipped; one welcomed meanwhile waits for its own offer.
            let Some(conn) = workers.get_mut(&id) else { continue };
            conn.state = state;
            conn.considered = ready.seq;
            if !picked {
                continue;
            }
            conn.jobs_received += 1;
            queued += 1;
            if conn.outbox.send_latest(ready.frame.clone()) {
                dropped += 1;
            }
        }
        drop(workers);
        self.deliveries.add(&ready.job.task_id, queued);
        let hot = crate::metrics::hot();
        hot.jobs_delivered.increment(queued);
        hot.jobs_superseded.increment(dropped);
        if only.is_none() {
            hot.job_fanout_workers.record(queued as f64);
            if let Some(latency) = ready.stored_at.and_then(|at| (chrono::Utc::now() - at).to_std().ok()) {
                hot.job_fanout_seconds.record(latency.as_secs_f64());
            }
        }
    }

    async fn serve(&self, socket: WebSocket, admitted: Admitted) {
        let Admitted { handshake, place: _place, challenge } = admitted;
        let (sink, mut stream) = socket.split();
        let (outbox, mut writer) = start_writer(sink, self.settings.outbox_capacity, &self.settings.socket);
        writer.beside(self.converse(&mut stream, &outbox, challenge.as_ref(), &handshake)).await;
        finish(&mut stream, outbox, writer).await;
    }

    /// The connection from its first frame to its last: the challenge if the
    /// client asked for one, the welcome, then its solutions.
    async fn converse(
        &self,
        stream: &mut futures::stream::SplitStream<WebSocket>,
        outbox: &Outbox,
        challenge: Option<&Challenge>,
        handshake: &Handshake,
    ) {
        if let Some(challenge) = challenge {
            let request = handshake.request(Role::Worker);
            if !run_challenge(challenge, self.services.deciding(), &request, stream, outbox).await {
                return;
            }
        }
        if let Some((welcome, state)) = self.welcome(stream, outbox).await {
            self.session(stream, outbox, welcome, state, handshake).await;
        }
    }

    /// Reads and admits the welcome; on failure the connection is being closed.
    async fn welcome(
        &self,
        stream: &mut futures::stream::SplitStream<WebSocket>,
        outbox: &Outbox,
    ) -> Option<(Arc<Welcome>, WorkerState)> {
        let first = tokio::select! {
            m = tokio::time::timeout(self.settings.welcome_timeout, stream.next()) => m,
            _ = self.shutdown.cancelled() => return None,
        };
        let bytes = match first {
            Ok(Some(Ok(Message::Text(t)))) => t.as_bytes().to_vec(),
            Ok(Some(Ok(Message::Binary(b)))) => b.to_vec(),
            Ok(Some(Ok(_))) => {
                outbox.close(close_code::BAD_WELCOME, "expected a welcome text frame first");
                return None;
            }
            Ok(Some(Err(e))) => {
                close_for_read_error(outbox, e, "worker");
                return None;
            }
            Ok(None) => return None,
            Err(_) => {
                outbox.close(close_code::BAD_WELCOME, "no welcome within the time limit");
                return None;
            }
        };
        let welcome = match WelcomeFrame::parse_within(&bytes, &self.settings.socket.fields()) {
            Ok(w) => w,
            Err(e) => {
                crate::metrics::hot().bad_frames_worker.increment(1);
                outbox.close(close_code::BAD_WELCOME, &format!("bad welcome: {e}"));
                return None;
            }
        };
        let WelcomeFrame { ip, address, hardware, hardware_id, caption } = welcome;
        // One copy, shared by the session and the policies' state.
        let welcome = Arc::new(Welcome { ip, address, hardware, hardware_id, caption });
        let admitted = self.services.deciding().decide_batched(&self.admissions, Hook::AdmitWorker, welcome.clone());
        match admitted.await.unwrap_or_else(|e| Err(e.into())) {
            Ok(state) => Some((welcome, state)),
            Err(refusal) => {
                crate::metrics::add("eligo_workers_refused_total", &[], 1);
                outbox.close(close_code::BAD_WELCOME, &refusal.to_string());
                None
            }
        }
    }

    async fn session(
        &self,
        stream: &mut futures::stream::SplitStream<WebSocket>,
        outbox: &Outbox,
        welcome: Arc<Welcome>,
        state: WorkerState,
        handshake: &Handshake,
    ) {
        let connected_at = chrono::Utc::now();
        let stats = Arc::new(WorkerStats::new(connected_at.timestamp_millis()));
        let id = self.workers.insert(WorkerConn {
            stats: stats.clone(),
            state,
            outbox: outbox.clone(),
            remote: handshake.remote,
            connected_at,
            jobs_received: 0,
            awaiting_verdicts: HashSet::new(),
            considered: 0,
        });
        let hot = crate::metrics::hot();
        hot.worker_connections.increment(1.0);
        hot.workers_welcomed.increment(1);
        tracing::debug!(connection = id, remote = %handshake.remote, hardware_id = %welcome.hardware_id, "worker connected");
        // The offering task offers it the job current by the time it gets there.
        let _ = self.offers.send(Offer::Welcomed(id));
        // Recorded after the fact: the welcome never waits for the database. The
        // record is made again for the end, not kept: a connection holds its
        // welcome once.
        // A version-4 id from the thread's generator: `new_v4` asks the kernel for
        // its bytes, a system call per welcome in a storm.
        let connection = uuid::Builder::from_random_bytes(rand::random()).into_uuid().to_string();
        self.presence.send(self.presence_event(&connection, &welcome, connected_at, None));
        let capacity = self.settings.publishes_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        let in_flight = Arc::new(Semaphore::new(capacity));
        let budget =
            (FrameBudget::for_socket(&self.settings.socket), FrameBudget::control_for_socket(&self.settings.socket));
        // Boxed: held inline, a solution's work would make every connection's task
        // larger by its size, solutions or not.
        read_frames(stream, outbox, &self.shutdown, "worker", budget, |frame| {
            Box::pin(self.on_solution(id, outbox, &welcome, frame, (&in_flight, &stats)))
        })
        .await;
        self.workers.remove(id);
        crate::metrics::hot().worker_connections.decrement(1.0);
        // What the worker sent before it went is confirmed (or refused) before its end is recorded.
        let _ = in_flight.acquire_many(capacity as u32).await;
        let ended = Some(chrono::Utc::now());
        self.presence.send(self.presence_event(&connection, &welcome, connected_at, ended));
        tracing::debug!(connection = id, "worker disconnected");
    }

    /// The record of connection `connection` of this instance, opened at
    /// `connected_at` and ended at `ended`, for the presence processor.
    fn presence_event(
        &self,
        connection: &str,
        welcome: &Welcome,
        connected_at: chrono::DateTime<chrono::Utc>,
        ended: Option<chrono::DateTime<chrono::Utc>>,
    ) -> PresenceEvent {
        PresenceEvent::Connection(ConnectionRecord {
            connection: connection.to_string(),
            instance: self.settings.instance.clone(),
            ip: welcome.ip.clone(),
            address: welcome.address.clone(),
            hardware: welcome.hardware.clone(),
            hardware_id: welcome.hardware_id.clone(),
            caption: welcome.caption.clone(),
            connected_at,
            disconnected_at: ended,
        })
    }

    /// Publishes a solution without waiting for the broker's confirm: up to
    /// `in_flight` of a connection's solutions are confirmed concurrently, so a
    /// worker (or many) never waits a round trip per solution. A refused publish
    /// closes the connection with the reason. A frame with an `id` is answered
    /// once, accepted when confirmed or refused with why, and later gets its verdict.
    async fn on_solution(
        &self,
        id: u64,
        outbox: &Outbox,
        welcome: &Welcome,
        bytes: Vec<u8>,
        (in_flight, stats): (&Arc<Semaphore>, &Arc<WorkerStats>),
    ) {
        let read = SolutionFrame::read_within(&bytes, &self.settings.socket.fields());
        let frame = match read.frame {
            Ok(f) => f,
            Err(e) => {
                crate::metrics::hot().bad_frames_worker.increment(1);
                stats.refused(Refused::BadFrame);
                let reason = e.to_string();
                outbox.send_refusal(refusal(read.id.as_ref(), &reason)).await;
                return;
            }
        };
        let reply = read.id.map(|ack| Reply { server: self.server_id.clone(), connection: id, id: ack });
        if let Some(reply) = &reply {
            self.verdict_reader().await;
            self.await_verdict(id, reply);
        }
        let message = SolutionMessage {
            hardware_id: welcome.hardware_id.clone(),
            caption: welcome.caption.clone(),
            task_id: frame.task_id,
            solution: frame.solution,
            solution_target: frame.solution_target,
            reply,
            address: Some(welcome.address.clone()),
            origin: Some(Origin { server: self.server_id.clone(), connection: id }),
        };
        let Ok(bytes) = serde_json::to_vec(&message) else { return };
        let Ok(place) = in_flight.clone().acquire_owned().await else { return };
        let (queue, outbox, ack) = (self.services.queue.clone(), outbox.clone(), message.reply.map(|r| r.id));
        let stats = stats.clone();
        tokio::spawn(async move {
            let _place = place;
            match queue.publish(Stream::Solution, &bytes).await {
                Ok(()) => {
                    crate::metrics::hot().solutions_published.increment(1);
                    stats.accepted(now_ms() as i64);
                    if let Some(ack) = &ack {
                        outbox.send(ack_frame(ack, None)).await;
                    }
                }
                Err(e) => {
                    stats.refused(Refused::Queue);
                    tracing::warn!(connection = id, error = %e, "publishing a solution failed; closing the connection");
                    if let Some(ack) = &ack {
                        outbox.send(ack_frame(ack, Some(&format!("solution not accepted: {e}")))).await;
                    }
                    close_for_publish_error(&outbox, &e, "solution");
                }
            }
        });
    }

    /// Waits for the verdict on a connection's solution (at most
    /// [`AWAITED_VERDICTS`] at once).
    fn await_verdict(&self, connection: u64, reply: &Reply) {
        let mut workers = self.workers.lock();
        let Some(conn) = workers.get_mut(&connection) else { return };
        if conn.awaiting_verdicts.len() < AWAITED_VERDICTS {
            conn.awaiting_verdicts.insert(KeyDigest::of(&reply.id.key()));
        }
    }
}

/// The offering task of a worker server: takes what is asked in order, one
/// offer at a time, and offers the workers welcomed together in one call. Ends
/// when the server is gone.
async fn offer_loop(server: std::sync::Weak<WorkerServer>, mut requests: tokio::sync::mpsc::UnboundedReceiver<Offer>) {
    let mut round = Vec::with_capacity(64);
    while requests.recv_many(&mut round, OFFERS_PER_ROUND).await > 0 {
        let Some(server) = server.upgrade() else { return };
        let mut welcomed = Vec::new();
        for request in round.drain(..) {
            match request {
                Offer::Welcomed(id) => welcomed.push(id),
                Offer::Job(ready) => {
                    // Those welcomed before this job get the job current then, as if
                    // each had been offered on its own.
                    if !welcomed.is_empty() {
                        server.offer_current(&std::mem::take(&mut welcomed)).await;
                    }
                    server.offer(&ready, None).await;
                }
            }
        }
        if !welcomed.is_empty() {
            server.offer_current(&welcomed).await;
        }
    }
}

async fn upgrade(
    State(server): State<Arc<WorkerServer>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    match admit_connection(server.services.deciding(), &server.cap, Role::Worker, &peer, &uri, &headers).await {
        Ok(admitted) => sized(ws, &server.settings.socket).on_upgrade(move |socket| async move {
            server.workers.track(server.serve(socket, admitted)).await;
        }),
        Err(refused) => refused,
    }
}
