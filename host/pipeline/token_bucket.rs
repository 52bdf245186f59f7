//! A token bucket, the one rate rule behind every per-connection and per-IP
//! allowance: `burst` at once, refilled at `per_second`.

use std::time::Instant;

/// Tokens up to `burst` (at least one), refilled at `per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket { per_second: f64::from(per_second), burst, tokens: burst, refilled: Instant::now() }
    }

    /// Takes one token at `now`, if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is back to its burst at `now` (nothing to remember).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    /// The sustained rate.
    pub fn per_second(&self) -> u32 {
        self.per_second as u32
    }

    /// The most tokens at once.
    pub fn burst(&self) -> u32 {
        self.burst as u32
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.refilled = now;
    }
}
