//! One node over HTTP: what it waits for, the solutions given to it (numbered,
//! so a stream resumes with `Last-Event-ID`), when it expires and its webhook.
//!
//! An HTTP node is kept in the store as a [`NodeRecord`] each time one of its
//! jobs is accepted, so a restart (even `kill -9`) finds it: it goes on
//! receiving solutions, and its webhook is still called.

use crate::pipeline::views::KeyDigest;
use crate::plugin::NodeState;
use axum::extract::ws::Utf8Bytes;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Heights an HTTP node remembers it waits at: what a restart catches up on.
pub const KEPT_HEIGHTS: usize = 64;

/// One solution given to an HTTP node, numbered in the node's stream.
#[derive(Clone)]
pub struct Numbered {
    /// Its `id:` in the stream.
    pub seq: u64,
    /// The object a socket node receives, as text.
    pub frame: Utf8Bytes,
    /// The solution's key, to skip a solution the node was given already.
    pub key: KeyDigest,
}

/// What a stream reads next: see [`HttpNode::since`].
pub struct Since {
    /// The kept solutions it has not seen, oldest first.
    pub events: Vec<Numbered>,
    /// It may have missed solutions no longer kept.
    pub missed: bool,
    /// The number it has seen up to once it read `events`.
    pub cursor: u64,
}

/// The solutions an HTTP node was given lately, bounded.
struct History {
    kept: VecDeque<Numbered>,
    next_seq: u64,
}

/// What an HTTP node's record holds besides its state: the node as the store keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id, as its clients name it.
    pub id: String,
    /// Each policy's state blob (base64), by the policy's key.
    pub state: Vec<(String, String)>,
    /// The webhook its jobs named last, if any.
    pub callback: Option<String>,
    /// Its webhook answered 410: no more deliveries to it.
    pub webhook_stopped: bool,
    /// Heights of its jobs, oldest first.
    pub heights: Vec<i64>,
    /// Milliseconds since the epoch.
    pub expires_at_ms: i64,
    /// When it was made, milliseconds since the epoch.
    pub created_at_ms: i64,
    /// Jobs it submitted that were queued.
    pub jobs_submitted: u64,
    /// Where its first job came from.
    #[serde(default)]
    pub remote: Option<std::net::SocketAddr>,
}

/// A node that submits jobs by POST and reads its solutions as a stream or
/// receives them at a webhook.
pub struct HttpNode {
    /// Its id: 128 random bits, hex. Knowing it is what reading its stream takes
    /// (beside what the policies ask of every request).
    pub id: String,
    /// When it was made.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Where its first job came from.
    pub remote: std::net::SocketAddr,
    callback: Mutex<Option<String>>,
    webhook_stopped: AtomicBool,
    expires_at_ms: AtomicI64,
    heights: Mutex<VecDeque<i64>>,
    history: Mutex<History>,
    capacity: usize,
    /// The number of the first solution this copy of the node gives.
    first_seq: u64,
    /// The latest `seq` given, for streams waiting for the next.
    latest: watch::Sender<u64>,
    /// One job of this node at a time: its state is decided on a copy.
    pub submitting: tokio::sync::Mutex<()>,
}

