//! The admin server: health, metrics, the operator's JSON API (`/api/v1`), and
//! the live dashboard at `/`.
//!
//! `/healthz`, `/readyz` ([`ready`]) and `/metrics` are always open (load
//! balancers, Kubernetes' probes and Prometheus).
//! Everything else needs the admin token when `[admin] token` is set:
//! `Authorization: Bearer <token>`, or `?token=<token>` (what a browser's
//! address bar and `EventSource` can send); but for `/api/v1/miners/{address}`
//! with `[admin] public_miner_stats`, which anyone may ask at a rate ([`public`]).

pub mod api;
mod dashboard;
mod error;
pub mod history;
mod jobs;
pub mod miners;
pub mod public;
pub mod ready;
pub mod summary;

use crate::config::{AdminConfig, RoleName};
use crate::pipeline::node::server::NodeServer;
use crate::pipeline::worker::server::WorkerServer;
use crate::pipeline::Services;
use crate::plugin::PluginHost;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints read.
pub struct AdminState {
    /// The backends and plugins (the process's own, as its stages have them).
    pub services: Services,
    /// The node server, if this process runs one.
    pub nodes: Option<Arc<NodeServer>>,
    /// The worker server, if this process runs one.
    pub workers: Option<Arc<WorkerServer>>,
    /// The roles this process runs.
    pub roles: Vec<RoleName>,
    /// The last minutes, second by second (filled by [`history::sample`]).
    pub history: history::History,
    /// What `/readyz` answers.
    pub readiness: ready::Readiness,
    /// SHA-256 of the admin token, if one is required.
    token_digest: Option<[u8; 32]>,
    /// With public miner stats: the rate of their requests without the token.
    public_rate: Option<public::PublicRate>,
}

impl AdminState {
    /// The admin state of a process whose backends and plugins are `services`;
    /// `config.token`, if given, is required on every path but `/healthz`,
    /// `/readyz` and `/metrics`. `/readyz` is 503 once `draining` is cancelled.
    pub fn new(
        services: &Services,
        (nodes, workers): (Option<Arc<NodeServer>>, Option<Arc<WorkerServer>>),
        roles: Vec<RoleName>,
        config: &AdminConfig,
        draining: CancellationToken,
    ) -> Self {
        let readiness = ready::Readiness::new(services.clone(), draining);
        let token = config.token.as_deref();
        let token_digest = token.filter(|t| !t.is_empty()).map(|t| Sha256::digest(t.as_bytes()).into());
        let history = history::History::new(config.history_secs as usize);
        let public_rate =
            config.public_miner_stats.then(|| public::PublicRate::new(config.public_miner_stats_per_minute));
        AdminState { services: services.clone(), nodes, workers, roles, history, readiness, token_digest, public_rate }
    }
}

/// The admin server's routes; the history is sampled until `shutdown`.
pub fn router(state: AdminState, shutdown: &CancellationToken) -> Router {
    let state = Arc::new(state);
    tokio::spawn(history::sample(state.clone(), shutdown.clone()));
    let guarded = Router::new()
        .route("/", get(dashboard::page))
        .route("/plugins", get(legacy_plugins))
        .route("/status", get(legacy_status))
        .route("/api/v1/events", get(summary::events))
        .merge(api::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state.clone());
    // The one route that may be public: guarded apart, by the token or by the rate.
    let miners = if state.public_rate.is_some() {
        api::miner_route().route_layer(axum::middleware::from_fn_with_state(state.clone(), public::public_or_token))
    } else {
        api::miner_route().route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
    };
    Router::new()
        .route("/healthz", get(healthz).with_state(state.clone()))
        .route("/readyz", get(ready::readyz).with_state(state.clone()))
        .route("/metrics", get(|| async { crate::metrics::render() }))
        // The page holds no data (it reads the miners path, guarded as above): open to all.
        .route("/miners/{address}", get(dashboard::miner_page))
        .merge(guarded)
        .merge(miners.with_state(state))
}

/// `/healthz`: a liveness check, `ok` (200) while the process runs. Plugins that
/// failed to load do not make it fail (restarting would not mend them), but are
/// named on the lines after `ok`: by file name only, as this path needs no
/// token; the reasons are at `/plugins`.
async fn healthz(State(state): State<Arc<AdminState>>) -> String {
    let names = failed_plugin_files(&state.services.plugins);
    if names.is_empty() {
        return "ok".into();
    }
    format!(
        "ok\nplugins failed to load, every decision they take part in is refused (reasons at /plugins): {}\n",
        names.join(", ")
    )
}

/// The file names of the plugins that failed to load: names only, for the
/// paths that need no token (the reasons are at `/plugins`).
fn failed_plugin_files(plugins: &PluginHost) -> Vec<String> {
    plugins
        .active_failures()
        .iter()
        .map(|f| std::path::Path::new(&f.file).file_name().map_or(f.file.clone(), |n| n.to_string_lossy().into_owned()))
        .collect()
}

/// Why a request bearing another token than the admin token is refused.
const WRONG_TOKEN: &str = "the admin token is wrong";

/// What a request says of the admin token.
enum Token {
    /// None is configured.
    NotRequired,
    /// It bears the configured one.
    Right,
    /// It bears another: refused with [`WRONG_TOKEN`].
    Wrong,
    /// It bears none.
    Missing,
}

/// Whether `request` bears the admin token: `Authorization: Bearer <token>`, or `?token=<token>`.
fn token_of(state: &AdminState, request: &Request) -> Token {
    let Some(expected) = state.token_digest else { return Token::NotRequired };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let query = request.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
    });
    // Compared as digests: equal length, and no early exit on the secret's bytes.
    let given: Option<[u8; 32]> = bearer.or(query).map(|t| Sha256::digest(t.as_bytes()).into());
    match given {
        Some(given) if given == expected => Token::Right,
        Some(_) => Token::Wrong,
        None => Token::Missing,
    }
}

/// Refuses a request without the admin token (when one is configured).
async fn require_token(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    match token_of(&state, &request) {
        Token::NotRequired | Token::Right => next.run(request).await,
        Token::Wrong => unauthorized(WRONG_TOKEN),
        Token::Missing => {
            unauthorized("this admin server needs its token: Authorization: Bearer <token>, or ?token=<token>")
        }
    }
}

fn unauthorized(why: &str) -> Response {
    let mut response = error::ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}

/// `/plugins`, as before `/api/v1`: active, failed and compiling plugins, and candidates in shadow.
async fn legacy_plugins(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    let plugins = &state.services.plugins;
    Json(serde_json::json!({
        "active": plugins.reports(),
        "failed": plugins.failures(),
        "compiling": plugins.compiling(),
        "shadows": plugins.shadows(),
    }))
}

/// `/status`, as before `/api/v1`: counts.
async fn legacy_status(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "roles": state.roles,
        "nodes": state.nodes.as_ref().map(|n| n.connections()),
        "workers": state.workers.as_ref().map(|w| w.connections()),
        "plugins": state.services.plugins.reports().len(),
        "plugin_failures": state.services.plugins.failures().len(),
    }))
}
