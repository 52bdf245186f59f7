//! What the operator sees of the live pipeline: the connections a server holds
//! now, and how many connections recent jobs and solutions were queued to. The
//! store knows what was persisted; only the servers know this.

use crate::edge::per_ip::at_least_one;
use chrono::{DateTime, Utc};
use lru::LruCache;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use utoipa::ToSchema;

/// One policy's view of a connected worker.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WorkerPolicyView {
    /// The policy's key.
    pub plugin: String,
    /// Whether it admitted the worker (a policy loaded after the worker connected may not have).
    pub admitted: bool,
    /// The profile's tags.
    pub tags: Vec<String>,
    /// The profile's named limits.
    pub limits: BTreeMap<String, u64>,
    /// The state word the policy keeps for this worker.
    pub state: Option<u64>,
}

/// A worker connected now.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WorkerView {
    /// The connection's number in this process.
    pub connection: u64,
    /// The peer's socket address.
    pub remote: String,
    /// The welcome's `ip`.
    pub ip: String,
    /// The welcome's `address`.
    pub address: String,
    /// The welcome's `hardware`.
    pub hardware: String,
    /// The welcome's `hardware_id`.
    pub hardware_id: String,
    /// The welcome's `caption`.
    pub caption: String,
    /// When the welcome was accepted.
    pub connected_at: DateTime<Utc>,
    /// Jobs queued to this connection.
    pub jobs_received: u64,
    /// Frames waiting to be written to it now.
    pub outbox_depth: usize,
    /// The round trip of the latest server ping it answered, in milliseconds
    /// (none before its first answer; see `socket.ping_interval_seconds`).
    pub ping_ms: Option<f64>,
    /// Each policy's profile and state of it.
    pub policies: Vec<WorkerPolicyView>,
    /// What it sent and how it was judged.
    pub stats: WorkerStatsView,
}

/// A node connected now.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct NodeView {
    /// The connection's number in this process.
    pub connection: u64,
    /// The peer's socket address.
    pub remote: String,
    /// When it connected.
    pub connected_at: DateTime<Utc>,
    /// Heights of its latest job submissions, oldest first (at most 32).
    pub recent_heights: Vec<i64>,
    /// Jobs it submitted that were queued.
    pub jobs_submitted: u64,
    /// Solutions queued to it.
    pub solutions_delivered: u64,
    /// Frames waiting to be written to it now (0 for a node over HTTP).
    pub outbox_depth: usize,
    /// How it is connected: `websocket`, or `http` (jobs by POST, solutions by
    /// stream or webhook).
    pub transport: &'static str,
    /// A node over HTTP: its id, its streams open now, when it expires, and its webhook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpNodeView>,
}

/// What a [`NodeView`] adds for a node over HTTP.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HttpNodeView {
    /// The id its jobs (`Eligo-Node`) and its stream name it by.
    pub id: String,
    /// When it expires unless another job of it is accepted.
    pub expires_at: DateTime<Utc>,
    /// The webhook its solutions are POSTed to, if any.
    pub webhook: Option<String>,
    /// Its webhook answered 410: no more deliveries to it.
    pub webhook_stopped: bool,
}

/// How many heights a [`NodeView`] lists.
pub const RECENT_HEIGHTS: usize = 32;

/// A fixed-size stand-in for a key a client chose (a solution's nonce, a task
/// id): what the maps and rings that remember keys hold, so what they cost does
/// not depend on what clients send. 128 bits of SHA-256: a collision, which
/// would skip a delivery, is as likely as guessing a random 128-bit number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 16]);

impl KeyDigest {
    /// The digest of `key`.
    pub fn of(key: &str) -> Self {
        use sha2::Digest;
        let full = sha2::Sha256::digest(key.as_bytes());
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&full[..16]);
        KeyDigest(digest)
    }
}

