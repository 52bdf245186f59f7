//! A token bucket, the one rate rule behind every per-connection and per-IP
//! allowance: `burst` at once, refilled at `per_second`.

use std::time::{Duration, Instant};

/// Tokens up to `burst` (at least one), refilled at `per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    /// How far below empty a take may go: the tokens a lateness allowance lends.
    lent: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: u32, burst: u32) -> Self {
        TokenBucket::at_rate(f64::from(per_second), burst)
    }

    /// A full bucket refilled at a rate that need not be whole (a few a minute, say).
    pub fn at_rate(per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket { per_second, burst, tokens: burst, lent: 0.0, refilled: Instant::now() }
    }

    /// A full bucket that forgives frames read up to `lateness` late. The bucket
    /// sees when a frame is read, not when it was sent: frames that waited in the
    /// socket while the server was busy are read close together, and a client
    /// sending exactly at its rate would be refused for the server's stall. The
    /// allowance is lent, not given: what is taken early is owed, so the
    /// sustained rate stays `per_second`.
    pub fn forgiving(per_second: u32, burst: u32, lateness: Duration) -> Self {
        let mut bucket = TokenBucket::new(per_second, burst);
        bucket.lent = bucket.per_second * lateness.as_secs_f64();
        bucket
    }

    /// Takes one token at `now`, if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens + self.lent >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one token at `now`, or says how long until there is one.
    pub fn take_or_wait(&mut self, now: Instant) -> Result<(), Duration> {
        if self.take(now) {
            return Ok(());
        }
        // A bucket that never refills (a rate of 0) has none to come.
        let missing = 1.0 - (self.tokens + self.lent);
        Err(Duration::try_from_secs_f64(missing / self.per_second).unwrap_or(Duration::MAX))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Five a second, burst ten: the burst at once, then one every 200 ms.
    fn at_its_rate(bucket: &mut TokenBucket, start: Instant, read_late_by: Duration) -> usize {
        let mut refused = 0;
        for frame in 0..40u32 {
            let sent = start + Duration::from_millis(200 * u64::from(frame.saturating_sub(9)));
            // The first eleven frames all wait for a stall to end, then are read together.
            let read = sent.max(start + read_late_by);
            refused += usize::from(!bucket.take(read));
        }
        refused
    }

    #[test]
    fn a_client_at_its_rate_read_late_is_not_refused() {
        let start = Instant::now();
        assert!(at_its_rate(&mut TokenBucket::new(5, 10), start, Duration::from_millis(400)) > 0);
        assert_eq!(
            at_its_rate(&mut TokenBucket::forgiving(5, 10, Duration::from_secs(1)), start, Duration::from_millis(400)),
            0
        );
    }

    #[test]
    fn what_is_forgiven_is_owed_so_the_sustained_rate_holds() {
        let start = Instant::now();
        let mut bucket = TokenBucket::forgiving(10, 10, Duration::from_secs(1));
        // A client sending 100 a second for ten seconds gets the burst, the loan and the rate.
        let taken = (0..1000u64).filter(|i| bucket.take(start + Duration::from_millis(10 * i))).count();
        assert!((10 + 10 + 99..=10 + 10 + 101).contains(&taken), "{taken}");
    }

    #[test]
    fn the_wait_for_a_token_is_its_share_of_a_second_or_forever_at_rate_zero() {
        let start = Instant::now();
        let mut bucket = TokenBucket::at_rate(0.5, 1);
        assert_eq!(bucket.take_or_wait(start), Ok(()));
        assert_eq!(bucket.take_or_wait(start), Err(Duration::from_secs(2)));
        assert_eq!(bucket.take_or_wait(start + Duration::from_secs(1)), Err(Duration::from_secs(1)));
        let mut never = TokenBucket::at_rate(0.0, 2);
        assert!(never.take_or_wait(start).is_ok() && never.take_or_wait(start).is_ok(), "the burst");
        assert_eq!(never.take_or_wait(start + Duration::from_secs(3600)), Err(Duration::MAX));
    }
}
