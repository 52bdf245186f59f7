//! The parts of nodes over HTTP the node server holds: the front (per-IP rate,
//! idempotency keys), each HTTP node's history and record, and the webhook
//! deliverer. The routes that use them are [`super::node_routes`].

pub mod front;
pub mod http_node;
pub mod webhook;
