//! The worker server: jobs out to workers (the `job` fan-out), their solutions
//! in (to the `solution` queue), each connection's counters, and its presence
//! (to the `worker` queue).

pub mod presence;
pub mod server;
pub mod stats;
