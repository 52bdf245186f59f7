//! `[node]`: the node server, and nodes over HTTP (`[node.http]`, webhooks).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{redact_url, ConnectionLimits, SocketConfig, TlsConfig};

/// The node WebSocket server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Solutions queued per connection before it is closed as too slow.
    pub outbox: usize,
    /// WebSocket buffers of each connection.
    pub socket: SocketConfig,
    /// Caps on open connections.
    pub connections: ConnectionLimits,
    /// Serve `wss://` with this certificate.
    pub tls: Option<TlsConfig>,
    /// Nodes over HTTP: a job by POST, its solutions as a stream or a webhook.
    pub http: NodeHttpConfig,
    /// The webhooks a job may name in its `callback`, by name. Only these URLs
    /// are ever called: never one taken from a request.
    pub webhooks: BTreeMap<String, WebhookConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: ([127, 0, 0, 1], 8001).into(),
            outbox: 1024,
            socket: SocketConfig::default(),
            connections: ConnectionLimits { max: 1_000, max_per_ip: 100, ..ConnectionLimits::default() },
            tls: None,
            http: NodeHttpConfig::default(),
            webhooks: BTreeMap::new(),
        }
    }
}

impl NodeConfig {
    /// Adds the webhooks set by environment variables over those of the file:
    /// `ELIGO_NODE_WEBHOOKS_<NAME>_URL` and `ELIGO_NODE_WEBHOOKS_<NAME>_SECRET`
    /// (the name in lower case). A webhook needs both, from either place.
    pub fn webhooks_from_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (key, value) in vars {
            let Some(rest) = key.strip_prefix(WEBHOOK_ENV_PREFIX) else { continue };
            let (name, field) = match (rest.strip_suffix("_URL"), rest.strip_suffix("_SECRET")) {
                (Some(name), _) => (name, "url"),
                (_, Some(name)) => (name, "secret"),
                _ => continue,
            };
            let hook = self.webhooks.entry(name.to_ascii_lowercase()).or_default();
            match field {
                "url" => hook.url = value,
                _ => hook.secret = value,
            }
        }
    }
}

/// What names the environment variables of a webhook start with.
pub const WEBHOOK_ENV_PREFIX: &str = "ELIGO_NODE_WEBHOOKS_";

/// Nodes over HTTP, on the node listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeHttpConfig {
    /// How long an HTTP node lives after its last job: its longest wait. The
    /// default is the seed rules' wait; a policy that waits longer wants more.
    pub node_ttl_seconds: u64,
    /// HTTP nodes alive at once in this process; past it a POST that would make
    /// a new one is answered 503 (one naming an existing node with `Eligo-Node` still works).
    pub max_nodes: usize,
    /// Solutions an HTTP node's stream keeps to resume from `Last-Event-ID`; a
    /// stream resumed from before them is caught up from the store.
    pub history: usize,
    /// Jobs each client IP may POST per second; past it, 429 with `Retry-After`.
    pub jobs_per_second: u32,
    /// Jobs a client IP may POST at once before the rate applies.
    pub jobs_burst: u32,
    /// Webhook attempts in flight at once, across every node.
    pub webhook_concurrency: u16,
    /// How long a webhook's receiver has to answer one attempt.
    pub webhook_timeout_seconds: u64,
}

impl Default for NodeHttpConfig {
    fn default() -> Self {
        NodeHttpConfig {
            // The seed rules' wait (`plugin::WAIT_MS`).
            node_ttl_seconds: 20 * 60,
            max_nodes: 10_000,
            history: 4_096,
            jobs_per_second: 20,
            jobs_burst: 40,
            webhook_concurrency: 64,
            webhook_timeout_seconds: 10,
        }
    }
}

/// One webhook a job may name: where solutions are POSTed and the key they are signed with.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// The receiver's URL (`http://` or `https://`).
    pub url: String,
    /// The signing secret, `whsec_<base64>` as Standard Webhooks writes it.
    pub secret: String,
}

impl WebhookConfig {
    /// What is wrong with it, if anything: a URL that is not `http(s)://…`, a
    /// secret that is not `whsec_` and base64.
    pub fn check(&self) -> Result<(), String> {
        match url::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => return Err(format!("url must be http:// or https://, not {}://", url.scheme())),
            Err(e) => return Err(format!("url {:?} is not a URL: {e}", redact_url(&self.url))),
        }
        use base64::Engine as _;
        let key = self.secret.strip_prefix("whsec_").ok_or("secret must start with whsec_ (Standard Webhooks)")?;
        match base64::engine::general_purpose::STANDARD.decode(key) {
            Ok(bytes) if bytes.len() >= 16 => Ok(()),
            Ok(_) => Err("secret must hold at least 16 bytes after whsec_".into()),
            Err(_) => Err("secret after whsec_ must be base64".into()),
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig").field("url", &redact_url(&self.url)).field("secret", &"***").finish()
    }
}