impl HttpNode {
    /// A new node from `remote`, keeping `capacity` solutions for its streams.
    pub fn new(remote: std::net::SocketAddr, capacity: usize) -> Self {
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut id);
        Self::with(hex::encode(id), remote, capacity, chrono::Utc::now())
    }

    fn with(
        id: String,
        remote: std::net::SocketAddr,
        capacity: usize,
        created_at: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        // Numbers start from the time this copy of the node began, times a million:
        // above every number an earlier copy (before a restart) gave, so an id
        // from before a restart is told from one of now.
        let first = (chrono::Utc::now().timestamp_millis().max(0) as u64).saturating_mul(1_000) + 1;
        let (latest, _) = watch::channel(first - 1);
        HttpNode {
            id,
            created_at,
            remote,
            callback: Mutex::new(None),
            webhook_stopped: AtomicBool::new(false),
            expires_at_ms: AtomicI64::new(0),
            heights: Mutex::new(VecDeque::new()),
            history: Mutex::new(History { kept: VecDeque::new(), next_seq: first }),
            capacity: capacity.max(1),
            first_seq: first,
            latest,
            submitting: tokio::sync::Mutex::new(()),
        }
    }

    /// The node as kept in the store, with its policies' `state`.
    pub fn record(&self, state: &NodeState, jobs_submitted: u64) -> NodeRecord {
        let b64 = base64::engine::general_purpose::STANDARD;
        NodeRecord {
            id: self.id.clone(),
            state: state.blobs().map(|(k, s)| (k.to_string(), b64.encode(s))).collect(),
            callback: self.callback(),
            webhook_stopped: self.webhook_stopped(),
            heights: self.heights(),
            expires_at_ms: self.expires_at_ms(),
            created_at_ms: self.created_at.timestamp_millis(),
            jobs_submitted,
            remote: Some(self.remote),
        }
    }

    /// The node again from its record, and its policies' state; `None` if the record is unreadable.
    pub fn restore(record: &NodeRecord, capacity: usize) -> Option<(Self, NodeState)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let blobs: Option<Vec<(String, Vec<u8>)>> =
            record.state.iter().map(|(k, s)| b64.decode(s).ok().map(|s| (k.clone(), s))).collect();
        let created_at = chrono::DateTime::from_timestamp_millis(record.created_at_ms)?;
        let remote = record.remote.unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let node = Self::with(record.id.clone(), remote, capacity, created_at);
        *lock(&node.callback) = record.callback.clone();
        node.webhook_stopped.store(record.webhook_stopped, Ordering::Relaxed);
        node.expires_at_ms.store(record.expires_at_ms, Ordering::Relaxed);
        lock(&node.heights).extend(record.heights.iter().rev().take(KEPT_HEIGHTS).rev());
        Some((node, NodeState::from_blobs(blobs?)))
    }

    /// The webhook its solutions go to, unless it answered 410.
    pub fn webhook(&self) -> Option<String> {
        if self.webhook_stopped() {
            return None;
        }
        self.callback()
    }

    /// The webhook its jobs named last, stopped or not.
    pub fn callback(&self) -> Option<String> {
        lock(&self.callback).clone()
    }

    /// Whether its webhook answered 410.
    pub fn webhook_stopped(&self) -> bool {
        self.webhook_stopped.load(Ordering::Relaxed)
    }

    /// Its webhook answered 410: stop. Says whether it was going before.
    pub fn stop_webhook(&self) -> bool {
        !self.webhook_stopped.swap(true, Ordering::Relaxed)
    }

    /// When it expires, milliseconds since the epoch.
    pub fn expires_at_ms(&self) -> i64 {
        self.expires_at_ms.load(Ordering::Relaxed)
    }

    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms() < now_ms
    }

    /// The heights it waits at, oldest first.
    pub fn heights(&self) -> Vec<i64> {
        lock(&self.heights).iter().copied().collect()
    }

    /// A job of it at `height` was accepted at `now_ms`: it now lives `ttl_ms`
    /// longer, and its webhook is `callback` when the job named one.
    pub fn accepted(&self, height: i64, callback: Option<String>, now_ms: i64, ttl_ms: i64) {
        self.expires_at_ms.fetch_max(now_ms.saturating_add(ttl_ms), Ordering::Relaxed);
        if let Some(callback) = callback {
            *lock(&self.callback) = Some(callback);
        }
        let mut heights = lock(&self.heights);
        heights.retain(|h| *h != height);
        if heights.len() == KEPT_HEIGHTS {
            heights.pop_front();
        }
        heights.push_back(height);
    }

    /// Gives it a solution: numbered, kept for its streams, and the streams woken.
    pub fn push(&self, frame: Utf8Bytes, key: KeyDigest) -> u64 {
        let mut history = lock(&self.history);
        let seq = history.next_seq;
        history.next_seq += 1;
        history.kept.push_back(Numbered { seq, frame, key });
        if history.kept.len() > self.capacity {
            history.kept.pop_front();
        }
        drop(history);
        self.latest.send_replace(seq);
        seq
    }

    /// What a stream that has seen up to `after` (its `Last-Event-ID`) reads
    /// next. It may have missed some (no longer kept, or given before a restart,
    /// or its number is not one this node gave): every kept one is then read, and
    /// the caller catches the stream up from the store.
    pub fn since(&self, after: Option<u64>) -> Since {
        let history = lock(&self.history);
        let first_kept = history.kept.front().map_or(history.next_seq, |n| n.seq);
        let start = self.first_seq - 1;
        let (after, missed) = match after {
            Some(a) if a >= start && a < history.next_seq => (a, a.saturating_add(1) < first_kept),
            Some(_) => (start, true),
            None => (start, first_kept > self.first_seq),
        };
        let events: Vec<Numbered> = history.kept.iter().filter(|n| n.seq > after).cloned().collect();
        let cursor = events.last().map_or(after, |n| n.seq);
        Since { events, missed, cursor }
    }

    /// The keys of every solution kept for its streams.
    pub fn kept_keys(&self) -> std::collections::HashSet<KeyDigest> {
        lock(&self.history).kept.iter().map(|n| n.key).collect()
    }

    /// The number of the latest solution given, changing with each one.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The ids a node's clients name it by, checked before any look-up: 32 hex digits.