/// The latest keys seen, at most `capacity`, as digests: the first seen is
/// forgotten first (a repeat does not make a key recent again). Costs about 70
/// bytes a key, whatever the keys' length, and only for the keys seen.
#[derive(Debug)]
pub struct RecentKeys {
    keys: LruCache<KeyDigest, ()>,
}

impl RecentKeys {
    /// Remembers at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        RecentKeys { keys: LruCache::sparse(at_least_one(capacity)) }
    }

    /// `true` if `key` is new (and remembers it from now on).
    pub fn first_time(&mut self, key: KeyDigest) -> bool {
        // `contains` leaves the order as it is: the oldest key goes first.
        if self.keys.contains(&key) {
            return false;
        }
        self.keys.push(key, ());
        true
    }
}

/// How many connections each recent item (a job by task id, a solution by key)
/// was queued to, in this process. Bounded: the first key seen is forgotten first.
pub struct DeliveryCounts {
    counts: Mutex<LruCache<KeyDigest, u64>>,
}

impl DeliveryCounts {
    /// Remembers the counts of the latest `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        DeliveryCounts { counts: Mutex::new(LruCache::sparse(at_least_one(capacity))) }
    }

    /// Adds `n` deliveries of `key`.
    pub fn add(&self, key: &str, n: u64) {
        let key = KeyDigest::of(key);
        let Ok(mut counts) = self.counts.lock() else { return };
        match counts.peek_mut(&key) {
            Some(count) => *count += n,
            None => {
                counts.push(key, n);
            }
        }
    }

    /// The deliveries of `key`, if it is recent enough to be remembered.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.counts.lock().ok().and_then(|c| c.peek(&KeyDigest::of(key)).copied())
    }
}

/// Solutions per minute over two windows.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Rates {
    /// Over the last 5 minutes (or since it connected, if later).
    #[serde(rename = "5m")]
    pub m5: f64,
    /// Over the last 60 minutes (or since it connected, if later).
    #[serde(rename = "60m")]
    pub m60: f64,
}

/// A worker connection's counters, as the API shows them.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct WorkerStatsView {
    /// Solutions the queue took (what an acknowledging client hears as accepted).
    pub accepted: u64,
    /// Solutions refused before the queue, by reason (`bad_frame`, `queue`).
    pub refused: BTreeMap<String, u64>,
    /// Solutions judged valid (or accepted unchecked) and broadcast.
    pub valid: u64,
    /// Solutions judged invalid, by reason (`duplicate`, `policy`, `unknown_job`, `malformed`).
    pub invalid: BTreeMap<String, u64>,
    /// When its latest valid solution was judged.
    pub last_valid_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Solutions accepted per minute.
    pub accepted_per_minute: Rates,
    /// Valid solutions per minute.
    pub valid_per_minute: Rates,
    /// Connected for the silence threshold and no valid solution within it.
    pub silent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_the_oldest_key_is_forgotten_first() {
        let counts = DeliveryCounts::new(2);
        counts.add("a", 3);
        counts.add("a", 1);
        counts.add("b", 1);
        assert_eq!((counts.get("a"), counts.get("b")), (Some(4), Some(1)));
        counts.add("c", 5);
        assert_eq!((counts.get("a"), counts.get("b"), counts.get("c")), (None, Some(1), Some(5)));
    }

    #[test]
    fn recent_keys_cost_the_same_whatever_their_length_and_forget_the_oldest() {
        let mut recent = RecentKeys::new(2);
        let long = "n".repeat(12_000);
        assert!(recent.first_time(KeyDigest::of(&long)));
        assert!(!recent.first_time(KeyDigest::of(&long)));
        assert!(recent.first_time(KeyDigest::of("b")));
        assert!(recent.first_time(KeyDigest::of("c")));
        assert!(recent.first_time(KeyDigest::of(&long)), "the oldest key was forgotten");
        assert!(!recent.first_time(KeyDigest::of("c")));
        assert_eq!(std::mem::size_of::<KeyDigest>(), 16);
    }
}
