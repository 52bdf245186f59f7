//! `[admin]`: health, metrics, the operator's API and dashboard.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

use super::TlsConfig;

/// Health, metrics and plugin reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on; `None` turns the admin server off.
    pub listen: Option<SocketAddr>,
    /// Serve `https://` with this certificate.
    pub tls: Option<TlsConfig>,
    /// Required on every admin path but `/healthz`, `/readyz` and `/metrics`, when set.
    pub token: Option<String>,
    /// Seconds of per-second samples the dashboard's charts and `/api/v1/series`
    /// keep (about 200 bytes each).
    pub history_secs: u32,
    /// A worker connected this many minutes without a valid solution within them
    /// is marked silent (the workers table, `eligo_workers_silent`).
    pub silent_after_minutes: u32,
    /// Answer `/api/v1/miners/{address}` without the token: an address's own workers
    /// and solutions, to whoever knows the address, at a rate per client IP. The
    /// rest of the admin server still needs the token.
    pub public_miner_stats: bool,
    /// Requests each client IP (IPv6 by /64) may make to it per minute without the
    /// token, at once up to as many; past it, 429 with `Retry-After`.
    pub public_miner_stats_per_minute: std::num::NonZeroU32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(([127, 0, 0, 1], 8003).into()),
            tls: None,
            token: None,
            history_secs: 900,
            silent_after_minutes: 30,
            public_miner_stats: false,
            public_miner_stats_per_minute: const { std::num::NonZeroU32::new(30).expect("not zero") },
        }
    }
}
