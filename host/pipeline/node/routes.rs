//! Nodes over HTTP, on the node listener beside the WebSocket:
//!
//! - `POST /api/v1/jobs`: a job frame as the body (and optionally
//!   `"callback": "<webhook name>"`). Admitted exactly as a socket's job is: the
//!   request's headers go to `admit-connection`, the job to `admit-job` with the
//!   HTTP node's state; `202` once the job is confirmed by the queue.
//! - `GET /api/v1/nodes/<id>/solutions`: the solutions offered to that node, as
//!   server-sent events numbered for `Last-Event-ID`.
//! - Webhooks ([`webhook`](crate::pipeline::node::webhook)): each solution POSTed, signed, to the webhook the
//!   node's job named.
//!
//! Each cost a client can cause is bounded: the body by the socket's message
//! limit, POSTs by a per-IP rate, HTTP nodes by `[node.http] max_nodes`, what a
//! node keeps for its streams by `history`, remembered idempotency keys by
//! [`IDEMPOTENCY_KEYS`](crate::pipeline::node::front::IDEMPOTENCY_KEYS), and open streams by the node listener's connection caps.

use crate::edge::accept_guard::Peer;
use crate::edge::admission::admit_connection;
use crate::pipeline::node::front::{Answer, Refused};
use crate::pipeline::node::http_node::{self, valid_id, HttpNode};
use crate::pipeline::node::server::{self, NodeServer};
use crate::plugin::{now_ms, Role};
use crate::protocol::JobFrame;
use crate::transport::TransportError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use utoipa::{OpenApi, ToSchema};

/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// A stream sends at least a comment this often, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events a stream buffers for a client that reads slowly.
const STREAM_BUFFER: usize = 64;
/// Seconds a client is told to wait when the queue or the store is unavailable.
const RETRY_UNAVAILABLE: u64 = 5;

/// The OpenAPI document of the node listener's HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "eligo node API",
        description = "Nodes over HTTP, on the node listener: submit a job, read its solutions as server-sent \
                       events (or receive them at a configured webhook, signed the Standard Webhooks way). \
                       Requests are admitted as a WebSocket upgrade is: `Authorization: Bearer <token>` or \
                       `?token=` when a policy asks for one."
    ),
    paths(post_job, solutions),
    components(schemas(JobRequest, Accepted, Refused))
)]
pub struct NodeApiDoc;

/// A job, as a socket node's job frame, optionally naming a webhook.
#[derive(ToSchema)]
#[allow(dead_code)]
struct JobRequest {
    /// Any JSON object: the workers' challenge.
    epoch_challenge: Object,
    proof_target: u64,
    block_height: i64,
    /// The name of a configured webhook (`[node.webhooks.<name>]`) its solutions are POSTed to.
    callback: Option<String>,
}

/// Any JSON object.
#[derive(ToSchema)]
#[schema(value_type = Object)]
struct Object(#[allow(dead_code)] serde_json::Map<String, Value>);

/// A job durably queued.
#[derive(Serialize, ToSchema)]
struct Accepted {
    /// `accepted`.
    status: &'static str,
    /// The HTTP node the job belongs to: name it with `Eligo-Node` to add jobs to it.
    node: String,
    block_height: i64,
    /// The node's stream of solutions.
    events: String,
}

/// The node listener's routes: nodes over HTTP, and the WebSocket endpoint at
/// `/` (and any other path, as the original server).
pub fn router(server: &Arc<NodeServer>) -> Router {
    routes(server).fallback(axum::routing::any(server::upgrade)).with_state(server.clone())
}

/// The routes of nodes over HTTP.
fn routes(server: &Arc<NodeServer>) -> Router<Arc<NodeServer>> {
    let limit = server.settings.socket.max_message_bytes;
    Router::new()
        .route("/api/v1/jobs", post(post_job).layer(DefaultBodyLimit::max(limit)))
        .route("/api/v1/nodes/{id}/solutions", get(solutions))
        .route("/api/v1/openapi.json", get(|| async { Json(NodeApiDoc::openapi()) }))
}

/// Submits a job; its solutions go to the node's stream (and webhook).
#[utoipa::path(post, path = "/api/v1/jobs", request_body = JobRequest,
    params(
        ("Eligo-Node" = Option<String>, Header, description = "Add the job to this existing HTTP node"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key answers the first answer, without a second job"),
    ),
    responses(
        (status = 202, description = "Durably queued", body = Accepted),
        (status = 400, description = "A bad body or field, or an unknown callback", body = Refused),
        (status = 401, description = "Refused by admit-connection: unauthorized", body = Refused),
        (status = 403, description = "Refused by admit-connection", body = Refused),
        (status = 404, description = "Eligo-Node names no node alive here", body = Refused),
        (status = 413, description = "Over the size limit", body = Refused),
        (status = 422, description = "Refused by a policy's admit-job", body = Refused),
        (status = 429, description = "Over the rate from this address; see Retry-After", body = Refused),
        (status = 503, description = "Queue or store unavailable, or too many HTTP nodes; see Retry-After", body = Refused),
    ))]
