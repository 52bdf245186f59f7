//! The defence at the edge, before a connection is a session: the listeners
//! (TCP, TLS and its reload), the accept guard (handshake deadline, per-IP
//! attempts), the caps on open connections, per-IP grouping, and the admission
//! that asks the connection policies about a handshake.

pub mod accept_guard;
pub mod admission;
pub mod connection_cap;
pub mod listener;
pub mod per_ip;
