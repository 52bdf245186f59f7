//! How a connection is closed: the codes eligo uses and the reason it gives.

/// Close codes eligo uses.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The connection broke a rule (e.g. read too slowly to keep up).
    pub const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// An internal error (e.g. storage failed).
    pub const INTERNAL: u16 = 1011;
    /// A broker is unavailable: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// A bad or refused welcome (the original system's code).
    pub const BAD_WELCOME: u16 = 3000;
}

/// Why a connection is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    /// The WebSocket close code.
    pub code: u16,
    /// The reason, cut to what a close frame can carry.
    pub reason: String,
}
