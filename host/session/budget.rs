//! A connection's allowance of frames, and the rule that closes a flood.

use super::token_bucket::TokenBucket;
use crate::config::SocketConfig;

/// A drop this soon after the previous one continues the same flood.
const FLOOD_GAP: std::time::Duration = std::time::Duration::from_secs(1);
/// A flood this long closes the connection, however few frames it dropped.
const FLOOD_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How late a frame may be read (the server busy, the frame waiting in the
/// socket) without counting against a client that sent it on time.
const READ_LATENESS: std::time::Duration = std::time::Duration::from_secs(1);

/// A connection's allowance of frames: a token bucket of `burst` frames,
/// refilled at `per_second`, and the rule that closes a flood.
///
/// Frames over the allowance are dropped. Drops less than [`FLOOD_GAP`] apart
/// form one flood, whatever was let through between them (at any rate over the
/// budget the bucket refills a token now and then, so counting drops *in a row*
/// would never close a fast flood). A flood is closed once it has dropped
/// `burst` frames or lasted [`FLOOD_LIMIT`]: within about two seconds at any
/// sending rate over the budget. A client at or under its budget drops nothing
/// and is never closed.
#[derive(Debug)]
pub struct FrameBudget {
    bucket: TokenBucket,
    flood: Option<Flood>,
}

/// The drops of one flood.
#[derive(Debug)]
struct Flood {
    started: std::time::Instant,
    last_drop: std::time::Instant,
    dropped: u32,
}

/// What to do with a frame, by the connection's [`FrameBudget`].
#[derive(Debug, PartialEq, Eq)]
pub enum FrameVerdict {
    /// Within the allowance.
    Take,
    /// Over it: drop the frame and say so.
    Drop,
    /// Over it for a whole flood: close the connection.
    Close,
}

impl FrameBudget {
    /// A full bucket: `burst` frames at once (at least one), `per_second` after.
    pub fn new(per_second: u32, burst: u32) -> Self {
        FrameBudget { bucket: TokenBucket::forgiving(per_second, burst, READ_LATENESS), flood: None }
    }

    /// A new connection's data-frame allowance, as `socket` sets it. Built here
    /// rather than by the settings, which know nothing of the pipeline that reads them.
    pub fn for_socket(socket: &SocketConfig) -> Self {
        FrameBudget::new(socket.frames_per_second, socket.frame_burst)
    }

    /// A new connection's allowance of pings and pongs, apart from its data frames.
    pub fn control_for_socket(socket: &SocketConfig) -> Self {
        FrameBudget::new(socket.control_frames_per_second, socket.control_frames_per_second.saturating_mul(2))
    }

    /// Spends one frame at `now`.
    pub fn spend(&mut self, now: std::time::Instant) -> FrameVerdict {
        if self.bucket.take(now) {
            return FrameVerdict::Take;
        }
        let flood = match &mut self.flood {
            Some(flood) if now.saturating_duration_since(flood.last_drop) < FLOOD_GAP => flood,
            stale => stale.insert(Flood { started: now, last_drop: now, dropped: 0 }),
        };
        flood.dropped += 1;
        flood.last_drop = now;
        if flood.dropped >= self.bucket.burst() || now.saturating_duration_since(flood.started) >= FLOOD_LIMIT {
            FrameVerdict::Close
        } else {
            FrameVerdict::Drop
        }
    }

    /// Frames dropped so far in the current flood (0 outside one).
    pub fn dropped_in_flood(&self) -> u32 {
        self.flood.as_ref().map_or(0, |flood| flood.dropped)
    }

    /// The allowance, as a client is told it.
    pub fn describe(&self) -> String {
        format!("{} frames per second (burst {})", self.bucket.per_second(), self.bucket.burst())
    }
}

#[cfg(test)]
mod tests {
    use super::{FrameBudget, FrameVerdict};
    use std::time::{Duration, Instant};

    /// What a budget of 10 a second lends to frames read late: a second's worth.
    const LENT: usize = 10;

    #[test]
    fn a_budget_lets_a_burst_through_then_drops_then_closes() {
        let start = Instant::now();
        let mut budget = FrameBudget::new(10, 3);
        let verdicts: Vec<FrameVerdict> = (0..3 + LENT + 3).map(|_| budget.spend(start)).collect();
        use FrameVerdict::*;
        assert!(verdicts[..3 + LENT].iter().all(|v| *v == Take), "the burst and the loan: {verdicts:?}");
        assert_eq!(verdicts[3 + LENT..], [Drop, Drop, Close]);
    }

    #[test]
    fn a_budget_refills_at_its_rate_up_to_the_burst() {
        let start = Instant::now();
        let mut budget = FrameBudget::new(10, 3);
        for _ in 0..3 + LENT {
            assert_eq!(budget.spend(start), FrameVerdict::Take);
        }
        assert_eq!(budget.spend(start), FrameVerdict::Drop);
        // 100 ms at 10 a second: one more frame, and the dropped run starts over.
        assert_eq!(budget.spend(start + Duration::from_millis(100)), FrameVerdict::Take);
        assert_eq!(budget.spend(start + Duration::from_millis(100)), FrameVerdict::Drop);
        // A long pause repays the loan and refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        let taken = (0..20).filter(|_| budget.spend(later) == FrameVerdict::Take).count();
        assert_eq!(taken, 3 + LENT);
    }
}
