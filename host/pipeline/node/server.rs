//! The node server: nodes submit jobs here and receive the solutions the
//! policies offer them.
//!
//! A job frame is admitted by the policies (which also record, in the node's
//! state, what the node now waits for), published to the `job` queue with a
//! publisher confirm, and answered at once with the solutions already stored for
//! that height, so a node that reconnects loses nothing found while it was away.
//! One reader of the `solution` log per process feeds every connection.
//!
//! The policies decide on the decision pool, each decision on a copy of the
//! node states it needs: the registry is locked only to copy them out and to
//! apply the answer, so a slow policy delays solutions and acks, never health,
//! the admin API or another node's frames.
//!
//! Slow connections: solutions are never dropped silently. A connection whose
//! outbox is full is closed with code 1008 and a reason.
//!
//! Nodes over HTTP ([`crate::pipeline::node`]) sit in the same registry, decided on
//! by the same policies: what differs is only where their solutions go (their
//! stream's history and their webhook, instead of a socket's outbox).

use crate::config::{ConnectionLimits, NodeHttpConfig, SocketConfig, WebhookConfig};
use crate::edge::accept_guard::{AcceptGuard, Peer};
use crate::edge::admission::{admit_connection, run_challenge, Admitted, Challenge, Handshake};
use crate::edge::connection_cap::ConnectionCap;
use crate::pipeline::node::front::HttpFront;
use crate::pipeline::node::http_node::{HttpNode, NodeRecord};
use crate::pipeline::node::webhook::{self, WebhookOwner, WebhookSender, WebhookTask};
use crate::pipeline::processors::solution::solution_event;
use crate::pipeline::views::{DeliveryCounts, HttpNodeView, KeyDigest, NodeView, RecentKeys, RECENT_HEIGHTS};
use crate::pipeline::Services;
use crate::plugin::{now_ms, Hook, Job, JobSubmission, Lane, NodeState, Refusal, Role, Solution};
use crate::protocol::{ack_frame, canonical_json, refusal, JobFrame, SolutionEvent};
use crate::session::{
    close_code, close_for_publish_error, finish, read_frames, sized, start_writer, FrameBudget, Outbox, Registry,
};
use crate::transport::{Stream, Topic, TransportError};
use axum::extract::ws::{Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How many delivered solution keys a connection remembers, to skip repeats.
const REMEMBERED_DELIVERIES: usize = 10_000;

/// Settings of the node server.
#[derive(Clone, Debug)]
pub struct NodeServerSettings {
    /// Frames queued per connection before it counts as too slow.
    pub outbox_capacity: usize,
    /// WebSocket buffer sizes and input bounds.
    pub socket: SocketConfig,
    /// Caps on open connections.
    pub connections: ConnectionLimits,
    /// Nodes over HTTP.
    pub http: NodeHttpConfig,
    /// The webhooks a job may name.
    pub webhooks: BTreeMap<String, WebhookConfig>,
}

/// Where a node's solutions go.
enum Sink {
    /// A WebSocket connection: its outbox, and the heights of its latest jobs
    /// (a node over HTTP keeps its own, as it outlives a restart).
    Socket { outbox: Outbox, heights: VecDeque<i64> },
    /// A node over HTTP: its streams' history, and its webhook.
    Http(Arc<HttpNode>),
}

impl Sink {
    /// Frames waiting to be written (none for a node over HTTP).
    fn depth(&self) -> usize {
        match self {
            Sink::Socket { outbox, .. } => outbox.depth(),
            Sink::Http(_) => 0,
        }
    }

    /// How the node is connected, as the API names it.
    fn transport(&self) -> &'static str {
        match self {
            Sink::Socket { .. } => "websocket",
            Sink::Http(_) => "http",
        }
    }

    /// What the API adds for a node over HTTP.
    fn http_view(&self) -> Option<HttpNodeView> {
        let Sink::Http(node) = self else { return None };
        Some(HttpNodeView {
            id: node.id.clone(),
            expires_at: chrono::DateTime::from_timestamp_millis(node.expires_at_ms()).unwrap_or_default(),
            webhook: node.callback(),
            webhook_stopped: node.webhook_stopped(),
        })
    }
}

