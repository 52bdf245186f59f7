//! Who may connect: the connection caps, the policies' `admit-connection`, and
//! the pre-shared-key challenge.
//!
//! The challenge is the mutual one of a pre-shared key: each end sends a random
//! `once` and expects `sha256(hex(once) + psk)` back. A client asks for it in its
//! upgrade request (`?once=<hex>` or the header `Eligo-Once`); the server's first
//! frame then carries its answer and its own `once`,
//! `{"type":"challenge","once":…,"answer":…}`, and the client's first frame must be
//! `{"type":"answer","answer":…}`. The host draws the `once`, runs the exchange
//! and sends the frames; the policies compute and judge the answers. A client
//! that does not ask is still asked of the policies (`check-challenge` with no
//! answer), so a policy can require the challenge.

use crate::edge::accept_guard::Peer;
use crate::edge::connection_cap::{ConnectionCap, Place};
use crate::plugin::{ConnectionRequest, Deciding, Hook, Lane, PolicySet, Refusal, Role};
use crate::session::{close_code, Outbox};
use axum::extract::ws::{Message, WebSocket};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::stream::SplitStream;
use futures::StreamExt;
use rand::RngCore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a client that asked for the challenge has to answer it.
pub const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `once` a client may send.
const MAX_ONCE: usize = 256;
/// A refusal whose reason starts with this is answered with HTTP 401, not 403.
const UNAUTHORIZED: &str = "unauthorized";

/// The parts of the WebSocket handshake policies see.
#[derive(Clone, Debug)]
pub struct Handshake {
    /// The peer's address.
    pub remote: SocketAddr,
    /// `Authorization: Bearer …`, or the `token` query parameter.
    pub credential: Option<String>,
    /// The request path.
    pub path: String,
    /// The client's challenge `once` (`once` query parameter or `Eligo-Once` header).
    pub once: Option<String>,
}

impl Handshake {
    /// Reads the handshake from the upgrade request.
    pub fn read(remote: SocketAddr, uri: &Uri, headers: &HeaderMap) -> Self {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let query = |key: &str| {
            uri.query().and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
            })
        };
        let bearer = header(header::AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer ")).map(str::to_string);
        let once = header("eligo-once").map(str::to_string).or_else(|| query("once"));
        Handshake { remote, credential: bearer.or_else(|| query("token")), path: uri.path().to_string(), once }
    }

    /// The request as the policies see it.
    pub fn request(&self, role: Role) -> ConnectionRequest {
        ConnectionRequest {
            remote_addr: self.remote.to_string(),
            role,
            credential: self.credential.clone(),
            path: self.path.clone(),
        }
    }
}

/// A challenge the client asked for, to run once the socket is open.
#[derive(Clone)]
pub struct Challenge {
    /// The host's `once` for this connection.
    once: String,
    /// This server's answer to the client's `once`.
    answer: String,
    /// The token was refused already: the connection is refused after the
    /// challenge all the same, so the client cannot tell which part was wrong.
    refused_token: Option<Refusal>,
    /// Whose failures count.
    peer: Peer,
}

/// What a client that presented a credential reads when it is refused as
/// unauthorized: the same whichever part (the token, the challenge answer) was
/// wrong. The policy's own reason goes to the log.
const NOT_ACCEPTED: &str = "unauthorized: the credentials were not accepted";

/// A connection the policies admitted, with its place under the caps.
pub struct Admitted {
    /// What the policies saw.
    pub handshake: Handshake,
    /// Its place under the connection caps; dropping it frees the place.
    pub place: Place,
    /// The challenge to run before the first frame, if the client asked for one.
    pub challenge: Option<Challenge>,
}

