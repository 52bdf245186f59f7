//! The node server: nodes' jobs in (WebSocket, or POST over HTTP) and their
//! solutions out (the socket, server-sent events or a signed webhook).
//!
//! - [`server`]: the WebSocket server, the `solution` fan-out and the node registry.
//! - [`routes`]: the HTTP routes above it (POST a job, SSE, webhooks).
//! - [`front`], [`http_node`], [`webhook`]: what the routes hold: the per-IP rate
//!   and idempotency keys, each HTTP node's record, the webhook deliverer.

pub mod front;
pub mod http_node;
pub mod routes;
pub mod server;
pub mod webhook;