struct NodeConn {
    state: NodeState,
    sink: Sink,
    /// The solutions sent to this connection lately, to skip repeats.
    delivered: RecentKeys,
    remote: SocketAddr,
    connected_at: chrono::DateTime<chrono::Utc>,
    jobs_submitted: u64,
    solutions_delivered: u64,
}

impl NodeConn {
    /// The heights the node submitted jobs at lately, oldest first.
    fn recent_heights(&self) -> Vec<i64> {
        match &self.sink {
            Sink::Socket { heights, .. } => heights.iter().copied().collect(),
            Sink::Http(node) => {
                let heights = node.heights();
                heights[heights.len().saturating_sub(RECENT_HEIGHTS)..].to_vec()
            }
        }
    }
}

/// Solutions whose delivery counts the server remembers.
const REMEMBERED_SOLUTIONS: usize = 4096;

/// Most solutions offered in one decision: what the log had ready, up to this. One
/// trip to a decision thread per solution cost more than the policy; a bound keeps
/// a slow policy's batch from holding a decision thread for long.
const OFFER_BATCH: usize = 64;

/// Solution events read from the log that a node's catch-up also looks at.
/// The store marks a solution broadcast only after the log confirmed it, so a
/// node that starts waiting between the delivery and that mark would find it in
/// neither place; at 10,000 solutions/s this still covers more than a second.
const RECENT_EVENTS: usize = 16_384;

/// Bytes of solution events the recent ring holds at most, whatever their size.
const RECENT_BYTES: usize = 64 << 20;

/// A solution event read from the log, with the frame a node is sent.
pub(super) struct Recent {
    pub(super) event: Arc<SolutionEvent>,
    pub(super) frame: Utf8Bytes,
    pub(super) key: KeyDigest,
}

impl Recent {
    fn new(event: SolutionEvent) -> Self {
        let frame = Utf8Bytes::from(event.solution.to_string());
        Recent { key: KeyDigest::of(&event.unique_key), event: Arc::new(event), frame }
    }

    /// What it costs to keep, roughly.
    fn bytes(&self) -> usize {
        // The event holds the solution parsed and its key; the frame, the text.
        2 * self.frame.len() + self.event.unique_key.len() + 256
    }
}

/// The solution events read lately, bounded by count and by bytes.
#[derive(Default)]
struct RecentRing {
    events: VecDeque<Arc<Recent>>,
    bytes: usize,
}

impl RecentRing {
    fn push(&mut self, recent: Arc<Recent>) {
        self.bytes += recent.bytes();
        self.events.push_back(recent);
        while self.events.len() > RECENT_EVENTS || (self.bytes > RECENT_BYTES && self.events.len() > 1) {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.bytes();
            }
        }
    }
}

/// The node server of one process.
pub struct NodeServer {
    pub(super) services: Services,
    pub(super) settings: NodeServerSettings,
    nodes: Registry<NodeConn>,
    pub(super) cap: Arc<ConnectionCap>,
    deliveries: DeliveryCounts,
    recent: std::sync::Mutex<RecentRing>,
    pub(super) shutdown: CancellationToken,
    /// HTTP nodes by their id, as registry numbers.
    http_ids: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// What serving nodes over HTTP needs besides the registry.
    pub(super) http: HttpFront,
    webhooks: Arc<WebhookSender>,
}

/// Why an HTTP node could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NoRoom {
    /// As many HTTP nodes as `[node.http] max_nodes` are alive.
    #[error("{0} nodes over HTTP are alive, the most this server keeps: name an existing one with Eligo-Node, or try again later")]
    Full(usize),
}