/// Decides whether a connection may open, before any upgrade: the caps first (a
/// full server answers without asking the policies), then `admit-connection`,
/// then what the challenge needs. A refusal is an HTTP 401 (reasons starting
/// with `unauthorized`) or 403 with the reason.
pub async fn admit_connection(
    deciding: Deciding<'_>,
    cap: &Arc<ConnectionCap>,
    role: Role,
    peer: &Peer,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Admitted, Response> {
    let remote = peer.remote();
    // Taken at the accept when the listener guards it; else here.
    let place = match peer.take_place() {
        Some(place) => place,
        None => cap.enter(remote.ip()).map_err(IntoResponse::into_response)?,
    };
    let handshake = Handshake::read(remote, uri, headers);
    let (request, once) = (handshake.request(role), handshake.once.clone());
    let decided = deciding
        .decide(lane_of(role), Hook::AdmitConnection, move |policies| decide(policies, &request, once.as_deref()))
        .await
        .unwrap_or_else(|e| Err(e.into()));
    match decided {
        Ok(challenge) => {
            let challenge = challenge.map(|(answer, refused_token)| Challenge {
                once: fresh_once(),
                answer,
                refused_token,
                peer: peer.clone(),
            });
            peer.upgrading();
            Ok(Admitted { handshake, place, challenge })
        }
        Err(refusal) => {
            crate::metrics::add("eligo_connections_refused_total", &[("role", role_label(role))], 1);
            if is_unauthorized(&refusal) {
                let hidden = unauthorized(peer, role, &refusal);
                if handshake.credential.is_some() {
                    return Err(refused(&hidden));
                }
            }
            Err(refused(&refusal))
        }
    }
}

/// The policies' decision on a connection: refused, or admitted with the
/// server's answer to the client's challenge (and a refused token, told only
/// after the challenge) when it asked for one.
fn decide(
    policies: &PolicySet,
    request: &ConnectionRequest,
    once: Option<&str>,
) -> Result<Option<(String, Option<Refusal>)>, Refusal> {
    let now = crate::plugin::now_ms();
    let challenge = |refused_token: Option<Refusal>| match once {
        Some(once) if once.is_empty() || once.len() > MAX_ONCE => Err(Refusal {
            plugin: "eligo".into(),
            reason: format!("a challenge once must be 1 to {MAX_ONCE} characters"),
        }),
        Some(once) => Ok(Some((policies.challenge_answer(request, once)?, refused_token))),
        None => policies.check_challenge(request, "", None, now).map(|()| None),
    };
    match policies.admit_connection(request, now) {
        Ok(()) => challenge(None),
        // A client taking the challenge learns of a refused token only after it.
        Err(refusal) if is_unauthorized(&refusal) && once.is_some() => challenge(Some(refusal)),
        Err(refusal) => Err(refusal),
    }
}

fn is_unauthorized(refusal: &Refusal) -> bool {
    refusal.reason.starts_with(UNAUTHORIZED)
}

/// An unauthorized refusal of `peer`: counted against its IP, logged with the
/// policy's own reason, and returned as what a client that presented
/// credentials reads (the same whichever part was wrong).
fn unauthorized(peer: &Peer, role: Role, refusal: &Refusal) -> Refusal {
    peer.auth_failed();
    let remote = peer.remote();
    tracing::info!(role = role_label(role), %remote, reason = %refusal, "connection refused as unauthorized");
    Refusal { plugin: refusal.plugin.clone(), reason: NOT_ACCEPTED.into() }
}

fn refused(refusal: &Refusal) -> Response {
    let text = refusal.to_string();
    if refusal.reason.starts_with(UNAUTHORIZED) {
        let mut response = (StatusCode::UNAUTHORIZED, text).into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"eligo\""));
        response
    } else {
        (StatusCode::FORBIDDEN, text).into_response()
    }
}

/// A node's connection is decided ahead of workers' (a storm of them is bulk).
fn lane_of(role: Role) -> Lane {
    match role {
        Role::Node => Lane::Urgent,
        Role::Worker => Lane::Bulk,
    }
}

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Node => "node",
        Role::Worker => "worker",
    }
}

/// 32 random bytes as hex: never the same twice, so an answer cannot be replayed.
fn fresh_once() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Runs the challenge on an open socket: sends this server's answer and `once`,
/// reads the client's answer and asks the policies. `false`: the connection is
/// being closed (1008 with the reason, or the client left).
pub async fn run_challenge(
    challenge: &Challenge,
    deciding: Deciding<'_>,
    request: &ConnectionRequest,
    stream: &mut SplitStream<WebSocket>,
    outbox: &Outbox,
) -> bool {
    let frame = serde_json::json!({ "type": "challenge", "once": challenge.once, "answer": challenge.answer });
    outbox.send(frame.to_string()).await;
    let reply = match tokio::time::timeout(CHALLENGE_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => text.to_string(),
        Ok(Some(Ok(_))) => return refuse(outbox, request.role, "expected {\"type\":\"answer\",\"answer\":…}"),
        Ok(Some(Err(_)) | None) => return false,
        Err(_) => return refuse(outbox, request.role, "no answer to the challenge within the time limit"),
    };
    let answer = serde_json::from_str::<serde_json::Value>(&reply).ok().and_then(|v| {
        let is_answer = v.get("type").and_then(|t| t.as_str()) == Some("answer");
        v.get("answer").and_then(|a| a.as_str()).filter(|_| is_answer).map(str::to_string)
    });
    let Some(answer) = answer else {
        return refuse(outbox, request.role, "expected {\"type\":\"answer\",\"answer\":…}");
    };
    let (asked, once) = (request.clone(), challenge.once.clone());
    let checked = deciding
        .decide(lane_of(request.role), Hook::AdmitConnection, move |policies| {
            policies.check_challenge(&asked, &once, Some(&answer), crate::plugin::now_ms())
        })
        .await
        .unwrap_or_else(|e| Err(e.into()));
    match challenge.refused_token.clone().map_or(checked, Err) {
        Ok(()) => true,
        Err(refusal) if is_unauthorized(&refusal) => {
            refuse(outbox, request.role, &unauthorized(&challenge.peer, request.role, &refusal).to_string())
        }
        Err(refusal) => refuse(outbox, request.role, &refusal.to_string()),
    }
}

fn refuse(outbox: &Outbox, role: Role, reason: &str) -> bool {
    crate::metrics::add("eligo_connections_refused_total", &[("role", role_label(role))], 1);
    outbox.close(close_code::POLICY, reason);
    false
}
