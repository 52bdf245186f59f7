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

use super::accept_guard::{AcceptGuard, Peer};
use super::admission::{admit_connection, run_challenge, Admitted};
use super::connection::{
    close_code, close_for_publish_error, finish, read_frames, sized, start_writer, FrameBudget, Outbox, Registry,
};
use super::connection_cap::ConnectionCap;
use super::solution_processor::solution_event;
use super::views::{DeliveryCounts, KeyDigest, NodeView, RecentKeys, RECENT_HEIGHTS};
use super::Services;
use crate::config::{ConnectionLimits, SocketConfig};
use crate::plugin::{now_ms, Hook, Job, JobSubmission, Lane, NodeState, Role, Solution};
use crate::protocol::{ack_frame, canonical_json, refusal, JobFrame, SolutionEvent};
use crate::transport::{Stream, Topic};
use axum::extract::ws::{Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use futures::StreamExt;
use std::collections::{HashSet, VecDeque};
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
}

struct NodeConn {
    state: NodeState,
    outbox: Outbox,
    /// The solutions sent to this connection lately, to skip repeats.
    delivered: RecentKeys,
    remote: SocketAddr,
    connected_at: chrono::DateTime<chrono::Utc>,
    recent_heights: VecDeque<i64>,
    jobs_submitted: u64,
    solutions_delivered: u64,
}

/// Solutions whose delivery counts the server remembers.
const REMEMBERED_SOLUTIONS: usize = 4096;

/// Solution events read from the log that a node's catch-up also looks at.
/// The store marks a solution broadcast only after the log confirmed it, so a
/// node that starts waiting between the delivery and that mark would find it in
/// neither place; at 10,000 solutions/s this still covers more than a second.
const RECENT_EVENTS: usize = 16_384;

/// Bytes of solution events the recent ring holds at most, whatever their size.
const RECENT_BYTES: usize = 64 << 20;

/// A solution event read from the log, with the frame a node is sent.
struct Recent {
    event: Arc<SolutionEvent>,
    frame: Utf8Bytes,
    key: KeyDigest,
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
    services: Services,
    settings: NodeServerSettings,
    nodes: Registry<NodeConn>,
    cap: Arc<ConnectionCap>,
    deliveries: DeliveryCounts,
    recent: std::sync::Mutex<RecentRing>,
    shutdown: CancellationToken,
}

impl NodeServer {
    /// A node server over `services`; connections close when `shutdown` fires.
    pub fn new(services: Services, settings: NodeServerSettings, shutdown: CancellationToken) -> Arc<Self> {
        let cap = ConnectionCap::new("node", &settings.connections);
        let deliveries = DeliveryCounts::new(REMEMBERED_SOLUTIONS);
        let recent = std::sync::Mutex::new(RecentRing::default());
        Arc::new(NodeServer { services, settings, nodes: Registry::default(), cap, deliveries, recent, shutdown })
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
                recent_heights: conn.recent_heights.iter().copied().collect(),
                jobs_submitted: conn.jobs_submitted,
                solutions_delivered: conn.solutions_delivered,
                outbox_depth: conn.outbox.depth(),
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
        super::fanout::tail_forever(log, Topic::Solution, shutdown, ready, |event: SolutionEvent| {
            let recent = Arc::new(Recent::new(event));
            // Remembered before it is delivered: a node that starts waiting after this
            // delivery finds it in its catch-up.
            self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(recent.clone());
            let server = self.clone();
            async move { server.deliver(&recent).await }
        })
        .await
    }

    /// Which of the nodes whose `states` were copied out the policies offer the
    /// solution to, as indices into `states`; none when the decision fails.
    async fn offer_solution(&self, recent: &Arc<Recent>, states: Vec<NodeState>) -> Vec<usize> {
        let event = recent.event.clone();
        let decided = self
            .services
            .decide(Lane::Urgent, Hook::OfferSolution, move |policies| {
                let (job, solution) = offered(&event);
                let states: Vec<&NodeState> = states.iter().collect();
                policies.offer_solution(&job, &solution, &states, now_ms())
            })
            .await;
        decided.unwrap_or_else(|e| {
            tracing::warn!(task_id = %recent.event.task_id, error = %e, "offer-solution failed closed: solution goes to no node now");
            Vec::new()
        })
    }