impl NodeServer {
    /// A node server over `services`; connections close when `shutdown` fires.
    /// Fails if the client that calls webhooks cannot be made (no TLS roots, say).
    pub fn new(
        services: Services,
        settings: NodeServerSettings,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, webhook::ClientError> {
        let cap = ConnectionCap::new("node", &settings.connections);
        let deliveries = DeliveryCounts::new(REMEMBERED_SOLUTIONS);
        let recent = std::sync::Mutex::new(RecentRing::default());
        let timeout = std::time::Duration::from_secs(settings.http.webhook_timeout_seconds.max(1));
        let webhooks = WebhookSender::new(settings.webhooks.clone(), timeout)?;
        let http = HttpFront::new(&settings.connections, &settings.http);
        Ok(Arc::new(NodeServer {
            services,
            settings,
            nodes: Registry::default(),
            cap,
            deliveries,
            recent,
            shutdown,
            http_ids: Default::default(),
            http,
            webhooks: Arc::new(webhooks),
        }))
    }

    /// What the listener checks on each socket before its request is read, under
    /// this server's caps.
    pub fn accept_guard(&self) -> Arc<AcceptGuard> {
        AcceptGuard::new(self.cap.clone(), &self.settings.connections)
    }

    /// Waits until every connection has finished (after shutdown was signalled).
    pub async fn closed(&self) {
        self.nodes.closed().await;
    }

    /// Connected nodes.
    pub fn connections(&self) -> usize {
        self.nodes.len()
    }

    /// Up to `limit` of the nodes connected now, numbered above `after`, by number.
    pub fn snapshot(&self, after: u64, limit: usize) -> Vec<NodeView> {
        let nodes = self.nodes.lock();
        let mut ids: Vec<u64> = nodes.keys().copied().filter(|id| *id > after).collect();
        ids.sort_unstable();
        ids.truncate(limit);
        ids.into_iter()
            .filter_map(|id| nodes.get(&id).map(|conn| (id, conn)))
            .map(|(id, conn)| NodeView {
                connection: id,
                remote: conn.remote.to_string(),
                connected_at: conn.connected_at,
                recent_heights: conn.recent_heights(),
                jobs_submitted: conn.jobs_submitted,
                solutions_delivered: conn.solutions_delivered,
                outbox_depth: conn.sink.depth(),
                transport: conn.sink.transport(),
                http: conn.sink.http_view(),
            })
            .collect()
    }

    /// How many node connections this process queued the solution to, if it is
    /// among the latest it remembers.
    pub fn solution_deliveries(&self, unique_key: &str) -> Option<u64> {
        self.deliveries.get(unique_key)
    }

    /// Reads the `solution` log and delivers each solution to the nodes the
    /// policies offer it to, until shutdown. Reconnects with backoff.
    pub async fn run_fanout(self: Arc<Self>, ready: Option<tokio::sync::oneshot::Sender<()>>) {
        let (log, shutdown) = (self.services.log.clone(), self.shutdown.clone());
        crate::pipeline::fanout::tail_forever(log, Topic::Solution, shutdown, ready, OFFER_BATCH, |events| {
            let recents: Vec<Arc<Recent>> =
                events.into_iter().map(|e: SolutionEvent| Arc::new(Recent::new(e))).collect();
            // Remembered before they are delivered: a node that starts waiting after
            // this delivery finds them in its catch-up.
            let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for r in &recents {
                recent.push(r.clone());
            }
            drop(recent);
            let server = self.clone();
            async move { server.deliver(&recents).await }
        })
        .await
    }

    /// Which of the nodes whose `states` were copied out the policies offer the
    /// solution to, as indices into `states`; none when the decision fails.
    async fn offer_solution(&self, recent: &Arc<Recent>, states: Vec<NodeState>) -> Vec<usize> {
        self.offer_solutions(std::slice::from_ref(recent), states).await.pop().unwrap_or_default()
    }

    /// [`Self::offer_solution`] for each of `recents`, asked in one decision: one
    /// trip to a decision thread for what the log had ready, not one per solution.
    async fn offer_solutions(&self, recents: &[Arc<Recent>], states: Vec<NodeState>) -> Vec<Vec<usize>> {
        let events: Vec<Arc<Recent>> = recents.to_vec();
        let decided = self
            .services
            .decide(Lane::Urgent, Hook::OfferSolution, move |policies| {
                let states: Vec<&NodeState> = states.iter().collect();
                events
                    .iter()
                    .map(|recent| {
                        let (job, solution) = offered(&recent.event);
                        policies.offer_solution(&job, &solution, &states, now_ms())
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        decided.unwrap_or_else(|e| {
            tracing::warn!(solutions = recents.len(), error = %e, "offer-solution failed closed: these solutions go to no node now");
            vec![Vec::new(); recents.len()]
        })
    }

    /// Offers solutions to every node and queues each to those chosen that did not
    /// get it yet, in order; a node whose queue is full is closed as too slow.
    async fn deliver(&self, recents: &[Arc<Recent>]) {
        let (ids, states): (Vec<u64>, Vec<NodeState>) =
            self.nodes.lock().iter().map(|(id, conn)| (*id, conn.state.clone())).unzip();
        if ids.is_empty() {
            return;
        }
        let chosen = self.offer_solutions(recents, states).await;
        let (mut webhooks, mut counts) = (Vec::new(), Vec::with_capacity(recents.len()));
        let mut nodes = self.nodes.lock();
        for (recent, chosen) in recents.iter().zip(chosen) {
            let (mut queued, mut to_http) = (0, 0);
            for i in chosen {
                // A node gone meanwhile is skipped.
                let Some(conn) = ids.get(i).and_then(|id| nodes.get_mut(id)) else { continue };
                if !conn.delivered.first_time(recent.key) {
                    continue;
                }
                match &conn.sink {
                    Sink::Socket { outbox, .. } => {
                        if outbox.try_send(recent.frame.clone()).is_err() {
                            crate::metrics::hot().slow_nodes_closed.increment(1);
                            outbox.close(close_code::POLICY, "too slow: the solution queue of this connection is full");
                            continue;
                        }
                    }
                    Sink::Http(node) => {
                        webhooks.extend(give_http(node, recent));
                        to_http += 1;
                    }
                }
                conn.solutions_delivered += 1;
                queued += 1;
            }
            counts.push((recent, queued, to_http));
        }
        drop(nodes);
        for (recent, queued, to_http) in counts {
            self.count_deliveries(recent, queued, to_http);
        }
        self.queue_webhooks(webhooks);
    }

    /// Counts solutions queued to `queued` nodes, `to_http` of them over HTTP.
    fn count_deliveries(&self, recent: &Recent, queued: u64, to_http: u64) {
        let hot = crate::metrics::hot();
        hot.solutions_delivered.increment(queued);
        hot.node_deliveries_socket.increment(queued - to_http);
        hot.node_deliveries_http.increment(to_http);
        self.deliveries.add(&recent.event.unique_key, queued);
    }

    /// Queues `tasks` to the webhook queue, off the delivery path: the solution
    /// reader goes on to the next solution meanwhile.
    fn queue_webhooks(&self, tasks: Vec<WebhookTask>) {
        if !tasks.is_empty() {
            tokio::spawn(webhook::enqueue(self.services.queue.clone(), tasks));
        }
    }

    /// Queues `events` to node `id` where the policies offer them and it did not
    /// get them yet. A catch-up may hold more than the node's queue: it waits for
    /// room, keeping half the queue free for live solutions (which close a node
    /// whose queue is full), rather than closing the node as too slow.
    async fn deliver_waiting(&self, id: u64, events: &[Arc<Recent>]) {
        let headroom = (self.settings.outbox_capacity / 2).max(1);
        for recent in events {
            let Some(state) = self.nodes.lock().get(&id).map(|conn| conn.state.clone()) else { return };
            if self.offer_solution(recent, vec![state]).await.is_empty() {
                continue;
            }
            let outbox = {
                let mut nodes = self.nodes.lock();
                let Some(conn) = nodes.get_mut(&id) else { return };
                if !conn.delivered.first_time(recent.key) {
                    continue;
                }
                conn.solutions_delivered += 1;
                match &conn.sink {
                    Sink::Socket { outbox, .. } => outbox.clone(),
                    Sink::Http(node) => {
                        let webhooks = give_http(node, recent);
                        drop(nodes);
                        self.count_deliveries(recent, 1, 1);
                        self.queue_webhooks(webhooks.into_iter().collect());
                        continue;
                    }
                }
            };
            while outbox.depth() >= headroom {
                if outbox.is_closing() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            if !outbox.send(recent.frame.clone()).await {
                return;
            }
            self.count_deliveries(recent, 1, 0);
        }
    }

    async fn serve(&self, socket: WebSocket, admitted: Admitted) {
        let Admitted { handshake, place: _place, challenge } = admitted;
        let (sink, mut stream) = socket.split();
        let (outbox, mut writer) = start_writer(sink, self.settings.outbox_capacity, &self.settings.socket);
        let id = writer.beside(self.converse(&mut stream, &outbox, challenge.as_ref(), &handshake)).await;
        finish(&mut stream, outbox, writer).await;
        if let Some(id) = id {
            crate::metrics::hot().node_connections.decrement(1.0);
            tracing::info!(connection = id, "node disconnected");
        }
    }

    /// The connection from its first frame to its last: the challenge if the
    /// client asked for one, then its jobs. The node's id, if it got that far.
    async fn converse(
        &self,
        stream: &mut futures::stream::SplitStream<WebSocket>,
        outbox: &Outbox,
        challenge: Option<&Challenge>,
        handshake: &Handshake,
    ) -> Option<u64> {
        if let Some(challenge) = challenge {
            if !run_challenge(challenge, self.services.deciding(), &handshake.request(Role::Node), stream, outbox).await
            {
                return None;
            }
        }
        let conn = NodeConn {
            state: NodeState::default(),
            sink: Sink::Socket { outbox: outbox.clone(), heights: VecDeque::new() },
            delivered: RecentKeys::new(REMEMBERED_DELIVERIES),
            remote: handshake.remote,
            connected_at: chrono::Utc::now(),
            jobs_submitted: 0,
            solutions_delivered: 0,
        };
        let id = self.nodes.insert(conn);
        crate::metrics::hot().node_connections.increment(1.0);
        tracing::info!(connection = id, remote = %handshake.remote, "node connected");
        let budget =
            (FrameBudget::for_socket(&self.settings.socket), FrameBudget::control_for_socket(&self.settings.socket));
        read_frames(stream, outbox, &self.shutdown, "node", budget, |frame| self.on_frame(id, outbox, frame)).await;
        self.nodes.remove(id);
        Some(id)
    }

    async fn on_frame(&self, id: u64, outbox: &Outbox, bytes: Vec<u8>) {
        let read = JobFrame::read_within(&bytes, &self.settings.socket.fields());
        // A frame with an `id` is answered once: accepted when queued, or refused with why.
        let ack = read.id;
        let refuse = |reason: &str| refusal(ack.as_ref(), reason);
        let frame = match read.frame {
            Ok(f) => f,
            Err(e) => {
                crate::metrics::hot().bad_frames_node.increment(1);
                outbox.send_refusal(refuse(&e.to_string())).await;
                return;
            }
        };
        let job = match self.admit_job(id, frame).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(refusal) => {
                outbox.send_refusal(refuse(&refusal.to_string())).await;
                return;
            }
        };
        if let Err(e) = self.publish_job(id, &job).await {
            tracing::warn!(connection = id, error = %e, "publishing a job failed; closing the connection");
            if ack.is_some() {
                outbox.send(refuse(&format!("job not accepted: {e}"))).await;
            }
            close_for_publish_error(outbox, &e, "job");
            return;
        }
        if let Some(ack) = &ack {
            outbox.send(ack_frame(ack, None)).await;
        }
        self.catch_up(id, job.block_height).await;
    }

    /// Asks the policies to admit node `id`'s job, on a copy of its state, and
    /// keeps the state they answer with. `None`: the node is gone.
    ///
    /// Only the node's own jobs change its state, one at a time (a socket's
    /// frames are read in turn; an HTTP node's POSTs take its `submitting` lock):
    /// the copy decided on is still its state when the answer is applied.
    pub(super) async fn admit_job(&self, id: u64, frame: JobFrame) -> Result<Option<JobSubmission>, Refusal> {
        let submission = JobSubmission {
            block_height: frame.block_height,
            proof_target: frame.proof_target,
            epoch_challenge: canonical_json(&serde_json::Value::Object(frame.epoch_challenge)),
        };
        let Some(state) = self.nodes.lock().get(&id).map(|conn| conn.state.clone()) else { return Ok(None) };
        let admitted = self
            .services
            .decide(Lane::Urgent, Hook::AdmitJob, move |policies| {
                let mut state = state;
                policies.admit_job(&submission, &mut state, now_ms()).map(|job| (job, state))
            })
            .await
            .unwrap_or_else(|e| Err(e.into()));
        match admitted {
            Ok((job, state)) => match self.nodes.lock().get_mut(&id) {
                Some(conn) => {
                    conn.state = state;
                    Ok(Some(job))
                }
                None => Ok(None),
            },
            Err(refusal) => {
                crate::metrics::add("eligo_jobs_refused_total", &[], 1);
                Err(refusal)
            }
        }
    }

    /// Publishes node `id`'s admitted job to the `job` queue (confirmed by the
    /// broker when this returns) and counts it.
    pub(super) async fn publish_job(&self, id: u64, job: &JobSubmission) -> Result<(), TransportError> {
        let message = serde_json::json!({
            "epoch_challenge": serde_json::from_str::<serde_json::Value>(&job.epoch_challenge).unwrap_or_default(),
            "proof_target": job.proof_target,
            "block_height": job.block_height,
        });
        self.services.queue.publish(Stream::Job, message.to_string().as_bytes()).await?;
        crate::metrics::hot().jobs_published.increment(1);
        if let Some(conn) = self.nodes.lock().get_mut(&id) {
            conn.jobs_submitted += 1;
            if let Sink::Socket { heights, .. } = &mut conn.sink {
                if heights.len() == RECENT_HEIGHTS {
                    heights.pop_front();
                }
                heights.push_back(job.block_height);
            }
        }
        Ok(())
    }

    /// Sends the node what was already found at `height`: what the store has
    /// marked broadcast, and what this process read from the log lately (which
    /// the store may not have marked yet). Repeats are skipped per connection.
    pub(super) async fn catch_up(&self, id: u64, height: i64) {
        let events = self.found_at(id, height).await;
        self.deliver_waiting(id, &events).await;
    }

    /// What was found at `height`: stored as broadcast, or read from the log lately.
    pub(super) async fn found_at(&self, id: u64, height: i64) -> Vec<Arc<Recent>> {
        let mut events: Vec<Arc<Recent>> = match self.services.store.broadcast_solutions_at(height).await {
            Ok(found) => {
                found.iter().map(|(job, solution)| Arc::new(Recent::new(solution_event(job, solution)))).collect()
            }
            Err(e) => {
                tracing::warn!(connection = id, error = %e, "catch-up read failed; live solutions still flow");
                Vec::new()
            }
        };
        {
            // Most of what the log brought lately the store has too: each is offered once.
            let stored: HashSet<KeyDigest> = events.iter().map(|recent| recent.key).collect();
            let recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let unstored: Vec<Arc<Recent>> = recent
                .events
                .iter()
                .filter(|recent| recent.event.solution_height == height && !stored.contains(&recent.key))
                .cloned()
                .collect();
            drop(recent);
            events.extend(unstored);
        }
        events
    }

    /// The policies' answer for HTTP node `id` on each of `events`: those offered to it.
    pub(super) async fn offered_to(&self, id: u64, events: Vec<Arc<Recent>>) -> Vec<Arc<Recent>> {
        let mut offered = Vec::new();
        for recent in events {
            let Some(state) = self.nodes.lock().get(&id).map(|conn| conn.state.clone()) else { break };
            if !self.offer_solution(&recent, vec![state]).await.is_empty() {
                offered.push(recent);
            }
        }
        offered
    }

    /// A new HTTP node from `remote`, in the registry: its registry number and the node.
    pub(super) fn add_http_node(&self, remote: SocketAddr) -> Result<(u64, Arc<HttpNode>), NoRoom> {
        let node = Arc::new(HttpNode::new(remote, self.settings.http.history));
        self.insert_http_node(node.clone(), NodeState::default(), 0).map(|id| (id, node))
    }

    fn insert_http_node(&self, node: Arc<HttpNode>, state: NodeState, jobs: u64) -> Result<u64, NoRoom> {
        let mut ids = self.http_ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ids.len() >= self.settings.http.max_nodes {
            return Err(NoRoom::Full(ids.len()));
        }
        let conn = NodeConn {
            state,
            sink: Sink::Http(node.clone()),
            delivered: RecentKeys::new(REMEMBERED_DELIVERIES),
            remote: node.remote,
            connected_at: node.created_at,
            jobs_submitted: jobs,
            solutions_delivered: 0,
        };
        let id = self.nodes.insert(conn);
        ids.insert(node.id.clone(), id);
        crate::metrics::gauge("eligo_http_nodes", &[]).set(ids.len() as f64);
        Ok(id)
    }

    /// The HTTP node named `node`, with its registry number, if it is alive here.
    pub(super) fn http_node(&self, node: &str) -> Option<(u64, Arc<HttpNode>)> {
        let id = *self.http_ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(node)?;
        match self.nodes.lock().get(&id).map(|conn| &conn.sink) {
            Some(Sink::Http(node)) if !node.expired(now_ms() as i64) => Some((id, node.clone())),
            _ => None,
        }
    }

    /// Forgets HTTP node `id` (registry number).
    pub(super) fn remove_http_node(&self, id: u64) {
        let removed = self.nodes.lock().remove(&id);
        if let Some(NodeConn { sink: Sink::Http(node), .. }) = removed {
            let mut ids = self.http_ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            ids.remove(&node.id);
            crate::metrics::gauge("eligo_http_nodes", &[]).set(ids.len() as f64);
        }
    }

    /// Keeps HTTP node `id` (registry number) in the store as it is now, so a
    /// restart finds it; `queueing` a job not counted yet, which it counts.
    pub(super) async fn persist_http_node(&self, id: u64, queueing: bool) -> Result<(), crate::store::StoreError> {
        let record = match self.nodes.lock().get(&id) {
            Some(NodeConn { sink: Sink::Http(node), state, jobs_submitted, .. }) => {
                node.record(state, jobs_submitted + u64::from(queueing))
            }
            _ => return Ok(()),
        };
        let text = serde_json::to_string(&record).unwrap_or_default();
        self.services.store.save_http_node(&record.id, record.expires_at_ms, &text).await
    }

    /// Takes back the HTTP nodes kept in the store that have not expired (after a
    /// restart): before the solution reader starts, so none of what it reads
    /// passes them by. Returns their registry numbers, to catch up once it runs.
    pub async fn restore_http_nodes(&self) -> Vec<u64> {
        let records = match self.services.store.live_http_nodes(now_ms() as i64).await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "nodes over HTTP could not be read back: they are unknown until they POST again");
                return Vec::new();
            }
        };
        let mut restored = Vec::new();
        for text in records {
            let record = serde_json::from_str::<NodeRecord>(&text).ok();
            let Some((node, state)) = record.as_ref().and_then(|r| HttpNode::restore(r, self.settings.http.history))
            else {
                tracing::warn!("an HTTP node's record is unreadable; skipped");
                continue;
            };
            let jobs = record.map_or(0, |r| r.jobs_submitted);
            match self.insert_http_node(Arc::new(node), state, jobs) {
                Ok(id) => restored.push(id),
                Err(e) => {
                    tracing::warn!(error = %e, "not every HTTP node could be taken back");
                    break;
                }
            }
        }
        if !restored.is_empty() {
            tracing::info!(nodes = restored.len(), "nodes over HTTP taken back from the store");
        }
        restored
    }

    /// Catches up restored HTTP nodes on what was found at their heights while
    /// this process was down.
    pub async fn catch_up_restored(&self, ids: Vec<u64>) {
        for id in ids {
            let heights = match self.nodes.lock().get(&id).map(|conn| &conn.sink) {
                Some(Sink::Http(node)) => node.heights(),
                _ => continue,
            };
            for height in heights {
                self.catch_up(id, height).await;
            }
        }
    }

    /// Removes the HTTP nodes that expired, every second, until shutdown; and
    /// runs the webhook deliverer.
    pub async fn run_http_upkeep(self: Arc<Self>) {
        let deliverer = webhook::deliver_forever(
            self.services.queue.clone(),
            self.services.store.clone(),
            self.webhooks.clone(),
            self.clone(),
            self.settings.http.webhook_concurrency,
            self.shutdown.clone(),
        );
        let sweeper = async {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = self.shutdown.cancelled() => return,
                }
                let now = now_ms() as i64;
                let expired: Vec<u64> = self
                    .nodes
                    .lock()
                    .iter()
                    .filter(|(_, conn)| matches!(&conn.sink, Sink::Http(node) if node.expired(now)))
                    .map(|(id, _)| *id)
                    .collect();
                for id in expired {
                    self.remove_http_node(id);
                }
                self.http.forget_old();
            }
        };
        tokio::join!(deliverer, sweeper);
    }

