//! Who may connect.
//!
//! - **Bearer tokens**, per role: a role with tokens configured admits only a
//!   connection presenting one (`Authorization: Bearer …` or `?token=…`). The
//!   settings hold the tokens' sha256 hashes, never the tokens, so a leaked
//!   settings file opens nothing.
//! - **The mutual pre-shared-key challenge** (each end sends a random `once` and
//!   expects `sha256(hex(once) + psk)` back): with `psk` set, a client that opens
//!   with the challenge must answer the server's `once` correctly, and the server
//!   proves it knows the key too. The roles in `psk_required` must take it.
//!   The host draws a fresh `once` for every connection, so an answer seen on
//!   one connection is worth nothing on the next.
//!
//! With no settings nothing is required: clients of the original system, which
//! present no credential, connect as before.
//!
//! Settings (`<key>.toml`):
//! ```toml
//! worker_tokens = ["<sha256 hex of a token>"]   # `printf %s "$TOKEN" | sha256sum`
//! node_tokens = ["<sha256 hex>"]
//! psk = "a pre-shared key"
//! psk_required = ["worker"]                      # roles that must take the challenge
//! ```

use eligo_plugin_sdk::serde::Deserialize;
use eligo_plugin_sdk::*;
use sha2::{Digest, Sha256};

/// What an operator can set.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, crate = "eligo_plugin_sdk::serde")]
pub struct Config {
    /// sha256 (hex) of each token a worker may present; empty: no token needed.
    pub worker_tokens: Vec<String>,
    /// sha256 (hex) of each token a node may present; empty: no token needed.
    pub node_tokens: Vec<String>,
    /// The pre-shared key of the challenge; none: the challenge is not offered.
    pub psk: Option<String>,
    /// Roles (`worker`, `node`) that must pass the challenge.
    pub psk_required: Vec<String>,
}

static CONFIG: Settings<Config> = Settings::new();

/// `sha256(text)` as lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The answer to a challenge `once` (hex text) under `psk`.
pub fn challenge_answer(once: &str, psk: &str) -> String {
    sha256_hex(&format!("{once}{psk}"))
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Worker => "worker",
        Role::Node => "node",
    }
}

/// Compares two strings in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The authenticator.
pub struct Auth;

impl Policy for Auth {
    fn info() -> PluginInfo {
        PluginInfo { name: "auth".into(), version: env!("CARGO_PKG_VERSION").into(), hooks: vec![Hook::AdmitConnection] }
    }

    fn configure(settings: String) -> Result<(), Reason> {
        CONFIG.configure(&settings)?;
        let config = CONFIG.get();
        for hash in config.worker_tokens.iter().chain(&config.node_tokens) {
            if !is_hash(hash) {
                return Err(format!(
                    "token {:?} is not a sha256 hash (64 hex digits): store `printf %s TOKEN | sha256sum`, not the token",
                    hash.chars().take(8).collect::<String>()
                ));
            }
        }
        if let Some(role) = config.psk_required.iter().find(|r| *r != "worker" && *r != "node") {
            return Err(format!("psk_required names {role:?}; roles are \"worker\" and \"node\""));
        }
        if !config.psk_required.is_empty() && config.psk.as_deref().unwrap_or("").is_empty() {
            return Err("psk_required is set but psk is not: set the pre-shared key".into());
        }
        Ok(())
    }

    fn admit_connection(request: ConnectionRequest, _: TimestampMs) -> Result<(), Reason> {
        let config = CONFIG.get();
        let allowed = match request.role {
            Role::Worker => &config.worker_tokens,
            Role::Node => &config.node_tokens,
        };
        if allowed.is_empty() {
            return Ok(());
        }
        let role = role_name(request.role);
        let Some(token) = request.credential.as_deref().filter(|t| !t.is_empty()) else {
            return Err(format!(
                "unauthorized: {role} connections need a token (Authorization: Bearer … or ?token=…)"
            ));
        };
        let hash = sha256_hex(token);
        if allowed.iter().any(|h| same(&h.to_ascii_lowercase(), &hash)) {
            Ok(())
        } else {
            Err(format!("unauthorized: the token is not valid for {role} connections"))
        }
    }

    fn challenge_answer(_: ConnectionRequest, once: String) -> Result<String, Reason> {
        match CONFIG.get().psk.as_deref().filter(|k| !k.is_empty()) {
            Some(psk) => Ok(challenge_answer(&once, psk)),
            None => Err("this server has no pre-shared key: connect without the challenge".into()),
        }
    }

    fn check_challenge(
        request: ConnectionRequest,
        once: String,
        answer: Option<String>,
        _: TimestampMs,
    ) -> Result<(), Reason> {
        let config = CONFIG.get();
        let role = role_name(request.role);
        match (answer, config.psk.as_deref().filter(|k| !k.is_empty())) {
            (None, _) if config.psk_required.iter().any(|r| r == role) => {
                Err(format!("unauthorized: {role} connections must take the pre-shared-key challenge"))
            }
            (None, _) => Ok(()),
            (Some(_), None) => Err("this server has no pre-shared key".into()),
            (Some(answer), Some(psk)) if same(&answer.to_ascii_lowercase(), &challenge_answer(&once, psk)) => Ok(()),
            (Some(_), Some(_)) => Err("unauthorized: wrong answer to the pre-shared-key challenge".into()),
        }
    }
}

export_policy!(Auth);
