//! `[worker]`: the worker server.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

use super::{ConnectionLimits, SocketConfig, TlsConfig};

/// The worker WebSocket server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Jobs queued per connection; past that, jobs are dropped for it (latest wins).
    pub outbox: usize,
    /// Seconds a new connection has to send its welcome.
    pub welcome_timeout_secs: u64,
    /// Solutions of one connection waiting for the broker's confirm at once; past
    /// that, the connection's next frame is read once one is confirmed.
    pub publishes_in_flight: usize,
    /// WebSocket buffers of each connection.
    pub socket: SocketConfig,
    /// Caps on open connections.
    pub connections: ConnectionLimits,
    /// Serve `wss://` with this certificate.
    pub tls: Option<TlsConfig>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            listen: ([127, 0, 0, 1], 8002).into(),
            outbox: 16,
            welcome_timeout_secs: 30,
            publishes_in_flight: 32,
            socket: SocketConfig::default(),
            connections: ConnectionLimits::default(),
            tls: None,
        }
    }
}
