//! The reference solver for the `pow-check` plugin, shared by the example worker
//! and the tests: it finds a nonce whose proof of work reaches a target.
//!
//! The rule (see `plugins/pow-check`): `sha256(challenge ‖ nonce as 8 little-endian
//! bytes)`, where the challenge is the `epoch_challenge` object as compact JSON
//! with sorted keys; the target reached is `u64::MAX / max(1, first 8 digest bytes,
//! big-endian)`.
#![allow(dead_code)]

use sha2::{Digest, Sha256};

/// The challenge as the plugin hashes it: compact JSON, keys sorted at every level.
pub fn challenge_text(epoch_challenge: &serde_json::Value) -> String {
    eligo::protocol::canonical_json(epoch_challenge)
}

/// The target `nonce` reaches for `challenge`.
pub fn reached(challenge: &str, nonce: u64) -> u64 {
    let digest = Sha256::new().chain_update(challenge.as_bytes()).chain_update(nonce.to_le_bytes()).finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::MAX / u64::from_be_bytes(head).max(1)
}

/// The first nonce from `start` reaching `target`, with what it reaches.
pub fn solve(epoch_challenge: &serde_json::Value, target: u64, start: u64) -> (u64, u64) {
    let challenge = challenge_text(epoch_challenge);
    (start..).map(|n| (n, reached(&challenge, n))).find(|(_, r)| *r >= target).unwrap_or((start, 0))
}

/// The first nonce from `start` that does NOT reach `target`: an invalid solution.
pub fn fail(epoch_challenge: &serde_json::Value, target: u64, start: u64) -> (u64, u64) {
    let challenge = challenge_text(epoch_challenge);
    (start..).map(|n| (n, reached(&challenge, n))).find(|(_, r)| *r < target).unwrap_or((start, 0))
}