pub fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Shared handle to a node.
pub type SharedNode = Arc<HttpNode>;

#[cfg(test)]
mod tests {
    use super::*;

    fn node(capacity: usize) -> HttpNode {
        HttpNode::new(([127, 0, 0, 1], 1).into(), capacity)
    }

    fn give(node: &HttpNode, key: &str) -> u64 {
        node.push(Utf8Bytes::from(format!("{{\"k\":\"{key}\"}}")), KeyDigest::of(key))
    }

    fn seqs(since: &Since) -> Vec<u64> {
        since.events.iter().map(|n| n.seq).collect()
    }

    #[test]
    fn a_stream_resumes_after_the_id_it_saw_without_a_gap_or_a_repeat() {
        let node = node(10);
        let (a, b, c) = (give(&node, "a"), give(&node, "b"), give(&node, "c"));
        assert!(a < b && b < c);
        let all = node.since(None);
        assert_eq!((seqs(&all), all.missed, all.cursor), (vec![a, b, c], false, c));
        let after_a = node.since(Some(a));
        assert_eq!((seqs(&after_a), after_a.missed), (vec![b, c], false));
        let caught_up = node.since(Some(c));
        assert_eq!((seqs(&caught_up), caught_up.missed, caught_up.cursor), (vec![], false, c));
    }

    #[test]
    fn an_id_no_longer_kept_or_never_given_reads_everything_kept_and_says_so() {
        let node = node(2);
        let a = give(&node, "a");
        let (b, c) = (give(&node, "b"), give(&node, "c"));
        let evicted = node.since(Some(a - 1));
        assert_eq!((seqs(&evicted), evicted.missed), (vec![b, c], true), "a is no longer kept");
        assert!(!node.since(Some(a)).missed, "after a, b and c are both kept");
        for unknown in [0, 7, c + 1, u64::MAX] {
            let since = node.since(Some(unknown));
            assert_eq!((seqs(&since), since.missed), (vec![b, c], true), "{unknown}");
        }
        assert!(node.since(None).missed, "a fresh stream also misses what is no longer kept");
    }

    #[test]
    fn a_node_comes_back_from_its_record_numbering_above_its_earlier_self() {
        let node = node(10);
        node.accepted(7, Some("hook".into()), 1_000, 60_000);
        node.accepted(8, None, 2_000, 60_000);
        let before = give(&node, "a");
        let state = NodeState::from_blobs([("p".to_string(), vec![1, 2, 3])]);
        let record: NodeRecord =
            serde_json::from_str(&serde_json::to_string(&node.record(&state, 2)).expect("JSON")).expect("JSON");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let (again, state_again) = HttpNode::restore(&record, 10).expect("restored");
        assert_eq!(
            (again.id.as_str(), again.heights(), again.callback()),
            (node.id.as_str(), vec![7, 8], Some("hook".into()))
        );
        assert_eq!((again.expires_at_ms(), state_again.state_of("p")), (62_000, &[1u8, 2, 3][..]));
        let after = give(&again, "b");
        assert!(after > before, "{after} > {before}");
        assert!(again.since(Some(before)).missed, "an id from before the restart is caught up from the store");
    }

    #[test]
    fn a_stopped_webhook_is_no_longer_the_nodes() {
        let node = node(1);
        node.accepted(1, Some("hook".into()), 0, 1);
        assert_eq!(node.webhook().as_deref(), Some("hook"));
        assert!(node.stop_webhook());
        assert!(!node.stop_webhook(), "once");
        assert_eq!((node.webhook(), node.callback().as_deref()), (None, Some("hook")));
    }
}
