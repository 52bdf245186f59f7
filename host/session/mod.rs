//! A WebSocket session, whatever its role: the outbox and the writer that drains
//! it (in the connection's one task), the read loop and its frame budget, how a
//! connection is closed, and the registry of a server's open connections. The
//! servers in [`pipeline`](crate::pipeline) decide what the frames mean; this
//! module only carries them, within bounds.

pub mod budget;
pub mod close;
pub mod outbox;
pub mod reader;
pub mod registry;
pub mod token_bucket;

pub use budget::{FrameBudget, FrameVerdict};
pub use close::{close_code, CloseReason};
pub use outbox::{close_for_publish_error, count_publish_failure, finish, start_writer, Beside, Full, Outbox, Writer};
pub use reader::{close_for_read_error, read_frames, sized};
pub use registry::Registry;