    /// Offers a solution to every node and queues it to those chosen that did not
    /// get it yet; a node whose queue is full is closed as too slow.
    async fn deliver(&self, recent: &Arc<Recent>) {
        let (ids, states): (Vec<u64>, Vec<NodeState>) =
            self.nodes.lock().iter().map(|(id, conn)| (*id, conn.state.clone())).unzip();
        if ids.is_empty() {
            return;
        }
        let chosen = self.offer_solution(recent, states).await;
        let mut queued = 0;
        let mut nodes = self.nodes.lock();
        for i in chosen {
            // A node gone meanwhile is skipped.
            let Some(conn) = ids.get(i).and_then(|id| nodes.get_mut(id)) else { continue };
            if !conn.delivered.first_time(recent.key) {
                continue;
            }
            if conn.outbox.try_send(recent.frame.clone()).is_err() {
                crate::metrics::hot().slow_nodes_closed.increment(1);
                conn.outbox.close(close_code::POLICY, "too slow: the solution queue of this connection is full");
            } else {
                conn.solutions_delivered += 1;
                queued += 1;
            }
        }
        drop(nodes);
        crate::metrics::hot().solutions_delivered.increment(queued);
        self.deliveries.add(&recent.event.unique_key, queued);
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
                conn.outbox.clone()
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
            crate::metrics::hot().solutions_delivered.increment(1);
            self.deliveries.add(&recent.event.unique_key, 1);
        }
    }

    async fn serve(&self, socket: WebSocket, admitted: Admitted) {
        let Admitted { handshake, place: _place, challenge } = admitted;
        let (sink, mut stream) = socket.split();
        let (outbox, writer) =
            start_writer(sink, self.settings.outbox_capacity, self.settings.socket.error_frames_per_second);
        if let Some(challenge) = &challenge {
            if !run_challenge(challenge, &self.services, &handshake.request(Role::Node), &mut stream, &outbox).await {
                finish(&mut stream, outbox, writer).await;
                return;
            }
        }
        let conn = NodeConn {
            state: NodeState::default(),
            outbox: outbox.clone(),
            delivered: RecentKeys::new(REMEMBERED_DELIVERIES),
            remote: handshake.remote,
            connected_at: chrono::Utc::now(),
            recent_heights: VecDeque::new(),
            jobs_submitted: 0,
            solutions_delivered: 0,
        };
        let id = self.nodes.insert(conn);
        crate::metrics::hot().node_connections.increment(1.0);
        tracing::info!(connection = id, remote = %handshake.remote, "node connected");
        let budget =
            (FrameBudget::for_socket(&self.settings.socket), FrameBudget::control_for_socket(&self.settings.socket));
        read_frames(&mut stream, &outbox, &self.shutdown, "node", budget, |frame| self.on_frame(id, &outbox, frame))
            .await;
        self.nodes.remove(id);
        finish(&mut stream, outbox, writer).await;
        crate::metrics::hot().node_connections.decrement(1.0);
        tracing::info!(connection = id, "node disconnected");
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
        let submission = JobSubmission {
            block_height: frame.block_height,
            proof_target: frame.proof_target,
            epoch_challenge: canonical_json(&serde_json::Value::Object(frame.epoch_challenge)),
        };
        // Only this connection's frames change its state, one frame at a time: the
        // copy decided on is still the state when the answer is applied.
        let Some(state) = self.nodes.lock().get(&id).map(|conn| conn.state.clone()) else { return };
        let admitted = self
            .services
            .decide(Lane::Urgent, Hook::AdmitJob, move |policies| {
                let mut state = state;
                policies.admit_job(&submission, &mut state, now_ms()).map(|job| (job, state))
            })
            .await
            .unwrap_or_else(|e| Err(e.into()));
        let job = match admitted {
            Ok((job, state)) => {
                match self.nodes.lock().get_mut(&id) {
                    Some(conn) => conn.state = state,
                    None => return,
                }
                job
            }
            Err(refusal) => {
                crate::metrics::add("eligo_jobs_refused_total", &[], 1);
                outbox.send_refusal(refuse(&refusal.to_string())).await;
                return;
            }
        };
        let message = serde_json::json!({
            "epoch_challenge": serde_json::from_str::<serde_json::Value>(&job.epoch_challenge).unwrap_or_default(),
            "proof_target": job.proof_target,
            "block_height": job.block_height,
        });
        if let Err(e) = self.services.queue.publish(Stream::Job, message.to_string().as_bytes()).await {
            tracing::warn!(connection = id, error = %e, "publishing a job failed; closing the connection");
            if ack.is_some() {
                outbox.send(refuse(&format!("job not accepted: {e}"))).await;
            }
            close_for_publish_error(outbox, &e, "job");
            return;
        }
        crate::metrics::hot().jobs_published.increment(1);
        if let Some(ack) = &ack {
            outbox.send(ack_frame(ack, None)).await;
        }
        if let Some(conn) = self.nodes.lock().get_mut(&id) {
            conn.jobs_submitted += 1;
            if conn.recent_heights.len() == RECENT_HEIGHTS {
                conn.recent_heights.pop_front();
            }
            conn.recent_heights.push_back(job.block_height);
        }
        self.catch_up(id, job.block_height).await;
    }

    /// Sends the node what was already found at `height`: what the store has
    /// marked broadcast, and what this process read from the log lately (which
    /// the store may not have marked yet). Repeats are skipped per connection.
    async fn catch_up(&self, id: u64, height: i64) {
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
        self.deliver_waiting(id, &events).await;
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

async fn upgrade(
    State(server): State<Arc<NodeServer>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    match admit_connection(&server.services, &server.cap, Role::Node, &peer, &uri, &headers).await {
        Ok(admitted) => sized(ws, &server.settings.socket).on_upgrade(move |socket| async move {
            server.nodes.track(server.serve(socket, admitted)).await;
        }),
        Err(refused) => refused,
    }
}