async fn post_job(
    State(server): State<Arc<NodeServer>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !server.http.within_rate(peer.remote().ip()) {
        crate::metrics::add("eligo_http_requests_refused_total", &[("reason", "rate")], 1);
        let reason = format!("over {} jobs per second from this address", server.settings.http.jobs_per_second);
        return Answer::refused(StatusCode::TOO_MANY_REQUESTS, reason).retry_after(1).into_response();
    }
    let admitted =
        match admit_connection(server.services.deciding(), &server.cap, Role::Node, &peer, &uri, &headers).await {
            Ok(admitted) => admitted,
            Err(refused) => return as_json(refused).await,
        };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(key)) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => Some(key.to_string()),
        Some(_) => {
            let reason = format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters");
            return Answer::refused(StatusCode::BAD_REQUEST, reason).into_response();
        }
    };
    let answer = match key {
        None => submit(&server, &peer, &headers, body).await,
        Some(key) => {
            // A key is one client's: the credential it presented, else its address.
            let scope = admitted.handshake.credential.clone().unwrap_or_else(|| peer.remote().ip().to_string());
            let cell = server.http.remember(scope, key);
            cell.get_or_init(|| submit(&server, &peer, &headers, body)).await.clone()
        }
    };
    peer.keep_place(admitted.place);
    answer.into_response()
}

/// A refusal of admission (401, 403, 503 when full) as JSON, its headers kept.
async fn as_json(refused: Response) -> Response {
    let (mut parts, body) = refused.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let reason = String::from_utf8_lossy(&text).trim().to_string();
    let body = serde_json::to_vec(&Refused { status: "refused", reason }).unwrap_or_default();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Reads, admits, keeps and queues one POSTed job.
async fn submit(
    server: &Arc<NodeServer>,
    peer: &Peer,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the body is over the limit of {} bytes", server.settings.socket.max_message_bytes)
            } else {
                rejection.body_text()
            };
            return Answer::refused(status, reason);
        }
    };
    let (frame, callback) = match read_job(server, &body) {
        Ok(read) => read,
        Err(reason) => {
            crate::metrics::hot().bad_frames_node.increment(1);
            return Answer::refused(StatusCode::BAD_REQUEST, reason);
        }
    };
    let (id, node, made) = match headers.get("eligo-node").map(|v| v.to_str().unwrap_or_default()) {
        Some(named) => match server.http_node(named).filter(|_| valid_id(named)) {
            Some((id, node)) => (id, node, false),
            None => return Answer::refused(StatusCode::NOT_FOUND, format!("no node {named:?} is alive here")),
        },
        None => match server.add_http_node(peer.remote()) {
            Ok((id, node)) => (id, node, true),
            Err(full) => return Answer::refused(StatusCode::SERVICE_UNAVAILABLE, full).retry_after(RETRY_UNAVAILABLE),
        },
    };
    let answer = accept(server, id, &node, frame, callback).await;
    if made && !answer.status.is_success() {
        server.remove_http_node(id);
    }
    answer
}

/// The job frame of a POST's body, and the webhook it names.
fn read_job(server: &NodeServer, body: &[u8]) -> Result<(JobFrame, Option<String>), String> {
    // Parsed once: the job's fields and the route's own `callback`.
    let limits = server.settings.socket.fields();
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        // Not JSON: the frame reader's own error, as a socket's job gets it.
        Err(_) => {
            return Err(JobFrame::read_within(body, &limits).frame.err().map(|e| e.to_string()).unwrap_or_default())
        }
    };
    let callback = value.get("callback").cloned();
    let frame = JobFrame::read_value_within(value, &limits).frame.map_err(|e| e.to_string())?;
    let callback = match callback {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if server.knows_webhook(&name) => Some(name),
        Some(Value::String(name)) => return Err(format!("callback: no webhook named {name:?} is configured")),
        Some(_) => return Err("callback must be the name of a configured webhook".into()),
    };
    Ok((frame, callback))
}

/// Admits `frame` for HTTP node `id`, keeps the node in the store and queues the job.
async fn accept(
    server: &Arc<NodeServer>,
    id: u64,
    node: &Arc<HttpNode>,
    frame: JobFrame,
    callback: Option<String>,
) -> Answer {
    let _turn = node.submitting.lock().await;
    let job = match server.admit_job(id, frame).await {
        Ok(Some(job)) => job,
        Ok(None) => return Answer::refused(StatusCode::NOT_FOUND, format!("node {} expired meanwhile", node.id)),
        Err(refusal) => return Answer::refused(StatusCode::UNPROCESSABLE_ENTITY, refusal),
    };
    let ttl_ms = (server.settings.http.node_ttl_seconds as i64).saturating_mul(1000);
    node.accepted(job.block_height, callback, now_ms() as i64, ttl_ms);
    // Kept before the job is queued: once a job is accepted its node outlives a restart.
    if let Err(e) = server.persist_http_node(id, true).await {
        tracing::warn!(node = %node.id, error = %e, "an HTTP node could not be kept; its job is refused");
        return Answer::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("job not accepted: the store is unavailable: {e}"),
        )
        .retry_after(RETRY_UNAVAILABLE);
    }
    if let Err(e) = server.publish_job(id, &job).await {
        tracing::warn!(node = %node.id, error = %e, "publishing an HTTP node's job failed");
        crate::session::count_publish_failure("job");
        let status = match e {
            TransportError::Unavailable { .. } | TransportError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            TransportError::Refused { .. } => StatusCode::BAD_GATEWAY,
        };
        return Answer::refused(status, format!("job not accepted: {e}")).retry_after(RETRY_UNAVAILABLE);
    }
    let height = job.block_height;
    let catching_up = server.clone();
    tokio::spawn(async move { catching_up.catch_up(id, height).await });
    let events = format!("/api/v1/nodes/{}/solutions", node.id);
    Answer::new(
        StatusCode::ACCEPTED,
        json!(Accepted { status: "accepted", node: node.id.clone(), block_height: height, events }),
    )
}