    /// Whether a webhook of this name is configured.
    pub(super) fn knows_webhook(&self, name: &str) -> bool {
        self.webhooks.knows(name)
    }
}

/// Gives an HTTP node a solution: into its streams' history, and the webhook
/// delivery it is owed, if any.
fn give_http(node: &HttpNode, recent: &Recent) -> Option<WebhookTask> {
    node.push(recent.frame.clone(), recent.key);
    let callback = node.webhook()?;
    Some(WebhookTask::first(&node.id, &callback, &recent.event.unique_key, &recent.frame, node.expires_at_ms()))
}

#[async_trait::async_trait]
impl WebhookOwner for NodeServer {
    async fn webhook_gone(&self, node: &str) {
        let Some((id, found)) = self.http_node(node) else { return };
        if found.stop_webhook() {
            if let Err(e) = self.persist_http_node(id, false).await {
                tracing::warn!(error = %e, "could not keep a node's stopped webhook in the store");
            }
        }
    }

    fn webhook_stopped(&self, node: &str) -> bool {
        self.http_node(node).is_some_and(|(_, found)| found.webhook_stopped())
    }
}

/// A solution event as the policies see it: its job and the solution.
fn offered(event: &SolutionEvent) -> (Job, Solution) {
    let job = Job {
        task_id: event.task_id.clone(),
        block_height: event.solution_height,
        proof_target: event.proof_target,
        epoch_challenge: canonical_json(&event.epoch_challenge),
    };
    let solution = Solution {
        task_id: event.task_id.clone(),
        hardware_id: event.hardware_id.clone(),
        caption: event.caption.clone(),
        solution: canonical_json(&event.solution),
        solution_target: event.solution_target,
        unique_key: event.unique_key.clone(),
    };
    (job, solution)
}

pub(crate) async fn upgrade(
    State(server): State<Arc<NodeServer>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    match admit_connection(server.services.deciding(), &server.cap, Role::Node, &peer, &uri, &headers).await {
        Ok(admitted) => sized(ws, &server.settings.socket).on_upgrade(move |socket| async move {
            server.nodes.track(server.serve(socket, admitted)).await;
        }),
        Err(refused) => refused,
    }
}