/// The solutions given to a node, as server-sent events (`event: solution`,
/// `id: <sequence>`, `data: <the object a socket node receives>`), a comment at
/// least every 15 s, `event: expired` when the node expires.
#[utoipa::path(get, path = "/api/v1/nodes/{id}/solutions",
    params(
        ("id" = String, Path, description = "The node's id, from the POST's answer"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event"),
    ),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = String),
        (status = 401, description = "Refused by admit-connection: unauthorized", body = Refused),
        (status = 403, description = "Refused by admit-connection", body = Refused),
        (status = 404, description = "No such node alive here", body = Refused),
        (status = 406, description = "Not asked as text/event-stream", body = Refused),
    ))]
async fn solutions(
    State(server): State<Arc<NodeServer>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(named): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let accepts = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if accepts.is_some_and(|a| !a.contains("text/event-stream") && !a.contains("*/*")) {
        let reason = "this is a stream of server-sent events: ask with Accept: text/event-stream";
        return Answer::refused(StatusCode::NOT_ACCEPTABLE, reason).into_response();
    }
    let admitted =
        match admit_connection(server.services.deciding(), &server.cap, Role::Node, &peer, &uri, &headers).await {
            Ok(admitted) => admitted,
            Err(refused) => return as_json(refused).await,
        };
    let Some((id, node)) = server.http_node(&named).filter(|_| valid_id(&named)) else {
        return Answer::refused(StatusCode::NOT_FOUND, format!("no node {named:?} is alive here")).into_response();
    };
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(|v| v.trim().parse::<u64>().ok());
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(STREAM_BUFFER);
    tokio::spawn(async move {
        // The connection keeps its place under the node listener's caps.
        stream(&server, id, &node, last, tx).await;
        peer.keep_place(admitted.place);
    });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok::<_, std::convert::Infallible>(event), rx))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// Feeds one stream of node `id`: what it missed since `last` (`Some(None)`: an
/// id this node never gave), then each solution as it is given, until the node
/// expires, the server shuts down or the client leaves.
async fn stream(
    server: &NodeServer,
    id: u64,
    node: &HttpNode,
    last: Option<Option<u64>>,
    tx: tokio::sync::mpsc::Sender<Event>,
) {
    let mut latest = node.subscribe();
    let after = match last {
        Some(Some(n)) => Some(n),
        Some(None) => Some(0),
        None => None,
    };
    let since = node.since(after);
    if since.missed {
        // Given before this process started, or no longer kept: from the store,
        // each under the id the client last saw, so a cut here repeats it all.
        let kept_keys = node.kept_keys();
        for height in node.heights() {
            let found = server.found_at(id, height).await;
            let found = found.into_iter().filter(|recent| !kept_keys.contains(&recent.key)).collect();
            for recent in server.offered_to(id, found).await {
                let mut event = Event::default().event("solution").data(recent.frame.as_str());
                if let Some(n) = after.filter(|n| *n > 0) {
                    event = event.id(n.to_string());
                }
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    }
    let mut seen = since.cursor;
    for numbered in since.events {
        if tx.send(solution_event(&numbered)).await.is_err() {
            return;
        }
    }
    loop {
        let until_expiry = node.expires_at_ms() - now_ms() as i64;
        if until_expiry < 0 {
            let _ = tx.send(Event::default().event("expired").data(json!({ "node": node.id }).to_string())).await;
            return;
        }
        tokio::select! {
            changed = latest.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(until_expiry as u64 + 1)) => continue,
            _ = server.shutdown.cancelled() => return,
            _ = tx.closed() => return,
        }
        let fresh = node.since(Some(seen));
        if fresh.missed {
            // It read too slowly to keep up with what the node keeps: it ends, and
            // resumes from the store with its Last-Event-ID.
            return;
        }
        seen = fresh.cursor;
        for numbered in fresh.events {
            if tx.send(solution_event(&numbered)).await.is_err() {
                return;
            }
        }
    }
}

fn solution_event(numbered: &http_node::Numbered) -> Event {
    Event::default().event("solution").id(numbered.seq.to_string()).data(numbered.frame.as_str())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_http_node_lives_as_long_as_the_seed_rules_wait() {
        let ttl = crate::config::NodeHttpConfig::default().node_ttl_seconds;
        assert_eq!(ttl * 1000, crate::plugin::WAIT_MS);
    }
}
